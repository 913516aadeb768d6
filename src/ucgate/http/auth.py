"""API keys with scopes (`Authorization: Bearer <key>`)."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(status: int, message: str, **extra: object) -> web.Response:
    return web.json_response(
        {"error": {"status": status, "message": message, **extra}}, status=status
    )


class ApiKeys:
    def __init__(self, keys: Iterable[tuple[str, frozenset[str]]]) -> None:
        self._keys = [(k.encode(), scopes) for k, scopes in keys]

    def scopes_for(self, presented: str) -> frozenset[str] | None:
        raw = presented.encode()
        found: frozenset[str] | None = None
        # Compare against every key in constant time so timing says nothing about prefixes.
        for key, scopes in self._keys:
            if hmac.compare_digest(key, raw):
                found = scopes
        return found


def require(scope: str) -> Callable[[Handler], Handler]:
    """Decorator: 401 without a valid key, 403 without ``scope`` (``admin`` implies all)."""

    def wrap(handler: Handler) -> Handler:
        async def inner(request: web.Request) -> web.StreamResponse:
            keys: ApiKeys = request.app["api_keys"]
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return json_error(401, "missing bearer API key", field="Authorization")
            scopes = keys.scopes_for(token.strip())
            if scopes is None:
                return json_error(401, "unknown API key", field="Authorization")
            if scope not in scopes and "admin" not in scopes:
                return json_error(403, f"API key lacks scope {scope!r}")
            return await handler(request)

        return inner

    return wrap
