"""UDP listener (RFC 3261 §18.1.1/§18.2.1): one datagram is one message."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import cast

import structlog

from ucgate.sip.peer import Peer, TransportKind

log = structlog.get_logger(__name__)

DataCallback = Callable[[bytes, Peer], None]

# A burst of REGISTER refreshes after an outage overflows the kernel's default 208 KiB
# buffer long before the CPU is busy (the Kamailio baseline lost packets at 512 KB).
DEFAULT_RCVBUF = 4 * 1024 * 1024


class UdpListener(asyncio.DatagramProtocol):
    """Binds one UDP socket and hands every datagram to the core."""

    def __init__(self, on_data: DataCallback) -> None:
        self._on_data = on_data
        self._transport: asyncio.DatagramTransport | None = None
        self.local: tuple[str, int] = ("", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport is not an asyncio.DatagramTransport subclass; duck-type it.
        self._transport = cast(asyncio.DatagramTransport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Capped by net.core.rmem_max; a smaller buffer is not fatal.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, DEFAULT_RCVBUF)
            self.local = sock.getsockname()[:2]

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        host = str(addr[0])
        self._on_data(data, Peer(TransportKind.UDP, host, int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a vanished phone: the transaction's timers handle it.
        log.debug("udp.error", error=str(exc))

    def send(self, data: bytes, peer: Peer) -> None:
        if self._transport is None or self._transport.is_closing():
            raise ConnectionError("UDP listener closed")
        self._transport.sendto(data, (peer.host, peer.port))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def open_udp(host: str, port: int, on_data: DataCallback) -> UdpListener:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_datagram_endpoint(
        lambda: UdpListener(on_data), local_addr=(host, port)
    )
    return proto
