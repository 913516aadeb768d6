"""Run sipp as a bounded subprocess and read its final statistics.

sipp runs in the foreground (never ``-bg``) with ``-m`` (stop after N calls) and ``-timeout``
(global bound); the runner also bounds the wait and kills sipp by PID in a ``finally``. Results come
from sipp's own statistics file (``-trace_stat -stf``), whose last line is written at exit.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

from sip_test_rig.ports import LOOPBACK, free_port
from sip_test_rig.procs import stop_process

SIPP = "/usr/bin/sipp"
SCENARIOS = Path(__file__).with_name("sipp")
DEFAULT_VARIABLES: Mapping[str, str] = {"domain": "example.test", "expires": "300"}
_TRANSPORTS = {"udp": "u1", "tcp": "t1"}


@dataclass(frozen=True, slots=True)
class SippResult:
    """Cumulative counters from sipp's final statistics line."""

    returncode: int
    created: int
    successful: int
    failed: int
    retransmissions: int
    #: Wall time from sipp's start to its last statistics dump, in seconds.
    elapsed: float
    #: Non-zero ``Failed*`` counters by sipp's name (e.g. ``FailedMaxUDPRetrans``).
    failures: dict[str, int] = field(default_factory=dict)
    out_of_call_msgs: int = 0
    dead_call_msgs: int = 0
    #: Last lines of sipp's error log, for assertion messages.
    errors_tail: str = ""

    @property
    def achieved_rate(self) -> float:
        """Successful calls per second over the whole run."""
        return self.successful / self.elapsed if self.elapsed > 0 else 0.0

    def summary(self) -> str:
        return (
            f"rc={self.returncode} created={self.created} ok={self.successful} "
            f"failed={self.failed} retrans={self.retransmissions} "
            f"rate={self.achieved_rate:.0f}/s failures={self.failures} "
            f"errors:\n{self.errors_tail}"
        )


def scenario_path(scenario: str | Path) -> Path:
    """A bundled scenario by name (``"register_auth"``) or any path to a scenario file."""
    path = Path(scenario)
    if path.suffix != ".xml" and not path.exists():
        path = SCENARIOS / f"{scenario}.xml"
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


def declared_globals(path: Path) -> set[str]:
    """Names in the scenario's ``<Global variables="a,b"/>`` declarations."""
    names: set[str] = set()
    for element in ElementTree.parse(path).getroot().iter("Global"):
        names.update(v.strip() for v in element.get("variables", "").split(",") if v.strip())
    return names


def make_users_csv(
    path: Path, users: Sequence[tuple[str, str]], *, order: str = "SEQUENTIAL"
) -> Path:
    """Write a sipp injection file: ``field0`` = user, ``field1`` = password."""
    lines = [order]
    for user, password in users:
        if ";" in user or ";" in password or "\n" in user + password:
            raise ValueError("';' and newlines cannot be injected through a sipp CSV")
        lines.append(f"{user};{password}")
    path.write_text("\n".join(lines) + "\n")
    return path


