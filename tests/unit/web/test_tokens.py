"""Bearer tokens of the browser pages: HMAC-signed, expiring, nothing parsed unsigned."""

from __future__ import annotations

import base64
import json

from hypothesis import given
from hypothesis import strategies as st

from ucgate.web.tokens import TokenClaims, TokenKind, TokenSigner, derive_key

KEY = derive_key("test-shared-nonce-secret", "web-token")
NOW = 1_700_000_000.0


def test_roundtrip_and_expiry_at_the_second() -> None:
    signer = TokenSigner(KEY)
    token = signer.issue(TokenKind.AGENT, "alice", now=NOW, ttl=600)
    assert token.startswith("ucg1.")
    claims = signer.verify(token, now=NOW + 599.9)
    assert claims == TokenClaims(TokenKind.AGENT, "alice", int(NOW) + 600)
    assert signer.verify(token, now=NOW + 600) is None


def test_another_key_or_any_changed_byte_is_refused() -> None:
    signer = TokenSigner(KEY)
    token = signer.issue(TokenKind.WIDGET, "a" * 32, now=NOW, ttl=600)
    assert TokenSigner(derive_key("another-secret", "web-token")).verify(token, now=NOW) is None
    for i in range(len(token)):
        flipped = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]
        assert signer.verify(flipped, now=NOW) is None, i


def test_a_forged_payload_with_a_longer_expiry_is_refused() -> None:
    signer = TokenSigner(KEY)
    token = signer.issue(TokenKind.AGENT, "alice", now=NOW, ttl=60)
    prefix, _payload, mac = token.split(".")
    forged = base64.urlsafe_b64encode(
        json.dumps({"k": "agent", "s": "alice", "e": int(NOW) + 10**6}).encode()
    ).rstrip(b"=")
    assert signer.verify(f"{prefix}.{forged.decode()}.{mac}", now=NOW + 120) is None


def test_labels_give_independent_keys() -> None:
    assert derive_key("s", "web-token") != derive_key("s", "guest-sip")
    agent = TokenSigner(derive_key("s", "web-token")).issue(
        TokenKind.AGENT, "alice", now=NOW, ttl=60
    )
    assert TokenSigner(derive_key("s", "guest-sip")).verify(agent, now=NOW) is None


def test_signed_but_malformed_claims_are_refused() -> None:
    signer = TokenSigner(KEY)
    for claims in ({"k": "root", "s": "x", "e": 2**40}, {"k": "agent", "s": 5, "e": 2**40}, [1]):
        payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        signed = f"ucg1.{payload}"
        assert signer.verify(f"{signed}.{signer._mac(signed)}", now=NOW) is None


@given(st.text(max_size=2000))
def test_any_string_is_refused_without_raising(text: str) -> None:
    assert TokenSigner(KEY).verify(text, now=NOW) is None
