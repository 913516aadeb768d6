"""The SIP presence server: SUBSCRIBE/NOTIFY (RFC 6665, 3856, 4235) and PUBLISH (RFC 3903).

Glue only. The sans-IO :class:`SubscriptionTable` and :class:`PublicationTable` decide
every answer and build every NOTIFY; the presence service holds the truth; this class
authenticates and authorises requests, turns presence changes (local or from another node)
into NOTIFYs, sends them through the SIP runtime and reports their results back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from ucgate.app.sip_runtime import SipRuntime
from ucgate.presence import dialog_info, pidf
from ucgate.presence.model import PresenceDocument, Published
from ucgate.presence.service import PresenceService
from ucgate.presence.store import PresenceChange
from ucgate.registrar.accounts import AccountDirectory, AccountKind
from ucgate.sip.auth_gate import DigestGate
from ucgate.sip.dialog import next_hop
from ucgate.sip.errors import RemoteProtocolError
from ucgate.sip.fields import call_id, from_, to
from ucgate.sip.message import Request, Response
from ucgate.sip.peer import Peer, TransportKind
from ucgate.sip.publication import PublicationExpired, PublicationTable
from ucgate.sip.subscription import (
    NotifyDue,
    Subscription,
    SubscriptionTable,
    SubscriptionTerminated,
)
from ucgate.sip.transaction.events import (
    RequestReceived,
    ResponseReceived,
    TransactionEvent,
    TransactionTimedOut,
    TransportErrorOccurred,
)
from ucgate.sip.transaction.key import TxKey
from ucgate.sip.uas_checks import make_response
from ucgate.sip.uri import SipUri, parse_uri
from ucgate.store.location import StoreUnavailable

log = structlog.get_logger(__name__)

PIDF = "application/pidf+xml"
DIALOG_INFO = "application/dialog-info+xml"


class DeadlineTimer:
    """One ``loop.call_at`` for a sans-IO object with ``next_deadline``/``handle_timer``."""

    def __init__(self, target: object, after: Callable[[], None]) -> None:
        self._target = target
        self._after = after
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = None
        self._at: float | None = None

    def arm(self) -> None:
        deadline: float | None = self._target.next_deadline()  # type: ignore[attr-defined]
        if deadline == self._at:
            return
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._at = deadline
        if deadline is not None:
            # The tables keep wall-clock deadlines (expiries outlive a process);
            # convert to the loop's clock for scheduling.
            delay = max(0.0, deadline - time.time())
            self._handle = self._loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._at = None
        self._target.handle_timer(time.time())  # type: ignore[attr-defined]
        self._after()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class PresenceSipServer:
    def __init__(
        self,
        *,
        runtime: SipRuntime,
        presence: PresenceService,
        accounts: AccountDirectory,
        gate: DigestGate,
        domain: str,
        contact: str,
        subscriptions: SubscriptionTable,
        publications: PublicationTable,
        user_agent: str,
        to_tag: Callable[[], str],
    ) -> None:
        self.runtime = runtime
        self.presence = presence
        self.accounts = accounts
        self.gate = gate
        self.domain = domain.lower()
        self.contact = contact
        self.subs = subscriptions
        self.pubs = publications
        self.user_agent = user_agent
        self._to_tag = to_tag
        self._docs: dict[str, PresenceDocument] = {}
        self._pidf_cache: dict[str, tuple[PresenceDocument, bytes]] = {}
        self._notify_tx: dict[TxKey, str] = {}
        self._peers: dict[str, Peer] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._sub_timer = DeadlineTimer(subscriptions, self._drain_tables)
        self._pub_timer = DeadlineTimer(publications, self._drain_tables)
        presence.add_listener(self._on_change)

    # -- requests ---------------------------------------------------------------------
    def on_request(self, ev: RequestReceived) -> None:
        task = asyncio.get_running_loop().create_task(self._handle(ev))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def owns(self, key: TxKey) -> bool:
        return key in self._notify_tx

    async def _handle(self, ev: RequestReceived) -> None:
        req = ev.request
        now = time.time()
        with structlog.contextvars.bound_contextvars(call_id=req.headers.get("Call-ID")):
            notify: str | None = None
            try:
                if req.method == "SUBSCRIBE":
                    resp, notify = await self._subscribe(req, ev.peer, now)
                else:
                    resp = await self._publish(req, now)
            except RemoteProtocolError as exc:
                resp = make_response(
                    req, exc.status or 400, exc.reason[:100], to_tag=self._to_tag()
                )
            except StoreUnavailable:
                resp = make_response(req, 503, to_tag=self._to_tag())
                resp.headers.add("Retry-After", "5")
            resp.headers.add("Server", self.user_agent)
            self.runtime.send_response(ev.key, resp)
            # RFC 6665 §4.2.1.1: the first NOTIFY follows the 2xx (sent after it, so
            # phones that dislike a NOTIFY racing the 200 are happy too).
            if notify is not None:
                self._send_notify(notify, time.time())
            self._drain_tables()

    def _presentity(self, req: Request) -> str:
        """The agent a SUBSCRIBE/PUBLISH is about, from the Request-URI (RFC 3856 §6.1)."""
        uri = parse_uri(req.uri)
        if not isinstance(uri, SipUri) or uri.user is None:
            raise RemoteProtocolError("Request-URI names no presentity", 404)
        if not self.presence.is_agent(uri.user):
            raise RemoteProtocolError("No such presentity", 404)
        return uri.user

    async def _subscribe(self, req: Request, peer: Peer, now: float) -> tuple[Response, str | None]:
        existing = self._dialog_subscription(req)
        if existing is not None and self._same_source(existing.id, peer):
            watcher = existing.watcher
        else:
            who = self.gate.check(req, now)
            if isinstance(who, Response):
                return who, None
            watcher = who.username
        account = self.accounts.get(watcher)
        # RFC 3856 §6.6: authorisation is local policy. Ours: agents of this domain and
        # configured application accounts may watch; trunks (PBXs) may not.
        if account is None or account.kind not in (AccountKind.AGENT, AccountKind.APPLICATION):
            return make_response(req, 403, "Not allowed to watch", to_tag=self._to_tag()), None
        if to(req).tag is not None:
            # In-dialog (refresh/unsubscribe): the Request-URI is our Contact, the resource
            # is the dialog's; an unknown dialog is the table's 481 (RFC 6665 §4.1.2.2).
            aor = existing.resource if existing is not None else None
            agent = aor[4:].split("@", 1)[0] if aor is not None else ""
        else:
            agent = self._presentity(req)
            aor = f"sip:{agent}@{self.domain}"
        outcome = self.subs.on_subscribe(
            req,
            watcher=watcher,
            now=now,
            resource=aor,
            over_tls=peer.kind in (TransportKind.TLS, TransportKind.WSS),
        )
        resp = make_response(
            req,
            outcome.status,
            outcome.reason,
            to_tag=outcome.to_tag,
            extra_headers=outcome.headers,
        )
        sub = outcome.subscription
        if 200 <= outcome.status < 300:
            resp.headers.add("Contact", self.contact)
        if sub is None:
            return resp, None
        self._peers[sub.id] = peer
        if not outcome.notify_now:
            return resp, None
        if agent not in self._docs:
            doc = await self.presence.get(agent)
            if doc is not None:
                self._docs[agent] = doc
        return resp, sub.id

    def _dialog_subscription(self, req: Request) -> Subscription | None:
        """The subscription an in-dialog SUBSCRIBE (refresh or unsubscribe) belongs to."""
        to_tag = to(req).tag
        if to_tag is None:
            return None
        return self.subs.find_by_dialog(call_id(req), to_tag, from_(req).tag)

    def _same_source(self, sub_id: str, peer: Peer) -> bool:
        """Whether a request comes from where the subscription was created.

        Such in-dialog requests need no new challenge: the dialog was created by an
        authenticated SUBSCRIBE, its Call-ID and tags carry enough randomness (§19.3) that
        guessing them off-path is impractical, and many UAs (sipp among them) do not
        re-authenticate refreshes. Anything else is challenged (§22.1 allows either).
        """
        first = self._peers.get(sub_id)
        return first is not None and first.host == peer.host and first.kind is peer.kind

    async def _publish(self, req: Request, now: float) -> Response:
        who = self.gate.check(req, now)
        if isinstance(who, Response):
            return who
        agent = self._presentity(req)
        if who.username != agent:
            # RFC 3903 §6 step 2: only the presentity itself publishes its state.
            return make_response(req, 403, "Only the presentity may publish", to_tag=self._to_tag())
        state = None
        if req.body:
            ctype = (req.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if ctype != PIDF:
                return make_response(
                    req, 415, to_tag=self._to_tag(), extra_headers=(("Accept", PIDF),)
                )
            state = pidf.parse_pidf(req.body)  # 400 on a broken body, before any state changes
        aor = f"sip:{agent}@{self.domain}"
        outcome = self.pubs.on_publish(req, publisher=who.username, resource=aor, now=now)
        resp = make_response(
            req,
            outcome.status,
            outcome.reason,
            to_tag=self._to_tag(),
            extra_headers=outcome.headers,
        )
        change = outcome.change
        if change is None:
            return resp
        if change.removed:
            if change.old_etag is not None:
                await self.presence.apply_publication(agent, None, remove_etag=change.old_etag)
            return resp
        assert change.etag is not None
        if state is None:
            # A refresh (no body): same state under the new entity-tag.
            state = pidf.parse_pidf(change.body)
        published = Published(
            etag=change.etag,
            basic=state.basic,
            activities=tuple(state.activities),
            note=state.note,
            expires_at=change.expires_at,
            source=who.username,
        )
        await self.presence.apply_publication(agent, published, remove_etag=change.old_etag)
        return resp

    # -- NOTIFY ---------------------------------------------------------------------------
    def _body(self, sub_id: str) -> tuple[bytes, str] | None:
        sub = self.subs.get(sub_id)
        if sub is None:
            return None
        agent = sub.resource[4:].split("@", 1)[0]
        doc = self._docs.get(agent)
        if doc is None:
            return b"", sub.accept
        if sub.event == "dialog":
            # dialog-info carries a per-watcher version (RFC 4235 §4.1): rendered each time.
            body = dialog_info.render_dialog_info(doc, entity=sub.resource, version=sub.version)
            return body, DIALOG_INFO
        # PIDF is the same for every watcher of one document: render it once per change,
        # not once per watcher (this is the fan-out hot path).
        cached = self._pidf_cache.get(agent)
        if cached is None or cached[0] is not doc:
            cached = (doc, pidf.render_pidf(doc, entity=sub.resource))
            self._pidf_cache[agent] = cached
        return cached[1], PIDF

    def _send_notify(self, sub_id: str, now: float, *, flush: bool = True) -> None:
        body = self._body(sub_id)
        if body is None:
            return
        notify = self.subs.build_notify(
            sub_id,
            body=body[0],
            content_type=body[1],
            now=now,
            extra_headers=(("Contact", self.contact),),
        )
        if notify is None:
            return
        sub = self.subs.get(sub_id)
        peer = self._destination(sub_id, next_hop(sub.dialog)) if sub is not None else None
        if peer is None:
            self.subs.on_notify_result(sub_id, 503, now)
            return
        key = self.runtime.send_request(notify, peer, flush=flush)
        self._notify_tx[key] = sub_id

    def _destination(self, sub_id: str, target: str) -> Peer | None:
        """Where a NOTIFY goes: back over the subscriber's connection on stream
        transports (RFC 5626 flow reuse; a NATed phone is unreachable otherwise), else to
        the dialog's next hop (§12.2.1.1)."""
        source = self._peers.get(sub_id)
        if source is not None and source.kind.reliable:
            return source
        try:
            uri = parse_uri(target)
        except RemoteProtocolError:
            return source
        if not isinstance(uri, SipUri):
            return source
        port = uri.port or (5061 if uri.scheme == "sips" else 5060)
        return Peer(TransportKind.UDP, uri.host.strip("[]"), port)

    def on_transaction_event(self, ev: TransactionEvent) -> None:
        """Results of our NOTIFYs: 2xx keeps the watcher; 481/408/503/other removes it."""
        if isinstance(ev, ResponseReceived):
            if ev.response.status < 200:
                return
            status = ev.response.status
        elif isinstance(ev, TransactionTimedOut):
            status = 408
        elif isinstance(ev, TransportErrorOccurred):
            status = 503
        else:
            return
        sub_id = self._notify_tx.pop(ev.key, None)
        if sub_id is None:
            return
        self.subs.on_notify_result(sub_id, status, time.time())
        self._drain_tables()

    def _drain_tables(self) -> None:
        now = time.time()
        while (event := self.subs.next_event()) is not None:
            if isinstance(event, NotifyDue):
                self._send_notify(event.sub_id, now)
            elif isinstance(event, SubscriptionTerminated):
                self._peers.pop(event.sub_id, None)
                log.info(
                    "presence.watcher_removed",
                    resource=event.resource,
                    watcher=event.watcher,
                    reason=event.reason.value if event.reason else None,
                    notify_status=event.notify_status,
                )
        while (pub_event := self.pubs.next_event()) is not None:
            if isinstance(pub_event, PublicationExpired):
                agent = pub_event.resource[4:].split("@", 1)[0]
                self._spawn_removal(agent, pub_event.etag)
        self._sub_timer.arm()
        self._pub_timer.arm()

    def _spawn_removal(self, agent: str, etag: str) -> None:
        task = asyncio.get_running_loop().create_task(
            self.presence.apply_publication(agent, None, remove_etag=etag)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_change(self, change: PresenceChange) -> None:
        """Every presence change, local or from another node: NOTIFY its watchers."""
        self._docs[change.agent] = change.document
        aor = f"sip:{change.agent}@{self.domain}"
        now = time.time()
        for sub in self.subs.subscriptions_for(aor):
            if self.subs.want_notify(sub.id, now):
                self._send_notify(sub.id, now, flush=False)
        self.runtime.pump()
        self._drain_tables()

    async def close(self) -> None:
        self._sub_timer.close()
        self._pub_timer.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
