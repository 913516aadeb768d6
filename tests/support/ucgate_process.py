"""Run a real ``ucgate serve`` process for interop tests, stopped by PID in teardown."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sip_test_rig.ports import free_port

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Account:
    id: str
    password: str
    allowed_ips: tuple[str, ...] = ()
    capacity: str | None = None  # a TOML inline table, e.g. "{ voice = 1, chat = 1 }"


def render_config(
    *,
    sip_port: int,
    http_port: int,
    agents: Iterable[Account],
    trunks: Iterable[Account] = (),
    applications: Iterable[Account] = (),
    domain: str = "example.test",
    backend: str = "memory",
    redis_url: str | None = None,
    data_dir: Path | None = None,
    node_id: str = "test-node",
    auth_secret: str = "test-shared-nonce-secret",
    extra: str = "",
    api_key: str = "admin-test-key",
    tls: tuple[int, Path, Path] | None = None,
    auth_algorithms: tuple[str, ...] = ("MD5", "SHA-256"),
    tail: str = "",
    ws_port: int | None = None,
) -> str:
    listen = [f"udp:127.0.0.1:{sip_port}", f"tcp:127.0.0.1:{sip_port}"]
    if ws_port is not None:
        listen.append(f"ws:127.0.0.1:{ws_port}")
    if tls is not None:
        listen.append(f"tls:127.0.0.1:{tls[0]}")
    lines = [
        f'node_id = "{node_id}"',
        "[sip]",
        f'domain = "{domain}"',
        "listen = [" + ", ".join(f'"{x}"' for x in listen) + "]",
        "[http]",
        f'listen = "127.0.0.1:{http_port}"',
        "[auth]",
        f'secret = "{auth_secret}"',
        "algorithms = [" + ", ".join(f'"{a}"' for a in auth_algorithms) + "]",
        "[store]",
        f'backend = "{backend}"',
    ]
    if redis_url:
        lines.append(f'redis_url = "{redis_url}"')
    if data_dir is not None:
        lines.append(f'data_dir = "{data_dir}"')
    if tls is not None:
        lines[4:4] = [f'tls_cert = "{tls[1]}"', f'tls_key = "{tls[2]}"']
    lines += ["[log]", 'format = "json"', 'level = "info"']
    if extra:
        lines.append(extra)
    for a in agents:
        lines += ["[[agents]]", f'id = "{a.id}"', f'password = "{a.password}"']
        if a.capacity:
            lines.append(f"capacity = {a.capacity}")
    for t in trunks:
        lines += ["[[trunks]]", f'id = "{t.id}"', f'password = "{t.password}"']
        if t.allowed_ips:
            lines.append("allowed_ips = [" + ", ".join(f'"{ip}"' for ip in t.allowed_ips) + "]")
    for app in applications:
        lines += ["[[applications]]", f'id = "{app.id}"', f'password = "{app.password}"']
    lines += ["[[api_keys]]", f'key = "{api_key}"', 'scopes = ["admin"]']
    if tail:
        lines.append(tail)
    return "\n".join(lines) + "\n"


@dataclass
class UcgateProcess:
    """``python -m ucgate serve`` with its own config file; logs kept for assertions."""

    workdir: Path
    agents: list[Account]
    trunks: list[Account] = field(default_factory=list)
    applications: list[Account] = field(default_factory=list)
    backend: str = "memory"
    redis_url: str | None = None
    persist: bool = True
    node_id: str = "test-node"
    sip_port: int = 0
    http_port: int = 0
    api_key: str = "admin-test-key"
    tls: tuple[int, Path, Path] | None = None
    auth_algorithms: tuple[str, ...] = ("MD5", "SHA-256")
    tail: str = ""
    ws_port: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    lines: list[dict[str, object]] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def start(self, timeout: float = 20.0) -> UcgateProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.sip_port = self.sip_port or free_port()
        self.http_port = self.http_port or free_port()
        cfg = self.workdir / f"{self.node_id}.toml"
        cfg.write_text(
            render_config(
                sip_port=self.sip_port,
                http_port=self.http_port,
                agents=self.agents,
                trunks=self.trunks,
                applications=self.applications,
                backend=self.backend,
                redis_url=self.redis_url,
                data_dir=(self.workdir / "data") if self.persist else None,
                node_id=self.node_id,
                api_key=self.api_key,
                tls=self.tls,
                auth_algorithms=self.auth_algorithms,
                tail=self.tail,
                ws_port=self.ws_port,
            )
        )
        with self._cond:
            self.lines = []  # a restart waits for its own "ready", not the previous run's
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ucgate", "serve", "--config", str(cfg)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.workdir,
        )
        threading.Thread(target=self._read, daemon=True).start()
        try:
            self.wait_log(lambda e: e.get("event") == "ucgate.ready", timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                entry = json.loads(raw)
            except ValueError:
                entry = {"event": "raw", "text": raw.decode(errors="replace").rstrip()}
            with self._cond:
                self.lines.append(entry)
                self._cond.notify_all()
        with self._cond:
            self.lines.append({"event": "eof"})
            self._cond.notify_all()

    def wait_log(self, pred: object, timeout: float) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for entry in self.lines[seen:]:
                    if pred(entry):  # type: ignore[operator]
                        return entry
                    if entry.get("event") == "eof":
                        raise RuntimeError(f"ucgate exited; log:\n{self.log_text()}")
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"no such log line within {timeout}s; log:\n{self.log_text()}"
                    )
                self._cond.wait(left)

    def log_text(self) -> str:
        return "\n".join(json.dumps(e) for e in self.lines[-60:])

    def raw_log(self) -> str:
        return "\n".join(json.dumps(e) for e in self.lines)

    def http_get(self, path: str, *, key: str | None = None) -> tuple[int, object]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}")
        if key is not None:
            req.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def registrations(self) -> dict[str, list[dict[str, object]]]:
        status, body = self.http_get("/v1/registrations", key=self.api_key)
        assert status == 200, body
        assert isinstance(body, dict)
        return {r["aor"]: r["contacts"] for r in body["registrations"]}

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (a clean shutdown flushes state), SIGKILL if it does not exit in time;
        then the end of its log goes to stderr, so a hung shutdown shows where it hung."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout)
                tail = "\n".join(self.raw_log().splitlines()[-40:])
                print(
                    f"ucgate {self.workdir} ignored SIGTERM for {timeout}s:\n{tail}",
                    file=sys.stderr,
                )
        self.proc = None
        return proc.returncode
