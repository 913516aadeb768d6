"""The B2BUA: every call is two (or, while forking, more) independent SIP legs.

Glue only. Each leg is a sans-IO :class:`InviteServerSession` (toward the caller) or
:class:`InviteClientSession` (toward one callee device); routing is the pure
:func:`ucgate.calls.routing.route_call`. This class authenticates new INVITEs, forks them
to every registered device of the callee (parallel ringing: the first 2xx wins, the
others are CANCELled), relays in-dialog requests (re-INVITE/UPDATE for hold and resume,
INFO for DTMF, BYE) from one leg to the other, keeps one timer per leg, and tells the
observers (presence, call records) what happened.

SDP is passed through unchanged (media flows between the endpoints); the media anchor of
the WebRTC work plugs in where the SDP crosses from one leg to the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from ucgate.app.call_tracking import AgentOnCall, CallSnapshot, CallTracker
from ucgate.app.sip_runtime import SipRuntime
from ucgate.calls.pin import PinCollector, PinComplete, PinExhausted
from ucgate.calls.records import (
    CallAnswered,
    CallEnded,
    CallEvent,
    CallOffered,
    CallTransferred,
    Direction,
    EndReason,
    HoldEnded,
    HoldStarted,
    LegAdded,
    LegEnded,
    RingingStarted,
    TransferMode,
)
from ucgate.calls.routing import (
    Caller,
    CallerKind,
    Route,
    RouteKind,
    classify_caller,
    no_answer_status,
    route_call,
)
from ucgate.config import UcgateConfig
from ucgate.media.anchor import MediaAnchor, MediaError, MediaKey, MediaProfile, Side
from ucgate.media.dtmf_sink import DtmfSink
from ucgate.media.profile import needs_anchor, profile_of_sdp, profile_of_transport
from ucgate.media.rfc4733 import telephone_event_types
from ucgate.registrar.guests import guest_session_id
from ucgate.sip.auth_gate import DigestGate
from ucgate.sip.digest import build_authorization, pick_challenge
from ucgate.sip.dtmf_info import dtmf_digit
from ucgate.sip.errors import LocalProtocolError, RemoteProtocolError
from ucgate.sip.fields import call_id, from_, parse_name_addr, to
from ucgate.sip.invite_session import (
    AckTimedOut,
    Answered,
    InfoReceived,
    InviteClientSession,
    InviteServerSession,
    NotifyReceived,
    OptionsReceived,
    ReferReceived,
    RefreshDue,
    ReInviteReceived,
    Rejected,
    RequestAnswered,
    ResponseRetransmissionDue,
    RetryReInvite,
    Ringing,
    SessionConfig,
    SessionExpired,
    SessionTerminated,
    UpdateReceived,
    error_response,
)
from ucgate.sip.message import Request, Response
from ucgate.sip.peer import Peer, TransportKind
from ucgate.sip.sdp import parse_sdp
from ucgate.sip.transaction.events import (
    AckReceived,
    CancelReceived,
    RequestReceived,
    ResponseReceived,
    TransactionEvent,
    TransactionTimedOut,
    TransportErrorOccurred,
)
from ucgate.sip.transaction.key import TxKey, server_key
from ucgate.sip.uas_checks import make_response
from ucgate.sip.uri import SipUri, parse_uri
from ucgate.store.location import Binding, LocationStore, StoreUnavailable

log = structlog.get_logger(__name__)

Session = InviteServerSession | InviteClientSession
# Headers a B2BUA carries from the caller's INVITE to the callee's: click-to-call
# session ids and IVR context (RFC 7433 User-to-User) must reach the agent.
PASS_HEADERS = ("User-to-User", "X-UCGate-Session", "Alert-Info", "Subject")
# The queue id a widget guest's call is queued with: "the queue of its own session".
SESSION_QUEUE = ""


@dataclass(eq=False)
class Leg:
    name: str
    session: Session
    peer: Peer
    agent: str | None = None
    invite_key: TxKey | None = None
    timer: asyncio.TimerHandle | None = None
    timer_at: float | None = None
    # The last SDP this leg's device sent (offer or answer): what a transfer target is
    # offered so the remaining party's media can reach it.
    last_sdp: bytes | None = None
    # The trunk a leg leaves through (its credentials answer the PBX's challenge).
    trunk: str | None = None
    auth_tries: int = 0
    # The media profile this leg's device speaks (None: unknown, e.g. no SDP seen).
    profile: MediaProfile | None = None
    # Set on a leg whose media is anchored (its SDP rewritten by the media backend).
    media: MediaKey | None = None
    # This leg's side in the anchored session, when not given by its place in the call.
    media_side: Side | None = None


@dataclass(eq=False)
class Transfer:
    """A blind transfer in progress (RFC 3515): ``transferor`` sent REFER; the other
    party stays and is connected to ``target`` once one of its devices answers."""

    transferor: Leg
    refer: Request
    target: str
    target_agent: str | None
    forks: list[Leg] = field(default_factory=list)


@dataclass(eq=False)
class Origination:
    """A call ucgate places itself (elevation of a chat, click-to-call): first the agent's
    devices ring; once the agent answers, the customer is called with the agent's media
    description and finally the agent is re-INVITEd with the customer's (RFC 3725
    third-party call control, the flow that needs no late-offer support in phones)."""

    agent: str
    to: str
    route: Route
    session_id: str | None
    phase: str = "agent"  # agent → customer → connected
    agent_forks: list[Leg] = field(default_factory=list)
    customer_forks: list[Leg] = field(default_factory=list)
    done: asyncio.Future[str] | None = None


@dataclass(eq=False)
class Call:
    id: str
    a: Leg
    caller: str
    callee: str
    direction: str
    forks: list[Leg] = field(default_factory=list)
    b: Leg | None = None
    rang: bool = False
    provisional_sent: int = 0
    last_failure: int | None = None
    ended: bool = False
    held: bool = False
    ring_timer: asyncio.TimerHandle | None = None
    a_agent: str | None = None
    b_agent: str | None = None
    end_reason: EndReason | None = None
    rang_legs: set[str] = field(default_factory=set)
    transfer: Transfer | None = None
    leg_count: int = 0
    left_agents: tuple[str, ...] = ()
    origin: Origination | None = None
    # Set while a queue holds the call: the queue's id and the agent being rung.
    queued: str | None = None
    # A "pin:" DID call: ucgate answered the caller itself and collects a session PIN.
    pin: PinCollector | None = None
    pin_queue: str | None = None
    pin_timer: asyncio.TimerHandle | None = None
    pin_sink: DtmfSink | None = None
    # The caller's INVITE was already answered (PIN entry): the agent's media reaches
    # the caller by re-INVITE (RFC 3725 style) instead of in the 200.
    answered_early: bool = False
    ringing_agent: str | None = None
    # What the manager's indexes hold for this call, so forgetting it is O(own keys).
    dialog_keys: set[tuple[str, str]] = field(default_factory=set)
    tx_keys: set[TxKey] = field(default_factory=set)

    def legs(self) -> list[Leg]:
        legs = [self.a, *self.forks]
        if self.origin is not None:
            legs += [
                x for x in (*self.origin.agent_forks, *self.origin.customer_forks) if x not in legs
            ]
        if self.b is not None and self.b not in legs:
            legs.append(self.b)
        return legs

    def other(self, leg: Leg) -> Leg | None:
        if leg is self.a:
            return self.b
        return self.a if leg is self.b else None


@dataclass(eq=False)
class Relay:
    """An in-dialog request from one leg waiting for the other leg's answer."""

    origin: Leg
    request: Request
    key: TxKey
    answerer: Leg
    # Set when the offer went through the media anchor: the answer must too.
    media: MediaKey | None = None


def peer_from_source(source: str, flow: str | None, node_id: str) -> Peer | None:
    """The transport address a binding was registered from ("udp:host:port")."""
    kind_text, _, rest = source.partition(":")
    host, _, port = rest.rpartition(":")
    try:
        kind = TransportKind(kind_text)
        number = int(port)
    except ValueError:
        return None
    flow_id = None
    if flow is not None:
        owner, _, fid = flow.partition("/")
        # A connection lives on the node that accepted it (RFC 5626 flows are per edge).
        if owner == node_id and fid.isdigit():
            flow_id = int(fid)
    return Peer(kind, host.strip("[]"), number, flow_id)


