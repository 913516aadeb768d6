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
    ) -> None:
        self.auth = authenticator
        self._lookup = lookup
        self._to_tag = to_tag

    def challenge(self, req: Request, now: float, *, stale: bool = False) -> Response:
        resp = make_response(req, 401, to_tag=self._to_tag())
        for value in self.auth.challenge(now, stale=stale):
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
