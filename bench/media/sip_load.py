"""Signalling side of bench/media: the generator's rtpengine ("browser" media), SIP-over-WS
callers, the trunk UAS and a Janus API client. asyncio; used by run.py only.

The load generator's WebRTC peer is a second rtpengine ("L"): it terminates ICE and
DTLS-SRTP in C (what aiortc does in Python for ~6% of a core per peer), so one L can stand
in for hundreds of browsers. For each call the bench gives L a plain RTP offer pointing at
the worker's ``a`` socket and asks for the WebRTC side: that SDP (UDP/TLS/RTP/SAVPF, ICE,
fingerprint, rtcp-mux) is what the "browser" sends. The gateway's WebRTC answer goes back
into L, whose plain answer tells the worker where to send.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from sip_test_rig.ports import LOOPBACK, free_port
from sip_test_rig.procs import stop_process
from ucgate.media import ng
from ucgate.sip.digest import DigestChallenge, build_authorization
from ucgate.sip.message import Request, Response
from ucgate.sip.parser import parse_message

DOMAIN = "example.test"


def plain_sdp(port: int, session: str = "bench", ssrc: int | None = None) -> bytes:
    """A G.711 RTP/AVP offer or answer for a worker socket (RFC 4566, RFC 3551 PT 0).

    ``ssrc`` adds ``a=ssrc`` (RFC 5576) as every browser signals it: Janus drops SRTP from a
    browser whose SSRC it was not told ("Unknown SSRC, dropping packet")."""
    ssrc_line = f"a=ssrc:{ssrc} cname:{session}\r\n" if ssrc is not None else ""
    sid = secrets.randbelow(10**9)
    return (
        "v=0\r\n"
        f"o=- {sid} 1 IN IP4 {LOOPBACK}\r\n"
        f"s={session}\r\n"
        f"c=IN IP4 {LOOPBACK}\r\n"
        "t=0 0\r\n"
        f"m=audio {port} RTP/AVP 0\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
        "a=ptime:20\r\n"
        "a=sendrecv\r\n"
        f"{ssrc_line}"
    ).encode()


_MEDIA = re.compile(rb"^m=audio (\d+) ", re.M)
_CONN = re.compile(rb"^c=IN IP4 (\S+)", re.M)


def media_address(sdp: bytes) -> tuple[str, int]:
    """Where a plain RTP/AVP SDP wants its audio (the first c= line wins: the bench's
    peers put one at session level or in the audio section, never both differently)."""
    m = _MEDIA.search(sdp)
    c = _CONN.search(sdp)
    if m is None or c is None:
        raise ValueError(f"no audio address in SDP:\n{sdp.decode(errors='replace')}")
    return c.group(1).decode(), int(m.group(1))


# -- rtpengine (gateway "G" or generator "L") ----------------------------------------------


class RtpengineProc:
    """One rtpengine, user-space forwarding, on a port range sized for the bench (the rig's
    :class:`sip_test_rig.rtpengine.Rtpengine` keeps 1,000 ports: ~250 calls)."""

    def __init__(
        self, workdir: Path, name: str, *, threads: int, port_base: int, ip: str = LOOPBACK
    ) -> None:
        self.ip = ip
        self.workdir = workdir
        self.name = name
        self.threads = threads
        self.port_base = port_base
        self.proc: subprocess.Popen[bytes] | None = None
        self.ng_port = 0

    def start(self, ng_port: int) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ng_port = ng_port
        log = (self.workdir / f"{self.name}.log").open("ab")
        self.proc = subprocess.Popen(
            [
                "rtpengine",
                # not /etc/rtpengine/rtpengine.conf: its fixed CLI (2224) and HTTP (2225)
                # ports would make a second instance exit at once
                "--config-file=none",
                "--foreground",
                "--log-stderr",
                "--table=-1",
                f"--interface={self.ip}",
                f"--listen-ng={LOOPBACK}:{ng_port}",
                # its CLI defaults to 127.0.0.1:2224: two instances would collide there
                f"--listen-cli={LOOPBACK}:{free_port()}",
                f"--port-min={self.port_base}",
                f"--port-max={self.port_base + 3999}",
                f"--num-threads={self.threads}",
                f"--log-level={os.environ.get('BENCH_RTPENGINE_LOG', '4')}",
                "--delete-delay=0",
                "--timeout=120",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


class _NgClient(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.pending: dict[str, asyncio.Future[dict[str, Any]]] = {}

    def datagram_received(self, data: bytes, addr: Any) -> None:
        with contextlib.suppress(ng.NgProtocolError):
            cookie, reply = ng.decode(data)
            fut = self.pending.pop(cookie, None)
            if fut is not None and not fut.done():
                fut.set_result(reply)


class Ng:
    """ng commands to one rtpengine, retried with the same cookie (bounded)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._proto = _NgClient()
        self._transport: asyncio.DatagramTransport | None = None

    async def open(self, ready_within: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: self._proto, remote_addr=(LOOPBACK, self.port)
        )
        deadline = loop.time() + ready_within
        while True:
            try:
                await self.call(ng.ping(), tries=1, wait=0.2)
                return
            except TimeoutError:
                if loop.time() > deadline:
                    raise

    async def call(
        self, command: dict[str, Any], *, tries: int = 4, wait: float = 1.0
    ) -> dict[str, Any]:
        assert self._transport is not None
        cookie = secrets.token_hex(8)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._proto.pending[cookie] = fut
        data = ng.encode(cookie, command)
        try:
            for _ in range(tries):
                self._transport.sendto(data)
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(asyncio.shield(fut), wait)
        finally:
            self._proto.pending.pop(cookie, None)
        raise TimeoutError(f"rtpengine :{self.port} did not answer {command.get('command')}")

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


