"""The shared location store on Redis, for several ucgate nodes behind one address.

Key layout (prefix ``ucgate:loc:`` by default; part of the shared format, change with care):

``ucgate:loc:aor:<aor>``  hash
    field = Contact URI text, value = :meth:`Binding.to_json` of that binding *without* the
    ``a`` and ``c`` fields (the key and the field already hold them; dropping them keeps the
    value small).
``ucgate:loc:exp``  sorted set
    member = ``<aor>\\x00<contact>`` (NUL cannot occur in a SIP URI, RFC 3261 §25.1),
    score = ``expires_at``. Every hash field has exactly one member here; both are written in
    the same MULTI/EXEC or Lua call, so they never disagree.

Atomicity:

- :meth:`RedisLocationStore.update` is an optimistic transaction: WATCH the AOR hash, read
  it, run the registrar's pure function in Python, then MULTI/EXEC the difference. If another
  node (or the sweeper) touched the hash in between, EXEC fails and the round is retried, at
  most ``max_attempts`` times, then :class:`StoreConflict`. Tasks of one node first queue on a
  per-AOR ``asyncio.Lock``, so only other nodes can make EXEC fail.
- :meth:`RedisLocationStore.expire` claims due members with one Lua script per batch
  (ZRANGEBYSCORE, ZREM, HGET, HDEL inside the script): a member is returned only by the call
  that removed it, so with any number of sweeping nodes each binding is reported once.

Safety net: every write sets a relative TTL (PEXPIRE) on the AOR hash to the latest
``expires_at`` in it plus ``ttl_margin``, and raises the TTL of the sorted set to at least that
(PEXPIRE NX then GT, Redis >= 7.0). If every node dies, nothing stays forever. The TTL is
relative to ``now`` rather than absolute (PEXPIREAT) so that a node whose clock is off does not
make keys vanish at once or live for years.

Bounded waiting: every public call runs under ``asyncio.timeout(timeout)`` and the client has
socket timeouts and no retries of its own, so an unreachable, stopped or paused Redis raises
:class:`StoreUnavailable` after at most ``timeout`` seconds, never a hang.

Limits: the sweep script touches hash keys it does not declare in KEYS, so this layout suits a
single Redis (optionally with Sentinel failover), not Redis Cluster.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError, WatchError

from ucgate.store.location import (
    Binding,
    StoreConflict,
    StoreUnavailable,
    UpdateFn,
    check_update_result,
    sort_bindings,
)
from ucgate.store.redis_common import KeyLocks, bounded_client

log = structlog.get_logger(__name__)

DEFAULT_PREFIX = "ucgate:loc:"

# KEYS[1] = the expiry sorted set; ARGV = now, batch size, AOR hash key prefix.
# Returns {members examined, aor1, contact1, value1, aor2, ...}. Atomic: a member is claimed
# (ZREM) by exactly one caller. A member whose hash field is gone (the key TTL fired) is just
# dropped.
_SWEEP_LUA = """
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local out = {#members}
for _, m in ipairs(members) do
  redis.call('ZREM', KEYS[1], m)
  local sep = string.find(m, '\\0', 1, true)
  if sep then
    local aor = string.sub(m, 1, sep - 1)
    local contact = string.sub(m, sep + 1)
    local hkey = ARGV[3] .. aor
    local value = redis.call('HGET', hkey, contact)
    if value then
      redis.call('HDEL', hkey, contact)
      out[#out + 1] = aor
      out[#out + 1] = contact
      out[#out + 1] = value
    end
  end
end
return out
"""


class _CallerFailed(Exception):
    """Carries an exception raised by the registrar's update function past the I/O guard."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(repr(error))
        self.error = error


class RedisLocationStore:
    """Bindings in Redis, shared by every node that uses the same server and prefix."""

    def __init__(
        self,
        client: Redis,
        *,
        node_id: str,
        timeout: float = 1.0,
        key_prefix: str = DEFAULT_PREFIX,
        ttl_margin: float = 300.0,
        max_attempts: int = 16,
        sweep_batch: int = 256,
    ) -> None:
        self.node_id = node_id
        self._client = client
        self._timeout = timeout
        self._aor_prefix = key_prefix + "aor:"
        self._exp_key = key_prefix + "exp"
        self._ttl_margin = ttl_margin
        self._max_attempts = max_attempts
        self._sweep_batch = sweep_batch
        self._sweep = client.register_script(_SWEEP_LUA)
        self._locks = KeyLocks()

    @classmethod
    async def connect(
        cls, url: str, *, node_id: str, timeout: float = 1.0, **options: Any
    ) -> RedisLocationStore:
        """Connect to ``url`` and check it answers; raise StoreUnavailable if it does not."""
        client = bounded_client(url, timeout)
        store = cls(client, node_id=node_id, timeout=timeout, **options)
        try:
            async with store._io("ping"):
                await client.ping()
        except StoreUnavailable:
            await client.aclose()
            raise
        return store

    def key_for(self, aor: str) -> str:
        return self._aor_prefix + aor

    @property
    def expiry_key(self) -> str:
        return self._exp_key

    async def lookup(self, aor: str, now: float) -> list[Binding]:
        async with self._io("lookup"):
            raw = await self._client.hgetall(self.key_for(aor))
        return sort_bindings(b for b in self._decode(aor, _strs(raw)) if b.expires_at > now)

    async def update(self, aor: str, fn: UpdateFn, now: float) -> list[Binding]:
        try:
            async with self._io("update"), self._locks.hold(aor):
                return await self._update(aor, fn, now)
        except _CallerFailed as failed:
            raise failed.error from None

    async def _update(self, aor: str, fn: UpdateFn, now: float) -> list[Binding]:
        key = self.key_for(aor)
        for attempt in range(self._max_attempts):
            async with self._client.pipeline(transaction=True) as pipe:
                await pipe.watch(key)
                stored = self._decode(aor, _strs(await pipe.hgetall(key)))
                live = sort_bindings(b for b in stored if b.expires_at > now)
                try:
                    result = list(fn(live))
                    check_update_result(aor, result, now)
                except Exception as exc:
                    raise _CallerFailed(exc) from exc
                self._queue_diff(pipe, aor, stored, live, result, now)
                try:
                    await pipe.execute()
                except WatchError:
                    # Another node wrote this AOR between our read and EXEC. Back off a
                    # random moment so two nodes do not retry in lockstep.
                    await asyncio.sleep(random.uniform(0, 0.001 * (attempt + 1)))
                    continue
                return sort_bindings(result)
        raise StoreConflict(f"update of {aor!r} lost {self._max_attempts} races in a row")

    def _queue_diff(
        self,
        pipe: Any,
        aor: str,
        stored: list[Binding],
        live: list[Binding],
        result: list[Binding],
        now: float,
    ) -> None:
        key = self.key_for(aor)
        pipe.multi()
        keep = {b.contact for b in result}
        gone = [b.contact for b in live if b.contact not in keep]
        if gone:
            pipe.hdel(key, *gone)
            pipe.zrem(self._exp_key, *(_member(aor, c) for c in gone))
        if result:
            pipe.hset(key, mapping={b.contact: _value(b) for b in result})
            pipe.zadd(self._exp_key, {_member(aor, b.contact): b.expires_at for b in result})
        # What the hash holds after EXEC: the result plus expired bindings not yet swept.
        after = [b for b in stored if b.expires_at <= now and b.contact not in keep] + result
        if after:
            latest = max(b.expires_at for b in after)
            ttl_ms = max(1, math.ceil((latest - now + self._ttl_margin) * 1000))
            pipe.pexpire(key, ttl_ms)
            pipe.pexpire(self._exp_key, ttl_ms, nx=True)
            pipe.pexpire(self._exp_key, ttl_ms, gt=True)
        else:
            pipe.delete(key)

    async def expire(self, now: float) -> list[Binding]:
        removed: list[Binding] = []
        while True:
            # One timeout per batch, not per sweep: a large backlog after an outage takes
            # several batches, and bindings already claimed must reach the caller.
            try:
                async with self._io("expire"):
                    reply = await self._sweep(
                        keys=[self._exp_key],
                        args=[repr(now), self._sweep_batch, self._aor_prefix],
                    )
            except StoreUnavailable:
                if not removed:
                    raise
                return removed  # the rest stays due; next_expiry() brings the caller back
            for i in range(1, len(reply), 3):
                binding = self._decode_one(reply[i], reply[i + 1], reply[i + 2])
                if binding is not None:
                    removed.append(binding)
            if int(reply[0]) < self._sweep_batch:
                return removed

    async def next_expiry(self) -> float | None:
        async with self._io("next_expiry"):
            first = await self._client.zrange(self._exp_key, 0, 0, withscores=True)
        return float(cast(tuple[str, float], first[0])[1]) if first else None

    async def count(self) -> int:
        async with self._io("count"):
            return await self._client.zcard(self._exp_key)

    async def aors(self) -> list[str]:
        found: set[str] = set()
        cut = len(self._aor_prefix)
        async with self._io("aors"):
            async for key in self._client.scan_iter(match=_glob_escape(self._aor_prefix) + "*"):
                found.add(key[cut:])
        return sorted(found)

    async def flush(self) -> None:
        """Nothing to do: every update is written through."""

    async def close(self) -> None:
        await self._client.aclose()

    @asynccontextmanager
    async def _io(self, operation: str) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self._timeout):
                yield
        except (RedisError, OSError) as exc:  # TimeoutError is an OSError
            log.warning("location.redis_unavailable", operation=operation, error=str(exc))
            raise StoreUnavailable(f"redis {operation} failed: {exc!s}") from exc

    def _decode(self, aor: str, raw: dict[str, str]) -> list[Binding]:
        out = []
        for contact, value in raw.items():
            binding = self._decode_one(aor, contact, value)
            if binding is not None:
                out.append(binding)
        return out

    def _decode_one(self, aor: str, contact: str, value: str) -> Binding | None:
        try:
            data = json.loads(value)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            return Binding.from_dict({**data, "a": aor, "c": contact})
        except ValueError as exc:
            # Not our format (someone else wrote under our prefix): skip it, never crash
            # the registrar over one field.
            log.warning("location.redis_bad_binding", aor=aor, contact=contact, error=str(exc))
            return None


def _strs(raw: dict[Any, Any]) -> dict[str, str]:
    # The client is built with decode_responses=True; redis-py's types cannot express that.
    return cast(dict[str, str], raw)


def _member(aor: str, contact: str) -> str:
    return f"{aor}\x00{contact}"


def _value(binding: Binding) -> str:
    data = binding.to_dict()
    del data["a"], data["c"]
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
