"""Logging pipeline: JSON/console output, context propagation, and redaction of secrets."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from ucgate.logs import MASK, configure_logging, redact, redact_text

PASSWORD = "hunter2-very-secret"
DIGEST_RESPONSE = "6629fae49393a05397450978507c4ef1"
NONCE = "dcd98b7102dd2f0e8b11d0f600bfb0c093"
RAW_REGISTER = (
    "REGISTER sip:example.test SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds\r\n"
    "From: <sip:alice@example.test>;tag=1928301774\r\n"
    "To: <sip:alice@example.test>\r\n"
    "Call-ID: a84b4c76e66710@pc33.example.test\r\n"
    "CSeq: 2 REGISTER\r\n"
    f'Authorization: Digest username="alice", realm="example.test", nonce="{NONCE}", '
    f'uri="sip:example.test", response="{DIGEST_RESPONSE}", algorithm=MD5\r\n'
    f"Proxy-Authorization: Digest username=alice, response={DIGEST_RESPONSE[::-1]}\r\n"
    "Content-Length: 0\r\n\r\n"
).encode()


@pytest.fixture
def output() -> Iterator[io.StringIO]:
    """Capture what the pipeline writes; restore logging to its previous state after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stream = io.StringIO()
    yield stream
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_level_time_logger_and_bound_context(output: io.StringIO) -> None:
    configure_logging("json", "info", stream=output)
    structlog.contextvars.bind_contextvars(call_id="a84b4c76e66710@pc33")
    structlog.get_logger("ucgate.sip").info("request.received", method="REGISTER", cseq=2)
    logging.getLogger("aiohttp.access").info("GET %s %d", "/v1/presence", 200)
    structlog.contextvars.clear_contextvars()
    structlog.get_logger("ucgate.sip").info("after")
    first, second, third = json_lines(output)
    assert first["event"] == "request.received" and first["method"] == "REGISTER"
    assert first["level"] == "info" and first["logger"] == "ucgate.sip"
    assert str(first["timestamp"]).endswith("Z") and "T" in str(first["timestamp"])
    assert first["call_id"] == second["call_id"] == "a84b4c76e66710@pc33"
    # stdlib loggers (aiohttp, redis) go through the same pipeline.
    assert second["event"] == "GET /v1/presence 200" and second["logger"] == "aiohttp.access"
    assert "call_id" not in third


def test_level_filters_both_structlog_and_stdlib(output: io.StringIO) -> None:
    configure_logging("json", "warning", stream=output)
    structlog.get_logger("a").info("hidden")
    logging.getLogger("b").info("hidden")
    structlog.get_logger("a").warning("shown")
    logging.getLogger("b").error("shown too")
    assert [e["event"] for e in json_lines(output)] == ["shown", "shown too"]


def test_password_and_digest_response_never_reach_json_output(output: io.StringIO) -> None:
    configure_logging("json", "debug", stream=output)
    log = structlog.get_logger("ucgate.auth")
    log.info("register", raw=RAW_REGISTER, password=PASSWORD, user="alice")
    log.debug("text", message=RAW_REGISTER.decode())
    log.info("nested", account={"id": "alice", "ha1_md5": "0" * 32, "password": [PASSWORD]})
    log.info("digest", response=DIGEST_RESPONSE, authorization=f"Digest response={NONCE}")
    log.info(f"password={PASSWORD} in the event itself")
    logging.getLogger("redis").warning("connect redis://:%s@db:6379/0 failed", PASSWORD)
    logging.getLogger("x").info("login", extra={"password": PASSWORD})
    try:
        raise RuntimeError(f"auth failed: password={PASSWORD}")
    except RuntimeError:
        log.exception("crash")
    text = output.getvalue()
    assert PASSWORD not in text
    assert DIGEST_RESPONSE not in text and DIGEST_RESPONSE[::-1] not in text
    assert "0" * 32 not in text
    lines = json_lines(output)
    assert len(lines) == 8
    # What is not secret stays, so the lines remain useful.
    assert NONCE in str(lines[0]["raw"]) and 'username="alice"' in str(lines[0]["raw"])
    assert f'response="{MASK}"' in str(lines[0]["raw"])
    assert lines[0]["password"] == MASK and lines[0]["user"] == "alice"
    assert "RuntimeError" in str(lines[-1]["exception"])


