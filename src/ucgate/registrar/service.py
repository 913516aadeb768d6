"""The registrar service (RFC 3261 §10.3) on top of the location store.

Order of the checks follows §10.3: authenticate (step 3), authorise the AOR (step 4),
canonicalise it (step 5), then the binding rules (steps 6-8) run inside the store's
atomic update so concurrent REGISTERs for one AOR, on one node or several, serialise.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from ucgate.registrar.accounts import AccountDirectory
from ucgate.registrar.rules import (
    RegisterContext,
    RegisterRejected,
    RegistrarPolicy,
    apply_register,
    contact_header_values,
    parse_contacts,
)
from ucgate.sip.auth_gate import DigestGate
from ucgate.sip.errors import RemoteProtocolError
from ucgate.sip.fields import call_id, cseq, to
from ucgate.sip.message import Request, Response
from ucgate.sip.peer import Peer
from ucgate.sip.uas_checks import make_response
from ucgate.sip.uri import SipUri
from ucgate.store.location import Binding, LocationStore, StoreUnavailable

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class BindingsChanged:
    """Published after every successful change of an AOR's bindings (presence uses it)."""

    aor: str
    user: str
    before: tuple[Binding, ...]
    after: tuple[Binding, ...]


BindingsListener = Callable[[BindingsChanged], Awaitable[None]]


class RegistrarService:
    def __init__(
        self,
        *,
        domain: str,
        accounts: AccountDirectory,
        gate: DigestGate,
        store: LocationStore,
        policy: RegistrarPolicy,
        node_id: str,
        to_tag: Callable[[], str],
    ) -> None:
        self.domain = domain.lower()
        self.accounts = accounts
        self.gate = gate
        self.store = store
        self.policy = policy
        self.node_id = node_id
        self._to_tag = to_tag
        self.listeners: list[BindingsListener] = []
        # flow ("node/flow-id") → AORs registered over it, for flow_closed.
        self._flow_aors: dict[str, set[str]] = {}

    def _reply(self, req: Request, status: int, reason: str | None = None) -> Response:
        return make_response(req, status, reason, to_tag=self._to_tag())

    async def handle(self, req: Request, peer: Peer, now: float) -> Response:
        """Answer one REGISTER; ``now`` is wall-clock time (bindings outlive the process)."""
        try:
            return await self._handle(req, peer, now)
        except RegisterRejected as exc:
            resp = self._reply(req, exc.status or 400, exc.reason)
            for name, value in exc.headers:
                resp.headers.add(name, value)
            return resp
        except RemoteProtocolError as exc:
            return self._reply(req, exc.status or 400, exc.reason[:100])
        except StoreUnavailable:
            # RFC 3261 §21.5.4: a temporary overload/outage is 503 with Retry-After.
            log.warning("registrar.store_unavailable")
            resp = self._reply(req, 503)
            resp.headers.add("Retry-After", "5")
            return resp

    async def _handle(self, req: Request, peer: Peer, now: float) -> Response:
        to_hdr = to(req)
        if not isinstance(to_hdr.uri, SipUri) or to_hdr.uri.user is None:
            raise RemoteProtocolError("To must be a sip: AOR with a user part", 400)
        if to_hdr.uri.host.lower() != self.domain:
            # §10.3 step 1/5: we hold bindings for our domain only.
            raise RemoteProtocolError("Not our domain", 404)

        # §10.3 step 3 / §22: authenticate. A wrong password and an unknown user get the
        # same 401 (no user enumeration); only an expired nonce says stale=true.
        who = self.gate.check(req, now)
        if isinstance(who, Response):
            return who

        user = to_hdr.uri.user
        # §10.3 step 4: the authenticated identity may only change its own bindings.
        if who.username != user:
            return self._reply(req, 403, "Not your address")

        aor = f"sip:{user}@{self.domain}"
        contacts = parse_contacts(req, self.policy)
        ctx = RegisterContext(
            aor=aor,
            call_id=call_id(req),
            cseq=cseq(req).seq,
            source=str(peer),
            flow=f"{self.node_id}/{peer.flow}" if peer.flow is not None else None,
            node_id=self.node_id,
            user_agent=req.headers.get("User-Agent"),
            path=tuple(req.headers.values("Path")),
        )
        before: list[Binding] = []

        def rules(current: list[Binding]) -> list[Binding]:
            before[:] = current
            if contacts == []:
                return current  # a query: nothing changes (§10.3 step 6)
            return apply_register(current, contacts, ctx, self.policy, now)

        after = await self.store.update(aor, rules, now)
        if ctx.flow is not None and any(b.flow == ctx.flow for b in after):
            self._flow_aors.setdefault(ctx.flow, set()).add(aor)
        resp = self._reply(req, 200)
        for value in contact_header_values(after, now):
            resp.headers.add("Contact", value)
        if before != after:
            if {b.contact for b in before} != {b.contact for b in after}:
                # Refreshes are the bulk of registrar traffic; only a device arriving or
                # leaving is worth a line.
                log.info("registrar.bindings", aor=aor, count=len(after), source=ctx.source)
            change = BindingsChanged(aor, user, tuple(before), tuple(after))
            for listener in self.listeners:
                await listener(change)
        return resp

    async def flow_closed(self, flow: str, now: float) -> None:
        """A connection-oriented flow died (a browser's WebSocket closed): the bindings
        registered over it are unreachable now, so they go now (RFC 5626 §4.3), not when
        they expire — the agent's presence flips at once."""
        for aor in self._flow_aors.pop(flow, set()):
            before: list[Binding] = []

            def drop(current: list[Binding], seen: list[Binding] = before) -> list[Binding]:
                seen[:] = current
                return [b for b in current if b.flow != flow]

            try:
                after = await self.store.update(aor, drop, now)
            except StoreUnavailable:
                log.warning("registrar.flow_cleanup_failed", aor=aor)
                continue
            if before != after:
                log.info("registrar.flow_closed", aor=aor, removed=len(before) - len(after))
                user = aor[4:].split("@", 1)[0]
                change = BindingsChanged(aor, user, tuple(before), tuple(after))
                for listener in self.listeners:
                    await listener(change)

    async def on_expired(self, removed: list[Binding]) -> None:
        """Announce bindings the sweeper removed (the last one → the agent is offline now)."""
        by_aor: dict[str, list[Binding]] = {}
        for b in removed:
            by_aor.setdefault(b.aor, []).append(b)
        for aor, gone in by_aor.items():
            remaining = await self.store.lookup(aor, gone[0].expires_at)
            user = aor[4:].split("@", 1)[0]
            change = BindingsChanged(aor, user, tuple(remaining + gone), tuple(remaining))
            log.info("registrar.expired", aor=aor, count=len(gone))
            for listener in self.listeners:
                await listener(change)
