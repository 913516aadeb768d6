"""Presence benchmark: ucgate and Kamailio's presence module measured in the same run.

Three measurements per server, on loopback (see README.md), in this order:

3. memory per subscription: PSS/RSS delta over the freshly started server's baseline with
   10,000 live subscriptions (first, so memory freed by other phases cannot hide growth);
1. fan-out latency: 1,000 SIP watchers subscribed to one presentity; a change (ucgate:
   ``PUT /v1/presence/{agent}/status``; Kamailio: a PUBLISH) and the delay until each watcher
   has its NOTIFY, p50/p99 over several rounds; for ucgate also 1,000 WebSocket clients on
   ``GET /v1/presence/stream``;
2. SUBSCRIBE+NOTIFY dialogs per second: sipp ``subscribe_presence.xml`` at rising rates,
   levels interleaved across servers; a level passes with 0 failed, 0 retransmissions,
   0 UDP drops and >= 97% of the target rate.

    bench/presence/run.sh                                  # both servers
    bench/presence/run.sh --only kamailio --rates 500,1000 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from watchers import Subscription, WatcherPool, pidf  # noqa: E402

from sip_test_rig.kamailio import Kamailio, users_range  # noqa: E402
from sip_test_rig.ports import LOOPBACK, free_port  # noqa: E402
from sip_test_rig.probe import wait_until_answers  # noqa: E402
from sip_test_rig.procs import children_of, kill_pids, sample, stop_process, udp_drops  # noqa: E402
from sip_test_rig.sipp_runner import run_sipp  # noqa: E402

DOMAIN = "example.test"
PASS_RATIO = 0.97
DEFAULT_RATES = "250,500,1000,2000,3000,4000,6000"
FAN_AGENT = "fan0001"
RATE_AGENT = "rate0001"
API_KEY = "bench-admin-key-0123456789"


class Server(Protocol):
    name: str
    port: int

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def pids(self) -> list[int]: ...
    async def trigger(self, pool: WatcherPool | None, round_no: int) -> None: ...


class KamailioServer:
    """Kamailio 5.6 presence + presence_xml (sip_test_rig/kamailio_presence.cfg.tmpl)."""

    name = "kamailio"

    def __init__(self, users: list[tuple[str, str]], passwords: dict[str, str]) -> None:
        # -m 2048: presence holds ~13 KB per transaction for seconds (KAMAILIO_BASELINE.md).
        self._k = Kamailio(
            users,
            domain=DOMAIN,
            children=2,
            tcp_children=1,
            shm_mb=2048,
            presence=True,
            start_timeout=60.0,
        )
        self.passwords = passwords
        self.port = 0
        self._etag: str | None = None

    def start(self) -> None:
        self._k.start()
        self.port = self._k.port

    def stop(self) -> None:
        self._k.stop()

    def pids(self) -> list[int]:
        return self._k.pids()

    async def trigger(self, pool: WatcherPool | None, round_no: int) -> None:
        assert pool is not None, "Kamailio's changes are PUBLISHed through the watcher pool"
        # The presentity's own PUBLISH (RFC 3903): initial, then modify with SIP-If-Match so
        # one event state changes instead of publications piling up.
        basic = "closed" if round_no % 2 else "open"
        body = pidf(f"sip:{FAN_AGENT}@{DOMAIN}", basic, f"round {round_no}")
        self._etag = await pool.publish(FAN_AGENT, self.passwords[FAN_AGENT], body, etag=self._etag)


def ucgate_config(port: int, http_port: int, data_dir: Path, users: list[tuple[str, str]]) -> str:
    """ucgate's TOML: memory store, warning logs, one agent per user, an admin API key."""
    lines = [
        "[sip]",
        f'domain = "{DOMAIN}"',
        f'listen = ["udp:{LOOPBACK}:{port}", "tcp:{LOOPBACK}:{port}"]',
        "",
        "[http]",
        f'listen = "{LOOPBACK}:{http_port}"',
        "",
        "[store]",
        'backend = "memory"',
        f'data_dir = "{data_dir}"',
        "",
        "[log]",
        'level = "warning"',
        "",
        "[[api_keys]]",
        f'key = "{API_KEY}"',
        'scopes = ["admin"]',
        'name = "bench"',
        "",
    ]
    for user, password in users:
        lines += ["[[agents]]", f'id = "{user}"', f'password = "{password}"', ""]
    return "\n".join(lines)


