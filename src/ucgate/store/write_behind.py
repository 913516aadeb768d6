"""Write-behind persistence shared by the embedded (memory) stores.

The memory stores keep everything in dicts and mark what changed; this batches the
marked keys and writes them to a journal (SQLite) on a worker thread, so thousands of
updates per second cost one commit every ``interval`` instead of one each, and the
event loop never waits on the disk. A crash loses at most one interval; a clean
shutdown (``close``) loses nothing.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

import structlog

from ucgate.store.location import StoreUnavailable

log = structlog.get_logger(__name__)

K = TypeVar("K", bound=Hashable)


class WriteBehind(Generic[K]):
    """``snapshot(keys)`` runs on the loop and returns the write to run on a thread.

    The snapshot must copy what it needs (the stores' values are frozen, so taking
    references is enough) because the loop goes on changing the dicts meanwhile.
    """

    def __init__(
        self,
        name: str,
        snapshot: Callable[[set[K]], Callable[[], None]],
        close_journal: Callable[[], None] | None,
    ) -> None:
        """``close_journal=None``: nothing is persisted (pure memory; flush is a no-op)."""
        self.name = name
        self._snapshot = snapshot
        self._close_journal: Callable[[], None] | None = close_journal
        self._dirty: set[K] = set()
        self._lock = asyncio.Lock()

    def mark(self, key: K) -> None:
        self._dirty.add(key)

    @property
    def pending(self) -> int:
        return len(self._dirty)

    async def flush(self) -> None:
        async with self._lock:
            if self._close_journal is None or not self._dirty:
                return
            dirty, self._dirty = self._dirty, set()
            write = self._snapshot(dirty)
            try:
                await asyncio.to_thread(write)
            except sqlite3.Error as exc:
                self._dirty |= dirty
                raise StoreUnavailable(f"{self.name} journal write failed: {exc}") from exc
            except BaseException:
                # Cancelled: the thread may or may not have committed; write again next time.
                self._dirty |= dirty
                raise

    async def run_flusher(
        self, interval: float = 0.2, flush: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Flush every ``interval`` seconds until cancelled; a failed flush is retried.

        ``flush`` lets a store route the periodic flush through its own ``flush``."""
        do_flush = flush or self.flush
        while True:
            await asyncio.sleep(interval)
            try:
                await do_flush()
            except StoreUnavailable as exc:
                log.warning(f"{self.name}.flush_failed", error=str(exc))

    async def close(self) -> None:
        if self._close_journal is None:
            return
        await self.flush()
        close, self._close_journal = self._close_journal, None
        await asyncio.to_thread(close)
