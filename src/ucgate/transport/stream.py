"""TCP and TLS connections (RFC 3261 §18.3): framed by Content-Length, reused as flows.

Every connection gets a flow number. Messages that arrive on it carry the number in
their :class:`Peer`, so responses go back on the same connection (§18.2.2) and requests
to a contact registered over it reuse it (RFC 5626 §5.3) — a phone behind NAT can only
be reached that way.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
from collections.abc import Callable
from typing import Protocol, cast

import structlog

from ucgate.sip.errors import RemoteProtocolError
from ucgate.sip.framing import StreamFramer
from ucgate.sip.peer import Peer, TransportKind

log = structlog.get_logger(__name__)

DataCallback = Callable[[bytes, Peer], None]

_flow_ids = itertools.count(1)


def next_flow_id() -> int:
    """Flow numbers are unique per process across TCP, TLS and WebSocket connections."""
    return next(_flow_ids)


class Flow(Protocol):
    """A connection-oriented transport the hub can send on (TCP/TLS/WebSocket)."""

    kind: TransportKind
    flow: int
    peer: Peer | None

    def send(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class StreamConnection(asyncio.Protocol):
    """One TCP/TLS connection, in either direction."""

    def __init__(
        self,
        kind: TransportKind,
        on_data: DataCallback,
        registry: FlowRegistry,
    ) -> None:
        self.kind = kind
        self.flow = next_flow_id()
        self._on_data = on_data
        self._registry = registry
        self._framer = StreamFramer()
        self._transport: asyncio.Transport | None = None
        self.peer: Peer | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        host, port = transport.get_extra_info("peername")[:2]
        self.peer = Peer(self.kind, str(host), int(port), self.flow)
        self._registry.add(self)

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None
        try:
            self._framer.feed(data)
            while True:
                item = self._framer.next_message()
                if item is None:
                    break
                self._on_data(item, self.peer)
            pongs = self._framer.take_pings()
            if pongs and self._transport is not None:
                # RFC 5626 §4.4.1: answer a CRLFCRLF ping with a single CRLF pong.
                self._transport.write(b"\r\n" * pongs)
        except RemoteProtocolError as exc:
            # A stream that lost its framing cannot be resynchronised (§18.3): close it.
            log.info("stream.framing_error", peer=str(self.peer), error=exc.reason)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._registry.remove(self)
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            raise ConnectionError("connection closed")
        self._transport.write(data)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class FlowRegistry:
    """Live stream connections by flow number and by remote address."""

    def __init__(self) -> None:
        self.by_flow: dict[int, Flow] = {}
        self.by_addr: dict[tuple[TransportKind, str, int], Flow] = {}
        self.on_lost: Callable[[Peer], None] | None = None

    def add(self, conn: Flow) -> None:
        assert conn.peer is not None
        self.by_flow[conn.flow] = conn
        self.by_addr[(conn.kind, conn.peer.host, conn.peer.port)] = conn

    def remove(self, conn: Flow) -> None:
        self.by_flow.pop(conn.flow, None)
        if conn.peer is not None:
            key = (conn.kind, conn.peer.host, conn.peer.port)
            if self.by_addr.get(key) is conn:
                del self.by_addr[key]
            if self.on_lost is not None:
                self.on_lost(conn.peer)

    def find(self, peer: Peer) -> Flow | None:
        if peer.flow is not None:
            conn = self.by_flow.get(peer.flow)
            if conn is not None:
                return conn
        return self.by_addr.get((peer.kind, peer.host, peer.port))

    def close_all(self) -> None:
        for conn in list(self.by_flow.values()):
            conn.close()


async def open_stream_listener(
    kind: TransportKind,
    host: str,
    port: int,
    on_data: DataCallback,
    registry: FlowRegistry,
    ssl_context: ssl.SSLContext | None = None,
) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: StreamConnection(kind, on_data, registry),
        host,
        port,
        ssl=ssl_context,
        reuse_address=True,
    )


async def connect_stream(
    peer: Peer,
    on_data: DataCallback,
    registry: FlowRegistry,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = 5.0,
) -> StreamConnection:
    """Open a connection to ``peer`` (§18.1.1: a request to a TCP/TLS target)."""
    loop = asyncio.get_running_loop()
    _, proto = await asyncio.wait_for(
        loop.create_connection(
            lambda: StreamConnection(peer.kind, on_data, registry),
            peer.host,
            peer.port,
            ssl=ssl_context,
        ),
        timeout,
    )
    return proto
