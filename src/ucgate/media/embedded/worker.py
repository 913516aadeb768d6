"""A media worker process: bridges WebRTC (aiortc) and plain RTP/AVP for a few sessions.

Run by :class:`~ucgate.media.embedded.anchor.EmbeddedAnchor` as
``python -m ucgate.media.embedded.worker --bind-host 127.0.0.1``; speaks the framed JSON
protocol of :mod:`ucgate.media.embedded.protocol` on stdin/stdout and logs to stderr.

Per session:

* the WebRTC side is an aiortc ``RTCPeerConnection`` (ICE host candidates on
  ``bind_host`` only, no STUN; DTLS-SRTP; rtcp-mux; Opus, PCMU or PCMA as negotiated);
* the RTP side is one UDP socket on ``bind_host`` speaking RTP/AVP (RFC 3550, RFC 3551)
  with G.711 straight to the peer's c=/m= address: no pjsua2 (see the package docstring
  for why), no SIP inside the worker;
* audio crosses as PCM: WebRTC frames (Opus 48 kHz stereo or G.711 8 kHz mono, decoded by
  aiortc) are resampled to 8 kHz mono by the G.711 encoder and sent as 20 ms RTP packets;
  RTP packets are decoded to 8 kHz mono frames that a paced track hands to aiortc, whose
  encoder resamples to the WebRTC codec's clock;
* RFC 4733 telephone-event packets from the RTP peer become ``dtmf`` events on the
  control protocol (aiortc has no telephone-event codec, so none are sent to or read
  from the WebRTC side: the B2BUA relays SIP INFO there).

Directions (hold, RFC 3264 §8.4) are enforced here: audio flows from one side to the
other only when the first declared it sends and the second that it receives.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import enum
import fractions
import logging
import os
import secrets
import sys
from typing import Any

import aioice.ice
import av
import structlog
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.codecs.g711 import PcmaDecoder, PcmaEncoder, PcmuDecoder, PcmuEncoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtp import RtcpByePacket, RtpPacket

from ucgate.logs import configure_logging
from ucgate.media.anchor import MediaError, MediaKey
from ucgate.media.embedded import protocol
from ucgate.media.embedded.protocol import Event, EventKind, Op, Reply, Request
from ucgate.media.embedded.rtp_sdp import (
    G711,
    TELEPHONE_EVENT_PT,
    RtpParams,
    build_rtp_sdp,
    intersect_direction,
    parse_rtp_sdp,
    receives,
    reverse_direction,
    sends,
)
from ucgate.media.rfc4733 import DtmfReceiver
from ucgate.sip.errors import RemoteProtocolError
from ucgate.sip.sdp import parse_sdp

log = structlog.get_logger("ucgate.media.worker")

RATE = 8000
SAMPLES = 160  # 20 ms at 8 kHz (RFC 3551 §4.5: G.711 default packetisation)
_DTMF_EVENTS = "0123456789*#ABCD"  # RFC 4733 §3.2: event codes 0-15
TIME_BASE = fractions.Fraction(1, RATE)
#: Decoded RTP frames waiting for the WebRTC track: more means latency grows, so the
#: oldest is dropped (a poor man's jitter buffer: the peers' clocks drift apart).
MAX_QUEUED_FRAMES = 6
SILENCE = b"\x00" * (SAMPLES * 2)


def _install_aiortc_tweaks(bind_host: str) -> None:
    # aioice gathers host candidates on every interface but loopback; a worker must offer
    # exactly the address ucgate was configured to anchor media on (PJSUA2_NOTES.md).
    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        del use_ipv4, use_ipv6
        return [bind_host]

    aioice.ice.get_host_addresses = host_addresses

    original = RTCRtpReceiver._handle_rtcp_packet

    async def ignore_rtcp_bye(self: RTCRtpReceiver, packet: Any) -> None:
        # aiortc ends a remote track for good on RTCP BYE (RFC 3550 §6.6); a peer that
        # restarts its stream around a hold would leave the bridge deaf after resume.
        # Browsers keep playing when packets return, and so does the bridge.
        if isinstance(packet, RtcpByePacket):
            return
        await original(self, packet)

    RTCRtpReceiver._handle_rtcp_packet = ignore_rtcp_bye  # type: ignore[method-assign]


class Pending(enum.Enum):
    NONE = "none"
    WEBRTC_OFFER = "webrtc-offer"  # the WebRTC side offered; the RTP side answers next
    RTP_OFFER = "rtp-offer"  # the RTP side offered; the WebRTC side answers next


class BridgeTrack(MediaStreamTrack):
    """Audio from the RTP side, as a 8 kHz mono track paced at 20 ms for aiortc."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.queue: collections.deque[av.AudioFrame] = collections.deque(maxlen=MAX_QUEUED_FRAMES)
        self.enabled = False
        self._pts = 0
        self._start: float | None = None

    def push(self, frame: av.AudioFrame) -> None:
        if self.enabled:
            self.queue.append(frame)

    async def recv(self) -> av.AudioFrame:
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        wait = self._start + self._pts / RATE - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)  # the 20 ms media clock
        elif wait < -0.2:
            self._start = loop.time() - self._pts / RATE  # we stalled: do not burst
        if self.queue and self.enabled:
            frame = self.queue.popleft()
        else:
            # Nothing received in time, or the direction forbids it (hold): silence
            # keeps aiortc's sender clock running, which a started sender needs.
            frame = av.AudioFrame(format="s16", layout="mono", samples=SAMPLES)
            frame.planes[0].update(SILENCE)
            frame.sample_rate = RATE
        frame.pts = self._pts
        frame.time_base = TIME_BASE
        self._pts += frame.samples
        return frame


