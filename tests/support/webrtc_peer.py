"""A bare WebRTC peer (aiortc) standing in for a browser's media, without SIP.

It plays one tone (:class:`tests.support.webrtc_phone.ToneTrack`, 48 kHz) and detects
tones in what it receives with the rig's Goertzel detector. Importing
``tests.support.webrtc_phone`` also applies its two aiortc adjustments (host candidates
on 127.0.0.1, RTCP BYE does not end a remote track), which this peer needs too.
"""

from __future__ import annotations

import asyncio
import contextlib
from array import array
from typing import Any

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpsender import RTCRtpSender

from sip_test_rig.media import ToneDetector
from tests.support.webrtc_phone import ToneTrack


class WebRtcPeer:
    def __init__(self, tone: int, listen: list[int], *, codec: str | None = None) -> None:
        self.tone = tone
        self.listen = listen
        self.codec = codec  # "audio/PCMU", "audio/opus"; None = aiortc's default order
        self.detector = ToneDetector(listen, clock_rate=48000)
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.transceiver = self.pc.addTransceiver(ToneTrack(tone), direction="sendrecv")
        self._prefer_codec()
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.frames = 0
        self.received_codec: str | None = None

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._tasks.append(asyncio.get_running_loop().create_task(self._listen(track)))

    def _prefer_codec(self) -> None:
        if self.codec is None:
            return
        caps = RTCRtpSender.getCapabilities("audio")
        chosen = [c for c in caps.codecs if c.mimeType.lower() == self.codec.lower()]
        assert chosen, f"aiortc cannot do {self.codec}"
        self.transceiver.setCodecPreferences(chosen)

    async def _listen(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame: Any = await track.recv()
                channels = len(frame.layout.channels)
                samples = array("h")
                samples.frombytes(bytes(frame.planes[0])[: frame.samples * 2 * channels])
                mono = samples[::channels] if channels > 1 else samples
                if frame.sample_rate != self.detector.clock_rate:
                    self.detector = ToneDetector(self.listen, clock_rate=frame.sample_rate)
                self.detector.feed(mono.tobytes())
                self.frames += 1
                self._changed.set()

    # ------------------------------------------------------------------ SDP
    async def offer(self, direction: str = "sendrecv") -> bytes:
        self.transceiver.direction = direction
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp).encode()

    async def accept_answer(self, sdp: bytes) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp.decode(), "answer"))

    async def answer(self, offer: bytes, direction: str = "sendrecv") -> bytes:
        await self.pc.setRemoteDescription(RTCSessionDescription(offer.decode(), "offer"))
        self.transceiver = self.pc.getTransceivers()[0]
        self.transceiver.direction = direction
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return str(self.pc.localDescription.sdp).encode()

    # ------------------------------------------------------------------ waiting
    async def wait_tone(self, freq: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while freq not in self.detector.report()["detected"]:
                self._changed.clear()
                await self._changed.wait()

    async def wait_frames(self, frames: int, timeout: float = 10.0) -> None:
        target = self.frames + frames
        async with asyncio.timeout(timeout):
            while self.frames < target:
                self._changed.clear()
                await self._changed.wait()

    def reset_audio(self) -> None:
        self.detector.reset()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pc.close()
