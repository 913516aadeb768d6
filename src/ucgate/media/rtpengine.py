"""The ``rtpengine`` media-anchor backend: rtpengine driven over its ng protocol (UDP).

rtpengine (Debian ``rtpengine-daemon``) is the media relay Kamailio and OpenSIPS use at
carrier scale: it terminates ICE and DTLS-SRTP, transcodes, and forwards in the kernel
when its module is loaded (in user space otherwise). ucgate only sends it the SDP bodies
that cross an anchored bridge (:mod:`ucgate.media.ng` builds the commands).

Each :class:`~ucgate.media.anchor.MediaKey` is its own rtpengine call
(``<call-id>/<branch>``), with the fixed party tags ``a`` and ``b``: forks of one INVITE
never share state, and deleting a lost fork cannot touch the winner.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

from ucgate.media import ng
from ucgate.media.anchor import LostCallback, MediaError, MediaKey, MediaProfile, Side

log = structlog.get_logger("ucgate.media.rtpengine")

# ng over UDP: resend the same cookie after 0.5, 1 and 2 s (rtpengine answers a repeated
# cookie from its reply cache), then give up with 503. Kamailio's module defaults are
# similar (rtpengine_tout_ms 1 s, 5 retries).
RETRY_DELAYS = (0.5, 1.0, 2.0)


def _other(side: Side) -> Side:
    return "b" if side == "a" else "a"


class _NgProtocol(asyncio.DatagramProtocol):
    def __init__(self, pending: dict[str, asyncio.Future[dict[str, Any]]]) -> None:
        self.pending = pending

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            cookie, reply = ng.decode(data)
        except ng.NgProtocolError as exc:
            log.warning("rtpengine.bad_reply", error=str(exc))
            return
        future = self.pending.pop(cookie, None)
        if future is not None and not future.done():
            future.set_result(reply)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable on loopback: rtpengine is not there (yet); the retry
        # timer decides when to give up.
        log.debug("rtpengine.socket_error", error=str(exc))


class RtpengineAnchor:
    name = "rtpengine"

    def __init__(self, host: str, port: int) -> None:
        self.address = (host, port)
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._transport: asyncio.DatagramTransport | None = None
        # Keys whose first offer/answer completed: a later offer is a re-offer
        # (hold, resume) and names both tags.
        self._established: set[MediaKey] = set()
        self._active: set[MediaKey] = set()

    async def start(self, on_lost: LostCallback) -> None:
        del on_lost  # rtpengine outlives ucgate's calls; it never loses one on its own
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _NgProtocol(self._pending), remote_addr=self.address
        )
        self._transport = transport
        await self._call(ng.ping())
        log.info("rtpengine.ready", address=f"{self.address[0]}:{self.address[1]}")

    async def _call(self, command: ng.Command) -> dict[str, Any]:
        transport = self._transport
        if transport is None:
            raise MediaError(503, "rtpengine backend not started")
        cookie = ng.new_cookie()
        datagram = ng.encode(cookie, command)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[cookie] = future
        try:
            for delay in RETRY_DELAYS:
                transport.sendto(datagram)
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(asyncio.shield(future), delay)
        finally:
            self._pending.pop(cookie, None)
        log.warning("rtpengine.timeout", command=command.get("command"))
        raise MediaError(503, "rtpengine did not answer")

    async def offer(self, key: MediaKey, side: Side, sdp: bytes, toward: MediaProfile) -> bytes:
        to_tag = _other(side) if key in self._established else None
        tags = ng.Tags(key.label, side, to_tag)
        self._active.add(key)
        return ng.result_sdp(await self._call(ng.offer(tags, sdp, toward)))

    async def answer(self, key: MediaKey, side: Side, sdp: bytes, toward: MediaProfile) -> bytes:
        # The answerer's tag is the to-tag; the offerer (the other side) keeps from-tag.
        tags = ng.Tags(key.label, _other(side), side)
        result = ng.result_sdp(await self._call(ng.answer(tags, sdp, toward)))
        self._established.add(key)
        return result

    async def delete(self, key: MediaKey) -> None:
        self._established.discard(key)
        if key not in self._active:
            return
        self._active.discard(key)
        try:
            ng.check(await self._call(ng.delete(key.label)))
        except MediaError as exc:
            # Already gone (rtpengine's own timeout) is fine: deleting is idempotent.
            log.debug("rtpengine.delete_failed", key=key.label, error=exc.reason)

    async def close(self) -> None:
        for key in list(self._active):
            await self.delete(key)
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def stats(self) -> dict[str, object]:
        return {"backend": self.name, "sessions": len(self._active)}
