"""Guest SIP accounts for the customer web widget: one per session, derived, never stored.

The widget's "call me in the browser" button places a WebRTC call with JsSIP, which only
speaks Digest (RFC 3261 §22). Rather than minting and storing an account per session, the
credentials are derived: user ``guest.<session id>``, password = HMAC-SHA256(key, session id)
with the key derived from ``auth.secret`` (hex, first 32 digits). Every node holding the
secret verifies them; only ucgate can issue them (POST /v1/widget/sessions hands them to the
session's own page).

A guest is scoped (see :func:`guest_scope`): it may not REGISTER, SUBSCRIBE or PUBLISH, and
its only INVITE is to ``sip:session@<domain>`` carrying ``X-UCGate-Session: <its session
id>``; the B2BUA routes that to the session's agent.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from ucgate.sip.digest import UserSecret
from ucgate.sip.errors import RemoteProtocolError
from ucgate.sip.message import Request
from ucgate.sip.uri import SipUri, parse_uri

__all__ = [
    "GUEST_PREFIX",
    "SESSION_HEADER",
    "SESSION_USER",
    "GuestAccounts",
    "guest_password",
    "guest_scope",
    "guest_session_id",
    "guest_user",
]

GUEST_PREFIX = "guest."
# The Request-URI user a guest calls, and the header naming its session.
SESSION_USER = "session"
SESSION_HEADER = "X-UCGate-Session"
# Session ids are uuid4().hex (sessions/service.py); anything else is not a guest.
_SESSION_ID = re.compile(r"^[0-9a-f]{32}$")


def guest_user(session_id: str) -> str:
    return f"{GUEST_PREFIX}{session_id}"


def guest_session_id(username: str) -> str | None:
    """The session a guest username belongs to; None if it is not a guest's."""
    if not username.startswith(GUEST_PREFIX):
        return None
    session_id = username[len(GUEST_PREFIX) :]
    return session_id if _SESSION_ID.match(session_id) else None


def guest_password(key: bytes, session_id: str) -> str:
    return hmac.new(key, session_id.encode(), hashlib.sha256).hexdigest()[:32]


class GuestAccounts:
    """Digest secrets of guest users, computed on demand (a guest costs no memory)."""

    def __init__(self, key: bytes, realm: str) -> None:
        self._key = key
        self._realm = realm

    def password(self, session_id: str) -> str:
        return guest_password(self._key, session_id)

    def secret(self, username: str) -> UserSecret | None:
        session_id = guest_session_id(username)
        if session_id is None:
            return None
        return UserSecret.from_password(username, self._realm, self.password(session_id))


def guest_scope(req: Request, username: str, domain: str) -> tuple[int, str] | None:
    """None when ``username`` may send ``req``; else the (status, reason) to refuse with.

    Agents, trunks and applications are not guests and pass unchanged. A guest that proved
    its password is still refused everything but the one INVITE its widget places: 403,
    the answer for an authenticated identity that lacks the right (RFC 3261 §21.4.4).
    """
    session_id = guest_session_id(username)
    if session_id is None:
        return None
    if req.method != "INVITE":
        return 403, "Guests may only call their session"
    try:
        uri = parse_uri(req.uri)
    except RemoteProtocolError:
        return 403, "Guests may only call their session"
    if not (
        isinstance(uri, SipUri) and uri.user == SESSION_USER and uri.host.lower() == domain.lower()
    ):
        return 403, "Guests may only call their session"
    if (req.headers.get(SESSION_HEADER) or "").strip() != session_id:
        return 403, f"{SESSION_HEADER} must name the guest's session"
    return None
