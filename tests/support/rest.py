"""The REST API of a test node, asynchronously, with the node's admin key."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from tests.support.ucgate_process import UcgateProcess


async def api(
    node: UcgateProcess, method: str, path: str, body: object = None
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {node.api_key}"}
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method, f"http://127.0.0.1:{node.http_port}{path}", json=body, headers=headers
        ) as resp,
    ):
        return resp.status, await resp.json()


async def accepted_chat(
    node: UcgateProcess,
    customer: dict[str, Any],
    *,
    queue: str = "support",
    context: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A chat session created through the API, its first ``offer_made`` event (read from
    ``/v1/events``, opened before the session is created so the offer cannot be missed),
    and the offered agent's accept. Returns ``(session, offer)``."""
    url = f"http://127.0.0.1:{node.http_port}/v1/events"
    headers = {"Authorization": f"Bearer {node.api_key}"}
    body: dict[str, Any] = {"customer": customer, "media": "chat", "queue": queue}
    if context is not None:
        body["context"] = context
    async with aiohttp.ClientSession() as http, http.ws_connect(url, headers=headers) as ws:
        status, session = await api(node, "POST", "/v1/sessions", body)
        assert status == 201, session
        while (offer := json.loads((await ws.receive(timeout=15)).data))["type"] != "offer_made":
            pass
    path = f"/v1/sessions/{session['id']}/channels/{offer['channel_id']}/accept"
    status, accepted = await api(node, "POST", path, {"agent": offer["agent"]})
    assert status == 200, accepted
    return session, offer
