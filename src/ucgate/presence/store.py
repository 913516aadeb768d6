"""The presence store port: agents' sources and documents, and a versioned change feed.

Backends: :mod:`ucgate.presence.store_memory` (one node, journalled to SQLite) and
:mod:`ucgate.presence.store_redis` (several nodes sharing one Redis).

Versions: every change of any agent's *document* gets the next version of one global,
strictly increasing counter (across all agents and, with Redis, all nodes). A consumer that
remembers the last version it saw can resume with :meth:`PresenceStore.changes_since`; when
the store has trimmed that far back it answers ``None`` and the consumer takes a snapshot
(:meth:`PresenceStore.list`) instead. An update whose composed document has the same content
as the stored one (:meth:`PresenceDocument.same_content`) stores the new sources but makes no
change: no version, no event, so a phone re-registering every minute costs watchers nothing.

Fan-out: :meth:`PresenceStore.subscribe` returns a :class:`ChangeSubscription`, an async
iterator of every change made after it was opened, on this node or another, in version
order. Each subscription buffers at most ``max_pending`` changes. One that falls further
behind is dropped and raises :class:`SubscriptionLagged` (with the last version it
delivered) instead of growing memory without bound; the consumer resumes with
``changes_since(exc.last_version)`` or a snapshot. Snapshot + stream without a gap: open the
subscription first, then read the snapshot, then skip streamed changes whose version is not
above the snapshot's.
"""

from __future__ import annotations

import asyncio
import builtins
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ucgate.presence.model import AgentSources, PresenceDataError, PresenceDocument
from ucgate.store.location import StoreConflict, StoreError, StoreUnavailable

__all__ = [
    "DEFAULT_MAX_PENDING",
    "ChangeFanout",
    "ChangeSubscription",
    "ComposeFn",
    "PresenceChange",
    "PresenceStore",
    "StoreConflict",
    "StoreError",
    "StoreUnavailable",
    "SubscriptionLagged",
    "UpdateFn",
]

UpdateFn = Callable[[AgentSources], AgentSources]
"""A pure function from an agent's current sources to its new sources (may run twice)."""

ComposeFn = Callable[[AgentSources], PresenceDocument]
"""Derives the document from sources; :func:`ucgate.presence.model.compose` with its
capacity, statuses and ``now`` bound."""

# 1,000 changes is several minutes of a busy contact center's worth of slack for one
# consumer, and about 1 MB of documents at most (they are shared, not copied, per consumer).
DEFAULT_MAX_PENDING = 1000


@dataclass(frozen=True, slots=True)
class PresenceChange:
    """One versioned change of one agent's document (``document.version == version``)."""

    version: int
    agent: str
    document: PresenceDocument
    at: float

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "agent": self.agent,
            "at": self.at,
            "document": self.document.to_json_dict(),
        }

    @classmethod
    def from_json_dict(cls, data: Any) -> PresenceChange:
        if not isinstance(data, dict):
            raise PresenceDataError("change: expected an object")
        version, agent, at, doc = (data.get(k) for k in ("version", "agent", "at", "document"))
        if isinstance(version, bool) or not isinstance(version, int):
            raise PresenceDataError("change.version: expected an integer")
        if not isinstance(agent, str):
            raise PresenceDataError("change.agent: expected a string")
        if isinstance(at, bool) or not isinstance(at, int | float):
            raise PresenceDataError("change.at: expected a number")
        if not isinstance(doc, dict):
            raise PresenceDataError("change.document: expected an object")
        return cls(version, agent, PresenceDocument.from_json_dict(doc), float(at))


class SubscriptionLagged(StoreError):
    """The subscriber fell more than ``max_pending`` changes behind and was dropped.

    ``last_version`` is the version of the last change it received (or the feed's version
    when it opened): resume with ``changes_since(last_version)``, or a snapshot if that
    returns None.
    """

    def __init__(self, last_version: int, max_pending: int) -> None:
        super().__init__(
            f"presence subscriber fell more than {max_pending} changes behind after "
            f"version {last_version}; resume with changes_since or a snapshot"
        )
        self.last_version = last_version


