"""The presence service: turns registrar, API, PUBLISH and call events into store updates,
and delivers every change (local or from another node) to in-process listeners.

Every write goes through :meth:`PresenceStore.update` with a pure function of the agent's
sources and :func:`ucgate.presence.model.compose` bound to the agent's capacity, the status
table and the time of the call; the model's rules (R1-R9) decide the document, the store
decides whether it changed and assigns the version.

Listeners (the SIP notifier, later routing) get EVERY change, local and remote, in version
order, from one consumer task reading one store subscription, so the order a listener sees
is the order the store committed. If the consumer falls behind by more than the
subscription's bound, it catches up from the change log (``changes_since``) or, when the log
has been trimmed, from a snapshot: each document newer than the last delivered version is
delivered once as a change of its own version. Intermediate states are then skipped, never
the latest one.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial

import structlog

from ucgate.presence.model import (
    DEVICE_SIP,
    AgentSources,
    Device,
    Interaction,
    ManualStatus,
    PresenceDocument,
    Published,
    StatusDef,
    compose,
)
from ucgate.presence.store import (
    ChangeSubscription,
    PresenceChange,
    PresenceStore,
    StoreUnavailable,
    SubscriptionLagged,
    UpdateFn,
)
from ucgate.registrar.service import BindingsChanged
from ucgate.store.location import Binding

log = structlog.get_logger(__name__)

ChangeListener = Callable[[PresenceChange], Awaitable[None]]


class UnknownAgent(ValueError):
    """The agent id is not configured (the API answers 404)."""

    def __init__(self, agent: str) -> None:
        super().__init__(f"unknown agent {agent!r}")
        self.agent = agent
        self.field = "agent"


class UnknownStatus(ValueError):
    """The status is neither builtin nor configured (the API answers 422 naming ``status``)."""

    def __init__(self, status: str) -> None:
        super().__init__(f"unknown status {status!r}")
        self.status = status
        self.field = "status"


def devices_from_bindings(
    bindings: Sequence[Binding], current: Sequence[Device] = ()
) -> tuple[Device, ...]:
    """One SIP device per binding, keyed by the RFC 5626 instance-id when there is one
    (stable across a phone's changing Contact address), else by the Contact URI.

    ``since`` is kept from ``current`` for a device that was already there: the registrar
    stamps ``registered_at`` on every refresh, and a re-REGISTER must not look like a new
    device (it would bump the version and NOTIFY every watcher once a minute).
    """
    known = {d.id: d.since for d in current if d.kind == DEVICE_SIP}
    out: dict[str, Device] = {}
    for b in sorted(bindings, key=lambda b: (b.registered_at, b.contact)):
        device_id = b.instance_id or b.contact
        if device_id in out:
            continue  # several RFC 5626 flows of one instance are one device
        out[device_id] = Device(
            id=device_id,
            kind=DEVICE_SIP,
            contact=b.contact,
            user_agent=b.user_agent,
            since=known.get(device_id, b.registered_at),
        )
    return tuple(out.values())


class PresenceService:
    """Presence of the configured agents over a :class:`PresenceStore`.

    ``agents`` maps each agent id to its per-channel capacity; ``statuses`` is the table of
    manual statuses (builtin + custom, :func:`ucgate.presence.model.status_table`). The
    service does not own the store: the caller closes it after :meth:`close`.
    """

    def __init__(
        self,
        store: PresenceStore,
        *,
        agents: Mapping[str, Mapping[str, int]],
        statuses: Mapping[str, StatusDef],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._agents = {agent: dict(capacity) for agent, capacity in agents.items()}
        self._statuses = statuses
        self._clock = clock
        self._listeners: list[ChangeListener] = []
        self._consumer: asyncio.Task[None] | None = None
        self._subscription: ChangeSubscription | None = None
        self.delivered_version = 0
        """The version of the last change handed to the listeners."""

    @property
    def agents(self) -> Sequence[str]:
        return sorted(self._agents)

    def is_agent(self, agent: str) -> bool:
        return agent in self._agents

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Give every configured agent a document and start delivering changes.

        Agents with a stored document are recomposed (a capacity change in the config shows
        at once; otherwise nothing changes); new ones start offline with manual
        "available". Raises StoreUnavailable if the store cannot be reached.
        """
        if self._consumer is not None:
            return
        self._subscription = self.store.subscribe()
        # Exactly the changes after this version will come through the subscription.
        self.delivered_version = self._subscription.last_version
        self._consumer = asyncio.create_task(self._consume(), name="presence-listeners")
        for agent in sorted(self._agents):
            await self._update(agent, _unchanged)

    async def close(self) -> None:
        task, self._consumer = self._consumer, None
        if self._subscription is not None:
            self._subscription.close()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def add_listener(self, fn: ChangeListener) -> None:
        self._listeners.append(fn)

    # -- sources --------------------------------------------------------------------------------

    async def on_bindings_changed(self, change: BindingsChanged) -> None:
        """Registrar listener: the agent's SIP devices are now ``change.after``.

        Users that are not agents (trunks, applications) have no presence. A store outage
        is logged, not raised: the REGISTER itself succeeded and must be answered 200; the
        agent's devices are corrected by its next change or at the next start-up sync.
        """
        if change.user not in self._agents:
            return
        try:
            await self.sync_devices(change.user, change.after)
        except StoreUnavailable as exc:
            log.warning("presence.devices_not_updated", agent=change.user, error=str(exc))

    async def sync_devices(self, agent: str, bindings: Sequence[Binding]) -> None:
        """Make the agent's SIP devices exactly ``bindings`` (web sessions are kept)."""
        self._check_agent(agent)

        def fn(sources: AgentSources) -> AgentSources:
            devices = devices_from_bindings(bindings, sources.devices)
            return sources.with_devices(devices, kind=DEVICE_SIP)

        await self._update(agent, fn)

    async def set_manual(
        self, agent: str, status: str, *, note: str | None, set_by: str
    ) -> PresenceDocument:
        """Set the manual status (R6: kept across device changes); return the document."""
        self._check_agent(agent)
        if status not in self._statuses:
            raise UnknownStatus(status)
        now = self._clock()

        def fn(sources: AgentSources) -> AgentSources:
            current = sources.manual
            if current.status == status and current.note == note:
                # Setting what is already set keeps the original "since".
                return sources
            return sources.with_manual(ManualStatus(status, note, set_by, now))

        change = await self._update(agent, fn, now=now)
        if change is not None:
            return change.document
        document = await self.store.get(agent)
        if document is None:  # only if someone deleted it from under us
            raise StoreUnavailable(f"presence document of {agent!r} vanished")
        return document

    async def apply_publication(
        self, agent: str, published: Published | None, *, remove_etag: str | None = None
    ) -> None:
        """Merge an RFC 3903 publication into the agent's sources.

        ``published`` alone: an initial PUBLISH. With ``remove_etag``: a refresh or modify
        of that entity-tag (the new one replaces it). ``published=None`` with
        ``remove_etag``: removal (Expires: 0). Expired publications are dropped on the way.
        """
        self._check_agent(agent)
        now = self._clock()
        fn: UpdateFn
        if published is None:
            if remove_etag is None:
                raise ValueError("apply_publication needs a publication or an etag to remove")
            etag = remove_etag
            fn = lambda s: s.without_expired(now).without_published(etag)  # noqa: E731
        elif remove_etag is not None:
            old, new = remove_etag, published
            fn = lambda s: s.without_expired(now).replacing_published(old, new)  # noqa: E731
        else:
            new = published
            fn = lambda s: s.without_expired(now).with_published(new)  # noqa: E731
        await self._update(agent, fn, now=now)

    async def refresh(self, agent: str) -> None:
        """Recompose now: drops expired publications (call it at their expiry)."""
        self._check_agent(agent)
        now = self._clock()
        await self._update(agent, lambda s: s.without_expired(now), now=now)

    async def upsert_interaction(self, agent: str, interaction: Interaction) -> None:
        self._check_agent(agent)
        await self._update(agent, lambda s: s.with_interaction(interaction))

    async def end_interaction(self, agent: str, interaction_id: str) -> None:
        self._check_agent(agent)
        await self._update(agent, lambda s: s.without_interaction(interaction_id))

    # -- reads ----------------------------------------------------------------------------------

    async def get(self, agent: str) -> PresenceDocument | None:
        if agent not in self._agents:
            return None
        return await self.store.get(agent)

    async def list(
        self,
        *,
        status: str | None = None,
        voice: str | None = None,
        routable: bool | None = None,
    ) -> list[PresenceDocument]:
        """Documents of the configured agents, sorted by agent, optionally filtered."""
        return [
            d
            for d in await self.store.list()
            if d.agent in self._agents
            and (status is None or d.status == status)
            and (voice is None or d.voice.value == voice)
            and (routable is None or d.routable is routable)
        ]

    def subscribe(self, max_pending: int | None = None) -> ChangeSubscription:
        return self.store.subscribe(max_pending)

    async def changes_since(self, version: int) -> builtins.list[PresenceChange] | None:
        return await self.store.changes_since(version)

    async def current_version(self) -> int:
        return await self.store.current_version()

    # -- internals ------------------------------------------------------------------------------

    def _check_agent(self, agent: str) -> None:
        if agent not in self._agents:
            raise UnknownAgent(agent)

    async def _update(
        self, agent: str, fn: UpdateFn, *, now: float | None = None
    ) -> PresenceChange | None:
        at = self._clock() if now is None else now
        composer = partial(compose, capacity=self._agents[agent], statuses=self._statuses, now=at)
        return await self.store.update(agent, fn, compose=composer, now=at)

    async def _consume(self) -> None:
        sub = self._subscription
        while sub is not None:
            try:
                async for change in sub:
                    await self._deliver(change)
                return  # closed
            except SubscriptionLagged as exc:
                log.warning("presence.listeners_lagged", last_version=exc.last_version)
                sub = await self._catch_up()

    async def _catch_up(self) -> ChangeSubscription | None:
        """Resubscribe, then fill the hole from the log or, failing that, a snapshot."""
        while self._consumer is not None:
            sub = self._subscription = self.store.subscribe()
            try:
                missed = await self.store.changes_since(self.delivered_version)
                if missed is None:
                    documents = await self.store.list()
                    missed = [
                        PresenceChange(d.version, d.agent, d, d.updated_at)
                        for d in sorted(documents, key=lambda d: d.version)
                    ]
            except StoreUnavailable as exc:
                sub.close()
                log.warning("presence.catch_up_failed", error=str(exc))
                await asyncio.sleep(1.0)  # a retry pause, not synchronisation
                continue
            for change in missed:
                await self._deliver(change)
            return sub
        return None

    async def _deliver(self, change: PresenceChange) -> None:
        # The subscription may repeat what the catch-up already delivered.
        if change.version <= self.delivered_version:
            return
        self.delivered_version = change.version
        for listener in list(self._listeners):
            try:
                await listener(change)
            except Exception:
                # Listeners are independent consumers (SIP notifier, routing): one failing
                # must not stop the others or the feed. Its bug is logged with the trace.
                log.exception("presence.listener_failed", version=change.version)


def _unchanged(sources: AgentSources) -> AgentSources:
    return sources
