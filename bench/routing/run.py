"""Routing benchmark: offers per second, "session created → agent offered" latency, and
memory per session, in-process (no sockets), 500 agents, up to 5,000 concurrent sessions.

Three rows, the same seeded scenario each (see README.md):

* ``engine``: the sans-IO :class:`RoutingEngine` alone, fed ``AgentState`` objects by a
  thin driver that counts load itself (what routing costs with no store and no service);
* ``service``: a real :class:`SessionService` over a real :class:`MemorySessionStore`
  (``data_dir=None``), no presence (agents come from ``AgentProfile``: routable, with a
  device), one event-stream subscriber;
* ``service+sqlite``: the same with a temporary ``data_dir``, the SQLite write-behind
  flusher running every 0.2 s on its worker thread.

Each run has two phases. **Ramp**: sessions are created one at a time and every offer is
accepted at once, until the first session has to wait (every agent who could take it is
full); per session, the time from the ``create_session`` call to its ``offer_made`` on the
event stream. **Backlog**: creation goes on with every agent loaded, so sessions wait; at
rising backlog sizes, "churn" cycles (the oldest handled chat or call ends and its wrap-up
is done, the freed slot is offered to a waiting session, accepted, and a new session
arrives) give the cost of routing with that many waiting. The phase stops at the target
number of open sessions, at its time budget, or when one operation exceeds ``--max-op``.
A **dispatch probe** then times single engine inputs at backlogs up to the target (built
directly, see :func:`dispatch_probe`), which the quadratic dispatch keeps a run from
reaching. Memory is measured in child processes (a clean heap each): tracemalloc and RSS deltas.

    bench/routing/run.sh                      # 3 repeats, medians, JSON in bench/results/
    bench/routing/run.sh --repeats 1 --budget 5
    bench/routing/run.sh --profile            # cProfile of one service run, top functions
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import datetime as dt
import gc
import json
import os
import platform
import pstats
import random
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from ucgate.logs import configure_logging
from ucgate.sessions.model import AgentState, ChannelInput, Customer, Media
from ucgate.sessions.routing import OfferMade, QueueSpec, RoutingEngine
from ucgate.sessions.service import OFFER_MADE, AgentProfile, SessionEvent, SessionService
from ucgate.sessions.store import MemorySessionStore

ROOT = Path(__file__).resolve().parents[2]
ROWS = ("engine", "service", "service+sqlite")
SKILLS = ("billing", "tech", "sales", "english", "spanish")
# Voice and chat in every queue (the example); skills make agents unequal.
QUEUES = (
    QueueSpec("billing", frozenset({Media.VOICE, Media.CHAT}), ("billing",), priority=10),
    QueueSpec("tech", frozenset({Media.VOICE, Media.CHAT}), ("tech", "english")),
    QueueSpec("sales", frozenset({Media.VOICE, Media.CHAT}), ("sales",)),
    QueueSpec("general", frozenset({Media.VOICE, Media.CHAT}), ()),
)
QUEUE_WEIGHTS = (0.3, 0.25, 0.15, 0.3)
CAPACITY = {"voice": 1, "chat": 3, "email": 5}
LADDER = (25, 50, 100, 200, 400, 800, 1600, 3200, 6400)
# Safety bounds for loops whose length the code under test decides.
MAX_OFFERS_PER_STEP = 10_000


@dataclass(frozen=True, slots=True)
class Arrival:
    customer_id: str
    phone: str
    media: Media
    queue: str


@dataclass(frozen=True, slots=True)
class Offer:
    session_id: str
    channel_id: str
    agent: str
    media: Media
    # perf_counter() when the bench saw the offer.
    seen_at: float


def make_agents(n: int, rng: random.Random) -> dict[str, AgentProfile]:
    agents: dict[str, AgentProfile] = {}
    for i in range(n):
        skills = {s: rng.randint(1, 10) for s in SKILLS if rng.random() < 0.5}
        agents[f"agent{i:04d}"] = AgentProfile(capacity=dict(CAPACITY), skills=skills)
    return agents


def make_arrivals(n: int, voice_share: float, rng: random.Random) -> list[Arrival]:
    names = [q.id for q in QUEUES]
    out: list[Arrival] = []
    for i in range(n):
        media = Media.VOICE if rng.random() < voice_share else Media.CHAT
        queue = rng.choices(names, QUEUE_WEIGHTS)[0]
        out.append(Arrival(f"cust{i:06d}", f"+1555{i:07d}", media, queue))
    return out


# --- drivers: the same operations on the bare engine and on the service ----------------


class Driver(Protocol):
    async def start(self) -> None: ...

    async def create(self, a: Arrival) -> tuple[str, list[Offer]]:
        """Create a session with one channel; its id and the offers seen meanwhile."""
        ...

    async def accept(self, offer: Offer) -> list[Offer]: ...

    async def finish(self, offer: Offer) -> list[Offer]:
        """The accepted channel ends and its wrap-up is done (the session closes)."""
        ...

    async def stop(self) -> None: ...


class EngineDriver:
    """The engine alone. Load is counted here (accepted channels per agent and media), the
    engine adds its own open offers, as it does behind the service."""

    def __init__(self, agents: dict[str, AgentProfile]) -> None:
        self.engine = RoutingEngine(QUEUES)
        self._profiles = agents
        self._load: dict[str, dict[Media, int]] = {a: {} for a in agents}
        self._idle: dict[str, float] = {}
        self._n = 0

    def _state(self, agent: str) -> AgentState:
        p = self._profiles[agent]
        return AgentState(
            id=agent,
            capacity={Media(k): v for k, v in p.capacity.items()},
            skills=dict(p.skills),
            load=dict(self._load[agent]),
            idle_since=self._idle.get(agent, 0.0),
        )

    def _drain(self) -> list[Offer]:
        out: list[Offer] = []
        for _ in range(MAX_OFFERS_PER_STEP):
            ev = self.engine.next_event()
            if ev is None:
                return out
            if isinstance(ev, OfferMade):
                out.append(
                    Offer(ev.session_id, ev.channel_id, ev.agent, ev.media, time.perf_counter())
                )
        raise RuntimeError("engine produced too many events for one step")

    async def start(self) -> None:
        now = time.time()
        for agent in self._profiles:
            self._idle[agent] = now
            self.engine.agent_changed(self._state(agent), now)
        self._drain()

    async def create(self, a: Arrival) -> tuple[str, list[Offer]]:
        self._n += 1
        sid = f"s{self._n}"
        self.engine.enqueue(sid, f"{sid}-1", a.queue, a.media, time.time())
        return sid, self._drain()

    async def accept(self, offer: Offer) -> list[Offer]:
        now = time.time()
        self.engine.accept(offer.session_id, offer.channel_id, offer.agent, now)
        load = self._load[offer.agent]
        load[offer.media] = load.get(offer.media, 0) + 1
        self.engine.agent_changed(self._state(offer.agent), now)
        return self._drain()

    async def finish(self, offer: Offer) -> list[Offer]:
        now = time.time()
        self._load[offer.agent][offer.media] -= 1
        self._idle[offer.agent] = now
        self.engine.agent_changed(self._state(offer.agent), now)
        return self._drain()

    async def stop(self) -> None:
        return None


class ServiceDriver:
    """SessionService + MemorySessionStore, learning offers from the event stream."""

    def __init__(self, agents: dict[str, AgentProfile], data_dir: Path | None) -> None:
        self._agents = agents
        self._data_dir = data_dir
        self.store: MemorySessionStore | None = None
        self.service: SessionService | None = None
        self._events: asyncio.Queue[SessionEvent | None] | None = None
        self._flusher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.store = await MemorySessionStore.open(self._data_dir)
        if self._data_dir is not None:
            self._flusher = asyncio.create_task(self.store.run_flusher(0.2))
        self.service = SessionService(
            self.store, RoutingEngine(QUEUES), agents=self._agents, rng=random.Random(7)
        )
        self._events = self.service.events.subscribe()
        await self.service.start()
        self._drain()

    def _drain(self) -> list[Offer]:
        assert self._events is not None
        out: list[Offer] = []
        for _ in range(MAX_OFFERS_PER_STEP):
            if self._events.empty():
                return out
            ev = self._events.get_nowait()
            if ev is None:
                raise RuntimeError("the event bus dropped the bench's subscriber")
            if ev.type == OFFER_MADE and ev.channel_id is not None and ev.agent is not None:
                media = ev.session.channel(ev.channel_id).media
                out.append(
                    Offer(ev.session.id, ev.channel_id, ev.agent, media, time.perf_counter())
                )
        raise RuntimeError("service produced too many events for one step")

    async def create(self, a: Arrival) -> tuple[str, list[Offer]]:
        assert self.service is not None
        session = await self.service.create_session(
            Customer(id=a.customer_id, phone=a.phone),
            a.media,
            a.queue,
            {"ivr_path": ["main", a.queue], "order": a.customer_id[-6:]},
        )
        return session.id, self._drain()

    async def accept(self, offer: Offer) -> list[Offer]:
        assert self.service is not None
        await self.service.accept(offer.session_id, offer.channel_id, offer.agent)
        return self._drain()

    async def finish(self, offer: Offer) -> list[Offer]:
        assert self.service is not None
        sid, cid, agent = offer.session_id, offer.channel_id, offer.agent
        await self.service.channel_event(sid, cid, ChannelInput.END, agent=agent)
        await self.service.channel_event(sid, cid, ChannelInput.WRAP_UP_DONE, agent=agent)
        return self._drain()

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if self.store is not None:
            await self.store.close()


def make_driver(row: str, agents: dict[str, AgentProfile], tmp: Path) -> Driver:
    if row == "engine":
        return EngineDriver(agents)
    if row == "service":
        return ServiceDriver(agents, None)
    return ServiceDriver(agents, tmp)


# --- one run ---------------------------------------------------------------------------


@dataclass(slots=True)
class LadderPoint:
    waiting: int
    open_sessions: int
    # Median wall time of one create_session with this many waiting (no offer possible).
    create_ms: float
    # Median wall time of one churn cycle: finish + accept of the freed slot's offer + create.
    cycle_ms: float
    # Median time from the finish call to the next waiting session's offer being seen.
    free_to_offer_ms: float | None
    offers_per_cycle: float


@dataclass(slots=True)
class RunResult:
    row: str
    ramp_offers: int
    ramp_seconds: float
    ramp_offers_per_s: float
    ramp_p50_ms: float
    ramp_p99_ms: float
    ramp_max_ms: float
    handled_at_saturation: int
    ladder: list[LadderPoint] = field(default_factory=list)
    reached_open: int = 0
    stopped: str = ""


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Run:
    def __init__(self, driver: Driver, arrivals: list[Arrival], args: argparse.Namespace) -> None:
        self.d = driver
        self.arrivals = arrivals
        self.args = args
        self.next = 0
        # Waiting sessions in arrival order, and what every session is.
        self.waiting: dict[str, Arrival] = {}
        self.kind: dict[str, Arrival] = {}
        self.handled: deque[Offer] = deque()
        # Accepted channels per agent and media (to pick a finisher whose slot is usable).
        self.load: dict[str, dict[Media, int]] = {}
        self.finished = 0
        # --profile: one cProfile per phase.
        self.profiles: dict[str, cProfile.Profile] | None = None

    async def settle(self, offers: list[Offer]) -> None:
        """Accept every offer, as an agent desktop would, and any offers that follow."""
        work = deque(offers)
        for _ in range(MAX_OFFERS_PER_STEP):
            if not work:
                return
            offer = work.popleft()
            self.waiting.pop(offer.session_id, None)
            work.extend(await self.d.accept(offer))
            self.handled.append(offer)
            load = self.load.setdefault(offer.agent, {})
            load[offer.media] = load.get(offer.media, 0) + 1
        raise RuntimeError("accepting offers did not settle")

    async def create(self) -> tuple[float, float | None]:
        """One arrival: (call duration, create→own offer latency or None if it waits)."""
        a = self.arrivals[self.next]
        self.next += 1
        t0 = time.perf_counter()
        sid, offers = await self.d.create(a)
        took = time.perf_counter() - t0
        self.kind[sid] = a
        own = next((o for o in offers if o.session_id == sid), None)
        if own is None:
            self.waiting[sid] = a
        await self.settle(offers)
        if self.args.yield_loop:
            await asyncio.sleep(0)
        return took, None if own is None else own.seen_at - t0

    async def churn(self) -> tuple[float, float | None, int]:
        """The oldest handled channel ends; its slot goes to a waiting session; one arrives."""
        done = self._pick_finisher()
        t0 = time.perf_counter()
        offers = await self.d.finish(done)
        self.load[done.agent][done.media] -= 1
        self.finished += 1
        first = min((o.seen_at for o in offers), default=None)
        await self.settle(offers)
        if self.next < len(self.arrivals):
            await self.create()
        return time.perf_counter() - t0, None if first is None else first - t0, len(offers)

    def _pick_finisher(self) -> Offer:
        """The oldest handled channel whose end lets its agent take the oldest waiting
        session (same queue, so the skills fit; free capacity and the default interrupt
        matrix allow it), as in a steady state where freed slots serve the backlog; else
        simply the oldest."""
        head = next(iter(self.waiting.values()), None)
        if head is not None:
            for i, offer in enumerate(self.handled):
                if self.kind[offer.session_id].queue != head.queue:
                    continue
                after = dict(self.load[offer.agent])
                after[offer.media] -= 1
                if after.get(head.media, 0) >= CAPACITY[head.media.value]:
                    continue
                # Chat is not offered on top of a call; a call may ring over chats.
                if head.media is Media.CHAT and after.get(Media.VOICE, 0) > 0:
                    continue
                del self.handled[i]
                return offer
        return self.handled.popleft()

    @property
    def open_sessions(self) -> int:
        return self.next - self.finished

    async def run(self, row: str) -> RunResult:
        await self.d.start()
        try:
            return await self._phases(row)
        finally:
            await self.d.stop()

    async def _phases(self, row: str) -> RunResult:
        target = min(self.args.sessions, len(self.arrivals))
        # Ramp: agents free; every session should be offered within its create call.
        lat: list[float] = []
        self._profile("ramp", True)
        t0 = time.perf_counter()
        while self.next < target and not self.waiting:
            _, latency = await self.create()
            if latency is not None:
                lat.append(latency)
        ramp_s = time.perf_counter() - t0
        self._profile("ramp", False)
        result = RunResult(
            row=row,
            ramp_offers=len(lat),
            ramp_seconds=ramp_s,
            ramp_offers_per_s=len(lat) / ramp_s if ramp_s > 0 else 0.0,
            ramp_p50_ms=pct(lat, 0.50) * 1e3,
            ramp_p99_ms=pct(lat, 0.99) * 1e3,
            ramp_max_ms=max(lat) * 1e3,
            handled_at_saturation=len(self.handled),
        )
        # Backlog: every agent who could take the next session is loaded; it waits.
        deadline = time.perf_counter() + self.args.budget
        rungs = deque(r for r in LADDER if r < target)
        creates: list[float] = []
        result.stopped = "target"
        self._profile("backlog", True)
        for _ in range(target):
            if self.next >= target:
                break
            if time.perf_counter() > deadline:
                result.stopped = "budget"
                break
            took, latency = await self.create()
            if latency is None:
                creates.append(took)
            if took > self.args.max_op:
                result.stopped = f"one create took {took:.1f} s"
                break
            if rungs and len(self.waiting) >= rungs[0]:
                rungs.popleft()
                point = await self._rung(creates[-5:])
                result.ladder.append(point)
                if point.cycle_ms / 1e3 > self.args.max_op:
                    result.stopped = f"one churn cycle took {point.cycle_ms / 1e3:.1f} s"
                    break
        self._profile("backlog", False)
        result.reached_open = self.open_sessions
        return result

    def _profile(self, phase: str, on: bool) -> None:
        if self.profiles is None:
            return
        prof = self.profiles.setdefault(phase, cProfile.Profile())
        if on:
            prof.enable()
        else:
            prof.disable()

    async def _rung(self, recent_creates: list[float]) -> LadderPoint:
        waiting, open_now = len(self.waiting), self.open_sessions
        cycles: list[float] = []
        to_offer: list[float] = []
        offers = 0
        for _ in range(self.args.cycles):
            if not self.handled:
                break
            took, first, n = await self.churn()
            cycles.append(took)
            offers += n
            if first is not None:
                to_offer.append(first)
        return LadderPoint(
            waiting=waiting,
            open_sessions=open_now,
            create_ms=statistics.median(recent_creates) * 1e3 if recent_creates else 0.0,
            cycle_ms=statistics.median(cycles) * 1e3 if cycles else 0.0,
            free_to_offer_ms=statistics.median(to_offer) * 1e3 if to_offer else None,
            offers_per_cycle=offers / len(cycles) if cycles else 0.0,
        )


async def one_run(
    row: str, args: argparse.Namespace, profiles: dict[str, cProfile.Profile] | None = None
) -> RunResult:
    rng = random.Random(args.seed)
    agents = make_agents(args.agents, rng)
    arrivals = make_arrivals(args.sessions, args.voice_share, rng)
    with tempfile.TemporaryDirectory(prefix="ucgate-routing-") as tmp:
        driver = make_driver(row, agents, Path(tmp))
        run = Run(driver, arrivals, args)
        run.profiles = profiles
        gc.collect()
        return await run.run(row)


# --- dispatch probe: the engine at the target backlog, built directly ------------------


def dispatch_probe(args: argparse.Namespace, waiting_points: list[int]) -> list[dict[str, Any]]:
    """The cost of one engine input with W channels waiting and every agent loaded.

    Growing a backlog through the inputs costs the sum of its dispatches (quadratic), so
    the backlog is built with no agent logged in, and then the 500 loaded agents are put
    straight into the engine's table (a private attribute: a probe, not the API). Timed:
    ``enqueue`` of one more channel (a session created while every agent is busy), and
    ``agent_changed`` for an agent who just finished a chat (the freed slot is offered).
    """
    rng = random.Random(args.seed)
    profiles = make_agents(args.agents, rng)
    arrivals = make_arrivals(max(waiting_points) + 10, args.voice_share, rng)
    full = {Media.VOICE: 1, Media.CHAT: 3}
    caps = {Media(k): v for k, v in CAPACITY.items()}
    loaded = {
        a: AgentState(id=a, capacity=caps, skills=dict(p.skills), load=full, idle_since=0.0)
        for a, p in profiles.items()
    }
    engine = RoutingEngine(QUEUES)
    spec = {q.id: q for q in QUEUES}
    n = 0
    used: set[str] = set()
    out: list[dict[str, Any]] = []

    def drain() -> int:
        offers = 0
        for _ in range(MAX_OFFERS_PER_STEP):
            ev = engine.next_event()
            if ev is None:
                return offers
            offers += isinstance(ev, OfferMade)
        raise RuntimeError("too many events")

    for point in sorted(waiting_points):
        while n < point:
            a = arrivals[n]
            engine.enqueue(f"s{n}", f"s{n}-1", a.queue, a.media, 0.0)
            n += 1
        drain()
        enq: list[float] = []
        freed: list[float] = []
        offers = 0
        for _ in range(3):
            engine._agents = dict(loaded)
            a = arrivals[n]
            t0 = time.perf_counter()
            engine.enqueue(f"s{n}", f"s{n}-1", a.queue, a.media, 0.0)
            enq.append(time.perf_counter() - t0)
            n += 1
            drain()
            # An agent with the skills of a waiting chat's queue finishes a chat.
            head = next(x for x in arrivals[: n - 1] if x.media is Media.CHAT)
            need = spec[head.queue].skills
            # Each time another agent: offers made earlier are still open (never answered).
            agent = next(
                s
                for s in loaded.values()
                if s.id not in used and all(s.skills.get(k, 0) for k in need)
            )
            used.add(agent.id)
            t0 = time.perf_counter()
            engine.agent_changed(replace(agent, load={Media.CHAT: 2}, idle_since=1.0), 0.0)
            freed.append(time.perf_counter() - t0)
            offers += drain()
            engine._agents = {}
        row = {
            "waiting": n,
            "enqueue_ms": statistics.median(enq) * 1e3,
            "slot_freed_ms": statistics.median(freed) * 1e3,
            "offers_per_freed_slot": offers / 3,
        }
        out.append(row)
        print(
            f"probe engine, {n:5d} waiting, 500 loaded agents: enqueue {row['enqueue_ms']:.0f} ms, "
            f"slot freed → offer {row['slot_freed_ms']:.0f} ms ({offers / 3:.1f} offers)",
            flush=True,
        )
    return out


# --- memory (child processes, one clean heap each) -------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def memory_child(kind: str, scenario: str, method: str, args: argparse.Namespace) -> None:
    """Print {"sessions": n, "bytes": delta} for one (store kind, scenario, method).

    ``handled``: 500 agents, sessions created and accepted until the first has to wait
    (every session is offered, accepted and active). ``waiting``: no agent logged in,
    ``--memory-waiting`` sessions wait in their queues (store + engine items, no offers);
    fewer than 5,000 because every create re-sorts the whole backlog (quadratic)."""
    rng = random.Random(args.seed)
    agents = make_agents(args.agents, rng) if scenario == "handled" else {}
    total = args.sessions if scenario == "handled" else args.memory_waiting
    arrivals = make_arrivals(total, args.voice_share, rng)
    with tempfile.TemporaryDirectory(prefix="ucgate-routing-mem-") as tmp:
        driver = ServiceDriver(agents, Path(tmp) if kind == "sqlite" else None)
        run = Run(driver, arrivals, args)
        await driver.start()
        await asyncio.sleep(0.3)  # let the journal open and the first flush pass
        gc.collect()
        if method == "tracemalloc":
            tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0] if method == "tracemalloc" else rss_bytes()
        for _ in range(total):
            if run.next >= total or (scenario == "handled" and run.waiting):
                break
            await run.create()
        if driver.store is not None:
            await driver.store.flush()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0] if method == "tracemalloc" else rss_bytes()
        n = run.next - len(run.waiting) if scenario == "handled" else run.next
        tracemalloc.stop()
        await driver.stop()
    print(json.dumps({"sessions": n, "bytes": after - base}))


def measure_memory(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    # tracemalloc sees Python objects only, the same with or without the journal (SQLite's
    # page cache is C heap): traced for the memory store, RSS for both.
    for kind, methods in (("memory", ("tracemalloc", "rss")), ("sqlite", ("rss",))):
        for scenario in ("handled", "waiting"):
            row: dict[str, Any] = {"store": kind, "scenario": scenario}
            for method in methods:
                cmd = [
                    sys.executable,
                    __file__,
                    "--memory-child",
                    f"{kind}:{scenario}:{method}",
                    "--agents",
                    str(args.agents),
                    "--sessions",
                    str(args.sessions),
                    "--seed",
                    str(args.seed),
                    "--voice-share",
                    str(args.voice_share),
                    "--memory-waiting",
                    str(args.memory_waiting),
                ]
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
                data = json.loads(out.stdout.strip().splitlines()[-1])
                row["sessions"] = data["sessions"]
                row[f"{method}_bytes_per_session"] = data["bytes"] / max(1, data["sessions"])
            rows.append(row)
            traced = row.get("tracemalloc_bytes_per_session")
            print(
                f"memory {kind:6} {scenario:8} {row['sessions']:5d} sessions: tracemalloc "
                f"{'-' if traced is None else f'{traced / 1024:.2f}'} KiB/session, "
                f"RSS {row['rss_bytes_per_session'] / 1024:.2f} KiB/session",
                flush=True,
            )
    return rows


# --- report ----------------------------------------------------------------------------


def median_of(runs: list[RunResult], name: str) -> float:
    return float(statistics.median(float(getattr(r, name)) for r in runs))


def summarise(row: str, runs: list[RunResult], target: int) -> dict[str, Any]:
    ramp = {
        k: median_of(runs, k)
        for k in (
            "ramp_offers",
            "ramp_offers_per_s",
            "ramp_p50_ms",
            "ramp_p99_ms",
            "ramp_max_ms",
            "handled_at_saturation",
            "reached_open",
        )
    }
    ladder: list[dict[str, Any]] = []
    for rung in LADDER:
        per_run = [[p for p in r.ladder if rung <= p.waiting < 2 * rung] for r in runs]
        if sum(1 for ps in per_run if ps) * 2 <= len(runs):
            continue  # reached in too few repeats to quote a median
        points = [p for ps in per_run for p in ps]
        offers = [p.free_to_offer_ms for p in points if p.free_to_offer_ms is not None]
        ladder.append(
            {
                "waiting": rung,
                "open_sessions": statistics.median(p.open_sessions for p in points),
                "create_ms": statistics.median(p.create_ms for p in points),
                "cycle_ms": statistics.median(p.cycle_ms for p in points),
                "free_to_offer_ms": statistics.median(offers) if offers else None,
                "cycles_per_s": 1e3 / statistics.median(p.cycle_ms for p in points),
                "offers_per_cycle": statistics.median(p.offers_per_cycle for p in points),
            }
        )
    # Per-create cost grows linearly with the backlog (each dispatch scans every waiting
    # channel against every agent); extrapolate that line to the target open sessions.
    extrapolated: dict[str, float] | None = None
    if len(ladder) >= 2:
        xs = [float(p["waiting"]) for p in ladder]
        for key in ("create_ms", "cycle_ms"):
            ys = [float(p[key]) for p in ladder]
            slope, icpt = statistics.linear_regression(xs, ys)
            waiting_at_target = max(0.0, target - ramp["handled_at_saturation"])
            extrapolated = extrapolated or {"waiting": waiting_at_target}
            extrapolated[f"{key}_per_waiting"] = slope
            extrapolated[key] = icpt + slope * waiting_at_target
    return {
        "row": row,
        "ramp": ramp,
        "ladder": ladder,
        "extrapolated_at_target": extrapolated,
        "stopped": [r.stopped for r in runs],
    }


def print_summary(s: dict[str, Any], target: int) -> None:
    r = s["ramp"]
    print(
        f"\n{s['row']}: ramp {r['ramp_offers']:.0f} offers, {r['ramp_offers_per_s']:.0f} offers/s, "
        f"create→offer p50 {r['ramp_p50_ms']:.2f} ms p99 {r['ramp_p99_ms']:.2f} ms "
        f"(max {r['ramp_max_ms']:.1f}); {r['handled_at_saturation']:.0f} handled at saturation; "
        f"reached {r['reached_open']:.0f}/{target} open ({', '.join(s['stopped'])})"
    )
    for p in s["ladder"]:
        fo = p["free_to_offer_ms"]
        print(
            f"  waiting ≥{p['waiting']:5d} (open {p['open_sessions']:6.0f}): create "
            f"{p['create_ms']:9.1f} ms, churn cycle {p['cycle_ms']:9.1f} ms "
            f"({p['cycles_per_s']:7.1f}/s, {p['offers_per_cycle']:.2f} offers each), "
            f"slot freed→offer {'-' if fo is None else f'{fo:.1f}'} ms"
        )
    e = s["extrapolated_at_target"]
    if e is not None:
        print(
            f"  extrapolated to {target} open ({e['waiting']:.0f} waiting): create "
            f"{e['create_ms'] / 1e3:.1f} s, churn cycle {e['cycle_ms'] / 1e3:.1f} s"
        )


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    rows = [r for r in ROWS if args.only in (None, r)]
    runs: dict[str, list[RunResult]] = {r: [] for r in rows}
    for repeat in range(args.repeats):
        # Rows interleaved per repeat, so machine noise hits them alike.
        for row in rows:
            res = await one_run(row, args)
            runs[row].append(res)
            print(
                f"repeat {repeat + 1} {row:15} ramp {res.ramp_offers_per_s:6.0f} offers/s "
                f"p99 {res.ramp_p99_ms:6.2f} ms; backlog rungs {len(res.ladder)}, "
                f"open {res.reached_open} ({res.stopped})",
                flush=True,
            )
    summaries = [summarise(r, runs[r], args.sessions) for r in rows]
    for s in summaries:
        print_summary(s, args.sessions)
    by = {s["row"]: s for s in summaries}
    if "engine" in by:
        base = by["engine"]["ramp"]["ramp_offers_per_s"]
        for s in summaries:
            s["engine_over_row_offers_per_s"] = base / s["ramp"]["ramp_offers_per_s"]
            if s["row"] != "engine":
                print(f"engine ÷ {s['row']}: {s['engine_over_row_offers_per_s']:.2f}x offers/s")
    saturation = statistics.median(s["ramp"]["handled_at_saturation"] for s in summaries)
    at_target = max(1, args.sessions - int(saturation))
    points = sorted({p for p in (250, 1000, 2000) if p < at_target} | {at_target})
    probe = [] if args.no_probe else dispatch_probe(args, points)
    memory = [] if args.no_memory else measure_memory(args)
    return {
        "benchmark": "routing",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "loadavg_at_start": os.getloadavg(),
        },
        "settings": {k: v for k, v in vars(args).items() if k != "out" and k != "memory_child"},
        "rows": summaries,
        "dispatch_probe": probe,
        "memory": memory,
        "runs": {r: [asdict(x) for x in runs[r]] for r in rows},
    }


async def profile(args: argparse.Namespace) -> None:
    profiles: dict[str, cProfile.Profile] = {}
    res = await one_run(args.only or "service", args, profiles)
    print(
        f"profiled {res.row}: ramp {res.ramp_offers} offers; backlog to "
        f"{res.reached_open} open sessions, rungs at {[p.waiting for p in res.ladder]} waiting"
    )
    for phase, prof in profiles.items():
        print(f"\n=== {phase} ===")
        pstats.Stats(prof).sort_stats(args.sort).print_stats(22)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--agents", type=int, default=500)
    ap.add_argument("--sessions", type=int, default=5000, help="target open sessions")
    ap.add_argument("--voice-share", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget", type=float, default=10.0, help="seconds of backlog per run")
    ap.add_argument("--max-op", type=float, default=3.0, help="stop a run when one op is slower")
    ap.add_argument("--cycles", type=int, default=5, help="churn cycles per backlog rung")
    ap.add_argument("--memory-waiting", type=int, default=2000, help="sessions, memory row")
    ap.add_argument("--only", choices=ROWS)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-probe", action="store_true")
    ap.add_argument(
        "--no-yield",
        dest="yield_loop",
        action="store_false",
        help="do not give the event loop a turn after each create (the SQLite flusher needs it)",
    )
    ap.add_argument("--profile", action="store_true", help="cProfile one run instead")
    ap.add_argument("--sort", default="tottime")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    configure_logging("console", "warning")
    if args.memory_child:
        kind, scenario, method = args.memory_child.split(":")
        asyncio.run(memory_child(kind, scenario, method, args))
        return
    if args.profile:
        asyncio.run(profile(args))
        return
    report = asyncio.run(bench(args))
    out = args.out or ROOT / "bench/results" / f"routing-{dt.date.today().isoformat()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
