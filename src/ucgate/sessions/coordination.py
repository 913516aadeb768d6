"""Routing coordinated across the nodes of a site, through Redis (the asyncio adapter).

One node routes at a time: the holder of the lease of :mod:`ucgate.sessions.leader`. Key
layout (prefix ``ucgate:sessions:``, next to the store's keys; a shared format):

``leader``          string ``<node>:<epoch>``, ``PX`` = the lease TTL: who routes.
``leader:epoch``    counter; each acquisition takes the next value, so tokens never repeat.
``routing:inputs``  stream: routing inputs forwarded by nodes that do not route. Fields
                    ``s`` (a session whose channels changed) or ``a`` (an agent whose load
                    changed), ``n`` (sending node).
``routing:outcomes`` stream: what the router wrote (offers, timeouts, overflows), appended in
                    the same MULTI/EXEC as the session write. Fields ``n`` (router node),
                    ``id`` (event id, the webhook idempotency key), ``type``, ``at``,
                    ``channel``, ``agent``, ``data`` (JSON), ``session`` (JSON).

Inputs carry no decision, only "look at this session / agent again": the router re-reads the
store and reconciles its engine with it (``SessionService.routing_inputs``). That makes a
forwarded input idempotent, so one read twice (a new router replaying the stream) changes
nothing the second time; and a new router needs no input history at all. It notes the
stream's tail, rebuilds the engine from the store (every forwarded input's store write is
done before its XADD, so everything up to that tail is already in what it reads), then
reads inputs from the tail on.

Fencing: each routing write goes through :meth:`RedisSessionStore.update` with a
:class:`~ucgate.sessions.store_redis.Fence`: the lease key is WATCHed and must still hold the
writer's token. A router that was paused past its lease (its belief outlived the key) and
wakes up has its writes refused with :class:`~ucgate.sessions.leader.NotLeader`.

Every node reads ``routing:outcomes`` and republishes entries written by *other* nodes on its
local event bus, so the node holding the offered agent's WebSocket (``/v1/events``) or the
queued call (the B2BUA rings the agent) hears of the offer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, cast

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ucgate.sessions.leader import Demoted, Lease, LeaseAction, LeaseEvent, Promoted
from ucgate.sessions.model import Session
from ucgate.sessions.store import UpdateFn
from ucgate.sessions.store_redis import DEFAULT_PREFIX, Fence, RedisSessionStore
from ucgate.store.location import StoreUnavailable
from ucgate.store.redis_common import bounded_client

__all__ = ["RedisRoutingCoordinator", "RoutingHost"]

log = structlog.get_logger(__name__)

_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local token = ARGV[1] .. ':' .. redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token, 'PX', ARGV[2])
return token
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_ERRORS = (RedisError, OSError, TimeoutError)


class RoutingHost(Protocol):
    """What the coordinator drives: the sessions service."""

    async def take_lead(self, token: str) -> None:
        """Rebuild the engine from the store and start routing."""
        ...

    async def give_up_lead(self, reason: str) -> None:
        """Forget the engine's state and stop routing."""
        ...

    async def routing_inputs(self, sessions: Sequence[str], agents: Sequence[str]) -> None:
        """Reconcile the engine with these sessions and agents (forwarded inputs)."""
        ...

    def remote_outcome(self, fields: Mapping[str, str]) -> None:
        """Publish locally what another node's router wrote."""
        ...


