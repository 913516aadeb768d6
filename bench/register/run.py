"""REGISTER benchmark: Kamailio and ucgate measured in the same run, level by level.

For each server: start it on its own free loopback port with 10,000 users, register every user
once (so memory is measured with 10,000 bindings), then run sipp ``register_auth.xml`` over UDP at
rising rates. Levels interleave across servers (kamailio @N, ucgate @N, kamailio @N+1, …) so machine
noise hits both. A level passes with 0 failed calls, 0 retransmissions, 0 UDP socket drops and an
achieved rate >= 97% of the target. Results go to bench/results/register-<date>.json.

    bench/register/run.sh                       # both servers, default rates
    bench/register/run.sh --only kamailio --rates 1000,4000 --seconds 5
"""

from __future__ import annotations

import argparse
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
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sip_test_rig.kamailio import Kamailio, users_range  # noqa: E402
from sip_test_rig.ports import LOOPBACK, free_port  # noqa: E402
from sip_test_rig.probe import wait_until_answers  # noqa: E402
from sip_test_rig.procs import (  # noqa: E402
    children_of,
    kill_pids,
    sample,
    stop_process,
    udp_drops,
)
from sip_test_rig.sipp_runner import SippResult, make_users_csv, run_sipp  # noqa: E402

DOMAIN = "example.test"
PASS_RATIO = 0.97
DEFAULT_RATES = "500,1000,2000,4000,7000,10000,14000"


class Server(Protocol):
    name: str
    port: int

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def pids(self) -> list[int]: ...


class KamailioServer:
    name = "kamailio"

    def __init__(self, users: list[tuple[str, str]]) -> None:
        self._k = Kamailio(
            users,
            domain=DOMAIN,
            children=2,
            tcp_children=1,
            shm_mb=64,
            template=Path(__file__).with_name("kamailio.cfg.tmpl"),
            start_timeout=60.0,
        )
        self.port = 0

    def start(self) -> None:
        self._k.start()
        self.port = self._k.port

    def stop(self) -> None:
        self._k.stop()

    def pids(self) -> list[int]:
        return self._k.pids()


def ucgate_config(port: int, http_port: int, data_dir: Path, users: list[tuple[str, str]]) -> str:
    """ucgate's TOML for the benchmark: memory store, warning logs, one agent per user."""
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
    ]
    for user, password in users:
        lines += ["[[agents]]", f'id = "{user}"', f'password = "{password}"', ""]
    return "\n".join(lines)


