"""Media benchmark: concurrent WebRTC <-> SIP bridged calls a gateway sustains, per media
backend of ucgate and for Janus (SIP plugin), measured in the same run.

Topology of one call (every hop on 127.0.0.1, each box its own process):

    worker a --RTP--> L (generator's rtpengine) ==ICE+DTLS-SRTP==> GATEWAY --RTP--> worker b
                      "the browser's media stack"        (ucgate + its backend, or Janus)

* ``worker`` (``rtp_load.py``, one or more processes): both plain ends of every call; sends a
  stamped PCMU frame every 20 ms each way and counts lost/late frames at the receiving ends;
* ``L``: a second rtpengine terminating the browser side's ICE and DTLS-SRTP in C (aiortc
  would cost ~6% of a core per peer, /work/shared/PJSUA2_NOTES.md);
* signalling (this process): SIP over WebSocket (RFC 7118) per browser agent to ucgate, or
  the Janus API over WebSocket; the trunk is a UDP UAS answering each INVITE with worker b.

A level of N calls passes when every call is set up and, in both directions, fewer than
``--max-bad`` (1%) of the frames due in the ``--measure`` window (20 s, after ``--warmup``)
are lost or arrive later than ``--late-ms`` (60 ms). The gateway's CPU (ucgate + backend
processes, or janus) and the generator's (L + workers + this process) are sampled over the
window. Levels interleave across gateways; ``--runs`` repeats the whole ladder and the
report takes medians. Results: bench/results/media-<date>.json.

    bench/media/run.sh --gateways rtpengine,janus --levels 10,50,100,200 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from bench.media.sip_load import (  # noqa: E402
    BrowserMedia,
    JanusApi,
    Ng,
    RtpengineProc,
    TrunkUas,
    WsAgent,
    media_address,
)

from sip_test_rig.ports import LOOPBACK, free_port  # noqa: E402
from sip_test_rig.probe import wait_until_answers  # noqa: E402
from sip_test_rig.procs import children_of, sample, stop_process  # noqa: E402

DOMAIN = "example.test"
TRUNK = ("pbx1", "pbx1-bench-Pa55word")
WORKER = Path(__file__).with_name("rtp_load.py")
SETUP_CONCURRENCY = 8


def ssrc_of(j: int, direction: int) -> int:
    """The SSRC rtp_load.py gives call ``j`` of a worker, ``direction`` 0 = browser->trunk."""
    return 0x10000 + 2 * j + direction


def agent(i: int) -> tuple[str, str]:
    return f"a{i:04d}", f"a{i:04d}-bench-Pa55word"


def dialled(i: int) -> str:
    return f"+1555{i:07d}"


class Gateway(Protocol):
    name: str

    async def start(self, uas: TrunkUas, max_calls: int) -> None: ...
    async def open_level(self, calls: int) -> None: ...
    async def place(self, i: int, offer: bytes) -> bytes: ...
    async def hangup(self, i: int) -> None: ...
    async def close_level(self) -> None: ...
    def pids(self) -> list[int]: ...
    async def stop(self) -> None: ...


def _port_base() -> int:
    return random.randrange(20000, 56000, 2)


# -- ucgate ---------------------------------------------------------------------------------


def ucgate_config(
    sip: int, ws: int, http: int, data: Path, agents: int, backend: str, ng_port: int
) -> str:
    lines = [
        'node_id = "bench-media"',
        "[sip]",
        f'domain = "{DOMAIN}"',
        f'listen = ["udp:{LOOPBACK}:{sip}", "tcp:{LOOPBACK}:{sip}", "ws:{LOOPBACK}:{ws}"]',
        "[http]",
        f'listen = "{LOOPBACK}:{http}"',
        "[store]",
        'backend = "memory"',
        f'data_dir = "{data}"',
        "[log]",
        'level = "warning"',
    ]
    for i in range(agents):
        user, password = agent(i)
        lines += ["[[agents]]", f'id = "{user}"', f'password = "{password}"']
    lines += [
        "[[trunks]]",
        f'id = "{TRUNK[0]}"',
        f'password = "{TRUNK[1]}"',
        "[[dial_rules]]",
        'prefix = "+1"',
        f'trunk = "{TRUNK[0]}"',
        "[media]",
        f'backend = "{backend}"',
    ]
    if backend == "rtpengine":
        lines.append(f'rtpengine = "{LOOPBACK}:{ng_port}"')
    return "\n".join(lines) + "\n"


class UcgateGateway:
    """``python -m ucgate serve`` with ``[media] backend`` = rtpengine (plus its own rtpengine
    "G") or embedded (its media workers are ucgate's child processes)."""

    def __init__(self, backend: str, workdir: Path, python: str) -> None:
        self.backend = backend
        self.name = f"ucgate-{backend}"
        self.workdir = workdir / self.name
        self.python = python
        self.proc: subprocess.Popen[bytes] | None = None
        self.engine: RtpengineProc | None = None
        self.ws_port = 0
        self.sip_port = 0
        self.http: aiohttp.ClientSession | None = None
        self.agents: dict[int, WsAgent] = {}

    def _log_tail(self) -> str:
        log = self.workdir / "ucgate.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-30:]) if log.exists() else ""

    async def start(self, uas: TrunkUas, max_calls: int) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        ng_port = 0
        if self.backend == "rtpengine":
            self.engine = RtpengineProc(
                self.workdir, "rtpengine-G", threads=2, port_base=_port_base()
            )
            ng_port = free_port()
            self.engine.start(ng_port)
            ng_client = Ng(ng_port)
            await ng_client.open()
            ng_client.close()
        self.sip_port, self.ws_port = free_port(), free_port()
        cfg = self.workdir / "ucgate.toml"
        cfg.write_text(
            ucgate_config(
                self.sip_port,
                self.ws_port,
                free_port(),
                self.workdir / "data",
                max_calls,
                self.backend,
                ng_port,
            )
        )
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        with (self.workdir / "ucgate.log").open("wb") as log:
            self.proc = subprocess.Popen(
                [self.python, "-m", "ucgate", "serve", "--config", str(cfg)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=env,
            )
        await asyncio.to_thread(
            wait_until_answers, self.sip_port, self.proc, timeout=60.0, log_tail=self._log_tail
        )
        await uas.register(self.sip_port, *TRUNK)
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def open_level(self, calls: int) -> None:
        assert self.http is not None
        url = f"ws://{LOOPBACK}:{self.ws_port}/"
        self.agents = {i: WsAgent(self.http, url, *agent(i)) for i in range(calls)}
        await asyncio.gather(*(a.connect() for a in self.agents.values()))

    async def place(self, i: int, offer: bytes) -> bytes:
        return await self.agents[i].call(f"sip:{dialled(i)}@{DOMAIN}", offer)

    async def hangup(self, i: int) -> None:
        await self.agents[i].hangup()

    async def close_level(self) -> None:
        await asyncio.gather(*(a.close() for a in self.agents.values()))
        self.agents = {}

    def pids(self) -> list[int]:
        out: list[int] = []
        if self.proc is not None:
            out += [self.proc.pid, *children_of(self.proc.pid)]
        if self.engine is not None and self.engine.proc is not None:
            out.append(self.engine.pid)
        return out

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.close()
            self.http = None
        if self.proc is not None:
            workers = children_of(self.proc.pid)
            stop_process(self.proc, timeout=10.0)
            for pid in workers:  # embedded media workers, if any outlived their parent
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
            self.proc = None
        if self.engine is not None:
            self.engine.stop()


# -- Janus ----------------------------------------------------------------------------------

JANUS_LIBDIR = Path("/usr/lib/x86_64-linux-gnu/janus")


def host_ipv4() -> str:
    """The host's first global IPv4 address (Janus needs one for ICE, see JanusGateway)."""
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "scope", "global"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in out.splitlines():
        return line.split()[3].split("/")[0]
    raise RuntimeError("no global IPv4 address: Janus cannot gather an ICE candidate")


def janus_configs(folder: Path, ws_port: int, rtp_base: int, ice_ip: str) -> Path:
    """A janus config folder: core, the SIP plugin and the WebSocket transport only."""
    plugins, transports, empty = folder / "plugins", folder / "transports", folder / "none"
    for d in (plugins, transports, empty):
        d.mkdir(parents=True, exist_ok=True)
    for src, dst in (
        (JANUS_LIBDIR / "plugins/libjanus_sip.so", plugins / "libjanus_sip.so"),
        (JANUS_LIBDIR / "transports/libjanus_websockets.so", transports / "libjanus_websockets.so"),
    ):
        if not dst.exists():
            dst.symlink_to(src)
    rtp = f"{rtp_base}-{rtp_base + 3999}"
    (folder / "janus.jcfg").write_text(
        "general: {\n"
        f'  configs_folder = "{folder}"\n  plugins_folder = "{plugins}"\n'
        f'  transports_folder = "{transports}"\n  events_folder = "{empty}"\n'
        f'  loggers_folder = "{empty}"\n'
        f"  debug_level = {os.environ.get('BENCH_JANUS_DEBUG', '3')}\n"
        '  session_timeout = 0\n  server_name = "bench"\n'
        "}\n"
        f'media: {{\n  rtp_port_range = "{rtp}"\n}}\n'
        f'nat: {{\n  ice_enforce_list = "{ice_ip}"\n  ignore_mdns = true\n}}\n'
    )
    (folder / "janus.transport.websockets.jcfg").write_text(
        'general: {\n  json = "compact"\n  ws = true\n'
        f'  ws_port = {ws_port}\n  ws_ip = "{LOOPBACK}"\n  wss = false\n}}\n'
        "admin: {\n  admin_ws = false\n  admin_wss = false\n}\n"
    )
    sip_rtp = f"{rtp_base + 4000}-{rtp_base + 7999}"
    (folder / "janus.plugin.sip.jcfg").write_text(
        "general: {\n"
        f'  local_ip = "{LOOPBACK}"\n  sdp_ip = "{LOOPBACK}"\n'
        f'  rtp_port_range = "{sip_rtp}"\n'
        "  keepalive_interval = 0\n  behind_nat = false\n  register_ttl = 3600\n"
        "  events = false\n"
        "}\n"
    )
    return folder / "janus.jcfg"


class JanusGateway:
    """Janus 1.1 (Debian), SIP plugin, Janus API over its WebSocket transport.

    Janus (libnice) never gathers a loopback candidate, whatever ``ice_enforce_list`` says
    (measured: with "lo" or "127.0.0.1" it offers only the host's other addresses), so its
    WebRTC side uses the host's own IPv4 address, and so does the generator's rtpengine for
    Janus calls. Packets to a local address still go through the ``lo`` device (``ip route
    get`` says ``local ... dev lo``); nothing leaves the host. SIP and RTP toward the trunk
    stay on 127.0.0.1.
    """

    name = "janus"

    def __init__(self, workdir: Path, ice_ip: str) -> None:
        self.ice_ip = ice_ip
        self.workdir = workdir / "janus"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ws_port = 0
        self.http: aiohttp.ClientSession | None = None
        self.api: JanusApi | None = None
        self.uas_port = 0
        self.handles: dict[int, int] = {}

    async def start(self, uas: TrunkUas, max_calls: int) -> None:
        del max_calls
        self.ws_port = free_port()
        base = random.randrange(20000, 50000, 2)
        cfg = janus_configs(self.workdir, self.ws_port, base, self.ice_ip)
        with (self.workdir / "janus.log").open("wb") as log:
            self.proc = subprocess.Popen(
                ["janus", "-C", str(cfg), "-F", str(self.workdir), "-o"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.uas_port = uas.port
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        deadline = time.monotonic() + 30
        while True:  # bounded: until the WebSocket transport accepts (or 30 s)
            try:
                self.api = JanusApi(self.http, f"ws://{LOOPBACK}:{self.ws_port}/")
                await self.api.connect()
                return
            except (aiohttp.ClientError, OSError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("janus did not start; see janus.log") from None
                await asyncio.sleep(0.2)  # polling another process's readiness, bounded

    async def open_level(self, calls: int) -> None:
        self.handles = {}

    async def place(self, i: int, offer: bytes) -> bytes:
        assert self.api is not None
        uri = f"sip:{dialled(i)}@{LOOPBACK}:{self.uas_port}"
        handle = await self.api.call(i, uri, offer)
        self.handles[i] = handle
        return self.api.answer_of(handle)

    async def hangup(self, i: int) -> None:
        assert self.api is not None
        if i in self.handles:
            await self.api.hangup(self.handles.pop(i))

    async def close_level(self) -> None:
        self.handles = {}

    def pids(self) -> list[int]:
        return [] if self.proc is None else [self.proc.pid]

    async def stop(self) -> None:
        if self.api is not None:
            await self.api.close()
            self.api = None
        if self.http is not None:
            await self.http.close()
            self.http = None
        if self.proc is not None:
            stop_process(self.proc, timeout=10.0)
            self.proc = None


# -- one level ------------------------------------------------------------------------------


@dataclass
class Generator:
    engine: RtpengineProc
    media: BrowserMedia
    uas: TrunkUas
    workers: int
    late_ms: float
    level_no: int = 0
    last_sdp: tuple[bytes, bytes] = (b"", b"")
    worker_pids: list[int] = field(default_factory=list)

    def pids(self) -> list[int]:
        return [self.engine.pid, os.getpid(), *self.worker_pids]


async def _spawn_workers(
    gen: Generator, calls: int
) -> list[tuple[asyncio.subprocess.Process, list[int]]]:
    shards = [list(range(calls))[k :: gen.workers] for k in range(gen.workers)]
    out = []
    for shard in shards:
        if not shard:
            continue
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(WORKER),
            "--calls",
            str(len(shard)),
            "--late-ms",
            str(gen.late_ms),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        out.append((proc, shard))
    return out


async def _read_json(proc: asyncio.subprocess.Process, timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    async with asyncio.timeout(timeout):
        line = await proc.stdout.readline()
    if not line:
        raise RuntimeError(f"rtp worker {proc.pid} exited")
    doc: dict[str, Any] = json.loads(line)
    return doc


def _host_times() -> list[int]:
    """The host's aggregate CPU times (jiffies) from /proc/stat: user nice system idle
    iowait irq softirq steal."""
    with open("/proc/stat", encoding="ascii") as f:
        return [int(x) for x in f.readline().split()[1:9]]


def _host_usage(before: list[int], after: list[int]) -> tuple[float, float]:
    """(busy %, steal %) of all CPUs between two samples (100% = every CPU busy)."""
    delta = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(delta) or 1
    idle = delta[3] + delta[4]
    return round(100 * (total - idle) / total, 1), round(100 * delta[7] / total, 1)


def _cpu(pids: list[int]) -> float:
    return sample(pids).cpu_seconds


async def _sleep_until(t: float) -> None:
    # benchmark pacing (the measurement window), not test synchronisation
    await asyncio.sleep(max(0.0, t - time.monotonic()))


async def measure(
    gw: Gateway, gen: Generator, calls: int, args: argparse.Namespace
) -> dict[str, Any]:
    gen.level_no += 1
    gen.media.run_id = f"{gw.name}-{gen.level_no}"
    workers = await _spawn_workers(gen, calls)
    gen.worker_pids = [p.pid for p, _ in workers]
    try:
        ports: dict[int, tuple[int, int]] = {}
        local: dict[int, int] = {}  # call -> its index inside its worker (picks the SSRC)
        for proc, shard in workers:
            doc = await _read_json(proc, 30)
            for j, (pa, pb) in enumerate(doc["ports"]):
                ports[shard[j]] = (pa, pb)
                local[shard[j]] = j
        gen.uas.ports = {i: ports[i][1] for i in range(calls)}
        gen.uas.calls = {}
        await gw.open_level(calls)
        sem = asyncio.Semaphore(SETUP_CONCURRENCY)
        remotes: dict[int, Any] = {}
        errors: list[str] = []
        t0 = time.monotonic()

        async def setup(i: int) -> None:
            async with sem:
                try:
                    offer = await gen.media.webrtc_offer(i, ports[i][0], ssrc_of(local[i], 0))
                    answer = await gw.place(i, offer)
                    gen.last_sdp = (offer, answer)
                    a_remote = await gen.media.take_answer(i, answer)
                    b_remote = media_address(gen.uas.calls[i].offer)
                    remotes[i] = [list(a_remote), list(b_remote)]
                except Exception as exc:  # one failed call is a result, not a crash
                    errors.append(f"call {i}: {type(exc).__name__}: {exc}")

        await asyncio.gather(*(setup(i) for i in range(calls)))
        setup_s = time.monotonic() - t0
        start = time.monotonic() + 0.5
        window = (start + args.warmup, start + args.warmup + args.measure)
        for proc, shard in workers:
            assert proc.stdin is not None
            plan = {
                "remotes": [remotes.get(i) for i in shard],
                "start": start,
                "warmup": args.warmup,
                "measure": args.measure,
            }
            proc.stdin.write((json.dumps(plan) + "\n").encode())
            await proc.stdin.drain()
        await _sleep_until(window[0])
        gw_pids, gen_pids = gw.pids(), gen.pids()
        gw0, gen0, l0 = _cpu(gw_pids), _cpu(gen_pids), _cpu([gen.engine.pid])
        host0 = _host_times()
        await _sleep_until(window[1])
        gw1, gen1, l1 = _cpu(gw_pids), _cpu(gen_pids), _cpu([gen.engine.pid])
        host_busy, host_steal = _host_usage(host0, _host_times())
        results = [
            (await _read_json(proc, args.warmup + args.measure + 30))["result"]
            for proc, _ in workers
        ]
    finally:
        for proc, _ in workers:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await proc.wait()
        gen.worker_pids = []
    # Tear the calls down (BYE from the browser side) and release L's sessions.
    sem = asyncio.Semaphore(SETUP_CONCURRENCY)

    async def teardown(i: int) -> None:
        async with sem:
            try:
                await gw.hangup(i)
            except Exception as exc:  # counted; the level's numbers are already taken
                errors.append(f"hangup {i}: {type(exc).__name__}: {exc}")
            await gen.media.delete(i)

    await asyncio.gather(*(teardown(i) for i in remotes))
    await gw.close_level()
    ended = sum(1 for c in gen.uas.calls.values() if c.ended)

    dirs = []
    for d in (0, 1):
        parts = [r["directions"][d] for r in results]
        expected = sum(p["expected"] for p in parts)
        lost = sum(p["lost"] for p in parts)
        late = sum(p["late"] for p in parts)
        p50s = [p["delay_ms_p50"] for p in parts if p["delay_ms_p50"] is not None]
        p99s = [p["delay_ms_p99"] for p in parts if p["delay_ms_p99"] is not None]
        dirs.append(
            {
                "direction": parts[0]["direction"],
                "expected": expected,
                "lost": lost,
                "late": late,
                "bad_ratio": round((lost + late) / expected, 5) if expected else 1.0,
                "worst_call_bad_ratio": max(p["worst_call_bad_ratio"] for p in parts),
                "delay_ms_p50": round(statistics.median(p50s), 3) if p50s else None,
                "delay_ms_p99": round(max(p99s), 3) if p99s else None,
            }
        )
    frames_sent_window = sum(2 * r["calls"] * r["frames_per_stream"] for r in results)
    lag = sum(r["send_lag_over_10ms"] for r in results)
    set_up = len(remotes)
    gw_pct = 100 * (gw1 - gw0) / args.measure
    gen_pct = 100 * (gen1 - gen0) / args.measure
    passed = (
        set_up == calls
        and not [e for e in errors if e.startswith("call")]
        and all(d["bad_ratio"] < args.max_bad for d in dirs)
    )
    # The generator is the limit when it fell behind its own schedule (frames sent > 10 ms
    # late) or used nearly all the CPU the gateway left it.
    gen_overloaded = lag > 0.01 * max(1, frames_sent_window // 2) or (gw_pct + gen_pct) > 190
    return {
        "gateway": gw.name,
        "calls": calls,
        "set_up": set_up,
        "setup_seconds": round(setup_s, 2),
        "ended_by_bye": ended,
        "errors": errors[:10],
        "error_count": len(errors),
        "directions": dirs,
        "gateway_cpu_pct": round(gw_pct, 1),
        "gateway_cpu_pct_per_call": round(gw_pct / calls, 3),
        "generator_cpu_pct": round(gen_pct, 1),
        "generator_rtpengine_cpu_pct": round(100 * (l1 - l0) / args.measure, 1),
        "generator_send_lag_over_10ms": lag,
        "generator_send_lag_max_ms": max(r["send_lag_max_ms"] for r in results),
        "generator_overloaded": gen_overloaded,
        # everything on the host, others' processes included: a busy level with little of it
        # ours was measured on a machine someone else was using
        "host_busy_pct": host_busy,
        "host_steal_pct": host_steal,
        "passed": passed,
    }


def _line(r: dict[str, Any]) -> str:
    d0, d1 = r["directions"]
    return (
        f"{r['gateway']:17} {r['calls']:4} calls: set up {r['set_up']} in {r['setup_seconds']}s, "
        f"bad b->t {d0['bad_ratio']:.2%} t->b {d1['bad_ratio']:.2%} "
        f"(lost {d0['lost']}/{d1['lost']}, late {d0['late']}/{d1['late']}), "
        f"delay p50 {d0['delay_ms_p50']}/{d1['delay_ms_p50']} ms p99 {d0['delay_ms_p99']}/"
        f"{d1['delay_ms_p99']} ms, gw cpu {r['gateway_cpu_pct']}% "
        f"({r['gateway_cpu_pct_per_call']}%/call), gen cpu {r['generator_cpu_pct']}% "
        f"(L {r['generator_rtpengine_cpu_pct']}%) "
        f"lag {r['generator_send_lag_over_10ms']} host busy {r['host_busy_pct']}% "
        f"steal {r['host_steal_pct']}% "
        f"{'PASS' if r['passed'] else 'FAIL'}"
        f"{' (generator overloaded)' if r['generator_overloaded'] else ''}"
    )


def summarize(levels: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name in names:
        mine = [lv for lv in levels if lv["gateway"] == name]
        if not mine:
            continue
        by_calls: dict[int, list[dict[str, Any]]] = {}
        for lv in mine:
            by_calls.setdefault(lv["calls"], []).append(lv)
        per_level = {}
        best = 0
        for n, runs in sorted(by_calls.items()):
            passes = sum(1 for r in runs if r["passed"])
            per_level[n] = {
                "runs": len(runs),
                "passed_runs": passes,
                "median_bad_ratio_b2t": statistics.median(
                    r["directions"][0]["bad_ratio"] for r in runs
                ),
                "median_bad_ratio_t2b": statistics.median(
                    r["directions"][1]["bad_ratio"] for r in runs
                ),
                "median_delay_ms_p50_b2t": _med(r["directions"][0]["delay_ms_p50"] for r in runs),
                "median_delay_ms_p50_t2b": _med(r["directions"][1]["delay_ms_p50"] for r in runs),
                "median_gateway_cpu_pct": statistics.median(r["gateway_cpu_pct"] for r in runs),
                "median_gateway_cpu_pct_per_call": statistics.median(
                    r["gateway_cpu_pct_per_call"] for r in runs
                ),
                "median_generator_cpu_pct": statistics.median(r["generator_cpu_pct"] for r in runs),
                "generator_overloaded_runs": sum(1 for r in runs if r["generator_overloaded"]),
                "median_host_busy_pct": statistics.median(r["host_busy_pct"] for r in runs),
            }
            # a level counts when most of its runs passed (median of pass/fail)
            if passes * 2 > len(runs):
                best = max(best, n)
        above = [n for n in sorted(per_level) if n > best]
        first_fail = above[0] if above else None
        summary[name] = {
            "max_passing_calls": best,
            # the level above the ceiling: was the generator (not the gateway) behind it?
            "first_failing_calls": first_fail,
            "generator_overloaded_at_first_failure": (
                per_level[first_fail]["generator_overloaded_runs"] * 2
                > per_level[first_fail]["runs"]
                if first_fail is not None
                else None
            ),
            "levels": per_level,
        }
    return summary


def _med(values: Any) -> float | None:
    vals = [v for v in values if v is not None]
    return round(statistics.median(vals), 3) if vals else None


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    levels_n = [int(x) for x in args.levels.split(",") if x.strip()]
    # the embedded backend costs ~10% of a core per call: its own, smaller ladder
    embedded_n = [int(x) for x in args.embedded_levels.split(",") if x.strip()]
    names = [n.strip() for n in args.gateways.split(",") if n.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="ucgate-bench-media-"))
    gateways: list[Gateway] = []
    unavailable: dict[str, str] = {}
    # One generator rtpengine per address family of ICE candidates the gateways need:
    # 127.0.0.1 for ucgate's backends, the host's address for Janus (see JanusGateway).
    engines: dict[str, RtpengineProc] = {}
    clients: list[Ng] = []
    gens: dict[str, Generator] = {}
    uas = TrunkUas()
    levels: list[dict[str, Any]] = []

    async def generator(ip: str) -> Generator:
        if ip not in gens:
            engine = RtpengineProc(
                tmp,
                f"rtpengine-L-{ip}",
                threads=args.generator_threads,
                port_base=_port_base(),
                ip=ip,
            )
            engines[ip] = engine
            ng_port = free_port()
            engine.start(ng_port)
            client = Ng(ng_port)
            clients.append(client)
            await client.open()
            gens[ip] = Generator(engine, BrowserMedia(client, "x"), uas, args.workers, args.late_ms)
        return gens[ip]

    gen_of: dict[str, Generator] = {}
    try:
        await uas.open()
        for name in names:
            gw: Gateway
            ip = LOOPBACK
            if name in ("rtpengine", "embedded"):
                gw = UcgateGateway(name, tmp, args.python)
            elif name == "janus":
                ip = args.janus_ice_ip or host_ipv4()
                gw = JanusGateway(tmp, ip)
            else:
                raise SystemExit(f"unknown gateway {name!r}")
            try:
                gen = await generator(ip)
                await gw.start(uas, max(levels_n + embedded_n))
                # one call proves the path before any level counts
                probe = await measure_probe(gw, gen, args)
                if probe is not None:
                    raise RuntimeError(probe)
                gateways.append(gw)
                gen_of[gw.name] = gen
            except Exception as exc:
                await gw.stop()
                unavailable[gw.name] = f"{type(exc).__name__}: {exc}"
                print(f"{gw.name}: unavailable: {unavailable[gw.name]}", flush=True)
        failed: dict[str, int] = {}
        for run in range(1, args.runs + 1):
            failed.clear()
            for n in sorted(set(levels_n) | set(embedded_n)):
                for gw in gateways:
                    if n not in (embedded_n if gw.name == "ucgate-embedded" else levels_n):
                        continue
                    if gw.name in failed and not args.keep_going:
                        continue
                    result = await measure(gw, gen_of[gw.name], n, args)
                    result["run"] = run
                    levels.append(result)
                    print(f"run {run} " + _line(result), flush=True)
                    if not result["passed"]:
                        failed[gw.name] = n
    finally:
        for gw in gateways:
            await gw.stop()
        uas.close()
        for client in clients:
            client.close()
        for engine in engines.values():
            engine.stop()
        if not args.keep_logs:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"logs kept in {tmp}")
    return {
        "benchmark": "media",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "kernel": os.uname().release},
        "settings": {
            "levels": levels_n,
            "embedded_levels": embedded_n,
            "runs": args.runs,
            "warmup_s": args.warmup,
            "measure_s": args.measure,
            "late_ms": args.late_ms,
            "late_rule": "delay above the stream's smallest delay by more than late_ms",
            "max_bad_ratio": args.max_bad,
            "rtp_workers": args.workers,
            "generator_rtpengine_threads": args.generator_threads,
            "codec": "PCMU 20 ms both ways (no transcoding on any hop)",
        },
        "unavailable": unavailable,
        "summary": summarize(levels, [g.name for g in gateways]),
        "levels": levels,
    }


async def measure_probe(gw: Gateway, gen: Generator, args: argparse.Namespace) -> str | None:
    """One short call through ``gw``; an error text if audio does not cross both ways."""
    short = argparse.Namespace(**{**vars(args), "warmup": 2.0, "measure": 2.0})
    result = await measure(gw, gen, 1, short)
    print("probe " + _line(result), flush=True)
    if result["set_up"] != 1:
        return f"probe call not set up: {result['errors']}"
    # The "browser" really spoke WebRTC to the gateway: DTLS-SRTP profile and fingerprints
    # in both directions (else the bench would measure plain RTP relaying).
    for sdp in gen.last_sdp:
        if b"UDP/TLS/RTP/SAVPF" not in sdp or b"a=fingerprint" not in sdp:
            return f"probe call did not negotiate WebRTC:\n{sdp.decode(errors='replace')}"
    if any(d["lost"] > 0.5 * d["expected"] for d in result["directions"]):
        return f"probe call: no audio ({result['directions']})"
    return None


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="WebRTC<->SIP bridged calls per media gateway")
    p.add_argument("--gateways", default="rtpengine,embedded,janus")
    p.add_argument("--levels", default="10,25,50,100,200,300")
    p.add_argument("--embedded-levels", default="2,5,10,15,20,25")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=float, default=5.0, help="seconds before the window")
    p.add_argument("--measure", type=float, default=20.0, help="seconds of the window")
    p.add_argument("--late-ms", type=float, default=60.0)
    p.add_argument("--max-bad", type=float, default=0.01, help="lost+late ratio to pass")
    p.add_argument("--workers", type=int, default=2, help="RTP worker processes")
    p.add_argument("--generator-threads", type=int, default=2)
    p.add_argument("--janus-ice-ip", help="address for Janus's ICE (default: the host's)")
    p.add_argument("--python", default=str(ROOT / ".venv/bin/python"))
    p.add_argument("--keep-going", action="store_true", help="run levels above a failure")
    p.add_argument("--keep-logs", action="store_true")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    # SIGTERM (and SIGINT, which a shell's background job ignores) unwind through amain's
    # finally, which stops every process the run started by its PID.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    report = asyncio.run(amain(args))
    out = args.out or ROOT / "bench/results" / f"media-{dt.date.today().isoformat()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["summary"], indent=2))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