class UcgateServer:
    name = "ucgate"

    def __init__(self, users: list[tuple[str, str]], python: str) -> None:
        self.users = users
        self.python = python
        self.port = 0
        self.http_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._tmp: Path | None = None
        self._session: Any = None

    def _log_tail(self) -> str:
        assert self._tmp is not None
        log = self._tmp / "ucgate.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-30:]) if log.exists() else ""

    def start(self) -> None:
        self._tmp = Path(tempfile.mkdtemp(prefix="ucgate-bench-presence-"))
        self.port, self.http_port = free_port(), free_port()
        cfg = self._tmp / "ucgate.toml"
        cfg.write_text(ucgate_config(self.port, self.http_port, self._tmp / "data", self.users))
        with open(self._tmp / "ucgate.log", "wb") as log:
            self.proc = subprocess.Popen(
                [self.python, "-m", "ucgate", "serve", "--config", str(cfg)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._tmp,
            )
        try:
            wait_until_answers(self.port, self.proc, timeout=60.0, log_tail=self._log_tail)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc is not None:
            workers = children_of(self.proc.pid)
            stop_process(self.proc, timeout=5.0)
            kill_pids(workers)
            self.proc = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def pids(self) -> list[int]:
        return [] if self.proc is None else [self.proc.pid, *children_of(self.proc.pid)]

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    async def trigger(self, pool: WatcherPool | None, round_no: int) -> None:
        import aiohttp

        status = "away" if round_no % 2 else "available"
        async with (
            aiohttp.ClientSession() as session,
            session.put(
                f"{self.base_url}/v1/presence/{FAN_AGENT}/status",
                json={"status": status, "note": f"round {round_no}"},
                headers={"Authorization": f"Bearer {API_KEY}"},
                timeout=aiohttp.ClientTimeout(total=10),
            ) as resp,
        ):
            if resp.status // 100 != 2:
                raise RuntimeError(f"PUT status: {resp.status} {await resp.text()}")


# -- measurements --------------------------------------------------------------------------


@dataclass(frozen=True)
class RateRun:
    server: str
    target_rate: int
    successful: int
    failed: int
    retransmissions: int
    udp_drops: int
    achieved_rate: float
    server_cpu_pct: float
    sipp_cpu_pct: float
    passed: bool
    #: sipp's non-zero Failed* counters and last error lines, when the level failed.
    failures: dict[str, int]
    errors_tail: str


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure_rate(server: Server, csv: Path, rate: int, seconds: float, expires: int) -> RateRun:
    calls = max(1, int(rate * seconds))
    before = sample(server.pids())
    drops_before = udp_drops(server.port)
    sipp_before = _children_cpu()
    started = time.monotonic()
    result = run_sipp(
        "subscribe_presence",
        f"{LOOPBACK}:{server.port}",
        users_csv=csv,
        rate=rate,
        calls=calls,
        timeout=seconds * 3 + 30,
        variables={"domain": DOMAIN, "expires": str(expires)},
        # One presentity per run so the digest uri can equal the Request-URI (see scenario).
        extra_args=["-auth_uri", f"{RATE_AGENT}@{DOMAIN}"],
    )
    wall = time.monotonic() - started
    after = sample(server.pids())
    drops = udp_drops(server.port) - drops_before
    passed = (
        result.failed == 0
        and result.retransmissions == 0
        and drops == 0
        and result.successful == calls
        and result.achieved_rate >= PASS_RATIO * rate
    )
    return RateRun(
        server=server.name,
        target_rate=rate,
        successful=result.successful,
        failed=result.failed,
        retransmissions=result.retransmissions,
        udp_drops=drops,
        achieved_rate=round(result.achieved_rate, 1),
        server_cpu_pct=round(100 * (after.cpu_seconds - before.cpu_seconds) / wall, 1),
        sipp_cpu_pct=round(100 * (_children_cpu() - sipp_before) / wall, 1),
        passed=passed,
        failures=result.failures,
        errors_tail="" if passed else result.errors_tail[-2000:],
    )


def percentiles(samples_ms: list[float]) -> dict[str, float | int]:
    if not samples_ms:
        return {"count": 0}
    ordered = sorted(samples_ms)

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 2)

    return {
        "count": len(ordered),
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": round(ordered[-1], 2),
        "mean_ms": round(statistics.fmean(ordered), 2),
    }


