"""The PresenceStore contract, run against the embedded and the Redis backend.

"Two nodes" are two store objects over the same data: two connections (each with its own
stream reader) for Redis; the same object twice for the embedded backend, which serves one
node. Waiting for a change is ``asyncio.wait_for`` on the subscription with a bound, never a
sleep.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.redis_server import RedisServer, free_port
from ucgate.presence.model import (
    BUILTIN_STATUSES,
    AgentSources,
    Channel,
    Device,
    Interaction,
    InteractionState,
    ManualStatus,
    PresenceDocument,
    Published,
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
from ucgate.presence.store_memory import MemoryPresenceStore
from ucgate.presence.store_redis import READER_CLIENT_NAME, RedisPresenceStore

T0 = 1_700_000_000.0
WAIT = 10.0  # upper bound on any wait for a change; a pass takes milliseconds

BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
]

Nodes = tuple[PresenceStore, PresenceStore]
OpenNodes = Callable[..., Awaitable[Nodes]]


def composer(now: float = T0) -> Callable[[AgentSources], PresenceDocument]:
    return partial(compose, capacity={"voice": 1, "chat": 3}, statuses=BUILTIN_STATUSES, now=now)


async def upd(store: PresenceStore, agent: str, fn: UpdateFn, now: float = T0) -> PresenceChange:
    change = await store.update(agent, fn, compose=composer(now), now=now)
    assert change is not None, "expected a versioned change"
    return change


def manual(status: str, note: str | None = None) -> UpdateFn:
    return lambda s: s.with_manual(ManualStatus(status, note, "test", T0))


def device(device_id: str) -> UpdateFn:
    return lambda s: s.with_device(Device(device_id, "sip", device_id, "ua/1", T0))


def chat(chat_id: str) -> UpdateFn:
    item = Interaction(chat_id, Channel.CHAT, InteractionState.ACTIVE, T0)
    return lambda s: s.with_interaction(item)


def same(sources: AgentSources) -> AgentSources:
    return sources


async def next_change(sub: ChangeSubscription) -> PresenceChange:
    return await asyncio.wait_for(anext(sub), WAIT)


async def take(sub: ChangeSubscription, n: int) -> list[PresenceChange]:
    return [await next_change(sub) for _ in range(n)]


@pytest.fixture(params=BACKENDS)
def backend_url(request: pytest.FixtureRequest) -> str | None:
    """None for the embedded backend, a clean Redis database's URL for the Redis one."""
    if request.param == "memory":
        return None
    url: str = request.getfixturevalue("redis_url")
    return url


@pytest.fixture
async def open_nodes(backend_url: str | None) -> AsyncIterator[OpenNodes]:
    opened: list[PresenceStore] = []

    async def factory(**options: Any) -> Nodes:
        if backend_url is None:
            store = MemoryPresenceStore(**options)
            opened.append(store)
            return store, store
        a = await RedisPresenceStore.connect(backend_url, **options)
        opened.append(a)
        b = await RedisPresenceStore.connect(backend_url, **options)
        opened.append(b)
        return a, b

    yield factory
    for store in opened:
        await store.close()


@pytest.fixture
async def nodes(open_nodes: OpenNodes) -> Nodes:
    return await open_nodes()


@pytest.fixture
def store(nodes: Nodes) -> PresenceStore:
    return nodes[0]


async def test_first_update_creates_a_versioned_document(store: PresenceStore) -> None:
    assert await store.get("alice") is None
    assert await store.sources("alice") is None
    assert await store.current_version() == 0
    assert await store.list() == []

    change = await upd(store, "alice", device("sip:alice@192.0.2.1"), now=T0 + 5)
    assert change.version == 1
    assert change.agent == "alice"
    assert change.at == T0 + 5
    assert change.document.version == 1
    assert change.document.updated_at == T0 + 5
    assert change.document.voice.value == "available"
    assert await store.get("alice") == change.document
    sources = await store.sources("alice")
    assert sources is not None and [d.id for d in sources.devices] == ["sip:alice@192.0.2.1"]
    assert await store.current_version() == 1
    assert await store.list() == [change.document]


