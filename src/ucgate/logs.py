"""Structured logging: one structlog pipeline for ucgate and the stdlib loggers beneath it.

Context bound with ``structlog.contextvars.bind_contextvars(call_id=...)`` appears on every
line logged in that task, including lines from aiohttp or redis. Every line passes the
redaction step last, so passwords, HA1 hashes, API keys and digest responses never reach
the output, whether they arrive as a keyword or inside a logged SIP or HTTP message.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = ["MASK", "configure_logging", "redact", "redact_text"]

MASK = "***"

# Keys whose values are secret wherever they appear; compared lower-cased with '-' as '_'
# so that header names (Proxy-Authorization) and keyword names match alike.
_SECRET_KEYS = frozenset(
    {
        "password",
        "passwd",
        "secret",
        "ha1",
        "ha1_md5",
        "ha1_sha256",
        "authorization",
        "proxy_authorization",
        "www_authenticate",
        "proxy_authenticate",
        "api_key",
        "x_api_key",
        "key",
        "token",
        # The digest response proves knowledge of the password and allows an offline
        # dictionary attack on it (RFC 7616 §5.2); the nonce is public and stays.
        "response",
    }
)

_TEXT_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    # Digest response="..." in an Authorization / Proxy-Authorization header, quoted or
    # not, wherever the header text ended up (raw message, repr, exception text).
    (re.compile(r'(?i)(?<![\w-])(response\s*=\s*)("[^"]*"|[^\s,;"\\]+)'), rf'\1"{MASK}"'),
    # Credentials of schemes other than Digest (Basic, Bearer) are the secret themselves.
    (
        re.compile(r"(?i)(\b(?:proxy-)?authorization\s*:\s*(?:basic|bearer)\s+)[^\s,;\\]+"),
        rf"\1{MASK}",
    ),
    (re.compile(r"(?i)(\bx-api-key\s*:\s*)[^\s,;\\]+"), rf"\1{MASK}"),
    # password=..., secret: ..., token=... inside free text.
    (
        re.compile(
            r'(?i)(\b(?:password|passwd|secret|token|api_key|ha1(?:_md5|_sha256)?)\b\s*[=:]\s*)("[^"]*"|[^\s,;&"\\]+)'
        ),
        rf"\1{MASK}",
    ),
    # The password of a URL's userinfo (redis://:pw@host, RFC 3986 §3.2.1).
    (re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s/]+@"), rf"\1{MASK}@"),
)

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


def redact_text(text: str) -> str:
    """Mask secrets that appear inside free text (a logged message, a traceback)."""
    for pattern, replacement in _TEXT_RULES:
        text = pattern.sub(replacement, text)
    return text


def _is_secret_key(key: object) -> bool:
    return isinstance(key, str) and key.lower().replace("-", "_") in _SECRET_KEYS


def _redact_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bytes | bytearray):
        # A raw SIP message: decoded so the header rules can see it.
        return redact_text(bytes(value).decode("utf-8", "replace"))
    if isinstance(value, Mapping):
        return {k: MASK if _is_secret_key(k) else _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(item) for item in value]
    # Renderers would fall back to repr() anyway; doing it here lets the text rules run
    # over objects (requests, headers) whose repr carries header values.
    return redact_text(repr(value))


def redact(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask secret keys and secrets inside every value."""
    return {
        key: MASK if _is_secret_key(key) else _redact_value(value)
        for key, value in event_dict.items()
    }


def configure_logging(
    format: str = "console", level: str = "info", *, stream: TextIO | None = None
) -> None:
    """Route structlog and stdlib ``logging`` through one pipeline to ``stream``.

    ``format="json"`` writes one JSON object per line (production); ``"console"`` writes
    aligned, coloured-when-a-terminal lines. ``stream`` defaults to stderr.
    """
    format = str(format).lower()
    level_name = str(level).lower()
    if format not in ("console", "json"):
        raise ValueError(f"unknown log format {format!r} (expected 'console' or 'json')")
    if level_name not in _LEVELS:
        raise ValueError(f"unknown log level {level!r} (expected one of {', '.join(_LEVELS)})")
    out = sys.stderr if stream is None else stream

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if format == "json"
        else structlog.dev.ConsoleRenderer(colors=_isatty(out))
    )
    # Tracebacks become a plain string field before redaction, so an exception message
    # carrying a secret is masked too (and no renderer prints local variables).
    final: list[Processor] = [structlog.processors.format_exc_info, redact, renderer]

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.stdlib.PositionalArgumentsFormatter(),
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )

    handler = _Handler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            # ExtraAdder keeps a stdlib call's extra={...} fields as keys.
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
        )
    )
    root = logging.getLogger()
    # Replace only a handler we installed earlier: others (a test runner's capture) stay.
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS[level_name])


class _Handler(logging.StreamHandler[TextIO]):
    """The handler :func:`configure_logging` installs, so a second call can find it."""


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