# What the generator's rtpengine puts on each side: the browser side gets exactly what a
# browser offers (UDP/TLS/RTP/SAVPF, ICE, DTLS-SRTP, rtcp-mux, a=mid); the worker side plain
# RTP. No transcoding flags: PCMU end to end, so the payload stamps arrive untouched.
TO_BROWSER_SIDE = {
    "transport-protocol": "UDP/TLS/RTP/SAVPF",
    "ICE": "force",
    "SDES": ["off"],
    "rtcp-mux": ["offer", "require"],
    "flags": ["trust-address", "generate-mid"],
    "replace": ["origin", "session-connection"],
}
TO_WORKER_SIDE = {
    "transport-protocol": "RTP/AVP",
    "ICE": "remove",
    "rtcp-mux": ["demux"],
    "flags": ["trust-address"],
    "replace": ["origin", "session-connection"],
}


class BrowserMedia:
    """The generator's rtpengine as N browsers' media stacks."""

    def __init__(self, ng_client: Ng, run_id: str) -> None:
        self.ng = ng_client
        self.run_id = run_id

    def _cid(self, i: int) -> str:
        return f"{self.run_id}-{i}"

    async def webrtc_offer(self, i: int, worker_port: int, ssrc: int) -> bytes:
        reply = await self.ng.call(
            {
                "command": "offer",
                "call-id": self._cid(i),
                "from-tag": "worker",
                "sdp": plain_sdp(worker_port, f"browser{i}", ssrc),
                **TO_BROWSER_SIDE,
            }
        )
        return ng.result_sdp(reply)

    async def take_answer(self, i: int, webrtc_answer: bytes) -> tuple[str, int]:
        """Feed the gateway's WebRTC answer; return where the worker must send its RTP."""
        reply = await self.ng.call(
            {
                "command": "answer",
                "call-id": self._cid(i),
                "from-tag": "worker",
                "to-tag": "gateway",
                "sdp": webrtc_answer,
                **TO_WORKER_SIDE,
            }
        )
        return media_address(ng.result_sdp(reply))

    async def delete(self, i: int) -> None:
        with contextlib.suppress(TimeoutError):
            await self.ng.call({"command": "delete", "call-id": self._cid(i)}, tries=2)


# -- trunk UAS (UDP) -----------------------------------------------------------------------


