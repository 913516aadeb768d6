"""SIP over WebSocket (RFC 7118): browsers' SIP stacks (JsSIP, SIP.js) connect here.

Each WebSocket message carries exactly one SIP message (RFC 7118 §5), so no framing is
needed; the ``sip`` subprotocol is required (§4). A connection is a flow like a TCP one:
responses and requests to a contact registered over it go back on it, and when it
closes, whatever was registered over it is gone at once (a browser tab that closed must
not keep ringing).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

import structlog
from aiohttp import WSMsgType, web

from ucgate.sip.peer import Peer, TransportKind
from ucgate.transport.stream import FlowRegistry, next_flow_id

log = structlog.get_logger(__name__)

DataCallback = Callable[[bytes, Peer], None]


class WebSocketFlow:
    """One browser connection, registered in the hub's :class:`FlowRegistry`."""

    def __init__(self, kind: TransportKind, ws: web.WebSocketResponse, peer: Peer) -> None:
        self.kind = kind
        self.ws = ws
        self.flow = peer.flow if peer.flow is not None else next_flow_id()
        self.peer: Peer | None = peer

    def send(self, data: bytes) -> None:
        if self.ws.closed:
            raise ConnectionError("websocket closed")
        # SIP is text; JsSIP and SIP.js expect text frames (RFC 7118 §5.2 allows both).
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            self._spawn_send_bytes(data)
            return
        self._spawn_send_str(text)

    def _spawn_send_str(self, text: str) -> None:
        asyncio.get_running_loop().create_task(self.ws.send_str(text))

    def _spawn_send_bytes(self, data: bytes) -> None:
        asyncio.get_running_loop().create_task(self.ws.send_bytes(data))

    def close(self) -> None:
        if not self.ws.closed:
            asyncio.get_running_loop().create_task(self.ws.close())


async def open_websocket_listener(
    kind: TransportKind,
    host: str,
    port: int,
    on_data: DataCallback,
    registry: FlowRegistry,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[web.AppRunner, int]:
    async def handle(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(protocols=("sip",), heartbeat=30.0, max_msg_size=65535)
        if not ws.can_prepare(request).ok or ws.can_prepare(request).protocol != "sip":
            # RFC 7118 §4: the "sip" subprotocol is mandatory.
            return web.Response(status=400, text="WebSocket with subprotocol 'sip' required")
        await ws.prepare(request)
        peername = request.transport.get_extra_info("peername") if request.transport else None
        host_, port_ = (str(peername[0]), int(peername[1])) if peername else ("0.0.0.0", 0)
        flow_id = next_flow_id()
        peer = Peer(kind, host_, port_, flow_id)
        conn = WebSocketFlow(kind, ws, peer)
        registry.add(conn)
        log.info("ws.connected", peer=str(peer), flow=flow_id)
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    on_data(msg.data.encode("utf-8"), peer)
                elif msg.type is WSMsgType.BINARY:
                    on_data(msg.data, peer)
                elif msg.type is WSMsgType.ERROR:
                    break
        finally:
            registry.remove(conn)
            log.info("ws.closed", peer=str(peer), flow=flow_id)
        return ws

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    bound = port
    for address in runner.addresses:  # the port the OS picked when port is 0
        bound = int(address[1])
    return runner, bound
