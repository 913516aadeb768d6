"""Composition root: builds one ucgate node from its config and runs it until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import ssl
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web
from redis.asyncio import Redis

from ucgate import __version__
from ucgate.app.b2bua import CallManager
from ucgate.app.call_tracking import CallTracker
from ucgate.app.presence_sip import PresenceSipServer
from ucgate.app.session_calls import SessionCallGlue
from ucgate.app.sip_app import SipApplication, new_tag
from ucgate.app.sip_runtime import SipRuntime
from ucgate.calls.record_store import CallRecordStore, MemoryCallRecordStore
from ucgate.calls.record_store_redis import RedisCallRecordStore
from ucgate.config import UcgateConfig
from ucgate.http.api import build_app
from ucgate.http.auth import ApiKeys
from ucgate.media.embedded import EmbeddedAnchor
from ucgate.media.factory import build_anchor
from ucgate.presence.model import StatusDef, status_table
from ucgate.presence.service import PresenceService
from ucgate.presence.store import PresenceStore
from ucgate.presence.store_memory import MemoryPresenceStore
from ucgate.presence.store_redis import RedisPresenceStore
from ucgate.registrar.accounts import Account, AccountDirectory, AccountKind
from ucgate.registrar.guests import GuestAccounts, guest_scope
from ucgate.registrar.rules import RegistrarPolicy
from ucgate.registrar.service import RegistrarService
from ucgate.sessions.coordination import RedisRoutingCoordinator
from ucgate.sessions.model import Media
from ucgate.sessions.routing import InterruptMatrix, QueueSpec, RoutingEngine
from ucgate.sessions.service import AgentProfile, SessionService
from ucgate.sessions.store import MemorySessionStore, SessionStore
from ucgate.sessions.store_redis import RedisSessionStore
from ucgate.sessions.webhooks import (
    RedisOutbox,
    SqliteOutbox,
    WebhookOutbox,
    WebhookSender,
    WebhookTarget,
)
from ucgate.sip.auth_gate import DigestGate
from ucgate.sip.digest import DigestAlgorithm, DigestAuthenticator, UserSecret
from ucgate.sip.endpoint import MessageDropped, SipEndpoint
from ucgate.sip.peer import Peer, TransportKind
from ucgate.sip.publication import PublicationTable
from ucgate.sip.subscription import SubscriptionTable
from ucgate.sip.transaction.layer import TransactionLayer
from ucgate.sip.transaction.timers import TimerConfig
from ucgate.store import open_location_store
from ucgate.store.location import LocationStore, StoreUnavailable
from ucgate.transport.hub import BoundListener, ListenSpec, TransportHub
from ucgate.web.routes import WebSetup
from ucgate.web.tokens import TokenSigner, derive_key

log = structlog.get_logger(__name__)


def _secret_for(
    realm: str, user: str, password: str | None, md5: str | None, sha: str | None
) -> UserSecret:
    if password is not None:
        return UserSecret.from_password(user, realm, password)
    return UserSecret(ha1_md5=md5, ha1_sha256=sha)


def build_accounts(config: UcgateConfig) -> AccountDirectory:
    realm = config.sip.domain
    accounts: list[Account] = []
    groups: tuple[tuple[AccountKind, tuple[Any, ...]], ...] = (
        (AccountKind.AGENT, config.agents),
        (AccountKind.TRUNK, config.trunks),
        (AccountKind.APPLICATION, config.applications),
    )
    for kind, entries in groups:
        for entry in entries:
            secret = _secret_for(
                realm,
                entry.id,
                entry.password.get_secret_value() if entry.password else None,
                entry.ha1_md5.get_secret_value() if entry.ha1_md5 else None,
                entry.ha1_sha256.get_secret_value() if entry.ha1_sha256 else None,
            )
            accounts.append(Account(entry.id, kind, secret, getattr(entry, "display_name", None)))
    return AccountDirectory(accounts)


def _nonce_key(config: UcgateConfig) -> bytes:
    # Every node of a site shares auth.secret, so a nonce issued by one verifies at
    # another (REGISTER retries may land on a different node behind a balancer). Without
    # one in the config, the default is random per process.
    return hashlib.sha256(config.auth.secret.get_secret_value().encode()).digest()


@dataclass
class Node:
    config: UcgateConfig
    store: LocationStore
    hub: TransportHub
    runtime: SipRuntime
    app: SipApplication
    registrar: RegistrarService
    http_runner: web.AppRunner
    presence: PresenceService
    presence_store: PresenceStore
    presence_sip: PresenceSipServer
    calls: CallManager
    sessions: SessionService
    session_store: SessionStore
    glue: SessionCallGlue
    webhooks: WebhookSender | None
    sip_listeners: list[BoundListener]
    http_port: int
    tasks: list[asyncio.Task[None]]

    async def close(self) -> None:
        started = time.monotonic()
        try:
            await self._close()
        finally:
            log.info("ucgate.closed", seconds=round(time.monotonic() - started, 3))

    async def _close(self) -> None:
        # Stop taking new work, finish what is in flight, then persist: a restart must find
        # every binding we acknowledged.
        # Calls in progress get their BYEs while the transports are still open.
        await _timed("calls.close", self.calls.close())
        if self.calls.media is not None:
            await _timed("calls.media.close", self.calls.media.close())
        await _timed("hub.close", self.hub.close())
        await _timed("app.drain", self.app.drain())
        if self.calls.tracker is not None:
            await _timed("calls.tracker.close", self.calls.tracker.close())
        await _timed("presence_sip.close", self.presence_sip.close())
        self.runtime.close()
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await _timed("http_runner.cleanup", self.http_runner.cleanup())
        await _timed("glue.close", self.glue.close())
        await _timed("sessions.stop", self.sessions.stop())
        await _timed("session_store.close", self.session_store.close())
        if self.webhooks is not None:
            await _timed("webhooks.close", self.webhooks.close())
            await _timed("webhooks.outbox.close", self.webhooks.outbox.close())
        await _timed("presence.close", self.presence.close())
        await _timed("presence_store.close", self.presence_store.close())
        if self.calls.tracker is not None:
            await _timed("calls.tracker.records.close", self.calls.tracker.records.close())
        await _timed("store.close", self.store.close())


_STARTUP_TRIES = 5


async def _timed(step: str, work: Awaitable[object]) -> None:
    """Await one shutdown step; a slow one is logged (a hung shutdown says where)."""
    started = time.monotonic()
    await work
    seconds = time.monotonic() - started
    if seconds > 1.0:
        log.warning("ucgate.close_slow", step=step, seconds=round(seconds, 3))


async def _sweep_expired(store: LocationStore, registrar: RegistrarService) -> None:
    """Remove bindings exactly when they expire and announce them (no polling storm)."""
    while True:
        try:
            nxt = await store.next_expiry()
            now = time.time()
            delay = 1.0 if nxt is None else min(max(nxt - now, 0.0), 1.0)
            # Bounded wait: a binding added while we sleep can expire no sooner than
            # min_expires from now, far beyond this 1 s cap.
            await asyncio.sleep(delay)
            removed = await store.expire(time.time())
            if removed:
                await registrar.on_expired(removed)
        except StoreUnavailable:
            # Redis is down: keep trying; the bindings are still there when it is back.
            log.warning("registrar.sweep_store_unavailable")
            await asyncio.sleep(1.0)


async def _start_sessions(
    config: UcgateConfig, presence: PresenceService, node_id: str = ""
) -> tuple[SessionService, SessionStore, WebhookSender | None]:
    """Sessions (issue 5): store, routing engine over the configured queues, webhooks."""
    session_store: SessionStore
    outbox: WebhookOutbox
    if config.store.backend == "redis":
        assert config.store.redis_url is not None
        redis_store = await RedisSessionStore.connect(config.store.redis_url)
        session_store = redis_store
        # Several nodes share these sessions: one routes at a time (the lease holder).
        coordinator: RedisRoutingCoordinator | None = await RedisRoutingCoordinator.connect(
            config.store.redis_url,
            redis_store,
            node_id=node_id or f"{os.uname().nodename}-{os.getpid()}",
            lease_ttl=config.routing.leader_lease_ttl,
        )
        outbox = RedisOutbox(Redis.from_url(config.store.redis_url))
    else:
        session_store = await MemorySessionStore.open(config.store.data_dir)
        outbox = await SqliteOutbox.open(config.store.data_dir)
        coordinator = None
    webhooks = None
    if config.webhooks:
        webhooks = WebhookSender(
            outbox,
            [
                WebhookTarget(w.url, w.secret.get_secret_value(), frozenset(w.events))
                for w in config.webhooks
            ],
        )
    else:
        await outbox.close()
    engine = RoutingEngine(
        [
            QueueSpec(
                id=q.id,
                media=frozenset(Media(m) for m in q.media),
                skills=q.skills,
                priority=q.priority,
                offer_timeout=q.offer_timeout,
                overflow=q.overflow,
                overflow_after=q.overflow_after,
                service_level_seconds=q.service_level_seconds,
            )
            for q in config.queues
        ],
        InterruptMatrix.from_config(config.routing.interrupt),
    )
    sessions = SessionService(
        session_store,
        engine,
        agents={a.id: AgentProfile(a.capacity, a.skills) for a in config.agents},
        presence=presence,
        webhooks=webhooks,
        coordinator=coordinator,
    )
    await sessions.start()
    return sessions, session_store, webhooks


async def _open_call_records(config: UcgateConfig) -> CallRecordStore:
    if config.store.backend == "redis":
        assert config.store.redis_url is not None
        return await RedisCallRecordStore.connect(config.store.redis_url)
    return await MemoryCallRecordStore.open(config.store.data_dir)


async def _open_presence_store(config: UcgateConfig) -> PresenceStore:
    size = config.presence.change_log_size
    if config.store.backend == "redis":
        assert config.store.redis_url is not None
        return await RedisPresenceStore.connect(config.store.redis_url, change_log_size=size)
    return await MemoryPresenceStore.open(data_dir=config.store.data_dir, change_log_size=size)


def _server_ssl(config: UcgateConfig) -> ssl.SSLContext | None:
    if config.sip.tls_cert is None or config.sip.tls_key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(config.sip.tls_cert), str(config.sip.tls_key))
    return ctx


async def start_node(config: UcgateConfig) -> Node:
    node_id = config.node_id or f"{os.uname().nodename}-{os.getpid()}"
    data_dir = config.store.data_dir if config.store.backend == "memory" else None
    store = await open_location_store(
        config.store.backend,
        redis_url=config.store.redis_url,
        data_dir=data_dir,
        node_id=node_id,
    )
    listen = [ListenSpec(a.kind, a.host, a.port) for a in config.sip.listen]
    sip_listens = list(listen)
    # Via/Contact name a datagram/stream listener: WebSocket peers reach us on their flow.
    first = next(
        (
            x
            for x in sip_listens
            if x.kind in (TransportKind.UDP, TransportKind.TCP, TransportKind.TLS)
        ),
        sip_listens[0],
    )
    transactions = TransactionLayer(
        timers=TimerConfig(t1=config.sip.t1, t2=config.sip.t2, t4=config.sip.t4),
        via_host=config.sip.advertised_host or first.host,
        via_port=first.port,
    )

    def on_drop(d: MessageDropped) -> None:
        log.debug("sip.dropped", peer=str(d.peer), reason=d.reason)

    endpoint = SipEndpoint(
        transactions, max_message_size=config.sip.max_message_size, on_drop=on_drop
    )
    hub_ref: list[TransportHub] = []

    def send(data: bytes, peer: object) -> None:
        hub_ref[0].send(data, peer)  # type: ignore[arg-type]

    runtime = SipRuntime(endpoint, send)
    hub = TransportHub(runtime.on_data, runtime.on_send_failed, server_ssl=_server_ssl(config))
    hub_ref.append(hub)

    algorithms = tuple(DigestAlgorithm(a.value) for a in config.auth.algorithms)
    authenticator = DigestAuthenticator(
        config.sip.domain,
        secret_key=_nonce_key(config),
        nonce_ttl=float(config.auth.nonce_ttl),
        algorithms=algorithms,
    )
    policy = RegistrarPolicy(
        min_expires=config.registrar.min_expires,
        max_expires=config.registrar.max_expires,
        default_expires=config.registrar.default_expires,
        max_contacts=config.registrar.max_contacts_per_aor,
    )
    accounts = build_accounts(config)
    auth_secret = config.auth.secret.get_secret_value()
    guests = GuestAccounts(derive_key(auth_secret, "guest-sip"), config.sip.domain)
    if config.web.widget_enabled:
        # The widget's guests (registrar/guests.py) authenticate like accounts, scoped to
        # the one INVITE their page places.
        domain = config.sip.domain
        gate = DigestGate(
            authenticator,
            lambda user: accounts.secret(user) or guests.secret(user),
            new_tag,
            scope=lambda req, user: guest_scope(req, user, domain),
            websocket_md5_only=config.auth.websocket_md5_only,
        )
    else:
        gate = DigestGate(
            authenticator,
            accounts.secret,
            new_tag,
            websocket_md5_only=config.auth.websocket_md5_only,
        )
    registrar = RegistrarService(
        domain=config.sip.domain,
        accounts=accounts,
        gate=gate,
        store=store,
        policy=policy,
        node_id=node_id,
        to_tag=new_tag,
    )
    presence_store = await _open_presence_store(config)
    statuses = status_table(
        StatusDef(c.name, c.routable, c.label) for c in config.presence.custom_statuses
    )
    presence = PresenceService(
        presence_store,
        agents={a.id: a.capacity for a in config.agents},
        statuses=statuses,
    )
    await presence.start()
    # Devices come from the location store (it survives restarts and is shared between
    # nodes); presence only mirrors it, so rebuild the mirror before taking traffic.
    now = time.time()
    for agent in config.agents:
        aor = f"sip:{agent.id}@{config.sip.domain}"
        # Start-up is not latency-bound: a store that is slow for a moment (its per-call
        # timeout is for live traffic) gets a few tries before the node gives up.
        for attempt in range(_STARTUP_TRIES):
            try:
                await presence.sync_devices(agent.id, await store.lookup(aor, now))
                break
            except StoreUnavailable:
                if attempt + 1 == _STARTUP_TRIES:
                    raise
                log.warning("ucgate.startup_store_retry", agent=agent.id, attempt=attempt + 1)
                await asyncio.sleep(0.5 * (attempt + 1))  # back-off between start-up tries
    registrar.listeners.append(presence.on_bindings_changed)
    pcfg = config.presence
    via_host = config.sip.advertised_host or first.host
    presence_sip = PresenceSipServer(
        runtime=runtime,
        presence=presence,
        accounts=accounts,
        gate=gate,
        domain=config.sip.domain,
        contact=f"<sip:ucgate@{via_host}:{first.port}>",
        subscriptions=SubscriptionTable(
            min_expires=pcfg.subscribe_min_expires,
            max_expires=pcfg.subscribe_max_expires,
            default_expires=pcfg.subscribe_default_expires,
            notify_min_interval=pcfg.notify_min_interval,
            tag_factory=new_tag,
        ),
        publications=PublicationTable(
            min_expires=pcfg.publish_min_expires,
            max_expires=pcfg.publish_max_expires,
            # The node id in every entity-tag says which node holds the publication
            # (RFC 3903 state is per node; see README).
            etag_factory=lambda: f"{node_id}.{secrets.token_urlsafe(9)}",
        ),
        user_agent=config.sip.user_agent,
        to_tag=new_tag,
    )
    calls = CallManager(
        runtime=runtime,
        gate=gate,
        config=config,
        locations=store,
        contact_uri=f"sip:ucgate@{via_host}:{first.port}",
        node_id=node_id,
        to_tag=new_tag,
    )
    anchor = build_anchor(config)
    if isinstance(anchor, EmbeddedAnchor):
        anchor.on_dtmf = calls.media_dtmf  # RFC 4733 from trunks, for browsers as INFO
    if anchor is not None:
        await anchor.start(calls.media_lost)
        calls.media = anchor
    records = await _open_call_records(config)
    tracker = CallTracker(records, presence, wrap_up=float(config.calls.wrap_up))
    tracker.start()
    calls.tracker = tracker
    sessions, session_store, webhooks = await _start_sessions(config, presence, node_id)
    glue = SessionCallGlue(sessions, calls, tracker)
    glue.start()
    app = SipApplication(
        runtime, registrar, user_agent=config.sip.user_agent, presence=presence_sip, calls=calls
    )
    runtime.set_handler(app.handle)
    bound = await hub.start(sip_listens)

    cleanups: set[asyncio.Task[None]] = set()

    def flow_lost(peer: Peer) -> None:
        if peer.kind in (TransportKind.WS, TransportKind.WSS) and peer.flow is not None:
            calls.flow_closed(peer)
            task = asyncio.get_running_loop().create_task(
                registrar.flow_closed(f"{node_id}/{peer.flow}", time.time())
            )
            cleanups.add(task)
            task.add_done_callback(cleanups.discard)

    hub.flows.on_lost = flow_lost

    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(_sweep_expired(store, registrar))]
    if webhooks is not None:
        tasks.append(loop.create_task(webhooks.run()))
    for owner in (store, presence_store, records, session_store):
        flusher = getattr(owner, "run_flusher", None)
        if flusher is not None:
            tasks.append(loop.create_task(flusher()))

    keys = ApiKeys.from_config(config.api_keys)
    web_setup = WebSetup(
        config=config.web,
        domain=config.sip.domain,
        accounts=accounts,
        guests=guests,
        signer=TokenSigner(derive_key(auth_secret, "web-token")),
        ws_port=next((b.port for b in bound if b.kind is TransportKind.WS), None),
        queues={q.id: frozenset(Media(m) for m in q.media) for q in config.queues},
    )
    # access_log stays off: a browser stream's ?access_token= would land in it.
    http_runner = web.AppRunner(
        build_app(
            store,
            keys,
            presence=presence,
            statuses=statuses,
            calls=records,
            sessions=sessions,
            web_setup=web_setup,
            media=calls.media,
        ),
        access_log=None,
    )
    await http_runner.setup()
    site = web.TCPSite(http_runner, config.http.listen.host, config.http.listen.port)
    await site.start()
    http_port = config.http.listen.port
    log.info(
        "ucgate.ready",
        version=__version__,
        node_id=node_id,
        sip=[f"{b.kind.value}:{b.host}:{b.port}" for b in bound],
        http=str(config.http.listen),
        store=config.store.backend,
    )
    return Node(
        config,
        store,
        hub,
        runtime,
        app,
        registrar,
        http_runner,
        presence,
        presence_store,
        presence_sip,
        calls,
        sessions,
        session_store,
        glue,
        webhooks,
        bound,
        http_port,
        tasks,
    )


async def run_server(config: UcgateConfig, *, stop: asyncio.Event | None = None) -> None:
    node = await start_node(config)
    try:
        if stop is None:
            stop = asyncio.Event()
        await stop.wait()
    finally:
        log.info("ucgate.stopping")
        await node.close()
        log.info("ucgate.stopped")