def _response(
    req: Request, status: int, reason: str, tag: str, body: bytes = b"", contact: str = ""
) -> bytes:
    lines = [f"SIP/2.0 {status} {reason}"]
    for name in ("Via", "Record-Route", "From", "To", "Call-ID", "CSeq"):
        for value in req.headers.get_all(name):
            if name == "To" and "tag=" not in value:
                value += f";tag={tag}"
            lines.append(f"{name}: {value}")
    if body:
        lines += [f"Contact: <{contact}>", "Content-Type: application/sdp"]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class TrunkCall:
    index: int
    offer: bytes
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    ended: bool = False


class TrunkUas(asyncio.DatagramProtocol):
    """The trunk (or PBX) the gateway calls: answers every INVITE at once with the worker's
    ``b`` socket of the call named by the dialled number (``+1555<index:07d>``)."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self.ports: dict[int, int] = {}  # call index -> worker b port
        self.calls: dict[int, TrunkCall] = {}
        self.by_call_id: dict[str, int] = {}
        self.tags: dict[str, str] = {}
        self._responses: asyncio.Queue[Response] = asyncio.Queue()
        self.errors: list[str] = []

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=(LOOPBACK, 0)
        )
        self.port = self.transport.get_extra_info("sockname")[1]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if data.strip() == b"":
            return  # CRLF keep-alive (RFC 5626 §3.5.1)
        try:
            msg = parse_message(data)
        except Exception as exc:  # a bench peer: note and drop what it cannot read
            self.errors.append(f"unparsable: {exc}")
            return
        if isinstance(msg, Response):
            self._responses.put_nowait(msg)
            return
        assert self.transport is not None
        call_id = msg.headers.get("Call-ID") or ""
        tag = self.tags.setdefault(call_id, secrets.token_hex(4))
        if msg.method == "INVITE":
            m = re.search(r"\+1555(\d{7})", msg.uri)
            if m is None or int(m.group(1)) not in self.ports:
                self.transport.sendto(_response(msg, 404, "Not Found", tag), addr)
                return
            index = int(m.group(1))
            self.by_call_id[call_id] = index
            call = self.calls.get(index)
            if call is None or "tag=" not in (msg.headers.get("To") or ""):
                call = self.calls[index] = TrunkCall(index, msg.body)
            body = plain_sdp(self.ports[index], "trunk")
            contact = f"sip:trunk@{LOOPBACK}:{self.port}"
            self.transport.sendto(_response(msg, 200, "OK", tag, body, contact), addr)
            call.answered.set()
        elif msg.method == "ACK":
            return
        else:
            if msg.method == "BYE" and call_id in self.by_call_id:
                self.calls[self.by_call_id[call_id]].ended = True
            self.transport.sendto(_response(msg, 200, "OK", tag), addr)

    async def register(self, server_port: int, user: str, password: str) -> None:
        """REGISTER the trunk account from this socket, with digest (RFC 3261 §10, §22)."""
        assert self.transport is not None
        uri = f"sip:{DOMAIN}"
        call_id = secrets.token_hex(8)
        from_tag = secrets.token_hex(4)
        auth: list[str] = []
        for cseq in (1, 2):
            lines = [
                f"REGISTER {uri} SIP/2.0",
                f"Via: SIP/2.0/UDP {LOOPBACK}:{self.port};branch=z9hG4bK{secrets.token_hex(6)}"
                ";rport",
                "Max-Forwards: 70",
                f"From: <sip:{user}@{DOMAIN}>;tag={from_tag}",
                f"To: <sip:{user}@{DOMAIN}>",
                f"Call-ID: {call_id}",
                f"CSeq: {cseq} REGISTER",
                f"Contact: <sip:{user}@{LOOPBACK}:{self.port}>;expires=3600",
                *auth,
                "Content-Length: 0",
            ]
            self.transport.sendto(
                ("\r\n".join(lines) + "\r\n\r\n").encode(), (LOOPBACK, server_port)
            )
            async with asyncio.timeout(10):
                resp = await self._responses.get()
            if resp.status == 200:
                return
            if resp.status != 401:
                raise RuntimeError(f"trunk REGISTER: {resp.status}")
            challenge = next(
                c
                for c in map(DigestChallenge.parse, resp.headers.get_all("WWW-Authenticate"))
                if c.algorithm.value == "MD5"
            )
            value = build_authorization(
                challenge,
                method="REGISTER",
                uri=uri,
                username=user,
                cnonce=secrets.token_hex(4),
                password=password,
            )
            auth = [f"Authorization: {value}"]
        raise RuntimeError("trunk REGISTER: challenged twice")


# -- a browser agent over SIP/WebSocket (RFC 7118), like JsSIP -----------------------------


class WsAgent:
    """One agent tab: its own WebSocket, MD5 digest, one outgoing call at a time."""

    def __init__(self, http: aiohttp.ClientSession, url: str, user: str, password: str) -> None:
        self.http = http
        self.url = url
        self.user = user
        self.password = password
        self.host = f"{secrets.token_hex(5)}.invalid"
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._responses: asyncio.Queue[Response] = asyncio.Queue()
        self.cseq = 0
        self.dialog: list[str] = []
        self.target = ""
        self.byes_received = 0

    async def connect(self) -> None:
        self.ws = await self.http.ws_connect(self.url, protocols=("sip",), heartbeat=None)
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            parsed = parse_message(msg.data.encode())
            if isinstance(parsed, Response):
                self._responses.put_nowait(parsed)
            else:
                if parsed.method == "BYE":
                    self.byes_received += 1
                if parsed.method != "ACK":
                    await self.ws.send_str(
                        _response(parsed, 200, "OK", secrets.token_hex(4)).decode()
                    )

    def _request(self, method: str, headers: list[str], body: bytes, cseq: int) -> str:
        lines = [
            f"{method} {self.target} SIP/2.0",
            f"Via: SIP/2.0/WS {self.host};branch=z9hG4bK{secrets.token_hex(6)}",
            "Max-Forwards: 70",
            *headers,
            f"CSeq: {cseq} {method}",
        ]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        return "\r\n".join(lines) + "\r\n\r\n" + body.decode()

    async def _final(self, timeout: float) -> Response:
        async with asyncio.timeout(timeout):
            while True:
                resp = await self._responses.get()
                if resp.status >= 200:
                    return resp

    async def call(self, target: str, offer: bytes, timeout: float = 30.0) -> bytes:
        """INVITE with ``offer`` (answering a 407 once); ACK; return the 200's SDP."""
        assert self.ws is not None
        self.target = target
        headers = [
            f"From: <sip:{self.user}@{DOMAIN}>;tag={secrets.token_hex(4)}",
            f"To: <{target}>",
            f"Call-ID: {secrets.token_hex(8)}",
            f"Contact: <sip:{self.user}@{self.host};transport=ws;ob>",
        ]
        for _ in range(2):
            self.cseq += 1
            await self.ws.send_str(self._request("INVITE", headers, offer, self.cseq))
            resp = await self._final(timeout)
            to = f"To: {resp.headers.get('To')}"
            if resp.status in (401, 407):
                ack_headers = [headers[0], to, headers[2]]
                # ACK of a non-2xx reuses the INVITE's branch in real UAs; ucgate matches it
                # by dialog either way and the challenge transaction ends on Timer H.
                await self.ws.send_str(self._request("ACK", ack_headers, b"", self.cseq))
                name = "WWW-Authenticate" if resp.status == 401 else "Proxy-Authenticate"
                chal = next(
                    c
                    for c in map(DigestChallenge.parse, resp.headers.get_all(name))
                    if c.algorithm.value == "MD5"
                )
                value = build_authorization(
                    chal,
                    method="INVITE",
                    uri=target,
                    username=self.user,
                    cnonce=secrets.token_hex(4),
                    password=self.password,
                )
                hdr = "Authorization" if resp.status == 401 else "Proxy-Authorization"
                headers = [*headers, f"{hdr}: {value}"]
                continue
            if resp.status != 200:
                raise RuntimeError(f"INVITE {target}: {resp.status} {resp.reason}")
            self.dialog = [headers[0], to, headers[2]]
            await self.ws.send_str(self._request("ACK", self.dialog, b"", self.cseq))
            return resp.body
        raise RuntimeError(f"INVITE {target}: challenged twice")

    async def hangup(self) -> int:
        assert self.ws is not None
        if not self.dialog:
            return 0
        self.cseq += 1
        await self.ws.send_str(self._request("BYE", self.dialog, b"", self.cseq))
        resp = await self._final(10)
        self.dialog = []
        return resp.status

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self.ws is not None:
            await self.ws.close()


