"""Routing across nodes: offers/s and "created → offered" through one node vs two, and the
time a standby takes to route after the router is killed.

Real processes on loopback: one ``redis-server`` and one or two ``ucgate serve`` nodes
(``[store] backend = "redis"``), agents made routable by a real SIP REGISTER each, sessions
created over the REST API by an aiohttp client, offers read from each node's
``/v1/events`` WebSocket. Rows (see README.md, "Multi-node"):

* ``1 node (memory)``: the embedded backend, no coordination: the reference.
* ``1 node (redis)``: one node on Redis; it holds the routing lease, so it routes locally
  (a routing write is also fenced and announced on the outcomes stream).
* ``2 nodes, via router``: sessions created through the lease holder only.
* ``2 nodes, via standby``: created through the other node: each input is forwarded over
  the Redis stream, the router offers, and the offer comes back on the outcomes stream to
  the standby's /v1/events, where it is timed.
* ``2 nodes, via both``: alternately through each.

Each run creates ``--sessions`` chats from ``--concurrency`` closed-loop clients (each
posts its next session when its last one has been offered), all
offerable at once (agents x capacity >= sessions + warm-up); latency is from sending the
POST to reading the session's ``offer_made`` on the stream of the node it was posted to;
offers/s is sessions / (last offer - first POST). A warm-up of ``--sessions``/10 (at most
20) sessions goes first, unmeasured.

Failover (``--failovers`` times): two nodes, the router is SIGKILLed, a session is posted
to the survivor right after; timed are kill → survivor's ``sessions.leader_promoted`` log
line and kill → that session's ``offer_made``. The killed node is restarted as the standby
before the next round (so the roles alternate).

    bench/routing/run.sh --multinode          # this script, default settings (~1 min)
    .venv/bin/python bench/routing/multinode.py --sessions 400 --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support.raw_sip import RawSipClient  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402
from tests.support.ucgate_process import Account, UcgateProcess  # noqa: E402

ROWS = ("1 node (memory)", "1 node (redis)", "2 nodes, via router", "2 nodes, via standby")
ROWS += ("2 nodes, via both",)


def tail(lease_ttl: float) -> str:
    return f"""
