"""Run a real rtpengine (Debian ``rtpengine-daemon``) on free loopback ports.

User-space forwarding (``--table=-1``: no kernel module needed, none is loaded in CI),
foreground, logging to a file. Each instance gets its own random RTP port range so
parallel instances never fight over media ports. Readiness is an ng ``ping`` answered.
"""

from __future__ import annotations

import random
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from sip_test_rig.ports import LOOPBACK
from sip_test_rig.procs import stop_process
from ucgate.media import ng

RTPENGINE = "rtpengine"


class RtpengineError(RuntimeError):
    """rtpengine is missing or did not come up."""


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _answers_ping(port: int, timeout: float) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(b"ucgate-ping d7:command4:pinge", (LOOPBACK, port))
            data, _ = sock.recvfrom(4096)
        except OSError:
            return False
        return b"pong" in data


class Rtpengine:
    """One rtpengine process owned by whoever started it (``with Rtpengine(dir) as r``)."""

    def __init__(self, workdir: Path, *, threads: int = 2) -> None:
        self.workdir = workdir
        self.threads = threads
        self.proc: subprocess.Popen[bytes] | None = None
        self.ng_port = 0
        self.log_path = workdir / "rtpengine.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, *, ready_within: float = 10.0, attempts: int = 3) -> Rtpengine:
        exe = shutil.which(RTPENGINE)
        if exe is None:
            raise RtpengineError(
                "rtpengine not found; install it (Debian: apt-get install rtpengine-daemon, "
                "or `make test`)"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        for _ in range(attempts):
            self.ng_port = _free_udp_port()
            base = random.randrange(20000, 59000, 2)
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(
                    [
                        exe,
                        # Not /etc/rtpengine/rtpengine.conf: Debian's fixes the CLI and HTTP
                        # ports (2224, 2225), so a second instance would exit at once.
                        "--config-file=none",
                        f"--listen-cli={LOOPBACK}:{_free_tcp_port()}",
                        "--foreground",
                        "--log-stderr",
                        "--table=-1",
                        f"--interface={LOOPBACK}",
                        f"--listen-ng={LOOPBACK}:{self.ng_port}",
                        f"--port-min={base}",
                        f"--port-max={base + 999}",
                        f"--num-threads={self.threads}",
                        "--log-level=6",
                        "--delete-delay=0",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            deadline = time.monotonic() + ready_within
            while time.monotonic() < deadline:
                if _answers_ping(self.ng_port, 0.2):
                    return self
                try:
                    self.proc.wait(timeout=0.05)
                except subprocess.TimeoutExpired:
                    continue
                break  # it exited: most likely a port race; try again on new ports
            stop_process(self.proc)
        raise RtpengineError(f"rtpengine did not start; see {self.log_path}")

    def command(self, command: dict[str, Any], timeout: float = 2.0) -> dict[str, Any]:
        """One ng command, answered (for tests to look inside: ``list``, ``query``)."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            cookie = secrets.token_hex(6)
            sock.sendto(ng.encode(cookie, command), (LOOPBACK, self.ng_port))
            while True:
                got, reply = ng.decode(sock.recv(65535))
                if got == cookie:
                    return reply

    def active_calls(self) -> list[str]:
        calls = self.command({"command": "list", "limit": 1000}).get("calls", [])
        return [str(c) for c in calls]

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def __enter__(self) -> Rtpengine:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
