"""Audio helpers for the softphone: tone plans and a tone detector fed with PCM16 frames.

The softphone plays one sine per call (pjsua2's ``ToneGenerator``, generated in C, so no Python
runs per transmitted frame) and feeds every received frame to a ``ToneDetector`` from a custom
``AudioMediaPort.onFrameReceived``. That callback runs on pjmedia's clock thread, shared by every
port of every call (PJSUA2_NOTES.md), so the per-frame work is kept to a few microseconds:

* the frame's bytes are read straight from the ``std::vector`` behind the SWIG proxy
  (``vector_bytes``, ~3 µs) instead of ``bytes(frame.buf)`` (~500 µs, element by element);
* each watched frequency costs one single-bin DFT, ``|X(f)|²``, the quantity the Goertzel
  recurrence computes, evaluated as two C-level ``sum(map(mul, …))`` dot products with
  precomputed cosine / sine tables instead of a Python loop over samples.

Frequencies: at 8 kHz a 20 ms frame has 160 samples and a bin is 50 Hz wide, so watched tones are
multiples of 50 Hz (a whole number of cycles per frame, no leakage) and at least 200 Hz apart.
The defaults avoid the DTMF row/column frequencies (697…1633 Hz, ITU-T Q.23) so a tone can never
be mistaken for a digit by a DTMF detector on the path, and they sit well inside G.711's and
speex-nb 300-3400 Hz band.
"""

from __future__ import annotations

import ctypes
import math
import threading
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import mul
from typing import Any

#: Tones the rig hands out to softphones, one per process: multiples of 50 Hz, not DTMF.
DEFAULT_TONES: tuple[int, ...] = (600, 1000, 1800, 2400, 3000)
#: Share of a frame's energy that must sit in the watched bin (1.0 = a pure tone).
DEFAULT_RATIO_THRESHOLD = 0.25
#: Frames quieter than this RMS (PCM16 units, ~ -44 dBFS) are silence, whatever their spectrum.
DEFAULT_MIN_RMS = 200.0
#: A tone counts as detected after this long above threshold without a break.
DEFAULT_MIN_DURATION_MS = 200


def vector_bytes(vector: Any) -> bytes:
    """The bytes of a SWIG ``std::vector<unsigned char>`` (pjsua2 ``ByteVector``), cheaply.

    libstdc++ lays a vector out as three pointers (begin, end, end of storage); the SWIG proxy's
    ``this`` is the vector's address. Reading begin/end with ctypes and copying once costs ~3 µs
    against ~500 µs for ``bytes(vector)``. The result is checked against ``len(vector)`` and the
    slow path is used if the layout ever differs.
    """
    address = int(vector.this)
    begin = ctypes.c_void_p.from_address(address).value or 0
    end = ctypes.c_void_p.from_address(address + ctypes.sizeof(ctypes.c_void_p)).value or 0
    size = end - begin
    if size < 0 or size != len(vector):
        return bytes(vector)
    return ctypes.string_at(begin, size) if size else b""


def sine_pcm16(
    freq: float,
    *,
    clock_rate: int = 8000,
    samples: int = 160,
    amplitude: int = 8000,
    phase: float = 0.0,
) -> bytes:
    """``samples`` of a sine as little-endian PCM16 (for tests of the detector)."""
    step = 2 * math.pi * freq / clock_rate
    pcm = array("h", (int(amplitude * math.sin(phase + step * i)) for i in range(samples)))
    return pcm.tobytes()


@dataclass(frozen=True, slots=True)
class _Bin:
    freq: int
    cos: tuple[float, ...]
    sin: tuple[float, ...]


