"""A UDP port that receives a caller's RTP only to read its RFC 4733 key presses."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ucgate.media.rfc4733 import DtmfReceiver


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, receiver: DtmfReceiver, on_key: Callable[[str], None]) -> None:
        self.receiver = receiver
        self.on_key = on_key

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        key = self.receiver.feed(data)
        if key is not None:
            self.on_key(key)


class DtmfSink:
    def __init__(self, transport: asyncio.DatagramTransport) -> None:
        self._transport = transport
        self.port: int = transport.get_extra_info("sockname")[1]

    @classmethod
    async def open(
        cls, host: str, payload_types: frozenset[int], on_key: Callable[[str], None]
    ) -> DtmfSink:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(DtmfReceiver(payload_types), on_key), local_addr=(host, 0)
        )
        return cls(transport)

    def close(self) -> None:
        self._transport.close()
