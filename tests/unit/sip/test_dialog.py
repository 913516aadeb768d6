"""RFC 3261 §12 dialogs: creation on both sides, in-dialog requests, routing, CSeq rules."""

from __future__ import annotations

import pytest

from ucgate.sip import fields
from ucgate.sip.dialog import Dialog, next_hop
from ucgate.sip.errors import LocalProtocolError, RemoteProtocolError
from ucgate.sip.message import Request, Response
from ucgate.sip.parser import parse_message


def request(text: str) -> Request:
    msg = parse_message(text.replace("\n", "\r\n").encode())
    assert isinstance(msg, Request)
    return msg


def response(text: str) -> Response:
    msg = parse_message(text.replace("\n", "\r\n").encode())
    assert isinstance(msg, Response)
    return msg


def subscribe(
    *,
    contact: str | None = "<sip:bob@198.51.100.7:5062;transport=tcp>",
    record_route: tuple[str, ...] = (),
    uri: str = "sip:alice@example.test",
    cseq: int = 7,
) -> Request:
    lines = [
        f"SUBSCRIBE {uri} SIP/2.0",
        "Via: SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bKdlg1",
        "Max-Forwards: 69",
        '"Bob B." <sip:bob@example.test>;tag=remote1',
        "To: Alice <sip:alice@example.test>",
        "Call-ID: call-1@198.51.100.7",
        f"CSeq: {cseq} SUBSCRIBE",
        "Event: presence",
    ]
    lines[3] = "From: " + lines[3]
    if contact is not None:
        lines.append(f"Contact: {contact}")
    lines += [f"Record-Route: {rr}" for rr in record_route]
    return request("\n".join(lines) + "\nContent-Length: 0\n\n")


def test_uas_dialog_from_request() -> None:
    d = Dialog.from_request(
        subscribe(record_route=("<sip:p1.example.test;lr>", "<sip:p2.example.test;lr>;foo=1")),
        "local9",
    )
    assert d.id == ("call-1@198.51.100.7", "local9", "remote1")
    assert d.remote_target == "sip:bob@198.51.100.7:5062;transport=tcp"
    # §12.1.1: the UAS keeps Record-Route in order, URI parameters and all.
    assert d.route_set == ("sip:p1.example.test;lr", "sip:p2.example.test;lr")
    assert d.remote_seq == 7
    assert d.local_seq == 0
    assert d.remote_uri.display_name == "Bob B."
    assert d.remote_uri.tag is None and d.local_uri.tag is None
    assert str(d.local_uri.uri) == "sip:alice@example.test"
    assert not d.secure


@pytest.mark.parametrize(
    "contact",
    [None, "<sip:a@192.0.2.1>, <sip:b@192.0.2.2>", "*"],
)
def test_dialog_needs_exactly_one_contact(contact: str | None) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        Dialog.from_request(subscribe(contact=contact), "t")
    assert info.value.status == 400


def test_secure_only_with_tls_and_sips() -> None:
    assert Dialog.from_request(subscribe(uri="sips:alice@example.test"), "t", over_tls=True).secure
    assert not Dialog.from_request(subscribe(uri="sips:alice@example.test"), "t").secure
    assert not Dialog.from_request(subscribe(), "t", over_tls=True).secure


def test_loose_routed_request() -> None:
    d = Dialog.from_request(
        subscribe(record_route=("<sip:p1.example.test;lr>", "<sip:p2.example.test;lr>")), "L"
    )
    first = d.create_request("NOTIFY", body=b"<x/>", content_type="application/pidf+xml",
                             extra_headers=[("Event", "presence")])
    second = d.create_request("NOTIFY")
    # Over the wire and back: what we build must parse.
    req = parse_message(first.to_bytes())
    assert isinstance(req, Request)
    assert req.uri == "sip:bob@198.51.100.7:5062;transport=tcp"
    assert req.headers.values("Route") == ["<sip:p1.example.test;lr>", "<sip:p2.example.test;lr>"]
    assert fields.to(req).tag == "remote1"
    assert fields.to(req).display_name == "Bob B."
    assert fields.from_(req).tag == "L"
    assert fields.call_id(req) == "call-1@198.51.100.7"
    assert req.headers.get("Max-Forwards") == "70"
    assert "Via" not in req.headers and "Contact" not in req.headers
    assert req.headers.get("Content-Type") == "application/pidf+xml"
    assert req.headers.get("Event") == "presence"
    assert req.body == b"<x/>"
    assert [fields.cseq(r).seq for r in (first, second)] == [1, 2]
    assert fields.cseq(second).method == "NOTIFY"
    assert next_hop(d) == "sip:p1.example.test;lr"


def test_strict_routed_request() -> None:
    strict = "<sip:old.example.test;method=SUBSCRIBE>"
    d = Dialog.from_request(subscribe(record_route=(strict, "<sip:p2.example.test;lr>")), "L")
    req = d.create_request("NOTIFY")
    # §12.2.1.1: strict next hop goes in the Request-URI (minus the method param) and the
    # remote target travels as the last Route.
    assert req.uri == "sip:old.example.test"
    assert req.headers.values("Route") == [
        "<sip:p2.example.test;lr>",
        "<sip:bob@198.51.100.7:5062;transport=tcp>",
    ]
    assert next_hop(d) == "sip:old.example.test;method=SUBSCRIBE"


