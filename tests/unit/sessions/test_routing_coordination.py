"""Routing coordinated between nodes on a real redis-server, every step driven by hand:
two SessionService+RedisRoutingCoordinator pairs ("nodes") share one Redis; their clocks
(the lease's monotonic one, the service's wall one) are stepped, the lease is ticked and
the streams are pumped explicitly, so nothing runs in the background and nothing sleeps."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from ucgate.sessions.coordination import RedisRoutingCoordinator
from ucgate.sessions.leader import NotLeader, Promoted
from ucgate.sessions.model import ChannelInput, ChannelState, Customer, Media, Session
from ucgate.sessions.routing import QueueSpec, RoutingEngine
from ucgate.sessions.service import AgentProfile, SessionEvent, SessionService
from ucgate.sessions.store_redis import Fence, RedisSessionStore

pytestmark = pytest.mark.redis

TTL = 3.0
QUEUES = [QueueSpec("support", frozenset({Media.CHAT}), offer_timeout=20.0)]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Node:
    name: str
    service: SessionService
    coord: RedisRoutingCoordinator
    store: RedisSessionStore
    mono: Clock
    inputs_at: str = "0-0"
    outcomes_at: str = "0-0"

    async def tick(self) -> None:
        """One lease step; a promotion rebuilds the engine, as the adapter's loop does."""
        for event in await self.coord.tick():
            if isinstance(event, Promoted):
                await self.service.take_lead(event.token)
            else:
                await self.service.give_up_lead(event.reason)

    async def pump_inputs(self, since: str | None = None) -> None:
        self.inputs_at = await self.coord.pump_inputs(
            self.service, self.inputs_at if since is None else since
        )

    async def pump_outcomes(self) -> None:
        self.outcomes_at = await self.coord.pump_outcomes(self.service, self.outcomes_at)


@pytest.fixture
async def nodes(redis_url: str) -> AsyncIterator[tuple[Node, Node, Clock]]:
    wall = Clock(1000.0)
    made: list[Node] = []
    for name in ("a", "b"):
        store = await RedisSessionStore.connect(redis_url)
        mono = Clock(50.0)
        coord = await RedisRoutingCoordinator.connect(
            redis_url, store, node_id=name, lease_ttl=TTL, clock=mono, block=0.01
        )
        service = SessionService(
            store,
            RoutingEngine(QUEUES),
            agents={"alice": AgentProfile({"chat": 2})},
            clock=wall,
            rng=random.Random(name),
            coordinator=coord,
        )
        made.append(Node(name, service, coord, store, mono))
    a, b = made
    await a.tick()  # a leads
    await b.tick()  # b stands by
    assert a.coord.leading() and not b.coord.leading()
    yield a, b, wall
    for n in made:
        await n.service.stop()
        await n.store.close()


async def create(node: Node, n: int) -> list[Session]:
    return [
        await node.service.create_session(Customer(id=f"c{i}"), Media.CHAT, "support")
        for i in range(n)
    ]


async def states(node: Node, sessions: list[Session]) -> list[tuple[str, str | None, int]]:
    out = []
    for s in sessions:
        ch = (await node.service.get(s.id)).channels[0]
        offers = sum(1 for e in ch.timeline if e.input is ChannelInput.OFFER)
        out.append((ch.state.value, ch.agent, offers))
    return out


async def outcomes(client_url: str, key: str) -> list[dict[str, str]]:
    async with aioredis.Redis.from_url(client_url, decode_responses=True) as r:
        return [fields for _, fields in await r.xrange(key)]


async def test_lease_acquire_renew_release_on_redis(
    nodes: tuple[Node, Node, Clock], redis_url: str
) -> None:
    a, b, _ = nodes
    async with aioredis.Redis.from_url(redis_url, decode_responses=True) as r:
        assert await r.get(a.coord.lease_key) == "a:1"
        a.mono.now += 1.0  # a third of the TTL: renew
        await a.tick()
        assert 2900 < await r.pttl(a.coord.lease_key) <= 3000
        b.mono.now += 0.5  # b retries, and is refused: a renewed
        await b.tick()
        assert not b.coord.leading()
        await a.coord.close()  # resigns: the key goes at once, no TTL to wait out
        assert await r.get(a.coord.lease_key) is None
        b.mono.now += 0.5
        await b.tick()
        assert b.coord.leading()
        assert await r.get(b.coord.lease_key) == "b:2"  # the epoch only grows