async def fan_out_rounds(
    watchers: int,
    rounds: int,
    gap: float,
    trigger: Callable[[int], Awaitable[None]],
    arm: Callable[[float], None],
    done: Callable[[], bool],
    delays: Callable[[float], list[float]],
) -> tuple[list[float], int]:
    """Trigger ``rounds`` changes; returns every delivery delay (ms) and the missing deliveries.

    Each round starts after ``gap`` quiet seconds, so a per-watcher NOTIFY throttle (RFC 3856
    §6.10) never holds it back, and waits (bounded, 10 s) until every client has its delivery.
    """
    all_delays: list[float] = []
    missing = 0
    for round_no in range(1, rounds + 1):
        # Quiet first, also before round 1: the subscriptions' initial NOTIFYs count for the
        # throttle too.
        await asyncio.sleep(gap)
        t0 = time.time()
        arm(t0)
        await trigger(round_no)
        deadline = time.monotonic() + 10.0
        while not done() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        got = delays(t0)
        missing += watchers - len(got)
        all_delays += got
    return all_delays, missing


async def sip_fan_out(
    server: Server, users: list[tuple[str, str]], *, rounds: int, gap: float
) -> dict[str, Any]:
    pool = await WatcherPool((LOOPBACK, server.port), DOMAIN).start()
    try:
        subs = [pool.new_subscription(u, p, FAN_AGENT) for u, p in users]
        failures = await pool.subscribe_all(subs, expires=3600)
        first: dict[str, float] = {}
        armed_at = [float("inf")]

        def on_notify(sub: Subscription, now: float) -> None:
            if now >= armed_at[0] and sub.call_id not in first:
                first[sub.call_id] = now

        pool.on_notify = on_notify

        def arm(t0: float) -> None:
            first.clear()
            armed_at[0] = t0

        delays, missing = await fan_out_rounds(
            len(subs) - failures,
            rounds,
            gap,
            lambda r: server.trigger(pool, r),
            arm,
            lambda: len(first) >= len(subs) - failures,
            lambda t0: [(t - t0) * 1000 for t in first.values()],
        )
        return {
            "watchers": len(subs),
            "subscribe_failures": failures,
            "rounds": rounds,
            "missing_deliveries": missing,
            "client_retransmissions": pool.retransmissions,
            **percentiles(delays),
        }
    finally:
        await pool.close()


async def ws_fan_out(
    server: UcgateServer, clients: int, *, rounds: int, gap: float
) -> dict[str, Any]:
    import aiohttp

    headers = {"Authorization": f"Bearer {API_KEY}"}
    first: dict[int, float] = {}
    armed_at = [float("inf")]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        async with session.get(
            f"{server.base_url}/v1/presence", params={"agent": FAN_AGENT}
        ) as resp:
            version = int((await resp.json())["version"])
        sockets = []
        gate = asyncio.Semaphore(100)

        async def connect() -> Any:
            async with gate:
                # since=<current version>: no snapshot of every agent per client, only changes.
                return await session.ws_connect(
                    f"{server.base_url}/v1/presence/stream", params={"since": str(version)}
                )

        sockets = list(await asyncio.gather(*(connect() for _ in range(clients))))

        async def reader(index: int, ws: Any) -> None:
            async for msg in ws:
                now = time.time()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                if now >= armed_at[0] and index not in first:
                    event = json.loads(msg.data)
                    if event.get("type") == "change" and event.get("agent") == FAN_AGENT:
                        first[index] = now

        readers = [asyncio.create_task(reader(i, ws)) for i, ws in enumerate(sockets)]

        def arm(t0: float) -> None:
            first.clear()
            armed_at[0] = t0

        try:
            delays, missing = await fan_out_rounds(
                clients,
                rounds,
                gap,
                lambda r: server.trigger(None, r),
                arm,
                lambda: len(first) >= clients,
                lambda t0: [(t - t0) * 1000 for t in first.values()],
            )
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
    return {
        "clients": clients,
        "rounds": rounds,
        "missing_deliveries": missing,
        **percentiles(delays),
    }


