"""All 49 RFC 4475 torture messages through parse_message -> validate_* -> check_request.

The .dat files in ``torture/`` are the exact octets of the messages (CRLF line ends, the
escaped/binary bytes of §2.2 expanded, longreq's repetitions of §2.3 expanded), named
after the RFC's tags. Outcomes:

* ``None``: parses and passes every check of this layer;
* an int: the status of the response this layer produces;
* ``DROP``: silently discarded (``RemoteProtocolError(status=None)``).

Where the RFC's answer is decided above this layer the table says which layer answers.
"""

from __future__ import annotations

import pathlib
import re

import pytest

from ucgate.sip import fields
from ucgate.sip.errors import RemoteProtocolError
from ucgate.sip.framing import StreamFramer
from ucgate.sip.message import Request, Response
from ucgate.sip.parser import MalformedRequest, parse_message, validate_response
from ucgate.sip.uas_checks import check_request, make_response
from ucgate.sip.uri import AbsoluteUri, SipUri, parse_uri

TORTURE = pathlib.Path(__file__).parent / "torture"
DROP = "drop"

ALLOWED = frozenset({
    "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "SUBSCRIBE", "NOTIFY", "PUBLISH",
    "REFER", "INFO", "UPDATE", "MESSAGE", "PRACK",
})
EXTENSIONS = frozenset({"path", "outbound", "timer", "replaces"})
CONTENT_TYPES = frozenset(
    {"application/sdp", "application/pidf+xml", "multipart/mixed", "text/plain"}
)


def checks(req: Request, *, is_proxying: bool = False) -> Response | None:
    """check_request as a registrar/UAS that allows every RFC method."""
    return check_request(
        req,
        allowed_methods=ALLOWED,
        supported_extensions=EXTENSIONS,
        accepted_content_types=CONTENT_TYPES,
        is_proxying=is_proxying,
    )

# tag: (RFC section, expected outcome, note on who answers when it is not this layer)
EXPECTED: dict[str, tuple[str, int | str | None, str]] = {
    # §3.1.1 valid messages
    "wsinv": ("3.1.1.1", None, ""),
    "intmeth": ("3.1.1.2", 501, "valid syntax, unknown method"),
    "esc01": ("3.1.1.3", None, ""),
    "escnull": ("3.1.1.4", None, ""),
    "esc02": ("3.1.1.5", 501, "RE%47IST%45R is not REGISTER"),
    "lwsdisp": ("3.1.1.6", None, ""),
    "longreq": ("3.1.1.7", None, ""),
    "dblreq": ("3.1.1.8", None, "trailing octets ignored"),
    "semiuri": ("3.1.1.9", None, ""),
    "transports": ("3.1.1.10", None, ""),
    "mpart01": ("3.1.1.11", None, ""),
    "unreason": ("3.1.1.12", None, ""),
    "noreason": ("3.1.1.13", None, ""),
    # §3.1.2 invalid messages
    "badinv01": ("3.1.2.1", 400, ""),
    "clerr": ("3.1.2.2", 400, ""),
    "ncl": ("3.1.2.3", 400, ""),
    "scalar02": ("3.1.2.4", 400, ""),
    "scalarlg": ("3.1.2.5", DROP, "response"),
    "quotbal": ("3.1.2.6", 400, ""),
    "ltgtruri": ("3.1.2.7", 400, ""),
    "lwsruri": ("3.1.2.8", 400, ""),
    "lwsstart": ("3.1.2.9", 400, ""),
    "trws": ("3.1.2.10", 400, ""),
    "escruri": ("3.1.2.11", 400, ""),
    "baddate": ("3.1.2.12", 400, ""),
    "regbadct": ("3.1.2.13", 400, ""),
    "badaspec": ("3.1.2.14", 400, ""),
    "baddn": ("3.1.2.15", 400, ""),
    "badvers": ("3.1.2.16", 505, ""),
    "mismatch01": ("3.1.2.17", 400, ""),
    "mismatch02": ("3.1.2.18", 400, ""),
    "bigcode": ("3.1.2.19", DROP, "response"),
    # §3.2 transaction layer
    "badbranch": ("3.2.1", None, "transaction layer: branch 'z9hG4bK' alone is not RFC 3261"),
    # §3.3 application layer
    "insuf": ("3.3.1", 400, ""),
    "unkscm": ("3.3.2", 416, ""),
    "novelsc": ("3.3.3", 416, ""),
    "unksm2": ("3.3.4", None, "registrar: To is not a SIP AOR (§10.3)"),
    "bext01": ("3.3.5", 420, ""),
    "invut": ("3.3.6", 415, ""),
    "regaut01": ("3.3.7", None, "digest auth layer: 401 for the unknown scheme"),
    "multi01": ("3.3.8", 400, ""),
    "mcl01": ("3.3.9", 400, ""),
    "bcast": ("3.3.10", None, "transport: response Via sent-by check (§18.1.2)"),
    "zeromf": ("3.3.11", None, "a UAS answers OPTIONS with Max-Forwards 0; a proxy 483"),
    "cparam01": ("3.3.12", None, "registrar"),
    "cparam02": ("3.3.13", None, "registrar"),
    "regescrt": ("3.3.14", None, "registrar: Route header in contact URI"),
    "sdp01": ("3.3.15", 406, ""),
    # §3.4 backward compatibility
    "inv2543": ("3.4.1", None, "RFC 2543 syntax is accepted"),
}