class _RtpProtocol(asyncio.DatagramProtocol):
    def __init__(self, session: Session) -> None:
        self.session = session

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.session.on_rtp(data)

    def error_received(self, exc: Exception) -> None:
        log.debug("rtp.socket_error", error=str(exc))


def _audio_direction(sdp: str) -> str:
    try:
        parsed = parse_sdp(sdp.encode())
    except RemoteProtocolError as exc:
        raise MediaError(488, f"unparsable WebRTC SDP: {exc}") from exc
    for index, media in enumerate(parsed.media):
        if media.kind == "audio":
            return parsed.direction(index)
    raise MediaError(488, "no audio stream in the WebRTC SDP")


class Session:
    def __init__(self, worker: Worker, key: MediaKey) -> None:
        self.worker = worker
        self.key = key
        self.log = log.bind(media_key=key.label)
        self.lock = asyncio.Lock()
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.track = BridgeTrack()
        self.transceiver: RTCRtpTransceiver | None = None
        self.pending = Pending.NONE
        self.webrtc_offer_dir = "sendrecv"
        self.rtp_offer: RtpParams | None = None
        self.webrtc_dir = "inactive"
        self.rtp_dir = "inactive"
        self.to_rtp = False
        self.rtp_transport: asyncio.DatagramTransport | None = None
        self.rtp_port = 0
        self.remote: tuple[str, int] | None = None
        self.codec: tuple[int, str] | None = None
        self.encoder: PcmuEncoder | PcmaEncoder | None = None
        self.decoders: dict[int, PcmuDecoder | PcmaDecoder] = {}
        self.dtmf: DtmfReceiver | None = None
        # The telephone-event payload type the RTP peer negotiated (None: it did not).
        self.te_pt: int | None = None
        self.ssrc = secrets.randbits(32)
        self.seq = secrets.randbits(16)
        self.timestamp = secrets.randbits(32)
        self.sdp_session = secrets.randbits(31)
        self.sdp_version = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.packets_in = 0
        self.packets_out = 0

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            task = asyncio.get_running_loop().create_task(self._pump_to_rtp(track))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _RtpProtocol(self), local_addr=(self.worker.bind_host, 0)
        )
        self.rtp_transport = transport
        self.rtp_port = transport.get_extra_info("sockname")[1]

    # ------------------------------------------------------------------ negotiation
    def _rtp_sdp(
        self, direction: str, codecs: tuple[tuple[int, str], ...], event: int | None
    ) -> str:
        self.sdp_version += 1
        return build_rtp_sdp(
            address=self.worker.bind_host,
            port=self.rtp_port,
            session_id=self.sdp_session,
            version=self.sdp_version,
            direction=direction,
            codecs=codecs,
            telephone_event=event,
        ).decode()

    def _ensure_transceiver(self) -> RTCRtpTransceiver:
        if self.transceiver is None:
            self.transceiver = self.pc.addTransceiver(self.track, direction="sendrecv")
        return self.transceiver

    async def offer_from_webrtc(self, sdp: str) -> str:
        """The WebRTC side offers (RFC 8829 §5.3 answerer role for aiortc); returns our
        RTP/AVP offer. aiortc's answer waits for the RTP side's answer (its direction)."""
        if self.transceiver is None:
            self.pc.addTrack(self.track)  # matched to the offered m-line
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
        self.transceiver = self.pc.getTransceivers()[0]
        self.webrtc_offer_dir = _audio_direction(sdp)
        self.pending = Pending.WEBRTC_OFFER
        codecs = tuple((pt, name) for name, pt in G711.items())
        return self._rtp_sdp(self.webrtc_offer_dir, codecs, TELEPHONE_EVENT_PT)

    async def offer_from_rtp(self, sdp: str) -> str:
        params = parse_rtp_sdp(sdp.encode())
        transceiver = self._ensure_transceiver()
        # Pass the offerer's direction through (hold stays hold on the other leg).
        transceiver.direction = params.direction
        await self.pc.setLocalDescription(await self.pc.createOffer())
        self.rtp_offer = params
        self.pending = Pending.RTP_OFFER
        return str(self.pc.localDescription.sdp)

    async def answer_from_rtp(self, sdp: str) -> str:
        params = parse_rtp_sdp(sdp.encode())
        self._apply_rtp(params)
        transceiver = self._ensure_transceiver()
        transceiver.direction = params.direction
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        self.webrtc_dir = self.webrtc_offer_dir
        self.rtp_dir = params.direction
        self._update_gates()
        return str(self.pc.localDescription.sdp)

    async def answer_from_webrtc(self, sdp: str) -> str:
        offer = self.rtp_offer
        assert offer is not None
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp, "answer"))
        self.webrtc_dir = _audio_direction(sdp)
        self._apply_rtp(offer)
        self.rtp_dir = offer.direction
        ours = intersect_direction(self.webrtc_dir, reverse_direction(offer.direction))
        self._update_gates()
        return self._rtp_sdp(ours, (offer.codec,), offer.telephone_event)

    def _apply_rtp(self, params: RtpParams) -> None:
        self.remote = (params.address, params.port)
        if self.codec != params.codec:
            self.codec = params.codec
            self.encoder = PcmuEncoder() if params.codec[1] == "PCMU" else PcmaEncoder()
        # Decode whatever G.711 the peer listed, under the payload types it chose.
        self.decoders = {
            pt: PcmuDecoder() if name == "PCMU" else PcmaDecoder() for pt, name in params.codecs
        }
        if params.telephone_event is not None:
            self.dtmf = DtmfReceiver(frozenset({params.telephone_event}))
        else:
            self.dtmf = None
        self.te_pt = params.telephone_event

    def _update_gates(self) -> None:
        self.to_rtp = sends(self.webrtc_dir) and receives(self.rtp_dir)
        self.track.enabled = sends(self.rtp_dir) and receives(self.webrtc_dir)
        if not self.track.enabled:
            self.track.queue.clear()
        self.log.info(
            "media.directions",
            webrtc=self.webrtc_dir,
            rtp=self.rtp_dir,
            to_rtp=self.to_rtp,
            to_webrtc=self.track.enabled,
            codec=self.codec[1] if self.codec else None,
        )

    # ------------------------------------------------------------------ media
    def on_rtp(self, data: bytes) -> None:
        self.packets_in += 1
        if self.dtmf is not None:
            digit = self.dtmf.feed(data)
            if digit is not None:
                self.log.info("media.dtmf", digit=digit)
                self.worker.emit(
                    Event(
                        EventKind.DTMF,
                        {"call_id": self.key.call_id, "branch": self.key.branch, "digit": digit},
                    )
                )
                return
        if not self.track.enabled:
            return
        try:
            packet = RtpPacket.parse(data)
        except ValueError:
            return
        decoder = self.decoders.get(packet.payload_type)
        if decoder is None:
            return  # comfort noise (RFC 3389), repeated DTMF, a codec we did not offer
        for frame in decoder.decode(JitterFrame(data=packet.payload, timestamp=packet.timestamp)):
            assert isinstance(frame, av.AudioFrame)
            self.track.push(frame)

    async def _pump_to_rtp(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if not isinstance(frame, av.AudioFrame):
                    continue
                encoder, remote, transport = self.encoder, self.remote, self.rtp_transport
                if not self.to_rtp or encoder is None or remote is None or transport is None:
                    continue
                assert self.codec is not None
                payloads, _ = encoder.encode(frame)
                for payload in payloads:
                    packet = RtpPacket(
                        payload_type=self.codec[0],
                        sequence_number=self.seq,
                        timestamp=self.timestamp,
                        ssrc=self.ssrc,
                        payload=payload,
                    )
                    self.seq = (self.seq + 1) & 0xFFFF
                    self.timestamp = (self.timestamp + SAMPLES) & 0xFFFFFFFF
                    transport.sendto(packet.serialize(), remote)
                    self.packets_out += 1

    async def send_dtmf(self, digit: str, duration_ms: int = 160) -> bool:
        """One key toward the RTP peer as RFC 4733 events: the first packet marked
        (§2.5.1.1), repeats every 20 ms with a growing duration, and the end packet sent
        three times (§2.5.1.4), all with the event's start timestamp. False when the peer
        did not negotiate telephone-event (the caller then relays SIP INFO instead)."""
        pt, remote, transport = self.te_pt, self.remote, self.rtp_transport
        if pt is None or remote is None or transport is None or not receives(self.rtp_dir):
            return False
        event = _DTMF_EVENTS.index(digit)
        start = self.timestamp
        steps = max(1, duration_ms // 20)
        for i in range(steps + 3):
            end = i >= steps
            duration = SAMPLES * min(i + 1, steps)
            payload = bytes([event, (0x80 if end else 0) | 10]) + duration.to_bytes(2, "big")
            packet = RtpPacket(
                payload_type=pt,
                marker=1 if i == 0 else 0,
                sequence_number=self.seq,
                timestamp=start,
                ssrc=self.ssrc,
                payload=payload,
            )
            self.seq = (self.seq + 1) & 0xFFFF
            transport.sendto(packet.serialize(), remote)
            if i < steps:
                await asyncio.sleep(0.02)  # the event's own 20 ms packet clock
        self.log.info("media.dtmf_sent", digit=digit)
        return True

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await self.pc.close()
        if self.rtp_transport is not None:
            self.rtp_transport.close()


class Worker:
    def __init__(self, bind_host: str, max_sessions: int) -> None:
        self.bind_host = bind_host
        self.max_sessions = max_sessions
        self.sessions: dict[MediaKey, Session] = {}
        self._out: asyncio.WriteTransport | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.stopping = asyncio.Event()

    def emit(self, message: protocol.Message) -> None:
        if self._out is not None and not self._out.is_closing():
            self._out.write(protocol.encode(message))

    async def run(self, reader: asyncio.StreamReader, out: asyncio.WriteTransport) -> None:
        self._out = out
        self.emit(Event(EventKind.READY, {"pid": os.getpid()}))
        decoder = protocol.FrameDecoder()
        read = asyncio.ensure_future(reader.read(65536))
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            while True:
                await asyncio.wait({read, stop}, return_when=asyncio.FIRST_COMPLETED)
                if stop.done():
                    break
                data = read.result()
                if not data:
                    log.info("worker.stdin_closed")  # ucgate went away: so do we
                    break
                for message in decoder.feed(data):
                    if isinstance(message, Request):
                        task = asyncio.get_running_loop().create_task(self.handle(message))
                        self._tasks.add(task)
                        task.add_done_callback(self._tasks.discard)
                read = asyncio.ensure_future(reader.read(65536))
        finally:
            read.cancel()
            stop.cancel()
            for session in list(self.sessions.values()):
                await session.close()
            self.sessions.clear()

    async def handle(self, request: Request) -> None:
        try:
            result = await self._dispatch(request)
            reply = Reply(request.id, True, result)
        except MediaError as exc:
            reply = Reply(request.id, False, status=exc.status, reason=exc.reason)
        except Exception as exc:  # a bug or an aiortc failure: 500 for this request only
            log.exception("worker.request_failed", op=request.op.value)
            reply = Reply(request.id, False, status=500, reason=f"{type(exc).__name__}: {exc}")
        self.emit(reply)

    async def _dispatch(self, request: Request) -> dict[str, Any]:
        args = request.args
        if request.op is Op.PING:
            return {}
        if request.op is Op.STATS:
            return self.stats()
        if request.op is Op.SHUTDOWN:
            self.stopping.set()
            return {}
        key = MediaKey(str(args["call_id"]), str(args["branch"]))
        if request.op is Op.DTMF:
            found = self.sessions.get(key)
            digit = str(args.get("digit", ""))
            if found is None or len(digit) != 1 or digit not in _DTMF_EVENTS:
                raise MediaError(400, "unknown session or key")
            return {"sent": await found.send_dtmf(digit)}
        if request.op is Op.DELETE:
            session = self.sessions.pop(key, None)
            if session is not None:
                await session.close()
            return {}
        session = self.sessions.get(key)
        if session is None:
            if request.op is not Op.OFFER:
                raise MediaError(500, "answer without an offer")
            if len(self.sessions) >= self.max_sessions:
                raise MediaError(503, "media worker full")
            session = Session(self, key)
            self.sessions[key] = session
            await session.open()
        async with session.lock:
            sdp = str(args["sdp"])
            toward = str(args["toward"])
            if request.op is Op.OFFER:
                if toward == "rtp":
                    return {"sdp": await session.offer_from_webrtc(sdp)}
                return {"sdp": await session.offer_from_rtp(sdp)}
            if session.pending is Pending.WEBRTC_OFFER and toward == "webrtc":
                session.pending = Pending.NONE
                return {"sdp": await session.answer_from_rtp(sdp)}
            if session.pending is Pending.RTP_OFFER and toward == "rtp":
                session.pending = Pending.NONE
                return {"sdp": await session.answer_from_webrtc(sdp)}
            raise MediaError(500, f"no pending offer to answer toward {toward}")

    def stats(self) -> dict[str, Any]:
        return {
            "sessions": len(self.sessions),
            "packets_in": sum(s.packets_in for s in self.sessions.values()),
            "packets_out": sum(s.packets_out for s in self.sessions.values()),
        }


async def _main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    # The protocol owns the original stdout; fd 1 now points at stderr so nothing a
    # library prints can corrupt a frame.
    proto_fd = os.dup(1)
    os.dup2(2, 1)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(proto_fd, "wb"))
    worker = Worker(args.bind_host, args.max_sessions)
    log.info("worker.started", pid=os.getpid(), bind_host=args.bind_host)
    await worker.run(reader, out)
    out.close()
    log.info("worker.stopped", pid=os.getpid())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="ucgate embedded media worker")
    parser.add_argument("--bind-host", default="127.0.0.1")
    parser.add_argument("--max-sessions", type=int, default=4)
    parser.add_argument("--log-format", default="console")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    configure_logging(args.log_format, args.log_level)
    # aioice logs every connectivity check at INFO: per call, a dozen lines of noise.
    for name in ("aioice", "aiortc"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
    _install_aiortc_tweaks(args.bind_host)
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
