"""GET /v1/calls and /v1/calls/{id} against the real app and the embedded record store."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from ucgate.calls.record_store import MemoryCallRecordStore
from ucgate.calls.records import (
    CallAnswered,
    CallEnded,
    CallOffered,
    Direction,
    EndReason,
    HoldEnded,
    HoldStarted,
    LegAdded,
)
from ucgate.http.api import build_app
from ucgate.http.auth import ApiKeys, Principal
from ucgate.http.calls_api import CallList, CallRecordOut, parse_time
from ucgate.http.openapi import build_openapi
from ucgate.store.location import StoreUnavailable
from ucgate.store.memory import MemoryLocationStore

T0 = 1_714_521_600.0  # 2024-05-01T00:00:00Z
ADMIN = "admin-key-0000001"
CALLS = "calls-key-0000001"
PRESENCE = "presence-key-00001"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def records() -> MemoryCallRecordStore:
    store = MemoryCallRecordStore()
    for index, agent in enumerate(["alice", "bob", "alice"]):
        call_id = f"call-{index}"
        start = T0 + 3600 * index
        await store.append(
            call_id,
            CallOffered(start, Direction.INBOUND, "sip:+1555@pbx", "+15550100", "a", "sip:p@x"),
        )
        await store.append(call_id, LegAdded(start, "b", f"sip:{agent}@x", agent=agent))
        await store.append(call_id, CallAnswered(start + 5, "b"))
        await store.append(call_id, HoldStarted(start + 20))
        await store.append(call_id, HoldEnded(start + 30))
        await store.append(call_id, CallEnded(start + 65, EndReason.CALLER_BYE))
    return store


@pytest.fixture
async def client(records: MemoryCallRecordStore) -> AsyncIterator[TestClient[Any, Any]]:
    keys = ApiKeys(
        [
            (ADMIN, Principal(frozenset({"admin"}))),
            (CALLS, Principal(frozenset({"calls:read"}))),
            (PRESENCE, Principal(frozenset({"presence:read"}))),
        ]
    )
    app = build_app(MemoryLocationStore(node_id="n"), keys, calls=records)
    async with TestClient(TestServer(app)) as c:
        yield c


async def get(client: TestClient[Any, Any], path: str, key: str | None = CALLS) -> Any:
    return await client.get(path, headers=auth(key) if key else {})


async def test_list_is_newest_first_with_durations(client: TestClient[Any, Any]) -> None:
    response = await get(client, "/v1/calls")
    assert response.status == 200
    data = await response.json()
    CallList.model_validate(data)
    assert [c["id"] for c in data["calls"]] == ["call-2", "call-1", "call-0"]
    first = data["calls"][0]
    assert (first["talk_seconds"], first["hold_seconds"], first["ring_seconds"]) == (50, 10, 0)
    assert first["state"] == "ended" and first["end_reason"] == "caller_bye"
    assert [e["type"] for e in first["events"]][:3] == ["offered", "leg_added", "answered"]
    assert data["next_cursor"] is None


@pytest.mark.parametrize(
    ("query", "ids"),
    [
        ("agent=alice", ["call-2", "call-0"]),
        ("agent=bob", ["call-1"]),
        (f"since={T0 + 3600:.0f}", ["call-2", "call-1"]),
        ("since=2024-05-01T01:00:00Z", ["call-2", "call-1"]),
        ("until=2024-05-01T03:00:00%2B02:00", ["call-0"]),  # 01:00Z, exclusive
        ("since=2024-05-01T00:30:00Z&until=2024-05-01T02:00:00Z", ["call-1"]),
        ("agent=alice&since=1714525200", ["call-2"]),
    ],
)
async def test_filters(client: TestClient[Any, Any], query: str, ids: list[str]) -> None:
    response = await get(client, f"/v1/calls?{query}")
    assert response.status == 200, await response.text()
    assert [c["id"] for c in (await response.json())["calls"]] == ids


async def test_cursor_pagination(client: TestClient[Any, Any]) -> None:
    seen: list[str] = []
    path = "/v1/calls?limit=2"
    for _ in range(3):
        data = await (await get(client, path)).json()
        seen += [c["id"] for c in data["calls"]]
        if data["next_cursor"] is None:
            break
        path = f"/v1/calls?limit=2&cursor={data['next_cursor']}"
    assert seen == ["call-2", "call-1", "call-0"]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("since=yesterday", "since"),
        ("until=2024-05-01T00:00:00", "until"),  # no zone
        ("since=nan", "since"),
        ("cursor=garbage!", "cursor"),
        ("colour=red", "colour"),
        ("agent=a&agent=b", "agent"),
    ],
)
async def test_bad_parameters_are_422_naming_the_field(
    client: TestClient[Any, Any], query: str, field: str
) -> None:
    response = await get(client, f"/v1/calls?{query}")
    assert response.status == 422
    error = (await response.json())["error"]
    assert (error["status"], error["field"]) == (422, field)


async def test_get_one_and_404(client: TestClient[Any, Any]) -> None:
    response = await get(client, "/v1/calls/call-1")
    assert response.status == 200
    data = await response.json()
    CallRecordOut.model_validate(data)
    assert data["agents"] == ["bob"] and data["legs"][1]["agent"] == "bob"
    assert data["holds"] == [{"start": T0 + 3600 + 20, "end": T0 + 3600 + 30}]
    missing = await get(client, "/v1/calls/nope")
    assert missing.status == 404
    assert (await missing.json())["error"] == {
        "status": 404,
        "message": "no such call",
        "field": "id",
    }


@pytest.mark.parametrize("path", ["/v1/calls", "/v1/calls/call-1"])
async def test_auth(client: TestClient[Any, Any], path: str) -> None:
    assert (await get(client, path, key=None)).status == 401
    assert (await get(client, path, key="wrong-key-0000001")).status == 401
    forbidden = await get(client, path, key=PRESENCE)
    assert forbidden.status == 403
    assert "calls:read" in (await forbidden.json())["error"]["message"]
    assert (await get(client, path, key=ADMIN)).status == 200


async def test_store_outage_is_503(client: TestClient[Any, Any], records: Any) -> None:
    async def down(*args: object, **kwargs: object) -> None:
        raise StoreUnavailable("redis down")

    records.list = down
    records.get = down
    for path in ("/v1/calls", "/v1/calls/call-1"):
        response = await get(client, path)
        assert response.status == 503
        assert response.headers["Retry-After"] == "5"


async def test_openapi_documents_exactly_the_mounted_call_routes(
    client: TestClient[Any, Any],
) -> None:
    document = json.loads(await (await client.get("/openapi.json")).read())
    assert {"/v1/calls", "/v1/calls/{id}"} <= set(document["paths"])
    op = document["paths"]["/v1/calls"]["get"]
    assert op["x-required-scopes"] == ["calls:read"]
    assert {p["name"] for p in op["parameters"]} == {"agent", "since", "until", "limit", "cursor"}
    assert {"401", "403", "422", "503"} <= set(op["responses"])
    schemas = document["components"]["schemas"]
    assert {"CallList", "CallRecordOut", "LegOut", "CallEventOut"} <= set(schemas)
    assert "/v1/calls" not in build_openapi(version="x")["paths"]


def test_parse_time() -> None:
    assert parse_time("1714521600") == T0
    assert parse_time(" 1714521600.5 ") == T0 + 0.5
    assert parse_time("2024-05-01T02:00:00+02:00") == T0
    for bad in ("", "inf", "2024-05-01", "tomorrow"):
        with pytest.raises(ValueError):
            parse_time(bad)