[[queues]]
id = "support"
media = ["chat"]
offer_timeout = 600
[routing]
leader_lease_ttl = {lease_ttl}
"""


def warmup(args: argparse.Namespace) -> int:
    return int(min(20, args.sessions // 10))


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Stream:
    """A node's /v1/events: offer arrival times by session id."""

    def __init__(self, node: UcgateProcess) -> None:
        self.node = node
        self.offered: dict[str, float] = {}
        self._waiters: dict[str, asyncio.Future[float]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self, http: aiohttp.ClientSession) -> None:
        ready = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(http, ready))
        await asyncio.wait_for(ready, 10)

    async def _run(self, http: aiohttp.ClientSession, ready: asyncio.Future[None]) -> None:
        url = f"http://127.0.0.1:{self.node.http_port}/v1/events"
        headers = {"Authorization": f"Bearer {self.node.api_key}"}
        async with http.ws_connect(url, headers=headers, max_msg_size=0) as ws:
            ready.set_result(None)
            async for msg in ws:
                event = json.loads(msg.data)
                if event["type"] != "offer_made":
                    continue
                sid = event["session_id"]
                at = time.perf_counter()
                self.offered.setdefault(sid, at)
                waiter = self._waiters.pop(sid, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(at)

    async def offered_at(self, sid: str, timeout: float) -> float:
        if sid in self.offered:
            return self.offered[sid]
        fut = self._waiters.setdefault(sid, asyncio.get_running_loop().create_future())
        return await asyncio.wait_for(fut, timeout)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def post_session(http: aiohttp.ClientSession, node: UcgateProcess, customer: str) -> str:
    async with http.post(
        f"http://127.0.0.1:{node.http_port}/v1/sessions",
        json={"customer": {"id": customer}, "media": "chat", "queue": "support"},
        headers={"Authorization": f"Bearer {node.api_key}"},
    ) as resp:
        body = await resp.json()
        if resp.status != 201:
            raise RuntimeError(f"POST /v1/sessions: {resp.status} {body}")
        return str(body["id"])


async def measure(
    targets: list[UcgateProcess], n: int, concurrency: int, timeout: float
) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        streams = {id(t): Stream(t) for t in targets}
        for s in streams.values():
            await s.start(http)
        gate = asyncio.Semaphore(concurrency)
        latencies: list[float] = []
        started = time.perf_counter()

        async def one(i: int) -> None:
            node = targets[i % len(targets)]
            # Closed loop: a client posts its next session once its last one is offered
            # (a standby's POST returns before routing, so an open loop would only
            # measure how far the client can run ahead of the router).
            async with gate:
                sent = time.perf_counter()
                sid = await post_session(http, node, f"bench-{i}")
                latencies.append(await streams[id(node)].offered_at(sid, timeout) - sent)

        await asyncio.gather(*(one(i) for i in range(n)))
        last = max(max(s.offered.values(), default=started) for s in streams.values())
        for s in streams.values():
            await s.stop()
    return {
        "sessions": n,
        "offers_per_s": round(n / (last - started), 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(pct(latencies, 0.99) * 1000, 2),
        "max_ms": round(max(latencies) * 1000, 2),
    }


class Site:
    """Redis (if any), nodes and registered agents, all stopped by PID in close()."""

    def __init__(self, workdir: Path, args: argparse.Namespace, backend: str) -> None:
        self.workdir = workdir
        self.args = args
        self.backend = backend
        self.redis: RedisServer | None = None
        self.nodes: list[UcgateProcess] = []
        self.devices: list[RawSipClient] = []
        self.agents = [
            Account(
                f"agent{i:03d}", f"agent{i:03d}-Pa55word", capacity=f"{{ chat = {args.capacity} }}"
            )
            for i in range(args.agents)
        ]

    def start(self, count: int) -> None:
        if self.backend == "redis":
            self.redis = RedisServer.start(self.workdir / "redis")
        for i in range(count):
            self.nodes.append(self.start_node(f"node-{i}"))
            if i == 0:
                self.wait_promoted(self.nodes[0], 10)
        # A device per agent makes it routable (presence R7); spread over the nodes.
        for i, agent in enumerate(self.agents):
            for attempt in range(3):  # UDP: a lost datagram on a busy host is retried
                dev = RawSipClient("udp", self.nodes[i % count].sip_port)
                try:
                    ok = dev.register_with_auth(
                        agent.id, agent.password, algorithm="MD5", expires=3600
                    )
                except TimeoutError:
                    dev.close()
                    if attempt == 2:
                        raise
                    continue
                if ok.status != 200:
                    raise RuntimeError(f"REGISTER {agent.id}: {ok.status}")
                self.devices.append(dev)
                break

    def start_node(self, name: str) -> UcgateProcess:
        node = UcgateProcess(
            self.workdir / name,
            agents=self.agents,
            backend=self.backend,
            redis_url=self.redis.url if self.redis else None,
            persist=self.backend == "memory",
            node_id=name,
            tail=tail(self.args.lease_ttl),
        )
        return node.start()

    def wait_promoted(self, node: UcgateProcess, timeout: float) -> None:
        if self.backend == "redis":
            node.wait_log(lambda e: e.get("event") == "sessions.leader_promoted", timeout)

    def close(self) -> None:
        for dev in self.devices:
            dev.close()
        for node in self.nodes:
            node.stop()
        if self.redis is not None:
            self.redis.stop()


async def routing_gap(
    survivor: UcgateProcess, victim: UcgateProcess, timeout: float, *, wait_offer: bool
) -> dict[str, float]:
    """SIGKILL ``victim`` (the router); post a session to ``survivor`` at once; time the
    survivor's promotion and (``wait_offer``: agents have room) that session's offer. The
    survivor has never led before (a first-time standby or a restarted node), so its first
    promotion line is this one; its rebuild time and size come from its log."""
    taken: dict[str, object] = {}

    def promoted() -> float:
        survivor.wait_log(lambda e: e.get("event") == "sessions.leader_promoted", timeout)
        at = time.perf_counter()
        taken.update(survivor.wait_log(lambda e: e.get("event") == "sessions.leader_promoted", 1))
        taken.update(
            survivor.wait_log(lambda e: e.get("event") == "sessions.routing_taken_over", 1)
        )
        return at

    async with aiohttp.ClientSession() as http:
        stream = Stream(survivor)
        await stream.start(http)
        assert victim.proc is not None
        killed = time.perf_counter()
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait(timeout=10)
        promoted_task = asyncio.create_task(asyncio.to_thread(promoted))
        sid = await post_session(http, survivor, "after-kill")
        offered = await stream.offered_at(sid, timeout) if wait_offer else None
        promoted_at = await promoted_task
        await stream.stop()
    out = {
        "kill_to_promoted_ms": round((promoted_at - killed) * 1000, 1),
        "rebuild_ms": float(str(taken["rebuild_ms"])),
        "rebuilt_channels": float(str(taken["channels"])),
    }
    if offered is not None:
        out["kill_to_offer_ms"] = round((offered - killed) * 1000, 1)
    return out


async def failovers(args: argparse.Namespace, workdir: Path) -> list[dict[str, float]]:
    site = Site(workdir / "failover", args, "redis")
    out: list[dict[str, float]] = []
    try:
        site.start(2)
        leader, standby = site.nodes
        if args.failover_backlog:
            # Open sessions the new router must rebuild: agents x capacity offered, the
            # rest waiting (then the post-kill session waits too: no offer to time).
            async with aiohttp.ClientSession() as http:
                for i in range(args.failover_backlog):
                    await post_session(http, leader, f"backlog-{i}")
        room = args.failover_backlog < args.agents * args.capacity - args.failovers
        for round_ in range(args.failovers):
            gap = await routing_gap(standby, leader, 10 + 2 * args.lease_ttl, wait_offer=room)
            print(f"  failover {round_ + 1}: {gap}", flush=True)
            out.append(gap)
            # The killed node comes back as the standby; the roles swap.
            restarted = site.start_node(leader.node_id)
            site.nodes[site.nodes.index(leader)] = restarted
            leader, standby = standby, restarted
    finally:
        site.close()
    return out


async def row(name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    backend = "memory" if "memory" in name else "redis"
    count = 2 if name.startswith("2") else 1
    site = Site(workdir / name.replace(" ", "_").replace(",", ""), args, backend)
    try:
        site.start(count)
        router = site.nodes[0]
        if name.endswith("via standby"):
            targets = [site.nodes[1]]
        elif name.endswith("via both"):
            targets = site.nodes
        else:
            targets = [router]
        # Warm-up (connections, first routes), then the measured run.
        await measure(targets, warmup(args), args.concurrency, 30)
        return await measure(targets, args.sessions, args.concurrency, 60)
    finally:
        site.close()


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, list[dict[str, Any]]] = {r: [] for r in args.rows or ROWS}
    with tempfile.TemporaryDirectory(prefix="ucgate-routing-mn-") as tmp:
        for rep in range(args.repeats):
            for name in args.rows or ROWS:  # interleaved: noise hits every row alike
                result = await row(name, args, Path(tmp) / f"r{rep}")
                print(f"  {name:24s} run {rep + 1}: {result}", flush=True)
                results[name].append(result)
        gaps = await failovers(args, Path(tmp)) if args.failovers else []
    summary = {
        name: {
            key: statistics.median(r[key] for r in runs)
            for key in ("offers_per_s", "p50_ms", "p99_ms", "max_ms")
        }
        for name, runs in results.items()
        if runs
    }
    return {
        "benchmark": "routing-multinode",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": {
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
        },
        "settings": vars(args) | {"out": str(args.out) if args.out else None},
        "runs": results,
        "medians": summary,
        "failovers": gaps,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--agents", type=int, default=20)
    ap.add_argument("--capacity", type=int, default=20, help="chats per agent")
    ap.add_argument("--sessions", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=8, help="POSTs in flight")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--lease-ttl", type=float, default=3.0)
    ap.add_argument("--failovers", type=int, default=3)
    ap.add_argument(
        "--failover-backlog", type=int, default=0, help="open sessions during the failovers"
    )
    ap.add_argument("--rows", nargs="*", choices=ROWS, help="default: every row")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.sessions + warmup(args) > args.agents * args.capacity:
        ap.error("--agents x --capacity must hold --sessions and the warm-up (all are offered)")
    record = asyncio.run(bench(args))
    print(json.dumps(record["medians"], indent=2))
    if record["failovers"]:
        for key in ("kill_to_promoted_ms", "kill_to_offer_ms", "rebuild_ms"):
            vals = [g[key] for g in record["failovers"] if key in g]
            if not vals:
                continue
            print(f"{key}: median {statistics.median(vals)}, max {max(vals)} (n={len(vals)})")
    out = args.out or ROOT / "bench" / "results" / f"routing-multinode-{dt.date.today()}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
