"""API keys with scopes (`Authorization: Bearer <key>`).

A key resolves to a :class:`Principal`: its scopes, the name shown in logs and audit
fields instead of the key, and (optionally) the agent the key belongs to. Handlers
decorated with :func:`require` find the principal at ``request[PRINCIPAL]``.

Browsers cannot set headers on ``EventSource`` or ``WebSocket`` requests, so routes
that serve them may also accept the key as ``?access_token=`` (the parameter name of
RFC 6750 §2.3). Query strings end up in proxy logs and browser history, which is why
only the stream route opts in and the header is tried first.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from ucgate.config import ApiKey

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ADMIN = "admin"
PRESENCE_READ = "presence:read"
PRESENCE_WRITE = "presence:write"
QUERY_TOKEN = "access_token"


def json_error(status: int, message: str, **extra: object) -> web.Response:
    return web.json_response(
        {"error": {"status": status, "message": message, **extra}}, status=status
    )


@dataclass(frozen=True, slots=True)
class Principal:
    """Who presented a valid key."""

    scopes: frozenset[str]
    name: str | None = None
    # Set when the key belongs to one agent (config ``api_keys[].agent``) or is an agent's
    # login token (POST /v1/auth/login).
    agent: str | None = None
    # Set for a widget token: the one session it may act on (POST /v1/widget/sessions).
    session: str | None = None

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or ADMIN in self.scopes

    @property
    def label(self) -> str:
        """A printable identity for audit fields; never the key itself."""
        if self.name:
            return self.name
        if self.agent:
            return f"agent:{self.agent}"
        return "api-key"


class ApiKeys:
    """The configured keys. Each entry is ``(key, scopes)`` or ``(key, Principal)``."""

    def __init__(self, keys: Iterable[tuple[str, frozenset[str] | Principal]]) -> None:
        self._keys: list[tuple[bytes, Principal]] = []
        for key, value in keys:
            principal = value if isinstance(value, Principal) else Principal(frozenset(value))
            self._keys.append((key.encode(), principal))

    @classmethod
    def from_config(cls, api_keys: Iterable[ApiKey]) -> ApiKeys:
        return cls(
            (
                k.key.get_secret_value(),
                Principal(frozenset(str(s) for s in k.scopes), name=k.name, agent=k.agent),
            )
            for k in api_keys
        )

    def principal_for(self, presented: str) -> Principal | None:
        raw = presented.encode()
        found: Principal | None = None
        # Compare against every key in constant time so timing says nothing about prefixes.
        for key, principal in self._keys:
            if hmac.compare_digest(key, raw):
                found = principal
        return found

    def scopes_for(self, presented: str) -> frozenset[str] | None:
        principal = self.principal_for(presented)
        return None if principal is None else principal.scopes


class TokenVerifier(Protocol):
    """Signed, expiring bearer tokens accepted next to the configured keys (the browser
    pages' login and widget tokens, :mod:`ucgate.web.routes`)."""

    def principal_for_token(self, token: str, now: float) -> Principal | None: ...


API_KEYS = web.AppKey("api_keys", ApiKeys)
TOKENS = web.AppKey("tokens", TokenVerifier)
PRINCIPAL = web.RequestKey("principal", Principal)


def authenticate(
    request: web.Request, *, allow_query_token: bool = False
) -> Principal | web.Response:
    """The request's principal, or the 401 response to send."""
    keys = request.app[API_KEYS]
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _unauthorized("missing bearer API key", "Authorization")
        field = "Authorization"
    elif allow_query_token and QUERY_TOKEN in request.query:
        token = request.query[QUERY_TOKEN]
        field = QUERY_TOKEN
    else:
        return _unauthorized("missing bearer API key", "Authorization")
    principal = keys.principal_for(token.strip())
    verifier = request.app.get(TOKENS)
    if principal is None and verifier is not None:
        principal = verifier.principal_for_token(token.strip(), time.time())
    if principal is None:
        return _unauthorized("unknown API key", field)
    return principal


def _unauthorized(message: str, field: str) -> web.Response:
    response = json_error(401, message, field=field)
    # RFC 6750 §3: a 401 names the scheme the client should use.
    response.headers["WWW-Authenticate"] = 'Bearer realm="ucgate"'
    return response


def require(scope: str, *, allow_query_token: bool = False) -> Callable[[Handler], Handler]:
    """Decorator: 401 without a valid key, 403 without ``scope`` (``admin`` implies all)."""

    def wrap(handler: Handler) -> Handler:
        async def inner(request: web.Request) -> web.StreamResponse:
            principal = authenticate(request, allow_query_token=allow_query_token)
            if isinstance(principal, web.Response):
                return principal
            if not principal.allows(scope):
                return json_error(403, f"API key lacks scope {scope!r}")
            request[PRINCIPAL] = principal
            return await handler(request)

        inner.__name__ = handler.__name__
        inner.__doc__ = handler.__doc__
        return inner

    return wrap
