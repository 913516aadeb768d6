"""Webhooks: session events POSTed to configured URLs, signed, retried, never lost.

Delivery is at-least-once through an outbox. :meth:`WebhookSender.publish` writes one
row per matching webhook *before* it returns (SQLite commit, or Redis write), and only a
2xx answer deletes the row; a crash or restart in between re-sends it, so a receiver must
de-duplicate on ``X-UCGate-Delivery`` (the event id, the same on every attempt).

Every request carries::

    Content-Type: application/json
    X-UCGate-Event: <event type>
    X-UCGate-Delivery: <event id>            idempotency key
    X-UCGate-Timestamp: <Unix seconds>       when this attempt was signed
    X-UCGate-Signature: sha256=<hex>         HMAC-SHA256(secret, "<timestamp>." + body)

The timestamp is inside the MAC so a captured request cannot be replayed later: the
receiver refuses timestamps older than a few minutes (:func:`verify_signature`). This is
the scheme Stripe and GitHub receivers already know how to check.

A failed attempt (connection error, timeout, any non-2xx) is retried after
``base_delay * 2**(attempts-1)`` seconds capped at ``max_delay``; after ``max_attempts``
the row is kept as *dead* (still in the outbox, never deleted silently) and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ucgate.store.location import StoreUnavailable

__all__ = [
    "OutboxItem",
    "RedisOutbox",
    "SqliteOutbox",
    "WebhookOutbox",
    "WebhookSender",
    "WebhookTarget",
    "sign",
    "verify_signature",
]

log = structlog.get_logger(__name__)

SIGNATURE_HEADER = "X-UCGate-Signature"
TIMESTAMP_HEADER = "X-UCGate-Timestamp"
DELIVERY_HEADER = "X-UCGate-Delivery"
EVENT_HEADER = "X-UCGate-Event"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-UCGate-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify_signature(
    secret: str,
    body: bytes,
    *,
    timestamp: str,
    signature: str,
    now: float,
    tolerance: float = 300.0,
) -> bool:
    """What a receiver does: the MAC matches and the timestamp is recent."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs(now - ts) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature)


@dataclass(frozen=True, slots=True)
class WebhookTarget:
    url: str
    secret: str
    # Empty: every event type.
    events: frozenset[str] = frozenset()

    def wants(self, event_type: str) -> bool:
        return not self.events or event_type in self.events


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One event for one URL. ``id`` is unique per (url, event)."""

    id: str
    url: str
    event_id: str
    event_type: str
    body: bytes
    created_at: float
    attempts: int = 0
    next_at: float = 0.0
    dead: bool = False
    last_error: str | None = None

    def to_json(self) -> str:
        data = {
            "id": self.id,
            "url": self.url,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "body": self.body.decode(),
            "created_at": self.created_at,
            "attempts": self.attempts,
            "next_at": self.next_at,
            "dead": self.dead,
            "last_error": self.last_error,
        }
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> OutboxItem:
        d = json.loads(text)
        return cls(
            id=str(d["id"]),
            url=str(d["url"]),
            event_id=str(d["event_id"]),
            event_type=str(d["event_type"]),
            body=str(d["body"]).encode(),
            created_at=float(d["created_at"]),
            attempts=int(d["attempts"]),
            next_at=float(d["next_at"]),
            dead=bool(d["dead"]),
            last_error=None if d.get("last_error") is None else str(d["last_error"]),
        )


def item_id(url: str, event_id: str) -> str:
    return hashlib.sha256(f"{url}\n{event_id}".encode()).hexdigest()[:32]


class WebhookOutbox(Protocol):
    """Durable storage of undelivered webhook requests."""

    async def put(self, items: Sequence[OutboxItem]) -> None:
        """Persist ``items`` before returning (an existing id is left as it is)."""
        ...

    async def claim_due(self, now: float, limit: int, lease: float) -> list[OutboxItem]:
        """Live items with ``next_at <= now``; each is hidden for ``lease`` seconds so
        another node (or drain) does not send it at the same time."""
        ...

    async def delivered(self, item_id: str) -> None: ...

    async def reschedule(self, item: OutboxItem) -> None:
        """Store ``item``'s new attempts/next_at/dead/last_error."""
        ...

    async def next_due(self) -> float | None: ...

    async def items(self) -> list[OutboxItem]:
        """Everything still in the outbox, live and dead (for operators and tests)."""
        ...

    async def close(self) -> None: ...


# --- SQLite (embedded backend) ---------------------------------------------------------

FILENAME = "webhooks.sqlite3"


