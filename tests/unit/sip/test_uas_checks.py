"""check_request (RFC 3261 §8.2.1-8.2.3, §16.3) and make_response (§8.2.6)."""

from __future__ import annotations

import pytest

from ucgate.sip import fields
from ucgate.sip.errors import RemoteProtocolError
from ucgate.sip.message import Headers, Request, Response
from ucgate.sip.parser import parse_message
from ucgate.sip.uas_checks import REASON_PHRASES, check_request, make_response, reason_phrase

KW = {
    "allowed_methods": frozenset({"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER"}),
    "supported_extensions": frozenset({"path", "outbound", "timer"}),
    "accepted_content_types": frozenset({"application/sdp", "text/plain"}),
}


def request(method: str = "INVITE", uri: str = "sip:bob@example.com",
            extra: list[tuple[str, str]] | None = None, body: bytes = b"") -> Request:
    headers = Headers([
        ("Via", "SIP/2.0/UDP pc33.example.com;branch=z9hG4bK776asdhds"),
        ("Via", "SIP/2.0/UDP p1.example.com;branch=z9hG4bK1;received=192.0.2.1"),
        ("Max-Forwards", "70"),
        ("To", "Bob <sip:bob@example.com>"),
        ("From", "Alice <sip:alice@example.com>;tag=1928301774"),
        ("Call-ID", "a84b4c76e66710@pc33.example.com"),
        ("CSeq", f"314159 {method}"),
        ("Timestamp", "54"),
        *(extra or []),
    ])
    if body:
        headers.add("Content-Length", str(len(body)))
    return Request(method, uri, headers, body)


def check(req: Request, **kw: object) -> Response | None:
    return check_request(req, **{**KW, **kw})  # type: ignore[arg-type]


def test_good_request_passes() -> None:
    assert check(request(extra=[("Content-Type", "application/sdp"),
                                ("Supported", "foo"), ("Require", "timer")]), ) is None
    assert check(request(extra=[("Content-Type", "application/SDP; charset=x")], body=b"v=0")) \
        is None


def test_make_response_copies_per_8_2_6_2() -> None:
    req = request()
    resp = make_response(req, 486, to_tag="abc", extra_headers=[("Retry-After", "5")])
    assert (resp.status, resp.reason) == (486, "Busy Here")
    assert resp.headers.get_all("Via") == req.headers.get_all("Via")
    assert resp.headers.get("From") == req.headers.get("From")
    assert resp.headers.get("Call-ID") == req.headers.get("Call-ID")
    assert resp.headers.get("CSeq") == req.headers.get("CSeq")
    assert fields.to(resp).tag == "abc"
    assert resp.headers.get("Retry-After") == "5"
    assert resp.headers.get("Timestamp") is None
    again = parse_message(resp.to_bytes()).headers
    again.remove("Content-Length")  # to_bytes always writes it (§18.3)
    assert again == resp.headers


def test_make_response_tags() -> None:
    req = request()
    trying = make_response(req, 100)
    assert fields.to(trying).tag is None and trying.headers.get("Timestamp") == "54"
    a, b = make_response(req, 404), make_response(request(), 404)
    assert fields.to(a).tag is not None and fields.to(a).tag == fields.to(b).tag  # §8.2.7
    other = request(extra=[])
    other.headers.set("CSeq", "314160 INVITE")
    assert fields.to(make_response(other, 404)).tag != fields.to(a).tag
    tagged = request()
    tagged.headers.set("To", "<sip:bob@example.com>;tag=existing")
    assert fields.to(make_response(tagged, 200, to_tag="new")).tag == "existing"


def test_make_response_on_partial_request() -> None:
    partial = Request("INVITE", "sip:x", Headers([("Via", "SIP/2.0/UDP h;branch=z9hG4bK1")]))
    resp = make_response(partial, 400)
    assert resp.headers.get("Via") and resp.headers.get("To") is None


def test_reason_phrases() -> None:
    assert reason_phrase(481) == "Call/Transaction Does Not Exist"
    assert reason_phrase(499) == "Bad Request"
    assert all(100 <= s <= 699 for s in REASON_PHRASES)
    assert make_response(request(), 603, "Go away").reason == "Go away"


def test_405_and_501() -> None:
    resp = check(request("SUBSCRIBE"))
    assert resp is not None and resp.status == 405
    assert set((resp.headers.get("Allow") or "").split(", ")) == KW["allowed_methods"]
    resp = check(request("FOO"))
    assert resp is not None and resp.status == 501


@pytest.mark.parametrize(("uri", "status"), [("tel:+15551234", None), ("mailto:x@y", 416),
                                             ("sips:bob@example.com", None)])
def test_uri_scheme(uri: str, status: int | None) -> None:
    resp = check(request(uri=uri))
    assert (resp.status if resp else None) == status
    resp = check(request(uri="tel:+1"), uri_schemes=frozenset({"sip"}))
    assert resp is not None and resp.status == 416


def test_max_forwards_zero_only_matters_when_proxying() -> None:
    req = request()
    req.headers.set("Max-Forwards", "0")
    assert check(req) is None
    resp = check(req, is_proxying=True)
    assert resp is not None and resp.status == 483


def test_require() -> None:
    resp = check(request(extra=[("Require", "100rel, TIMER"), ("Require", "foo")]))
    assert resp is not None and resp.status == 420
    assert resp.headers.get("Unsupported") == "100rel, foo"
    assert check(request("CANCEL", extra=[("Require", "100rel")])) is None
    assert check(request(extra=[("Proxy-Require", "x")])) is None
    resp = check(request(extra=[("Proxy-Require", "x")]), is_proxying=True)
    assert resp is not None and resp.status == 420


def test_content_checks() -> None:
    resp = check(request(extra=[("Content-Type", "application/x-foo")], body=b"x"))
    assert resp is not None and resp.status == 415
    assert resp.headers.get("Accept") == "application/sdp, text/plain"
    resp = check(request(body=b"x"))
    assert resp is not None and resp.status == 400
    resp = check(request(extra=[("Content-Type", "text/plain"), ("Content-Encoding", "gzip")],
                         body=b"x"))
    assert resp is not None and resp.status == 415
    assert resp.headers.get("Accept-Encoding") == "identity"


@pytest.mark.parametrize(
    ("accept", "status"),
    [("text/nobody", 406), ("application/*", None), ("*/*", None),
     ("text/html, application/sdp;q=0.5", None)],
)
def test_accept(accept: str, status: int | None) -> None:
    resp = check(request(extra=[("Accept", accept)]))
    assert (resp.status if resp else None) == status
    assert check(request("REGISTER", extra=[("Accept", "text/nobody")])) is None


def test_invalid_request_gets_400_with_warning() -> None:
    req = request()
    req.headers.set("CSeq", "1 BYE")
    resp = check(req)
    assert resp is not None and resp.status == 400
    assert (resp.headers.get("Warning") or "").startswith("399 ucgate ")


def test_ack_is_never_answered() -> None:
    assert check(request("ACK", extra=[("Require", "nope")])) is None
    bad = request("ACK")
    bad.headers.remove("Call-ID")
    with pytest.raises(RemoteProtocolError) as info:
        check(bad)
    assert info.value.status is None
