"""A plain RTP/AVP tone endpoint for interop tests: what a PBX trunk's media looks like.

asyncio UDP on 127.0.0.1, G.711 µ-law (PCMU, RFC 3551) in 20 ms packets, one sine tone
sent, tones detected in what comes back with the rig's Goertzel detector
(:class:`sip_test_rig.media.ToneDetector`). It writes and reads raw SDP (which a pjsua2
softphone cannot be made to do) and sends RFC 4733 telephone-event packets on demand.

Sending follows the negotiated direction (RFC 3264 §5.1): nothing is sent unless our
last SDP said we send and the peer's said it receives.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import struct
from array import array
from typing import Any

import av
from aiortc.codecs.g711 import PcmuDecoder, PcmuEncoder
from aiortc.jitterbuffer import JitterFrame

from sip_test_rig.media import ToneDetector
from ucgate.sip.sdp import parse_sdp

RATE = 8000
SAMPLES = 160
_HEADER = struct.Struct("!BBHII")


class _Proto(asyncio.DatagramProtocol):
    def __init__(self, endpoint: RtpToneEndpoint) -> None:
        self.endpoint = endpoint

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.endpoint._received(data)


class RtpToneEndpoint:
    """One RTP leg. ``offer()``/``answer()`` build SDP, ``remote_sdp()`` applies the peer's."""

    def __init__(self, tone: int, listen: list[int], host: str = "127.0.0.1") -> None:
        self.tone = tone
        self.host = host
        self.detector = ToneDetector(listen, clock_rate=RATE)
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self.remote: tuple[str, int] | None = None
        self.direction = "sendrecv"  # ours, as written in our last SDP
        self.remote_direction = "sendrecv"
        self.sent = 0
        self.ticks = 0
        # Send whatever the SDP says (a phone that plays audio into a hold anyway): lets a
        # test check that the anchor, not the peer, enforces the direction.
        self.ignore_direction = False
        self.received = 0
        self.dtmf_pt = 101
        self._seq = secrets.randbits(16)
        self._ts = secrets.randbits(32)
        self._ssrc = secrets.randbits(32)
        self._version = 0
        self._sender: asyncio.Task[None] | None = None
        self._decoder = PcmuDecoder()
        self._changed = asyncio.Event()
        step = 2 * math.pi * tone / RATE
        pcm = array("h", (int(8000 * math.sin(step * i)) for i in range(SAMPLES))).tobytes()
        # µ-law of one 20 ms period of the tone: a multiple of 50 Hz repeats every frame.
        self._payload = self._encode_once(pcm)

    @staticmethod
    def _encode_once(pcm: bytes) -> bytes:
        frame = av.AudioFrame(format="s16", layout="mono", samples=SAMPLES)
        frame.planes[0].update(pcm)
        frame.sample_rate = RATE
        frame.pts = 0
        payloads, _ = PcmuEncoder().encode(frame)
        return payloads[0]

    async def start(self) -> RtpToneEndpoint:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: _Proto(self), local_addr=(self.host, 0)
        )
        self.port = self.transport.get_extra_info("sockname")[1]
        self._sender = loop.create_task(self._send_loop())
        return self

    async def stop(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
        if self.transport is not None:
            self.transport.close()

    # ------------------------------------------------------------------ SDP
    def sdp(self, direction: str | None = None) -> bytes:
        if direction is not None:
            self.direction = direction
        self._version += 1
        lines = [
            "v=0",
            f"o=trunk 4242 {self._version} IN IP4 {self.host}",
            "s=trunk",
            f"c=IN IP4 {self.host}",
            "t=0 0",
            f"m=audio {self.port} RTP/AVP 0 {self.dtmf_pt}",
            "a=rtpmap:0 PCMU/8000",
            f"a=rtpmap:{self.dtmf_pt} telephone-event/8000",
            f"a=fmtp:{self.dtmf_pt} 0-16",
            "a=ptime:20",
            f"a={self.direction}",
        ]
        return ("\r\n".join(lines) + "\r\n").encode()

    def remote_sdp(self, body: bytes) -> None:
        sdp = parse_sdp(body)
        media = sdp.media[0]
        assert media.proto == "RTP/AVP", body
        assert "0" in media.formats, body
        address = sdp.connection_address(0)
        assert address is not None
        self.remote = (address, media.port)
        self.remote_direction = sdp.direction(0)

    def _may_send(self) -> bool:
        if self.ignore_direction:
            return True
        return self.direction in ("sendrecv", "sendonly") and self.remote_direction in (
            "sendrecv",
            "recvonly",
        )

    # ------------------------------------------------------------------ media
    def _packet(
        self, pt: int, payload: bytes, *, marker: bool = False, ts: int | None = None
    ) -> bytes:
        header = _HEADER.pack(
            0x80,
            (0x80 if marker else 0) | pt,
            self._seq,
            self._ts if ts is None else ts,
            self._ssrc,
        )
        self._seq = (self._seq + 1) & 0xFFFF
        return header + payload

    async def _send_loop(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        n = 0
        while True:
            n += 1
            delay = start + n * SAMPLES / RATE - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)  # the 20 ms media clock, not test synchronisation
            if self.remote is not None and self.transport is not None and self._may_send():
                self.transport.sendto(self._packet(0, self._payload), self.remote)
                self.sent += 1
            self._ts = (self._ts + SAMPLES) & 0xFFFFFFFF
            self.ticks += 1
            self._changed.set()

    def send_dtmf(self, digit: str) -> None:
        """One RFC 4733 key press: three start packets and three end packets (§2.5.1)."""
        assert self.remote is not None and self.transport is not None
        event = "0123456789*#ABCD".index(digit)
        ts = self._ts
        for i in range(6):
            end = i >= 3
            duration = 160 * (i + 1) if not end else 800
            payload = struct.pack("!BBH", event, (0x80 if end else 0) | 10, duration)
            self.transport.sendto(
                self._packet(self.dtmf_pt, payload, marker=i == 0, ts=ts), self.remote
            )

    def _received(self, data: bytes) -> None:
        if len(data) < _HEADER.size or data[1] & 0x7F != 0:
            return
        self.received += 1
        for frame in self._decoder.decode(JitterFrame(data=data[_HEADER.size :], timestamp=0)):
            pcm = bytes(frame.planes[0])[: frame.samples * 2]
            self.detector.feed(pcm)
        self._changed.set()

    # ------------------------------------------------------------------ waiting
    async def wait_tone(self, freq: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while freq not in self.detector.report()["detected"]:
                self._changed.clear()
                await self._changed.wait()

    async def wait_sent(self, packets: int, timeout: float = 10.0) -> None:
        """Until ``packets`` more 20 ms ticks of our own clock have passed."""
        target = self.ticks + packets
        async with asyncio.timeout(timeout):
            while self.ticks < target:
                self._changed.clear()
                await self._changed.wait()

    def reset_audio(self) -> None:
        self.detector.reset()
