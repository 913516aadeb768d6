"""The ``ucgate`` command line: version, check-config, and serve's signal handling."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

import ucgate
from ucgate.cli import main
from ucgate.config import UcgateConfig

REPO = Path(__file__).resolve().parents[2]
GOOD = '[sip]\ndomain = "example.test"\n[[agents]]\nid = "alice"\npassword = "pw-alice-1"\n'
BAD_PASSWORD = "not-for-any-output-7"
BAD = (
    '[sip]\ndomain = "example.test"\nlisten = ["udp:127.0.0.1:5060", "sctp:127.0.0.1:5060"]\n'
    '[store]\nbakend = "redis"\n'
    f'[[agents]]\nid = "alice"\npassword = "{BAD_PASSWORD}"\nha1_md5 = "{"0" * 32}"\n'
)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("UCGATE_")}
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), base.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "ucgate", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, **(env or {})},
        check=False,
    )


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ucgate.toml"
    path.write_text(text)
    return path


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout == f"ucgate {ucgate.__version__}\n"


def test_check_config_ok(tmp_path: Path) -> None:
    result = run_cli("check-config", str(write(tmp_path, GOOD)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: ")
    assert "domain example.test" in result.stdout and "1 agent" in result.stdout
    assert "pw-alice-1" not in result.stdout


@pytest.mark.parametrize(
    "name", ["config/ucgate.toml", "config/ucgate.example.toml", "docker/ucgate.compose.toml"]
)
def test_check_config_accepts_shipped_files(name: str) -> None:
    result = run_cli("check-config", str(REPO / name))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: ")
    for secret in ("demo-password", "example-password", "api-key", "-key-change-me"):
        assert secret not in result.stdout


def test_check_config_names_every_bad_key_and_hides_secrets(tmp_path: Path) -> None:
    result = run_cli("check-config", str(write(tmp_path, BAD)))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].startswith("error: ") and "not valid" in lines[0]
    assert "  sip.listen[1]: unknown transport 'sctp' (known: udp, tcp, tls, ws, wss)" in lines
    assert "  store: unknown key 'bakend' (did you mean 'backend'?)" in lines
    assert any(line.startswith("  agents[0].password: exactly one of") for line in lines)
    assert BAD_PASSWORD not in result.stderr and "0" * 32 not in result.stderr


def test_check_config_applies_environment(tmp_path: Path) -> None:
    path = str(write(tmp_path, GOOD))
    result = run_cli("check-config", path, env={"UCGATE_SIP__DOMAIN": "env.test"})
    assert result.returncode == 0 and "domain env.test" in result.stdout
    result = run_cli("check-config", path, env={"UCGATE_STORE__BACKEND": "redis"})
    assert result.returncode == 2
    assert "  store.redis_url: required when backend = 'redis'" in result.stderr.splitlines()


@pytest.mark.parametrize(
    ("text", "expected"),
    [(None, "cannot read"), ("[sip\n", "not valid TOML")],
)
def test_check_config_unreadable(tmp_path: Path, text: str | None, expected: str) -> None:
    path = tmp_path / "c.toml"
    if text is not None:
        path.write_text(text)
    result = run_cli("check-config", str(path))
    assert result.returncode == 2 and expected in result.stderr


@pytest.mark.parametrize("args", [(), ("serve",), ("frobnicate",)])
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    result = run_cli(*args)
    assert result.returncode == 2 and "usage: ucgate" in result.stderr


def test_serve_with_bad_config_exits_2_before_starting(tmp_path: Path) -> None:
    result = run_cli("serve", "--config", str(write(tmp_path, BAD)))
    assert result.returncode == 2
    assert "sip.listen[1]: unknown transport 'sctp'" in result.stderr
    assert BAD_PASSWORD not in result.stderr


# --- serve, in process, with a stand-in for ucgate.app.server ---------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def fake_server(monkeypatch: pytest.MonkeyPatch, body: types.FunctionType) -> list[object]:
    calls: list[object] = []

    async def run_server(config: UcgateConfig, *, stop: asyncio.Event | None = None) -> None:
        calls.append(config)
        assert stop is not None
        await body(stop)
        calls.append("returned")

    module = types.ModuleType("ucgate.app.server")
    module.run_server = run_server  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ucgate.app.server", module)
    return calls


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_cleanly_on_signal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: signal.Signals
) -> None:
    async def until_signalled(stop: asyncio.Event) -> None:
        os.kill(os.getpid(), signum)
        # Bounded: if the handler were missing, the test fails instead of hanging.
        await asyncio.wait_for(stop.wait(), timeout=10)

    calls = fake_server(monkeypatch, until_signalled)  # type: ignore[arg-type]
    code = main(["serve", "--config", str(write(tmp_path, GOOD)), "--log-format", "json"])
    assert code == 0
    assert isinstance(calls[0], UcgateConfig) and calls[0].sip.domain == "example.test"
    assert calls[-1] == "returned"
    # The default handlers are back once serve returns.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.usefixtures("restore_logging")
def test_serve_reports_a_crash_with_exit_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def crash(stop: asyncio.Event) -> None:
        raise OSError("address already in use")

    fake_server(monkeypatch, crash)  # type: ignore[arg-type]
    assert main(["serve", "--config", str(write(tmp_path, GOOD))]) == 1
