"""The embedded store's SQLite journal: a restart loses no binding."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from ucgate.store import Binding, MemoryLocationStore, StoreUnavailable, UpdateFn
from ucgate.store.sqlite_journal import FILENAME

T0 = 1_700_000_000.0


def mk(aor: str, contact: str, expires_at: float, **extra: Any) -> Binding:
    return Binding(
        aor=aor,
        contact=contact,
        expires_at=expires_at,
        call_id="c1@192.0.2.1",
        cseq=7,
        source="tcp:192.0.2.1:5060",
        node_id="n1",
        registered_at=T0,
        **extra,
    )


def put(*new: Binding) -> UpdateFn:
    contacts = {b.contact for b in new}
    return lambda live: [b for b in live if b.contact not in contacts] + list(new)


async def open_store(data_dir: Path, now: float = T0) -> MemoryLocationStore:
    return await MemoryLocationStore.open(node_id="n1", data_dir=data_dir, now=now)


def rows(data_dir: Path) -> dict[str, str]:
    with sqlite3.connect(data_dir / FILENAME) as db:
        return dict(db.execute("SELECT aor, bindings FROM aor_bindings").fetchall())


async def test_reopen_restores_every_live_binding(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    alice = [
        mk("sip:alice@example.test", "sip:alice@192.0.2.1", T0 + 3600, q=0.5),
        mk(
            "sip:alice@example.test",
            "sip:alice@192.0.2.2;ob",
            T0 + 1800,
            flow="tcp-3",
            instance_id='"<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>"',
            reg_id=1,
            user_agent="Phone/1.0 ünïcode",
            path=("<sip:edge.example.test;lr>",),
        ),
    ]
    bob = mk("sip:bob@example.test", "sip:bob@192.0.2.3", T0 + 60)
    await store.update("sip:alice@example.test", put(*alice), T0)
    await store.update("sip:bob@example.test", put(bob), T0)
    await store.flush()
    await store.close()

    again = await open_store(tmp_path, now=T0 + 1)
    try:
        assert await again.lookup("sip:alice@example.test", T0 + 1) == [alice[1], alice[0]]
        assert await again.lookup("sip:bob@example.test", T0 + 1) == [bob]
        assert await again.count() == 3
        assert await again.next_expiry() == T0 + 60
    finally:
        await again.close()


async def test_bindings_expired_while_down_are_dropped_on_load(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    short = mk("sip:alice@example.test", "sip:a@192.0.2.1", T0 + 10)
    long = mk("sip:alice@example.test", "sip:b@192.0.2.2", T0 + 100)
    gone = mk("sip:bob@example.test", "sip:b@192.0.2.3", T0 + 10)
    await store.update(short.aor, put(short, long), T0)
    await store.update(gone.aor, put(gone), T0)
    await store.close()

    again = await open_store(tmp_path, now=T0 + 50)
    try:
        assert await again.count() == 1
        assert await again.aors() == ["sip:alice@example.test"]
        assert await again.expire(T0 + 50) == []
        # Dropping them also cleans the file at the next flush.
        await again.flush()
        assert set(rows(tmp_path)) == {"sip:alice@example.test"}
    finally:
        await again.close()


async def test_close_flushes_pending_changes(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    binding = mk("sip:alice@example.test", "sip:a@192.0.2.1", T0 + 100)
    await store.update(binding.aor, put(binding), T0)
    assert rows(tmp_path) == {}  # write-behind: nothing on disk yet
    await store.close()
    assert set(rows(tmp_path)) == {binding.aor}


async def test_removals_and_sweeps_reach_the_file(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    a = mk("sip:alice@example.test", "sip:a@192.0.2.1", T0 + 100)
    b = mk("sip:bob@example.test", "sip:b@192.0.2.2", T0 + 10)
    await store.update(a.aor, put(a), T0)
    await store.update(b.aor, put(b), T0)
    await store.flush()
    assert set(rows(tmp_path)) == {a.aor, b.aor}

    await store.update(a.aor, lambda live: [], T0 + 1)
    assert await store.expire(T0 + 10) == [b]
    await store.flush()
    assert rows(tmp_path) == {}
    await store.close()


async def test_flusher_task_writes_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = await open_store(tmp_path)
    flushed = asyncio.Event()
    original = store.flush

    async def observed_flush() -> None:
        await original()
        if rows(tmp_path):
            flushed.set()

    monkeypatch.setattr(store, "flush", observed_flush)
    task = asyncio.create_task(store.run_flusher(interval=0.01))
    try:
        binding = mk("sip:alice@example.test", "sip:a@192.0.2.1", T0 + 100)
        await store.update(binding.aor, put(binding), T0)
        async with asyncio.timeout(5):
            await flushed.wait()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await store.close()
    assert set(rows(tmp_path)) == {"sip:alice@example.test"}


async def test_a_corrupt_row_costs_one_aor_not_the_start(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    good = mk("sip:alice@example.test", "sip:a@192.0.2.1", T0 + 100)
    await store.update(good.aor, put(good), T0)
    await store.close()
    with sqlite3.connect(tmp_path / FILENAME) as db:
        db.execute("INSERT INTO aor_bindings VALUES ('sip:bad@example.test', '{not json')")
        db.execute("INSERT INTO aor_bindings VALUES ('sip:odd@example.test', '[{\"c\":1}]')")

    again = await open_store(tmp_path)
    try:
        assert await again.aors() == [good.aor]
    finally:
        await again.close()


async def test_unusable_data_dir_raises_store_unavailable(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(StoreUnavailable):
        await open_store(not_a_dir)


async def test_a_failed_flush_keeps_the_changes_for_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await open_store(tmp_path)
    binding = mk("sip:alice@example.test", "sip:a@192.0.2.1", T0 + 100)
    await store.update(binding.aor, put(binding), T0)
    journal = store._journal
    assert journal is not None
    real_write = journal.write

    def failing_write(changes: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(journal, "write", failing_write)
    with pytest.raises(StoreUnavailable, match="disk I/O error"):
        await store.flush()
    monkeypatch.setattr(journal, "write", real_write)
    await store.close()
    assert set(rows(tmp_path)) == {binding.aor}


async def test_pure_memory_store_writes_nothing(tmp_path: Path) -> None:
    store = await MemoryLocationStore.open(node_id="n1", data_dir=None, now=T0)
    binding = mk("sip:alice@example.test", "sip:a@192.0.2.1", T0 + 100)
    await store.update(binding.aor, put(binding), T0)
    await store.flush()
    await store.close()
    assert list(tmp_path.iterdir()) == []
