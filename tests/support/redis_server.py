"""Start and stop a real ``redis-server`` for tests.

The port is chosen at run time (bind port 0, read it, close) and the server is started in the
foreground with no persistence, so it leaves nothing behind. Readiness is a PING answered
within a deadline; the pause between attempts is ``proc.wait(timeout)``, which returns at once
if the server dies (a lost port race), so a failed start is detected immediately and retried
on a new port.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


class RedisServerError(RuntimeError):
    """redis-server is missing or did not come up."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _answers_ping(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process owned by the test that started it."""

    host = "127.0.0.1"

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
        self.proc = proc
        self.port = port
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @classmethod
    def start(cls, workdir: Path, *, ready_within: float = 10.0, attempts: int = 3) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RedisServerError(
                "redis-server not found on PATH; install it (Debian: apt-get install "
                "redis-server, or `make test`), the Redis location tests need a real server"
            )
        workdir.mkdir(parents=True, exist_ok=True)
        problems: list[str] = []
        for attempt in range(attempts):
            port = free_port(cls.host)
            log_path = workdir / f"redis-{port}.log"
            with log_path.open("wb") as log:
                proc = subprocess.Popen(
                    [
                        exe,
                        "--port",
                        str(port),
                        "--bind",
                        cls.host,
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--daemonize",
                        "no",
                        "--dir",
                        str(workdir),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            server = cls(proc, port, log_path)
            if server._wait_ready(ready_within):
                return server
            server.stop()
            problems.append(f"attempt {attempt + 1} on port {port}: {server.log_tail()}")
        raise RedisServerError("redis-server did not answer PING:\n" + "\n".join(problems))

    def _wait_ready(self, within: float) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if _answers_ping(self.host, self.port):
                return True
            try:
                self.proc.wait(timeout=0.02)
                return False  # exited: most likely someone took the port first
            except subprocess.TimeoutExpired:
                pass
        return False

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:])

    def pause(self) -> None:
        """SIGSTOP: the port stays open but nothing answers (a hung server)."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        """Terminate by PID, escalating to SIGKILL if it does not exit promptly."""
        if self.proc.poll() is not None:
            return
        self.resume()  # a stopped process would not act on SIGTERM
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