def test_console_format_is_redacted_too(output: io.StringIO) -> None:
    configure_logging("console", "info", stream=output)
    structlog.get_logger("ucgate").info("hello", password=PASSWORD, raw=RAW_REGISTER, n=3)
    logging.getLogger("aiohttp").warning("plain %s", "stdlib")
    text = output.getvalue()
    assert "hello" in text and "n=3" in text and "plain stdlib" in text
    assert PASSWORD not in text and DIGEST_RESPONSE not in text
    assert "\x1b[" not in text  # no colours when the stream is not a terminal


def test_reconfiguring_replaces_the_handler(output: io.StringIO) -> None:
    configure_logging("console", "info", stream=io.StringIO())
    configure_logging("json", "info", stream=output)
    structlog.get_logger().info("once")
    assert [e["event"] for e in json_lines(output)] == ["once"]


@pytest.mark.parametrize(("fmt", "level"), [("xml", "info"), ("json", "loud")])
def test_bad_arguments_are_refused(fmt: str, level: str) -> None:
    with pytest.raises(ValueError, match="unknown log"):
        configure_logging(fmt, level, stream=io.StringIO())


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Authorization: Basic YWxpY2U6cGFzc3dvcmQ=", "YWxpY2U6cGFzc3dvcmQ="),
        ("authorization: bearer tok-123.abc", "tok-123.abc"),
        ("X-Api-Key: k-0123456789", "k-0123456789"),
        ("redis://user:pw-123@redis:6379/0", "pw-123"),
        ('secret: "s3 cr3t"', "s3 cr3t"),
        ("token=t0k3n&x=1", "t0k3n"),
        ("Digest username=a,response = abc123,nonce=n", "abc123"),
    ],
)
def test_redact_text(text: str, secret: str) -> None:
    assert secret not in redact_text(text)


def test_redact_keeps_harmless_text() -> None:
    text = 'WWW-Authenticate: Digest realm="example.test", nonce="abc", stale=true'
    assert redact_text(text) == text
    assert redact_text("responses=3 xresponse=4") == "responses=3 xresponse=4"


@given(
    response=st.text(alphabet="0123456789abcdef", min_size=32, max_size=64),
    header=st.sampled_from(["Authorization", "Proxy-Authorization", "authorization"]),
    quoted=st.booleans(),
    before=st.lists(st.sampled_from(['username="bob"', "nonce=x", 'uri="sip:a"', "qop=auth"])),
    as_bytes=st.booleans(),
)
def test_digest_response_is_masked_wherever_it_sits(
    response: str, header: str, quoted: bool, before: list[str], as_bytes: bool
) -> None:
    value = f'"{response}"' if quoted else response
    params = ", ".join([*before, f"response={value}", "algorithm=MD5"])
    message = f"REGISTER sip:x SIP/2.0\r\n{header}: Digest {params}\r\n\r\n"
    event = redact(None, "info", {"event": "rx", "raw": message.encode() if as_bytes else message})
    assert response not in json.dumps(event)


@given(
    key=st.sampled_from(["password", "PASSWORD", "ha1", "Proxy-Authorization", "api_key"]),
    value=st.one_of(st.text(min_size=1), st.integers(), st.lists(st.text(min_size=1))),
)
def test_secret_keys_are_masked_whatever_their_value(key: str, value: object) -> None:
    event = redact(None, "info", {"event": "e", key: value, "nested": {key: value}})
    assert event[key] == MASK and event["nested"] == {key: MASK}
