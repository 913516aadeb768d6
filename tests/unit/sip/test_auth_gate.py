"""The digest gate's challenge choice per transport."""

from __future__ import annotations

import pytest

from ucgate.sip.auth_gate import DigestGate
from ucgate.sip.digest import DigestAlgorithm, DigestAuthenticator, DigestChallenge
from ucgate.sip.message import Request
from ucgate.sip.parser import parse_message

NOW = 1_800_000_000.0


def register(transport: str) -> Request:
    msg = parse_message(
        (
            "REGISTER sip:example.test SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport} h.invalid;branch=z9hG4bK1\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:alice@example.test>;tag=1\r\n"
            "To: <sip:alice@example.test>\r\nCall-ID: c1\r\nCSeq: 1 REGISTER\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
    )
    assert isinstance(msg, Request)
    return msg


def gate(*algorithms: DigestAlgorithm, md5_only: bool = True) -> DigestGate:
    auth = DigestAuthenticator("example.test", secret_key=b"k" * 32, algorithms=algorithms)
    return DigestGate(auth, lambda _user: None, lambda: "t", websocket_md5_only=md5_only)


def offered(g: DigestGate, transport: str) -> list[str]:
    resp = g.challenge(register(transport), NOW)
    return [
        DigestChallenge.parse(v).algorithm.value for v in resp.headers.get_all("WWW-Authenticate")
    ]


BOTH = (DigestAlgorithm.MD5, DigestAlgorithm.SHA256)


@pytest.mark.parametrize("transport", ["UDP", "TCP", "TLS"])
def test_phones_get_every_algorithm_in_order(transport: str) -> None:
    assert offered(gate(*BOTH), transport) == ["MD5", "SHA-256"]


@pytest.mark.parametrize("transport", ["WS", "WSS"])
def test_browsers_get_md5_alone(transport: str) -> None:
    # JsSIP keeps the last challenge, SIP.js the first: MD5 alone suits both.
    assert offered(gate(*BOTH), transport) == ["MD5"]
    assert offered(gate(DigestAlgorithm.SHA256, DigestAlgorithm.MD5), transport) == ["MD5"]


def test_the_quirk_can_be_switched_off_and_never_empties_the_challenge() -> None:
    assert offered(gate(*BOTH, md5_only=False), "WS") == ["MD5", "SHA-256"]
    assert offered(gate(DigestAlgorithm.SHA256), "WS") == ["SHA-256"]
