"""What every Redis-backed store needs: a client whose calls are bounded, and per-key locks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry


def bounded_client(url: str, timeout: float) -> Redis:
    """A client that fails within ``timeout`` instead of hanging or retrying."""
    return Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        # The stores' own timeout bounds each call; client-side retries would multiply it.
        retry=Retry(NoBackoff(), 0),
    )


class KeyLocks:
    """One asyncio lock per key, forgotten when nobody holds or waits for it.

    Updates of one key from this process queue here, so only another node can make a
    WATCH/MULTI transaction retry.
    """

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] = self._users.get(key, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key], self._locks[key]

    def __len__(self) -> int:
        return len(self._locks)