class RedisRoutingCoordinator:
    def __init__(
        self,
        store: RedisSessionStore,
        client: Redis,
        reader: Redis,
        *,
        node_id: str,
        lease: Lease,
        key_prefix: str = DEFAULT_PREFIX,
        clock: Callable[[], float] = time.monotonic,
        timeout: float = 1.0,
        block: float = 1.0,
        stream_maxlen: int = 10_000,
    ) -> None:
        self.node_id = node_id
        self._store = store
        self._client = client
        # Blocking XREADs hold their connection; they get their own client whose socket
        # timeout outlasts the block.
        self._reader = reader
        self._lease = lease
        self._clock = clock
        self._timeout = timeout
        self._block_ms = max(1, int(block * 1000))
        self._maxlen = stream_maxlen
        self.lease_key = key_prefix + "leader"
        self._epoch_key = key_prefix + "leader:epoch"
        self.inputs_key = key_prefix + "routing:inputs"
        self.outcomes_key = key_prefix + "routing:outcomes"
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._host: RoutingHost | None = None
        self._changes: asyncio.Queue[LeaseEvent] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._inputs_task: asyncio.Task[None] | None = None
        # Counters for tests and the bench.
        self.inputs_read = 0
        self.promotions = 0

    @classmethod
    async def connect(
        cls,
        url: str,
        store: RedisSessionStore,
        *,
        node_id: str,
        lease_ttl: float,
        timeout: float = 1.0,
        **options: Any,
    ) -> RedisRoutingCoordinator:
        client = bounded_client(url, timeout)
        block = float(options.pop("block", 1.0))
        reader = Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=block + timeout + 1.0,
            socket_connect_timeout=timeout,
        )
        return cls(
            store,
            client,
            reader,
            node_id=node_id,
            lease=Lease(lease_ttl),
            timeout=timeout,
            block=block,
            **options,
        )

    # --- what the service calls ---------------------------------------------------------

    def leading(self) -> bool:
        return self._lease.leading(self._clock())

    async def forward(self, *, session_id: str | None = None, agent: str | None = None) -> None:
        """Ask the router to look at this session / agent again (this node does not route)."""
        fields = {"n": self.node_id}
        if session_id is not None:
            fields["s"] = session_id
        if agent is not None:
            fields["a"] = agent
        try:
            async with asyncio.timeout(self._timeout):
                await self._client.xadd(
                    self.inputs_key,
                    cast(Any, fields),
                    maxlen=self._maxlen,
                    approximate=True,
                )
        except _ERRORS as exc:
            raise StoreUnavailable(f"routing input: {type(exc).__name__}: {exc}") from exc

    async def routing_update(
        self, session_id: str, fn: UpdateFn, entry: Callable[[Session], Mapping[str, str]]
    ) -> Session:
        """A routing write, fenced by this node's lease token and announced on the
        outcomes stream in the same transaction."""
        token = self._lease.token
        if token is None:
            token = "(none)"  # refused by the fence: nobody holds a token "(none)"
        fence = Fence(
            self.lease_key,
            token,
            self.outcomes_key,
            lambda s: {"n": self.node_id, **entry(s)},
            self._maxlen,
        )
        return await self._store.update(session_id, fn, fence=fence)

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self, host: RoutingHost) -> None:
        self._host = host
        loop = asyncio.get_running_loop()
        outcomes_from = await self._tail(self.outcomes_key)
        self._tasks = [
            loop.create_task(self._run_lease()),
            loop.create_task(self._run_leadership()),
            loop.create_task(self._read_outcomes(outcomes_from)),
        ]

    async def close(self) -> None:
        """Resign (the lease is released, so a standby takes over at once, not after the
        TTL), then stop every task."""
        if self._closing:
            return
        self._closing = True
        self._wake.set()
        token = self._lease.resign(self._clock())
        if token is not None:
            with contextlib.suppress(*_ERRORS):
                async with asyncio.timeout(self._timeout):
                    await self._release(keys=[self.lease_key], args=[token])
            log.info("sessions.leader_resigned", node=self.node_id, lease=token)
        tasks = [*self._tasks, *([self._inputs_task] if self._inputs_task else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if token is not None and self._host is not None:
            await self._host.give_up_lead("resigned")
        await self._client.aclose()
        await self._reader.aclose()

    # --- the lease ----------------------------------------------------------------------

    async def tick(self) -> list[LeaseEvent]:
        """One step of the lease: send the request that is due (if any), return what
        changed. The loop of :meth:`start` calls it at each deadline; tests call it with a
        stepped clock."""
        now = self._clock()
        action = self._lease.due(now)
        if action is not None:
            await self._send(action, now)
        events: list[LeaseEvent] = []
        while (event := self._lease.next_event()) is not None:
            events.append(event)
        return events

    async def _run_lease(self) -> None:
        while not self._closing:
            self._wake.clear()
            for event in await self.tick():
                self._changes.put_nowait(event)
            delay = self._lease.next_deadline() - self._clock()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)

    async def _send(self, action: LeaseAction, sent_at: float) -> None:
        ttl_ms = str(int(self._lease.ttl * 1000))
        try:
            async with asyncio.timeout(self._timeout):
                if action is LeaseAction.ACQUIRE:
                    token = await self._acquire(
                        keys=[self.lease_key, self._epoch_key], args=[self.node_id, ttl_ms]
                    )
                    self._lease.acquired(str(token) if token else None, sent_at, self._clock())
                else:
                    ok = await self._renew(
                        keys=[self.lease_key], args=[self._lease.token or "", ttl_ms]
                    )
                    self._lease.renewed(bool(ok), sent_at, self._clock())
        except _ERRORS as exc:
            log.warning("sessions.lease_unreachable", action=action.value, error=str(exc))
            self._lease.failed(sent_at, self._clock())

    async def _run_leadership(self) -> None:
        """Apply lease changes to the service, one at a time, in order (a rebuild can take
        longer than a renewal period, so this is not the lease loop's job)."""
        assert self._host is not None
        while True:
            event = await self._changes.get()
            if isinstance(event, Promoted):
                started = self._clock()
                # Inputs from here on are read; older ones are in the store the rebuild reads.
                try:
                    inputs_from = await self._tail(self.inputs_key)
                except _ERRORS:
                    inputs_from = "0-0"  # replaying is harmless (inputs are idempotent)
                self.promotions += 1
                try:
                    await self._host.take_lead(event.token)
                except (StoreUnavailable, *_ERRORS) as exc:
                    # Holding the lease without routing would stall the site: let it go
                    # (another node, or this one at its next try, rebuilds).
                    log.warning("sessions.rebuild_failed", lease=event.token, error=str(exc))
                    await self._abandon("rebuild failed")
                    continue
                self._inputs_task = asyncio.get_running_loop().create_task(
                    self._read_inputs(inputs_from)
                )
                log.info(
                    "sessions.leader_promoted",
                    node=self.node_id,
                    lease=event.token,
                    rebuild_ms=round((self._clock() - started) * 1000, 1),
                )
            elif isinstance(event, Demoted):
                if self._inputs_task is not None:
                    self._inputs_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await self._inputs_task
                    self._inputs_task = None
                await self._host.give_up_lead(event.reason)
                log.warning(
                    "sessions.leader_demoted",
                    node=self.node_id,
                    lease=event.token,
                    reason=event.reason,
                )

    async def _abandon(self, reason: str) -> None:
        token = self._lease.abandon(self._clock(), reason)
        if token is not None:
            with contextlib.suppress(*_ERRORS):
                async with asyncio.timeout(self._timeout):
                    await self._release(keys=[self.lease_key], args=[token])
        self._wake.set()  # the lease loop hands the Demoted event over

    # --- the streams --------------------------------------------------------------------

    async def _tail(self, stream: str) -> str:
        async with asyncio.timeout(self._timeout):
            last = await self._client.xrevrange(stream, count=1)
        return str(last[0][0]) if last else "0-0"

    async def _xread(self, stream: str, last: str) -> list[tuple[str, dict[str, str]]]:
        reply = cast(
            list[tuple[str, list[tuple[str, dict[str, str]]]]] | None,
            await self._reader.xread({stream: last}, count=1000, block=self._block_ms),
        )
        out: list[tuple[str, dict[str, str]]] = []
        for _, entries in reply or []:
            out.extend((str(i), dict(f)) for i, f in entries)
        return out

    async def pump_inputs(self, host: RoutingHost, last: str) -> str:
        """Read the forwarded inputs after ``last`` (waiting up to the block time for
        some) and hand them to ``host`` as one batch; returns the new last id."""
        entries = await self._xread(self.inputs_key, last)
        if not entries:
            return last
        self.inputs_read += len(entries)
        sessions = list(dict.fromkeys(f["s"] for _, f in entries if "s" in f))
        agents = list(dict.fromkeys(f["a"] for _, f in entries if "a" in f))
        await host.routing_inputs(sessions, agents)
        return entries[-1][0]

    async def pump_outcomes(self, host: RoutingHost, last: str) -> str:
        """Publish through ``host`` what other nodes' routers wrote after ``last``."""
        entries = await self._xread(self.outcomes_key, last)
        for entry_id, fields in entries:
            last = entry_id
            if fields.get("n") != self.node_id:
                host.remote_outcome(fields)
        return last

    async def _read_inputs(self, last: str) -> None:
        assert self._host is not None
        await self._follow(self.pump_inputs, self._host, last, "inputs")

    async def _read_outcomes(self, last: str) -> None:
        assert self._host is not None
        await self._follow(self.pump_outcomes, self._host, last, "outcomes")

    async def _follow(
        self,
        pump: Callable[[RoutingHost, str], Awaitable[str]],
        host: RoutingHost,
        last: str,
        what: str,
    ) -> None:
        backoff = 0.05
        while True:
            try:
                last = await pump(host, last)
                backoff = 0.05
            except (StoreUnavailable, *_ERRORS) as exc:
                # The batch is read again after the back-off (``last`` did not move).
                log.warning("sessions.stream_unreadable", stream=what, error=str(exc))
                await asyncio.sleep(backoff)  # reconnect back-off, not a synchronisation
                backoff = min(backoff * 2, 1.0)
