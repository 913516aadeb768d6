"""The ``ucgate`` command: ``serve``, ``check-config`` and ``--version``.

Exit codes: 0 success (including a clean stop on SIGINT/SIGTERM), 1 the server failed
while running, 2 a usage or configuration error (argparse's convention).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ucgate import __version__
from ucgate.config import ConfigError, StoreBackend, UcgateConfig, load_config

__all__ = ["EXIT_CONFIG", "EXIT_FAILED", "EXIT_OK", "main", "summarize"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        return _check_config(args.file)
    if args.command == "serve":
        return _serve(args.config, log_format=args.log_format, log_level=args.log_level)
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse requires one


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ucgate", description="SIP edge and presence gateway for contact centers."
    )
    parser.add_argument("--version", action="version", version=f"ucgate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser(
        "check-config",
        help="validate a configuration file (with UCGATE_* overrides) and exit",
        description="Validate FILE with the UCGATE_* environment overrides applied. "
        "Exit 0 if usable, 2 with one line per problem otherwise.",
    )
    check.add_argument("file", metavar="FILE", type=Path)

    serve = commands.add_parser("serve", help="run the gateway until SIGINT or SIGTERM")
    serve.add_argument("--config", required=True, type=Path, metavar="FILE")
    serve.add_argument("--log-format", choices=["json", "console"], help="overrides log.format")
    serve.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error", "critical"],
        help="overrides log.level",
    )
    return parser


def _load(path: Path) -> UcgateConfig | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"error: {path}: configuration is not valid:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def summarize(config: UcgateConfig) -> str:
    """One line describing what a config will run; never shows a secret."""
    parts = [
        f"node {config.node_id}" + (" (default)" if config.node_id_is_default else ""),
        f"domain {config.sip.domain}",
        "sip " + " ".join(str(listener) for listener in config.sip.listen),
        f"http {config.http.listen}",
    ]
    store = config.store
    if store.backend is StoreBackend.REDIS:
        parts.append("store redis")
    else:
        parts.append(f"store memory in {store.data_dir}")
    parts.append(_count(len(config.agents), "agent"))
    parts.append(_count(len(config.trunks), "trunk"))
    parts.append(_count(len(config.api_keys), "API key"))
    if config.auth_secret_is_random:
        parts.append("auth.secret random per process (single node only)")
    return ", ".join(parts)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _check_config(path: Path) -> int:
    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    print(f"ok: {path}: {summarize(config)}")
    return EXIT_OK


def _serve(path: Path, *, log_format: str | None, log_level: str | None) -> int:
    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    # Imported here so check-config and --version work without the server's imports.
    import structlog

    from ucgate.app.server import run_server
    from ucgate.logs import configure_logging

    configure_logging(log_format or config.log.format, log_level or config.log.level)
    log = structlog.get_logger("ucgate.cli")

    async def serve_until_signalled() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal(signum: signal.Signals) -> None:
            log.info("stopping", signal=signum.name)
            stop.set()
            # A second Ctrl-C while shutting down falls back to the default handler
            # (KeyboardInterrupt), so a stuck shutdown can still be interrupted.
            loop.remove_signal_handler(signal.SIGINT)

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)
        try:
            await run_server(config, stop=stop)
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    log.info("starting", version=__version__, summary=summarize(config))
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(serve_until_signalled())
    except ConfigError as exc:
        # The server found a problem only visible at start (e.g. a port in use).
        for problem in exc.problems:
            log.error("configuration error", problem=problem)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        log.warning("interrupted during shutdown")
        return 128 + signal.SIGINT
    except Exception:
        log.exception("server failed")
        return EXIT_FAILED
    log.info("stopped")
    return EXIT_OK


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (it is a dependency off Windows), else asyncio's default."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
