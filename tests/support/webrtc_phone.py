"""A browser stand-in for interop tests: SIP over WebSocket (RFC 7118) + aiortc WebRTC media.

It behaves like JsSIP in a browser tab as far as ucgate can tell: MD5 digest over a
``sip`` WebSocket with a ``.invalid`` Via/Contact host, and SDP with ICE, DTLS-SRTP and
rtcp-mux (aiortc). It plays one sine tone and detects tones in what it receives with the
rig's Goertzel detector, so a test can assert that audio crossed a media anchor both ways.
The real-browser tests (headless Chromium) cover the same path with JsSIP itself; this
one is fast and runs the same assertions without a browser.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import math
import secrets
from array import array
from typing import Any

import aiohttp
import aioice.ice
import av
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtp import RtcpByePacket

from sip_test_rig.media import ToneDetector
from ucgate.sip.digest import DigestChallenge, build_authorization
from ucgate.sip.message import Request, Response
from ucgate.sip.parser import parse_message

RATE = 48000
FRAME = 960  # 20 ms at 48 kHz


def _loopback_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    # aioice leaves 127.0.0.1 out of its host candidates; the test machines are
    # loopback-only, so without it there is no candidate at all (PJSUA2_NOTES.md).
    del use_ipv6
    return ["127.0.0.1"] if use_ipv4 else []


aioice.ice.get_host_addresses = _loopback_host_addresses

_handle_rtcp = RTCRtpReceiver._handle_rtcp_packet


async def _ignore_rtcp_bye(self: RTCRtpReceiver, packet: Any) -> None:
    # aiortc ends the remote track for good on an RTCP BYE; browsers keep the track and
    # play the stream again when packets return. pjsua2 sends BYE whenever it restarts its
    # stream (every hold and resume), so without this the stand-in would go deaf where a
    # browser would not.
    if isinstance(packet, RtcpByePacket):
        return
    await _handle_rtcp(self, packet)


RTCRtpReceiver._handle_rtcp_packet = _ignore_rtcp_bye  # type: ignore[method-assign]


class ToneTrack(MediaStreamTrack):
    """A 48 kHz mono sine, paced in real time like a microphone."""

    kind = "audio"

    def __init__(self, freq: int) -> None:
        super().__init__()
        self.freq = freq
        self._pts = 0
        self._start: float | None = None
        step = 2 * math.pi * freq / RATE
        # An integer number of cycles per frame when freq is a multiple of 50 Hz.
        self._pcm = array("h", (int(8000 * math.sin(step * i)) for i in range(FRAME))).tobytes()

    async def recv(self) -> av.AudioFrame:
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        due = self._start + self._pts / RATE
        wait = due - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)  # pacing a media clock, not synchronising a test
        frame = av.AudioFrame(format="s16", layout="mono", samples=FRAME)
        frame.planes[0].update(self._pcm)
        frame.sample_rate = RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, RATE)
        self._pts += FRAME
        return frame


class WebRtcPhone:
    def __init__(
        self, ws_url: str, user: str, password: str, *, domain: str, tone: int, listen: list[int]
    ) -> None:
        self.ws_url = ws_url
        self.user = user
        self.password = password
        self.domain = domain
        self.tone = tone
        self.detector = ToneDetector(listen, clock_rate=RATE)
        self.host = f"{secrets.token_hex(5)}.invalid"
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._requests: asyncio.Queue[Request] = asyncio.Queue()
        self._responses: asyncio.Queue[Response] = asyncio.Queue()
        self._tone_seen = asyncio.Event()
        self.pc: RTCPeerConnection | None = None
        self._media_tasks: list[asyncio.Task[None]] = []
        self.dialog: dict[str, str] = {}
        self.cseq = 0
        self.last_branch = ""
        self.last_reoffer = b""
        self.incoming: Request | None = None
        self.errors: list[Exception] = []

    # -- transport ---------------------------------------------------------------------
    async def connect(self) -> None:
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(self.ws_url, protocols=("sip",))
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            parsed = parse_message(msg.data.encode())
            if isinstance(parsed, Request):
                if parsed.method == "BYE":
                    await self.send(self._response(parsed, 200))
                    await self._stop_media()
                elif parsed.method in ("INFO", "UPDATE", "NOTIFY") or (
                    parsed.method == "INVITE" and "tag=" in (parsed.headers.get("To") or "")
                ):
                    try:
                        await self._in_dialog(parsed)
                    except Exception as exc:  # a test helper: keep reading, let the test see it
                        self.errors.append(exc)
                        await self.send(self._response(parsed, 500))
                await self._requests.put(parsed)
            else:
                await self._responses.put(parsed)

    async def send(self, text: str) -> None:
        assert self._ws is not None
        await self._ws.send_str(text)

    async def next_request(self, method: str, timeout: float = 10.0) -> Request:
        async with asyncio.timeout(timeout):
            while True:
                req = await self._requests.get()
                if req.method == method:
                    return req

    async def next_response(self, timeout: float = 10.0, *, final: bool = True) -> Response:
        async with asyncio.timeout(timeout):
            while True:
                resp = await self._responses.get()
                if resp.status >= 200 or not final:
                    return resp

    def _response(
        self, req: Request, status: int, *, body: bytes = b"", extra: list[str] | None = None
    ) -> str:
        reason = {200: "OK", 180: "Ringing"}.get(status, "Server Internal Error")
        lines = [f"SIP/2.0 {status} {reason}"]
        for name in ("Via", "Record-Route", "From", "To", "Call-ID", "CSeq"):
            for value in req.headers.get_all(name):
                if name == "To" and "tag=" not in value:
                    value += f";tag={self.dialog.setdefault('local_tag', secrets.token_hex(4))}"
                lines.append(f"{name}: {value}")
        lines += extra or []
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        return "\r\n".join(lines) + "\r\n\r\n" + body.decode()

    def _request(
        self,
        method: str,
        uri: str,
        headers: list[str],
        body: bytes = b"",
        cseq: int | None = None,
        branch: str | None = None,
    ) -> str:
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        self.last_branch = branch or f"z9hG4bK{secrets.token_hex(6)}"
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/WS {self.host};branch={self.last_branch}",
            "Max-Forwards: 70",
            *headers,
            f"CSeq: {cseq} {method}",
        ]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        return "\r\n".join(lines) + "\r\n\r\n" + body.decode()

    def _authorize(self, challenge: Response, method: str, uri: str) -> tuple[str, str]:
        header = "WWW-Authenticate" if challenge.status == 401 else "Proxy-Authenticate"
        chosen = next(
            c
            for c in map(DigestChallenge.parse, challenge.headers.get_all(header))
            if c.algorithm.value == "MD5"  # JsSIP and SIP.js only do MD5
        )
        value = build_authorization(
            chosen,
            method=method,
            uri=uri,
            username=self.user,
            cnonce=secrets.token_hex(4),
            password=self.password,
        )
        return ("Authorization" if challenge.status == 401 else "Proxy-Authorization"), value

    # -- registration ------------------------------------------------------------------
    async def register(self) -> Response:
        uri = f"sip:{self.domain}"
        call_id = secrets.token_hex(8)
        headers = [
            f"From: <sip:{self.user}@{self.domain}>;tag={secrets.token_hex(4)}",
            f"To: <sip:{self.user}@{self.domain}>",
            f"Call-ID: {call_id}",
            f"Contact: <sip:{self.user}@{self.host};transport=ws>;expires=600",
        ]
        await self.send(self._request("REGISTER", uri, headers))
        resp = await self.next_response()
        if resp.status == 401:
            name, value = self._authorize(resp, "REGISTER", uri)
            await self.send(self._request("REGISTER", uri, [*headers, f"{name}: {value}"]))
            resp = await self.next_response()
        return resp

    # -- media -------------------------------------------------------------------------
    def _new_pc(self) -> RTCPeerConnection:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTrack(ToneTrack(self.tone))

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._media_tasks.append(asyncio.get_running_loop().create_task(self._listen(track)))

        self.pc = pc
        return pc

    async def _listen(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame: Any = await track.recv()
                # aiortc decodes to packed s16 (Opus: stereo 48 kHz; G.711: mono 8 kHz).
                samples = array("h")
                samples.frombytes(bytes(frame.planes[0])[: frame.samples * 2 * self._chans(frame)])
                channels = self._chans(frame)
                mono = samples[::channels] if channels > 1 else samples
                if frame.sample_rate != RATE:
                    self._rate_detector(frame.sample_rate).feed(mono.tobytes())
                else:
                    self.detector.feed(mono.tobytes())
                if self.detector.take_new_detections():
                    self._tone_seen.set()

    @staticmethod
    def _chans(frame: Any) -> int:
        return len(frame.layout.channels)

    def _rate_detector(self, rate: int) -> ToneDetector:
        if self.detector.clock_rate != rate:
            self.detector = ToneDetector(self.detector.freqs, clock_rate=rate)
        return self.detector

    async def wait_tone(self, freq: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while freq not in self.detector.report()["detected"]:
                self._tone_seen.clear()
                await self._tone_seen.wait()

    def reset_audio(self) -> None:
        self.detector.reset()
        self._tone_seen.clear()

    async def _stop_media(self) -> None:
        if self.pc is not None:
            await self.pc.close()
            self.pc = None
        for task in self._media_tasks:
            task.cancel()
        self._media_tasks.clear()

    async def _in_dialog(self, req: Request) -> None:
        """A re-INVITE (hold, resume: RFC 3264 §8 re-offer) is answered from the peer
        connection; INFO and body-less UPDATE just get 200."""
        if req.method != "INVITE" or not req.body or self.pc is None:
            await self.send(self._response(req, 200))
            return
        self.last_reoffer = req.body
        await self.pc.setRemoteDescription(RTCSessionDescription(req.body.decode(), "offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        contact = f"Contact: <sip:{self.user}@{self.host};transport=ws>"
        body = self.pc.localDescription.sdp.encode()
        await self.send(self._response(req, 200, body=body, extra=[contact]))

    # -- calls -------------------------------------------------------------------------
    async def answer(self, invite: Request) -> None:
        """Answer an incoming INVITE (180, then 200 with our WebRTC answer), wait for ACK."""
        self.dialog = {"call_id": invite.headers.get("Call-ID") or ""}
        self.incoming = invite
        await self.send(self._response(invite, 180))
        pc = self._new_pc()
        await pc.setRemoteDescription(RTCSessionDescription(invite.body.decode(), "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        contact = f"Contact: <sip:{self.user}@{self.host};transport=ws>"
        await self.send(
            self._response(invite, 200, body=pc.localDescription.sdp.encode(), extra=[contact])
        )
        await self.next_request("ACK")

    async def call(self, target: str, *, extra: list[str] | None = None) -> Response:
        """Place a call (INVITE with our WebRTC offer, digest on challenge); returns the final
        response after ACKing it."""
        pc = self._new_pc()
        await pc.setLocalDescription(await pc.createOffer())
        offer = pc.localDescription.sdp.encode()
        call_id = secrets.token_hex(8)
        tag = secrets.token_hex(4)
        headers = [
            f"From: <sip:{self.user}@{self.domain}>;tag={tag}",
            f"To: <{target}>",
            f"Call-ID: {call_id}",
            f"Contact: <sip:{self.user}@{self.host};transport=ws;ob>",
            *(extra or []),
        ]
        await self.send(self._request("INVITE", target, headers, offer))
        resp = await self.next_response()
        if resp.status in (401, 407):
            await self.send(self._ack(resp, target, headers))
            name, value = self._authorize(resp, "INVITE", target)
            headers.append(f"{name}: {value}")
            await self.send(self._request("INVITE", target, headers, offer))
            resp = await self.next_response(timeout=20)
        await self.send(self._ack(resp, target, headers))
        if resp.status == 200:
            await pc.setRemoteDescription(RTCSessionDescription(resp.body.decode(), "answer"))
            self.dialog = {
                "call_id": call_id,
                "from": headers[0],
                "to": "To: " + (resp.headers.get("To") or ""),
                "target": target,
            }
        return resp

    def _ack(self, resp: Response, target: str, headers: list[str]) -> str:
        cseq = int((resp.headers.get("CSeq") or "1").split()[0])
        to = resp.headers.get("To") or ""
        keep = [h for h in headers if h.startswith(("From:", "Call-ID:"))]
        lines = [f"To: {to}", *keep]
        # §17.1.1.3: the ACK of a non-2xx belongs to the INVITE transaction (same
        # branch); the ACK of a 2xx is a transaction of its own (§13.2.2.4).
        branch = self.last_branch if resp.status >= 300 else None
        return self._request("ACK", target, lines, cseq=cseq, branch=branch)

    async def refer(self, target: str) -> Response:
        """Blind transfer (RFC 3515) of the call we answered: REFER in its dialog."""
        invite = self.incoming
        assert invite is not None
        to = (invite.headers.get("To") or "") + f";tag={self.dialog['local_tag']}"
        contact = invite.headers.get("Contact") or ""
        remote = contact.strip().lstrip("<").split(">", 1)[0]
        headers = [
            f"From: {to}",
            f"To: {invite.headers.get('From')}",
            f"Call-ID: {self.dialog['call_id']}",
            f"Contact: <sip:{self.user}@{self.host};transport=ws>",
            f"Refer-To: <{target}>",
        ]
        await self.send(self._request("REFER", remote, headers))
        return await self.next_response()

    async def hangup(self) -> Response:
        d = self.dialog
        bye = self._request(
            "BYE",
            d["target"],
            [d["from"], d["to"], f"Call-ID: {d['call_id']}"],
        )
        await self.send(bye)
        resp = await self.next_response()
        await self._stop_media()
        return resp

    async def close(self) -> None:
        await self._stop_media()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()
