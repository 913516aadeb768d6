"""parse_message / validate_request / validate_response (RFC 3261 §7, §8.2, §18.3)."""

from __future__ import annotations

import pytest

from ucgate.sip.errors import RemoteProtocolError
from ucgate.sip.message import Request, Response
from ucgate.sip.parser import (
    MalformedRequest,
    parse_message,
    validate_request,
    validate_response,
)

REGISTER = (
    b"REGISTER sip:registrar.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKnashds7;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@example.com>\r\n"
    b"From: Bob <sip:bob@example.com>;tag=456248\r\n"
    b"Call-ID: 843817637684230@998sdasdh09\r\n"
    b"CSeq: 1826 REGISTER\r\n"
    b"Contact: <sip:bob@192.0.2.10:5060;transport=udp>;expires=3600\r\n"
    b"Content-Length: 0\r\n\r\n"
)

OK = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKnashds7;received=192.0.2.10\r\n"
    b"To: Bob <sip:bob@example.com>;tag=2493k59kd\r\n"
    b"From: Bob <sip:bob@example.com>;tag=456248\r\n"
    b"Call-ID: 843817637684230@998sdasdh09\r\n"
    b"CSeq: 1826 REGISTER\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: 5\r\n\r\nhello"
)


def test_request() -> None:
    req = parse_message(REGISTER)
    assert isinstance(req, Request)
    assert (req.method, req.uri, req.body) == ("REGISTER", "sip:registrar.example.com", b"")
    assert req.headers.get("call-id") == "843817637684230@998sdasdh09"
    validate_request(req)
    assert parse_message(req.to_bytes()).headers == req.headers


def test_response() -> None:
    resp = parse_message(OK)
    assert isinstance(resp, Response)
    assert (resp.status, resp.reason, resp.body) == (200, "OK", b"hello")
    validate_response(resp)


def test_leading_crlf_compact_names_and_folding() -> None:
    data = REGISTER.replace(b"Call-ID:", b"i :").replace(
        b"Contact: <sip", b"m:\r\n  <sip"
    )
    req = parse_message(b"\r\n\r\n" + data)
    assert req.headers.get("Call-ID") == "843817637684230@998sdasdh09"
    assert req.headers.get("Contact") == "<sip:bob@192.0.2.10:5060;transport=udp>;expires=3600"


def test_bare_lf_line_ends_are_tolerated() -> None:
    req = parse_message(REGISTER.replace(b"\r\n", b"\n"))
    assert isinstance(req, Request)
    validate_request(req)


def test_body_without_content_length_is_the_rest() -> None:
    data = REGISTER.replace(b"Content-Length: 0\r\n", b"") + b"abc"
    assert parse_message(data).body == b"abc"


def test_trailing_bytes_after_body_are_ignored() -> None:
    assert parse_message(OK + b"garbage").body == b"hello"


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (REGISTER.replace(b"Content-Length: 0", b"Content-Length: 10"), 400),
        (REGISTER.replace(b"Content-Length: 0", b"Content-Length: x"), 400),
        (REGISTER.replace(b"REGISTER sip", b"REGISTER  sip"), 400),
        (REGISTER.replace(b"SIP/2.0\r\nVia", b"SIP/2.0 \r\nVia"), 400),
        (REGISTER.replace(b"REGISTER sip:registrar.example.com", b"REGISTER <sip:r.example.com>"),
         400),
        (REGISTER.replace(b"SIP/2.0\r\nVia", b"SIP/3.0\r\nVia"), 505),
        (REGISTER.replace(b"SIP/2.0\r\nVia", b"SIP/x\r\nVia"), 400),
        (REGISTER.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards 70\r\n"), 400),
        (REGISTER.replace(b"Max-Forwards: 70\r\n", b" folded-first\r\n", 1)
         .replace(b"Via:", b"Vi a:"), 400),
        (REGISTER.replace(b"Max-Forwards: 70", b"Max-Forwards: 7\x010"), 400),
        (REGISTER.replace(b"\r\n\r\n", b"\r\n"), 400),
        (REGISTER.replace(b"Bob <", b"B\xffob <"), 400),
    ],
)
def test_broken_requests_keep_a_partial(data: bytes, status: int) -> None:
    with pytest.raises(MalformedRequest) as info:
        parse_message(data)
    assert info.value.status == status
    if b"\xff" not in data:
        assert info.value.partial is not None
        assert info.value.partial.headers.get("CSeq") == "1826 REGISTER"


