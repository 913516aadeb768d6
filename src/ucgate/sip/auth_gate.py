"""Digest authentication of incoming requests, shared by every service (RFC 3261 §22).

The registrar, the presence server and later the B2BUA all ask the same question: who sent
this request? Keeping one gate means one challenge format, one log line and one place
where "a wrong password and an unknown user get the same answer" holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import structlog

from ucgate.sip.digest import DigestAuthenticator, UserSecret, credentials_for_realm
from ucgate.sip.errors import RemoteProtocolError
from ucgate.sip.fields import top_via
from ucgate.sip.message import Request, Response
from ucgate.sip.uas_checks import make_response

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Authenticated:
    username: str


class DigestGate:
    def __init__(
        self,
        authenticator: DigestAuthenticator,
        lookup: Callable[[str], UserSecret | None],
        to_tag: Callable[[], str],
        scope: Callable[[Request, str], tuple[int, str] | None] | None = None,
        *,
        websocket_md5_only: bool = True,
    ) -> None:
        self.auth = authenticator
        self._lookup = lookup
        self._to_tag = to_tag
        # Accounts limited to some requests (the widget's guests): given the request and
        # the proven username, None to let it through or the (status, reason) to refuse.
        self._scope = scope
        # Browser SIP stacks over RFC 7118 WebSocket do MD5 only and do not choose among
        # several challenges: JsSIP 3.x keeps the *last* WWW-Authenticate, SIP.js the
        # first. Offering them MD5 alone is the one order both can answer.
        self._websocket_md5_only = websocket_md5_only

    def challenge(self, req: Request, now: float, *, stale: bool = False) -> Response:
        resp = make_response(req, 401, to_tag=self._to_tag())
        values = self.auth.challenge(now, stale=stale)
        if self._websocket_md5_only and _over_websocket(req):
            md5 = [v for v, a in zip(values, self.auth.algorithms, strict=True) if a.value == "MD5"]
            values = md5 or values
        for value in values:
            resp.headers.add("WWW-Authenticate", value)
        return resp

    def check(self, req: Request, now: float) -> Authenticated | Response:
        """The authenticated user, or the response to send instead (401 / 400)."""
        # §22.3: a request may carry credentials for several realms; use ours.
        credentials = credentials_for_realm(req.headers.get_all("Authorization"), self.auth.realm)
        if credentials is None:
            return self.challenge(req, now)
        result = self.auth.verify(
            method=req.method,
            request_uri=req.uri,
            authorization=credentials,
            lookup=self._lookup,
            now=now,
        )
        if result.ok and result.username is not None:
            refused = self._scope(req, result.username) if self._scope is not None else None
            if refused is not None:
                # §21.4.4: the identity is known and lacks the right; no new challenge.
                log.info("auth.out_of_scope", method=req.method, user=result.username)
                return make_response(req, refused[0], refused[1], to_tag=self._to_tag())
            return Authenticated(result.username)
        log.info(
            "auth.failed",
            method=req.method,
            reason=result.reason.value if result.reason else None,
            user=result.claimed_username,
        )
        if result.bad_request:
            # RFC 7616 §3.4: malformed credentials or a uri that is not ours.
            return make_response(req, 400, "Bad Authorization", to_tag=self._to_tag())
        return self.challenge(req, now, stale=result.stale)


def _over_websocket(req: Request) -> bool:
    """The request's last hop was a WebSocket (top Via ``SIP/2.0/WS`` or ``WSS``)."""
    try:
        return top_via(req).transport in ("WS", "WSS")
    except RemoteProtocolError:
        return False
