"""Call records in Redis, shared by every node of a site.

Key layout (prefix ``ucgate:calls:`` by default; part of the shared format):

``ucgate:calls:rec:<call id>``  string
    :func:`ucgate.calls.record_store.record_to_json`: the id and the events. Derived values
    are rebuilt by replaying the events on read, so nodes of different versions agree.
``ucgate:calls:idx``  sorted set
    member = call id, score = ``started_at``. Ties of equal score are ordered by member,
    which matches the ``(started_at, id)`` order of the embedded store.
``ucgate:calls:agent:<agent id>``  sorted set
    the same, for calls in which the agent had a leg.

Atomicity: :meth:`RedisCallRecordStore.append` WATCHes the record key, reads it, applies
the event in Python and writes the record and its index entries in one MULTI/EXEC; when
another node wrote the record meanwhile EXEC fails and the round is retried (at most
``max_attempts`` times, then :class:`StoreConflict`). Tasks of one node first queue on a
per-call ``asyncio.Lock``, so only other nodes can make EXEC fail.

Bounded waiting: each call runs under ``asyncio.timeout(timeout)`` with no client-side
retries, so an unreachable Redis raises :class:`StoreUnavailable` instead of hanging.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError, WatchError

from ucgate.calls.record_store import (
    CallPage,
    check_page_args,
    encode_cursor,
    next_record,
    record_from_json,
    record_to_json,
)
from ucgate.calls.records import CallEvent, CallRecord
from ucgate.store.location import StoreConflict, StoreUnavailable
from ucgate.store.redis_common import KeyLocks, bounded_client

__all__ = ["DEFAULT_PREFIX", "RedisCallRecordStore"]

log = structlog.get_logger(__name__)

DEFAULT_PREFIX = "ucgate:calls:"


class _CallerFailed(Exception):
    """Carries the record's own refusal (CallRecordError) past the I/O guard."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(repr(error))
        self.error = error


class RedisCallRecordStore:
    def __init__(
        self,
        client: Redis,
        *,
        timeout: float = 1.0,
        key_prefix: str = DEFAULT_PREFIX,
        max_attempts: int = 16,
    ) -> None:
        self._client = client
        self._timeout = timeout
        self._rec_prefix = key_prefix + "rec:"
        self._agent_prefix = key_prefix + "agent:"
        self._index_key = key_prefix + "idx"
        self._max_attempts = max_attempts
        self._locks = KeyLocks()

    @classmethod
    async def connect(
        cls, url: str, *, timeout: float = 1.0, **options: Any
    ) -> RedisCallRecordStore:
        """Connect to ``url`` and check it answers; StoreUnavailable if it does not."""
        client = bounded_client(url, timeout)
        store = cls(client, timeout=timeout, **options)
        try:
            async with store._io("ping"):
                await client.ping()
        except StoreUnavailable:
            await client.aclose()
            raise
        return store

    def key_for(self, call_id: str) -> str:
        return self._rec_prefix + call_id

    async def append(self, call_id: str, event: CallEvent) -> CallRecord:
        try:
            async with self._io("append"), self._locks.hold(call_id):
                return await self._append(call_id, event)
        except _CallerFailed as failed:
            raise failed.error from None

    async def _append(self, call_id: str, event: CallEvent) -> CallRecord:
        key = self.key_for(call_id)
        for attempt in range(self._max_attempts):
            async with self._client.pipeline(transaction=True) as pipeline:
                # redis-py's pipeline stubs are partly untyped.
                pipe: Any = pipeline
                await pipe.watch(key)
                text = await pipe.get(key)
                current = None if text is None else record_from_json(text)
                try:
                    record = next_record(current, call_id, event)
                except Exception as exc:
                    raise _CallerFailed(exc) from exc
                pipe.multi()
                pipe.set(key, record_to_json(record))
                if current is None:
                    pipe.zadd(self._index_key, {call_id: record.started_at})
                known = set() if current is None else set(current.agents)
                for agent in record.agents:
                    if agent not in known:
                        pipe.zadd(self._agent_prefix + agent, {call_id: record.started_at})
                try:
                    await pipe.execute()
                except WatchError:
                    # Another node appended to this call between our read and EXEC.
                    await asyncio.sleep(random.uniform(0, 0.001 * (attempt + 1)))
                    continue
                return record
        raise StoreConflict(f"append to call {call_id!r} lost {self._max_attempts} races")

    async def get(self, call_id: str) -> CallRecord | None:
        async with self._io("get"):
            text = await self._client.get(self.key_for(call_id))
        return None if text is None else self._decode(call_id, text)

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
        key = self._index_key if agent is None else self._agent_prefix + agent
        high: float | str = "+inf" if until is None else f"({until!r}"
        if after is not None and (until is None or after[0] < until):
            high = after[0]
        low: float | str = "-inf" if since is None else since
        keys: list[tuple[float, str]] = []
        async with self._io("list"):
            offset = 0
            batch = limit + 1
            # Ties at the cursor's score need more than one batch only when many calls
            # started in the same instant; the loop ends when a batch comes back short.
            while len(keys) <= limit:
                chunk = cast(
                    list[tuple[str, float]],
                    await self._client.zrevrangebyscore(
                        key, high, low, start=offset, num=batch, withscores=True
                    ),
                )
                for member, score in chunk:
                    item = (float(score), str(member))
                    if after is None or item < after:
                        keys.append(item)
                if len(chunk) < batch:
                    break
                offset += batch
            page = keys[:limit]
            texts = await self._client.mget([self.key_for(cid) for _, cid in page]) if page else []
        records = [
            record
            for (_, cid), text in zip(page, texts, strict=True)
            if text is not None and (record := self._decode(cid, text)) is not None
        ]
        more = len(keys) > limit
        return CallPage(records, encode_cursor(page[-1]) if more else None)

    async def close(self) -> None:
        await self._client.aclose()

    def _decode(self, call_id: str, text: str | bytes) -> CallRecord | None:
        try:
            return record_from_json(text)
        except ValueError as exc:
            # One corrupt record must not take the whole list down with it.
            log.warning("calls.redis_record_skipped", call_id=call_id, error=str(exc))
            return None

    @asynccontextmanager
    async def _io(self, what: str) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self._timeout):
                yield
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"calls {what}: {type(exc).__name__}: {exc}") from exc
