"""All listeners of one node behind one ``send(bytes, Peer)``."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from aiohttp import web

from ucgate.sip.peer import Peer, TransportKind
from ucgate.transport.stream import (
    FlowRegistry,
    StreamConnection,
    connect_stream,
    open_stream_listener,
)
from ucgate.transport.udp import UdpListener, open_udp
from ucgate.transport.websocket import open_websocket_listener

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ListenSpec:
    kind: TransportKind
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class BoundListener:
    kind: TransportKind
    host: str
    port: int


class TransportHub:
    """Owns the sockets; the SIP runtime talks only to :meth:`send` and the callbacks."""

    def __init__(
        self,
        on_data: Callable[[bytes, Peer], None],
        on_send_failed: Callable[[Peer], None],
        *,
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
    ) -> None:
        self._on_data = on_data
        self._on_send_failed = on_send_failed
        self._server_ssl = server_ssl
        self._client_ssl = client_ssl
        self.flows = FlowRegistry()
        self._udp: dict[tuple[str, int], UdpListener] = {}
        self._default_udp: UdpListener | None = None
        self._servers: list[asyncio.Server] = []
        self._pending: dict[tuple[TransportKind, str, int], asyncio.Task[None]] = {}
        self.bound: list[BoundListener] = []
        self._ws_runners: list[web.AppRunner] = []

    async def start(self, specs: list[ListenSpec]) -> list[BoundListener]:
        for spec in specs:
            if spec.kind is TransportKind.UDP:
                udp = await open_udp(spec.host, spec.port, self._on_data)
                self._udp[udp.local] = udp
                self._default_udp = self._default_udp or udp
                self.bound.append(BoundListener(spec.kind, udp.local[0], udp.local[1]))
            elif spec.kind in (TransportKind.TCP, TransportKind.TLS):
                ctx = self._server_ssl if spec.kind is TransportKind.TLS else None
                if spec.kind is TransportKind.TLS and ctx is None:
                    raise ValueError("a tls: listener needs sip.tls_cert and sip.tls_key")
                server = await open_stream_listener(
                    spec.kind, spec.host, spec.port, self._on_data, self.flows, ctx
                )
                self._servers.append(server)
                sock = server.sockets[0].getsockname()
                self.bound.append(BoundListener(spec.kind, sock[0], sock[1]))
            else:
                ctx = self._server_ssl if spec.kind is TransportKind.WSS else None
                if spec.kind is TransportKind.WSS and ctx is None:
                    raise ValueError("a wss: listener needs sip.tls_cert and sip.tls_key")
                runner, port = await open_websocket_listener(
                    spec.kind, spec.host, spec.port, self._on_data, self.flows, ctx
                )
                self._ws_runners.append(runner)
                self.bound.append(BoundListener(spec.kind, spec.host, port))
        return self.bound

    def send(self, data: bytes, peer: Peer) -> None:
        try:
            if peer.kind is TransportKind.UDP:
                if self._default_udp is None:
                    raise ConnectionError("no UDP listener")
                self._default_udp.send(data, peer)
                return
            conn = self.flows.find(peer)
            if conn is not None:
                conn.send(data)
                return
        except ConnectionError as exc:
            log.info("transport.send_failed", peer=str(peer), error=str(exc))
            self._on_send_failed(peer)
            return
        if peer.flow is not None and peer.kind in (TransportKind.WS, TransportKind.WSS):
            self._on_send_failed(peer)  # a browser's connection cannot be re-opened by us
            return
        self._connect_then_send(data, peer)

    def _connect_then_send(self, data: bytes, peer: Peer) -> None:
        # §18.2.2: if the connection a response belongs to is gone, open a new one to the
        # sent-by address. Messages queued while connecting keep their order.
        key = (peer.kind, peer.host, peer.port)
        prev = self._pending.get(key)

        async def run() -> None:
            if prev is not None:
                await asyncio.shield(prev)
            conn = self.flows.find(Peer(peer.kind, peer.host, peer.port))
            try:
                if conn is None:
                    ctx = self._client_ssl if peer.kind is TransportKind.TLS else None
                    conn = await connect_stream(peer, self._on_data, self.flows, ctx)
                conn.send(data)
            except (OSError, TimeoutError) as exc:
                log.info("transport.connect_failed", peer=str(peer), error=str(exc))
                self._on_send_failed(peer)
            finally:
                if self._pending.get(key) is task:
                    del self._pending[key]

        task = asyncio.get_running_loop().create_task(run())
        self._pending[key] = task

    async def close(self) -> None:
        for udp in self._udp.values():
            udp.close()
        for server in self._servers:
            server.close()
        self.flows.close_all()
        for server in self._servers:
            await server.wait_closed()
        for task in list(self._pending.values()):
            task.cancel()
        for runner in self._ws_runners:
            await runner.cleanup()


__all__ = ["BoundListener", "ListenSpec", "StreamConnection", "TransportHub"]
