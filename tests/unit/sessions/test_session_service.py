"""SessionService: routing by capacity, offers, timeouts, elevation, sticky lookup, events,
restart; clock stepped by hand, store real (memory/SQLite)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ucgate.sessions.model import ChannelInput, ChannelState, Customer, Media, SessionError
from ucgate.sessions.routing import QueueSpec, RoutingEngine
from ucgate.sessions.service import AgentProfile, SessionEvent, SessionService
from ucgate.sessions.store import MemorySessionStore

QUEUES = [QueueSpec("support", frozenset({Media.CHAT, Media.VOICE, Media.EMAIL}), offer_timeout=20)]
AGENTS = {"alice": AgentProfile({"voice": 1, "chat": 2, "email": 5}, {"billing": 5})}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def drain(queue: object) -> list[SessionEvent]:
    import asyncio

    assert isinstance(queue, asyncio.Queue)
    out = []
    while not queue.empty():
        item = queue.get_nowait()
        assert item is not None
        out.append(item)
    return out


@pytest.fixture
async def svc() -> AsyncIterator[tuple[SessionService, Clock]]:
    clock = Clock()
    service = SessionService(
        MemorySessionStore(),
        RoutingEngine(QUEUES),
        agents=AGENTS,
        clock=clock,
        rng=random.Random(7),
    )
    await service.start()
    yield service, clock
    await service.stop()


async def test_chat_routed_to_free_agent_and_accepted(svc: tuple[SessionService, Clock]) -> None:
    service, _ = svc
    events = service.events.subscribe()
    s = await service.create_session(
        Customer(id="c1", phone="+1555"), Media.CHAT, "support", {"order": "A-17"}
    )
    assert s.pin is not None and len(s.pin) == 6
    ch = s.channels[0]
    assert ch.state is ChannelState.OFFERED and ch.agent == "alice"
    got = drain(events)
    assert [e.type for e in got] == ["session_created", "offer_made"]
    # The offer carries the self-service context.
    assert got[1].to_json_dict()["session"]["context"] == {"order": "A-17"}
    s = await service.accept(s.id, ch.id, "alice")
    assert s.agent == "alice" and s.channels[0].state is ChannelState.ACTIVE
    assert "agent_assigned" in [e.type for e in drain(events)]


async def test_capacity_limits_offers(svc: tuple[SessionService, Clock]) -> None:
    service, _ = svc
    made = [await service.create_session(Customer(), Media.CHAT, "support") for _ in range(3)]
    states = [m.channels[0].state for m in made]
    assert states == [ChannelState.OFFERED, ChannelState.OFFERED, ChannelState.QUEUED]
    # Ending one of alice's chats frees a slot: the waiting chat is offered.
    first = made[0]
    await service.accept(first.id, first.channels[0].id, "alice")
    await service.channel_event(first.id, first.channels[0].id, ChannelInput.END)
    await service.channel_event(first.id, first.channels[0].id, ChannelInput.WRAP_UP_DONE)
    third = await service.get(made[2].id)
    assert third.channels[0].state is ChannelState.OFFERED


async def test_offer_timeout_requeues(svc: tuple[SessionService, Clock]) -> None:
    service, clock = svc
    s = await service.create_session(Customer(), Media.CHAT, "support")
    assert service.engine.next_deadline() == clock.now + 20
    clock.now += 21
    await service.handle_timer()
    ch = (await service.get(s.id)).channels[0]
    # Alice let it time out: it waits for another agent, not alice again.
    assert ch.state is ChannelState.QUEUED and ch.agent is None
    assert ch.timeline[-1].input is ChannelInput.OFFER_TIMEOUT


async def test_reject_and_illegal_transition(svc: tuple[SessionService, Clock]) -> None:
    service, _ = svc
    s = await service.create_session(Customer(), Media.CHAT, "support")
    cid = s.channels[0].id
    with pytest.raises(SessionError) as info:
        await service.accept(s.id, cid, "bob")
    assert info.value.status == 409
    s = await service.reject(s.id, cid, "alice")
    assert s.channels[0].state is ChannelState.QUEUED
    with pytest.raises(SessionError) as info:
        await service.channel_event(s.id, cid, ChannelInput.HOLD)
    assert info.value.status == 409


async def test_elevation_keeps_chat_active(svc: tuple[SessionService, Clock]) -> None:
    service, _ = svc
    s = await service.create_session(Customer(phone="+1555"), Media.CHAT, "support")
    await service.accept(s.id, s.channels[0].id, "alice")
    events = service.events.subscribe()
    s = await service.add_channel(s.id, Media.VOICE, to="+1555")
    chat, voice = s.channels
    assert chat.state is ChannelState.ACTIVE
    assert voice.media is Media.VOICE and voice.state is ChannelState.OFFERED
    assert voice.agent == "alice"
    elevation = [e for e in drain(events) if e.type == "voice_elevation_requested"]
    assert elevation and elevation[0].data["to"] == "+1555"
    # The call glue reports answer and hang-up; the chat is untouched.
    await service.channel_event(s.id, voice.id, ChannelInput.ACCEPT, agent="alice")
    await service.channel_event(s.id, voice.id, ChannelInput.END)
    s = await service.get(s.id)
    assert s.channels[0].state is ChannelState.ACTIVE
    assert s.channels[1].state is ChannelState.WRAP_UP


async def test_elevation_without_agent_is_refused(svc: tuple[SessionService, Clock]) -> None:
    service, _ = svc
    s = await service.create_session(Customer(), Media.CHAT, "support")
    with pytest.raises(SessionError) as info:
        await service.add_channel(s.id, Media.VOICE, to="+1555")
    assert info.value.field == "agent"


async def test_find_for_call_by_header_pin_and_caller(svc: tuple[SessionService, Clock]) -> None:
    service, _ = svc
    s = await service.create_session(Customer(phone="+15550001"), Media.CHAT, "support")
    assert s.pin is not None
    for kwargs in ({"session_id": s.id}, {"pin": s.pin}, {"caller": "+15550001"}):
        found = await service.find_for_call(**kwargs)
        assert found is not None and found.id == s.id
    assert await service.find_for_call(caller="+19999") is None


async def test_unknown_queue_or_media_is_422_and_stores_nothing(
    svc: tuple[SessionService, Clock],
) -> None:
    service, _ = svc
    with pytest.raises(SessionError) as info:
        await service.create_session(Customer(), Media.CHAT, "nope")
    assert (info.value.status, info.value.field) == (422, "queue")
    with pytest.raises(SessionError) as info:
        await service.create_session(Customer(), Media.SMS, "support")
    assert info.value.field == "media"
    assert (await service.store.list(open_only=False)).sessions == []


async def test_close_and_self_service_report(svc: tuple[SessionService, Clock]) -> None:
    service, _ = svc
    a = await service.create_session(Customer(), Media.CHAT, "support")
    # Gave up in the bot before an agent accepted.
    closed = await service.close(a.id, force=True, self_service_step="order_lookup")
    assert closed.closed
    assert await service.self_service_report() == {"order_lookup": 1}
    with pytest.raises(SessionError):
        await service.close(a.id)


async def test_restart_requeues_open_offers(tmp_path: Path) -> None:
    clock = Clock()
    store = await MemorySessionStore.open(tmp_path)
    first = SessionService(store, RoutingEngine(QUEUES), agents=AGENTS, clock=clock)
    await first.start()
    s = await first.create_session(Customer(), Media.CHAT, "support")
    assert s.channels[0].state is ChannelState.OFFERED
    await first.stop()
    await store.close()

    store = await MemorySessionStore.open(tmp_path)
    second = SessionService(store, RoutingEngine(QUEUES), agents=AGENTS, clock=clock)
    try:
        await second.start()
        ch = (await second.get(s.id)).channels[0]
        # Requeued at start and offered again: nothing in flight was lost.
        assert ch.state is ChannelState.OFFERED and ch.agent == "alice"
        assert [t.input for t in ch.timeline][-2:] == [ChannelInput.REQUEUE, ChannelInput.OFFER]
    finally:
        await second.stop()
        await store.close()
