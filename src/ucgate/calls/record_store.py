"""Where call records live: the store protocol and the embedded (memory + SQLite) backend.

Every backend orders records newest first by ``(started_at, id)`` and pages with an opaque
cursor naming the last record of the previous page, so a page boundary never skips or
repeats a record even when new calls arrive between requests (they sort before the cursor).

``append`` is atomic per call: the read of the current record, :meth:`CallRecord.apply`
and the write happen as one step, so two legs of one call reporting at once cannot lose
an event. An event the record refuses raises :class:`CallRecordError` and stores nothing.

The embedded backend (:class:`MemoryCallRecordStore`) keeps records in dicts with sorted
indexes and journals them to ``calls.sqlite3`` in ``data_dir``, write-behind like the
location store (:mod:`ucgate.store.memory`): changes mark their call dirty, :meth:`flush`
writes the dirty ones in one transaction on a worker thread, :meth:`run_flusher` flushes
periodically and :meth:`close` flushes the rest. Records therefore survive a restart; a
crash loses at most one flush interval. Its method bodies other than flush/close contain
no ``await`` between read and write, which is what makes ``append`` atomic on one loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import builtins
import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from ucgate.calls.records import CallEvent, CallOffered, CallRecord, CallRecordError
from ucgate.store.location import StoreUnavailable
from ucgate.store.sqlite_file import SqliteFile
from ucgate.store.write_behind import WriteBehind

__all__ = [
    "MAX_PAGE",
    "CallPage",
    "CallRecordStore",
    "CallsJournal",
    "MemoryCallRecordStore",
    "decode_cursor",
    "encode_cursor",
    "record_from_json",
    "record_to_json",
]

log = structlog.get_logger(__name__)

MAX_PAGE = 1000
_SortKey = tuple[float, str]


@dataclass(frozen=True, slots=True)
class CallPage:
    records: list[CallRecord]
    # Pass as ``cursor`` to get the next (older) page; None on the last page.
    next_cursor: str | None


class CallRecordStore(Protocol):
    async def append(self, call_id: str, event: CallEvent) -> CallRecord:
        """Apply ``event`` to call ``call_id`` (an ``offered`` event creates it)."""
        ...

    async def get(self, call_id: str) -> CallRecord | None: ...

    async def list(
        self,
        *,
        agent: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> CallPage:
        """Newest first; ``since <= started_at < until``; ``agent`` had a leg in the call.

        ValueError for a ``limit`` outside 1..MAX_PAGE or a malformed ``cursor``.
        """
        ...

    async def close(self) -> None: ...


def encode_cursor(key: _SortKey) -> str:
    raw = json.dumps([key[0], key[1]], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> _SortKey:
    """The sort key inside ``cursor``; ValueError when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        started_at, call_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise ValueError("not a cursor from this API") from None
    if (
        isinstance(started_at, bool)
        or not isinstance(started_at, int | float)
        or not isinstance(call_id, str)
    ):
        raise ValueError("not a cursor from this API")
    return float(started_at), call_id


def check_page_args(limit: int, cursor: str | None) -> _SortKey | None:
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE}")
    return None if cursor is None else decode_cursor(cursor)


def record_to_json(record: CallRecord) -> str:
    """The stored form: the id, the start (for indexes) and the events; nothing derived."""
    data = record.to_json_dict()
    stored = {"id": data["id"], "events": data["events"]}
    return json.dumps(stored, separators=(",", ":"), ensure_ascii=False)


def record_from_json(text: str | bytes) -> CallRecord:
    data = json.loads(text)
    if not isinstance(data, Mapping):
        raise ValueError("a stored call record must be a JSON object")
    return CallRecord.from_json_dict(data)


def next_record(current: CallRecord | None, call_id: str, event: CallEvent) -> CallRecord:
    """The pure step every backend's ``append`` performs."""
    if current is None:
        if not isinstance(event, CallOffered):
            raise CallRecordError(f"no call {call_id!r} ('{event.TYPE}' before 'offered')")
        return CallRecord.start(call_id, event)
    return current.apply(event)


# --- SQLite journal --------------------------------------------------------------------

FILENAME = "calls.sqlite3"
_SCHEMA_VERSION = 1


