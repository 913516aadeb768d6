"""The transaction user of this node: dispatches requests to the services (RFC 3261 §8.2)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Coroutine
from typing import Any

import structlog

from ucgate.app.presence_sip import PresenceSipServer
from ucgate.app.sip_runtime import SipRuntime
from ucgate.registrar.service import RegistrarService
from ucgate.sip.errors import RemoteProtocolError
from ucgate.sip.fields import call_id
from ucgate.sip.transaction.events import RequestReceived, TransactionEvent
from ucgate.sip.uas_checks import check_request, make_response

log = structlog.get_logger(__name__)

# What we serve today; every other method we recognise gets 405 with this Allow list
# (§8.2.1), methods we do not know get 501.
ALLOWED_METHODS = frozenset({"REGISTER", "OPTIONS", "SUBSCRIBE", "PUBLISH"})
SUPPORTED_EXTENSIONS = frozenset({"path", "outbound", "gruu"})
ACCEPTED_CONTENT_TYPES = frozenset({"application/sdp", "application/pidf+xml"})


def new_tag() -> str:
    return secrets.token_hex(6)


class SipApplication:
    def __init__(
        self,
        runtime: SipRuntime,
        registrar: RegistrarService,
        *,
        user_agent: str,
        presence: PresenceSipServer | None = None,
    ) -> None:
        self.runtime = runtime
        self.registrar = registrar
        self.presence = presence
        self.user_agent = user_agent
        self._tasks: set[asyncio.Task[None]] = set()

    def handle(self, event: TransactionEvent) -> None:
        if isinstance(event, RequestReceived):
            self._on_request(event)
        elif self.presence is not None:
            # Responses to (and failures of) the NOTIFYs we sent.
            self.presence.on_transaction_event(event)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_request(self, ev: RequestReceived) -> None:
        req = ev.request
        if req.method == "ACK":
            return
        try:
            rejection = check_request(
                req,
                allowed_methods=ALLOWED_METHODS,
                supported_extensions=SUPPORTED_EXTENSIONS,
                accepted_content_types=ACCEPTED_CONTENT_TYPES,
            )
        except RemoteProtocolError as exc:
            rejection = make_response(req, exc.status or 400, exc.reason[:100], to_tag=new_tag())
        if rejection is not None:
            self._answer(ev, rejection)
            return
        if req.method == "OPTIONS":
            # §11.2: capabilities; phones also use OPTIONS as a keep-alive ping.
            resp = make_response(req, 200, to_tag=new_tag())
            resp.headers.add("Allow", ", ".join(sorted(ALLOWED_METHODS)))
            resp.headers.add("Accept", ", ".join(sorted(ACCEPTED_CONTENT_TYPES)))
            resp.headers.add("Supported", ", ".join(sorted(SUPPORTED_EXTENSIONS)))
            self._answer(ev, resp)
        elif req.method == "REGISTER":
            self._spawn(self._register(ev))
        elif req.method in ("SUBSCRIBE", "PUBLISH") and self.presence is not None:
            self.presence.on_request(ev)

    def _answer(self, ev: RequestReceived, resp: Any) -> None:
        resp.headers.add("Server", self.user_agent)
        self.runtime.send_response(ev.key, resp)

    async def _register(self, ev: RequestReceived) -> None:
        try:
            cid = call_id(ev.request)
        except RemoteProtocolError:
            cid = None
        with structlog.contextvars.bound_contextvars(call_id=cid):
            resp = await self.registrar.handle(ev.request, ev.peer, time.time())
            self._answer(ev, resp)

    async def drain(self) -> None:
        """Let in-flight requests finish (shutdown)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)


__all__ = ["SipApplication", "new_tag"]
