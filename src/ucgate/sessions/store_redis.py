"""Sessions in Redis, shared by every node of a site.

Key layout (prefix ``ucgate:sessions:``; part of the shared format):

``s:<id>``            string, :func:`ucgate.sessions.store.session_to_json`
``idx``               zset id -> created_at (all sessions; ties ordered by id)
``open``              set of open session ids
``agent:<agent>``     set of session ids the agent owned or handled
``phone:<phone>``     set of open session ids of that customer phone
``pin:<pin>``         string -> id of the open session holding the PIN

Atomicity as :mod:`ucgate.calls.record_store_redis`: :meth:`RedisSessionStore.update`
WATCHes the session key (and, on create, the PIN key), applies the pure function in
Python and writes the session and its indexes in one MULTI/EXEC, retrying when another
node wrote meanwhile. Tasks of one node queue on a per-session lock first. Each call is
bounded by ``timeout``: an unreachable Redis raises StoreUnavailable, never hangs.

Routing writes in multi-node mode pass a :class:`Fence`: the same transaction also WATCHes
the routing lease and checks it still holds the writer's token (else
:class:`~ucgate.sessions.leader.NotLeader`, nothing written), and appends the outcome to the
routing change stream, so a write and its announcement to the other nodes are one step.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError, WatchError

from ucgate.calls.record_store import check_page_args, encode_cursor
from ucgate.sessions.leader import NotLeader
from ucgate.sessions.model import Session, SessionError
from ucgate.sessions.store import (
    PinTaken,
    SessionPage,
    UnknownSession,
    UpdateFn,
    agents_of,
    checked_update,
    session_from_json,
    session_to_json,
)
from ucgate.store.location import StoreConflict, StoreUnavailable
from ucgate.store.redis_common import KeyLocks, bounded_client

__all__ = ["DEFAULT_PREFIX", "Fence", "RedisSessionStore"]

log = structlog.get_logger(__name__)

DEFAULT_PREFIX = "ucgate:sessions:"


@dataclass(frozen=True, slots=True)
class Fence:
    """Guard of a routing write: applied only while ``lease_key`` holds ``token``; then
    ``entry(new_session)`` is appended to ``stream`` (trimmed to about ``maxlen``) in the
    same MULTI/EXEC."""

    lease_key: str
    token: str
    stream: str
    entry: Callable[[Session], Mapping[str, str]]
    maxlen: int = 10_000


class RedisSessionStore:
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
        self._p = key_prefix
        self._max_attempts = max_attempts
        self._locks = KeyLocks()

    @classmethod
    async def connect(cls, url: str, *, timeout: float = 1.0, **options: Any) -> RedisSessionStore:
        client = bounded_client(url, timeout)
        store = cls(client, timeout=timeout, **options)
        try:
            async with store._io("ping"):
                await client.ping()
        except StoreUnavailable:
            await client.aclose()
            raise
        return store

    def _key(self, session_id: str) -> str:
        return f"{self._p}s:{session_id}"

    def _index(self, pipe: Any, old: Session | None, new: Session) -> None:
        if old is None:
            pipe.zadd(self._p + "idx", {new.id: new.created_at})
        else:
            if old.customer.phone:
                pipe.srem(f"{self._p}phone:{old.customer.phone}", old.id)
            if old.pin and not old.closed and (new.closed or new.pin != old.pin):
                pipe.delete(f"{self._p}pin:{old.pin}")
        for agent in agents_of(new) - (set() if old is None else agents_of(old)):
            pipe.sadd(f"{self._p}agent:{agent}", new.id)
        if new.closed:
            pipe.srem(self._p + "open", new.id)
        else:
            pipe.sadd(self._p + "open", new.id)
            if new.customer.phone:
                pipe.sadd(f"{self._p}phone:{new.customer.phone}", new.id)
            if new.pin:
                pipe.set(f"{self._p}pin:{new.pin}", new.id)

    async def create(self, session: Session) -> None:
        key = self._key(session.id)
        pin_key = f"{self._p}pin:{session.pin}" if session.pin and not session.closed else None
        async with self._io("create"), self._client.pipeline(transaction=True) as pipeline:
            pipe: Any = pipeline  # redis-py's pipeline stubs are partly untyped
            watched = [key] + ([pin_key] if pin_key else [])
            try:
                await pipe.watch(*watched)
                if await pipe.exists(key):
                    raise _Refused(
                        SessionError(f"session {session.id!r} exists", field="id", status=409)
                    )
                if pin_key and await pipe.exists(pin_key):
                    raise _Refused(PinTaken(session.pin or ""))
                pipe.multi()
                pipe.set(key, session_to_json(session))
                self._index(pipe, None, session)
                await pipe.execute()
            except WatchError:
                # Someone took the id or the PIN between our check and EXEC.
                raise _Refused(PinTaken(session.pin or "")) from None
            except _Refused as refused:
                raise refused.error from None

    async def update(self, session_id: str, fn: UpdateFn, *, fence: Fence | None = None) -> Session:
        key = self._key(session_id)
        async with self._locks.hold(session_id):
            for attempt in range(self._max_attempts):
                try:
                    async with (
                        self._io("update"),
                        self._client.pipeline(transaction=True) as pipeline,
                    ):
                        pipe: Any = pipeline  # partly untyped stubs
                        if fence is None:
                            await pipe.watch(key)
                        else:
                            # WATCHing the lease too: a takeover between this check and
                            # EXEC aborts the transaction, and the retry sees the new token.
                            await pipe.watch(key, fence.lease_key)
                            holder = await pipe.get(fence.lease_key)
                            if holder != fence.token:
                                raise _Refused(NotLeader(fence.token, holder))
                        text = await pipe.get(key)
                        if text is None:
                            raise _Refused(UnknownSession(session_id))
                        current = session_from_json(text)
                        try:
                            new = checked_update(current, fn)
                        except SessionError as exc:
                            raise _Refused(exc) from None
                        pipe.multi()
                        pipe.set(key, session_to_json(new))
                        self._index(pipe, current, new)
                        if fence is not None:
                            pipe.xadd(
                                fence.stream,
                                dict(fence.entry(new)),
                                maxlen=fence.maxlen,
                                approximate=True,
                            )
                        await pipe.execute()
                        return new
                except WatchError:
                    await asyncio.sleep(random.uniform(0, 0.001 * (attempt + 1)))
                except _Refused as refused:
                    raise refused.error from None
        raise StoreConflict(f"update of session {session_id!r} lost {self._max_attempts} races")

    async def get(self, session_id: str) -> Session | None:
        async with self._io("get"):
            text = await self._client.get(self._key(session_id))
        return None if text is None else self._decode(session_id, text)

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
        if agent is not None:
            return await self._list_agent(agent, open_only, since, until, limit, after)
        high: float | str = "+inf" if until is None else f"({until!r}"
        if after is not None and (until is None or after[0] < until):
            high = after[0]
        low: float | str = "-inf" if since is None else since
        out: list[tuple[tuple[float, str], Session]] = []
        more = False
        async with self._io("list"):
            open_ids = await self._client.smembers(self._p + "open") if open_only else None
            agent_ids = (
                await self._client.smembers(f"{self._p}agent:{agent}")
                if agent is not None
                else None
            )
            offset, batch = 0, 200
            while not more:
                chunk = cast(
                    list[tuple[str, float]],
                    await self._client.zrevrangebyscore(
                        self._p + "idx", high, low, start=offset, num=batch, withscores=True
                    ),
                )
                keys = [
                    (float(score), str(member))
                    for member, score in chunk
                    if (after is None or (float(score), str(member)) < after)
                    and (open_ids is None or member in open_ids)
                    and (agent_ids is None or member in agent_ids)
                ]
                if keys:
                    texts = await self._client.mget([self._key(sid) for _, sid in keys])
                    for k, text in zip(keys, texts, strict=True):
                        if text is None:
                            continue
                        session = self._decode(k[1], text)
                        if session is None:
                            continue
                        if len(out) == limit:
                            more = True
                            break
                        out.append((k, session))
                if len(chunk) < batch:
                    break
                offset += batch
        cursor_out = encode_cursor(out[-1][0]) if more and out else None
        return SessionPage([s for _, s in out], cursor_out)

    async def _list_agent(
        self,
        agent: str,
        open_only: bool,
        since: float | None,
        until: float | None,
        limit: int,
        after: tuple[float, str] | None,
    ) -> SessionPage:
        """``list(agent=...)`` from the agent's own index: the routing service asks it
        for the offered agent on every offer, and walking every session ever created
        (the general path) made that grow with the site's history."""
        key = f"{self._p}agent:{agent}"
        async with self._io("list"):
            if open_only:
                members = await self._client.sinter([key, self._p + "open"])
            else:
                members = await self._client.smembers(key)
            ids = sorted(str(m) for m in members)
            scores = await self._client.zmscore(self._p + "idx", ids) if ids else []
            keys: list[tuple[float, str]] = []
            for sid, score in zip(ids, scores, strict=True):
                if score is None:
                    continue  # indexed for the agent, gone from idx: skip
                k = (float(score), sid)
                if since is not None and k[0] < since:
                    continue
                if until is not None and k[0] >= until:
                    continue
                if after is None or k < after:
                    keys.append(k)
            keys.sort(reverse=True)
            more = len(keys) > limit
            keys = keys[:limit]
            texts = await self._client.mget([self._key(i) for _, i in keys]) if keys else []
        sessions = [
            session
            for (_, sid), text in zip(keys, texts, strict=True)
            if text is not None and (session := self._decode(sid, text)) is not None
        ]
        return SessionPage(sessions, encode_cursor(keys[-1]) if more and keys else None)

    async def find_open_by_phone(self, phone: str) -> Session | None:
        async with self._io("find_by_phone"):
            ids = sorted(str(i) for i in await self._client.smembers(f"{self._p}phone:{phone}"))
            texts = await self._client.mget([self._key(i) for i in ids]) if ids else []
        sessions = [
            s
            for i, t in zip(ids, texts, strict=True)
            if t is not None and (s := self._decode(i, t)) is not None and not s.closed
        ]
        return max(sessions, key=lambda s: (s.created_at, s.id), default=None)

    async def find_open_by_pin(self, pin: str) -> Session | None:
        async with self._io("find_by_pin"):
            sid = await self._client.get(f"{self._p}pin:{pin}")
        if sid is None:
            return None
        session = await self.get(str(sid))
        return session if session is not None and not session.closed else None

    async def close(self) -> None:
        await self._client.aclose()

    def _decode(self, session_id: str, text: str | bytes) -> Session | None:
        try:
            return session_from_json(text)
        except ValueError as exc:
            log.warning("sessions.redis_session_skipped", session_id=session_id, error=str(exc))
            return None

    @asynccontextmanager
    async def _io(self, what: str) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self._timeout):
                yield
        except (RedisError, OSError, TimeoutError) as exc:
            if isinstance(exc, WatchError):
                raise
            raise StoreUnavailable(f"sessions {what}: {type(exc).__name__}: {exc}") from exc


class _Refused(Exception):
    """Carries the model's own refusal past the I/O guard."""

    def __init__(self, error: SessionError) -> None:
        super().__init__(error.message)
        self.error = error