class UcgateServer:
    name = "ucgate"

    def __init__(self, users: list[tuple[str, str]], command: str) -> None:
        self.users = users
        self.command = command
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._tmp: Path | None = None

    def _log_tail(self) -> str:
        assert self._tmp is not None
        log = self._tmp / "ucgate.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-30:]) if log.exists() else ""

    def start(self) -> None:
        self._tmp = Path(tempfile.mkdtemp(prefix="ucgate-bench-"))
        self.port = free_port()
        cfg = self._tmp / "ucgate.toml"
        cfg.write_text(ucgate_config(self.port, free_port(), self._tmp / "data", self.users))
        with open(self._tmp / "ucgate.log", "wb") as log:
            self.proc = subprocess.Popen(
                [self.command, "serve", "--config", str(cfg)],
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


@dataclass(frozen=True)
class Run:
    """One sipp run against one server at one target rate."""

    server: str
    target_rate: int
    repeat: int
    successful: int
    failed: int
    retransmissions: int
    udp_drops: int
    achieved_rate: float
    server_cpu_pct: float
    sipp_cpu_pct: float
    rss_mib: float
    pss_mib: float
    passed: bool


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(
    server: Server,
    users_csv: Path,
    rate: int,
    calls: int,
    *,
    timeout: float,
    repeat: int = 0,
    expires: int = 3600,
) -> tuple[Run, SippResult]:
    """One sipp run; CPU% is of one core over the run's wall time."""
    pids = server.pids()
    before = sample(pids)
    drops_before = udp_drops(server.port)
    sipp_cpu_before = _children_cpu()  # servers are not reaped yet, so this delta is sipp's
    started = time.monotonic()
    result = run_sipp(
        "register_auth",
        f"{LOOPBACK}:{server.port}",
        users_csv=users_csv,
        rate=rate,
        calls=calls,
        transport="udp",
        timeout=timeout,
        variables={"domain": DOMAIN, "expires": str(expires)},
    )
    wall = time.monotonic() - started
    after = sample(server.pids())
    drops = udp_drops(server.port) - drops_before
    sipp_cpu = _children_cpu() - sipp_cpu_before
    passed = (
        result.failed == 0
        and result.retransmissions == 0
        and drops == 0
        and result.successful == calls
        and result.achieved_rate >= PASS_RATIO * rate
    )
    run = Run(
        server=server.name,
        target_rate=rate,
        repeat=repeat,
        successful=result.successful,
        failed=result.failed,
        retransmissions=result.retransmissions,
        udp_drops=drops,
        achieved_rate=round(result.achieved_rate, 1),
        server_cpu_pct=round(100 * (after.cpu_seconds - before.cpu_seconds) / wall, 1),
        sipp_cpu_pct=round(100 * sipp_cpu / wall, 1),
        rss_mib=round(after.rss_bytes / 2**20, 1),
        pss_mib=round(after.pss_bytes / 2**20, 1),
        passed=passed,
    )
    return run, result


def median_run(runs: list[Run]) -> dict[str, Any]:
    """The median of each metric over repeats; the level passes if the median run would."""
    med: Callable[[str], float] = lambda key: statistics.median(  # noqa: E731
        float(getattr(r, key)) for r in runs
    )
    return {
        "target_rate": runs[0].target_rate,
        "repeats": len(runs),
        "failed": med("failed"),
        "retransmissions": med("retransmissions"),
        "udp_drops": med("udp_drops"),
        "achieved_rate": med("achieved_rate"),
        "server_cpu_pct": med("server_cpu_pct"),
        "sipp_cpu_pct": med("sipp_cpu_pct"),
        "rss_mib": med("rss_mib"),
        "pss_mib": med("pss_mib"),
        "passed": sum(r.passed for r in runs) * 2 > len(runs),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="REGISTER benchmark: Kamailio vs ucgate")
    parser.add_argument("--only", choices=["kamailio", "ucgate"], help="run one server only")
    parser.add_argument("--rates", default=DEFAULT_RATES, help="comma-separated target rates/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each level")
    parser.add_argument("--repeats", type=int, default=1, help="runs per level (median taken)")
    parser.add_argument("--users", type=int, default=10_000, help="distinct users")
    parser.add_argument("--expires", type=int, default=3600, help="Expires of each REGISTER")
    parser.add_argument("--ucgate", default=str(ROOT / ".venv/bin/ucgate"), help="ucgate CLI")
    parser.add_argument("--keep-going", action="store_true", help="run levels above a failure")
    parser.add_argument("--out", type=Path, help="JSON output (default bench/results/…)")
    args = parser.parse_args(argv)

    rates = [int(r) for r in args.rates.split(",") if r.strip()]
    if not rates or args.repeats < 1 or args.seconds <= 0 or args.users < 1:
        parser.error("need rates, --repeats >= 1, --seconds > 0, --users >= 1")
    users = users_range(args.users)
    names = [args.only] if args.only else ["kamailio", "ucgate"]
    servers: list[Server] = [
        KamailioServer(users) if n == "kamailio" else UcgateServer(users, args.ucgate)
        for n in names
    ]
    workdir = Path(tempfile.mkdtemp(prefix="ucgate-bench-register-"))
    users_csv = make_users_csv(workdir / "users.csv", users)
    runs: list[Run] = []
    memory: dict[str, dict[str, float]] = {}
    failed_at: dict[str, int] = {}
    try:
        for server in servers:
            server.start()
        # Warm-up: register every user once so each level starts with all bindings present.
        for server in servers:
            warm_rate = 2000
            run, result = measure(
                server,
                users_csv,
                warm_rate,
                args.users,
                timeout=args.users / warm_rate * 4 + 30,
                expires=args.expires,
            )
            print("warm-up   " + _run_line(run), flush=True)
            if result.successful != args.users:
                print(f"{server.name}: warm-up failed: {result.summary()}", file=sys.stderr)
            memory[server.name] = {
                "bindings": result.successful,
                "rss_mib": run.rss_mib,
                "pss_mib": run.pss_mib,
            }
            print(
                f"{server.name}: {result.successful} bindings, RSS {run.rss_mib} MiB, "
                f"PSS {run.pss_mib} MiB",
                flush=True,
            )
        for rate in rates:
            calls = max(1, int(rate * args.seconds))
            for repeat in range(args.repeats):
                for server in servers:
                    if server.name in failed_at and not args.keep_going:
                        continue
                    run, result = measure(
                        server,
                        users_csv,
                        rate,
                        calls,
                        timeout=args.seconds * 3 + 30,
                        repeat=repeat,
                        expires=args.expires,
                    )
                    runs.append(run)
                    print(_run_line(run), flush=True)
            for server in servers:
                level = [r for r in runs if r.server == server.name and r.target_rate == rate]
                if level and not median_run(level)["passed"]:
                    failed_at.setdefault(server.name, rate)
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    report = _report(args, rates, servers, runs, memory)
    out = args.out or ROOT / "bench/results" / f"register-{dt.date.today().isoformat()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    _print_table(report)
    print(f"\nwritten: {out}")
    return 0


def _run_line(run: Run) -> str:
    return (
        f"{run.server:9} {run.target_rate:6}/s #{run.repeat}: "
        f"ok={run.successful} failed={run.failed} retrans={run.retransmissions} "
        f"drops={run.udp_drops} rate={run.achieved_rate:.0f}/s cpu={run.server_cpu_pct}% "
        f"sipp={run.sipp_cpu_pct}% rss={run.rss_mib}MiB {'PASS' if run.passed else 'FAIL'}"
    )


def _report(
    args: argparse.Namespace,
    rates: list[int],
    servers: list[Server],
    runs: list[Run],
    memory: dict[str, dict[str, float]],
) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for server in servers:
        levels = []
        for rate in rates:
            level = [r for r in runs if r.server == server.name and r.target_rate == rate]
            if level:
                levels.append(median_run(level))
        best = max(
            (lv for lv in levels if lv["passed"]), key=lambda lv: lv["target_rate"], default=None
        )
        summary[server.name] = {
            "max_passing_rate": best["target_rate"] if best else 0,
            "cpu_pct_at_max": best["server_cpu_pct"] if best else None,
            "memory_with_bindings": memory.get(server.name, {}),
            "levels": levels,
        }
    ratio = None
    if "kamailio" in summary and "ucgate" in summary:
        k = summary["kamailio"]["max_passing_rate"]
        ratio = round(summary["ucgate"]["max_passing_rate"] / k, 3) if k else None
    return {
        "benchmark": "register",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "kernel": os.uname().release},
        "settings": {
            "rates": rates,
            "seconds": args.seconds,
            "repeats": args.repeats,
            "users": args.users,
            "expires": args.expires,
            "transport": "udp",
            "scenario": "sip_test_rig/sipp/register_auth.xml",
            "pass": f"0 failed, 0 retransmissions, 0 UDP drops, >= {PASS_RATIO:.0%} of target",
        },
        "summary": summary,
        "ratio_ucgate_over_kamailio": ratio,
        "runs": [asdict(r) for r in runs],
    }


def _print_table(report: dict[str, Any]) -> None:
    print(
        f"\n{'server':10} {'max rate/s':>10} {'CPU% @max':>10} {'RSS MiB':>8} {'PSS MiB':>8}"
        f"  (memory with {report['settings']['users']} bindings)"
    )
    for name, s in report["summary"].items():
        mem = s["memory_with_bindings"]
        print(
            f"{name:10} {s['max_passing_rate']:>10} {s['cpu_pct_at_max'] or '-':>10} "
            f"{mem.get('rss_mib', '-'):>8} {mem.get('pss_mib', '-'):>8}"
        )
    if report["ratio_ucgate_over_kamailio"] is not None:
        print(f"ratio ucgate/kamailio (max passing rate): {report['ratio_ucgate_over_kamailio']}")


if __name__ == "__main__":
    sys.exit(main())
