"""Guest SIP accounts of the web widget: derived credentials, accepted by the digest gate,
held to the one INVITE their widget places."""

from __future__ import annotations

import pytest

from ucgate.registrar.guests import (
    GuestAccounts,
    guest_password,
    guest_scope,
    guest_session_id,
    guest_user,
)
from ucgate.sip.auth_gate import Authenticated, DigestGate
from ucgate.sip.digest import DigestAuthenticator, DigestChallenge, build_authorization
from ucgate.sip.message import Request, Response
from ucgate.sip.parser import parse_message
from ucgate.web.tokens import derive_key

DOMAIN = "example.test"
KEY = derive_key("test-shared-nonce-secret", "guest-sip")
SID = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"
NOW = 1_700_000_000.0


def request(
    method: str, uri: str, user: str, *, session: str | None = None, auth: str | None = None
) -> Request:
    lines = [
        f"{method} {uri} SIP/2.0",
        "Via: SIP/2.0/WS abc.invalid;branch=z9hG4bK776asdhds",
        "Max-Forwards: 70",
        f"From: <sip:{user}@{DOMAIN}>;tag=1928301774",
        f"To: <{uri}>",
        "Call-ID: a84b4c76e66710",
        f"CSeq: 1 {method}",
        "Contact: <sip:x@abc.invalid;transport=ws>",
    ]
    if session is not None:
        lines.append(f"X-UCGate-Session: {session}")
    if auth is not None:
        lines.append(f"Authorization: {auth}")
    lines.append("Content-Length: 0")
    msg = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(msg, Request)
    return msg


def test_names_and_passwords() -> None:
    assert guest_user(SID) == f"guest.{SID}"
    assert guest_session_id(f"guest.{SID}") == SID
    for not_guest in ("alice", "guest.", "guest.xyz", f"guest.{SID.upper()}", f"guest.{SID}0"):
        assert guest_session_id(not_guest) is None
    password = guest_password(KEY, SID)
    assert len(password) == 32 and password == guest_password(KEY, SID)
    assert password != guest_password(KEY, OTHER)
    assert password != guest_password(derive_key("another", "guest-sip"), SID)


def test_secret_only_for_guest_names() -> None:
    guests = GuestAccounts(KEY, DOMAIN)
    assert guests.secret("alice") is None
    assert guests.secret("guest.nope") is None
    secret = guests.secret(guest_user(SID))
    assert secret is not None and secret.ha1_md5 is not None


CALL = f"sip:session@{DOMAIN}"


@pytest.mark.parametrize(
    ("method", "uri", "session", "allowed"),
    [
        ("INVITE", CALL, SID, True),
        ("INVITE", "sip:session@EXAMPLE.test", SID, True),
        ("REGISTER", f"sip:{DOMAIN}", None, False),
        ("SUBSCRIBE", f"sip:alice@{DOMAIN}", SID, False),
        ("PUBLISH", f"sip:guest.{SID}@{DOMAIN}", SID, False),
        ("INVITE", f"sip:alice@{DOMAIN}", SID, False),  # straight to an agent
        ("INVITE", "sip:+15550100@example.test", SID, False),  # out through a trunk
        ("INVITE", "sip:session@other.test", SID, False),
        ("INVITE", CALL, None, False),
        ("INVITE", CALL, OTHER, False),  # another customer's session
    ],
)
def test_scope(method: str, uri: str, session: str | None, allowed: bool) -> None:
    req = request(method, uri, guest_user(SID), session=session)
    refused = guest_scope(req, guest_user(SID), DOMAIN)
    assert (refused is None) is allowed
    if refused is not None:
        assert refused[0] == 403


def test_accounts_are_not_scoped() -> None:
    assert guest_scope(request("REGISTER", f"sip:{DOMAIN}", "alice"), "alice", DOMAIN) is None


def _gate() -> DigestGate:
    guests = GuestAccounts(KEY, DOMAIN)
    auth = DigestAuthenticator(DOMAIN, secret_key=b"k" * 32)
    return DigestGate(
        auth,
        guests.secret,
        lambda: "tag",
        scope=lambda req, user: guest_scope(req, user, DOMAIN),
    )


def _answer(gate: DigestGate, method: str, uri: str, password: str, **kw: str) -> object:
    user = guest_user(SID)
    first = gate.check(request(method, uri, user, **kw), NOW)
    assert isinstance(first, Response) and first.status == 401
    challenge = DigestChallenge.parse(first.headers.get_all("WWW-Authenticate")[0])
    auth = build_authorization(
        challenge, method=method, uri=uri, username=user, cnonce="c0ffee", password=password
    )
    return gate.check(request(method, uri, user, auth=auth, **kw), NOW)


def test_gate_accepts_the_guests_invite_and_refuses_the_rest() -> None:
    gate = _gate()
    password = guest_password(KEY, SID)
    ok = _answer(gate, "INVITE", CALL, password, session=SID)
    assert ok == Authenticated(guest_user(SID))
    # Proven identity, no right: 403, not a new challenge (RFC 3261 §21.4.4).
    reg = _answer(gate, "REGISTER", f"sip:{DOMAIN}", password)
    assert isinstance(reg, Response) and reg.status == 403
    other = _answer(gate, "INVITE", CALL, password, session=OTHER)
    assert isinstance(other, Response) and other.status == 403
    # Another session's password is just a wrong password.
    wrong = _answer(gate, "INVITE", CALL, guest_password(KEY, OTHER), session=SID)
    assert isinstance(wrong, Response) and wrong.status == 401