# -- Janus (SIP plugin) over its WebSocket API ---------------------------------------------


class JanusApi:
    """One WebSocket (``janus-protocol``), one session, one SIP-plugin handle per call."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.session = 0
        self._tx: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._events: dict[int, asyncio.Queue[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        self.ws = await self.http.ws_connect(self.url, protocols=("janus-protocol",))
        self._reader = asyncio.get_running_loop().create_task(self._read())
        reply = await self._send({"janus": "create"})
        self.session = int(reply["data"]["id"])

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            doc = json.loads(msg.data)
            kind = doc.get("janus")
            tx = doc.get("transaction")
            if kind in ("success", "error") and tx in self._tx:
                self._tx.pop(tx).set_result(doc)
            elif (kind == "event" and "sender" in doc) or (
                kind in ("hangup", "webrtcup", "media") and "sender" in doc
            ):
                self._events.setdefault(int(doc["sender"]), asyncio.Queue()).put_nowait(doc)

    async def _send(self, doc: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        assert self.ws is not None
        tx = secrets.token_hex(6)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._tx[tx] = fut
        if self.session:
            doc = {"session_id": self.session, **doc}
        await self.ws.send_str(json.dumps({**doc, "transaction": tx}))
        async with asyncio.timeout(timeout):
            reply = await fut
        if reply.get("janus") == "error":
            raise RuntimeError(f"janus: {reply.get('error')}")
        return reply

    async def _message(self, handle: int, body: dict[str, Any], jsep: Any = None) -> None:
        assert self.ws is not None
        doc: dict[str, Any] = {
            "janus": "message",
            "session_id": self.session,
            "handle_id": handle,
            "transaction": secrets.token_hex(6),
            "body": body,
        }
        if jsep is not None:
            doc["jsep"] = jsep
        await self.ws.send_str(json.dumps(doc))

    async def _event(self, handle: int, wanted: set[str], timeout: float) -> dict[str, Any]:
        queue = self._events.setdefault(handle, asyncio.Queue())
        async with asyncio.timeout(timeout):
            while True:
                doc = await queue.get()
                data = doc.get("plugindata", {}).get("data", {})
                if "error" in data:
                    raise RuntimeError(f"janus sip: {data['error']}")
                event = data.get("result", {}).get("event")
                if event in wanted:
                    return doc
                if event == "hangup":
                    raise RuntimeError(f"janus sip hangup: {data}")

    async def call(self, index: int, uri: str, offer: bytes, timeout: float = 30.0) -> int:
        reply = await self._send({"janus": "attach", "plugin": "janus.plugin.sip"})
        handle = int(reply["data"]["id"])
        await self._message(
            handle,
            {"request": "register", "type": "guest", "username": f"sip:load{index}@{LOOPBACK}"},
        )
        await self._event(handle, {"registered"}, timeout)
        await self._message(
            handle, {"request": "call", "uri": uri}, {"type": "offer", "sdp": offer.decode()}
        )
        self._answers = getattr(self, "_answers", {})
        doc = await self._event(handle, {"accepted"}, timeout)
        self._answers[handle] = doc["jsep"]["sdp"].encode()
        return handle

    def answer_of(self, handle: int) -> bytes:
        answer: bytes = self._answers[handle]
        return answer

    async def hangup(self, handle: int) -> None:
        await self._message(handle, {"request": "hangup"})
        with contextlib.suppress(TimeoutError, RuntimeError):
            await self._event(handle, {"hangup"}, 10)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._send({"janus": "destroy"}, timeout=5)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self.ws is not None:
            await self.ws.close()


def monotonic() -> float:
    return time.monotonic()
