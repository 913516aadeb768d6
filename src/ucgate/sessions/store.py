"""Where sessions live: the store protocol and the embedded (memory + SQLite) backend.

Every backend orders sessions newest first by ``(created_at, id)`` and pages with the
opaque cursor of :mod:`ucgate.calls.record_store` (a page boundary never skips or
repeats a session while new ones arrive).

``update`` is atomic per session: the read, the caller's pure function (a
:class:`~ucgate.sessions.model.Session` method, which raises
:class:`~ucgate.sessions.model.SessionError` to refuse) and the write are one step, so
two legs of a call and an agent's desktop reporting at once cannot lose a change. A
refused update stores nothing.

Secondary lookups serve sticky voice (issue 5): the *open* sessions by customer phone
number and by PIN. A PIN is unique among open sessions: :meth:`SessionStore.create`
raises :class:`PinTaken` when it is not, and the service draws another.

The embedded backend journals to ``sessions.sqlite3`` in ``data_dir`` write-behind (as
the location and call-record stores): a clean shutdown loses nothing, a crash at most
one flush interval.
"""

from __future__ import annotations

import asyncio
import bisect
import builtins
import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from ucgate.calls.record_store import check_page_args, encode_cursor
from ucgate.sessions.model import Session, SessionError
from ucgate.store.location import StoreUnavailable
from ucgate.store.sqlite_file import SqliteFile
from ucgate.store.write_behind import WriteBehind

__all__ = [
    "MemorySessionStore",
    "PinTaken",
    "SessionPage",
    "SessionStore",
    "SessionsJournal",
    "UnknownSession",
    "session_from_json",
    "session_to_json",
]

log = structlog.get_logger(__name__)

UpdateFn = Callable[[Session], Session]
_SortKey = tuple[float, str]


class UnknownSession(SessionError):
    def __init__(self, session_id: str) -> None:
        super().__init__(f"no session {session_id!r}", field="id", status=404)


class PinTaken(SessionError):
    def __init__(self, pin: str) -> None:
        super().__init__("PIN in use by another open session", field="pin", status=409)
        self.pin = pin


@dataclass(frozen=True, slots=True)
class SessionPage:
    sessions: list[Session]
    next_cursor: str | None


