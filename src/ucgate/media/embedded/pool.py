"""The worker pool's bookkeeping, sans-IO: which media session lives on which worker,
when to spawn, when a worker is presumed dead.

No processes, pipes or clocks here: the adapter (:mod:`ucgate.media.embedded.anchor`)
spawns and kills, and passes ``now`` in. Every decision (placement, 503 when full,
which keys a dead worker takes with it, when to ping) is a plain method call, so it is
unit-tested without a subprocess.

Liveness: each ready worker is pinged every ``ping_interval`` seconds; a worker that has
not answered a ping within ``ping_timeout`` is *unresponsive* and the adapter kills it.
A worker whose pipe closes (it crashed, or was killed) is *lost*. Either way
:meth:`PoolBook.worker_lost` returns exactly the keys that worker held and forgets them;
the other workers' sessions are untouched.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from ucgate.media.anchor import MediaError, MediaKey

#: A worker is one Python process: one core at most (the GIL), and every session's media
#: runs on its event loop. Measured 6-11 % of a core per bridged call
#: (bench/media/embedded_cpu.py), so 16 is already more than one process can carry; the
#: bound only stops a configuration typo. The default stays at 4, the pjsua2 limit
#: (PJSUA2_NOTES.md) this pool was first sized for: small workers lose fewer calls when
#: one dies, and more workers spread over the cores.
MAX_CALLS_PER_WORKER = 16
DEFAULT_CALLS_PER_WORKER = 4


class WorkerStatus(enum.Enum):
    STARTING = "starting"
    READY = "ready"


@dataclass(slots=True)
class WorkerSlot:
    id: int
    status: WorkerStatus = WorkerStatus.STARTING
    keys: set[MediaKey] = field(default_factory=set)
    ping_sent_at: float | None = None
    next_ping_at: float = math.inf


@dataclass(frozen=True, slots=True)
class Placement:
    worker: int
    spawn: bool  # True: the adapter must start this worker before using it


@dataclass(frozen=True, slots=True)
class PingDue:
    worker: int


@dataclass(frozen=True, slots=True)
class WorkerUnresponsive:
    worker: int


TimerAction = PingDue | WorkerUnresponsive


class PoolBook:
    def __init__(
        self,
        *,
        max_workers: int = 4,
        calls_per_worker: int = DEFAULT_CALLS_PER_WORKER,
        ping_interval: float = 2.0,
        ping_timeout: float = 5.0,
    ) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        if not 1 <= calls_per_worker <= MAX_CALLS_PER_WORKER:
            raise ValueError(f"calls_per_worker must be between 1 and {MAX_CALLS_PER_WORKER}")
        self.max_workers = max_workers
        self.calls_per_worker = calls_per_worker
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.workers: dict[int, WorkerSlot] = {}
        self.placement: dict[MediaKey, int] = {}
        self._next_id = 1
        self.spawned = 0
        self.lost = 0

    # ------------------------------------------------------------------ workers
    def new_worker(self) -> int:
        """Reserve a worker id (the adapter then spawns the process)."""
        if len(self.workers) >= self.max_workers:
            raise MediaError(503, "media worker pool is at max_workers")
        wid = self._next_id
        self._next_id += 1
        self.workers[wid] = WorkerSlot(wid)
        self.spawned += 1
        return wid

    def worker_ready(self, wid: int, now: float) -> None:
        slot = self.workers.get(wid)
        if slot is not None:
            slot.status = WorkerStatus.READY
            slot.next_ping_at = now + self.ping_interval

    def worker_lost(self, wid: int) -> list[MediaKey]:
        """Forget a worker; returns the keys it held (sorted, for stable reports)."""
        slot = self.workers.pop(wid, None)
        if slot is None:
            return []
        self.lost += 1
        for key in slot.keys:
            self.placement.pop(key, None)
        return sorted(slot.keys, key=lambda k: (k.call_id, k.branch))

    # ------------------------------------------------------------------ sessions
    def place(self, key: MediaKey) -> Placement:
        """The worker for ``key``: where it already lives, else the least loaded worker
        with a free slot (spreads calls over processes, hence over cores), else a new
        worker, else :class:`MediaError` 503 (RFC 3261 §21.5.4: out of capacity)."""
        wid = self.placement.get(key)
        if wid is not None:
            return Placement(wid, spawn=False)
        free = [s for s in self.workers.values() if len(s.keys) < self.calls_per_worker]
        if free:
            slot = min(free, key=lambda s: (len(s.keys), s.id))
            self._bind(key, slot)
            return Placement(slot.id, spawn=False)
        if len(self.workers) >= self.max_workers:
            raise MediaError(503, "media capacity exhausted")
        slot = self.workers[self.new_worker()]
        self._bind(key, slot)
        return Placement(slot.id, spawn=True)

    def _bind(self, key: MediaKey, slot: WorkerSlot) -> None:
        slot.keys.add(key)
        self.placement[key] = slot.id

    def release(self, key: MediaKey) -> int | None:
        """Free ``key``'s slot; returns the worker it was on (None if unknown)."""
        wid = self.placement.pop(key, None)
        if wid is not None and wid in self.workers:
            self.workers[wid].keys.discard(key)
        return wid

    def worker_of(self, key: MediaKey) -> int | None:
        return self.placement.get(key)

    # ------------------------------------------------------------------ liveness
    def ping_sent(self, wid: int, now: float) -> None:
        slot = self.workers.get(wid)
        if slot is not None and slot.ping_sent_at is None:
            slot.ping_sent_at = now

    def pong(self, wid: int, now: float) -> None:
        slot = self.workers.get(wid)
        if slot is not None:
            slot.ping_sent_at = None
            slot.next_ping_at = now + self.ping_interval

    def next_deadline(self) -> float:
        deadline = math.inf
        for slot in self.workers.values():
            if slot.status is not WorkerStatus.READY:
                continue
            if slot.ping_sent_at is not None:
                deadline = min(deadline, slot.ping_sent_at + self.ping_timeout)
            else:
                deadline = min(deadline, slot.next_ping_at)
        return deadline

    def handle_timer(self, now: float) -> list[TimerAction]:
        actions: list[TimerAction] = []
        for slot in list(self.workers.values()):
            if slot.status is not WorkerStatus.READY:
                continue
            if slot.ping_sent_at is not None:
                if now >= slot.ping_sent_at + self.ping_timeout:
                    actions.append(WorkerUnresponsive(slot.id))
            elif now >= slot.next_ping_at:
                actions.append(PingDue(slot.id))
        return actions

    # ------------------------------------------------------------------ reporting
    def stats(self) -> dict[str, object]:
        return {
            "sessions": len(self.placement),
            "workers": len(self.workers),
            "workers_ready": sum(
                1 for s in self.workers.values() if s.status is WorkerStatus.READY
            ),
            "capacity": self.max_workers * self.calls_per_worker,
            "workers_spawned": self.spawned,
            "workers_lost": self.lost,
        }