def _outcome(data: bytes, *, is_proxying: bool = False) -> int | str | None:
    try:
        msg = parse_message(data)
    except MalformedRequest as exc:
        assert exc.status is not None
        assert exc.partial is not None, "a request error should keep a partial request"
        response = make_response(exc.partial, exc.status)
        assert response.status == exc.status
        return exc.status
    except RemoteProtocolError as exc:
        assert exc.status is None
        return DROP
    if isinstance(msg, Response):
        try:
            validate_response(msg)
        except RemoteProtocolError as exc:
            assert exc.status is None
            return DROP
        return None
    answer = checks(msg, is_proxying=is_proxying)
    return None if answer is None else answer.status


def test_all_49_messages_are_present() -> None:
    assert sorted(p.stem for p in TORTURE.glob("*.dat")) == sorted(EXPECTED)
    assert len(EXPECTED) == 49


@pytest.mark.parametrize("tag", sorted(EXPECTED))
def test_outcome(tag: str) -> None:
    _section, expected, _note = EXPECTED[tag]
    assert _outcome((TORTURE / f"{tag}.dat").read_bytes()) == expected


def _load(tag: str) -> Request | Response:
    return parse_message((TORTURE / f"{tag}.dat").read_bytes())


def _req(tag: str) -> Request:
    msg = _load(tag)
    assert isinstance(msg, Request)
    return msg


def test_wsinv_values() -> None:
    req = _req("wsinv")
    assert req.method == "INVITE"
    assert fields.to(req).tag == "1918181833n"
    frm = fields.from_(req)
    assert frm.tag == "98asjd8"
    assert frm.display_name == 'J Rosenberg \\"'
    assert [v.branch for v in fields.vias(req)] == ["390skdjuw", "z9hG4bK9ikj8", "z9hG4bK30239"]
    assert fields.vias(req)[1].transport == "TCP"
    assert fields.cseq(req) == fields.CSeq(9, "INVITE")
    assert req.headers.get("Max-Forwards") == "0068"
    assert req.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert req.headers.get("Subject") == ""
    contact = fields.contacts(req)
    assert isinstance(contact, list)
    assert contact[0].display_name == 'Quoted string ""'
    assert contact[0].param("newparam") == "newvalue"
    assert contact[0].param("q") == "0.33"
    assert len(req.body) == 150


def test_intmeth_values() -> None:
    req = _req("intmeth")
    assert req.method == "!interesting-Method0123456789_*+`.%indeed'~"
    uri = parse_uri(req.uri)
    assert isinstance(uri, SipUri)
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert fields.top_via(req).branch == "z9hG4bK-.!%66*_+`'~"
    assert fields.to(req).display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"


def test_esc01_and_escnull_unescape_users() -> None:
    uri = parse_uri(_req("esc01").uri)
    assert isinstance(uri, SipUri)
    assert (uri.user, uri.host) == ("sips:user@example.com", "example.net")
    assert str(uri) == "sip:sips%3Auser%40example.com@example.net"
    esc = _req("escnull")
    to_uri = fields.to(esc).uri
    assert isinstance(to_uri, SipUri) and to_uri.user == "null-\x00-null"
    contacts = fields.contacts(esc)
    assert isinstance(contacts, list)
    assert [c.uri.user for c in contacts if isinstance(c.uri, SipUri)] == ["\x00", "\x00\x00"]