class SessionStore(Protocol):
    async def create(self, session: Session) -> None:
        """Store a new session; SessionError 409 if the id exists, PinTaken for its PIN."""
        ...

    async def update(self, session_id: str, fn: UpdateFn) -> Session:
        """Replace the session by ``fn(session)`` atomically; UnknownSession if absent."""
        ...

    async def get(self, session_id: str) -> Session | None: ...

    async def list(
        self,
        *,
        open_only: bool = True,
        agent: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> SessionPage:
        """Newest first; ``since <= created_at < until``; ``agent`` owns or handles a
        channel of the session. ValueError for a bad ``limit`` or ``cursor``."""
        ...

    async def find_open_by_phone(self, phone: str) -> Session | None:
        """The newest open session whose customer phone is ``phone``."""
        ...

    async def find_open_by_pin(self, pin: str) -> Session | None: ...

    async def close(self) -> None: ...


def session_to_json(session: Session) -> str:
    return json.dumps(session.to_json_dict(), separators=(",", ":"), ensure_ascii=False)


def session_from_json(text: str | bytes) -> Session:
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("a stored session must be a JSON object")
    try:
        return Session.from_json_dict(data)
    except SessionError as exc:
        raise ValueError(f"{exc.field}: {exc.message}") from None


def agents_of(session: Session) -> set[str]:
    """Every agent the session is listed under (owner and channel agents, past ones too)."""
    out = {session.agent} if session.agent else set()
    for ch in session.channels:
        out.update(t.agent for t in ch.timeline if t.agent)
    return out


def checked_update(current: Session, fn: UpdateFn) -> Session:
    new = fn(current)
    if new.id != current.id:
        raise SessionError("an update cannot change the session id", field="id", status=409)
    return new


# --- SQLite journal --------------------------------------------------------------------

FILENAME = "sessions.sqlite3"
_SCHEMA_VERSION = 1


class SessionsJournal:
    """A blocking SQLite file of sessions; called from a worker thread."""

    def __init__(self, path: Path) -> None:
        self._file = SqliteFile(
            path,
            name="sessions",
            version=_SCHEMA_VERSION,
            schema=[
                "CREATE TABLE IF NOT EXISTS sessions ("
                " id TEXT PRIMARY KEY, created_at REAL NOT NULL, session TEXT NOT NULL)"
                " WITHOUT ROWID"
            ],
        )
        self.path = path

    @classmethod
    def in_dir(cls, data_dir: Path) -> SessionsJournal:
        return cls(SqliteFile.in_dir(data_dir, FILENAME))

    def load(self) -> builtins.list[Session]:
        rows = self._file.query("SELECT id, session FROM sessions")
        out: list[Session] = []
        for session_id, text in rows:
            try:
                out.append(session_from_json(text))
            except ValueError as exc:
                log.warning("sessions.journal_row_skipped", session_id=session_id, error=str(exc))
        return out

    def write(self, sessions: Sequence[Session]) -> None:
        rows = [(s.id, s.created_at, session_to_json(s)) for s in sessions]
        self._file.transaction(
            lambda db: db.executemany(
                "INSERT INTO sessions (id, created_at, session) VALUES (?, ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET session = excluded.session",
                rows,
            )
        )

    def close(self) -> None:
        self._file.close()


# --- the embedded store ----------------------------------------------------------------


class MemorySessionStore:
    """Sessions in this process, journalled to SQLite when opened with a ``data_dir``.

    No ``await`` sits between a read and its write in :meth:`update`, which is what makes
    it atomic on one event loop.
    """

    def __init__(self, *, journal: SessionsJournal | None = None) -> None:
        self._journal = journal
        self._sessions: dict[str, Session] = {}
        self._index: list[_SortKey] = []
        self._open: set[str] = set()
        self._by_agent: dict[str, set[str]] = {}
        self._by_phone: dict[str, set[str]] = {}
        self._by_pin: dict[str, str] = {}
        self._wb: WriteBehind[str] = WriteBehind(
            "sessions", self._snapshot, journal.close if journal is not None else None
        )

    @classmethod
    async def open(cls, data_dir: Path | None) -> MemorySessionStore:
        if data_dir is None:
            return cls()
        try:
            journal = await asyncio.to_thread(SessionsJournal.in_dir, data_dir)
            stored = await asyncio.to_thread(journal.load)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"sessions journal in {data_dir}: {exc}") from exc
        store = cls(journal=journal)
        for session in stored:
            store._put(None, session)
        log.info("sessions.loaded", path=str(journal.path), sessions=len(stored))
        return store

    async def create(self, session: Session) -> None:
        if session.id in self._sessions:
            raise SessionError(f"session {session.id!r} exists", field="id", status=409)
        if session.pin is not None and not session.closed and session.pin in self._by_pin:
            raise PinTaken(session.pin)
        self._put(None, session)
        self._wb.mark(session.id)

    async def update(self, session_id: str, fn: UpdateFn) -> Session:
        current = self._sessions.get(session_id)
        if current is None:
            raise UnknownSession(session_id)
        new = checked_update(current, fn)
        self._put(current, new)
        self._wb.mark(session_id)
        return new

    def _put(self, old: Session | None, new: Session) -> None:
        if old is None:
            bisect.insort(self._index, (new.created_at, new.id))
        else:
            self._unindex_open(old)
        for agent in agents_of(new):
            self._by_agent.setdefault(agent, set()).add(new.id)
        if not new.closed:
            self._open.add(new.id)
            if new.customer.phone:
                self._by_phone.setdefault(new.customer.phone, set()).add(new.id)
            if new.pin:
                self._by_pin[new.pin] = new.id
        self._sessions[new.id] = new

    def _unindex_open(self, old: Session) -> None:
        self._open.discard(old.id)
        if old.customer.phone:
            ids = self._by_phone.get(old.customer.phone)
            if ids is not None:
                ids.discard(old.id)
                if not ids:
                    del self._by_phone[old.customer.phone]
        if old.pin and self._by_pin.get(old.pin) == old.id:
            del self._by_pin[old.pin]

    async def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    async def list(
        self,
        *,
        open_only: bool = True,
        agent: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> SessionPage:
        after = check_page_args(limit, cursor)
        lo = 0 if since is None else bisect.bisect_left(self._index, (since, ""))
        hi = len(self._index) if until is None else bisect.bisect_left(self._index, (until, ""))
        if after is not None:
            hi = min(hi, bisect.bisect_left(self._index, after))
        keys: Iterable[_SortKey]
        if agent is not None:
            # An agent's own sessions (the routing service asks on every offer): walk only
            # those, not every session ever created. Same window as the index slice below.
            ids = self._by_agent.get(agent, set())
            if open_only:
                ids = ids & self._open
            if lo >= hi:
                keys = []
            else:
                lower = self._index[lo]
                upper = self._index[hi] if hi < len(self._index) else None
                keys = sorted(
                    (
                        key
                        for key in ((self._sessions[i].created_at, i) for i in ids)
                        if lower <= key and (upper is None or key < upper)
                    ),
                    reverse=True,
                )
        else:
            keys = (self._index[i] for i in range(hi - 1, lo - 1, -1))
        out: list[Session] = []
        last: _SortKey | None = None
        more = False
        for key in keys:
            sid = key[1]
            if open_only and sid not in self._open:
                continue
            if len(out) == limit:
                more = True
                break
            out.append(self._sessions[sid])
            last = key
        return SessionPage(out, encode_cursor(last) if more and last is not None else None)

    async def find_open_by_phone(self, phone: str) -> Session | None:
        ids = self._by_phone.get(phone)
        if not ids:
            return None
        return max((self._sessions[i] for i in ids), key=lambda s: (s.created_at, s.id))

    async def find_open_by_pin(self, pin: str) -> Session | None:
        sid = self._by_pin.get(pin)
        return None if sid is None else self._sessions[sid]

    async def flush(self) -> None:
        await self._wb.flush()

    async def run_flusher(self, interval: float = 0.2) -> None:
        await self._wb.run_flusher(interval, self.flush)

    def _snapshot(self, dirty: set[str]) -> Callable[[], None]:
        snapshot = [self._sessions[sid] for sid in dirty]
        journal = self._journal
        assert journal is not None
        return lambda: journal.write(snapshot)

    async def close(self) -> None:
        await self._wb.close()
        self._journal = None