async def test_forwarded_inputs_are_processed_once(
    nodes: tuple[Node, Node, Clock], redis_url: str
) -> None:
    a, b, _ = nodes
    # Created through the standby: stored by b, forwarded to a, not routed by b.
    made = await create(b, 3)
    assert await states(a, made) == [("queued", None, 0)] * 3
    await a.pump_inputs()
    assert await states(a, made) == [
        ("offered", "alice", 1),
        ("offered", "alice", 1),
        ("queued", None, 0),
    ]
    # The whole stream again (a new leader replaying it): nothing changes.
    await a.pump_inputs(since="0-0")
    assert [s[2] for s in await states(a, made)] == [1, 1, 0]
    assert len(await outcomes(redis_url, a.coord.outcomes_key)) == 2

    # Alice accepts one through b: still 2 chats, the third waits; ends it: offered.
    await b.service.accept(made[0].id, made[0].channels[0].id, "alice")
    await a.pump_inputs()
    assert (await states(a, made))[2] == ("queued", None, 0)
    await b.service.close(made[0].id, force=True)
    await a.pump_inputs()
    assert (await states(a, made))[2] == ("offered", "alice", 1)
    await a.pump_inputs(since="0-0")
    assert [s[2] for s in await states(a, made)] == [1, 1, 1]
    assert len(await outcomes(redis_url, a.coord.outcomes_key)) == 3
    assert a.coord.inputs_read > 0


async def test_standby_republishes_the_leaders_offers(nodes: tuple[Node, Node, Clock]) -> None:
    a, b, _ = nodes
    on_a, on_b = a.service.events.subscribe(), b.service.events.subscribe()
    made = await create(a, 1)
    await b.pump_outcomes()
    await a.pump_outcomes()  # a skips its own entries: it published them already
    seen_a = drain(on_a)
    seen_b = drain(on_b)
    offer_a = [e for e in seen_a if e.type == "offer_made"]
    assert len(offer_a) == 1
    assert [e.type for e in seen_b] == ["offer_made"]
    # Same event id everywhere (the webhook idempotency key), same session snapshot.
    assert seen_b[0].id == offer_a[0].id
    assert seen_b[0].session.id == made[0].id and seen_b[0].agent == "alice"
    assert seen_b[0].session.channels[0].state is ChannelState.OFFERED


def drain(queue: asyncio.Queue[SessionEvent | None]) -> list[SessionEvent]:
    out = []
    while not queue.empty():
        item = queue.get_nowait()
        assert item is not None
        out.append(item)
    return out


async def test_fencing_refuses_a_paused_leaders_write(
    nodes: tuple[Node, Node, Clock], redis_url: str
) -> None:
    a, b, wall = nodes
    made = await create(a, 3)  # alice (2 chats) is offered two, the third waits
    assert [s[0] for s in await states(a, made)] == ["offered", "offered", "queued"]
    # a is paused past its lease: the key expires in Redis (deleted here, as expiry would)
    # while a's own clock, stopped with it, still says it leads.
    async with aioredis.Redis.from_url(redis_url, decode_responses=True) as r:
        await r.delete(a.coord.lease_key)
    b.mono.now += 0.5
    await b.tick()
    assert b.coord.leading() and a.coord.leading()  # both *believe*; only b's token is in Redis
    # b rebuilt from the store: the two open offers are kept, not made again.
    assert await states(b, made) == [
        ("offered", "alice", 1),
        ("offered", "alice", 1),
        ("queued", None, 0),
    ]
    # a wakes up and acts on its stale engine: the offers time out in its view. Its write
    # is fenced off; it stops routing and hands what it held to b.
    wall.now += 25.0
    await a.service.handle_timer()
    assert not a.service._routing
    assert await states(a, made) == [
        ("offered", "alice", 1),
        ("offered", "alice", 1),
        ("queued", None, 0),
    ]
    timeline = (await a.service.get(made[0].id)).channels[0].timeline
    assert not any(e.input is ChannelInput.OFFER_TIMEOUT for e in timeline)
    # The fence at the store, directly: a's token no longer opens it.
    fence = Fence(a.coord.lease_key, "a:1", a.coord.outcomes_key, lambda s: {"x": "y"})
    with pytest.raises(NotLeader):
        await a.store.update(made[2].id, lambda s: s.with_context({"k": 1}), fence=fence)
    # b, the real router, times the offers out itself and routes on (one outcome each).
    await b.pump_inputs()  # a's hand-over: idempotent, changes nothing
    await b.service.handle_timer()
    got = await states(b, made)
    # Offers 1 and 2 lapsed (alice excluded from them in this queue): 3 is offered.
    assert got[2] == ("offered", "alice", 1), got
    assert [s[0] for s in got[:2]] == ["queued", "queued"]
    writers = {f["n"] for f in await outcomes(redis_url, a.coord.outcomes_key)}
    assert writers == {"a", "b"}  # a's two offers before its pause, then only b


async def test_takeover_keeps_first_come_first_served(nodes: tuple[Node, Node, Clock]) -> None:
    a, b, wall = nodes
    made = []
    for _ in range(4):
        made += await create(a, 1)
        wall.now += 1.0
    await a.coord.close()  # a goes away cleanly: lease released
    await a.service.give_up_lead("test")
    b.mono.now += 0.5
    await b.tick()
    assert b.coord.leading()
    # Alice ends the first chat (through b): the oldest waiting one is offered.
    await b.service.accept(made[0].id, made[0].channels[0].id, "alice")
    await b.service.close(made[0].id, force=True)
    got = await states(b, made)
    assert got[1:] == [("offered", "alice", 1), ("offered", "alice", 1), ("queued", None, 0)]