def test_esc02_has_two_contacts_not_three() -> None:
    req = _req("esc02")
    assert req.method == "RE%47IST%45R"
    assert fields.to(req).display_name == "%Z%45"
    contacts = fields.contacts(req)
    assert isinstance(contacts, list) and len(contacts) == 2


def test_semiuri_user_holds_semicolon() -> None:
    uri = parse_uri(_req("semiuri").uri)
    assert isinstance(uri, SipUri) and uri.user == "user;par=u@example.net"
    assert uri.host == "example.com" and uri.params == ()


def test_dblreq_ignores_trailing_octets() -> None:
    req = _req("dblreq")
    assert req.method == "REGISTER" and req.body == b""


def test_mpart01_body_is_exact() -> None:
    req = _req("mpart01")
    assert len(req.body) == int(req.headers.get("Content-Length") or -1)


def test_transports_keep_unknown_names() -> None:
    req = _req("transports")
    assert [v.transport for v in fields.vias(req)] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]


def test_reasons() -> None:
    unreason = _load("unreason")
    assert isinstance(unreason, Response)
    assert unreason.reason.startswith("= 2**3 * 5**2 но сто девяносто")
    noreason = _load("noreason")
    assert isinstance(noreason, Response) and noreason.reason == ""


def test_cparam_placement() -> None:
    c1 = fields.contacts(_req("cparam01"))
    c2 = fields.contacts(_req("cparam02"))
    assert isinstance(c1, list) and isinstance(c2, list)
    assert c1[0].has_param("unknownparam") and isinstance(c1[0].uri, SipUri)
    assert not c1[0].uri.has_param("unknownparam")
    assert isinstance(c2[0].uri, SipUri) and c2[0].uri.has_param("unknownparam")
    assert not c2[0].has_param("unknownparam")


def test_regescrt_route_header() -> None:
    contacts = fields.contacts(_req("regescrt"))
    assert isinstance(contacts, list) and isinstance(contacts[0].uri, SipUri)
    assert contacts[0].uri.header("Route") == "<sip:sip.example.com>"


def test_unknown_schemes_are_opaque() -> None:
    assert parse_uri(_req("unkscm").uri) == AbsoluteUri(
        "nobodyknowsthisscheme", "totallyopaquecontent"
    )
    assert isinstance(fields.to(_req("unksm2")).uri, AbsoluteUri)


def test_zeromf_as_proxy_is_483() -> None:
    data = (TORTURE / "zeromf.dat").read_bytes()
    assert _outcome(data, is_proxying=True) == 483


def test_bext01_lists_unsupported_and_proxy_require_only_as_proxy() -> None:
    req = _req("bext01")
    response = checks(req)
    assert response is not None
    assert response.headers.get("Unsupported") == "nothingSupportsThis, nothingSupportsThisEither"
    response = checks(req, is_proxying=True)
    assert response is not None
    assert "noProxiesSupportThis" in (response.headers.get("Unsupported") or "")


def test_invut_and_sdp01_list_accept() -> None:
    for tag, status in (("invut", 415), ("sdp01", 406)):
        response = checks(_req(tag))
        assert response is not None and response.status == status
        assert "application/sdp" in (response.headers.get("Accept") or "")


def _with_content_length(data: bytes) -> bytes:
    """Make a datagram-only message frameable: Content-Length = the body actually used."""
    msg = parse_message(data)
    head, _, _ = data.partition(b"\r\n\r\n")
    head = re.sub(rb"\r\n(?:content-length|l)[ \t]*:[^\r\n]*", b"", head, flags=re.IGNORECASE)
    return head + b"\r\nContent-Length: %d\r\n\r\n" % len(msg.body) + msg.body


VALID = [tag for tag, (section, _, _) in EXPECTED.items() if section.startswith("3.1.1")]


@pytest.mark.parametrize("tag", VALID)
def test_valid_messages_frame_byte_by_byte(tag: str) -> None:
    wire = _with_content_length((TORTURE / f"{tag}.dat").read_bytes())
    framer = StreamFramer()
    out: list[bytes] = []
    for i in range(len(wire)):
        framer.feed(wire[i : i + 1])
        while (message := framer.next_message()) is not None:
            out.append(message)
    assert out == [wire]
    expected = parse_message(wire)
    again = parse_message(out[0])
    assert again.headers == expected.headers and again.body == expected.body