async def test_versions_strictly_increase_across_agents(store: PresenceStore) -> None:
    versions = []
    for i in range(9):
        agent = ("alice", "bob", "carol")[i % 3]
        change = await upd(store, agent, manual(("away", "busy", "dnd")[i // 3]))
        versions.append(change.version)
    assert versions == list(range(1, 10))
    assert await store.current_version() == 9
    docs = await store.list()
    assert [d.agent for d in docs] == ["alice", "bob", "carol"]
    assert [d.version for d in docs] == [7, 8, 9]


async def test_same_content_stores_sources_without_a_version(store: PresenceStore) -> None:
    first = await upd(store, "alice", manual("away"))
    assert await store.update("alice", same, compose=composer(T0 + 60), now=T0 + 60) is None

    # An expired publication changes the sources but not the composed document (R8).
    stale = Published("etag-1", "open", ("meeting",), None, expires_at=T0 - 1)
    result = await store.update(
        "alice", lambda s: s.with_published(stale), compose=composer(), now=T0 + 61
    )
    assert result is None
    assert await store.current_version() == first.version
    assert await store.get("alice") == first.document  # version and updated_at untouched
    sources = await store.sources("alice")
    assert sources is not None and sources.published == (stale,)
    assert await store.changes_since(0) == [first]


async def test_a_failing_function_changes_nothing(store: PresenceStore) -> None:
    first = await upd(store, "alice", manual("away"))

    def boom(sources: AgentSources) -> AgentSources:
        raise RuntimeError("caller bug")

    def bad_compose(sources: AgentSources) -> PresenceDocument:
        raise ValueError("compose bug")

    with pytest.raises(RuntimeError, match="caller bug"):
        await store.update("alice", boom, compose=composer(), now=T0)
    with pytest.raises(ValueError, match="compose bug"):
        await store.update("alice", manual("busy"), compose=bad_compose, now=T0)
    with pytest.raises(ValueError, match="stored under"):
        await store.update("alice", lambda s: AgentSources("bob"), compose=composer(), now=T0)
    assert await store.current_version() == first.version
    assert await store.get("alice") == first.document
    assert await store.get("bob") is None


async def test_changes_since_returns_exactly_the_later_changes(store: PresenceStore) -> None:
    made = [
        await upd(store, f"agent{i % 2}", manual(f"{('away', 'busy')[i % 2]}", str(i)))
        for i in range(6)
    ]
    assert await store.changes_since(0) == made
    assert await store.changes_since(2) == made[2:]
    assert await store.changes_since(5) == made[5:]
    assert await store.changes_since(6) == []
    # A version this store never issued: another history; the client needs a snapshot.
    assert await store.changes_since(7) is None
    assert await store.changes_since(-1) is None


async def test_changes_since_is_none_once_trimmed(open_nodes: OpenNodes) -> None:
    # Redis trims with MAXLEN ~ (whole macro-nodes of 100 entries), so write well past that.
    store, _ = await open_nodes(change_log_size=5)
    for i in range(260):
        await upd(store, "alice", manual("away", f"n{i}"))
    current = await store.current_version()
    assert current == 260
    assert await store.changes_since(0) is None
    assert await store.changes_since(1) is None
    kept = await store.changes_since(current - 5)
    assert kept is not None
    assert [c.version for c in kept] == [256, 257, 258, 259, 260]
    assert [c.document.note for c in kept] == ["n255", "n256", "n257", "n258", "n259"]


async def test_subscribers_see_changes_in_order(store: PresenceStore) -> None:
    sub = store.subscribe()
    other = store.subscribe()
    made = [await upd(store, ("alice", "bob")[i % 2], chat(f"c{i}")) for i in range(10)]
    assert await take(sub, 10) == made
    assert await take(other, 10) == made
    sub.close()
    other.close()
    with pytest.raises(StopAsyncIteration):
        await next_change(sub)


async def test_no_op_updates_publish_nothing(store: PresenceStore) -> None:
    sub = store.subscribe()
    await upd(store, "alice", manual("away"))
    assert await store.update("alice", same, compose=composer(), now=T0 + 1) is None
    last = await upd(store, "alice", manual("busy"))
    got = await take(sub, 2)
    assert [c.version for c in got] == [1, last.version]
    assert sub.pending() == 0


async def test_a_change_on_one_node_reaches_the_others_subscriber(nodes: Nodes) -> None:
    a, b = nodes
    sub_b = b.subscribe()
    change = await upd(a, "alice", manual("dnd", "in a meeting"))
    got = await next_change(sub_b)
    assert got == change
    assert await b.get("alice") == change.document
    assert await b.changes_since(0) == [change]


async def test_concurrent_updates_from_two_nodes_get_unique_versions(nodes: Nodes) -> None:
    a, b = nodes
    sub_a, sub_b = a.subscribe(), b.subscribe()
    jobs = []
    for i in range(40):
        node = (a, b)[i % 2]
        # Half on one agent (contention: every update must survive), half spread out.
        agent = "alice" if i < 20 else f"agent{i}"
        jobs.append(upd(node, agent, chat(f"chat{i}")))
    made = await asyncio.gather(*jobs)

    versions = sorted(c.version for c in made)
    assert versions == list(range(1, 41))
    alice = await b.sources("alice")
    assert alice is not None
    assert sorted(i.id for i in alice.interactions) == sorted(f"chat{i}" for i in range(20))

    for sub in (sub_a, sub_b):
        seen = await take(sub, 40)
        assert [c.version for c in seen] == versions
    by_version = {c.version: c for c in made}
    assert all(by_version[c.version] == c for c in seen)


async def test_a_slow_subscriber_is_dropped_not_buffered(nodes: Nodes) -> None:
    a, b = nodes
    slow = b.subscribe(max_pending=3)
    fast = b.subscribe()
    start = slow.last_version
    for i in range(5):
        await upd(a, "alice", chat(f"c{i}"))
    await take(fast, 5)  # every change has been dispatched on b

    assert slow.lagged
    assert slow.pending() == 0  # the buffer was freed when it overflowed
    with pytest.raises(SubscriptionLagged) as caught:
        await next_change(slow)
    assert caught.value.last_version == start
    # The promised recovery path works: the log still covers where it stopped.
    missed = await b.changes_since(caught.value.last_version)
    assert missed is not None and [c.version for c in missed] == [1, 2, 3, 4, 5]
    # The fast one is unaffected.
    await upd(a, "alice", chat("c5"))
    assert (await next_change(fast)).version == 6


async def test_a_subscriber_within_its_bound_gets_everything(nodes: Nodes) -> None:
    a, b = nodes
    sub = b.subscribe(max_pending=5)
    made = [await upd(a, "alice", chat(f"c{i}")) for i in range(5)]
    assert await take(sub, 5) == made
    assert not sub.lagged


async def test_closing_the_store_ends_subscriptions(open_nodes: OpenNodes) -> None:
    store, _ = await open_nodes()
    sub = store.subscribe()
    await store.close()
    with pytest.raises(StopAsyncIteration):
        await next_change(sub)


# -- embedded backend ------------------------------------------------------------------------


async def test_memory_store_survives_a_restart(tmp_path: Path) -> None:
    store = await MemoryPresenceStore.open(data_dir=tmp_path)
    await upd(store, "alice", device("sip:alice@192.0.2.1"))
    await upd(store, "alice", manual("away", "lunch"))
    ringing = Interaction("call-1", Channel.VOICE, InteractionState.RINGING, T0, remote="sip:c@x")
    await upd(store, "alice", lambda s: s.with_interaction(ringing))
    last = await upd(store, "bob", manual("break"))
    await store.close()

    again = await MemoryPresenceStore.open(data_dir=tmp_path)
    try:
        assert await again.current_version() == last.version
        sources = await again.sources("alice")
        assert sources is not None
        assert sources.manual == ManualStatus("away", "lunch", "test", T0)
        assert sources.interactions == (ringing,)
        alice = await again.get("alice")
        assert alice is not None and alice.version == 3 and alice.voice.value == "ringing"
        assert [d.agent for d in await again.list()] == ["alice", "bob"]
        # The log is not persisted: older versions need a snapshot, the current one resumes.
        assert await again.changes_since(1) is None
        assert await again.changes_since(last.version) == []
        nxt = await upd(again, "bob", manual("available"))
        assert nxt.version == last.version + 1
        assert await again.changes_since(last.version) == [nxt]
    finally:
        await again.close()


async def test_memory_store_flushes_behind_and_skips_a_bad_row(tmp_path: Path) -> None:
    store = await MemoryPresenceStore.open(data_dir=tmp_path)
    await upd(store, "alice", manual("away"))
    await upd(store, "bob", manual("busy"))
    await store.flush()
    # Corrupt one row behind the store's back: the other agent must still load.
    with sqlite3.connect(tmp_path / "presence.sqlite3") as db:
        db.execute("UPDATE presence_agents SET sources = '{' WHERE agent = 'bob'")
    await store.close()  # nothing dirty: the corrupt row stays
    again = await MemoryPresenceStore.open(data_dir=tmp_path)
    try:
        assert [d.agent for d in await again.list()] == ["alice"]
        assert await again.current_version() == 2  # the counter is not taken from rows alone
    finally:
        await again.close()


async def test_memory_store_without_data_dir_is_pure_memory(tmp_path: Path) -> None:
    store = await MemoryPresenceStore.open(data_dir=None)
    await upd(store, "alice", manual("away"))
    await store.close()
    assert list(tmp_path.iterdir()) == []


_OPS = st.lists(
    st.tuples(
        st.sampled_from(["alice", "bob", "carol"]),
        st.sampled_from(["available", "away", "busy", "same", "device", "nodevice"]),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_OPS, log_size=st.integers(1, 8))
def test_memory_log_matches_a_reference_model(ops: list[tuple[str, str]], log_size: int) -> None:
    """Any sequence of updates: versions are consecutive, a version is issued exactly when
    the document's content changes, and changes_since is a suffix of the history or None."""

    async def run() -> None:
        store = MemoryPresenceStore(change_log_size=log_size)
        history: list[PresenceChange] = []
        for agent, op in ops:
            fn: UpdateFn
            if op == "same":
                fn = same
            elif op == "device":
                fn = device("sip:d@192.0.2.1")
            elif op == "nodevice":
                fn = lambda s: s.without_device("sip:d@192.0.2.1")  # noqa: E731
            else:
                fn = manual(op)
            before = await store.get(agent)
            change = await store.update(agent, fn, compose=composer(), now=T0)
            after = await store.get(agent)
            assert after is not None
            if change is None:
                assert before is not None and before == after
            else:
                assert change.version == len(history) + 1
                assert before is None or not before.same_content(after)
                history.append(change)
        current = await store.current_version()
        assert current == len(history)
        for v in range(-1, current + 2):
            got = await store.changes_since(v)
            if v < 0 or v > current or v < current - log_size:
                assert got is None
            else:
                assert got == history[v:]

    asyncio.run(run())


# -- Redis backend ---------------------------------------------------------------------------


@pytest.mark.redis
async def test_redis_key_layout(redis_url: str) -> None:
    store = await RedisPresenceStore.connect(redis_url)
    try:
        change = await upd(store, "alice", manual("away"))
    finally:
        await store.close()
    with redis.Redis.from_url(redis_url, decode_responses=True) as raw:
        assert raw.get("ucgate:presence:version") == "1"
        version, body = json.loads(raw.hget("ucgate:presence:docs", "alice") or "")
        assert version == 1
        assert PresenceDocument.from_json_dict(body).same_content(change.document)
        assert json.loads(raw.hget("ucgate:presence:sources", "alice") or "")["agent"] == "alice"
        ((entry_id, fields),) = raw.xrange("ucgate:presence:changes")
        assert entry_id == "1-0"
        assert fields["a"] == "alice"
        assert float(fields["t"]) == T0


@pytest.mark.redis
async def test_redis_burst_queues_for_connections_instead_of_failing(redis_url: str) -> None:
    store = await RedisPresenceStore.connect(redis_url, max_connections=4)
    try:
        made = await asyncio.gather(*(upd(store, f"agent{i}", manual("away")) for i in range(300)))
        assert sorted(c.version for c in made) == list(range(1, 301))
    finally:
        await store.close()


@pytest.mark.redis
async def test_redis_reader_resumes_after_its_connection_is_killed(redis_url: str) -> None:
    a = await RedisPresenceStore.connect(redis_url)
    b = await RedisPresenceStore.connect(redis_url, backoff_initial=0.01)
    try:
        sub = b.subscribe()
        await upd(a, "alice", manual("away"))
        await next_change(sub)  # b's reader is connected and blocked in XREAD again
        with redis.Redis.from_url(redis_url, decode_responses=True) as raw:
            readers = [c["id"] for c in raw.client_list() if c["name"] == READER_CLIENT_NAME]
            killed = sum(raw.client_kill_filter(_id=cid) for cid in readers)
        assert killed >= 1
        # Written while b's reader is down or backing off: it must resume from its last id.
        made = [await upd(a, "alice", manual(s)) for s in ("busy", "dnd")]
        assert await take(sub, 2) == made
        assert b.reconnects >= 1
    finally:
        await a.close()
        await b.close()


@pytest.mark.redis
async def test_redis_reader_flags_a_gap_in_the_stream(redis_url: str) -> None:
    a = await RedisPresenceStore.connect(redis_url)
    b = await RedisPresenceStore.connect(redis_url)
    try:
        sub = b.subscribe()
        watcher = b.subscribe()
        first = await upd(a, "alice", manual("away"))
        assert await next_change(sub) == first
        assert await next_change(watcher) == first
        # Entries 2 and 3 "trimmed before this node read them": a jump to version 4.
        with redis.Redis.from_url(redis_url, decode_responses=True) as raw:
            ((_, fields),) = raw.xrange("ucgate:presence:changes")
            raw.xadd("ucgate:presence:changes", fields, id="4-0")
        with pytest.raises(SubscriptionLagged) as caught:
            await next_change(sub)
        assert caught.value.last_version == first.version
        with pytest.raises(SubscriptionLagged):
            await next_change(watcher)
        # A subscriber opened after the gap just follows on.
        late = b.subscribe()
        nxt = await upd(a, "alice", manual("busy"))
        assert nxt.version == 5
        assert await next_change(late) == nxt
    finally:
        await a.close()
        await b.close()


async def test_redis_unreachable_raises_store_unavailable_quickly() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(StoreUnavailable):
        await RedisPresenceStore.connect(url, timeout=0.5)
    assert loop.time() - started < 2.0


@pytest.mark.redis
async def test_redis_outage_is_bounded_and_the_reader_recovers(tmp_path: Path) -> None:
    server = RedisServer.start(tmp_path)
    try:
        options: dict[str, Any] = {"timeout": 0.3, "block": 0.2, "backoff_initial": 0.01}
        a = await RedisPresenceStore.connect(server.url, **options)
        b = await RedisPresenceStore.connect(server.url, **options)
        try:
            sub = b.subscribe()
            before = await upd(a, "alice", manual("away"))
            assert await next_change(sub) == before

            server.pause()  # SIGSTOP: connections stay open, nothing answers
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(StoreUnavailable):
                await upd(a, "alice", manual("busy"))
            with pytest.raises(StoreUnavailable):
                await b.get("alice")
            assert loop.time() - started < 2.0
            server.resume()

            # Connections the timeouts broke were dropped; the reader reconnects and resumes.
            after = await upd(a, "alice", manual("dnd"))
            assert after.version == before.version + 1
            assert await next_change(sub) == after
            assert await b.get("alice") == after.document
        finally:
            server.resume()
            await a.close()
            await b.close()
    finally:
        server.stop()
