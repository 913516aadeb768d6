"""The OpenAPI document: well-formed, complete, and true of the running app.

The walk at the bottom calls every documented operation without a key, with a key that
lacks the documented scopes and with one that has them, and checks the documented status
codes and the response bodies against the schemas the document names.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import BaseModel

from ucgate import __version__
from ucgate.http import schemas
from ucgate.http.api import build_app
from ucgate.http.auth import ApiKeys, Principal
from ucgate.http.openapi import build_openapi
from ucgate.http.presence_api import StreamSettings
from ucgate.presence.model import StatusDef, status_table
from ucgate.presence.service import PresenceService
from ucgate.presence.store_memory import MemoryPresenceStore
from ucgate.store.memory import MemoryLocationStore

STATUSES = status_table([StatusDef("lunch", False)])
KEYS = {
    "admin": "admin-key-0000001",
    "presence:read": "reader-key-000001",
    "presence:write": "writer-key-000001",
}
METHODS = {"get", "put", "post", "delete", "patch"}


@pytest.fixture
async def service() -> AsyncIterator[PresenceService]:
    store = MemoryPresenceStore()
    svc = PresenceService(store, agents={"alice": {"voice": 1}}, statuses=STATUSES)
    await svc.start()
    yield svc
    await svc.close()
    await store.close()


def _app(service: PresenceService | None) -> web.Application:
    keys = ApiKeys((key, Principal(frozenset({scope}), name=scope)) for scope, key in KEYS.items())
    return build_app(
        MemoryLocationStore(node_id="n"),
        keys,
        presence=service,
        statuses=STATUSES,
        stream_settings=StreamSettings(keepalive=30.0),
    )


@pytest.fixture
async def client(service: PresenceService) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(_app(service))) as c:
        yield c


async def fetch_document(client: TestClient[Any, Any]) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status == 200
    assert response.content_type == "application/json"
    document: dict[str, Any] = json.loads(await response.read())
    return document


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                yield path, method, op


def refs(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def app_routes(app: web.Application) -> set[tuple[str, str]]:
    out = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if path and route.method != "HEAD":
            out.add((path, route.method.lower()))
    return out


# --- shape -----------------------------------------------------------------------------


async def test_document_is_openapi_31_and_every_ref_resolves(
    client: TestClient[Any, Any],
) -> None:
    document = await fetch_document(client)
    assert document["openapi"] == "3.1.0"
    assert document["info"]["version"] == __version__
    schemas_ = document["components"]["schemas"]
    for ref in refs(document):
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in schemas_, ref
    for path, method, op in operations(document):
        assert op["operationId"], (path, method)
        assert "200" in op["responses"]
        for code, response in op["responses"].items():
            assert re.fullmatch(r"[1-5]\d\d", code)
            assert response["description"]
            if code != "200":
                assert response["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/ErrorBody"
                }


async def test_every_route_is_documented_and_nothing_else(
    client: TestClient[Any, Any],
) -> None:
    document = await fetch_document(client)
    documented = {(path, method) for path, method, _ in operations(document)}
    assert isinstance(client.server, TestServer)
    assert app_routes(client.server.app) == documented
    assert {p for p, _ in documented if p.startswith("/v1")} == {
        "/v1/registrations",
        "/v1/media",
        "/v1/presence",
        "/v1/presence/{agent}",
        "/v1/presence/{agent}/status",
        "/v1/presence/stream",
    }


def test_without_presence_only_the_mounted_routes_are_documented() -> None:
    app = _app(None)
    document = build_openapi(version="x", presence=False)
    documented = {(path, method) for path, method, _ in operations(document)}
    assert app_routes(app) == documented


def test_known_statuses_are_enumerated_and_schemas_come_from_the_models() -> None:
    document = build_openapi(version="x", statuses=list(STATUSES))
    status = document["components"]["schemas"]["StatusUpdate"]["properties"]["status"]
    assert status["enum"] == list(STATUSES)
    assert "lunch" in status["enum"]
    note = document["components"]["schemas"]["StatusUpdate"]["properties"]["note"]
    assert f'"maxLength": {schemas.NOTE_MAX}' in json.dumps(note)
    doc_props = document["components"]["schemas"]["PresenceDocumentOut"]["properties"]
    assert set(doc_props) == set(schemas.PresenceDocumentOut.model_fields)


def test_stream_documents_browser_authentication() -> None:
    document = build_openapi(version="x")
    op = document["paths"]["/v1/presence/stream"]["get"]
    assert {"accessToken": []} in op["security"]
    names = {p["name"] for p in op["parameters"]}
    assert {"since", "access_token", "Last-Event-ID"} <= names
    scheme = document["components"]["securitySchemes"]["accessToken"]
    assert (scheme["in"], scheme["name"]) == ("query", "access_token")


# --- the walk --------------------------------------------------------------------------


def _model(ref: str) -> type[BaseModel]:
    model: object = getattr(schemas, ref.rsplit("/", 1)[1])
    assert isinstance(model, type) and issubclass(model, BaseModel)
    return model


def _concrete(path: str) -> str:
    return path.replace("{agent}", "alice")


def _body(op: dict[str, Any], document: dict[str, Any]) -> bytes | None:
    if "requestBody" not in op:
        return None
    ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
    example = {name: prop["examples"][0] for name, prop in schema["properties"].items()}
    return json.dumps(example).encode()


async def _call(
    client: TestClient[Any, Any],
    method: str,
    path: str,
    body: bytes | None,
    key: str | None,
) -> Any:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    return await client.request(method.upper(), _concrete(path), data=body, headers=headers)


async def test_walk_every_operation_checks_documented_codes(
    client: TestClient[Any, Any],
) -> None:
    document = await fetch_document(client)
    walked = 0
    for path, method, op in operations(document):
        body = _body(op, document)
        scopes = op.get("x-required-scopes")
        allowed: Sequence[str | None]
        if scopes is not None:
            assert {"401", "403"} <= set(op["responses"])
            response = await _call(client, method, path, body, None)
            assert response.status == 401, (path, method)
            schemas.ErrorBody.model_validate(await response.json())
            lacking = [k for s, k in KEYS.items() if s not in scopes and s != "admin"]
            assert lacking, (path, "some key must lack the scope")
            for key in lacking:
                response = await _call(client, method, path, body, key)
                assert response.status == 403, (path, method, key)
                schemas.ErrorBody.model_validate(await response.json())
            allowed = [KEYS[s] for s in scopes if s in KEYS] + [KEYS["admin"]]
        else:
            allowed = [None]
        for good_key in allowed:
            response = await _call(client, method, path, body, good_key)
            assert response.status == 200, (path, method, good_key, await response.text())
            content = op["responses"]["200"]["content"]
            if "application/json" in content:
                data = await response.json()
                schema = content["application/json"]["schema"]
                if "$ref" in schema:
                    _model(schema["$ref"]).model_validate(data)
            else:
                assert "text/event-stream" in content
                assert response.content_type == "text/event-stream"
                async with asyncio.timeout(10):
                    await response.content.readuntil(b"\n\n")  # retry:
                    event = (await response.content.readuntil(b"\n\n")).decode()
                data_line = next(x for x in event.split("\n") if x.startswith("data: "))
                schemas.SnapshotEvent.model_validate_json(data_line[len("data: ") :])
                response.close()
        walked += 1
    assert walked == 8