class ToneDetector:
    """Watches a set of frequencies in a stream of PCM16 frames (thread-safe).

    ``feed(pcm)`` is called from pjmedia's clock thread; ``take_new_detections()`` and
    ``report()`` from the controller's thread. A frequency is *detected* once it has held at least
    ``ratio_threshold`` of each frame's energy, with the frame louder than ``min_rms``, for
    ``min_duration_ms`` without a break; ``reset()`` forgets everything (used after hold/resume or
    a transfer to measure afresh).
    """

    def __init__(
        self,
        freqs: Iterable[int] = DEFAULT_TONES,
        *,
        clock_rate: int = 8000,
        frame_ms: int = 20,
        ratio_threshold: float = DEFAULT_RATIO_THRESHOLD,
        min_rms: float = DEFAULT_MIN_RMS,
        min_duration_ms: int = DEFAULT_MIN_DURATION_MS,
    ) -> None:
        self.freqs = tuple(sorted(set(freqs)))
        if not self.freqs:
            raise ValueError("watch at least one frequency")
        self.clock_rate = clock_rate
        self.frame_ms = frame_ms
        self.ratio_threshold = ratio_threshold
        self.min_rms = min_rms
        self.min_frames = max(1, math.ceil(min_duration_ms / frame_ms))
        self._bins: dict[int, tuple[_Bin, ...]] = {}
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._frames = 0
            self._voiced = 0
            self._run = dict.fromkeys(self.freqs, 0)
            self._ratio_sum = dict.fromkeys(self.freqs, 0.0)
            self._detected: list[int] = []
            self._new: list[int] = []

    def _bins_for(self, n: int) -> tuple[_Bin, ...]:
        bins = self._bins.get(n)
        if bins is None:
            bins = tuple(
                _Bin(
                    f,
                    tuple(math.cos(2 * math.pi * f * i / self.clock_rate) for i in range(n)),
                    tuple(math.sin(2 * math.pi * f * i / self.clock_rate) for i in range(n)),
                )
                for f in self.freqs
            )
            self._bins[n] = bins
        return bins

    def ratios(self, samples: Sequence[int]) -> tuple[float, dict[int, float]]:
        """(RMS, {freq: share of the frame's energy in that frequency's bin})."""
        n = len(samples)
        if n == 0:
            return 0.0, dict.fromkeys(self.freqs, 0.0)
        energy = float(sum(map(mul, samples, samples)))
        rms = math.sqrt(energy / n)
        if energy <= 0.0:
            return rms, dict.fromkeys(self.freqs, 0.0)
        out: dict[int, float] = {}
        for b in self._bins_for(n):
            re = sum(map(mul, samples, b.cos))
            im = sum(map(mul, samples, b.sin))
            # A sine of amplitude A on the bin gives |X|² = (A·n/2)² and energy n·A²/2, so this
            # ratio is 1.0 for a pure tone and its share of the power for a mixture (Parseval).
            out[b.freq] = 2.0 * (re * re + im * im) / (n * energy)
        return rms, out

    def feed(self, pcm: bytes) -> None:
        """One frame of little-endian PCM16 mono audio."""
        samples = array("h")
        samples.frombytes(pcm[: len(pcm) & ~1])
        rms, ratios = self.ratios(samples)
        voiced = rms >= self.min_rms
        with self._lock:
            self._frames += 1
            if voiced:
                self._voiced += 1
            for freq, ratio in ratios.items():
                self._ratio_sum[freq] += ratio if voiced else 0.0
                if voiced and ratio >= self.ratio_threshold:
                    self._run[freq] += 1
                    if self._run[freq] == self.min_frames and freq not in self._detected:
                        self._detected.append(freq)
                        self._new.append(freq)
                else:
                    self._run[freq] = 0

    def take_new_detections(self) -> list[int]:
        """Frequencies detected since the last call (each reported once per ``reset``)."""
        with self._lock:
            new, self._new = self._new, []
            return new

    def report(self) -> dict[str, Any]:
        """Frames seen, frames above the silence floor, mean bin share per frequency, detected."""
        with self._lock:
            frames = self._frames
            return {
                "frames": frames,
                "voiced_frames": self._voiced,
                "rx_freq_power": {
                    str(f): round(s / frames, 4) if frames else 0.0
                    for f, s in self._ratio_sum.items()
                },
                "detected": list(self._detected),
                # Frequencies above threshold right now (this frame and those just before it).
                "present": [f for f, run in self._run.items() if run >= self.min_frames],
            }


__all__ = [
    "DEFAULT_MIN_DURATION_MS",
    "DEFAULT_MIN_RMS",
    "DEFAULT_RATIO_THRESHOLD",
    "DEFAULT_TONES",
    "ToneDetector",
    "sine_pcm16",
    "vector_bytes",
]