async def memory_per_subscription(
    server: Server, users: list[tuple[str, str]], presentities: list[str], settle: float
) -> dict[str, Any]:
    before = sample(server.pids())
    pool = await WatcherPool((LOOPBACK, server.port), DOMAIN).start()
    try:
        subs = [
            pool.new_subscription(u, p, presentities[i % len(presentities)])
            for i, (u, p) in enumerate(users)
        ]
        started = time.monotonic()
        failures = await pool.subscribe_all(subs, expires=3600, concurrency=100)
        elapsed = time.monotonic() - started
        established = sample(server.pids())
        # Transactions linger a few seconds after their final response (RFC 3261 Timer K /
        # Kamailio's wait timer): measure again once they are gone.
        await asyncio.sleep(settle)
        settled = sample(server.pids())
        live = len(subs) - failures

        def per_sub(after: int, base: int) -> float:
            return round((after - base) / live, 1) if live else 0.0

        return {
            "subscriptions": live,
            "failures": failures,
            "presentities": len(presentities),
            "subscribe_seconds": round(elapsed, 2),
            "baseline_pss_mib": round(before.pss_bytes / 2**20, 1),
            "pss_mib": round(settled.pss_bytes / 2**20, 1),
            "rss_mib": round(settled.rss_bytes / 2**20, 1),
            "pss_bytes_per_subscription": per_sub(settled.pss_bytes, before.pss_bytes),
            "rss_bytes_per_subscription": per_sub(settled.rss_bytes, before.rss_bytes),
            "pss_bytes_per_subscription_unsettled": per_sub(
                established.pss_bytes, before.pss_bytes
            ),
            "client_retransmissions": pool.retransmissions,
        }
    finally:
        await pool.close()