def test_no_route_set() -> None:
    d = Dialog.from_request(subscribe(), "L")
    req = d.create_request("NOTIFY")
    assert "Route" not in req.headers
    assert next_hop(d) == d.remote_target == req.uri


def test_misuse_is_local_error() -> None:
    d = Dialog.from_request(subscribe(), "L")
    for method in ("ACK", "CANCEL"):
        with pytest.raises(LocalProtocolError):
            d.create_request(method)
    with pytest.raises(LocalProtocolError):
        d.create_request("NOTIFY", body=b"x")  # body without Content-Type
    with pytest.raises(LocalProtocolError):
        Dialog.from_request(subscribe(), "")
    d.local_seq = fields.MAX_CSEQ
    with pytest.raises(LocalProtocolError):
        d.create_request("NOTIFY")


def in_dialog(cseq: int, contact: str | None = None, method: str = "SUBSCRIBE") -> Request:
    lines = [
        f"{method} sip:alice@192.0.2.10 SIP/2.0",
        "Via: SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bKx" + str(cseq),
        "Max-Forwards: 70",
        "From: <sip:bob@example.test>;tag=remote1",
        "To: <sip:alice@example.test>;tag=L",
        "Call-ID: call-1@198.51.100.7",
        f"CSeq: {cseq} {method}",
    ]
    if contact:
        lines.append(f"Contact: {contact}")
    return request("\n".join(lines) + "\nContent-Length: 0\n\n")


def test_in_dialog_cseq_and_target_refresh() -> None:
    d = Dialog.from_request(subscribe(cseq=7), "L")
    assert d.matches(in_dialog(8))
    d.check_in_dialog_request(in_dialog(8, "<sip:bob@203.0.113.9:7000>"))
    assert d.remote_seq == 8
    assert d.remote_target == "sip:bob@203.0.113.9:7000"
    # Same number again is not "lower" (§12.2.2), and no Contact keeps the target.
    d.check_in_dialog_request(in_dialog(8))
    assert d.remote_target == "sip:bob@203.0.113.9:7000"
    with pytest.raises(RemoteProtocolError) as info:
        d.check_in_dialog_request(in_dialog(5, "<sip:evil@203.0.113.66>"))
    assert info.value.status == 500
    assert d.remote_seq == 8 and d.remote_target == "sip:bob@203.0.113.9:7000"


def test_bad_refresh_contact_changes_nothing() -> None:
    d = Dialog.from_request(subscribe(cseq=7), "L")
    with pytest.raises(RemoteProtocolError):
        d.check_in_dialog_request(in_dialog(9, "<sip:a@192.0.2.1>, <sip:b@192.0.2.2>"))
    assert d.remote_seq == 7
    assert d.remote_target == "sip:bob@198.51.100.7:5062;transport=tcp"


def test_non_refresh_method_keeps_target() -> None:
    d = Dialog.from_request(subscribe(cseq=7), "L")
    d.check_in_dialog_request(in_dialog(9, "<sip:bob@203.0.113.9>", method="INFO"))
    assert d.remote_target == "sip:bob@198.51.100.7:5062;transport=tcp"
    assert d.remote_seq == 9


def test_matches_rejects_other_dialogs() -> None:
    d = Dialog.from_request(subscribe(), "other-tag")
    assert not d.matches(in_dialog(8))


def test_uac_dialog_from_response() -> None:
    ours = request(
        "SUBSCRIBE sip:bob@example.test SIP/2.0\n"
        "Via: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKuac\n"
        "Max-Forwards: 70\n"
        "From: <sip:alice@example.test>;tag=mine\n"
        "To: <sip:bob@example.test>\n"
        "Call-ID: uac-1\n"
        "CSeq: 41 SUBSCRIBE\n"
        "Contact: <sip:alice@192.0.2.10>\n"
        "Event: presence\n"
        "Content-Length: 0\n\n"
    )
    ok = response(
        "SIP/2.0 200 OK\n"
        "Via: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKuac\n"
        "From: <sip:alice@example.test>;tag=mine\n"
        "To: <sip:bob@example.test>;tag=theirs\n"
        "Call-ID: uac-1\n"
        "CSeq: 41 SUBSCRIBE\n"
        "Record-Route: <sip:p1.example.test;lr>, <sip:p2.example.test;lr>\n"
        "Contact: <sip:bob@198.51.100.7>\n"
        "Content-Length: 0\n\n"
    )
    d = Dialog.from_response(ours, ok)
    assert d.id == ("uac-1", "mine", "theirs")
    # §12.1.2: the UAC reverses the Record-Route of the response.
    assert d.route_set == ("sip:p2.example.test;lr", "sip:p1.example.test;lr")
    assert d.local_seq == 41 and d.remote_seq is None
    assert fields.cseq(d.create_request("SUBSCRIBE")).seq == 42
