"""Process helpers: stop by PID with a bound, and CPU / memory of a process tree from /proc."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> int:
    """SIGTERM the process by PID, SIGKILL it if it has not exited after ``timeout`` seconds."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
    return proc.returncode


def kill_pids(pids: list[int]) -> None:
    """SIGKILL each PID that is still alive (used for forked workers left behind)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def children_of(pid: int) -> list[int]:
    """Direct and indirect children of ``pid``, read from /proc (Kamailio forks its workers)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _read_stat(int(entry))
        if stat is not None:
            parents[int(entry)] = int(stat[1])
    found: list[int] = []
    frontier = [pid]
    for _ in range(16):  # process trees here are shallow; the bound guards against cycles
        nxt = [child for child, parent in parents.items() if parent in frontier]
        if not nxt:
            break
        found.extend(nxt)
        frontier = nxt
    return found


def _read_stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            raw = f.read()
    except OSError:
        return None
    # comm is in parentheses and may contain spaces: split after the last ')'.
    return raw[raw.rfind(")") + 2 :].split()


@dataclass(frozen=True, slots=True)
class TreeSample:
    """CPU seconds used so far and memory now, summed over a set of processes."""

    cpu_seconds: float
    rss_bytes: int
    pss_bytes: int


def sample(pids: list[int]) -> TreeSample:
    """Sum utime+stime, RSS and PSS over ``pids``; processes that have exited count as zero.

    RSS double-counts shared memory (Kamailio keeps bindings in one shared segment mapped by every
    worker); PSS divides shared pages among their users and is the fair total.
    """
    cpu = 0.0
    rss = 0
    pss = 0
    for pid in pids:
        stat = _read_stat(pid)
        if stat is None:
            continue
        # Fields after comm: state=0, ppid=1, ..., utime=11, stime=12, rss(pages)=21 (proc(5)).
        cpu += (int(stat[11]) + int(stat[12])) / _CLK_TCK
        rss += int(stat[21]) * _PAGE
        pss += _pss(pid)
    return TreeSample(cpu_seconds=cpu, rss_bytes=rss, pss_bytes=pss)


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


def udp_drops(port: int) -> int:
    """Datagrams the kernel dropped on 127.0.0.1:``port`` sockets (receive buffer full).

    Read from the last column of /proc/net/udp; a drop there is a lost request that sipp then
    retransmits, so a benchmark level with drops has not really passed.
    """
    wanted = f"0100007F:{port:04X}"
    total = 0
    try:
        with open("/proc/net/udp", encoding="ascii") as f:
            next(f, None)  # header line
            for line in f:
                fields = line.split()
                if len(fields) > 12 and fields[1] == wanted:
                    total += int(fields[-1])
    except OSError:
        return 0
    return total
