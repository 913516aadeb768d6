"""What only the Redis backend promises: key layout, TTL safety net, races, bounded failure."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.redis_server import RedisServer, free_port
from ucgate.store import Binding, RedisLocationStore, StoreConflict, StoreUnavailable, UpdateFn

pytestmark = pytest.mark.redis

T0 = 1_700_000_000.0
AOR = "sip:alice@example.test"
MARGIN = 300.0


def mk(contact: str, expires_at: float, **extra: Any) -> Binding:
    return Binding(
        aor=AOR,
        contact=contact,
        expires_at=expires_at,
        call_id="c1@192.0.2.1",
        cseq=1,
        source="udp:192.0.2.1:5060",
        node_id="n1",
        registered_at=T0,
        **extra,
    )


def put(*new: Binding) -> UpdateFn:
    contacts = {b.contact for b in new}
    return lambda live: [b for b in live if b.contact not in contacts] + list(new)


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client on the same database, to look behind the store's back."""
    with redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=5) as client:
        yield client


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisLocationStore]:
    s = await RedisLocationStore.connect(redis_url, node_id="n1", ttl_margin=MARGIN)
    yield s
    await s.close()


@pytest.fixture
def throwaway(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server this test may pause or kill."""
    server = RedisServer.start(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()


async def test_key_layout(store: RedisLocationStore, raw: redis.Redis) -> None:
    binding = mk("sip:alice@192.0.2.1:5060", T0 + 3600, q=0.5)
    await store.update(AOR, put(binding), T0)

    assert store.key_for(AOR) == "ucgate:loc:aor:sip:alice@example.test"
    assert store.expiry_key == "ucgate:loc:exp"
    value = raw.hget(store.key_for(AOR), binding.contact)
    assert isinstance(value, str)
    fields = json.loads(value)
    assert "a" not in fields and "c" not in fields
    assert fields["e"] == T0 + 3600 and fields["q"] == 0.5
    assert raw.zrange(store.expiry_key, 0, -1, withscores=True) == [
        (f"{AOR}\x00{binding.contact}", T0 + 3600)
    ]


async def test_reopened_store_keeps_bindings(redis_url: str, store: RedisLocationStore) -> None:
    binding = mk("sip:alice@192.0.2.1", T0 + 3600, flow="tcp-1", path=("<sip:p.example;lr>",))
    await store.update(AOR, put(binding), T0)
    await store.close()

    again = await RedisLocationStore.connect(redis_url, node_id="n1")
    try:
        assert await again.lookup(AOR, T0 + 1) == [binding]
        assert await again.next_expiry() == T0 + 3600
    finally:
        await again.close()


async def test_keys_carry_a_ttl_safety_net(store: RedisLocationStore, raw: redis.Redis) -> None:
    await store.update(AOR, put(mk("sip:a@192.0.2.1", T0 + 3600)), T0)
    hash_ttl = raw.pttl(store.key_for(AOR))
    assert isinstance(hash_ttl, int)
    assert (3600 + MARGIN - 5) * 1000 < hash_ttl <= (3600 + MARGIN) * 1000
    exp_ttl = raw.pttl(store.expiry_key)
    assert isinstance(exp_ttl, int) and exp_ttl > 0

    # Shortening the only binding lowers the hash TTL; the shared sorted set keeps the
    # longest TTL any AOR needs (PEXPIRE GT), so it never expires before a hash does.
    await store.update(AOR, put(mk("sip:a@192.0.2.1", T0 + 60)), T0)
    shorter = raw.pttl(store.key_for(AOR))
    assert isinstance(shorter, int) and shorter <= (60 + MARGIN) * 1000
    later = raw.pttl(store.expiry_key)
    assert isinstance(later, int) and later > (3600 + MARGIN - 5) * 1000


async def test_lost_race_is_retried_with_fresh_data(
    store: RedisLocationStore, raw: redis.Redis
) -> None:
    mine = mk("sip:mine@192.0.2.1", T0 + 3600)
    theirs = mk("sip:theirs@192.0.2.2", T0 + 3600)
    seen: list[list[Binding]] = []

    def fn(live: list[Binding]) -> list[Binding]:
        seen.append(live)
        if len(seen) == 1:
            # Another node registers between our read and our EXEC.
            raw.hset(store.key_for(AOR), theirs.contact, _value_of(theirs))
            raw.zadd(store.expiry_key, {f"{AOR}\x00{theirs.contact}": theirs.expires_at})
        return [*live, mine]

    stored = await store.update(AOR, fn, T0)
    assert seen == [[], [theirs]]
    assert sorted(b.contact for b in stored) == [mine.contact, theirs.contact]
    assert await store.count() == 2


async def test_endless_contention_ends_in_store_conflict(redis_url: str, raw: redis.Redis) -> None:
    store = await RedisLocationStore.connect(redis_url, node_id="n1", max_attempts=3)
    calls = 0

    def fn(live: list[Binding]) -> list[Binding]:
        nonlocal calls
        calls += 1
        raw.hset(store.key_for(AOR), f"sip:x{calls}@192.0.2.9", _value_of(mk("x", T0 + 60)))
        return live

    try:
        with pytest.raises(StoreConflict):
            await store.update(AOR, fn, T0)
        assert calls == 3
    finally:
        await store.close()


async def test_foreign_values_under_the_prefix_are_skipped(
    store: RedisLocationStore, raw: redis.Redis
) -> None:
    good = mk("sip:good@192.0.2.1", T0 + 3600)
    await store.update(AOR, put(good), T0)
    raw.hset(store.key_for(AOR), "sip:junk@192.0.2.2", "not json")
    assert await store.lookup(AOR, T0) == [good]


async def test_unreachable_server_raises_store_unavailable_quickly() -> None:
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await RedisLocationStore.connect(
            f"redis://127.0.0.1:{free_port()}/0", node_id="n1", timeout=0.5
        )
    assert time.monotonic() - started < 2.0


async def test_killed_server_raises_store_unavailable_within_timeout(
    throwaway: RedisServer,
) -> None:
    store = await RedisLocationStore.connect(throwaway.url, node_id="n1", timeout=0.5)
    try:
        await store.update(AOR, put(mk("sip:a@192.0.2.1", T0 + 60)), T0)
        throwaway.kill()
        for call in (
            store.lookup(AOR, T0),
            store.update(AOR, put(mk("sip:b@192.0.2.2", T0 + 60)), T0),
            store.expire(T0 + 100),
            store.next_expiry(),
            store.count(),
        ):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await call
            assert time.monotonic() - started < 2.0
    finally:
        await store.close()


async def test_hung_server_raises_store_unavailable_within_timeout(
    throwaway: RedisServer,
) -> None:
    # SIGSTOP keeps the socket open but nothing answers: the case a missing timeout turns
    # into a hang of every REGISTER.
    store = await RedisLocationStore.connect(throwaway.url, node_id="n1", timeout=0.3)
    try:
        await store.update(AOR, put(mk("sip:a@192.0.2.1", T0 + 60)), T0)
        throwaway.pause()
        for call in (
            store.lookup(AOR, T0),
            store.update(AOR, put(mk("sip:b@192.0.2.2", T0 + 60)), T0),
            store.expire(T0 + 100),
        ):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await call
            assert time.monotonic() - started < 1.5
        throwaway.resume()
        # Broken connections are replaced: the store works again once Redis does.
        assert [b.contact for b in await store.lookup(AOR, T0)] == ["sip:a@192.0.2.1"]
    finally:
        throwaway.resume()
        await store.close()


def _value_of(binding: Binding) -> str:
    data = binding.to_dict()
    del data["a"], data["c"]
    return json.dumps(data)
