"""The session store contract, run over the embedded store and a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ucgate.sessions.model import ChannelInput, Customer, Media, Session, SessionError
from ucgate.sessions.store import MemorySessionStore, PinTaken, SessionStore, UnknownSession
from ucgate.sessions.store_redis import RedisSessionStore


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[SessionStore]:
    s: SessionStore
    if request.param == "memory":
        s = MemorySessionStore()
    else:
        s = await RedisSessionStore.connect(request.getfixturevalue("redis_url"), timeout=2.0)
    yield s
    await s.close()


def make(sid: str, at: float, *, phone: str | None = None, pin: str | None = None) -> Session:
    s = Session(sid, Customer(id=f"c-{sid}", phone=phone), "support", at, pin=pin)
    return s.add_channel(Media.CHAT, at)


async def test_create_get_and_duplicate(store: SessionStore) -> None:
    s = make("s1", 10.0, phone="+15550001", pin="123456")
    await store.create(s)
    assert await store.get("s1") == s
    assert await store.get("nope") is None
    with pytest.raises(SessionError) as info:
        await store.create(make("s1", 11.0))
    assert info.value.status == 409


async def test_pin_unique_among_open_sessions(store: SessionStore) -> None:
    await store.create(make("s1", 1.0, pin="111111"))
    with pytest.raises(PinTaken):
        await store.create(make("s2", 2.0, pin="111111"))
    assert (await store.find_open_by_pin("111111")) is not None
    # Once closed, the PIN is free again and no longer finds the session.
    await store.update("s1", lambda s: s.close(3.0, force=True))
    assert await store.find_open_by_pin("111111") is None
    await store.create(make("s2", 4.0, pin="111111"))
    found = await store.find_open_by_pin("111111")
    assert found is not None and found.id == "s2"


async def test_update_applies_and_refusal_stores_nothing(store: SessionStore) -> None:
    await store.create(make("s1", 1.0))
    s = await store.update("s1", lambda s: s.apply("s1-1", ChannelInput.OFFER, 2.0, "alice"))
    assert s.channels[0].agent == "alice"
    with pytest.raises(SessionError) as info:
        await store.update("s1", lambda s: s.apply("s1-1", ChannelInput.HOLD, 3.0))
    assert info.value.status == 409
    assert await store.get("s1") == s
    with pytest.raises(UnknownSession):
        await store.update("missing", lambda s: s)


async def test_concurrent_updates_lose_nothing(store: SessionStore) -> None:
    await store.create(make("s1", 1.0))

    async def add(i: int) -> None:
        await store.update("s1", lambda s: s.with_context({f"k{i}": i}))

    await asyncio.gather(*(add(i) for i in range(20)))
    s = await store.get("s1")
    assert s is not None and len(s.context) == 20


async def test_find_open_by_phone_newest_open(store: SessionStore) -> None:
    await store.create(make("a", 1.0, phone="+1555"))
    await store.create(make("b", 2.0, phone="+1555"))
    await store.create(make("c", 3.0, phone="+1666"))
    found = await store.find_open_by_phone("+1555")
    assert found is not None and found.id == "b"
    await store.update("b", lambda s: s.close(4.0, force=True))
    found = await store.find_open_by_phone("+1555")
    assert found is not None and found.id == "a"
    assert await store.find_open_by_phone("+1999") is None


async def test_list_pages_filters_and_agent(store: SessionStore) -> None:
    for i in range(7):
        await store.create(make(f"s{i}", float(i)))
    await store.update("s3", lambda s: s.close(10.0, force=True))
    await store.update("s5", lambda s: s.apply("s5-1", ChannelInput.OFFER, 11.0, "alice"))
    page = await store.list(limit=4)
    assert [s.id for s in page.sessions] == ["s6", "s5", "s4", "s2"]
    assert page.next_cursor is not None
    rest = await store.list(limit=4, cursor=page.next_cursor)
    assert [s.id for s in rest.sessions] == ["s1", "s0"] and rest.next_cursor is None
    every = await store.list(open_only=False, limit=100)
    assert [s.id for s in every.sessions] == [f"s{i}" for i in range(6, -1, -1)]
    window = await store.list(open_only=False, since=2.0, until=4.0)
    assert [s.id for s in window.sessions] == ["s3", "s2"]
    mine = await store.list(agent="alice")
    assert [s.id for s in mine.sessions] == ["s5"]
    with pytest.raises(ValueError):
        await store.list(cursor="garbage!")
    with pytest.raises(ValueError):
        await store.list(limit=0)


async def test_sqlite_restart_loses_nothing(tmp_path: Path) -> None:
    first = await MemorySessionStore.open(tmp_path)
    await first.create(make("s1", 1.0, phone="+1555", pin="424242"))
    await first.update("s1", lambda s: s.apply("s1-1", ChannelInput.OFFER, 2.0, "alice"))
    await first.create(make("s2", 3.0))
    await first.update("s2", lambda s: s.close(4.0, force=True))
    expected: dict[str, Any] = {
        "s1": await first.get("s1"),
        "s2": await first.get("s2"),
    }
    await first.close()

    second = await MemorySessionStore.open(tmp_path)
    try:
        assert await second.get("s1") == expected["s1"]
        assert await second.get("s2") == expected["s2"]
        found = await second.find_open_by_pin("424242")
        assert found is not None and found.id == "s1"
        assert [s.id for s in (await second.list()).sessions] == ["s1"]
        assert [s.id for s in (await second.list(agent="alice")).sessions] == ["s1"]
    finally:
        await second.close()


async def test_two_redis_clients_share_state(redis_url: str) -> None:
    a = await RedisSessionStore.connect(redis_url, timeout=2.0)
    b = await RedisSessionStore.connect(redis_url, timeout=2.0)
    try:
        await a.create(make("s1", 1.0, pin="777777"))
        with pytest.raises(PinTaken):
            await b.create(make("s2", 2.0, pin="777777"))

        async def add(store: RedisSessionStore, i: int) -> None:
            await store.update("s1", lambda s: s.with_context({f"k{i}": i}))

        await asyncio.gather(*(add(a if i % 2 else b, i) for i in range(10)))
        s = await b.get("s1")
        assert s is not None and len(s.context) == 10
    finally:
        await a.close()
        await b.close()


async def test_list_by_agent_pages_and_filters_like_the_general_list(store: SessionStore) -> None:
    # Ties on created_at on purpose: the order (newest, then id descending) and the cursor
    # must be the general list's.
    for i in range(6):
        await store.create(make(f"a{i}", float(i // 2)))
        await store.update(
            f"a{i}", lambda s, i=i: s.apply(f"a{i}-1", ChannelInput.OFFER, 9.0, "bob")
        )
    await store.create(make("other", 1.0))
    await store.update("a4", lambda s: s.close(10.0, force=True))
    general = await store.list(open_only=False, limit=100)
    expected = [s.id for s in general.sessions if s.id != "other"]
    assert expected == ["a5", "a4", "a3", "a2", "a1", "a0"]
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(10):
        page = await store.list(open_only=False, agent="bob", limit=4, cursor=cursor)
        seen += [s.id for s in page.sessions]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == expected
    assert [s.id for s in (await store.list(agent="bob")).sessions] == [
        "a5",
        "a3",
        "a2",
        "a1",
        "a0",
    ]
    window = await store.list(open_only=False, agent="bob", since=1.0, until=2.0)
    assert [s.id for s in window.sessions] == ["a3", "a2"]
    assert (await store.list(agent="nobody")).sessions == []
