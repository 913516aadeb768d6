"""Short-lived bearer tokens for the browser pages, signed with HMAC-SHA256.

A token is ``ucg1.<payload>.<mac>``: ``payload`` is base64url of compact JSON
``{"k": kind, "s": subject, "e": expiry}``, ``mac`` base64url of HMAC-SHA256(key,
"ucg1." + payload). Stateless, so any node holding ``auth.secret`` verifies a token another
node issued; the price is that a token cannot be revoked before it expires, which is why
lifetimes are short (``web.token_ttl``). Sans-IO: time is the ``now`` argument (epoch
seconds, since tokens cross nodes).

Kinds: ``agent`` (subject = agent id, from POST /v1/auth/login) and ``widget`` (subject =
session id, from POST /v1/widget/sessions).
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import json
from dataclasses import dataclass

__all__ = ["PREFIX", "TokenClaims", "TokenKind", "TokenSigner", "derive_key"]

PREFIX = "ucg1"
# Far larger than any token we issue; a longer string is rejected before any decoding.
MAX_TOKEN_LENGTH = 1024


class TokenKind(enum.StrEnum):
    AGENT = "agent"
    WIDGET = "widget"


@dataclass(frozen=True, slots=True)
class TokenClaims:
    kind: TokenKind
    subject: str
    expires_at: int


def derive_key(secret: str, label: str) -> bytes:
    """A key for one purpose from ``auth.secret``: a token key never equals the nonce key
    or the guest-password key, so one leaking says nothing about the others."""
    return hmac.new(secret.encode(), f"ucgate:{label}".encode(), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("token key must be at least 16 bytes")
        self._key = key

    def _mac(self, signed: str) -> str:
        return _b64(hmac.new(self._key, signed.encode("ascii"), hashlib.sha256).digest())

    def issue(self, kind: TokenKind, subject: str, *, now: float, ttl: int) -> str:
        return self.encode(TokenClaims(kind, subject, int(now) + ttl))

    def encode(self, claims: TokenClaims) -> str:
        payload = _b64(
            json.dumps(
                {"k": claims.kind.value, "s": claims.subject, "e": claims.expires_at},
                separators=(",", ":"),
            ).encode()
        )
        signed = f"{PREFIX}.{payload}"
        return f"{signed}.{self._mac(signed)}"

    def verify(self, token: str, *, now: float) -> TokenClaims | None:
        """The claims of a token we signed that has not expired; None for anything else
        (wrong signature, malformed, expired: the caller answers all of them alike)."""
        if len(token) > MAX_TOKEN_LENGTH or not token.isascii():
            return None
        prefix, _, rest = token.partition(".")
        payload, _, mac = rest.partition(".")
        if prefix != PREFIX or not payload or not mac:
            return None
        # Check the MAC first, in constant time: nothing about an unsigned payload is parsed.
        if not hmac.compare_digest(self._mac(f"{PREFIX}.{payload}"), mac):
            return None
        try:
            data = json.loads(_unb64(payload))
            kind = TokenKind(data["k"])
            subject = data["s"]
            expires_at = data["e"]
        except (ValueError, KeyError, TypeError, binascii.Error):
            return None
        if not isinstance(subject, str) or not isinstance(expires_at, int):
            return None
        if now >= expires_at:
            return None
        return TokenClaims(kind, subject, expires_at)
