"""The node's HTTP application."""

from __future__ import annotations

import time

from aiohttp import web

from ucgate import __version__
from ucgate.http.auth import ApiKeys, require
from ucgate.store.location import LocationStore

STORE_KEY = web.AppKey("store", LocationStore)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "version": __version__})


@require("admin")
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


def build_app(store: LocationStore, api_keys: ApiKeys) -> web.Application:
    app = web.Application()
    app[STORE_KEY] = store
    app["api_keys"] = api_keys
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/v1/registrations", list_registrations)
    return app
