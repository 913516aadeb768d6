"""The sessions API over a real aiohttp test server and a real SessionService."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from ucgate.http.api import build_app
from ucgate.http.auth import ApiKeys, Principal
from ucgate.sessions.model import Media
from ucgate.sessions.routing import QueueSpec, RoutingEngine
from ucgate.sessions.service import AgentProfile, SessionService
from ucgate.sessions.store import MemorySessionStore
from ucgate.store.memory import MemoryLocationStore

KEYS = {
    "admin": ("admin-key-0000001", None),
    "sessions:read": ("reader-key-000001", None),
    "sessions:write": ("writer-key-000001", None),
    "metrics:read": ("metrics-key-00001", None),
    "agent": ("alice-key-0000001", "alice"),
}
QUEUES = [QueueSpec("support", frozenset({Media.CHAT, Media.VOICE}))]


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name][0]}"}


class Clock:
    now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    service = SessionService(
        MemorySessionStore(),
        RoutingEngine(QUEUES),
        agents={"alice": AgentProfile({"voice": 1, "chat": 1})},
        clock=Clock(),
    )
    await service.start()
    scopes = {"agent": "sessions:write"}
    keys = ApiKeys(
        (key, Principal(frozenset({scopes.get(name, name)}), name=name, agent=agent))
        for name, (key, agent) in KEYS.items()
    )
    app = build_app(MemoryLocationStore(node_id="n"), keys, sessions=service)
    async with TestClient(TestServer(app)) as c:
        yield c
    await service.stop()


async def create(client: TestClient[Any, Any], **extra: Any) -> dict[str, Any]:
    body = {
        "customer": {"id": "c1", "phone": "+15550001"},
        "media": "chat",
        "queue": "support",
        "context": {"ivr_path": ["billing", "order"], "order": "A-17"},
        **extra,
    }
    r = await client.post("/v1/sessions", json=body, headers=auth("sessions:write"))
    assert r.status == 201, await r.text()
    data: dict[str, Any] = await r.json()
    return data


async def test_create_routes_and_get(client: TestClient[Any, Any]) -> None:
    s = await create(client)
    assert s["channels"][0]["state"] == "offered" and s["channels"][0]["agent"] == "alice"
    assert s["pin"] and s["context"]["order"] == "A-17"
    r = await client.get(f"/v1/sessions/{s['id']}", headers=auth("sessions:read"))
    assert r.status == 200 and (await r.json())["id"] == s["id"]
    r = await client.get("/v1/sessions", headers=auth("sessions:read"))
    assert [x["id"] for x in (await r.json())["sessions"]] == [s["id"]]


async def test_auth_and_scopes(client: TestClient[Any, Any]) -> None:
    r = await client.post("/v1/sessions", json={})
    assert r.status == 401
    r = await client.post("/v1/sessions", json={}, headers=auth("sessions:read"))
    assert r.status == 403
    r = await client.get("/v1/sessions/x", headers=auth("metrics:read"))
    assert r.status == 403
    r = await client.get("/v1/metrics/agents", headers=auth("sessions:read"))
    assert r.status == 403
    r = await client.get("/v1/sessions/x", headers=auth("admin"))
    assert r.status == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"media": "fax", "queue": "support"}, "media"),
        ({"media": "chat"}, "queue"),
        ({"media": "chat", "queue": "nope"}, "queue"),
        ({"media": "sms", "queue": "support"}, "media"),
        ({"media": "chat", "queue": "support", "customer": {"phone": 5}}, "customer.phone"),
        ({"media": "chat", "queue": "support", "extra": 1}, "extra"),
    ],
)
async def test_bad_input_names_the_field(
    client: TestClient[Any, Any], body: dict[str, Any], field: str
) -> None:
    r = await client.post("/v1/sessions", json=body, headers=auth("sessions:write"))
    assert r.status == 422
    assert (await r.json())["error"]["field"] == field


async def test_not_json_is_400(client: TestClient[Any, Any]) -> None:
    r = await client.post("/v1/sessions", data=b"{", headers=auth("sessions:write"))
    assert r.status == 400


async def test_accept_with_agent_key_elevate_and_close(client: TestClient[Any, Any]) -> None:
    s = await create(client)
    cid = s["channels"][0]["id"]
    base = f"/v1/sessions/{s['id']}"
    # Illegal transition: 409 naming the state.
    r = await client.post(f"{base}/channels/{cid}/hold", headers=auth("sessions:write"))
    assert r.status == 409
    r = await client.post(f"{base}/channels/{cid}/accept", headers=auth("agent"))
    assert r.status == 200 and (await r.json())["agent"] == "alice"
    r = await client.post(
        f"{base}/channels",
        json={"media": "voice", "to": "+15550001"},
        headers=auth("sessions:write"),
    )
    assert r.status == 201
    data = await r.json()
    assert [c["state"] for c in data["channels"]] == ["active", "offered"]
    r = await client.post(
        f"{base}/channels", json={"media": "chat", "to": "+1"}, headers=auth("sessions:write")
    )
    assert r.status == 422 and (await r.json())["error"]["field"] == "to"
    r = await client.post(f"{base}/close", headers=auth("sessions:write"))
    assert r.status == 409
    r = await client.post(f"{base}/close", json={"force": True}, headers=auth("sessions:write"))
    assert r.status == 200 and (await r.json())["closed_at"] is not None
    r = await client.post(f"{base}/channels/nope/end", headers=auth("sessions:write"))
    assert r.status == 404 and (await r.json())["error"]["field"] == "channel_id"


async def test_events_websocket_gets_offer_with_context(client: TestClient[Any, Any]) -> None:
    async with client.ws_connect(
        "/v1/events", params={"access_token": KEYS["sessions:read"][0]}
    ) as ws:
        s = await create(client)
        seen: list[dict[str, Any]] = []
        async with asyncio.timeout(5):
            while not any(e["type"] == "offer_made" for e in seen):
                seen.append(json.loads((await ws.receive()).data))
    offer = next(e for e in seen if e["type"] == "offer_made")
    assert offer["session_id"] == s["id"] and offer["agent"] == "alice"
    assert offer["session"]["context"]["order"] == "A-17"


async def test_events_needs_a_key(client: TestClient[Any, Any]) -> None:
    r = await client.get("/v1/events")
    assert r.status == 401


async def test_metrics_json_csv_and_self_service(client: TestClient[Any, Any]) -> None:
    s = await create(client)
    cid = s["channels"][0]["id"]
    await client.post(f"/v1/sessions/{s['id']}/channels/{cid}/accept", headers=auth("agent"))
    gave_up = await create(client, customer={"phone": "+1999"})
    await client.post(
        f"/v1/sessions/{gave_up['id']}/close",
        json={"force": True, "self_service_step": "order_lookup"},
        headers=auth("sessions:write"),
    )
    r = await client.get("/v1/metrics/agents", headers=auth("metrics:read"))
    assert r.status == 200
    rows = (await r.json())["rows"]
    assert any(row["agent"] == "alice" and row["accepted"] == 1 for row in rows)
    r = await client.get(
        "/v1/metrics/queues", params={"format": "csv"}, headers=auth("metrics:read")
    )
    assert r.status == 200 and r.content_type == "text/csv"
    assert "interval_start" in (await r.text()).splitlines()[0]
    r = await client.get(
        "/v1/metrics/channels", headers={**auth("metrics:read"), "Accept": "text/csv"}
    )
    assert r.content_type == "text/csv"
    r = await client.get("/v1/metrics/nope", headers=auth("metrics:read"))
    assert r.status == 404
    r = await client.get(
        "/v1/metrics/agents", params={"from": "yesterday"}, headers=auth("metrics:read")
    )
    assert r.status == 422 and (await r.json())["error"]["field"] == "from"
    r = await client.get("/v1/reports/self-service", headers=auth("metrics:read"))
    assert (await r.json())["steps"] == [{"step": "order_lookup", "sessions": 1}]


async def test_openapi_documents_every_sessions_route(client: TestClient[Any, Any]) -> None:
    doc = json.loads(await (await client.get("/openapi.json")).read())
    for path in (
        "/v1/sessions",
        "/v1/sessions/{id}",
        "/v1/sessions/{id}/channels",
        "/v1/sessions/{id}/channels/{channel}/{action}",
        "/v1/sessions/{id}/close",
        "/v1/metrics/{group}",
        "/v1/reports/self-service",
        "/v1/events",
    ):
        assert path in doc["paths"], path
    assert "SessionCreate" in doc["components"]["schemas"]
