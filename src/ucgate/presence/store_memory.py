"""The embedded presence store: dicts in this process, journalled to SQLite behind the writes.

Atomicity: :meth:`MemoryPresenceStore.update` runs without an ``await``, so on one event
loop its read-modify-write cannot interleave with another call and no lock is needed. This
backend serves one node; several nodes share presence through the Redis backend.

Change log: a ``deque`` of the last ``change_log_size`` changes. ``_floor`` is the oldest
version a consumer may resume from: the version of the last change evicted from the deque,
or, after a restart, the version counter at load time (the log itself is not persisted, so
a client that saw a version before the restart must take a snapshot).

Persistence (write-behind, as :mod:`ucgate.store.memory` does for bindings): an update only
marks its agent dirty; :meth:`flush` writes the dirty agents' sources and documents and the
version counter in one SQLite transaction on a worker thread. The application runs
:meth:`run_flusher` as a task and calls :meth:`close` at shutdown. A crash loses at most one
flush interval. What must survive is the manual status, interactions, publications and the
version counter (versions must never go back, or resuming clients would miss changes);
devices are rebuilt from the location store at start-up anyway.

Journal file ``presence.sqlite3`` in ``data_dir``:
``presence_agents(agent TEXT PRIMARY KEY, sources TEXT, document TEXT)`` (the JSON forms of
:class:`AgentSources` and :class:`PresenceDocument`) and ``presence_meta(key, value)`` with
the row ``('version', <counter>)``.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import sqlite3
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import structlog

from ucgate.presence.model import AgentSources, PresenceDocument
from ucgate.presence.store import (
    DEFAULT_MAX_PENDING,
    ChangeFanout,
    ChangeSubscription,
    ComposeFn,
    PresenceChange,
    StoreUnavailable,
    UpdateFn,
)
from ucgate.store.sqlite_file import SqliteFile
from ucgate.store.write_behind import WriteBehind

log = structlog.get_logger(__name__)

FILENAME = "presence.sqlite3"
_SCHEMA_VERSION = 1
DEFAULT_CHANGE_LOG_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class _Row:
    sources: AgentSources
    document: PresenceDocument


@dataclass(frozen=True, slots=True)
class _Loaded:
    version: int
    rows: dict[str, _Row]


class PresenceJournal:
    """A blocking SQLite file with every agent's sources and document and the counter.

    Called from a worker thread (``asyncio.to_thread``); a lock serialises writers because a
    cancelled flush leaves its thread running while the next one may start.
    """

    def __init__(self, path: Path) -> None:
        self._file = SqliteFile(
            path,
            name="presence",
            version=_SCHEMA_VERSION,
            schema=[
                "CREATE TABLE IF NOT EXISTS presence_agents ("
                " agent TEXT PRIMARY KEY, sources TEXT NOT NULL, document TEXT NOT NULL)"
                " WITHOUT ROWID",
                "CREATE TABLE IF NOT EXISTS presence_meta ("
                " key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
            ],
        )
        self.path = path

    @classmethod
    def in_dir(cls, data_dir: Path) -> PresenceJournal:
        return cls(SqliteFile.in_dir(data_dir, FILENAME))

    def load(self) -> _Loaded:
        """Everything stored. A row that does not parse is logged and skipped: the agent
        starts from empty sources rather than the whole service failing to start."""
        found = self._file.query("SELECT value FROM presence_meta WHERE key = 'version'")
        raw = self._file.query("SELECT agent, sources, document FROM presence_agents")
        counter = int(found[0][0]) if found else 0
        out: dict[str, _Row] = {}
        for agent, sources_text, document_text in raw:
            try:
                sources = AgentSources.from_json_dict(json.loads(sources_text))
                document = PresenceDocument.from_json_dict(json.loads(document_text))
            except (ValueError, TypeError) as exc:  # PresenceDataError, JSONDecodeError
                log.warning("presence.journal_row_skipped", agent=agent, error=str(exc))
                continue
            out[agent] = _Row(sources, document)
            # A counter older than a document it produced would reuse versions.
            counter = max(counter, document.version)
        return _Loaded(counter, out)

    def write(self, version: int, rows: Mapping[str, _Row]) -> None:
        items = [
            (agent, _dumps(row.sources.to_json_dict()), _dumps(row.document.to_json_dict()))
            for agent, row in rows.items()
        ]

        def steps(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO presence_agents (agent, sources, document) VALUES (?, ?, ?)"
                " ON CONFLICT(agent) DO UPDATE SET"
                " sources = excluded.sources, document = excluded.document",
                items,
            )
            db.execute(
                "INSERT INTO presence_meta (key, value) VALUES ('version', ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (version,),
            )

        self._file.transaction(steps)

    def close(self) -> None:
        self._file.close()


class MemoryPresenceStore:
    """In-process presence with an optional SQLite journal (no journal: pure memory)."""

    def __init__(
        self,
        *,
        change_log_size: int = DEFAULT_CHANGE_LOG_SIZE,
        max_pending: int = DEFAULT_MAX_PENDING,
        journal: PresenceJournal | None = None,
    ) -> None:
        if change_log_size < 1:
            raise ValueError("change_log_size must be at least 1")
        self._journal = journal
        self._rows: dict[str, _Row] = {}
        self._version = 0
        self._floor = 0
        self._log: deque[PresenceChange] = deque(maxlen=change_log_size)
        self._fanout = ChangeFanout(max_pending=max_pending)
        self._wb: WriteBehind[str] = WriteBehind(
            "presence", self._snapshot, journal.close if journal is not None else None
        )

    @classmethod
    async def open(
        cls,
        *,
        data_dir: Path | None,
        change_log_size: int = DEFAULT_CHANGE_LOG_SIZE,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> MemoryPresenceStore:
        """Open the store, loading ``data_dir/presence.sqlite3`` if ``data_dir`` is given."""
        if data_dir is None:
            return cls(change_log_size=change_log_size, max_pending=max_pending)
        try:
            journal = await asyncio.to_thread(PresenceJournal.in_dir, data_dir)
            loaded = await asyncio.to_thread(journal.load)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"presence journal in {data_dir}: {exc}") from exc
        store = cls(change_log_size=change_log_size, max_pending=max_pending, journal=journal)
        store._rows = loaded.rows
        store._version = store._floor = loaded.version
        store._fanout.last_version = loaded.version
        log.info(
            "presence.loaded",
            path=str(journal.path),
            agents=len(loaded.rows),
            version=loaded.version,
        )
        return store

    async def update(
        self, agent: str, fn: UpdateFn, *, compose: ComposeFn, now: float
    ) -> PresenceChange | None:
        # No await until the end: this read-modify-write is atomic on the event loop.
        row = self._rows.get(agent)
        sources = fn(row.sources if row is not None else AgentSources(agent))
        if sources.agent != agent:
            raise ValueError(f"sources of {sources.agent!r} stored under {agent!r}")
        document = compose(sources)
        self._wb.mark(agent)
        if row is not None and document.same_content(row.document):
            self._rows[agent] = _Row(sources, row.document)
            return None
        self._version += 1
        document = replace(document, version=self._version, updated_at=now)
        self._rows[agent] = _Row(sources, document)
        change = PresenceChange(self._version, agent, document, now)
        if len(self._log) == self._log.maxlen:
            self._floor = self._log[0].version
        self._log.append(change)
        self._fanout.publish(change)
        return change

    async def get(self, agent: str) -> PresenceDocument | None:
        row = self._rows.get(agent)
        return row.document if row is not None else None

    async def sources(self, agent: str) -> AgentSources | None:
        row = self._rows.get(agent)
        return row.sources if row is not None else None

    async def list(self) -> list[PresenceDocument]:
        return [self._rows[agent].document for agent in sorted(self._rows)]

    async def current_version(self) -> int:
        return self._version

    async def changes_since(self, version: int) -> builtins.list[PresenceChange] | None:
        if version < self._floor or version > self._version:
            return None
        if version == self._version:
            return []
        # Versions in the log are consecutive, so the first wanted one is at a known index.
        start = version + 1 - self._log[0].version
        return [self._log[i] for i in range(start, len(self._log))]

    def subscribe(self, max_pending: int | None = None) -> ChangeSubscription:
        return self._fanout.subscribe(max_pending)

    async def flush(self) -> None:
        await self._wb.flush()

    async def run_flusher(self, interval: float = 0.2) -> None:
        """Flush every ``interval`` seconds until cancelled; a failed flush is retried."""
        await self._wb.run_flusher(interval, self.flush)

    def _snapshot(self, dirty: set[str]) -> Callable[[], None]:
        # Rows are frozen, so the worker thread reads a consistent snapshot while the
        # loop goes on replacing them.
        snapshot = {agent: self._rows[agent] for agent in dirty if agent in self._rows}
        version = self._version
        journal = self._journal
        assert journal is not None
        return lambda: journal.write(version, snapshot)

    async def close(self) -> None:
        self._fanout.close()
        await self._wb.close()
        self._journal = None


def _dumps(data: object) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)