class CallsJournal:
    """A blocking SQLite file of call records (:class:`SqliteFile`); called from a
    worker thread."""

    def __init__(self, path: Path) -> None:
        self._file = SqliteFile(
            path,
            name="calls",
            version=_SCHEMA_VERSION,
            schema=[
                "CREATE TABLE IF NOT EXISTS call_records ("
                " id TEXT PRIMARY KEY, started_at REAL NOT NULL, record TEXT NOT NULL)"
                " WITHOUT ROWID"
            ],
        )
        self.path = path

    @classmethod
    def in_dir(cls, data_dir: Path) -> CallsJournal:
        return cls(SqliteFile.in_dir(data_dir, FILENAME))

    def load(self) -> builtins.list[CallRecord]:
        """Every stored record; a row that does not decode is logged and skipped."""
        rows = self._file.query("SELECT id, record FROM call_records")
        out: list[CallRecord] = []
        for call_id, text in rows:
            try:
                out.append(record_from_json(text))
            except ValueError as exc:
                log.warning("calls.journal_row_skipped", call_id=call_id, error=str(exc))
        return out

    def write(self, records: Sequence[CallRecord]) -> None:
        rows = [(r.id, r.started_at, record_to_json(r)) for r in records]
        self._file.transaction(
            lambda db: db.executemany(
                "INSERT INTO call_records (id, started_at, record) VALUES (?, ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET record = excluded.record",
                rows,
            )
        )

    def close(self) -> None:
        self._file.close()


# --- the embedded store ----------------------------------------------------------------


class MemoryCallRecordStore:
    """Records in this process, journalled to SQLite when opened with a ``data_dir``."""

    def __init__(self, *, journal: CallsJournal | None = None) -> None:
        self._journal = journal
        self._records: dict[str, CallRecord] = {}
        # Sorted ascending by (started_at, id); lists are read backwards (newest first).
        self._index: list[_SortKey] = []
        self._by_agent: dict[str, list[_SortKey]] = {}
        self._wb: WriteBehind[str] = WriteBehind(
            "calls", self._snapshot, journal.close if journal is not None else None
        )

    @classmethod
    async def open(cls, data_dir: Path | None) -> MemoryCallRecordStore:
        if data_dir is None:
            return cls()
        try:
            journal = await asyncio.to_thread(CallsJournal.in_dir, data_dir)
            stored = await asyncio.to_thread(journal.load)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"calls journal in {data_dir}: {exc}") from exc
        store = cls(journal=journal)
        for record in stored:
            store._put(None, record)
        log.info("calls.loaded", path=str(journal.path), records=len(stored))
        return store

    async def append(self, call_id: str, event: CallEvent) -> CallRecord:
        current = self._records.get(call_id)
        record = next_record(current, call_id, event)
        self._put(current, record)
        self._wb.mark(call_id)
        return record

    def _put(self, old: CallRecord | None, record: CallRecord) -> None:
        key = (record.started_at, record.id)
        if old is None:
            bisect.insort(self._index, key)
        known = set() if old is None else set(old.agents)
        for agent in record.agents:
            if agent not in known:
                bisect.insort(self._by_agent.setdefault(agent, []), key)
        self._records[record.id] = record

    async def get(self, call_id: str) -> CallRecord | None:
        return self._records.get(call_id)

    async def list(
        self,
        *,
        agent: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> CallPage:
        after = check_page_args(limit, cursor)
        index = self._index if agent is None else self._by_agent.get(agent, [])
        # (x, "") sorts before every (x, id): so `until` is exclusive and `since` inclusive.
        lo = 0 if since is None else bisect.bisect_left(index, (since, ""))
        hi = len(index) if until is None else bisect.bisect_left(index, (until, ""))
        if after is not None:
            hi = min(hi, bisect.bisect_left(index, after))
        start = max(lo, hi - limit)
        keys = index[start:hi][::-1]
        records = [self._records[call_id] for _, call_id in keys]
        more = start > lo
        return CallPage(records, encode_cursor(keys[-1]) if more and keys else None)

    async def count(self) -> int:
        return len(self._records)

    async def flush(self) -> None:
        await self._wb.flush()

    async def run_flusher(self, interval: float = 0.2) -> None:
        """Flush every ``interval`` seconds until cancelled; a failed flush is retried."""
        await self._wb.run_flusher(interval, self.flush)

    def _snapshot(self, dirty: set[str]) -> Callable[[], None]:
        # Records are frozen: the worker thread reads a consistent snapshot.
        snapshot = [self._records[call_id] for call_id in dirty]
        journal = self._journal
        assert journal is not None
        return lambda: journal.write(snapshot)

    async def close(self) -> None:
        await self._wb.close()
        self._journal = None