class SqliteOutbox:
    """The outbox in ``data_dir/webhooks.sqlite3``; every write commits before returning.

    Write-through, not write-behind: a webhook is the one place where an event leaves the
    system, so "at most one flush interval lost" is not good enough here.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (id TEXT PRIMARY KEY, next_at REAL NOT NULL,"
            " dead INTEGER NOT NULL, item TEXT NOT NULL) WITHOUT ROWID"
        )
        # Claims are in memory: after a restart every live item is due again, which is
        # the at-least-once behaviour we want.
        self._leased: dict[str, float] = {}

    @classmethod
    async def open(cls, data_dir: Path) -> SqliteOutbox:
        def make() -> SqliteOutbox:
            data_dir.mkdir(parents=True, exist_ok=True)
            return cls(data_dir / FILENAME)

        try:
            return await asyncio.to_thread(make)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"webhook outbox in {data_dir}: {exc}") from exc

    async def _run(self, sql: str, rows: Iterable[Sequence[Any]] = ((),)) -> list[Any]:
        def run() -> list[Any]:
            with self._lock:
                self._db.execute("BEGIN")
                try:
                    out: list[Any] = []
                    for row in rows:
                        out.extend(self._db.execute(sql, tuple(row)).fetchall())
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
                return out

        try:
            return await asyncio.to_thread(run)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"webhook outbox: {exc}") from exc

    async def put(self, items: Sequence[OutboxItem]) -> None:
        if items:
            await self._run(
                "INSERT OR IGNORE INTO outbox (id, next_at, dead, item) VALUES (?, ?, 0, ?)",
                [(i.id, i.next_at, i.to_json()) for i in items],
            )

    async def claim_due(self, now: float, limit: int, lease: float) -> list[OutboxItem]:
        self._leased = {k: v for k, v in self._leased.items() if v > now}
        rows = await self._run(
            "SELECT item FROM outbox WHERE dead = 0 AND next_at <= ? ORDER BY next_at LIMIT ?",
            [(now, limit + len(self._leased))],
        )
        out = []
        for (text,) in rows:
            item = OutboxItem.from_json(text)
            if item.id in self._leased:
                continue
            self._leased[item.id] = now + lease
            out.append(item)
            if len(out) == limit:
                break
        return out

    async def delivered(self, item_id: str) -> None:
        self._leased.pop(item_id, None)
        await self._run("DELETE FROM outbox WHERE id = ?", [(item_id,)])

    async def reschedule(self, item: OutboxItem) -> None:
        self._leased.pop(item.id, None)
        await self._run(
            "UPDATE outbox SET next_at = ?, dead = ?, item = ? WHERE id = ?",
            [(item.next_at, int(item.dead), item.to_json(), item.id)],
        )

    async def next_due(self) -> float | None:
        rows = await self._run("SELECT MIN(next_at) FROM outbox WHERE dead = 0")
        value = rows[0][0] if rows else None
        return None if value is None else float(value)

    async def items(self) -> list[OutboxItem]:
        rows = await self._run("SELECT item FROM outbox ORDER BY next_at")
        return [OutboxItem.from_json(text) for (text,) in rows]

    async def close(self) -> None:
        def close() -> None:
            with self._lock:
                self._db.close()

        await asyncio.to_thread(close)


# --- Redis (multi-node backend) --------------------------------------------------------

# Atomically take up to ARGV[2] due ids and push their score ARGV[3] seconds ahead, so a
# second node's claim in the same instant does not see them (at-least-once, not twice
# at once). KEYS[1] due zset, KEYS[2] items hash; ARGV[1] now.
_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[3]), id)
  local item = redis.call('HGET', KEYS[2], id)
  if item then table.insert(out, item) else redis.call('ZREM', KEYS[1], id) end
end
return out
"""