# -- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="presence benchmark: Kamailio vs ucgate")
    parser.add_argument("--only", choices=["kamailio", "ucgate"], help="run one server only")
    parser.add_argument("--rates", default=DEFAULT_RATES, help="SUBSCRIBE dialogs/s levels")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each level")
    parser.add_argument("--watchers", type=int, default=10_000, help="watcher users")
    parser.add_argument("--presentities", type=int, default=100, help="for the memory phase")
    parser.add_argument("--fanout", type=int, default=1000, help="watchers of one presentity")
    parser.add_argument("--ws-clients", type=int, default=1000, help="ucgate stream clients")
    parser.add_argument("--rounds", type=int, default=5, help="fan-out changes per server")
    parser.add_argument("--round-gap", type=float, default=1.5, help="seconds between changes")
    parser.add_argument("--settle", type=float, default=6.0, help="seconds before memory sample")
    parser.add_argument("--skip", default="", help="comma list of phases: fanout,rate,memory")
    parser.add_argument("--python", default=str(ROOT / ".venv/bin/python"), help="for ucgate")
    parser.add_argument("--keep-going", action="store_true", help="run levels above a failure")
    parser.add_argument("--out", type=Path, help="JSON output (default bench/results/…)")
    args = parser.parse_args(argv)

    rates = [int(r) for r in args.rates.split(",") if r.strip()]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.fanout > args.watchers or args.seconds <= 0 or args.watchers < 1:
        parser.error("need --fanout <= --watchers, --seconds > 0, --watchers >= 1")
    watchers = users_range(args.watchers, prefix="w")
    agents = [(f"fan{i:04d}", f"pw-fan-{i}") for i in range(1, 2)]
    agents += [(f"rate{i:04d}", f"pw-rate-{i}") for i in range(1, 2)]
    agents += users_range(args.presentities, prefix="a", width=4)
    users = agents + watchers
    passwords = dict(users)
    names = [args.only] if args.only else ["kamailio", "ucgate"]
    servers: list[Server] = [
        KamailioServer(users, passwords) if n == "kamailio" else UcgateServer(users, args.python)
        for n in names
    ]
    workdir = Path(tempfile.mkdtemp(prefix="ucgate-bench-presence-"))
    csv = workdir / "watchers.csv"
    csv.write_text("SEQUENTIAL\n" + "".join(f"{u};{p};{RATE_AGENT}\n" for u, p in watchers))
    report: dict[str, Any] = {
        "benchmark": "presence",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "kernel": os.uname().release},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "fanout": {},
        "rate": {},
        "memory": {},
    }
    runs: list[RateRun] = []
    try:
        for server in servers:
            server.start()
            print(f"{server.name}: started on {LOOPBACK}:{server.port}", flush=True)
        if "memory" not in skip:
            presentities = [u for u, _ in agents[2:]]
            for server in servers:
                mem = asyncio.run(
                    memory_per_subscription(server, watchers, presentities, args.settle)
                )
                report["memory"][server.name] = mem
                print(f"{server.name}: memory {mem}", flush=True)
        if "fanout" not in skip:
            for server in servers:
                result = asyncio.run(
                    sip_fan_out(
                        server, watchers[: args.fanout], rounds=args.rounds, gap=args.round_gap
                    )
                )
                report["fanout"][server.name] = {"sip": result}
                print(f"{server.name}: SIP fan-out {result}", flush=True)
                if isinstance(server, UcgateServer) and args.ws_clients > 0:
                    ws = asyncio.run(
                        ws_fan_out(server, args.ws_clients, rounds=args.rounds, gap=args.round_gap)
                    )
                    report["fanout"][server.name]["websocket"] = ws
                    print(f"{server.name}: WebSocket fan-out {ws}", flush=True)
        if "rate" not in skip:
            failed_at: dict[str, int] = {}
            for rate in rates:
                for server in servers:
                    if server.name in failed_at and not args.keep_going:
                        continue
                    run = measure_rate(server, csv, rate, args.seconds, expires=300)
                    runs.append(run)
                    print(_rate_line(run), flush=True)
                    if run.failures:
                        print(f"  failures {run.failures}:\n{run.errors_tail[-600:]}", flush=True)
                    if not run.passed:
                        failed_at.setdefault(server.name, rate)
            for server in servers:
                mine = [r for r in runs if r.server == server.name]
                best = max((r for r in mine if r.passed), key=lambda r: r.target_rate, default=None)
                report["rate"][server.name] = {
                    "max_passing_rate": best.target_rate if best else 0,
                    "cpu_pct_at_max": best.server_cpu_pct if best else None,
                    "levels": [asdict(r) for r in mine],
                }
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    rate = report["rate"]
    if "kamailio" in rate and "ucgate" in rate and rate["kamailio"]["max_passing_rate"]:
        report["ratio_ucgate_over_kamailio_rate"] = round(
            rate["ucgate"]["max_passing_rate"] / rate["kamailio"]["max_passing_rate"], 3
        )
    out = args.out or ROOT / "bench/results" / f"presence-{dt.date.today().isoformat()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    _print_summary(report)
    print(f"\nwritten: {out}")
    return 0


def _rate_line(run: RateRun) -> str:
    return (
        f"{run.server:9} {run.target_rate:6}/s: ok={run.successful} failed={run.failed} "
        f"retrans={run.retransmissions} drops={run.udp_drops} rate={run.achieved_rate:.0f}/s "
        f"cpu={run.server_cpu_pct}% sipp={run.sipp_cpu_pct}% {'PASS' if run.passed else 'FAIL'}"
    )


def _print_summary(report: dict[str, Any]) -> None:
    print(
        f"\n{'server':10} {'SIP p50':>8} {'SIP p99':>8} {'WS p50':>8} {'WS p99':>8} "
        f"{'dialogs/s':>10} {'B/sub PSS':>10}"
    )
    names = set(report["fanout"]) | set(report["rate"]) | set(report["memory"])
    for name in sorted(names):
        sip = report["fanout"].get(name, {}).get("sip", {})
        ws = report["fanout"].get(name, {}).get("websocket", {})
        rate = report["rate"].get(name, {})
        mem = report["memory"].get(name, {})
        print(
            f"{name:10} {sip.get('p50_ms', '-'):>8} {sip.get('p99_ms', '-'):>8} "
            f"{ws.get('p50_ms', '-'):>8} {ws.get('p99_ms', '-'):>8} "
            f"{rate.get('max_passing_rate', '-'):>10} "
            f"{mem.get('pss_bytes_per_subscription', '-'):>10}"
        )
    if "ratio_ucgate_over_kamailio_rate" in report:
        print(f"ratio ucgate/kamailio (dialogs/s): {report['ratio_ucgate_over_kamailio_rate']}")


if __name__ == "__main__":
    sys.exit(main())
