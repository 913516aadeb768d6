"""Call-setup benchmark: sipp UAC -> server -> sipp UAS, servers measured in the same run.

Servers (each on its own free loopback port):

* ``kamailio``: stateful proxy with Record-Route and dialog tracking (``dlg_manage``), the
  rig's ``sip_test_rig/kamailio_proxy.cfg.tmpl``; 2 UDP workers like the REGISTER baseline;
* ``sippy``: the Python B2BUA from PyPI (``sippy``), ``b2bua_simple``, installed into a separate
  venv (``--sippy-venv``, created with ``pip install sippy`` if missing);
* ``ucgate``: the gateway's B2BUA, ``python -m ucgate serve --config FILE`` (``ucgate_config``):
  an IP trunk ``pbx1`` with ``allowed_ips = ["127.0.0.1"]`` (the sipp UAC is the trunk, so no
  digest), DID ``+15550100`` -> ``agent:uas``, and the sipp UAS registered as agent ``uas`` from
  its own port before each level (the B2BUA sends to a binding's source address, so it forks to
  exactly one device: the UAS). The UAS port is fixed for the run: a new port per level would
  leave the previous levels' bindings behind and every call would also fork to dead devices.

Each level: a sipp UAS (``uas_call.xml``) takes every call, a sipp UAC (``uac_call.xml``) places
``rate x seconds`` calls of ``--hold-ms`` each. For Kamailio and sippy the UAC's Request-URI is the
UAS's address and it sends to the server (``-rsa``); for ucgate it dials the DID. Levels
interleave across servers. A level passes with 0 failed calls (UAC and UAS), 0 retransmissions
and >= 97% of the target rate. Memory per active call = (peak server RSS during the level - RSS
before it) / (rate x hold time). Results: bench/results/calls-<date>.json.

    bench/calls/run.sh --only kamailio,sippy --rates 50,100,200 --seconds 10
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sip_test_rig.kamailio import Kamailio  # noqa: E402
from sip_test_rig.ports import LOOPBACK, free_port  # noqa: E402
from sip_test_rig.probe import wait_until_answers  # noqa: E402
from sip_test_rig.procs import children_of, kill_pids, sample, stop_process  # noqa: E402
from sip_test_rig.sipp_runner import SippResult, make_users_csv, run_sipp  # noqa: E402

DOMAIN = "example.test"
DID = "+15550100"
UAS_AGENT = ("uas", "uas-bench-pw")
PASS_RATIO = 0.97
DEFAULT_RATES = "20,50,100,200,400"
PROXY_TEMPLATE = ROOT / "sip_test_rig/kamailio_proxy.cfg.tmpl"


class Server(Protocol):
    name: str
    port: int
    #: True: the UAC dials the DID at the server; False: it dials the UAS's address via -rsa.
    dials_did: bool
    #: A UAS port fixed at start (sippy's static next hop), or None for a fresh one per level.
    uas_port: int | None

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def pids(self) -> list[int]: ...
    def prepare_uas(self, uas_port: int) -> None: ...


class KamailioServer:
    name = "kamailio"
    dials_did = False
    uas_port: int | None = None

    def __init__(self) -> None:
        self._k = Kamailio(
            [UAS_AGENT],
            domain=DOMAIN,
            children=2,
            tcp_children=1,
            shm_mb=256,
            template=PROXY_TEMPLATE,
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

    def prepare_uas(self, uas_port: int) -> None:
        pass


class ProcessServer:
    """A server run as one command line; stopped by PID (and its children by PID)."""

    dials_did = False
    uas_port: int | None = None

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.tmp: Path | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def _log_tail(self) -> str:
        assert self.tmp is not None
        log = self.tmp / "server.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-30:]) if log.exists() else ""

    def start(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix=f"ucgate-bench-{self.name}-"))
        self.port = free_port()
        with open(self.tmp / "server.log", "wb") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.tmp,
            )
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def wait_ready(self) -> None:
        assert self.proc is not None
        wait_until_answers(self.port, self.proc, timeout=60.0, log_tail=self._log_tail)

    def stop(self) -> None:
        if self.proc is not None:
            workers = children_of(self.proc.pid)
            stop_process(self.proc, timeout=5.0)
            kill_pids(workers)
            self.proc = None
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def pids(self) -> list[int]:
        return [] if self.proc is None else [self.proc.pid, *children_of(self.proc.pid)]

    def prepare_uas(self, uas_port: int) -> None:
        pass


class SippyServer(ProcessServer):
    """sippy's ``b2bua_simple``: a B2BUA relaying each INVITE to the Request-URI's host:port."""

    def __init__(self, venv: Path) -> None:
        super().__init__("sippy")
        self.venv = venv
        # b2bua_simple sends every call to one static next hop (-n): the UAS port is fixed.
        self.uas_port = free_port()

    def command(self) -> list[str]:
        return [
            str(self.venv / "bin/b2bua_simple"),
            "-f",  # foreground: stays our child, stopped by PID
            "-l",
            LOOPBACK,
            "-p",
            str(self.port),
            "-n",
            f"{LOOPBACK}:{self.uas_port}",
        ]

    def wait_ready(self) -> None:
        # b2bua_simple proxies OPTIONS to its next hop (nobody yet), so wait for its socket.
        assert self.proc is not None
        deadline = time.monotonic() + 30.0
        while not _udp_bound(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"sippy exited with {self.proc.returncode}:\n{self._log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"sippy did not bind {self.port}:\n{self._log_tail()}")
            time.sleep(0.05)


def _udp_bound(port: int) -> bool:
    wanted = f":{port:04X}"
    with open("/proc/net/udp", encoding="ascii") as f:
        return any(line.split()[1].endswith(wanted) for line in list(f)[1:])


def ucgate_config(port: int, http_port: int, data_dir: Path) -> str:
    """ucgate TOML for bench/calls: the sipp UAC is trunk ``pbx1`` by address, dials the DID,
    which rings agent ``uas`` (the sipp UAS). Logs at warning: one info line per call event
    would measure the logger, not the B2BUA."""
    agent, password = UAS_AGENT
    return "\n".join(
        [
            'node_id = "bench"',
            "",
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
            "[[agents]]",
            f'id = "{agent}"',
            f'password = "{password}"',
            "",
            "[[trunks]]",
            'id = "pbx1"',
            'password = "pbx1-bench-pw"',
            f'allowed_ips = ["{LOOPBACK}"]',
            "",
            "[[dids]]",
            f'number = "{DID}"',
            f'target = "agent:{agent}"',
            "",
        ]
    )


class UcgateServer(ProcessServer):
    dials_did = True

    def __init__(self, python: str) -> None:
        super().__init__("ucgate")
        self.python = python
        # One UAS port for the whole run: each level re-registers the same binding (a refresh)
        # instead of adding one, so the B2BUA always forks to the live UAS alone.
        self.uas_port: int | None = free_port()

    def command(self) -> list[str]:
        assert self.tmp is not None
        cfg = self.tmp / "ucgate.toml"
        cfg.write_text(ucgate_config(self.port, free_port(), self.tmp / "data"))
        return [self.python, "-m", "ucgate", "serve", "--config", str(cfg)]

    def prepare_uas(self, uas_port: int) -> None:
        # Register agent "uas" with Contact sip:uas@127.0.0.1:<uas_port>, sent from that port,
        # before the UAS binds it: the B2BUA then forks the DID's calls to the UAS alone.
        assert self.tmp is not None
        csv = make_users_csv(self.tmp / "uas.csv", [UAS_AGENT])
        result = run_sipp(
            "register_auth",
            f"{LOOPBACK}:{self.port}",
            users_csv=csv,
            calls=1,
            timeout=10,
            variables={"domain": DOMAIN, "expires": "3600"},
            extra_args=["-p", str(uas_port)],
        )
        if result.successful != 1:
            raise RuntimeError(f"UAS registration at ucgate failed: {result.summary()}")


@dataclass(frozen=True)
class Level:
    server: str
    target_rate: int
    calls: int
    hold_ms: int
    successful: int
    failed: int
    uas_failed: int
    retransmissions: int
    achieved_rate: float
    server_cpu_pct: float
    rss_before_mib: float
    rss_peak_mib: float
    kib_per_active_call: float | None
    passed: bool


def measure(server: Server, rate: int, seconds: float, hold_ms: int) -> tuple[Level, str]:
    calls = max(1, int(rate * seconds))
    uas_port = server.uas_port or free_port()
    server.prepare_uas(uas_port)
    budget = seconds * 3 + hold_ms / 1000 + 30
    uas_out: list[SippResult] = []
    uas = threading.Thread(
        target=lambda: uas_out.append(
            run_sipp(
                "uas_call",
                f"{LOOPBACK}:{uas_port}",
                calls=calls,
                rate=rate,
                timeout=budget + 10,
                extra_args=["-p", str(uas_port)],
                max_open_calls=calls,
            )
        ),
        name="sipp-uas",
    )
    uas.start()
    time.sleep(0.5)  # benchmark pacing, not test synchronisation: let the UAS bind first
    before = sample(server.pids())
    peak = [before.rss_bytes]
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.2):
            peak.append(sample(server.pids()).rss_bytes)

    watcher = threading.Thread(target=watch, name="rss-watch")
    watcher.start()
    started = time.monotonic()
    target = f"{LOOPBACK}:{server.port}" if server.dials_did else f"{LOOPBACK}:{uas_port}"
    extra = ["-d", str(hold_ms)] + (
        [] if server.dials_did else ["-rsa", f"{LOOPBACK}:{server.port}"]
    )
    uac = run_sipp(
        "uac_call",
        target,
        calls=calls,
        rate=rate,
        timeout=budget,
        variables={"did": DID},
        extra_args=extra,
        max_open_calls=max(100, int(rate * (hold_ms / 1000 + 2))),
    )
    wall = time.monotonic() - started
    stop.set()
    watcher.join()
    after = sample(server.pids())
    uas.join(timeout=budget + 20)
    uas_res = uas_out[0] if uas_out else None
    active = rate * hold_ms / 1000
    growth = max(peak) - before.rss_bytes
    passed = (
        uac.failed == 0
        and uac.successful == calls
        and uac.retransmissions == 0
        and uas_res is not None
        and uas_res.failed == 0
        and uac.achieved_rate >= PASS_RATIO * rate * (seconds / (seconds + hold_ms / 1000))
    )
    level = Level(
        server=server.name,
        target_rate=rate,
        calls=calls,
        hold_ms=hold_ms,
        successful=uac.successful,
        failed=uac.failed,
        uas_failed=uas_res.failed if uas_res else -1,
        retransmissions=uac.retransmissions,
        achieved_rate=round(uac.achieved_rate, 1),
        server_cpu_pct=round(100 * (after.cpu_seconds - before.cpu_seconds) / wall, 1),
        rss_before_mib=round(before.rss_bytes / 2**20, 1),
        rss_peak_mib=round(max(peak) / 2**20, 1),
        kib_per_active_call=round(growth / 1024 / active, 2) if active >= 1 else None,
        passed=passed,
    )
    return level, uac.summary()


def ensure_sippy(venv: Path) -> None:
    if (venv / "bin/b2bua_simple").exists():
        return
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin/pip"), "install", "-q", "sippy"], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Call-setup benchmark: Kamailio, sippy, ucgate")
    parser.add_argument("--only", default="kamailio,sippy,ucgate", help="comma-separated servers")
    parser.add_argument("--rates", default=DEFAULT_RATES, help="comma-separated calls/s")
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="seconds of new calls per level"
    )
    parser.add_argument("--hold-ms", type=int, default=5000, help="call length (sipp -d)")
    parser.add_argument("--sippy-venv", type=Path, default=ROOT / "bench/.venv-sippy")
    parser.add_argument(
        "--python",
        default=str(ROOT / ".venv/bin/python"),
        help="interpreter that runs `-m ucgate serve` (the project's venv)",
    )
    parser.add_argument("--keep-going", action="store_true", help="run levels above a failure")
    parser.add_argument("--out", type=Path, help="JSON output (default bench/results/…)")
    args = parser.parse_args(argv)
    rates = [int(r) for r in args.rates.split(",") if r.strip()]
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    servers: list[Server] = []
    for name in names:
        if name == "kamailio":
            servers.append(KamailioServer())
        elif name == "sippy":
            ensure_sippy(args.sippy_venv)
            servers.append(SippyServer(args.sippy_venv))
        elif name == "ucgate":
            servers.append(UcgateServer(args.python))
        else:
            parser.error(f"unknown server {name!r}")
    levels: list[Level] = []
    failed_at: dict[str, int] = {}
    try:
        for server in servers:
            server.start()
        for rate in rates:
            for server in servers:
                if server.name in failed_at and not args.keep_going:
                    continue
                level, summary = measure(server, rate, args.seconds, args.hold_ms)
                levels.append(level)
                print(_line(level), flush=True)
                if not level.passed:
                    failed_at.setdefault(server.name, rate)
                    print(f"  {summary}", flush=True)
    finally:
        for server in servers:
            server.stop()
    report = _report(args, rates, servers, levels)
    out = args.out or ROOT / "bench/results" / f"calls-{dt.date.today().isoformat()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["summary"], indent=2))
    print(f"written: {out}")
    return 0


def _line(lv: Level) -> str:
    return (
        f"{lv.server:9} {lv.target_rate:5}/s: ok={lv.successful}/{lv.calls} failed={lv.failed} "
        f"uas_failed={lv.uas_failed} retrans={lv.retransmissions} rate={lv.achieved_rate}/s "
        f"cpu={lv.server_cpu_pct}% rss={lv.rss_before_mib}->{lv.rss_peak_mib}MiB "
        f"per-call={lv.kib_per_active_call}KiB {'PASS' if lv.passed else 'FAIL'}"
    )


def _report(
    args: argparse.Namespace, rates: list[int], servers: list[Server], levels: list[Level]
) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for server in servers:
        mine = [lv for lv in levels if lv.server == server.name]
        best = max((lv for lv in mine if lv.passed), key=lambda lv: lv.target_rate, default=None)
        summary[server.name] = {
            "max_passing_rate": best.target_rate if best else 0,
            "cpu_pct_at_max": best.server_cpu_pct if best else None,
            "kib_per_active_call_at_max": best.kib_per_active_call if best else None,
        }
    ratios = {}
    if "ucgate" in summary:
        for ref in ("kamailio", "sippy"):
            if summary.get(ref, {}).get("max_passing_rate"):
                ratios[f"ucgate_over_{ref}"] = round(
                    summary["ucgate"]["max_passing_rate"] / summary[ref]["max_passing_rate"], 3
                )
    return {
        "benchmark": "calls",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "kernel": os.uname().release},
        "settings": {
            "rates": rates,
            "seconds": args.seconds,
            "hold_ms": args.hold_ms,
            "transport": "udp",
            "uac": "sip_test_rig/sipp/uac_call.xml",
            "uas": "sip_test_rig/sipp/uas_call.xml",
            "pass": f"0 failed (UAC and UAS), 0 retransmissions, >= {PASS_RATIO:.0%} of target",
        },
        "summary": summary,
        "ratios": ratios,
        "levels": [asdict(lv) for lv in levels],
    }


if __name__ == "__main__":
    sys.exit(main())
