"""One contract for every call record store: embedded (with and without SQLite) and Redis."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ucgate.calls.record_store import (
    CallRecordStore,
    MemoryCallRecordStore,
    decode_cursor,
    encode_cursor,
)
from ucgate.calls.record_store_redis import RedisCallRecordStore
from ucgate.calls.records import (
    CallAnswered,
    CallEnded,
    CallOffered,
    CallRecordError,
    CallTransferred,
    Direction,
    EndReason,
    HoldEnded,
    HoldStarted,
    LegAdded,
    TransferMode,
    WrapUpEnded,
)
from ucgate.store.location import StoreUnavailable

T0 = 1_700_000_000.0


def offered(at: float, agent: str | None = None) -> CallOffered:
    return CallOffered(
        at=at,
        direction=Direction.INTERNAL if agent else Direction.INBOUND,
        caller="sip:+15557777@pbx",
        callee="+15550100",
        leg_id="a",
        party="sip:+15557777@pbx",
        agent=agent,
    )


def leg(at: float, leg_id: str, agent: str) -> LegAdded:
    return LegAdded(at, leg_id, f"sip:{agent}@example.test", agent=agent)


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CallRecordStore]:
    opened: CallRecordStore
    if request.param == "memory":
        opened = await MemoryCallRecordStore.open(None)
    elif request.param == "sqlite":
        opened = await MemoryCallRecordStore.open(tmp_path / "data")
    else:
        url = request.getfixturevalue("redis_url")
        opened = await RedisCallRecordStore.connect(url, timeout=5.0)
    yield opened
    await opened.close()


async def add_call(store: CallRecordStore, call_id: str, at: float, *agents: str) -> None:
    await store.append(call_id, offered(at))
    for index, agent in enumerate(agents):
        await store.append(call_id, leg(at, f"b{index}", agent))


async def test_append_builds_the_record_and_get_returns_it(store: CallRecordStore) -> None:
    assert await store.get("c1") is None
    await store.append("c1", offered(T0))
    await store.append("c1", leg(T0 + 1, "b1", "alice"))
    await store.append("c1", CallAnswered(T0 + 2, "b1"))
    await store.append("c1", HoldStarted(T0 + 12))
    await store.append("c1", HoldEnded(T0 + 14))
    record = await store.append("c1", CallEnded(T0 + 32, EndReason.CALLEE_BYE))
    assert (record.talk_seconds, record.hold_seconds) == (28.0, 2.0)
    assert await store.get("c1") == record


async def test_refused_events_store_nothing(store: CallRecordStore) -> None:
    with pytest.raises(CallRecordError, match="before 'offered'"):
        await store.append("c1", CallAnswered(T0, "b1"))
    assert await store.get("c1") is None
    await add_call(store, "c1", T0, "alice")
    with pytest.raises(CallRecordError, match="hold before"):
        await store.append("c1", HoldStarted(T0 + 1))
    with pytest.raises(CallRecordError, match="only starts"):
        await store.append("c1", offered(T0 + 1))
    record = await store.get("c1")
    assert record is not None and len(record.events) == 2


async def test_list_newest_first_with_time_and_agent_filters(store: CallRecordStore) -> None:
    await add_call(store, "c1", T0 + 10, "alice")
    await add_call(store, "c2", T0 + 20, "bob")
    await add_call(store, "c3", T0 + 30, "alice", "bob")
    await add_call(store, "c4", T0 + 40)

    async def ids(**filters: float | str) -> list[str]:
        page = await store.list(**filters)  # type: ignore[arg-type]
        assert page.next_cursor is None
        return [r.id for r in page.records]

    assert await ids() == ["c4", "c3", "c2", "c1"]
    assert await ids(agent="alice") == ["c3", "c1"]
    assert await ids(agent="bob") == ["c3", "c2"]
    assert await ids(agent="nobody") == []
    assert await ids(since=T0 + 20) == ["c4", "c3", "c2"]  # since is inclusive
    assert await ids(until=T0 + 30) == ["c2", "c1"]  # until is exclusive
    assert await ids(since=T0 + 15, until=T0 + 35, agent="alice") == ["c3"]


async def test_an_agent_joining_by_transfer_finds_the_call(store: CallRecordStore) -> None:
    await add_call(store, "c1", T0, "alice")
    await store.append("c1", CallAnswered(T0 + 1, "b0"))
    await store.append("c1", CallTransferred(T0 + 5, TransferMode.BLIND, "sip:carol@x", "b0"))
    await store.append("c1", leg(T0 + 5, "b9", "carol"))
    page = await store.list(agent="carol")
    assert [r.id for r in page.records] == ["c1"]
    assert page.records[0].agents == ("alice", "carol")


async def test_cursor_pages_cover_every_record_once_even_with_ties_and_new_calls(
    store: CallRecordStore,
) -> None:
    # 25 calls over 5 distinct start times: ties must be broken by id, not dropped.
    expected = []
    for index in range(25):
        call_id = f"c{index:02d}"
        await add_call(store, call_id, T0 + index // 5)
        expected.append((T0 + index // 5, call_id))
    expected.sort(reverse=True)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await store.list(limit=4, cursor=cursor)
        seen.extend(r.id for r in page.records)
        pages += 1
        if pages == 2:
            await add_call(store, "newer", T0 + 100)  # sorts before any cursor: not seen
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == [cid for _, cid in expected]
    assert pages == 7  # 6 full pages of 4 and one of 1


async def test_exact_page_boundary_has_no_next_cursor(store: CallRecordStore) -> None:
    for index in range(3):
        await add_call(store, f"c{index}", T0 + index)
    page = await store.list(limit=3)
    assert len(page.records) == 3 and page.next_cursor is None


async def test_limit_and_cursor_are_checked(store: CallRecordStore) -> None:
    for limit in (0, 1001):
        with pytest.raises(ValueError, match="limit"):
            await store.list(limit=limit)
    for cursor in ("", "!!", encode_cursor((1.0, "x"))[:-2], "WzEsMl0"):
        with pytest.raises(ValueError, match="cursor"):
            await store.list(cursor=cursor)


async def test_concurrent_appends_to_one_call_lose_nothing(store: CallRecordStore) -> None:
    await store.append("c1", offered(T0))
    await asyncio.gather(*(store.append("c1", leg(T0 + 1, f"b{i}", f"a{i}")) for i in range(20)))
    record = await store.get("c1")
    assert record is not None
    assert sorted(leg.id for leg in record.legs) == sorted(["a", *(f"b{i}" for i in range(20))])


def test_cursor_round_trip() -> None:
    assert decode_cursor(encode_cursor((T0 + 0.125, "call/é"))) == (T0 + 0.125, "call/é")


# --- embedded: survives a restart ------------------------------------------------------


async def test_memory_records_survive_a_restart(tmp_path: Path) -> None:
    first = await MemoryCallRecordStore.open(tmp_path)
    await add_call(first, "c1", T0, "alice")
    await first.append("c1", CallAnswered(T0 + 3, "b0"))
    await first.append("c1", CallEnded(T0 + 10, EndReason.CALLER_BYE))
    await add_call(first, "c2", T0 + 1, "bob")
    await first.flush()
    await first.append("c2", CallEnded(T0 + 2, EndReason.CANCELLED))  # written by close()
    before = [await first.get("c1"), await first.get("c2")]
    await first.close()

    second = await MemoryCallRecordStore.open(tmp_path)
    try:
        assert [await second.get("c1"), await second.get("c2")] == before
        assert [r.id for r in (await second.list(agent="alice")).records] == ["c1"]
        assert [r.id for r in (await second.list()).records] == ["c2", "c1"]
        record = await second.get("c1")
        assert record is not None and record.talk_seconds == 7.0
        # The reopened store keeps appending to restored calls.
        resumed = await second.append("c1", WrapUpEnded(T0 + 40))
        assert resumed.wrap_up_seconds == 30.0
        assert await second.count() == 2
    finally:
        await second.close()


async def test_memory_flusher_writes_in_the_background(tmp_path: Path) -> None:
    store = await MemoryCallRecordStore.open(tmp_path)
    task = asyncio.create_task(store.run_flusher(interval=0.01))
    try:
        await add_call(store, "c1", T0)
        reopened: list[str] = []
        async with asyncio.timeout(5):
            while not reopened:
                probe = await MemoryCallRecordStore.open(tmp_path)
                reopened = [r.id for r in (await probe.list()).records]
                await probe.close()
                await asyncio.sleep(0.01)
        assert reopened == ["c1"]
    finally:
        task.cancel()
        await store.close()


# --- Redis: several nodes, bounded failure ----------------------------------------------


async def test_two_redis_nodes_append_to_one_call(redis_url: str) -> None:
    node_a = await RedisCallRecordStore.connect(redis_url, timeout=5.0)
    node_b = await RedisCallRecordStore.connect(redis_url, timeout=5.0)
    try:
        await node_a.append("c1", offered(T0))
        await asyncio.gather(
            *(
                (node_a if i % 2 else node_b).append("c1", leg(T0 + 1, f"b{i}", "alice"))
                for i in range(30)
            )
        )
        record = await node_b.get("c1")
        assert record is not None and len(record.legs) == 31
        assert [r.id for r in (await node_a.list(agent="alice")).records] == ["c1"]
    finally:
        await node_a.close()
        await node_b.close()


async def test_redis_unreachable_is_store_unavailable_within_the_timeout() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with asyncio.timeout(5):
        with pytest.raises(StoreUnavailable):
            await RedisCallRecordStore.connect(f"redis://127.0.0.1:{port}/0", timeout=0.5)