@pytest.mark.parametrize(
    "data",
    [
        b"", b"\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"hello world", b"\xff\xfe SIP/2.0",
        OK.replace(b"200 OK", b"2000 OK"), OK.replace(b"200 OK", b"099 Low"),
        OK.replace(b"SIP/2.0 200", b"SIP/2.1 200"), OK.replace(b"Content-Length: 5", b"l: 50"),
        OK.replace(b"CSeq: 1826", b"CSeq: x"), OK.replace(b"\r\n\r\n", b"\r\n"),
    ],
)
def test_garbage_and_bad_responses_are_dropped(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        msg = parse_message(data)
        assert isinstance(msg, Response)
        validate_response(msg)
    assert info.value.status is None


def test_limits() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_message(REGISTER, max_size=100)
    assert info.value.status is None
    many = REGISTER.replace(b"Content-Length", b"X-A: 1\r\n" * 300 + b"Content-Length")
    with pytest.raises(MalformedRequest):
        parse_message(many)
    parse_message(many, max_headers=400)
    long_line = REGISTER.replace(
        b"Max-Forwards: 70", b"X-Long: " + b"a" * 9000 + b"\r\nMax-Forwards: 70"
    )
    with pytest.raises(MalformedRequest):
        parse_message(long_line)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"CSeq: 1826 REGISTER", b"CSeq: 1826 INVITE"),
        (b"CSeq: 1826 REGISTER", b"CSeq: 2147483648 REGISTER"),
        (b"Max-Forwards: 70", b"Max-Forwards: 256"),
        (b"Call-ID: 843817637684230@998sdasdh09\r\n", b""),
        (b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKnashds7;rport\r\n", b""),
        (b"To: Bob <sip:bob@example.com>", b"To: Bob <sip:bob@example.com>\r\nTo: <sip:x@y>"),
        (b"Content-Length: 0", b"Content-Length: 0\r\nContent-Length: 0"),
        (b"Contact: <sip", b"Contact: *, <sip"),
        (b"REGISTER sip:registrar.example.com", b"REGISTER sip:registrar.example.com?Subject=x"),
        (b"Max-Forwards: 70", b"Max-Forwards: 70\r\nDate: Sat, 13 Nov 2010 23:29:00 PST"),
        (b"Max-Forwards: 70", b"Max-Forwards: 70\r\nExpires: -5"),
    ],
)
def test_validate_request_refuses(old: bytes, new: bytes) -> None:
    req = parse_message(REGISTER.replace(old, new))
    assert isinstance(req, Request)
    with pytest.raises(RemoteProtocolError) as info:
        validate_request(req)
    assert info.value.status == 400


def test_validate_accepts_gmt_date_and_missing_max_forwards() -> None:
    data = REGISTER.replace(b"Max-Forwards: 70", b"Date: Sat, 13 Nov 2010 23:29:00 GMT")
    req = parse_message(data)
    assert isinstance(req, Request)
    validate_request(req)


def test_reason_phrase_may_be_utf8_and_empty() -> None:
    resp = parse_message(OK.replace(b"200 OK", "200 Très bien".encode()))
    assert isinstance(resp, Response) and resp.reason == "Très bien"
    resp = parse_message(OK.replace(b"200 OK", b"200"))
    assert isinstance(resp, Response) and resp.reason == ""
