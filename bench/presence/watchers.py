"""A pool of SIP presence watchers on one UDP socket: the bench's load side for fan-out and memory.

Many subscriptions (RFC 6665) share one UDP socket on 127.0.0.1, read from the asyncio loop;
each has its own Call-ID, so an incoming NOTIFY is matched to its subscription by Call-ID alone
and answered 200 at once. The receive time of every datagram is the kernel's (SO_TIMESTAMPNS,
CLOCK_REALTIME, compare with ``time.time()``): when 1,000 NOTIFYs arrive in a burst, the pool's
own Python work on the earlier ones must not count as the server's delay. Digest (MD5, qop=auth,
RFC 2617 / RFC 3261 §22) is answered with ``uri`` = Request-URI, as a strict server requires
(RFC 7616 §3.4.6).

Independent of ucgate's SIP code on purpose: the load generator must not share the bugs of the
server it measures. Requests are retransmitted on Timer E's schedule (RFC 3261 §17.1.2.2: T1
doubling, capped at T2) and counted, since a retransmission on loopback means a struggling server.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import re
import socket
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

T1 = 0.5
T2 = 4.0
TIMER_F = 32.0  # 64 * T1: a non-INVITE client transaction gives up (RFC 3261 §17.1.2.2)
_COMPACT = {
    "i": "call-id",
    "f": "from",
    "t": "to",
    "v": "via",
    "m": "contact",
    "l": "content-length",
    "c": "content-type",
    "o": "event",
    "e": "content-encoding",
}
# Linux: SO_TIMESTAMPNS (35) delivers SCM_TIMESTAMPNS, a struct timespec, with each datagram.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@qq")
_PARAM = re.compile(r'([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]+)')


class WatcherError(Exception):
    """A subscription or publication did not reach the expected final response."""


@dataclass(slots=True)
class Message:
    """A parsed SIP message: enough of it for a watcher (status or method, headers, body)."""

    start: str
    headers: dict[str, list[str]]
    body: bytes

    @property
    def status(self) -> int:
        return int(self.start.split(" ", 2)[1]) if self.start.startswith("SIP/2.0 ") else 0

    @property
    def method(self) -> str:
        return "" if self.start.startswith("SIP/2.0 ") else self.start.split(" ", 1)[0]

    def header(self, name: str) -> str:
        values = self.headers.get(name, [])
        return values[0] if values else ""


def parse(data: bytes) -> Message:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("utf-8", errors="replace").split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:
            continue  # line folding: not produced by the servers measured here
        name, _, value = line.partition(":")
        key = name.strip().lower()
        key = _COMPACT.get(key, key)
        headers.setdefault(key, []).append(value.strip())
    return Message(lines[0], headers, body)


def tag_of(name_addr: str) -> str:
    match = re.search(r";\s*tag=([^;>\s]+)", name_addr.rsplit(">", 1)[-1])
    return match.group(1) if match else ""


def digest_authorization(challenge: str, *, method: str, uri: str, user: str, password: str) -> str:
    """An ``Authorization`` value answering one ``WWW-Authenticate: Digest`` challenge."""
    params = {k.lower(): v.strip('"') for k, v in _PARAM.findall(challenge.split(" ", 1)[1])}
    realm, nonce = params["realm"], params["nonce"]
    ha1 = hashlib.md5(f"{user}:{realm}:{password}".encode()).hexdigest()
    ha2 = hashlib.md5(f"{method}:{uri}".encode()).hexdigest()
    fields = [f'username="{user}"', f'realm="{realm}"', f'nonce="{nonce}"', f'uri="{uri}"']
    qops = [q.strip() for q in params.get("qop", "").split(",") if q.strip()]
    if "auth" in qops:
        cnonce = os.urandom(8).hex()
        response = hashlib.md5(f"{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}".encode()).hexdigest()
        fields += ["qop=auth", "nc=00000001", f'cnonce="{cnonce}"']
    else:
        response = hashlib.md5(f"{ha1}:{nonce}:{ha2}".encode()).hexdigest()
    fields += [f'response="{response}"', "algorithm=MD5"]
    if "opaque" in params:
        fields.append(f'opaque="{params["opaque"]}"')
    return "Digest " + ", ".join(fields)


def md5_challenge(values: Iterable[str]) -> str:
    """The MD5 challenge among several (a server may offer SHA-256 first, RFC 7616 §3.7)."""
    for value in values:
        algorithm = re.search(r"algorithm\s*=\s*\"?([A-Za-z0-9-]+)", value)
        if value.lower().startswith("digest") and (
            algorithm is None or algorithm.group(1).upper() == "MD5"
        ):
            return value
    raise WatcherError(f"no MD5 digest challenge in {list(values)}")


@dataclass(slots=True)
class Subscription:
    watcher: str
    password: str
    presentity: str
    event: str = "presence"
    call_id: str = ""
    from_tag: str = ""
    to_tag: str = ""
    cseq: int = 0
    #: (receive time, Subscription-State value) of every NOTIFY, in order.
    notifies: list[tuple[float, str]] = field(default_factory=list)
    established: bool = False


@dataclass(slots=True)
class _Pending:
    data: bytes
    future: asyncio.Future[Message]
    next_retransmit: float
    interval: float
    deadline: float


class WatcherPool:
    """Subscriptions and publications from one UDP socket; see the module docstring."""

    def __init__(self, server: tuple[str, int], domain: str, *, accept: str = "") -> None:
        self.server = server
        self.domain = domain
        self.accept = accept
        self.sock: socket.socket | None = None
        self.local = ("127.0.0.1", 0)
        self.by_call_id: dict[str, Subscription] = {}
        self.retransmissions = 0
        self.notify_count = 0
        self.unmatched = 0
        self._pending: dict[str, _Pending] = {}
        self._ids = itertools.count(1)
        self._prefix = os.urandom(4).hex()
        self._timer: asyncio.Task[None] | None = None
        #: Called with (subscription, kernel receive time) for every NOTIFY; the fan-out probe.
        self.on_notify: Callable[[Subscription, float], None] | None = None

    # -- lifetime ---------------------------------------------------------------------------

    async def start(self) -> WatcherPool:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # 1,000 NOTIFYs can land at once: a deep receive buffer keeps the kernel from dropping
        # them while the loop is busy (a drop would show up as a server retransmission).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 2**20)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setblocking(False)
        sock.bind(("127.0.0.1", 0))
        self.sock = sock
        self.local = sock.getsockname()
        loop.add_reader(sock.fileno(), self._read_ready)
        self._timer = asyncio.create_task(self._retransmit_loop())
        return self

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        if self.sock is not None:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.cancel()

    # -- receive ----------------------------------------------------------------------------

    def _read_ready(self) -> None:
        assert self.sock is not None
        for _ in range(256):  # drain a burst, but give the loop back now and then
            try:
                data, ancdata, _, _ = self.sock.recvmsg(65535, socket.CMSG_SPACE(16))
            except (BlockingIOError, InterruptedError):
                return
            arrived = time.time()
            for level, kind, value in ancdata:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = _TIMESPEC.unpack(value[: _TIMESPEC.size])
                    arrived = sec + nsec / 1e9
            self.datagram_received(data, arrived)

    def datagram_received(self, data: bytes, now: float) -> None:
        msg = parse(data)
        if msg.status:
            branch = _branch(msg.header("via"))
            pending = self._pending.get(branch)
            if pending is not None and msg.status >= 200 and not pending.future.done():
                del self._pending[branch]
                pending.future.set_result(msg)
            return
        if msg.method == "NOTIFY":
            self._on_notify(msg, data, now)
        elif msg.method:
            self._reply(msg, 405, "Method Not Allowed")

    def _on_notify(self, msg: Message, raw: bytes, now: float) -> None:
        sub = self.by_call_id.get(msg.header("call-id"))
        if sub is None:
            self.unmatched += 1
            self._reply(msg, 481, "Subscription Does Not Exist")
            return
        self._reply(msg, 200, "OK")
        if not sub.to_tag:
            # NOTIFY before the 200 (RFC 6665 §4.1.2.4): its From tag is the dialog's remote tag.
            sub.to_tag = tag_of(msg.header("from"))
        self.notify_count += 1
        sub.notifies.append((now, msg.header("subscription-state")))
        if self.on_notify is not None:
            self.on_notify(sub, now)

    def _reply(self, msg: Message, status: int, reason: str) -> None:
        lines = [f"SIP/2.0 {status} {reason}"]
        lines += [f"Via: {v}" for v in msg.headers.get("via", [])]
        to = msg.header("to")
        if status >= 300 and not tag_of(to):
            to += f";tag={self._prefix}"
        lines += [
            f"From: {msg.header('from')}",
            f"To: {to}",
            f"Call-ID: {msg.header('call-id')}",
            f"CSeq: {msg.header('cseq')}",
            "Content-Length: 0",
        ]
        self._send(("\r\n".join(lines) + "\r\n\r\n").encode())

    def _send(self, data: bytes) -> None:
        assert self.sock is not None
        with contextlib.suppress(BlockingIOError):  # a full send buffer: Timer E resends
            self.sock.sendto(data, self.server)

    # -- client transactions ----------------------------------------------------------------

    async def _request(self, data: bytes, branch: str) -> Message:
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        future: asyncio.Future[Message] = loop.create_future()
        self._pending[branch] = _Pending(data, future, now + T1, T1, now + TIMER_F)
        self._send(data)
        return await future

    async def _retransmit_loop(self) -> None:
        while True:
            await asyncio.sleep(0.05)  # timer granularity; T1 is 500 ms
            now = time.monotonic()
            for branch, pending in list(self._pending.items()):
                if pending.future.done():
                    self._pending.pop(branch, None)
                elif now >= pending.deadline:
                    self._pending.pop(branch, None)
                    pending.future.set_exception(WatcherError("Timer F: no final response"))
                elif now >= pending.next_retransmit:
                    self.retransmissions += 1
                    self._send(pending.data)
                    pending.interval = min(pending.interval * 2, T2)
                    pending.next_retransmit = now + pending.interval

    def _build(
        self,
        method: str,
        uri: str,
        *,
        from_user: str,
        from_tag: str,
        to: str,
        call_id: str,
        cseq: int,
        extra: list[str],
        body: bytes = b"",
    ) -> tuple[bytes, str]:
        branch = f"z9hG4bK{self._prefix}{next(self._ids)}"
        host, port = self.local
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/UDP {host}:{port};branch={branch};rport",
            "Max-Forwards: 70",
            f"From: <sip:{from_user}@{self.domain}>;tag={from_tag}",
            f"To: {to}",
            f"Call-ID: {call_id}",
            f"CSeq: {cseq} {method}",
            *extra,
            "User-Agent: ucgate-bench-watchers",
            f"Content-Length: {len(body)}",
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body, branch

    async def _authenticated(
        self,
        build: Callable[[list[str]], tuple[bytes, str]],
        *,
        method: str,
        uri: str,
        user: str,
        password: str,
    ) -> Message:
        """Send; on 401 answer the challenge once (RFC 3261 §22.2) and send again."""
        data, branch = build([])
        response = await self._request(data, branch)
        if response.status == 401:
            challenge = md5_challenge(response.headers.get("www-authenticate", []))
            auth = digest_authorization(
                challenge, method=method, uri=uri, user=user, password=password
            )
            data, branch = build([f"Authorization: {auth}"])
            response = await self._request(data, branch)
        return response

    # -- subscriptions ----------------------------------------------------------------------

    def new_subscription(
        self, watcher: str, password: str, presentity: str, event: str = "presence"
    ) -> Subscription:
        n = next(self._ids)
        sub = Subscription(
            watcher,
            password,
            presentity,
            event,
            call_id=f"{self._prefix}-{n}@bench",
            from_tag=f"{self._prefix}{n}",
        )
        self.by_call_id[sub.call_id] = sub
        return sub

    async def subscribe(self, sub: Subscription, *, expires: int) -> None:
        """SUBSCRIBE (with digest) until a 2xx, then wait for the first NOTIFY (bounded)."""
        uri = f"sip:{sub.presentity}@{self.domain}"
        accept = self.accept or (
            "application/pidf+xml" if sub.event == "presence" else "application/dialog-info+xml"
        )
        host, port = self.local

        def build(auth: list[str]) -> tuple[bytes, str]:
            sub.cseq += 1
            return self._build(
                "SUBSCRIBE",
                uri,
                from_user=sub.watcher,
                from_tag=sub.from_tag,
                to=f"<{uri}>",
                call_id=sub.call_id,
                cseq=sub.cseq,
                extra=[
                    f"Contact: <sip:{sub.watcher}@{host}:{port}>",
                    f"Event: {sub.event}",
                    f"Accept: {accept}",
                    f"Expires: {expires}",
                    *auth,
                ],
            )

        response = await self._authenticated(
            build, method="SUBSCRIBE", uri=uri, user=sub.watcher, password=sub.password
        )
        if response.status // 100 != 2:
            raise WatcherError(f"SUBSCRIBE {sub.watcher}->{sub.presentity}: {response.start}")
        sub.to_tag = tag_of(response.header("to")) or sub.to_tag
        deadline = time.monotonic() + TIMER_F
        while not sub.notifies:  # the initial NOTIFY (RFC 6665 §4.2.1.2), bounded
            if time.monotonic() > deadline:
                raise WatcherError(f"no NOTIFY for {sub.watcher}->{sub.presentity}")
            await asyncio.sleep(0.01)
        sub.established = True

    async def subscribe_all(
        self, subs: list[Subscription], *, expires: int, concurrency: int = 200
    ) -> int:
        """Subscribe every one, at most ``concurrency`` in flight; returns the failures."""
        gate = asyncio.Semaphore(concurrency)
        failures = 0

        async def one(sub: Subscription) -> None:
            nonlocal failures
            async with gate:
                try:
                    await self.subscribe(sub, expires=expires)
                except WatcherError:
                    failures += 1

        await asyncio.gather(*(one(s) for s in subs))
        return failures

    # -- publication (the trigger on a server without an HTTP API) ---------------------------

    async def publish(
        self, user: str, password: str, body: bytes, *, etag: str | None, expires: int = 3600
    ) -> str:
        """PUBLISH ``user``'s own presence (RFC 3903); returns the new SIP-ETag."""
        uri = f"sip:{user}@{self.domain}"
        n = next(self._ids)
        call_id, from_tag = f"{self._prefix}-p{n}@bench", f"{self._prefix}p{n}"
        cseq = 0

        def build(auth: list[str]) -> tuple[bytes, str]:
            nonlocal cseq
            cseq += 1
            extra = ["Event: presence", f"Expires: {expires}", *auth]
            if etag is not None:
                extra.append(f"SIP-If-Match: {etag}")
            extra.append("Content-Type: application/pidf+xml")
            return self._build(
                "PUBLISH",
                uri,
                from_user=user,
                from_tag=from_tag,
                to=f"<{uri}>",
                call_id=call_id,
                cseq=cseq,
                extra=extra,
                body=body,
            )

        response = await self._authenticated(
            build, method="PUBLISH", uri=uri, user=user, password=password
        )
        if response.status // 100 != 2:
            raise WatcherError(f"PUBLISH {user}: {response.start}")
        return response.header("sip-etag")


def pidf(entity: str, basic: str, note: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="{entity}">\n'
        f'  <tuple id="bench"><status><basic>{basic}</basic></status>'
        f"<note>{note}</note></tuple>\n"
        "</presence>\n"
    ).encode()


def _branch(via: str) -> str:
    match = re.search(r";\s*branch=([^;,\s]+)", via)
    return match.group(1) if match else ""