class CallManager:
    def __init__(
        self,
        *,
        runtime: SipRuntime,
        gate: DigestGate,
        config: UcgateConfig,
        locations: LocationStore,
        contact_uri: str,
        node_id: str,
        to_tag: Callable[[], str],
    ) -> None:
        self.runtime = runtime
        self.gate = gate
        self.config = config
        self.locations = locations
        self.contact_uri = contact_uri
        self.node_id = node_id
        self._to_tag = to_tag
        self.domain = config.sip.domain.lower()
        self.agents = frozenset(a.id for a in config.agents)
        self.session_config = SessionConfig(
            t1=config.sip.t1,
            t2=config.sip.t2,
            session_expires=config.calls.session_expires,
            min_se=config.calls.min_se,
        )
        self.tracker: CallTracker | None = None
        self.queue_router: QueueRouter | None = None
        # The media anchor for legs that cannot exchange media directly (None: every
        # call is SDP pass-through).
        self.media: MediaAnchor | None = None
        self._loop = asyncio.get_running_loop()
        self._ids = itertools.count(1)
        self._by_dialog: dict[tuple[str, str], tuple[Call, Leg]] = {}
        self._by_server_invite: dict[TxKey, tuple[Call, Leg]] = {}
        self._by_client_key: dict[TxKey, tuple[Call, Leg]] = {}
        self._relays: dict[TxKey, Relay] = {}
        # Our own re-offers to an anchored leg whose answer the anchor must see.
        self._media_answers: dict[TxKey, MediaKey] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls: dict[str, Call] = {}

    # -- entry points from the SIP application ------------------------------------------------
    def owns_request(self, req: Request) -> bool:
        """In-dialog requests of our calls (BYE, re-INVITE, UPDATE, INFO, REFER, …)."""
        try:
            tag = to(req).tag
            if tag is None:
                return False
            return (call_id(req), tag) in self._by_dialog
        except RemoteProtocolError:
            return False

    def on_request(self, ev: RequestReceived) -> None:
        req = ev.request
        if req.method == "INVITE" and to(req).tag is None:
            self._spawn(self._new_call(ev))
            return
        found = self._by_dialog.get((call_id(req), to(req).tag or ""))
        if found is None:
            self.runtime.send_response(ev.key, make_response(req, 481, to_tag=self._to_tag()))
            return
        call, leg = found
        with structlog.contextvars.bound_contextvars(call_id=call.id):
            resp = leg.session.on_request(req, self.now())
            if resp is not None:
                self.runtime.send_response(ev.key, resp)
            self._drain(call, leg)

    def on_ack(self, ev: AckReceived) -> None:
        try:
            found = self._by_dialog.get((call_id(ev.request), to(ev.request).tag or ""))
        except RemoteProtocolError:
            return
        if found is None:
            return
        call, leg = found
        leg.session.on_ack(ev.request, self.now())
        self._drain(call, leg)

    def on_cancel(self, ev: CancelReceived) -> bool:
        if ev.invite_key is None:
            return False
        found = self._by_server_invite.get(ev.invite_key)
        if found is None:
            return False
        call, leg = found
        assert isinstance(leg.session, InviteServerSession)
        resp = leg.session.on_cancel(self.now())
        if resp is not None:
            self.runtime.send_response(ev.invite_key, resp)
            self._cancel_forks(call, keep=None)
        self._drain(call, leg)
        return True

    def on_transaction_event(self, ev: TransactionEvent) -> bool:
        """Responses on our client transactions; False when the event is not ours."""
        if isinstance(ev, ResponseReceived):
            resp = ev.response
        elif isinstance(ev, TransactionTimedOut | TransportErrorOccurred):
            if ev.response is None:
                return False
            resp = ev.response
        else:
            return False
        found = self._by_client_key.get(ev.key)
        if found is None:
            return False
        call, leg = found
        if resp.status >= 200:
            del self._by_client_key[ev.key]
        with structlog.contextvars.bound_contextvars(call_id=call.id):
            for out in leg.session.on_response(resp, self.now()):
                self._send(call, leg, out)
            relay = self._relays.pop(ev.key, None) if resp.status >= 200 else None
            media = self._media_answers.pop(ev.key, None) if resp.status >= 200 else None
            if media is not None and resp.status < 300 and resp.body and self.media is not None:
                # The anchored agent answered our re-offer: complete it on the anchor
                # (the customer already talks to the anchor's RTP side).
                self._spawn(self._complete_answer(media, resp.body))
            self._drain(call, leg, relay=relay)
        return True

    def now(self) -> float:
        return self._loop.time()

    # -- new calls --------------------------------------------------------------------------------
    async def _new_call(self, ev: RequestReceived) -> None:
        req = ev.request
        try:
            await self._route_new(ev)
        except StoreUnavailable:
            resp = make_response(req, 503, to_tag=self._to_tag())
            resp.headers.add("Retry-After", "5")
            self.runtime.send_response(ev.key, resp)
        except RemoteProtocolError as exc:
            resp = error_response(req, exc, to_tag=self._to_tag()) or make_response(
                req, exc.status or 400, exc.reason[:100], to_tag=self._to_tag()
            )
            self.runtime.send_response(ev.key, resp)

    async def _route_new(self, ev: RequestReceived) -> None:
        req = ev.request
        uri = parse_uri(req.uri)
        if not isinstance(uri, SipUri) or uri.user is None:
            raise RemoteProtocolError("Request-URI names nobody", 404)
        claimed = from_(req).uri
        claimed_user = claimed.user if isinstance(claimed, SipUri) else None
        trunks = self.config.trunks
        caller = classify_caller(ev.peer.host, None, trunks, self.agents, claimed_user=claimed_user)
        guest = False
        if caller.kind is not CallerKind.TRUNK:
            # Not a trunk by address: the caller must prove who it is (RFC 3261 §22);
            # no unauthenticated call ever reaches a trunk (toll fraud).
            who = self.gate.check(req, time.time())
            if isinstance(who, Response):
                self.runtime.send_response(ev.key, who)
                return
            caller = classify_caller(ev.peer.host, who.username, trunks, self.agents)
            if guest_session_id(who.username) is not None:
                # A widget customer's "call me" (the digest gate already held it to
                # sip:session@ with its own X-UCGate-Session): it joins that session,
                # whose router rings the agent already chatting with them.
                caller = Caller(CallerKind.UNKNOWN, who.username)
                guest = True
        route = (
            Route(RouteKind.QUEUE, id=SESSION_QUEUE)
            if guest
            else route_call(
                caller,
                uri.user,
                dids=self.config.dids,
                dial_rules=self.config.dial_rules,
                agents=self.agents,
            )
        )
        if route.kind is RouteKind.REFUSED or route.kind is RouteKind.CHALLENGE:
            status = route.status or 403
            self.runtime.send_response(
                ev.key, make_response(req, status, route.reason or None, to_tag=self._to_tag())
            )
            return
        if route.kind in (RouteKind.QUEUE, RouteKind.PIN) and self.queue_router is None:
            self.runtime.send_response(
                ev.key, make_response(req, 480, "No queue routing", to_tag=self._to_tag())
            )
            return
        if route.kind not in (RouteKind.AGENT, RouteKind.TRUNK, RouteKind.QUEUE, RouteKind.PIN):
            self.runtime.send_response(ev.key, make_response(req, 404, to_tag=self._to_tag()))
            return
        assert route.id is not None
        now = self.now()
        session = InviteServerSession.from_invite(
            req, self._to_tag(), now, contact=self.contact_uri, config=self.session_config
        )
        if req.body:
            parse_sdp(req.body)  # 488 before anything rings (RFC 3261 §13.3.1.2)
        cid = f"{self.node_id}-{next(self._ids)}-{secrets.token_hex(3)}"
        a_agent = caller.id if caller.kind is CallerKind.AGENT else None
        a = Leg("a", session, ev.peer, agent=a_agent, invite_key=ev.key, last_sdp=req.body or None)
        a.profile = profile_of_sdp(req.body) if req.body else None
        callee_aor = f"sip:{route.id}@{self.domain}"
        direction = (
            "inbound"
            if caller.kind is CallerKind.TRUNK
            else ("outbound" if route.kind is RouteKind.TRUNK else "internal")
        )
        call = Call(cid, a, caller=str(claimed), callee=callee_aor, direction=direction)
        call.a_agent = a_agent
        call.b_agent = route.id if route.kind is RouteKind.AGENT else None
        self.calls[cid] = call
        self._index_server(call, a)
        self._by_server_invite[ev.key] = (call, a)
        call.tx_keys.add(ev.key)
        with structlog.contextvars.bound_contextvars(call_id=cid):
            self._record(
                call,
                CallOffered(
                    at=time.time(),
                    direction=Direction(direction),
                    caller=call.caller,
                    callee=uri.user,
                    leg_id="a",
                    party=call.caller,
                    contact=req.headers.get("Contact"),
                    sip_call_id=call_id(req),
                    agent=a_agent,
                ),
            )
            if route.kind is RouteKind.QUEUE:
                await self._queue_call(call, route.id, req)
                return
            if route.kind is RouteKind.PIN:
                await self._answer_for_pin(call, route.id)
                return
            bindings = await self.locations.lookup(callee_aor, time.time())
            log.info("call.offered", caller=call.caller, callee=callee_aor, forks=len(bindings))
            for index, binding in enumerate(bindings):
                await self._fork(call, index, binding, uri.user, route.kind, call.b_agent)
                if call.ended or call.a.session.terminated:
                    break  # cancelled while the media backend was asked for an offer
            if not call.forks:
                log.info("call.unavailable", callee=callee_aor)
                self._reject(call, 480, "Temporarily Unavailable", EndReason.FAILED)
                return
            call.ring_timer = self._loop.call_later(
                self.config.calls.ring_timeout, self._ring_timeout, call
            )

    async def _fork(
        self,
        call: Call,
        index: int,
        binding: Binding,
        dialled: str,
        kind: RouteKind,
        agent: str | None,
    ) -> None:
        peer = peer_from_source(binding.source, binding.flow, self.node_id)
        if peer is None:
            return
        target = binding.contact
        trunk_id = binding.aor[4:].split("@", 1)[0] if kind is RouteKind.TRUNK else None
        if kind is RouteKind.TRUNK:
            # Out through the trunk's registered contact, with the dialled number as the
            # user part (what a PBX routes on).
            contact = parse_uri(binding.contact)
            if isinstance(contact, SipUri):
                target = str(contact.replace(user=dialled))
        a_session = call.a.session
        assert isinstance(a_session, InviteServerSession)
        invite = a_session.invite
        extra = [(n, v) for n in PASS_HEADERS for v in invite.headers.get_all(n)]
        caller = from_(invite)
        profile = profile_of_transport(peer.kind)
        sdp = invite.body or None
        media = None
        if sdp is not None and self.media is not None and needs_anchor(call.a.profile, profile):
            # A browser and a phone/trunk cannot exchange media directly: anchor this
            # fork (its own media session, so a losing fork is released alone).
            media = MediaKey(call.id, f"b{call.leg_count}")
            try:
                sdp = await self.media.offer(media, "a", sdp, profile)
            except MediaError as exc:
                log.warning("call.media_refused", status=exc.status, reason=exc.reason)
                call.last_failure = call.last_failure or exc.status
                return
            if call.ended or call.a.session.terminated:
                self._release_media(media)
                return
        elif sdp is not None and needs_anchor(call.a.profile, profile):
            log.warning("call.media_unbridgeable", offer=str(call.a.profile), target=str(profile))
        self._new_uac_leg(
            call,
            target,
            peer,
            agent,
            from_=f'"{caller.display_name}" <{caller.uri}>'
            if caller.display_name
            else f"<{caller.uri}>",
            to=f"<{call.callee}>",
            sdp=sdp,
            extra=extra,
            forks=call.forks,
            contact=binding.contact,
            trunk=trunk_id,
            profile=profile,
            media=media,
        )
        del index

    def _new_uac_leg(
        self,
        call: Call,
        target: str,
        peer: Peer,
        agent: str | None,
        *,
        from_: str,
        to: str,
        sdp: bytes | None,
        extra: list[tuple[str, str]],
        forks: list[Leg],
        contact: str,
        trunk: str | None = None,
        profile: MediaProfile | None = None,
        media: MediaKey | None = None,
    ) -> Leg:
        """A new UAC leg (a fork toward one device): INVITE sent, indexed, recorded."""
        leg, request = self._prepare_uac_leg(
            f"b{call.leg_count}",
            target,
            peer,
            agent,
            from_=from_,
            to=to,
            sdp=sdp,
            extra=extra,
            trunk=trunk,
        )
        call.leg_count += 1
        leg.profile = profile
        leg.media = media
        forks.append(leg)
        self._launch(call, leg, request, to=to, contact=contact)
        return leg

    def _prepare_uac_leg(
        self,
        name: str,
        target: str,
        peer: Peer,
        agent: str | None,
        *,
        from_: str,
        to: str,
        sdp: bytes | None,
        extra: list[tuple[str, str]],
        trunk: str | None = None,
    ) -> tuple[Leg, Request]:
        session = InviteClientSession(contact=self.contact_uri, config=self.session_config)
        request = session.create_invite(target, from_, to, sdp, self.now(), extra_headers=extra)
        return Leg(name, session, peer, agent=agent, trunk=trunk), request

    def _launch(self, call: Call, leg: Leg, request: Request, *, to: str, contact: str) -> None:
        session = leg.session
        assert isinstance(session, InviteClientSession)
        self._record(
            call,
            LegAdded(
                at=time.time(),
                leg_id=leg.name,
                party=to.strip("<>"),
                contact=contact,
                sip_call_id=session.call_id,
                agent=leg.agent,
            ),
        )
        leg.invite_key = self.runtime.send_request(request, leg.peer)
        self._index_tx(call, leg.invite_key, leg)
        self._index_dialog(call, (session.call_id, session.local_tag), leg)

    def _index_dialog(self, call: Call, key: tuple[str, str], leg: Leg) -> None:
        self._by_dialog[key] = (call, leg)
        call.dialog_keys.add(key)

    def _index_tx(self, call: Call, key: TxKey, leg: Leg) -> None:
        self._by_client_key[key] = (call, leg)
        call.tx_keys.add(key)

    def _index_server(self, call: Call, leg: Leg) -> None:
        dialog = leg.session.dialog
        assert dialog is not None
        self._index_dialog(call, (dialog.call_id, dialog.local_tag), leg)

    # -- sending ----------------------------------------------------------------------------------
    def _destination(self, leg: Leg) -> Peer:
        """Where a leg's requests go: the address its device is known to be reachable at.

        The caller's leg uses the INVITE's source (on a stream, that very connection,
        RFC 5626 flow reuse); a callee's leg the source its registration came from. Both
        beat the Contact URI for phones behind NAT, which is the common case here.
        """
        return leg.peer

    def _send(self, call: Call, leg: Leg, req: Request) -> None:
        key = self.runtime.send_request(req, self._destination(leg))
        if req.method != "ACK":
            self._index_tx(call, key, leg)

    def _send_in_dialog(self, call: Call, leg: Leg, req: Request) -> TxKey:
        key = self.runtime.send_request(req, self._destination(leg))
        self._index_tx(call, key, leg)
        return key

    # -- the event pump of one leg ----------------------------------------------------------------
    def _drain(self, call: Call, leg: Leg, *, relay: Relay | None = None) -> None:
        now = self.now()
        while (event := leg.session.next_event()) is not None:
            self._on_event(call, leg, event, now, relay)
        self._arm(call, leg)

    def _on_event(
        self, call: Call, leg: Leg, event: object, now: float, relay: Relay | None
    ) -> None:
        if isinstance(event, Ringing):
            self._on_ringing(call, leg, event)
        elif isinstance(event, Answered):
            self._on_answered(call, leg, event)
        elif isinstance(event, Rejected):
            if not self._answer_challenge(call, leg, event):
                self._on_fork_failed(call, leg, event.status)
        elif isinstance(event, SessionTerminated):
            self._on_terminated(call, leg, event.reason)
        elif isinstance(event, ResponseRetransmissionDue):
            # The transaction may be gone (Timer L); then the ACK timeout ends the call.
            with contextlib.suppress(LocalProtocolError):
                self.runtime.send_response(server_key(event.request), event.response)
        elif isinstance(event, AckTimedOut | SessionExpired):
            log.info("call.dead", leg=leg.name, why=type(event).__name__)
            dead = (
                EndReason.SESSION_EXPIRED
                if isinstance(event, SessionExpired)
                else EndReason.TIMEOUT
            )
            self._hangup(call, dead)
        elif isinstance(event, ReInviteReceived | UpdateReceived):
            self._relay(call, leg, event.request)
            self._track_hold(call, leg, event.request.body)
        elif isinstance(event, InfoReceived):
            if call.pin is not None and leg is call.a:
                self._pin_key(call, event.request)
            elif self._dtmf_to_rtp(call, leg, event.request):
                pass
            else:
                self._relay(call, leg, event.request)
        elif isinstance(event, OptionsReceived | NotifyReceived):
            self._respond(leg, event.request, 200)
        elif isinstance(event, ReferReceived):
            self._spawn(self._on_refer(call, leg, event.request))
        elif isinstance(event, RequestAnswered):
            if relay is not None:
                self._answer_relay(call, relay, event)
        elif isinstance(event, RetryReInvite) and event.method == "UPDATE":
            # §14.1: our session refresh met glare (491); the back-off is over: again.
            with_suppressed_local(
                lambda: self._send_in_dialog(
                    call, leg, leg.session.create_request("UPDATE", now=now)
                )
            )
        elif isinstance(event, RefreshDue):
            with_suppressed_local(
                lambda: self._send_in_dialog(
                    call, leg, leg.session.create_request("UPDATE", now=now)
                )
            )

    def _respond(self, leg: Leg, req: Request, status: int) -> None:
        resp = leg.session.respond(req, status, now=self.now())
        self.runtime.send_response(server_key(req), resp)

    def _relay(self, call: Call, leg: Leg, req: Request) -> None:
        other = call.other(leg)
        if other is None or other.session.terminated:
            self._respond(leg, req, 481 if other is None else 487)
            return
        ctype = req.headers.get("Content-Type")
        is_sdp = bool(req.body) and (ctype or "").startswith("application/sdp")
        media = self._media_key(call)
        if media is not None and is_sdp:
            self._spawn(self._relay_anchored(call, leg, other, req, media))
            return
        self._relay_body(call, leg, other, req, req.body, None)

    def _relay_body(
        self, call: Call, leg: Leg, other: Leg, req: Request, body: bytes, media: MediaKey | None
    ) -> None:
        ctype = req.headers.get("Content-Type")
        try:
            out = other.session.create_request(
                req.method, body=body, content_type=ctype if body else None, now=self.now()
            )
        except LocalProtocolError:
            self._respond(leg, req, 491)
            return
        key = self._send_in_dialog(call, other, out)
        if req.body and (ctype or "").startswith("application/sdp"):
            leg.last_sdp = req.body
        self._relays[key] = Relay(leg, req, server_key(req), other, media)

    async def _relay_anchored(
        self, call: Call, leg: Leg, other: Leg, req: Request, key: MediaKey
    ) -> None:
        """A re-offer (hold, resume, codec change) on an anchored call: the anchor
        rewrites it for the other side (RFC 3264 §8)."""
        assert self.media is not None
        with structlog.contextvars.bound_contextvars(call_id=call.id):
            try:
                body = await self.media.offer(
                    key, self._side(call, leg), req.body, other.profile or MediaProfile.RTP
                )
            except MediaError as exc:
                log.warning("call.media_reoffer_failed", status=exc.status, reason=exc.reason)
                with contextlib.suppress(LocalProtocolError):
                    self._respond(leg, req, 488 if exc.status == 488 else 500)
                return
            if other.session.terminated or leg.session.terminated:
                return
            self._relay_body(call, leg, other, req, body, key)

    @staticmethod
    def _side(call: Call, leg: Leg) -> Side:
        # A transfer target joins the anchored session as "b" whichever place it takes.
        if leg.media_side is not None:
            return leg.media_side
        return "a" if leg is call.a else "b"

    def _answer_relay(self, call: Call, relay: Relay, event: RequestAnswered) -> None:
        sdp = event.response.body if event.sdp is not None and event.status < 300 else None
        if sdp is not None:
            relay.answerer.last_sdp = sdp
            if relay.media is not None:
                self._spawn(self._answer_relay_anchored(call, relay, event, sdp, relay.media))
                return
        self._send_relay_answer(relay, event, sdp)

    async def _answer_relay_anchored(
        self, call: Call, relay: Relay, event: RequestAnswered, sdp: bytes, key: MediaKey
    ) -> None:
        assert self.media is not None
        with structlog.contextvars.bound_contextvars(call_id=call.id):
            try:
                answer = await self.media.answer(
                    key,
                    self._side(call, relay.answerer),
                    sdp,
                    relay.origin.profile or MediaProfile.RTP,
                )
            except MediaError as exc:
                log.warning("call.media_reanswer_failed", status=exc.status, reason=exc.reason)
                self._hangup(call, EndReason.FAILED)
                return
            self._send_relay_answer(relay, event, answer)

    def _send_relay_answer(self, relay: Relay, event: RequestAnswered, sdp: bytes | None) -> None:
        body = b"" if sdp is not None else event.response.body
        ctype = event.response.headers.get("Content-Type") if body else None
        try:
            resp = relay.origin.session.respond(
                relay.request, event.status, sdp=sdp, body=body, content_type=ctype, now=self.now()
            )
        except LocalProtocolError:
            return
        self.runtime.send_response(relay.key, resp)

    # -- call progress ----------------------------------------------------------------------------
    def _on_ringing(self, call: Call, leg: Leg, event: Ringing) -> None:
        if call.origin is not None:
            if leg.name not in call.rang_legs and leg.name != "a":
                call.rang_legs.add(leg.name)
                self._record(call, RingingStarted(at=time.time(), leg_id=leg.name))
            return
        if call.transfer is not None and leg in call.transfer.forks:
            self._notify_refer(call, call.transfer, "SIP/2.0 180 Ringing", final=False)
            return
        if call.b is not None or call.ended:
            return
        call.rang = True
        if leg.name not in call.rang_legs:
            call.rang_legs.add(leg.name)
            self._record(call, RingingStarted(at=time.time(), leg_id=leg.name))
        a = call.a.session
        assert isinstance(a, InviteServerSession)
        # An anchored fork's early media would need its own answer from the anchor;
        # the caller hears local ringback instead (180 without SDP).
        early_sdp = event.sdp if leg.media is None else None
        status = 183 if early_sdp is not None else 180
        if status == call.provisional_sent or (call.provisional_sent == 183):
            return
        early = early_sdp.to_bytes() if early_sdp is not None else None
        try:
            resp = a.provisional(status, early)
        except LocalProtocolError:
            return
        call.provisional_sent = status
        assert call.a.invite_key is not None
        self.runtime.send_response(call.a.invite_key, resp)

    def _on_answered(self, call: Call, leg: Leg, event: Answered) -> None:
        leg.last_sdp = event.sdp.to_bytes() if event.sdp is not None else None
        if call.origin is not None and call.transfer is None:
            self._orig_answered(call, call.origin, leg)
            return
        if call.transfer is not None and leg in call.transfer.forks and not call.ended:
            self._transfer_answered(call, call.transfer, leg)
            return
        if call.b is not None or call.ended:
            # A second fork answered: the session already ACKed; BYE it.
            self._bye(call, leg)
            return
        call.b = leg
        if call.ring_timer is not None:
            call.ring_timer.cancel()
        now_wall = time.time()
        self._record(call, CallAnswered(at=now_wall, leg_id=leg.name))
        for other in call.forks:
            if other is not leg:
                self._record(
                    call,
                    LegEnded(at=now_wall, leg_id=other.name, reason=EndReason.ANSWERED_ELSEWHERE),
                )
        self._cancel_forks(call, keep=leg)
        for other in call.forks:
            if other is not leg:
                self._release_media(other.media)
        call.forks = [leg]
        sdp = event.sdp.to_bytes() if event.sdp is not None else None
        if leg.media is not None and sdp is not None:
            self._spawn(self._accept_anchored(call, leg, leg.media, sdp))
            return
        self._accept_caller(call, leg, sdp)

    def _accept_caller(self, call: Call, leg: Leg, sdp: bytes | None) -> None:
        if call.answered_early:
            # The caller was answered for its PIN: it is offered the agent's media.
            if sdp is not None:
                self._reinvite_leg(call, call.a, sdp, None)
            log.info("call.answered", leg=leg.name, anchored=leg.media is not None, pin=True)
            return
        a = call.a.session
        assert isinstance(a, InviteServerSession)
        try:
            resp = a.accept(sdp, now=self.now())
        except LocalProtocolError:
            # The caller gave up (CANCEL, BYE) while the answer was on its way.
            self._bye(call, leg)
            return
        assert call.a.invite_key is not None
        self.runtime.send_response(call.a.invite_key, resp)
        self._drain(call, call.a)
        log.info("call.answered", leg=leg.name, anchored=leg.media is not None)

    async def _accept_anchored(self, call: Call, leg: Leg, key: MediaKey, sdp: bytes) -> None:
        assert self.media is not None
        with structlog.contextvars.bound_contextvars(call_id=call.id):
            try:
                answer = await self.media.answer(key, "b", sdp, call.a.profile or MediaProfile.RTP)
            except MediaError as exc:
                log.warning("call.media_failed", status=exc.status, reason=exc.reason)
                self._bye(call, leg)
                self._reject(call, exc.status, exc.reason[:60], EndReason.FAILED)
                return
            self._accept_caller(call, leg, answer)

    def _answer_challenge(self, call: Call, leg: Leg, event: Rejected) -> bool:
        """A PBX challenged our INVITE on a trunk leg: retry once with the trunk's
        credentials (RFC 3261 §22.2-22.3). True when the INVITE went out again."""
        if event.status not in (401, 407) or leg.trunk is None or leg.auth_tries >= 1:
            return False
        trunk = next((t for t in self.config.trunks if t.id == leg.trunk), None)
        session = leg.session
        if trunk is None or trunk.password is None or not isinstance(session, InviteClientSession):
            # An HA1 is bound to our realm; a PBX's realm needs the clear password.
            return False
        header = "WWW-Authenticate" if event.status == 401 else "Proxy-Authenticate"
        challenge = pick_challenge(event.response.headers.get_all(header))
        if challenge is None or session.invite is None:
            return False
        credentials = build_authorization(
            challenge,
            method="INVITE",
            uri=session.invite.uri,
            username=trunk.id,
            cnonce=secrets.token_hex(8),
            password=trunk.password.get_secret_value(),
        )
        name = "Authorization" if event.status == 401 else "Proxy-Authorization"
        try:
            request = session.retry_invite(extra_headers=[(name, credentials)])
        except LocalProtocolError:
            return False
        leg.auth_tries += 1
        leg.invite_key = self.runtime.send_request(request, leg.peer)
        self._index_tx(call, leg.invite_key, leg)
        log.info("call.trunk_challenge_answered", trunk=trunk.id, status=event.status)
        return True

    def _on_fork_failed(self, call: Call, leg: Leg, status: int) -> None:
        self._release_media(leg.media)
        if call.queued is not None and call.b is None and not call.ended:
            self._queued_fork_failed(call, leg, status)
            return
        if call.origin is not None and call.transfer is None:
            self._orig_failed(call, call.origin, leg, status)
            return
        if call.transfer is not None and leg in call.transfer.forks:
            self._transfer_fork_failed(call, call.transfer, leg, status)
            return
        if leg in call.forks:
            call.forks.remove(leg)
        if call.b is not None or call.ended:
            return
        if call.forks:
            self._record(
                call, LegEnded(at=time.time(), leg_id=leg.name, reason=end_reason_for(status))
            )
        # RFC 3261 §16.7 style choice of the best failure: busy everywhere → 486,
        # a global decline wins, otherwise the most informative.
        if status in (486, 600, 603) or call.last_failure is None:
            call.last_failure = status
        if not call.forks:
            final = call.last_failure or 480
            if final in (408, 480) or (final >= 500 and final not in (600, 603)):
                final = 480
            self._reject(call, final, None, end_reason_for(final))

    def _reject(self, call: Call, status: int, reason: str | None, end: EndReason) -> None:
        call.end_reason = end
        a = call.a.session
        assert isinstance(a, InviteServerSession)
        if call.ring_timer is not None:
            call.ring_timer.cancel()
        try:
            resp = a.reject(status, reason)
        except LocalProtocolError:
            return
        assert call.a.invite_key is not None
        self.runtime.send_response(call.a.invite_key, resp)
        self._drain(call, call.a)

    def _ring_timeout(self, call: Call) -> None:
        call.ring_timer = None
        if call.b is not None or call.ended:
            return
        log.info("call.no_answer")
        self._cancel_forks(call, keep=None)
        self._reject(call, no_answer_status(any_device_rang=call.rang), None, EndReason.NO_ANSWER)

    def _cancel_forks(self, call: Call, keep: Leg | None, forks: list[Leg] | None = None) -> None:
        for fork in list(call.forks if forks is None else forks):
            if fork is keep or fork.invite_key is None:
                continue
            session = fork.session
            assert isinstance(session, InviteClientSession)
            # §9.1: CANCEL only the forks still ringing; a fork that already ended (or
            # answered in a race) is handled by its own response.
            with contextlib.suppress(LocalProtocolError):
                session.cancel()
                self.runtime.endpoint.transactions.cancel(fork.invite_key, self.now())
        self.runtime.pump()

    def _bye(self, call: Call, leg: Leg | None) -> None:
        """Hang up one leg (a leg that already ended is left alone)."""
        if leg is None:
            return
        try:
            self._send(call, leg, leg.session.bye())
        except LocalProtocolError as exc:
            log.debug("call.bye_skipped", leg=leg.name, why=str(exc))

    def _on_terminated(self, call: Call, leg: Leg, reason: str) -> None:
        if call.ended:
            self._forget_if_done(call)
            return
        if call.origin is not None and call.origin.phase != "connected":
            if leg is call.a and call.origin.phase == "customer":
                # The agent hung up while the customer's phone rang.
                self._cancel_forks(call, None, call.origin.customer_forks)
                self._end(call, EndReason.CANCELLED)
            self._forget_if_done(call)
            return
        if leg is call.a:
            if call.b is not None:
                self._bye(call, call.b)
            else:
                self._cancel_forks(call, keep=None)
                a = call.a.session
                if reason == "bye" and call.a.invite_key is not None:
                    assert isinstance(a, InviteServerSession)
                    # §15.1.2: a BYE before the answer also ends the INVITE with 487.
                    with contextlib.suppress(LocalProtocolError):
                        self.runtime.send_response(call.a.invite_key, a.invite_487())
            if reason == "bye":
                end = EndReason.CALLER_BYE if call.b is not None else EndReason.CANCELLED
            elif reason == "cancelled":
                end = EndReason.CANCELLED
            else:
                end = call.end_reason or EndReason.FAILED
            self._end(call, end)
        elif leg is call.b:
            self._bye(call, call.a)
            self._end(call, EndReason.CALLEE_BYE if reason == "bye" else EndReason.FAILED)
        self._forget_if_done(call)

    def _hangup(self, call: Call, reason: EndReason) -> None:
        for leg in call.legs():
            self._bye(call, leg)
        self._end(call, reason)

    def _end(self, call: Call, reason: EndReason) -> None:
        if call.ended:
            return
        call.ended = True
        if call.ring_timer is not None:
            call.ring_timer.cancel()
        log.info("call.ended", reason=reason.value)
        self._record(call, CallEnded(at=time.time(), reason=reason))

    def _forget_if_done(self, call: Call) -> None:
        if not call.ended or any(not leg.session.terminated for leg in call.legs()):
            return
        self.calls.pop(call.id, None)
        self._close_pin_sink(call)
        if call.pin_timer is not None:
            call.pin_timer.cancel()
        for leg in call.legs():
            if leg.timer is not None:
                leg.timer.cancel()
            self._release_media(leg.media)
        for dkey in call.dialog_keys:
            if dkey in self._by_dialog and self._by_dialog[dkey][0] is call:
                del self._by_dialog[dkey]
        for index in (self._by_server_invite, self._by_client_key):
            for tkey in call.tx_keys:
                if tkey in index and index[tkey][0] is call:
                    del index[tkey]

    # -- media anchoring --------------------------------------------------------------
    async def _complete_answer(self, key: MediaKey, sdp: bytes) -> None:
        assert self.media is not None
        try:
            await self.media.answer(key, "a", sdp, MediaProfile.RTP)
        except MediaError as exc:
            log.warning("call.media_reanswer_failed", status=exc.status, reason=exc.reason)

    def _release_media(self, key: MediaKey | None) -> None:
        if key is not None and self.media is not None:
            self._spawn(self.media.delete(key))

    def media_lost(self, keys: list[MediaKey], reason: str) -> None:
        """The media backend lost these sessions (a media worker died): their calls
        cannot carry audio any more, so they end cleanly, BYE on every leg."""
        for call_id_ in {k.call_id for k in keys}:
            call = self.calls.get(call_id_)
            if call is None or call.ended:
                continue
            with structlog.contextvars.bound_contextvars(call_id=call.id):
                log.warning("call.media_lost", reason=reason)
                if call.b is None:
                    self._cancel_forks(call, keep=None)
                    self._reject(call, 503, "Media Lost", EndReason.FAILED)
                else:
                    self._hangup(call, EndReason.FAILED)
                self._forget_if_done(call)

    def flow_closed(self, peer: Peer) -> None:
        """A browser's WebSocket closed (tab closed, network lost): its calls cannot go
        on, and waiting for a session timer to notice would leave the other party and
        the agent's presence hanging for minutes. End them now (RFC 7118 §5: a WebSocket
        SIP client is only reachable through its connection)."""
        if peer.flow is None:
            return
        for call in list(self.calls.values()):
            if call.ended:
                continue
            lost = [
                leg
                for leg in call.legs()
                if leg.peer.kind is peer.kind and leg.peer.flow == peer.flow
            ]
            if not lost:
                continue
            with structlog.contextvars.bound_contextvars(call_id=call.id):
                log.info("call.flow_closed", legs=[leg.name for leg in lost])
                for leg in lost:
                    # Nothing can reach that device any more: end its session here and
                    # drop the BYE (§15.1.1: the session is over once BYE is decided).
                    with contextlib.suppress(LocalProtocolError):
                        leg.session.bye()
                if call.b is None and call.a in lost:
                    self._cancel_forks(call, keep=None)
                    self._end(call, EndReason.CANCELLED)
                elif call.b is not None and (call.a in lost or call.b in lost):
                    self._hangup(call, EndReason.FAILED)
                self._forget_if_done(call)

    def _dtmf_to_rtp(self, call: Call, leg: Leg, info: Request) -> bool:
        """A browser's key press as SIP INFO on an anchored call: the anchor sends it to
        the RTP side as RFC 4733 (what trunks expect) when it can; True when taken."""
        key = self._media_key(call)
        sender = getattr(self.media, "send_dtmf", None)
        if key is None or sender is None or leg.profile is not MediaProfile.WEBRTC:
            return False
        digit = dtmf_digit(info.headers.get("Content-Type"), info.body)
        if digit is None:
            return False
        self._spawn(self._dtmf_to_rtp_async(call, leg, info, key, digit, sender))
        return True

    async def _dtmf_to_rtp_async(
        self,
        call: Call,
        leg: Leg,
        info: Request,
        key: MediaKey,
        digit: str,
        sender: Callable[[MediaKey, str], Awaitable[bool]],
    ) -> None:
        sent = await sender(key, digit)
        with contextlib.suppress(LocalProtocolError):
            if sent:
                self._respond(leg, info, 200)
            elif not leg.session.terminated:
                self._relay(call, leg, info)

    def media_dtmf(self, key: MediaKey, digit: str) -> None:
        """The anchor heard an RFC 4733 key from the RTP side: browsers that could not
        negotiate telephone-event with it get the key as SIP INFO (application/dtmf-relay,
        which JsSIP and SIP.js report as DTMF)."""
        call = self.calls.get(key.call_id)
        if call is None or call.ended:
            return
        for leg in (call.a, call.b):
            if leg is None or leg.profile is not MediaProfile.WEBRTC or leg.session.terminated:
                continue
            with contextlib.suppress(LocalProtocolError):
                info = leg.session.create_request(
                    "INFO",
                    body=f"Signal={digit}\r\nDuration=160\r\n".encode(),
                    content_type="application/dtmf-relay",
                    now=self.now(),
                )
                self._send_in_dialog(call, leg, info)

    def _anchored(self, call: Call) -> bool:
        return any(leg.media is not None for leg in call.legs())

    @staticmethod
    def _media_key(call: Call) -> MediaKey | None:
        """The anchored session between the call's two connected parties, if any."""
        if call.a.media is not None:
            return call.a.media
        return call.b.media if call.b is not None else None

    def _track_hold(self, call: Call, leg: Leg, body: bytes) -> None:
        if not body or call.b is None:
            return
        try:
            held = parse_sdp(body).is_hold()  # RFC 3264 §8.4: sendonly/inactive
        except RemoteProtocolError:
            return
        if held != call.held:
            call.held = held
            now = time.time()
            self._record(call, HoldStarted(at=now, leg_id=leg.name) if held else HoldEnded(at=now))

    # -- timers -----------------------------------------------------------------------------------
    def _arm(self, call: Call, leg: Leg) -> None:
        deadline = leg.session.next_deadline()
        if deadline == leg.timer_at:
            return
        if leg.timer is not None:
            leg.timer.cancel()
            leg.timer = None
        leg.timer_at = deadline
        if deadline is not None:
            leg.timer = self._loop.call_at(deadline, self._fire, call, leg)

    def _fire(self, call: Call, leg: Leg) -> None:
        leg.timer = None
        leg.timer_at = None
        leg.session.handle_timer(self.now())
        self._drain(call, leg)
        self._forget_if_done(call)

    # -- blind transfer (RFC 3515) ------------------------------------------------------
    async def _on_refer(self, call: Call, leg: Leg, refer: Request) -> None:
        """REFER from a party (an agent's "transfer" key): we carry it out ourselves.

        The B2BUA does not pass the REFER on (the other party may be a PBX trunk that
        must not be asked to place calls); it calls the target, connects the remaining
        party to it with a re-INVITE, and reports progress to the transferor with
        NOTIFYs of message/sipfrag (RFC 3515 §2.4.4-2.4.5).
        """
        other = call.other(leg)
        refer_to = refer.headers.get("Refer-To")
        if other is None or refer_to is None or call.transfer is not None or call.ended:
            self._respond(leg, refer, 400 if refer_to is None else 491)
            return
        try:
            target_uri = parse_name_addr(refer_to).uri
        except RemoteProtocolError:
            self._respond(leg, refer, 400)
            return
        if not isinstance(target_uri, SipUri) or target_uri.user is None:
            self._respond(leg, refer, 404)
            return
        replaces = target_uri.header("Replaces")
        if replaces is not None:
            if self._anchored(call):
                # Splicing two calls whose parties may each need an anchor toward the
                # other is not built; say so rather than join media that cannot meet.
                self._respond(leg, refer, 501)
                return
            self._attended_transfer(call, leg, refer, replaces)
            return
        # The transferor is an agent: route as if it dialled the target (dial rules,
        # agents, DIDs), so a transfer cannot reach what the agent could not call.
        if leg.agent is None:
            self._respond(leg, refer, 403)
            return
        route = route_call(
            Caller(CallerKind.AGENT, leg.agent),
            target_uri.user,
            dids=self.config.dids,
            dial_rules=self.config.dial_rules,
            agents=self.agents,
        )
        if route.kind not in (RouteKind.AGENT, RouteKind.TRUNK) or route.id is None:
            self._respond(leg, refer, route.status or 404)
            return
        aor = f"sip:{route.id}@{self.domain}"
        bindings = await self.locations.lookup(aor, time.time())
        if not bindings:
            self._respond(leg, refer, 480)
            return
        transfer = Transfer(
            leg,
            refer,
            target=f"sip:{target_uri.user}@{self.domain}",
            target_agent=route.id if route.kind is RouteKind.AGENT else None,
        )
        call.transfer = transfer
        self._respond(leg, refer, 202)
        self._notify_refer(call, transfer, "SIP/2.0 100 Trying", final=False)
        sdp = other.last_sdp
        if sdp is not None:
            # Offer the remaining party's media as two-way even if it sits on hold.
            with contextlib.suppress(RemoteProtocolError):
                sdp = parse_sdp(sdp).with_direction("sendrecv").bump_version().to_bytes()
        for binding in bindings:
            peer = peer_from_source(binding.source, binding.flow, self.node_id)
            if peer is None:
                continue
            target = binding.contact
            if route.kind is RouteKind.TRUNK:
                contact = parse_uri(binding.contact)
                if isinstance(contact, SipUri):
                    target = str(contact.replace(user=target_uri.user))
            profile = profile_of_transport(peer.kind)
            fork_sdp, media = sdp, None
            if sdp is not None and self.media is not None and needs_anchor(other.profile, profile):
                # The remaining party and the target speak different media: a new
                # anchored session between them (remaining "a", target "b").
                media = MediaKey(call.id, f"b{call.leg_count}")
                try:
                    fork_sdp = await self.media.offer(media, "a", sdp, profile)
                except MediaError as exc:
                    log.warning("call.media_refused", status=exc.status, reason=exc.reason)
                    continue
            fork = self._new_uac_leg(
                call,
                target,
                peer,
                transfer.target_agent,
                from_=f"<{call.caller}>" if other is call.a else f"<{call.callee}>",
                to=f"<{transfer.target}>",
                sdp=fork_sdp,
                extra=[("Referred-By", f"<sip:{leg.agent}@{self.domain}>")],
                forks=transfer.forks,
                contact=binding.contact,
                trunk=route.id if route.kind is RouteKind.TRUNK else None,
                profile=profile,
                media=media,
            )
            fork.media_side = "b" if media is not None else None
        if not transfer.forks:
            call.transfer = None
            self._notify_refer(call, transfer, "SIP/2.0 480 Temporarily Unavailable", final=True)
        log.info("call.transfer_started", target=transfer.target, forks=len(transfer.forks))

    def _attended_transfer(self, call: Call, leg: Leg, refer: Request, replaces: str) -> None:
        """REFER with Replaces (RFC 3891, RFC 5589 §7): the transferor talks to the party
        of ``call`` and, in a second call, to the target; the two remaining parties are
        joined and the transferor leaves both calls.

        Both calls run through us, so instead of asking the transferee to send an INVITE
        with Replaces we splice the legs ourselves: each remaining party gets a re-INVITE
        with the other's media, the target's leg moves into this call, and the
        transferor's two legs are hung up.
        """
        cid, _, params = replaces.partition(";")
        tags = dict(p.strip().split("=", 1) for p in params.split(";") if "=" in p)
        found = None
        for tag in (tags.get("to-tag"), tags.get("from-tag")):
            if tag is not None:
                found = found or self._by_dialog.get((cid.strip(), tag))
        if found is None:
            self._respond(leg, refer, 481)  # RFC 3891 §3: no such dialog
            return
        call2, leg2 = found
        target = call2.other(leg2)
        remaining = call.other(leg)
        if (
            call2 is call
            or target is None
            or remaining is None
            or leg2.agent != leg.agent  # only the dialog's own party may hand it over
            or call2.ended
        ):
            self._respond(leg, refer, 403 if leg2.agent != leg.agent else 481)
            return
        transfer = Transfer(
            leg,
            refer,
            target=call2.callee if leg2 is call2.a else call2.caller,
            target_agent=target.agent,
        )
        self._respond(leg, refer, 202)
        self._notify_refer(call, transfer, "SIP/2.0 100 Trying", final=False)
        now_wall = time.time()
        # Take the target's leg out of the second call, which ends for the transferor.
        if target is call2.b:
            call2.b, call2.b_agent = None, None
            call2.forks = []
        else:
            call2.a, call2.a_agent = leg2, leg2.agent
        call2.left_agents = (target.agent,) if target.agent else ()
        self._end(call2, EndReason.CALLER_BYE if leg2 is call2.a else EndReason.CALLEE_BYE)
        call2.left_agents = ()
        self._bye(call2, leg2)
        for dkey, (_, lg) in list(self._by_dialog.items()):
            if lg is target:
                self._index_dialog(call, dkey, target)
        for tkey, (_, lg) in list(self._by_client_key.items()):
            if lg is target:
                self._index_tx(call, tkey, target)
        # Into this call, in the transferor's place.
        target.name = f"b{call.leg_count}"
        call.leg_count += 1
        self._record(
            call,
            LegAdded(
                at=now_wall,
                leg_id=target.name,
                party=transfer.target,
                agent=target.agent,
                sip_call_id=target.session.dialog.call_id if target.session.dialog else None,
            ),
        )
        self._take_place(call, leg, target, TransferMode.ATTENDED, transfer.target, now_wall)
        # Each remaining party's media now goes to the other (RFC 3264 offers).
        for party, peer_leg in ((remaining, target), (target, remaining)):
            sdp = peer_leg.last_sdp
            if sdp is None:
                continue
            with contextlib.suppress(RemoteProtocolError):
                sdp = parse_sdp(sdp).with_direction("sendrecv").bump_version().to_bytes()
            self._reinvite_leg(call, party, sdp, None)
        self._notify_refer(call, transfer, "SIP/2.0 200 OK", final=True)
        self._bye(call, leg)
        log.info("call.transferred", target=transfer.target, mode="attended", merged=call2.id)

    def _take_place(
        self,
        call: Call,
        transferor: Leg,
        target: Leg,
        mode: TransferMode,
        target_uri: str,
        at: float,
    ) -> None:
        """``target`` (answered) replaces ``transferor`` in ``call``; recorded as a transfer
        and, for presence, as the transferor leaving."""
        self._record(call, CallAnswered(at=at, leg_id=target.name))
        self._record(
            call, CallTransferred(at=at, mode=mode, target=target_uri, leg_id=transferor.name)
        )
        if transferor is call.a:
            call.a, call.a_agent = target, target.agent
        else:
            call.b, call.b_agent = target, target.agent
            call.forks = [target]
        call.left_agents = (transferor.agent,) if transferor.agent else ()
        self._record(call, LegEnded(at=at, leg_id=transferor.name, reason=EndReason.TRANSFERRED))
        call.left_agents = ()

    def _notify_refer(self, call: Call, transfer: Transfer, frag: str, *, final: bool) -> None:
        state = "terminated;reason=noresource" if final else "active;expires=60"
        try:
            notify = transfer.transferor.session.create_request(
                "NOTIFY",
                body=(frag + "\r\n").encode(),
                content_type="message/sipfrag;version=2.0",
                extra_headers=[("Event", "refer"), ("Subscription-State", state)],
                now=self.now(),
            )
        except LocalProtocolError:
            return  # the transferor already hung up: nobody to tell
        self._send_in_dialog(call, transfer.transferor, notify)

    def _transfer_answered(self, call: Call, transfer: Transfer, leg: Leg) -> None:
        for fork in transfer.forks:
            if fork is not leg and fork.invite_key is not None:
                session = fork.session
                assert isinstance(session, InviteClientSession)
                with contextlib.suppress(LocalProtocolError):
                    session.cancel()
                    self.runtime.endpoint.transactions.cancel(fork.invite_key, self.now())
        transferor = transfer.transferor
        remaining = call.other(transferor)
        assert remaining is not None
        now_wall = time.time()
        call.transfer = None
        self._take_place(call, transferor, leg, TransferMode.BLIND, transfer.target, now_wall)
        # The session that anchored the transferor's media is over; the target's fork
        # brought its own if the remaining party needs one toward it.
        for old in (transferor, remaining):
            self._release_media(old.media)
            old.media, old.media_side = None, None
        if leg.media is not None:
            remaining.media_side = "a"
        if leg.last_sdp is not None and leg.media is not None:
            self._spawn(self._transfer_reinvite_anchored(call, remaining, leg, leg.media))
        elif leg.last_sdp is not None:
            # Point the remaining party's media at the target (RFC 3264 offer).
            self._reinvite_leg(call, remaining, leg.last_sdp, None)
        self._notify_refer(call, transfer, "SIP/2.0 200 OK", final=True)
        self._bye(call, transferor)
        log.info("call.transferred", target=transfer.target, anchored=leg.media is not None)

    async def _transfer_reinvite_anchored(
        self, call: Call, remaining: Leg, target: Leg, key: MediaKey
    ) -> None:
        assert self.media is not None and target.last_sdp is not None
        with structlog.contextvars.bound_contextvars(call_id=call.id):
            try:
                sdp = await self.media.answer(
                    key, "b", target.last_sdp, remaining.profile or MediaProfile.RTP
                )
            except MediaError as exc:
                log.warning("call.media_failed", status=exc.status, reason=exc.reason)
                self._hangup(call, EndReason.FAILED)
                return
            self._reinvite_leg(call, remaining, sdp, None)

    def _transfer_fork_failed(self, call: Call, transfer: Transfer, leg: Leg, status: int) -> None:
        transfer.forks.remove(leg)
        self._record(call, LegEnded(at=time.time(), leg_id=leg.name, reason=end_reason_for(status)))
        if not transfer.forks and call.transfer is transfer:
            call.transfer = None
            reason = "Busy Here" if status == 486 else "Temporarily Unavailable"
            code = status if status in (486, 603) else 480
            self._notify_refer(call, transfer, f"SIP/2.0 {code} {reason}", final=True)

    # -- calls held by a queue (omnichannel routing decides who rings) ---------------------
    async def _queue_call(self, call: Call, queue: str, req: Request) -> None:
        """The caller hears ringing while the routing engine picks an agent (sticky to
        the agent of the customer's open session when there is one)."""
        assert self.queue_router is not None
        call.queued = queue
        a = call.a.session
        assert isinstance(a, InviteServerSession)
        with contextlib.suppress(LocalProtocolError):
            resp = a.provisional(180)
            call.provisional_sent = 180
            assert call.a.invite_key is not None
            self.runtime.send_response(call.a.invite_key, resp)
        claimed = from_(req).uri
        caller = claimed.user if isinstance(claimed, SipUri) else None
        headers = {n: v for n in (*PASS_HEADERS, "X-UCGate-Context") if (v := req.headers.get(n))}
        log.info("call.queued", queue=queue)
        await self.queue_router.call_queued(call.id, queue, caller, headers)

    async def ring_agent(self, call_id: str, agent: str) -> bool:
        """The routing engine offered a queued call to ``agent``: fork to their devices.
        False when the call is gone or the agent has no reachable device."""
        call = self.calls.get(call_id)
        if call is None or call.ended or call.b is not None:
            return False
        call.ringing_agent = agent
        call.b_agent = agent
        call.callee = f"sip:{agent}@{self.domain}"
        with structlog.contextvars.bound_contextvars(call_id=call_id):
            bindings = await self.locations.lookup(call.callee, time.time())
            for binding in bindings:
                await self._fork(call, call.leg_count, binding, agent, RouteKind.AGENT, agent)
        if not call.forks:
            call.ringing_agent = None
            return False
        return True

    def stop_ringing(self, call_id: str) -> None:
        """The offer to the agent timed out: the next agent will be rung instead."""
        call = self.calls.get(call_id)
        if call is None or call.b is not None:
            return
        call.ringing_agent = None  # the failures that follow are not a decline
        self._cancel_forks(call, keep=None)

    # -- session PIN by DTMF ("pin:<queue>" DIDs) ---------------------------------------
    async def _answer_for_pin(self, call: Call, queue: str) -> None:
        """Answer the caller ourselves so it can send DTMF: RFC 4733 events in RTP to a
        port of ours when it offers telephone-event (our answer is recvonly, RFC 3264
        §6.1), and SIP INFO (RFC 6086, needs the dialog) either way. An agent's media
        replaces our answer by re-INVITE once the PIN matched."""
        a = call.a.session
        assert isinstance(a, InviteServerSession)
        sdp = None
        if a.invite.body:
            sdp = await self._pin_answer_sdp(call, a.invite.body)
        if call.ended or a.terminated:
            self._close_pin_sink(call)
            return
        try:
            resp = a.accept(sdp, now=self.now())
        except (LocalProtocolError, RemoteProtocolError):
            self._reject(call, 488, None, EndReason.FAILED)
            return
        call.answered_early = True
        call.pin = PinCollector()
        call.pin_queue = queue
        assert call.a.invite_key is not None
        self.runtime.send_response(call.a.invite_key, resp)
        self._drain(call, call.a)
        call.pin_timer = self._loop.call_later(
            self.config.calls.pin_timeout, self._pin_timeout, call
        )
        log.info("call.pin_requested", queue=queue)

    async def _pin_answer_sdp(self, call: Call, offer: bytes) -> bytes:
        """Our answer for PIN entry: the first RTP audio stream that offers
        telephone-event comes to a DTMF sink of ours (recvonly); every other stream is
        accepted inactive with its first codec, so the caller sends it nothing."""
        parsed = parse_sdp(offer)
        host = self.contact_uri.split("@", 1)[1].rsplit(":", 1)[0]
        lines = [
            "v=0",
            f"o=ucgate {secrets.randbelow(10**9)} 1 IN IP4 {host}",
            "s=ucgate",
            f"c=IN IP4 {host}",
            "t=0 0",
        ]
        for media in parsed.media:
            fmt = media.formats[0] if media.formats else "0"
            rtpmaps = media.attribute_values("rtpmap")
            events = telephone_event_types(rtpmaps)
            if (
                call.pin_sink is None
                and media.kind == "audio"
                and media.proto.upper() == "RTP/AVP"
                and events
                and media.port
            ):
                te = next(iter(events))
                fmt = next((f for f in media.formats if f.isdigit() and int(f) not in events), fmt)
                call.pin_sink = await DtmfSink.open(
                    host, frozenset(events), functools.partial(self._pin_press, call)
                )
                lines.append(f"m=audio {call.pin_sink.port} RTP/AVP {fmt} {te}")
                lines += [f"a=rtpmap:{v}" for v in rtpmaps if v.split()[0] == fmt]
                lines += [f"a=rtpmap:{events[te]}", f"a=fmtp:{te} 0-15", "a=recvonly"]
                continue
            lines.append(f"m={media.kind} {9 if media.port else 0} {media.proto} {fmt}")
            lines += [f"a=rtpmap:{v}" for v in rtpmaps if v.split()[0] == fmt]
            lines += ["c=IN IP4 0.0.0.0", "a=inactive"]
        return ("\r\n".join(lines) + "\r\n").encode()

    @staticmethod
    def _close_pin_sink(call: Call) -> None:
        if call.pin_sink is not None:
            call.pin_sink.close()
            call.pin_sink = None

    def _pin_key(self, call: Call, info: Request) -> None:
        digit = dtmf_digit(info.headers.get("Content-Type"), info.body)
        # RFC 6086 §4.2.2: an INFO whose package we do not handle is still answered;
        # 415 tells the sender its body type is not understood.
        self._respond(call.a, info, 200 if digit is not None else 415)
        if digit is not None:
            self._pin_press(call, digit)

    def _pin_press(self, call: Call, digit: str) -> None:
        if call.pin is None or call.ended:
            return
        outcome = call.pin.press(digit)
        if isinstance(outcome, PinComplete):
            self._spawn(self._pin_lookup(call, outcome.digits))

    async def _pin_lookup(self, call: Call, digits: str) -> None:
        assert self.queue_router is not None and call.pin_queue is not None
        with structlog.contextvars.bound_contextvars(call_id=call.id):
            session_id = await self.queue_router.session_for_pin(digits)
            if call.ended or call.pin is None:
                return
            if session_id is None:
                log.info("call.pin_wrong", tries=call.pin.tries + 1)
                if isinstance(call.pin.rejected(), PinExhausted):
                    self._pin_give_up(call, "pin-exhausted")
                return
            log.info("call.pin_matched", session=session_id)
            call.pin = None
            self._close_pin_sink(call)
            if call.pin_timer is not None:
                call.pin_timer.cancel()
            call.queued = call.pin_queue
            claimed = (
                from_(call.a.session.invite).uri
                if isinstance(call.a.session, InviteServerSession)
                else None
            )
            caller = claimed.user if isinstance(claimed, SipUri) else None
            await self.queue_router.call_queued(
                call.id, call.pin_queue, caller, {"X-UCGate-Session": session_id}
            )

    def _pin_timeout(self, call: Call) -> None:
        call.pin_timer = None
        if call.pin is not None and not call.ended:
            self._pin_give_up(call, "pin-timeout")

    def _pin_give_up(self, call: Call, why: str) -> None:
        with structlog.contextvars.bound_contextvars(call_id=call.id):
            log.info("call.pin_failed", why=why)
            call.pin = None
            self._close_pin_sink(call)
            self._hangup(call, EndReason.FAILED)
            self._forget_if_done(call)

    def refuse_queued(self, call_id: str, status: int) -> None:
        """The queue router will not take this call (a guest's session is closed)."""
        call = self.calls.get(call_id)
        if call is None or call.ended or call.b is not None:
            return
        with structlog.contextvars.bound_contextvars(call_id=call_id):
            self._reject(call, status, None, end_reason_for(status))
            self._end(call, end_reason_for(status))
            self._forget_if_done(call)

    def _queued_fork_failed(self, call: Call, leg: Leg, status: int) -> None:
        if leg in call.forks:
            call.forks.remove(leg)
        self._record(call, LegEnded(at=time.time(), leg_id=leg.name, reason=end_reason_for(status)))
        if call.forks:
            return
        agent, call.ringing_agent = call.ringing_agent, None
        if agent is not None and self.queue_router is not None:
            self._spawn(self.queue_router.agent_declined(call.id, agent, status))

    # -- calls we place ourselves (elevation, click-to-call) ----------------------------
    async def originate(
        self, *, agent: str, to: str, session_id: str | None = None
    ) -> tuple[str, asyncio.Future[str]]:
        """Ring ``agent``'s devices, then call ``to`` (a number via the dial rules, or an
        agent) and connect them. Returns a future: the call id once both answered, or an
        :class:`OriginateFailed` with the status that ended it. Raises OriginateFailed at
        once when the call cannot even start (routing, no device)."""
        route = route_call(
            Caller(CallerKind.AGENT, agent),
            to,
            dids=self.config.dids,
            dial_rules=self.config.dial_rules,
            agents=self.agents,
        )
        if route.kind not in (RouteKind.AGENT, RouteKind.TRUNK) or route.id is None:
            raise OriginateFailed(route.status or 404, route.reason or "cannot route")
        agent_aor = f"sip:{agent}@{self.domain}"
        bindings = await self.locations.lookup(agent_aor, time.time())
        peers = [
            (b, p)
            for b in bindings
            if (p := peer_from_source(b.source, b.flow, self.node_id)) is not None
        ]
        if not peers:
            raise OriginateFailed(480, "the agent has no registered device")
        cid = f"{self.node_id}-{next(self._ids)}-{secrets.token_hex(3)}"
        origin = Origination(agent, to, route, session_id, done=self._loop.create_future())
        customer = f"sip:{to}@{self.domain}"
        headers = [("X-UCGate-Session", session_id)] if session_id else []
        legs: list[tuple[Leg, Request, Binding]] = []
        for index, (binding, peer) in enumerate(peers):
            name = "a" if index == 0 else f"a{index}"
            sdp = self._placeholder_sdp()
            profile = profile_of_transport(peer.kind)
            media = None
            if (
                self.media is not None
                and route.kind is RouteKind.TRUNK
                and needs_anchor(MediaProfile.RTP, profile)
            ):
                # A browser agent and a customer behind a trunk: the agent's device is
                # offered the anchor's WebRTC side (customer side "b" still a placeholder).
                # sendrecv toward our own host's discard port, not inactive or c=0.0.0.0
                # (which rtpengine turns into sendonly): a browser that answered a held
                # offer answers the later sendrecv re-offer recvonly too (measured with
                # Chromium + JsSIP 3.13), and the customer would never hear the agent.
                # Until the customer answers, what the browser sends is dropped.
                media = MediaKey(cid, name)
                host = self.contact_uri.split("@", 1)[1].rsplit(":", 1)[0].encode()
                sdp = sdp.replace(b"a=inactive", b"a=sendrecv").replace(
                    b"c=IN IP4 0.0.0.0", b"c=IN IP4 " + host
                )
                try:
                    sdp = await self.media.offer(media, "b", sdp, profile)
                except MediaError as exc:
                    log.warning("call.media_refused", status=exc.status, reason=exc.reason)
                    continue
            leg, request = self._prepare_uac_leg(
                name,
                binding.contact,
                peer,
                agent,
                # What the agent's phone shows: the customer it is about to be put through to.
                from_=f"<{customer}>",
                to=f"<{agent_aor}>",
                sdp=sdp,
                extra=headers,
            )
            leg.profile = profile
            leg.media = media
            legs.append((leg, request, binding))
        if not legs:
            raise OriginateFailed(503, "no media for the agent's devices")
        call = Call(cid, legs[0][0], caller=agent_aor, callee=customer, direction="outbound")
        call.origin = origin
        call.a_agent = agent
        call.b_agent = route.id if route.kind is RouteKind.AGENT else None
        self.calls[cid] = call
        with structlog.contextvars.bound_contextvars(call_id=cid):
            self._record(
                call,
                CallOffered(
                    at=time.time(),
                    direction=Direction.OUTBOUND,
                    caller=agent_aor,
                    callee=to,
                    leg_id="a",
                    party=agent_aor,
                    agent=agent,
                ),
            )
            for leg, request, binding in legs:
                origin.agent_forks.append(leg)
                session = leg.session
                assert isinstance(session, InviteClientSession)
                leg.invite_key = self.runtime.send_request(request, leg.peer)
                self._index_tx(call, leg.invite_key, leg)
                self._index_dialog(call, (session.call_id, session.local_tag), leg)
                del binding
            call.ring_timer = self._loop.call_later(
                self.config.calls.ring_timeout, self._orig_timeout, call
            )
            log.info("call.originate", agent=agent, to=to, devices=len(legs), session=session_id)
        assert origin.done is not None
        return cid, origin.done

    def _placeholder_sdp(self) -> bytes:
        # RFC 3725 §5 (flow IV style): hold the agent's phone with an inactive offer until
        # the customer's media description is known; its answer gives us the agent's.
        host = self.contact_uri.split("@", 1)[1].rsplit(":", 1)[0]
        return (
            "v=0\r\n"
            f"o=ucgate {secrets.randbelow(10**9)} 1 IN IP4 {host}\r\n"
            "s=ucgate\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n"
            "m=audio 9 RTP/AVP 0 8 101\r\n"
            "a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
            "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=inactive\r\n"
        ).encode()

    def _orig_answered(self, call: Call, origin: Origination, leg: Leg) -> None:
        if origin.phase == "agent" and leg in origin.agent_forks:
            origin.phase = "customer"
            call.a = leg
            self._cancel_forks(call, leg, origin.agent_forks)
            if call.ring_timer is not None:
                call.ring_timer.cancel()
            if leg.media is not None and leg.last_sdp is not None:
                self._spawn(self._call_customer_anchored(call, origin, leg, leg.media))
            else:
                self._call_customer(call, origin, leg, leg.last_sdp)
        elif origin.phase == "customer" and leg in origin.customer_forks:
            origin.phase = "connected"
            call.b = leg
            call.forks = [leg]
            if call.ring_timer is not None:
                call.ring_timer.cancel()
            self._cancel_forks(call, leg, origin.customer_forks)
            self._record(call, CallAnswered(at=time.time(), leg_id=leg.name))
            if leg.last_sdp is not None and call.a.media is not None:
                self._spawn(self._reinvite_agent_anchored(call, leg.last_sdp, call.a.media))
            elif leg.last_sdp is not None:
                # RFC 3725: the agent's device gets the customer's media description.
                self._reinvite_leg(call, call.a, leg.last_sdp, None)
            if origin.done is not None and not origin.done.done():
                origin.done.set_result(call.id)
            log.info("call.connected")
        else:
            self._bye(call, leg)  # a late second answer

    def _reinvite_leg(self, call: Call, leg: Leg, sdp: bytes, media: MediaKey | None) -> None:
        """Offer ``sdp`` to ``leg`` in a re-INVITE (RFC 3264 §8): a transfer or RFC 3725
        third-party control pointing its media elsewhere. With ``media``, the answer is
        handed to that anchored session."""
        try:
            reinvite = leg.session.create_request(
                "INVITE", body=sdp, content_type="application/sdp", now=self.now()
            )
            key = self._send_in_dialog(call, leg, reinvite)
        except LocalProtocolError as exc:
            log.warning("call.reinvite_failed", leg=leg.name, why=str(exc))
            return
        if media is not None:
            self._media_answers[key] = media

    async def _reinvite_agent_anchored(self, call: Call, sdp: bytes, key: MediaKey) -> None:
        assert self.media is not None
        with structlog.contextvars.bound_contextvars(call_id=call.id):
            try:
                offer = await self.media.offer(key, "b", sdp, MediaProfile.WEBRTC)
            except MediaError as exc:
                log.warning("call.media_failed", status=exc.status, reason=exc.reason)
                self._hangup(call, EndReason.FAILED)
                return
            self._reinvite_leg(call, call.a, offer, key)

    async def _call_customer_anchored(
        self, call: Call, origin: Origination, agent_leg: Leg, key: MediaKey
    ) -> None:
        """The browser agent answered the anchor's offer: the anchor's RTP side is what
        the customer is offered."""
        assert self.media is not None and agent_leg.last_sdp is not None
        with structlog.contextvars.bound_contextvars(call_id=call.id):
            try:
                rtp_side = await self.media.answer(key, "a", agent_leg.last_sdp, MediaProfile.RTP)
            except MediaError as exc:
                log.warning("call.media_failed", status=exc.status, reason=exc.reason)
                self._orig_give_up(call, origin, exc.status, EndReason.FAILED)
                return
            self._call_customer(call, origin, agent_leg, rtp_side)

    def _call_customer(
        self, call: Call, origin: Origination, agent_leg: Leg, sdp: bytes | None
    ) -> None:
        del agent_leg
        if sdp is not None:
            with contextlib.suppress(RemoteProtocolError):
                sdp = parse_sdp(sdp).with_direction("sendrecv").bump_version().to_bytes()
        self._spawn(self._call_customer_async(call, origin, sdp))

    async def _call_customer_async(
        self, call: Call, origin: Origination, sdp: bytes | None
    ) -> None:
        route = origin.route
        assert route.id is not None
        aor = f"sip:{route.id}@{self.domain}"
        bindings = await self.locations.lookup(aor, time.time())
        headers = [("X-UCGate-Session", origin.session_id)] if origin.session_id else []
        with structlog.contextvars.bound_contextvars(call_id=call.id):
            for binding in bindings:
                peer = peer_from_source(binding.source, binding.flow, self.node_id)
                if peer is None:
                    continue
                target = binding.contact
                if route.kind is RouteKind.TRUNK:
                    contact = parse_uri(binding.contact)
                    if isinstance(contact, SipUri):
                        target = str(contact.replace(user=origin.to))
                self._new_uac_leg(
                    call,
                    target,
                    peer,
                    call.b_agent,
                    from_=f"<sip:{origin.agent}@{self.domain}>",
                    to=f"<{call.callee}>",
                    sdp=sdp,
                    extra=headers,
                    forks=origin.customer_forks,
                    contact=binding.contact,
                    trunk=route.id if route.kind is RouteKind.TRUNK else None,
                )
            if not origin.customer_forks:
                self._orig_give_up(call, origin, 480, EndReason.FAILED)
                return
            call.ring_timer = self._loop.call_later(
                self.config.calls.ring_timeout, self._orig_timeout, call
            )

    def _orig_failed(self, call: Call, origin: Origination, leg: Leg, status: int) -> None:
        forks = origin.agent_forks if leg in origin.agent_forks else origin.customer_forks
        if leg in forks:
            forks.remove(leg)
        if origin.phase == "agent" and not origin.agent_forks:
            self._orig_give_up(call, origin, status, end_reason_for(status))
        elif origin.phase == "customer" and leg not in origin.agent_forks:
            if leg.name != "a":
                self._record(
                    call, LegEnded(at=time.time(), leg_id=leg.name, reason=end_reason_for(status))
                )
            if not origin.customer_forks:
                self._orig_give_up(call, origin, status, end_reason_for(status))

    def _orig_timeout(self, call: Call) -> None:
        call.ring_timer = None
        origin = call.origin
        if origin is None or origin.phase == "connected" or call.ended:
            return
        forks = origin.agent_forks if origin.phase == "agent" else origin.customer_forks
        self._cancel_forks(call, None, forks)
        self._orig_give_up(call, origin, 480, EndReason.NO_ANSWER)

    def _orig_give_up(
        self, call: Call, origin: Origination, status: int, reason: EndReason
    ) -> None:
        if origin.phase == "customer":
            self._bye(call, call.a)  # the agent was waiting for the customer
        if origin.done is not None and not origin.done.done():
            origin.done.set_exception(OriginateFailed(status, reason.value))
        self._end(call, reason)
        self._forget_if_done(call)

    # -- records and presence -----------------------------------------------------------
    def _record(self, call: Call, event: CallEvent) -> None:
        if self.tracker is None:
            return
        agents: list[AgentOnCall] = []
        if call.a_agent is not None:
            d = call.a.session.dialog
            dialog = (d.call_id, d.local_tag, d.remote_tag or "") if d is not None else None
            agents.append(AgentOnCall(call.a_agent, call.callee, "outbound", dialog))
        if call.b_agent is not None:
            leg = call.b if call.b is not None else (call.forks[0] if call.forks else None)
            dialog = None
            if leg is not None:
                session = leg.session
                assert isinstance(session, InviteClientSession)
                d = session.dialog
                dialog = (
                    (d.call_id, d.local_tag, d.remote_tag or "")
                    if d is not None
                    else (session.call_id, session.local_tag, "")
                )
            agents.append(AgentOnCall(call.b_agent, call.caller, "inbound", dialog))
        snapshot = CallSnapshot(
            call.id, tuple(agents), answered=call.b is not None, left=call.left_agents
        )
        self.tracker.post(snapshot, event)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for call in list(self.calls.values()):
            if not call.ended:
                self._hangup(call, EndReason.FAILED)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)


class QueueRouter(Protocol):
    """Who decides which agent a queued call rings (the sessions glue)."""

    async def call_queued(
        self, call_id: str, queue: str, caller: str | None, headers: dict[str, str]
    ) -> None: ...

    async def agent_declined(self, call_id: str, agent: str, status: int) -> None: ...

    async def session_for_pin(self, pin: str) -> str | None:
        """The open session whose PIN this is, if any."""
        ...


class OriginateFailed(Exception):
    """A call ucgate placed did not connect; ``status`` is the SIP status that ended it."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


def end_reason_for(status: int) -> EndReason:
    """The call-record reason for a final failure status of the callee side."""
    if status in (486, 600):
        return EndReason.BUSY
    if status in (403, 603):
        return EndReason.REJECTED
    if status == 408:
        return EndReason.TIMEOUT
    if status == 487:
        return EndReason.CANCELLED
    return EndReason.FAILED


def with_suppressed_local(fn: Callable[[], object]) -> None:
    """Run a protocol step that may legitimately be too late (a leg already ended)."""
    try:
        fn()
    except LocalProtocolError as exc:
        log.debug("call.step_skipped", why=str(exc))