class RedisOutbox:
    """``<prefix>items`` hash id -> item JSON; ``<prefix>due`` zset of live ids by next_at.

    Dead items stay in the hash (out of the zset)."""

    def __init__(
        self, client: Redis, *, prefix: str = "ucgate:webhooks:", timeout: float = 1.0
    ) -> None:
        self._client = client
        self._items = prefix + "items"
        self._due = prefix + "due"
        self._timeout = timeout

    @contextlib.asynccontextmanager
    async def _io(self, what: str) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self._timeout):
                yield
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"webhook outbox {what}: {exc}") from exc

    async def put(self, items: Sequence[OutboxItem]) -> None:
        if not items:
            return
        async with self._io("put"):
            pipe = self._client.pipeline(transaction=True)
            for i in items:
                pipe.hsetnx(self._items, i.id, i.to_json())
                pipe.zadd(self._due, {i.id: i.next_at}, nx=True)
            await pipe.execute()

    async def claim_due(self, now: float, limit: int, lease: float) -> list[OutboxItem]:
        async with self._io("claim"):
            texts = await self._client.eval(
                _CLAIM, 2, self._due, self._items, repr(now), str(limit), repr(lease)
            )
        return [OutboxItem.from_json(t) for t in texts]

    async def delivered(self, item_id: str) -> None:
        async with self._io("delivered"):
            pipe = self._client.pipeline(transaction=True)
            pipe.zrem(self._due, item_id)
            pipe.hdel(self._items, item_id)
            await pipe.execute()

    async def reschedule(self, item: OutboxItem) -> None:
        async with self._io("reschedule"):
            pipe = self._client.pipeline(transaction=True)
            pipe.hset(self._items, item.id, item.to_json())
            if item.dead:
                pipe.zrem(self._due, item.id)
            else:
                pipe.zadd(self._due, {item.id: item.next_at})
            await pipe.execute()

    async def next_due(self) -> float | None:
        async with self._io("next_due"):
            first = await self._client.zrange(self._due, 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    async def items(self) -> list[OutboxItem]:
        async with self._io("items"):
            values = await self._client.hvals(self._items)
        return sorted((OutboxItem.from_json(v) for v in values), key=lambda i: i.next_at)

    async def close(self) -> None:
        await self._client.aclose()


# --- the sender ------------------------------------------------------------------------


class WebhookSender:
    """Fills the outbox (:meth:`publish`) and drains it (:meth:`drain` / :meth:`run`)."""

    def __init__(
        self,
        outbox: WebhookOutbox,
        targets: Sequence[WebhookTarget],
        *,
        http: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.time,
        max_attempts: int = 10,
        base_delay: float = 1.0,
        max_delay: float = 300.0,
        request_timeout: float = 10.0,
        batch: int = 50,
    ) -> None:
        self.outbox = outbox
        self.targets = tuple(targets)
        self._secrets = {t.url: t.secret for t in self.targets}
        self._http = http
        self._own_http = http is None
        self._clock = clock
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._timeout = request_timeout
        self._batch = batch
        self._wake = asyncio.Event()

    async def publish(self, event_type: str, event_id: str, payload: Mapping[str, Any]) -> int:
        """Queue the event for every target that wants it; returns how many rows."""
        wanted = [t for t in self.targets if t.wants(event_type)]
        if not wanted:
            return 0
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        now = self._clock()
        items = [
            OutboxItem(item_id(t.url, event_id), t.url, event_id, event_type, body, now, 0, now)
            for t in wanted
        ]
        await self.outbox.put(items)
        self._wake.set()
        return len(items)

    def backoff(self, attempts: int) -> float:
        """Delay after the ``attempts``-th failure."""
        return float(min(self.max_delay, self.base_delay * 2 ** (attempts - 1)))

    async def drain(self) -> int:
        """Attempt every due item once; returns the number delivered."""
        now = self._clock()
        due = await self.outbox.claim_due(now, self._batch, lease=self._timeout * 2)
        results = await asyncio.gather(*(self._attempt(item) for item in due))
        return sum(results)

    async def _attempt(self, item: OutboxItem) -> bool:
        secret = self._secrets.get(item.url)
        if secret is None:
            # The webhook was removed from the config: keep the row (dead), never drop it.
            await self.outbox.reschedule(replace(item, dead=True, last_error="url not configured"))
            return False
        error = await self._post(item, secret)
        if error is None:
            await self.outbox.delivered(item.id)
            return True
        attempts = item.attempts + 1
        dead = attempts >= self.max_attempts
        next_at = self._clock() + self.backoff(attempts)
        await self.outbox.reschedule(
            replace(item, attempts=attempts, next_at=next_at, dead=dead, last_error=error)
        )
        log.warning(
            "webhook.attempt_failed",
            url=item.url,
            event_id=item.event_id,
            attempts=attempts,
            dead=dead,
            error=error,
        )
        return False

    async def _post(self, item: OutboxItem, secret: str) -> str | None:
        """None on a 2xx, else what went wrong."""
        if self._http is None:
            self._http = aiohttp.ClientSession()
        timestamp = int(self._clock())
        headers = {
            "Content-Type": "application/json",
            EVENT_HEADER: item.event_type,
            DELIVERY_HEADER: item.event_id,
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(secret, timestamp, item.body),
        }
        try:
            async with self._http.post(
                item.url,
                data=item.body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                allow_redirects=False,
            ) as response:
                await response.read()
                if 200 <= response.status < 300:
                    return None
                return f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"

    async def run(self, idle: float = 5.0) -> None:
        """Drain until cancelled: at once after :meth:`publish`, else when the next
        retry is due (at most ``idle`` seconds apart, for rows other nodes added)."""
        while True:
            self._wake.clear()
            try:
                await self.drain()
                due = await self.outbox.next_due()
            except StoreUnavailable as exc:
                log.warning("webhook.outbox_unavailable", error=str(exc))
                due = None
            wait = idle if due is None else max(0.0, min(idle, due - self._clock()))
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()

    async def close(self) -> None:
        if self._own_http and self._http is not None:
            await self._http.close()
            self._http = None