class ChangeSubscription:
    """An async iterator of changes for one consumer; ends when closed or the store closes.

    Not thread-safe; one task iterates it.
    """

    def __init__(self, fanout: ChangeFanout, max_pending: int) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self.max_pending = max_pending
        self._fanout = fanout
        self._pending: deque[PresenceChange] = deque()
        self._wakeup = asyncio.Event()
        self._closed = False
        self._lagged = False
        self.last_version = fanout.last_version
        """Version of the last change handed out; before the first, the version the feed
        had reached when the subscription opened (every later change will be delivered)."""

    @property
    def lagged(self) -> bool:
        return self._lagged

    @property
    def closed(self) -> bool:
        return self._closed

    def pending(self) -> int:
        return len(self._pending)

    def __aiter__(self) -> ChangeSubscription:
        return self

    async def __anext__(self) -> PresenceChange:
        while True:
            if self._pending:
                change = self._pending.popleft()
                self.last_version = change.version
                return change
            if self._lagged:
                raise SubscriptionLagged(self.last_version, self.max_pending)
            if self._closed:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()

    def close(self) -> None:
        """Stop receiving; changes already buffered are still handed out, then the end."""
        if not self._closed:
            self._closed = True
            self._fanout._discard(self)
            self._wakeup.set()

    def _push(self, change: PresenceChange) -> None:
        if len(self._pending) >= self.max_pending:
            self._lag()
            return
        self._pending.append(change)
        self._wakeup.set()

    def _lag(self) -> None:
        # Drop the buffer at once: keeping it would hold the memory this bound protects, and
        # the consumer has to resynchronise from last_version anyway.
        self._pending.clear()
        self._lagged = True
        self._closed = True
        self._fanout._discard(self)
        self._wakeup.set()


class ChangeFanout:
    """Hands each change to every open subscription of this process, once, in order.

    Both backends use it: the memory store publishes from ``update``; the Redis store
    publishes from its single stream reader. Changes not above the last published version
    are ignored, so a change seen twice (e.g. a re-read after a reconnect) is delivered once.
    """

    def __init__(self, *, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        self.max_pending = max_pending
        self.last_version = 0
        self._subs: set[ChangeSubscription] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._subs)

    def subscribe(self, max_pending: int | None = None) -> ChangeSubscription:
        sub = ChangeSubscription(self, self.max_pending if max_pending is None else max_pending)
        if self._closed:
            sub.close()
        else:
            self._subs.add(sub)
        return sub

    def publish(self, change: PresenceChange) -> None:
        if change.version <= self.last_version:
            return
        self.last_version = change.version
        for sub in list(self._subs):
            sub._push(change)

    def lag_all(self) -> None:
        """Changes were lost before reaching this process: every subscriber must resync."""
        for sub in list(self._subs):
            sub._lag()

    def reset(self, last_version: int) -> None:
        """The shared history restarted (e.g. Redis lost its data): resync and follow it."""
        self.lag_all()
        self.last_version = last_version

    def close(self) -> None:
        self._closed = True
        for sub in list(self._subs):
            sub.close()

    def _discard(self, sub: ChangeSubscription) -> None:
        self._subs.discard(sub)


class PresenceStore(Protocol):
    """Sources and documents per agent plus the change feed. Both backends implement it."""

    async def update(
        self, agent: str, fn: UpdateFn, *, compose: ComposeFn, now: float
    ) -> PresenceChange | None:
        """Atomically (per agent, across tasks and nodes) apply ``fn`` and recompose.

        Loads the sources (``AgentSources(agent)`` if none), applies ``fn`` and ``compose``.
        Same content as the stored document → stores the sources, returns None. Otherwise
        assigns the next global version, stores sources and document (``version`` set,
        ``updated_at=now``), appends the change to the log, publishes it to every
        subscriber on every node and returns it. ``fn`` and ``compose`` may run more than
        once and must be pure; if either raises, nothing changes and the error propagates.
        Raises :class:`StoreUnavailable` (or its subclass :class:`StoreConflict`).
        """
        ...

    async def get(self, agent: str) -> PresenceDocument | None: ...

    async def sources(self, agent: str) -> AgentSources | None: ...

    async def list(self) -> list[PresenceDocument]:
        """Every stored document, sorted by agent; one consistent snapshot."""
        ...

    async def current_version(self) -> int:
        """The version of the latest change (0 before the first)."""
        ...

    async def changes_since(self, version: int) -> builtins.list[PresenceChange] | None:
        """The changes after ``version`` in order, or None if the log no longer reaches back
        that far (or ``version`` is from another history, above the current one)."""
        ...

    def subscribe(self, max_pending: int | None = None) -> ChangeSubscription: ...

    async def close(self) -> None:
        """Flush, end every subscription and release the backend."""
        ...
