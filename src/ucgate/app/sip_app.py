"""The transaction user of this node: dispatches requests to the services (RFC 3261 §8.2)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Coroutine
from typing import Any

import structlog

from ucgate.app.b2bua import CallManager
from ucgate.app.presence_sip import PresenceSipServer
from ucgate.app.sip_runtime import SipRuntime
from ucgate.registrar.service import RegistrarService
from ucgate.sip.errors import RemoteProtocolError
from ucgate.sip.fields import call_id
from ucgate.sip.transaction.events import (
    AckReceived,
    CancelReceived,
    RequestReceived,
    TransactionEvent,
)
from ucgate.sip.uas_checks import check_request, make_response

log = structlog.get_logger(__name__)

# What we serve today; every other method we recognise gets 405 with this Allow list
# (§8.2.1), methods we do not know get 501.
ALLOWED_METHODS = frozenset(
    {
        "REGISTER",
        "OPTIONS",
        "SUBSCRIBE",
        "PUBLISH",
        "INVITE",
        "ACK",
        "BYE",
        "CANCEL",
        "UPDATE",
        "INFO",
        "REFER",
        "NOTIFY",
    }
)
SUPPORTED_EXTENSIONS = frozenset({"path", "outbound", "gruu", "timer"})
ACCEPTED_CONTENT_TYPES = frozenset(
    {
        "application/sdp",
        "application/pidf+xml",
        "application/dtmf-relay",  # SIP INFO DTMF, relayed between legs
        "application/dtmf",
        "message/sipfrag",  # NOTIFYs of transfer progress (RFC 3515)
    }
)


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
        calls: CallManager | None = None,
    ) -> None:
        self.runtime = runtime
        self.registrar = registrar
        self.presence = presence
        self.calls = calls
        self.user_agent = user_agent
        self._tasks: set[asyncio.Task[None]] = set()

    def handle(self, event: TransactionEvent) -> None:
        if isinstance(event, RequestReceived):
            self._on_request(event)
        elif isinstance(event, AckReceived):
            if self.calls is not None:
                self.calls.on_ack(event)  # the ACK for a 2xx (§13.2.2.4) is end to end
        elif isinstance(event, CancelReceived):
            # The transaction layer answered the CANCEL itself (§9.2); the INVITE's 487 is ours.
            if self.calls is not None:
                self.calls.on_cancel(event)
        else:
            # Responses to (and failures of) requests we sent: call legs, then NOTIFYs.
            if self.calls is not None and self.calls.on_transaction_event(event):
                return
            if self.presence is not None:
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
        elif self.calls is not None and (req.method == "INVITE" or self.calls.owns_request(req)):
            self.calls.on_request(ev)
        else:
            # BYE/UPDATE/INFO/REFER/NOTIFY outside any dialog we know (§12.2.2).
            self._answer(ev, make_response(req, 481, to_tag=new_tag()))

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
