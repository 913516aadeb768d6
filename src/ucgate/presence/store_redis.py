"""The shared presence store on Redis: several ucgate nodes behave as one presence service.

Key layout (prefix ``ucgate:presence:`` by default; a shared format, change with care):

``ucgate:presence:sources``  hash, field = agent id, value = :class:`AgentSources` JSON.
``ucgate:presence:docs``     hash, field = agent id, value = ``[<version>, <document JSON>]``
    (the document as composed, with ``"version": 0``; the array's first element is the
    authoritative version, which only the commit script knows when it writes).
``ucgate:presence:rev``      hash, field = agent id, value = a per-agent write counter,
    the compare-and-set token of :meth:`RedisPresenceStore.update`.
``ucgate:presence:version``  string, the global version counter.
``ucgate:presence:changes``  stream, one entry per change, entry id ``<version>-0``, fields
    ``a`` (agent), ``t`` (Unix time of the change), ``d`` (document JSON as above);
    trimmed with ``XADD MAXLEN ~ change_log_size``. The ``~`` lets Redis drop whole
    macro-nodes only, so at least ``change_log_size`` entries are kept, at a fraction of the
    cost of exact trimming.

Why one hash per kind for all agents rather than one key per agent: the agents are a
configured, bounded set (thousands, ~1 KB each), and ``GET /v1/presence`` wants all their
documents: ``HVALS docs`` is one consistent read, where per-agent keys need a SCAN plus a
round trip per batch and give no snapshot.

Atomic update across nodes: read ``rev``, sources and document in one MULTI/EXEC, run the
caller's pure function and ``compose`` in Python, then one Lua script commits only if
``rev`` is unchanged (compare-and-set; otherwise the round is retried, at most
``max_attempts`` times, then :class:`StoreConflict`). The same script computes the next
version, XADDs the change with that version as its entry id, sets the counter and writes
both hashes, so versions in the stream are strictly increasing and consecutive and a
document's version is the id of its stream entry. The version is computed and the XADD
issued before anything else is written, so a script that fails (e.g. OOM) changes nothing.
A Lua CAS instead of WATCH keeps no connection pinned between the read and the write. Tasks
of one node queue on a per-agent ``asyncio.Lock`` first, so only other nodes cause retries.

Fan-out: the stream serves both ``changes_since`` (XRANGE from ``<version+1>-0``) and
cross-node delivery: each node runs ONE reader task doing ``XREAD BLOCK`` from the last id
it saw, on its own connection, and hands entries to its local subscribers. A node's own
changes reach its subscribers through the same reader, never directly: that is what keeps
every subscriber's order equal to version order when several nodes write at once. Pub/sub
would lose messages during a reconnect; the stream lets the reader resume from its last id
after an outage (it reconnects with exponential backoff). If the entries it missed were
trimmed meanwhile (a version jump), or Redis lost its data (the stream's tail went back),
every local subscriber gets :class:`SubscriptionLagged` and resynchronises from a snapshot.

Bounded waiting: every Redis call runs under ``asyncio.timeout(timeout)`` and the clients
have socket timeouts and no retries of their own, so a stopped or paused Redis raises
:class:`StoreUnavailable` after at most ``timeout`` seconds (twice that if redis-py loses the
timeout's cancellation, which it sometimes does; the socket timeout still fires). At most
``max_connections`` calls are in flight; further callers queue in this process first, outside
the timeout, so a burst (a shift of agents logging in) is slowed down, not failed.

Limits: a single Redis (optionally with Sentinel), not Redis Cluster (the script touches five
keys that would need one hash slot).
"""

from __future__ import annotations

import asyncio
import builtins
import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any, cast

import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from ucgate.presence.model import AgentSources, PresenceDocument
from ucgate.presence.store import (
    DEFAULT_MAX_PENDING,
    ChangeFanout,
    ChangeSubscription,
    ComposeFn,
    PresenceChange,
    StoreConflict,
    StoreUnavailable,
    UpdateFn,
)

log = structlog.get_logger(__name__)

DEFAULT_PREFIX = "ucgate:presence:"
DEFAULT_CHANGE_LOG_SIZE = 10_000
READER_CLIENT_NAME = "ucgate-presence-reader"

