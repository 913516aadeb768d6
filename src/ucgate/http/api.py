"""The node's HTTP application."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping

from aiohttp import web

from ucgate import __version__
from ucgate.calls.record_store import CallRecordStore
from ucgate.http.auth import ADMIN, API_KEYS, ApiKeys, require
from ucgate.http.calls_api import add_calls_routes
from ucgate.http.openapi import build_openapi
from ucgate.http.presence_api import (
    PresenceSource,
    StreamHub,
    StreamSettings,
    add_presence_routes,
    api_errors,
)
from ucgate.http.sessions_api import add_sessions_routes
from ucgate.media.anchor import MediaAnchor
from ucgate.presence.model import BUILTIN_STATUSES, StatusDef
from ucgate.sessions.service import SessionService
from ucgate.store.location import LocationStore
from ucgate.web.routes import WebSetup, add_web_routes

STORE_KEY = web.AppKey("store", LocationStore)
OPENAPI_KEY = web.AppKey("openapi", bytes)
STREAM_HUB_KEY = web.AppKey("stream_hub", StreamHub)
# The media anchor, or None (AppKey types must be classes: the Protocol, looked up as object).
MEDIA_KEY: web.AppKey[MediaAnchor | None] = web.AppKey("media")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "version": __version__})


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI_KEY], content_type="application/json")


@require(ADMIN)
async def media_stats(request: web.Request) -> web.Response:
    """The media anchor's counters: anchored sessions, workers (embedded), backend."""
    anchor = request.app[MEDIA_KEY]
    body: dict[str, object] = {"backend": "none", "sessions": 0}
    if anchor is not None:
        body = anchor.stats()
    return web.json_response(body)


@require(ADMIN)
async def list_registrations(request: web.Request) -> web.Response:
    store = request.app[STORE_KEY]
    now = time.time()
    out = []
    for aor in sorted(await store.aors()):
        bindings = await store.lookup(aor, now)
        out.append(
            {
                "aor": aor,
                "contacts": [
                    {
                        "contact": b.contact,
                        "expires": b.remaining(now),
                        "q": b.q,
                        "source": b.source,
                        "node": b.node_id,
                        "user_agent": b.user_agent,
                    }
                    for b in bindings
                ],
            }
        )
    return web.json_response({"registrations": out})


def build_app(
    store: LocationStore,
    api_keys: ApiKeys,
    *,
    presence: PresenceSource | None = None,
    statuses: Mapping[str, StatusDef] = BUILTIN_STATUSES,
    stream_settings: StreamSettings | None = None,
    calls: CallRecordStore | None = None,
    sessions: SessionService | None = None,
    web_setup: WebSetup | None = None,
    media: MediaAnchor | None = None,
) -> web.Application:
    """The HTTP app. With ``presence`` (a started ``PresenceService``) the /v1/presence
    routes are mounted; ``statuses`` is the same status table the service was given.
    With ``calls`` (a call record store) the /v1/calls routes are mounted."""
    app = web.Application(middlewares=[api_errors])
    app[STORE_KEY] = store
    app[API_KEYS] = api_keys
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/v1/registrations", list_registrations)
    app[MEDIA_KEY] = media
    app.router.add_get("/v1/media", media_stats)
    if presence is not None:
        app[STREAM_HUB_KEY] = add_presence_routes(
            app, presence, statuses=statuses, settings=stream_settings
        )
    if calls is not None:
        add_calls_routes(app, calls)
    if sessions is not None:
        # With ``sessions`` (a started SessionService) the /v1/sessions, /v1/metrics,
        # /v1/reports and /v1/events routes are mounted.
        add_sessions_routes(app, sessions)
        if web_setup is not None:
            # The browser pages, agent login and the widget ([web]) build on sessions.
            add_web_routes(app, web_setup, sessions)
    document = build_openapi(
        version=__version__,
        presence=presence is not None,
        statuses=list(statuses),
        calls=calls is not None,
        sessions=sessions is not None,
        web=web_setup is not None and sessions is not None,
        web_pages=web_setup is not None and sessions is not None and web_setup.config.pages,
    )
    app[OPENAPI_KEY] = json.dumps(document, indent=1).encode()
    return app
