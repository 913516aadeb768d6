"""PresenceService end to end over a real store: registrar events, manual statuses,
publications and interactions in; versioned documents and listener deliveries out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from ucgate.presence.model import (
    Channel,
    Interaction,
    InteractionState,
    PresenceDocument,
    Published,
    StatusDef,
    VoiceState,
    status_table,
)
from ucgate.presence.service import (
    PresenceService,
    UnknownAgent,
    UnknownStatus,
    devices_from_bindings,
)
from ucgate.presence.store import (
    ComposeFn,
    PresenceChange,
    PresenceStore,
    StoreUnavailable,
    UpdateFn,
)
from ucgate.presence.store_memory import MemoryPresenceStore
from ucgate.presence.store_redis import RedisPresenceStore
from ucgate.registrar.service import BindingsChanged
from ucgate.store.location import Binding

T0 = 1_700_000_000.0
WAIT = 10.0
DOMAIN = "example.test"
AGENTS = {"alice": {"voice": 1, "chat": 2}, "bob": {"voice": 1}}
STATUSES = status_table([StatusDef("lunch", False, "Lunch"), StatusDef("training", True)])


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def binding(
    user: str = "alice",
    contact: str = "sip:alice@192.0.2.10:5060",
    *,
    registered_at: float = T0,
    instance_id: str | None = None,
) -> Binding:
    return Binding(
        aor=f"sip:{user}@{DOMAIN}",
        contact=contact,
        expires_at=registered_at + 3600,
        call_id="reg-1",
        cseq=1,
        source="udp:192.0.2.10:5060",
        node_id="n1",
        registered_at=registered_at,
        user_agent="Yealink T46U",
        instance_id=instance_id,
    )


def changed(user: str, before: tuple[Binding, ...], after: tuple[Binding, ...]) -> BindingsChanged:
    return BindingsChanged(f"sip:{user}@{DOMAIN}", user, before, after)


class Recorder:
    """A listener that lets a test wait, with a bound, for a given version."""

    def __init__(self) -> None:
        self.changes: list[PresenceChange] = []
        self._arrived = asyncio.Condition()

    async def __call__(self, change: PresenceChange) -> None:
        async with self._arrived:
            self.changes.append(change)
            self._arrived.notify_all()

    async def wait_for(self, pred: Callable[[PresenceChange], bool]) -> PresenceChange:
        async def found() -> PresenceChange:
            async with self._arrived:
                await self._arrived.wait_for(lambda: any(pred(c) for c in self.changes))
                return next(c for c in self.changes if pred(c))

        return await asyncio.wait_for(found(), WAIT)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store() -> AsyncIterator[MemoryPresenceStore]:
    s = MemoryPresenceStore()
    yield s
    await s.close()


@pytest.fixture
async def service(store: MemoryPresenceStore, clock: Clock) -> AsyncIterator[PresenceService]:
    svc = PresenceService(store, agents=AGENTS, statuses=STATUSES, clock=clock)
    await svc.start()
    yield svc
    await svc.close()


async def doc(service: PresenceService, agent: str = "alice") -> PresenceDocument:
    document = await service.get(agent)
    assert document is not None
    return document


async def test_every_agent_has_a_document_from_the_start(service: PresenceService) -> None:
    docs = await service.list()
    assert [d.agent for d in docs] == ["alice", "bob"]
    for d in docs:
        assert d.status == "offline"
        assert d.voice is VoiceState.OFFLINE
        assert d.manual.status == "available"
        assert not d.routable
    assert sorted(d.version for d in docs) == [1, 2]
    assert await service.current_version() == 2


async def test_restarting_the_service_makes_no_change(
    store: MemoryPresenceStore, service: PresenceService, clock: Clock
) -> None:
    before = await service.current_version()
    clock.advance(60)
    again = PresenceService(store, agents=AGENTS, statuses=STATUSES, clock=clock)
    await again.start()
    await again.close()
    assert await store.current_version() == before


async def test_registration_brings_the_agent_online_and_the_last_device_offline_at_once(
    service: PresenceService, clock: Clock
) -> None:
    phone = binding()
    await service.on_bindings_changed(changed("alice", (), (phone,)))
    d = await doc(service)
    assert (d.status, d.voice, d.routable) == ("available", VoiceState.AVAILABLE, True)
    assert [(x.id, x.kind, x.contact, x.user_agent) for x in d.devices] == [
        (phone.contact, "sip", phone.contact, "Yealink T46U")
    ]
    online = d.version

    clock.advance(30)
    await service.on_bindings_changed(changed("alice", (phone,), ()))
    # Exactly one change, and it already says offline (R3).
    changes = await service.changes_since(online)
    assert changes is not None and len(changes) == 1
    assert changes[0].document.status == "offline"
    assert changes[0].document.voice is VoiceState.OFFLINE
    assert changes[0].document.devices == ()


async def test_a_refresh_register_is_not_a_change(service: PresenceService, clock: Clock) -> None:
    phone = binding()
    await service.on_bindings_changed(changed("alice", (), (phone,)))
    version = await service.current_version()

    # The registrar stamps registered_at on every refresh; the device must keep its since.
    refreshed = binding(registered_at=clock.advance(1800))
    await service.on_bindings_changed(changed("alice", (phone,), (refreshed,)))
    assert await service.current_version() == version
    assert (await doc(service)).devices[0].since == T0


async def test_manual_away_survives_re_registration(service: PresenceService, clock: Clock) -> None:
    phone = binding()
    await service.on_bindings_changed(changed("alice", (), (phone,)))
    away = await service.set_manual("alice", "away", note="coffee", set_by="alice")
    assert (away.status, away.routable, away.note) == ("away", False, "coffee")
    assert "away" in away.activities

    clock.advance(10)
    await service.on_bindings_changed(changed("alice", (phone,), ()))
    gone = await doc(service)
    assert gone.status == "away"  # R2: a deliberate status stays visible with no device
    assert gone.voice is VoiceState.OFFLINE

    back = binding(contact="sip:alice@192.0.2.99:5062", registered_at=clock.advance(10))
    await service.on_bindings_changed(changed("alice", (), (back,)))
    d = await doc(service)
    assert (d.status, d.voice, d.routable) == ("away", VoiceState.AVAILABLE, False)
    assert d.manual.status == "away" and d.manual.note == "coffee" and d.manual.since == T0


async def test_set_manual_validates_agent_and_status(service: PresenceService) -> None:
    with pytest.raises(UnknownAgent) as no_agent:
        await service.set_manual("mallory", "away", note=None, set_by="x")
    assert no_agent.value.field == "agent" and isinstance(no_agent.value, ValueError)
    with pytest.raises(UnknownStatus) as no_status:
        await service.set_manual("alice", "sleeping", note=None, set_by="x")
    assert no_status.value.field == "status" and isinstance(no_status.value, ValueError)
    assert await service.current_version() == 2

    lunch = await service.set_manual("alice", "lunch", note=None, set_by="supervisor:carol")
    assert lunch.status == "lunch" and lunch.manual.set_by == "supervisor:carol"
    assert "meal" in lunch.activities
    # Setting the same status again is not a change and returns the current document.
    assert await service.set_manual("alice", "lunch", note=None, set_by="x") == lunch


async def test_other_users_registrations_are_ignored(service: PresenceService) -> None:
    before = await service.current_version()
    await service.on_bindings_changed(changed("trunk1", (), (binding("trunk1"),)))
    assert await service.current_version() == before
    assert await service.get("trunk1") is None
    with pytest.raises(UnknownAgent):
        await service.sync_devices("trunk1", [])


async def test_sync_devices_rebuilds_from_the_location_store(service: PresenceService) -> None:
    desk = binding(contact="sip:alice@192.0.2.10:5060", instance_id="<urn:uuid:1>")
    # Two RFC 5626 flows of one instance are one device, named by the instance.
    flow2 = binding(contact="sip:alice@192.0.2.10:5070", instance_id="<urn:uuid:1>")
    soft = binding(contact="sip:alice@198.51.100.7:5060")
    await service.sync_devices("alice", [desk, flow2, soft])
    d = await doc(service)
    assert sorted(x.id for x in d.devices) == ["<urn:uuid:1>", soft.contact]
    await service.sync_devices("alice", [])
    assert (await doc(service)).devices == ()


def test_devices_from_bindings_keeps_since_of_known_devices() -> None:
    first = devices_from_bindings([binding(registered_at=T0)])
    again = devices_from_bindings([binding(registered_at=T0 + 600)], first)
    assert again == first
    other = devices_from_bindings([binding(contact="sip:alice@192.0.2.50", registered_at=T0 + 1)])
    assert other[0].since == T0 + 1


async def test_calls_override_voice_but_not_chat_capacity(service: PresenceService) -> None:
    await service.on_bindings_changed(changed("alice", (), (binding(),)))
    call = Interaction(
        "call-1", Channel.VOICE, InteractionState.RINGING, T0, remote="sip:+15551234@pstn"
    )
    await service.upsert_interaction("alice", call)
    d = await doc(service)
    assert (d.status, d.voice) == ("ringing", VoiceState.RINGING)
    assert "on-the-phone" in d.activities
    chat = d.channel(Channel.CHAT)
    assert chat is not None and chat.free == 2

    await service.upsert_interaction(
        "alice", Interaction("call-1", Channel.VOICE, InteractionState.WRAP_UP, T0 + 60)
    )
    assert (await doc(service)).voice is VoiceState.WRAP_UP
    await service.end_interaction("alice", "call-1")
    d = await doc(service)
    assert (d.status, d.voice) == ("available", VoiceState.AVAILABLE)
    voice = d.channel(Channel.VOICE)
    assert voice is not None and voice.free == 1


async def test_publications_merge_into_the_one_document(
    service: PresenceService, clock: Clock
) -> None:
    await service.on_bindings_changed(changed("alice", (), (binding(),)))
    first = Published("e1", "open", ("meeting",), "in a meeting", expires_at=T0 + 3600)
    await service.apply_publication("alice", first)
    d = await doc(service)
    assert "meeting" in d.activities and d.note == "in a meeting"
    assert d.status == "available"  # R8: never changes the status

    modified = Published("e2", "open", ("travel",), None, expires_at=T0 + 3600)
    await service.apply_publication("alice", modified, remove_etag="e1")
    d = await doc(service)
    assert "travel" in d.activities and "meeting" not in d.activities
    sources = await service.store.sources("alice")
    assert sources is not None and [p.etag for p in sources.published] == ["e2"]

    await service.apply_publication("alice", None, remove_etag="e2")
    d = await doc(service)
    assert "travel" not in d.activities
    with pytest.raises(ValueError, match="needs a publication"):
        await service.apply_publication("alice", None)

    short = Published("e3", "open", ("meeting",), None, expires_at=T0 + 60)
    await service.apply_publication("alice", short)
    assert "meeting" in (await doc(service)).activities
    clock.advance(61)
    await service.refresh("alice")
    assert "meeting" not in (await doc(service)).activities
    sources = await service.store.sources("alice")
    assert sources is not None and sources.published == ()


async def test_list_filters(service: PresenceService) -> None:
    await service.on_bindings_changed(changed("alice", (), (binding(),)))
    assert [d.agent for d in await service.list(status="available")] == ["alice"]
    assert [d.agent for d in await service.list(status="offline")] == ["bob"]
    assert [d.agent for d in await service.list(voice="available")] == ["alice"]
    assert [d.agent for d in await service.list(routable=True)] == ["alice"]
    assert [d.agent for d in await service.list(routable=False)] == ["bob"]
    assert await service.list(status="away", routable=True) == []


async def test_listeners_get_every_change_in_order(service: PresenceService) -> None:
    seen = Recorder()
    service.add_listener(seen)
    start = await service.current_version()
    await service.on_bindings_changed(changed("alice", (), (binding(),)))
    await service.set_manual("bob", "break", note=None, set_by="bob")
    last = await service.set_manual("alice", "dnd", note=None, set_by="alice")
    await seen.wait_for(lambda c: c.version == last.version)
    assert [c.version for c in seen.changes] == list(range(start + 1, last.version + 1))


async def test_a_failing_listener_does_not_stop_the_others(service: PresenceService) -> None:
    async def broken(change: PresenceChange) -> None:
        raise RuntimeError("listener bug")

    seen = Recorder()
    service.add_listener(broken)
    service.add_listener(seen)
    a = await service.set_manual("alice", "away", note=None, set_by="alice")
    b = await service.set_manual("alice", "busy", note=None, set_by="alice")
    await seen.wait_for(lambda c: c.version == b.version)
    assert [c.version for c in seen.changes] == [a.version, b.version]


@pytest.mark.parametrize("log_size", [1000, 3], ids=["from-log", "from-snapshot"])
async def test_a_slow_listener_catches_up(clock: Clock, log_size: int) -> None:
    store = MemoryPresenceStore(change_log_size=log_size, max_pending=2)
    service = PresenceService(store, agents=AGENTS, statuses=STATUSES, clock=clock)
    gate = asyncio.Event()
    seen = Recorder()

    async def slow(change: PresenceChange) -> None:
        await gate.wait()
        await seen(change)

    service.add_listener(slow)
    await service.start()
    try:
        notes = [f"n{i}" for i in range(10)]
        for note in notes:  # far more than the subscription's bound while the listener waits
            await service.set_manual("alice", "away", note=note, set_by="alice")
        last_bob = await service.set_manual("bob", "busy", note=None, set_by="bob")
        final = await service.set_manual("alice", "away", note="final", set_by="alice")
        gate.set()
        await seen.wait_for(lambda c: c.version == final.version)
        versions = [c.version for c in seen.changes]
        assert versions == sorted(set(versions))  # in order, no repeats
        assert seen.changes[-1].document.note == "final"
        assert last_bob.version in versions  # the latest state of every agent arrives
        if log_size == 1000:
            assert versions == list(range(1, final.version + 1))  # nothing skipped at all
        assert service.delivered_version == final.version
    finally:
        await service.close()
        await store.close()


async def test_a_change_racing_the_catch_up_is_delivered_once(clock: Clock) -> None:
    class Racy(MemoryPresenceStore):
        """Another node commits between the consumer's resubscribe and its log read, so
        that change comes both from the log and from the new subscription."""

        raced = False

        async def changes_since(self, version: int) -> list[PresenceChange] | None:
            if not self.raced:
                self.raced = True
                await svc.set_manual("bob", "dnd", note="raced", set_by="bob")
            return await super().changes_since(version)

    store = Racy(max_pending=1)
    svc = PresenceService(store, agents=AGENTS, statuses=STATUSES, clock=clock)
    gate = asyncio.Event()
    seen = Recorder()

    async def slow(change: PresenceChange) -> None:
        await gate.wait()
        await seen(change)

    svc.add_listener(slow)
    await svc.start()
    try:
        for note in ("a", "b", "c"):
            await svc.set_manual("alice", "away", note=note, set_by="alice")
        gate.set()
        raced = await seen.wait_for(lambda c: c.document.note == "raced")
        after = await svc.set_manual("alice", "busy", note=None, set_by="alice")
        await seen.wait_for(lambda c: c.version == after.version)
        versions = [c.version for c in seen.changes]
        assert versions == list(range(1, after.version + 1))
        assert versions.count(raced.version) == 1
    finally:
        await svc.close()
        await store.close()


async def test_a_store_outage_does_not_fail_the_register(clock: Clock) -> None:
    class Down(MemoryPresenceStore):
        async def update(
            self, agent: str, fn: UpdateFn, *, compose: ComposeFn, now: float
        ) -> PresenceChange | None:
            raise StoreUnavailable("redis down")

    store = Down()
    service = PresenceService(store, agents=AGENTS, statuses=STATUSES, clock=clock)
    await service.on_bindings_changed(changed("alice", (), (binding(),)))  # logged, not raised
    with pytest.raises(StoreUnavailable):
        await service.set_manual("alice", "away", note=None, set_by="alice")
    await store.close()


@pytest.mark.redis
async def test_listeners_get_changes_made_on_another_node(redis_url: str, clock: Clock) -> None:
    stores: list[PresenceStore] = []
    services: list[PresenceService] = []
    try:
        for _ in range(2):
            store = await RedisPresenceStore.connect(redis_url)
            stores.append(store)
            svc = PresenceService(store, agents=AGENTS, statuses=STATUSES, clock=clock)
            await svc.start()
            services.append(svc)
        node_a, node_b = services
        seen_b = Recorder()
        node_b.add_listener(seen_b)

        await node_a.on_bindings_changed(changed("alice", (), (binding(),)))
        away = await node_a.set_manual("alice", "away", note=None, set_by="alice")
        got = await seen_b.wait_for(lambda c: c.version == away.version)
        assert got.document == away
        assert await node_b.get("alice") == away
        # Both nodes created the documents at start, yet each agent has exactly one.
        assert [d.agent for d in await node_b.list()] == ["alice", "bob"]
    finally:
        for svc in services:
            await svc.close()
        for opened in stores:
            await opened.close()