# KEYS: sources, docs, rev, version, changes.
# ARGV: agent, expected rev, sources JSON, document JSON ('' = same content: no change),
#       time of the change, change log size.
# Returns the new version, 0 when only the sources were stored, -1 when rev moved (retry).
_COMMIT_LUA = """
local rev = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
if rev ~= tonumber(ARGV[2]) then
  return -1
end
local v = 0
if ARGV[4] ~= '' then
  v = tonumber(redis.call('GET', KEYS[4]) or '0') + 1
  -- Never reuse an id the stream already holds, even if the counter key was lost.
  local tail = redis.call('XREVRANGE', KEYS[5], '+', '-', 'COUNT', 1)
  if #tail > 0 then
    local last = tonumber(string.match(tail[1][1], '^(%d+)'))
    if last >= v then
      v = last + 1
    end
  end
  local id = string.format('%d', v)
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[6], id .. '-0',
             'a', ARGV[1], 't', ARGV[5], 'd', ARGV[4])
  redis.call('SET', KEYS[4], id)
  redis.call('HSET', KEYS[2], ARGV[1], '[' .. id .. ',' .. ARGV[4] .. ']')
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[1], rev + 1)
return v
"""


class RedisPresenceStore:
    """Presence in Redis, shared by every node using the same server and prefix.

    Create it with :meth:`connect`, which also starts the stream reader.
    """

    def __init__(
        self,
        client: Redis,
        reader: Redis,
        *,
        timeout: float = 1.0,
        key_prefix: str = DEFAULT_PREFIX,
        change_log_size: int = DEFAULT_CHANGE_LOG_SIZE,
        max_pending: int = DEFAULT_MAX_PENDING,
        max_attempts: int = 16,
        block: float = 5.0,
        reader_batch: int = 512,
        backoff_initial: float = 0.05,
        backoff_max: float = 2.0,
        max_in_flight: int = 32,
    ) -> None:
        if change_log_size < 1:
            raise ValueError("change_log_size must be at least 1")
        self._client = client
        self._reader = reader
        self._timeout = timeout
        self._sources_key = key_prefix + "sources"
        self._docs_key = key_prefix + "docs"
        self._rev_key = key_prefix + "rev"
        self._version_key = key_prefix + "version"
        self._changes_key = key_prefix + "changes"
        self._change_log_size = change_log_size
        self._max_attempts = max_attempts
        self._block = block
        self._reader_batch = reader_batch
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._commit = client.register_script(_COMMIT_LUA)
        self._fanout = ChangeFanout(max_pending=max_pending)
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._locks: dict[str, asyncio.Lock] = {}
        self._lock_users: dict[str, int] = {}
        self._reader_task: asyncio.Task[None] | None = None
        self._closing = False
        self.reconnects = 0
        """How many times the stream reader recovered from a Redis error (diagnostics)."""

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        timeout: float = 1.0,
        block: float = 5.0,
        max_connections: int = 32,
        **options: Any,
    ) -> RedisPresenceStore:
        """Connect to ``url``, check it answers, start the reader; StoreUnavailable if not.

        At most ``max_connections`` commands are in flight; more callers queue in this
        process (see :meth:`_io`) instead of failing with "Too many connections", which is
        what redis-py's default pool does past 100 (an agent shift logging in at once).
        """
        common: dict[str, Any] = {
            "decode_responses": True,
            "socket_connect_timeout": timeout,
            # Our own timeouts bound each call; client-side retries would multiply them.
            "retry": Retry(NoBackoff(), 0),
        }
        pool = BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=timeout, socket_timeout=timeout, **common
        )
        client = Redis.from_pool(pool)
        # XREAD BLOCK holds its connection for up to `block` seconds by design.
        reader = Redis.from_url(
            url, socket_timeout=block + timeout, client_name=READER_CLIENT_NAME, **common
        )
        store = cls(
            client,
            reader,
            timeout=timeout,
            block=block,
            max_in_flight=max_connections,
            **options,
        )
        try:
            await store.start()
        except StoreUnavailable:
            await client.aclose()
            await reader.aclose()
            raise
        return store

    async def start(self) -> None:
        """Position the reader at the current end of the stream and start it."""
        if self._reader_task is not None:
            return
        # Fail fast here rather than in the reader task if the reader cannot connect.
        async with self._io("reader.ping"):
            await self._reader.ping()
        tail = await self._tail_version()
        self._fanout.last_version = tail
        self._reader_task = asyncio.create_task(
            self._read_forever(tail), name="presence-stream-reader"
        )

    # -- the store port ---------------------------------------------------------------------

    async def update(
        self, agent: str, fn: UpdateFn, *, compose: ComposeFn, now: float
    ) -> PresenceChange | None:
        async with self._agent_lock(agent):
            for attempt in range(self._max_attempts):
                async with (
                    self._io("update.read"),
                    self._client.pipeline(transaction=True) as pipe,
                ):
                    pipe.hget(self._rev_key, agent)
                    pipe.hget(self._sources_key, agent)
                    pipe.hget(self._docs_key, agent)
                    replies = await pipe.execute()
                rev_raw, sources_raw, doc_raw = cast(
                    tuple[str | None, str | None, str | None], replies
                )
                rev = int(rev_raw) if rev_raw is not None else 0
                current = None if sources_raw is None else self._decode_sources(agent, sources_raw)
                if current is None:
                    current = AgentSources(agent)
                stored = None if doc_raw is None else self._decode_doc(agent, doc_raw)
                # The caller's functions run outside the I/O guard: their errors are theirs.
                sources = fn(current)
                if sources.agent != agent:
                    raise ValueError(f"sources of {sources.agent!r} stored under {agent!r}")
                document = replace(compose(sources), version=0, updated_at=now)
                same = stored is not None and document.same_content(stored)
                body = "" if same else _dumps(document.to_json_dict())
                async with self._io("update.commit"):
                    result = await self._commit(
                        keys=[
                            self._sources_key,
                            self._docs_key,
                            self._rev_key,
                            self._version_key,
                            self._changes_key,
                        ],
                        args=[
                            agent,
                            rev,
                            _dumps(sources.to_json_dict()),
                            body,
                            repr(now),
                            self._change_log_size,
                        ],
                    )
                version = int(result)
                if version == 0:
                    return None
                if version > 0:
                    doc = replace(document, version=version)
                    return PresenceChange(version, agent, doc, now)
                # Another node wrote this agent between our read and our commit. Back off a
                # random moment so two nodes do not retry in lockstep.
                await asyncio.sleep(random.uniform(0, 0.001 * (attempt + 1)))
        raise StoreConflict(f"presence update of {agent!r} lost {self._max_attempts} races")

    async def get(self, agent: str) -> PresenceDocument | None:
        async with self._io("get"):
            raw = cast(str | None, await self._client.hget(self._docs_key, agent))
        return self._decode_doc(agent, raw) if raw is not None else None

    async def sources(self, agent: str) -> AgentSources | None:
        async with self._io("sources"):
            raw = cast(str | None, await self._client.hget(self._sources_key, agent))
        return self._decode_sources(agent, raw) if raw is not None else None

    async def list(self) -> list[PresenceDocument]:
        async with self._io("list"):
            raw = cast(dict[str, str], await self._client.hgetall(self._docs_key))
        docs = [self._decode_doc(agent, value) for agent, value in raw.items()]
        return sorted((d for d in docs if d is not None), key=lambda d: d.agent)

    async def current_version(self) -> int:
        async with self._io("current_version"):
            raw = await self._client.get(self._version_key)
        return int(raw) if raw is not None else 0

    async def changes_since(self, version: int) -> builtins.list[PresenceChange] | None:
        if version < 0:
            return None
        async with self._io("changes_since"), self._client.pipeline(transaction=True) as pipe:
            pipe.get(self._version_key)
            pipe.xrange(self._changes_key, min=f"{version + 1}-0", max="+")
            replies = await pipe.execute()
        counter_raw, entries = cast(tuple[str | None, list[_Entry]], replies)
        current = int(counter_raw) if counter_raw is not None else 0
        if version > current:
            return None
        if version == current:
            return []
        changes: builtins.list[PresenceChange] = []
        expected = version + 1
        for entry_id, fields in entries:
            change = self._decode_entry(entry_id, fields)
            # Consecutive versions or nothing: a hole means trimmed (or damaged) history.
            if change is None or change.version != expected:
                return None
            changes.append(change)
            expected += 1
        return changes if changes else None

    def subscribe(self, max_pending: int | None = None) -> ChangeSubscription:
        return self._fanout.subscribe(max_pending)

    async def flush(self) -> None:
        """Nothing to do: every update is written through."""

    async def close(self) -> None:
        self._closing = True
        task, self._reader_task = self._reader_task, None
        if task is not None:
            task.cancel()
            # redis-py (seen with 8.1) sometimes loses a cancellation delivered while a
            # command waits for its reply, which would leave the reader blocked in XREAD
            # for up to `block` seconds. Closing its connection ends the read at once
            # either way; the loop then sees _closing and returns.
            await self._reader.aclose()
            await asyncio.wait({task}, timeout=self._block + self._timeout)
            if not task.done():
                log.error("presence.reader_not_stopped")
            elif not task.cancelled() and task.exception() is not None:
                log.error("presence.reader_failed", error=repr(task.exception()))
        self._fanout.close()
        await self._client.aclose()
        await self._reader.aclose()

    # -- the stream reader --------------------------------------------------------------------

    async def _read_forever(self, last: int) -> None:
        backoff = self._backoff_initial
        block_ms = max(1, int(self._block * 1000))
        while not self._closing:
            try:
                async with asyncio.timeout(self._block + self._timeout):
                    reply = await self._reader.xread(
                        {self._changes_key: f"{last}-0"},
                        count=self._reader_batch,
                        block=block_ms,
                    )
            except (RedisError, OSError) as exc:  # TimeoutError is an OSError
                if self._closing:
                    return
                log.warning("presence.reader_error", error=str(exc), retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._backoff_max)
                last = await self._recover(last)
                continue
            backoff = self._backoff_initial
            streams = cast(list[tuple[str, list[_Entry]]], reply or [])
            for _stream, entries in streams:
                for entry_id, fields in entries:
                    last = max(last, _entry_version(entry_id))
                    change = self._decode_entry(entry_id, fields)
                    if change is None:
                        continue
                    if change.version > self._fanout.last_version + 1:
                        # Entries we never saw were trimmed while we were away.
                        log.warning(
                            "presence.reader_gap",
                            after=self._fanout.last_version,
                            next=change.version,
                        )
                        self._fanout.lag_all()
                    self._fanout.publish(change)

    async def _recover(self, last: int) -> int:
        """After an error: if the stream's tail went back, Redis lost its data; follow it."""
        try:
            tail = await self._tail_version()
        except StoreUnavailable:
            return last  # still down: the next XREAD fails again and backs off further
        self.reconnects += 1
        if tail < last:
            log.warning("presence.history_reset", was=last, now=tail)
            self._fanout.reset(tail)
            return tail
        log.info("presence.reader_resumed", last=last)
        return last

    async def _tail_version(self) -> int:
        async with self._io("tail"), self._client.pipeline(transaction=True) as pipe:
            pipe.xrevrange(self._changes_key, "+", "-", count=1)
            pipe.get(self._version_key)
            replies = await pipe.execute()
        tail, counter = cast(tuple[list[_Entry], str | None], replies)
        from_stream = _entry_version(tail[0][0]) if tail else 0
        return max(from_stream, int(counter) if counter is not None else 0)

    # -- helpers --------------------------------------------------------------------------------

    @asynccontextmanager
    async def _io(self, operation: str) -> AsyncIterator[None]:
        # The queue for a slot is in-process and not under the timeout: the timeout is for
        # Redis answering, and a burst of local callers must not turn into errors.
        async with self._in_flight:
            try:
                async with asyncio.timeout(self._timeout):
                    yield
            except (RedisError, OSError) as exc:  # TimeoutError is an OSError
                log.warning("presence.redis_unavailable", operation=operation, error=str(exc))
                raise StoreUnavailable(f"redis {operation} failed: {exc!s}") from exc

    @asynccontextmanager
    async def _agent_lock(self, agent: str) -> AsyncIterator[None]:
        # One lock per agent while someone uses it; dropped afterwards so the dict stays small.
        lock = self._locks.get(agent)
        if lock is None:
            lock = self._locks[agent] = asyncio.Lock()
        self._lock_users[agent] = self._lock_users.get(agent, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._lock_users[agent] -= 1
            if not self._lock_users[agent]:
                del self._lock_users[agent], self._locks[agent]

    def _decode_sources(self, agent: str, raw: str) -> AgentSources | None:
        try:
            return AgentSources.from_json_dict(json.loads(raw))
        except (ValueError, TypeError) as exc:
            # Not our format: start the agent from empty sources rather than fail forever.
            log.warning("presence.redis_bad_sources", agent=agent, error=str(exc))
            return None

    def _decode_doc(self, agent: str, raw: str) -> PresenceDocument | None:
        try:
            data = json.loads(raw)
            if not (isinstance(data, list) and len(data) == 2 and isinstance(data[0], int)):
                raise ValueError("expected [version, document]")
            return replace(PresenceDocument.from_json_dict(data[1]), version=data[0])
        except (ValueError, TypeError) as exc:
            log.warning("presence.redis_bad_document", agent=agent, error=str(exc))
            return None

    def _decode_entry(self, entry_id: str, fields: dict[str, str]) -> PresenceChange | None:
        try:
            version = _entry_version(entry_id)
            document = PresenceDocument.from_json_dict(json.loads(fields["d"]))
            return PresenceChange(
                version, fields["a"], replace(document, version=version), float(fields["t"])
            )
        except (KeyError, ValueError, TypeError) as exc:
            log.warning("presence.redis_bad_change", entry=entry_id, error=str(exc))
            return None


_Entry = tuple[str, dict[str, str]]
"""A stream entry as the client returns it with ``decode_responses=True``."""


def _entry_version(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


def _dumps(data: object) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)
