"""Structured header values: name-addr, Via, CSeq, params, scalars, message helpers."""

from __future__ import annotations

import pytest

from ucgate.sip import fields
from ucgate.sip.errors import RemoteProtocolError
from ucgate.sip.fields import (
    CSeq,
    NameAddr,
    Star,
    Via,
    parse_cseq,
    parse_int_header,
    parse_name_addr,
    parse_params,
    parse_via,
)
from ucgate.sip.message import Headers, Request
from ucgate.sip.uri import SipUri, parse_uri


def test_quoted_display_name_with_escapes() -> None:
    na = parse_name_addr(r'"Bob \"the\" Builder \\" <sip:bob@b.example>;tag=xy')
    assert na.display_name == 'Bob "the" Builder \\'
    assert na.tag == "xy"
    assert str(na) == r'"Bob \"the\" Builder \\" <sip:bob@b.example>;tag=xy'
    assert parse_name_addr(str(na)) == na


def test_token_display_name_and_no_space_before_laquot() -> None:
    na = parse_name_addr("Alice   Liddell<sip:alice@a.example>")
    assert na.display_name == "Alice Liddell"
    assert parse_name_addr("<sip:a@b>").display_name is None


def test_bare_addr_spec_params_belong_to_header() -> None:
    na = parse_name_addr("sip:alice@a.example;tag=1;expires=60")
    assert isinstance(na.uri, SipUri) and na.uri.params == ()
    assert na.params == (("tag", "1"), ("expires", "60"))
    inside = parse_name_addr("<sip:alice@a.example;transport=tcp>;tag=1")
    assert isinstance(inside.uri, SipUri) and inside.uri.transport == "tcp"


@pytest.mark.parametrize(
    "value",
    [
        '"unterminated <sip:a@b>', "Watson, Thomas <sip:t@example.org>",
        "< sip:t@example.org >", "<sip:a@b", "sip:a@b?Route=x", "", "*",
        "<sip:a@b>;;tag=1", '"x" sip:a@b', "<sip:a@b> junk",
    ],
)
def test_bad_name_addr(value: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_name_addr(value)
    assert info.value.status == 400


def test_params_grammar() -> None:
    assert parse_params(' ; a = 1 ;B; c="x;y, z" ;d=[::1]') == (
        ("a", "1"), ("b", None), ("c", '"x;y, z"'), ("d", "[::1]")
    )
    assert parse_params("") == ()
    for bad in (";", ";;a", "a=1", ";a=", ';a="x', ";a=b c", ";a b"):
        with pytest.raises(RemoteProtocolError):
            parse_params(bad)


def test_via_with_lws_and_rport() -> None:
    via = parse_via("SIP  /   2.0  / tcp   Spindle.Example.COM:5070 ;  branch=z9hG4bK9ikj8 ;rport")
    assert via == Via("TCP", "spindle.example.com", 5070,
                      (("branch", "z9hG4bK9ikj8"), ("rport", None)))
    assert via.sent_by == "spindle.example.com:5070"
    assert via.has_rport and via.rport is None and via.received is None
    filled = via.with_params(received="192.0.2.1", rport="5071")
    assert filled.rport == 5071 and filled.received == "192.0.2.1"
    assert str(filled) == ("SIP/2.0/TCP spindle.example.com:5070;branch=z9hG4bK9ikj8;"
                           "rport=5071;received=192.0.2.1")
    assert parse_via(str(filled)) == filled
    v6 = parse_via("SIP/2.0/UDP [2001:db8::9]:5060;branch=z9hG4bKx")
    assert v6.host == "[2001:db8::9]" and v6.port == 5060 and v6.branch == "z9hG4bKx"


@pytest.mark.parametrize(
    "value",
    ["SIP/2.0/UDP", "SIP/3.0/UDP host", "HTTP/2.0/UDP host", "SIP/2.0/UDP host:99999",
     "SIP/2.0/UDP host;;", "SIP/2.0/UDP host;branch=", "SIP/2.0 UDP host", "SIP/2.0/UDP ho st"],
)
def test_bad_via(value: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_via(value)
    assert info.value.status == 400


def test_cseq() -> None:
    assert parse_cseq(" 0009 \t INVITE ") == CSeq(9, "INVITE")
    assert str(CSeq(1, "BYE")) == "1 BYE"
    assert parse_cseq(f"{2**31 - 1} ACK").seq == 2**31 - 1
    for bad in (f"{2**31} ACK", "1", "INVITE", "-1 INVITE", "1 INV ITE", "99999999999 X"):
        with pytest.raises(RemoteProtocolError):
            parse_cseq(bad)


def test_int_header_bounds() -> None:
    assert parse_int_header(" 70 ", name="Max-Forwards", maximum=255) == 70
    for bad in ("256", "-1", "1.5", "", "٣", "1" * 11):
        with pytest.raises(RemoteProtocolError):
            parse_int_header(bad, maximum=255)


def test_contact_list_and_star() -> None:
    assert fields.parse_contact_list(" * ") is Star.STAR
    listed = fields.parse_contact_list('<sip:a@b>;q=0.5, "X, Y" <sip:c@d>')
    assert isinstance(listed, list) and [c.display_name for c in listed] == [None, "X, Y"]
    with pytest.raises(RemoteProtocolError):
        fields.parse_contact_list("*, <sip:a@b>")


def _request(*headers: tuple[str, str]) -> Request:
    return Request("INVITE", "sip:b@example.com", Headers(headers))


def test_message_helpers() -> None:
    req = _request(
        ("v", "SIP/2.0/UDP a.example;branch=z9hG4bK1, SIP/2.0/TCP b.example;branch=z9hG4bK2"),
        ("Via", "SIP/2.0/UDP c.example;branch=z9hG4bK3"),
        ("f", "<sip:a@example.com>;tag=1"), ("t", "sip:b@example.com"),
        ("i", "abc@host"), ("CSeq", "7 INVITE"), ("m", "*"),
    )
    assert fields.top_via(req).branch == "z9hG4bK1"
    assert [v.host for v in fields.vias(req)] == ["a.example", "b.example", "c.example"]
    assert fields.from_(req).tag == "1" and fields.to(req).tag is None
    assert fields.call_id(req) == "abc@host"
    assert fields.cseq(req) == CSeq(7, "INVITE")
    assert fields.contacts(req) is Star.STAR
    assert isinstance(fields.to(req), NameAddr)


@pytest.mark.parametrize("missing", ["Via", "From", "To", "Call-ID", "CSeq"])
def test_helpers_refuse_missing_headers(missing: str) -> None:
    all_headers = [("Via", "SIP/2.0/UDP a;branch=z9hG4bK1"), ("From", "<sip:a@b>;tag=1"),
                   ("To", "<sip:c@d>"), ("Call-ID", "x"), ("CSeq", "1 INVITE")]
    req = _request(*[h for h in all_headers if h[0] != missing])
    helper = {"Via": fields.top_via, "From": fields.from_, "To": fields.to,
              "Call-ID": fields.call_id, "CSeq": fields.cseq}[missing]
    with pytest.raises(RemoteProtocolError) as info:
        helper(req)
    assert info.value.status == 400


def test_duplicate_single_valued_is_refused() -> None:
    req = _request(("To", "<sip:a@b>"), ("To", "<sip:c@d>"))
    with pytest.raises(RemoteProtocolError):
        fields.to(req)


def test_sip_uri_narrowing_is_416() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        fields.sip_uri(parse_uri("tel:+123"))
    assert info.value.status == 416
