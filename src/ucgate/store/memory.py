"""The embedded location store: dicts in this process, journalled to SQLite behind the writes.

Atomicity: every method body except ``flush``/``close``/``run_flusher`` runs without an
``await``, so on one event loop an update's read-modify-write cannot interleave with another
call and no per-AOR lock is needed. The embedded backend serves one node; several nodes share
bindings through the Redis backend.

Expiry: a min-heap of ``(expires_at, aor, contact)`` with lazy deletion. Refreshing a binding
pushes a new entry and leaves the old one in place; an entry whose binding is gone or whose
``expires_at`` no longer matches is discarded when it reaches the top. The heap is rebuilt when
stale entries outnumber live ones, so it stays O(bindings).

Persistence (write-behind): changes only mark their AOR dirty. :meth:`flush` writes the dirty
AORs in one SQLite transaction on a worker thread. The application runs
:meth:`run_flusher` as a task (every 200 ms by default), cancels it at shutdown and then calls
:meth:`close`, which flushes what is left. A crash of the process therefore loses at most one
flush interval of changes, which phones repair with their next REGISTER.
"""

from __future__ import annotations

import asyncio
import heapq
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path

import structlog

from ucgate.store.location import (
    Binding,
    StoreUnavailable,
    UpdateFn,
    check_update_result,
    sort_bindings,
)
from ucgate.store.sqlite_journal import SqliteJournal
from ucgate.store.write_behind import WriteBehind

log = structlog.get_logger(__name__)

_HeapEntry = tuple[float, str, str]


class MemoryLocationStore:
    """In-process bindings with an optional SQLite journal (``data_dir=None``: none)."""

    def __init__(self, *, node_id: str, journal: SqliteJournal | None = None) -> None:
        self.node_id = node_id
        self._journal = journal
        self._aors: dict[str, dict[str, Binding]] = {}
        self._heap: list[_HeapEntry] = []
        self._count = 0
        self._wb: WriteBehind[str] = WriteBehind(
            "location", self._snapshot, journal.close if journal is not None else None
        )

    @classmethod
    async def open(cls, *, node_id: str, data_dir: Path | None, now: float) -> MemoryLocationStore:
        """Open the store, loading the journal in ``data_dir`` if there is one.

        Bindings already expired at ``now`` are dropped, and their AORs marked dirty so the
        next flush removes them from the file too.
        """
        if data_dir is None:
            return cls(node_id=node_id)
        try:
            journal = await asyncio.to_thread(SqliteJournal.in_dir, data_dir)
            stored = await asyncio.to_thread(journal.load)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"location journal in {data_dir}: {exc}") from exc
        store = cls(node_id=node_id, journal=journal)
        dropped = store._load(stored, now)
        log.info("location.loaded", path=str(journal.path), bindings=store._count, dropped=dropped)
        return store

    def _load(self, stored: dict[str, list[Binding]], now: float) -> int:
        dropped = 0
        for aor, bindings in stored.items():
            live = {b.contact: b for b in bindings if b.expires_at > now}
            dropped += len(bindings) - len(live)
            if len(live) != len(bindings):
                self._wb.mark(aor)
            if live:
                self._aors[aor] = live
                self._count += len(live)
                self._heap.extend((b.expires_at, aor, b.contact) for b in live.values())
        heapq.heapify(self._heap)
        return dropped

    async def lookup(self, aor: str, now: float) -> list[Binding]:
        return sort_bindings(b for b in self._aors.get(aor, {}).values() if b.expires_at > now)

    async def update(self, aor: str, fn: UpdateFn, now: float) -> list[Binding]:
        current = self._aors.get(aor, {})
        live = sort_bindings(b for b in current.values() if b.expires_at > now)
        result = list(fn(live))  # may raise: nothing has been touched yet
        check_update_result(aor, result, now)
        # Expired-but-uncollected bindings stay so expire() still reports them once.
        new = {c: b for c, b in current.items() if b.expires_at <= now}
        for binding in result:
            old = current.get(binding.contact)
            if old is None or old.expires_at != binding.expires_at:
                heapq.heappush(self._heap, (binding.expires_at, aor, binding.contact))
            new[binding.contact] = binding
        self._count += len(new) - len(current)
        if new:
            self._aors[aor] = new
        else:
            self._aors.pop(aor, None)
        self._wb.mark(aor)
        self._maybe_compact()
        return sort_bindings(result)

    async def expire(self, now: float) -> list[Binding]:
        removed: list[Binding] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            expires_at, aor, contact = heapq.heappop(heap)
            bindings = self._aors.get(aor)
            binding = bindings.get(contact) if bindings is not None else None
            if bindings is None or binding is None or binding.expires_at != expires_at:
                continue  # stale heap entry: refreshed or removed since it was pushed
            del bindings[contact]
            if not bindings:
                del self._aors[aor]
            self._count -= 1
            self._wb.mark(aor)
            removed.append(binding)
        return removed

    async def next_expiry(self) -> float | None:
        heap = self._heap
        while heap and not self._is_current(heap[0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    async def count(self) -> int:
        return self._count

    async def aors(self) -> list[str]:
        return sorted(self._aors)

    async def flush(self) -> None:
        await self._wb.flush()

    async def run_flusher(self, interval: float = 0.2) -> None:
        """Flush every ``interval`` seconds until cancelled; a failed flush is retried."""
        await self._wb.run_flusher(interval, self.flush)

    def _snapshot(self, dirty: set[str]) -> Callable[[], None]:
        # Bindings are frozen and these tuples are fresh, so the worker thread reads a
        # consistent snapshot while the loop keeps mutating the dicts.
        snapshot = {aor: tuple(self._aors.get(aor, {}).values()) for aor in dirty}
        journal = self._journal
        assert journal is not None
        return lambda: journal.write(snapshot)

    async def close(self) -> None:
        await self._wb.close()
        self._journal = None

    def _is_current(self, entry: _HeapEntry) -> bool:
        expires_at, aor, contact = entry
        binding = self._aors.get(aor, {}).get(contact)
        return binding is not None and binding.expires_at == expires_at

    def _maybe_compact(self) -> None:
        # Lazy deletion lets stale entries pile up under frequent refreshes; rebuild from the
        # live dicts once they are the majority (amortised O(1) per update).
        if len(self._heap) > 2 * self._count + 1024:
            self._heap = list(_entries(self._aors))
            heapq.heapify(self._heap)


def _entries(aors: dict[str, dict[str, Binding]]) -> Iterable[_HeapEntry]:
    for aor, bindings in aors.items():
        for binding in bindings.values():
            yield (binding.expires_at, aor, binding.contact)