def run_sipp(
    scenario: str | Path,
    target: str,
    *,
    users_csv: Path | None = None,
    rate: float = 10.0,
    calls: int = 1,
    transport: str = "udp",
    timeout: float = 30.0,
    variables: Mapping[str, str] = DEFAULT_VARIABLES,
    max_open_calls: int | None = None,
    extra_args: Sequence[str] = (),
    workdir: Path | None = None,
) -> SippResult:
    """Run ``calls`` calls of ``scenario`` against ``target`` (``host:port``) at ``rate``/s.

    ``variables`` are passed with ``-set`` when the scenario declares them as globals.
    ``timeout`` bounds the whole run: sipp's ``-timeout`` stops it, and the runner kills it by PID
    if it has not exited a few seconds later. ``workdir`` keeps sipp's files (messages are not
    traced; pass ``extra_args=["-trace_msg"]`` when debugging); by default a temporary directory is
    used and removed.
    """
    if transport not in _TRANSPORTS:
        raise ValueError(f"transport must be one of {sorted(_TRANSPORTS)}")
    if calls < 1 or rate <= 0 or timeout <= 0:
        raise ValueError("calls, rate and timeout must be positive")
    own_dir = workdir is None
    wd = Path(tempfile.mkdtemp(prefix="ucgate-sipp-")) if workdir is None else workdir
    wd.mkdir(parents=True, exist_ok=True)
    stat_file = wd / "stat.csv"
    error_file = wd / "errors.log"
    # sipp throttles new calls once this many are open; 2 s worth of calls is ample for a
    # registrar answering in milliseconds and stops a stalled server from being flooded.
    open_limit = max_open_calls if max_open_calls is not None else max(100, int(rate * 2))
    args = [
        SIPP,
        target,
        "-sf",
        str(scenario_path(scenario)),
        "-t",
        _TRANSPORTS[transport],
        "-i",
        LOOPBACK,
        "-p",
        str(free_port()),
        "-m",
        str(calls),
        "-r",
        f"{rate:g}",
        "-rp",
        "1000",
        "-l",
        str(open_limit),
        "-timeout",
        f"{timeout:g}s",
        "-timeout_error",
        "-nostdin",
        # A BYE for an aborted REGISTER "call" is noise to the server under test.
        "-default_behaviors",
        "all,-bye",
        "-trace_stat",
        "-stf",
        str(stat_file),
        "-fd",
        "1",
        "-trace_err",
        "-error_file",
        str(error_file),
    ]
    if users_csv is not None:
        args += ["-inf", str(users_csv)]
    declared = declared_globals(scenario_path(scenario))
    for name, value in variables.items():
        # sipp refuses to -set a global the scenario does not declare: pass only declared ones,
        # so one default mapping serves every scenario.
        if name in declared:
            args += ["-set", name, value]
    args += list(extra_args)
    try:
        with open(wd / "stdout.log", "wb") as out:
            proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=wd
            )
            try:
                rc = proc.wait(timeout=timeout + 10.0)
            except subprocess.TimeoutExpired:
                rc = -1
            finally:
                stop_process(proc, timeout=5.0)
        return _parse(stat_file, error_file, wd / "stdout.log", rc)
    finally:
        if own_dir:
            shutil.rmtree(wd, ignore_errors=True)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 8192))
            return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _epoch(stamp: str) -> float:
    # "2026-11-23\t18:36:15.574381\t1795458975.574381": the last tab field is the epoch.
    return float(stamp.split("\t")[-1])


def _parse(stat_file: Path, error_file: Path, stdout_file: Path, rc: int) -> SippResult:
    errors = _tail(error_file) or (_tail(stdout_file) if rc != 0 else "")
    try:
        with open(stat_file, newline="", encoding="utf-8", errors="replace") as f:
            rows = list(csv.reader(f, delimiter=";"))
    except OSError:
        rows = []
    if len(rows) < 2:
        return SippResult(rc, 0, 0, 0, 0, 0.0, errors_tail=errors)
    row = dict(zip(rows[0], rows[-1], strict=False))

    def count(name: str) -> int:
        return int(row.get(name, "0") or 0)

    failures = {
        key.removesuffix("(C)"): int(value)
        for key, value in row.items()
        if key.startswith("Failed")
        and key.endswith("(C)")
        and value not in ("", "0")
        and key != "FailedCall(C)"
    }
    return SippResult(
        returncode=rc,
        created=count("OutgoingCall(C)") + count("IncomingCall(C)"),
        successful=count("SuccessfulCall(C)"),
        failed=count("FailedCall(C)"),
        retransmissions=count("Retransmissions(C)"),
        elapsed=_epoch(row["CurrentTime"]) - _epoch(row["StartTime"]),
        failures=failures,
        out_of_call_msgs=count("OutOfCallMsgs(C)"),
        dead_call_msgs=count("DeadCallMsgs(C)"),
        errors_tail=errors,
    )
