"""REST side of the presence API against the real app, service and memory store."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from ucgate.config import validate_config
from ucgate.http.api import build_app
from ucgate.http.auth import ApiKeys, Principal
from ucgate.http.presence_api import validation_error
from ucgate.http.schemas import NOTE_MAX, PresenceDocumentOut, PresenceList, StatusUpdate
from ucgate.presence.model import StatusDef, status_table
from ucgate.presence.service import PresenceService
from ucgate.presence.store_memory import MemoryPresenceStore
from ucgate.store.location import Binding, StoreUnavailable
from ucgate.store.memory import MemoryLocationStore

AGENTS = {"alice": {"voice": 1, "chat": 3}, "bob": {"voice": 1}, "carol": {"chat": 2}}
STATUSES = status_table([StatusDef("lunch", False, "Lunch"), StatusDef("training", True)])

ADMIN = "admin-key-0000001"
READER = "reader-key-000001"
WRITER = "writer-key-000001"
ALICE = "alice-key-0000001"


def _keys() -> ApiKeys:
    return ApiKeys(
        [
            (ADMIN, Principal(frozenset({"admin"}), name="ops")),
            (READER, Principal(frozenset({"presence:read"}), name="wallboard")),
            (WRITER, Principal(frozenset({"presence:write"}), name="supervisor")),
            (ALICE, Principal(frozenset({"presence:read"}), agent="alice")),
        ]
    )


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def service() -> AsyncIterator[PresenceService]:
    store = MemoryPresenceStore()
    svc = PresenceService(store, agents=AGENTS, statuses=STATUSES)
    await svc.start()
    yield svc
    await svc.close()
    await store.close()


@pytest.fixture
async def locations() -> MemoryLocationStore:
    return MemoryLocationStore(node_id="node-a")


@pytest.fixture
async def client(
    service: PresenceService, locations: MemoryLocationStore
) -> AsyncIterator[TestClient[Any, Any]]:
    app = build_app(locations, _keys(), presence=service, statuses=STATUSES)
    async with TestClient(TestServer(app)) as c:
        yield c


def binding(aor: str, contact: str, now: float) -> Binding:
    return Binding(
        aor=aor,
        contact=contact,
        expires_at=now + 600,
        call_id="c1",
        cseq=1,
        source="udp:127.0.0.1:5062",
        node_id="node-a",
        registered_at=now,
        user_agent="test-phone",
    )


async def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    assert set(body) == {"error"}
    assert body["error"]["status"] == status
    assert isinstance(body["error"]["message"], str)
    return dict(body["error"])


# --- authentication and scopes ---------------------------------------------------------

READ_ROUTES = ["/v1/presence", "/v1/presence/alice", "/v1/presence/stream"]


@pytest.mark.parametrize("path", READ_ROUTES)
async def test_missing_key_is_401_json(client: TestClient[Any, Any], path: str) -> None:
    response = await client.get(path)
    error = await error_of(response, 401)
    assert error["field"] == "Authorization"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("path", READ_ROUTES)
async def test_unknown_key_is_401(client: TestClient[Any, Any], path: str) -> None:
    await error_of(await client.get(path, headers=auth("not-a-key-at-all")), 401)


async def test_basic_auth_is_not_a_bearer_key(client: TestClient[Any, Any]) -> None:
    response = await client.get("/v1/presence", headers={"Authorization": f"Basic {ADMIN}"})
    await error_of(response, 401)


async def test_query_token_only_accepted_on_the_stream(client: TestClient[Any, Any]) -> None:
    # REST routes are for servers, which can set headers; keys in URLs leak into logs.
    await error_of(await client.get(f"/v1/presence?access_token={READER}"), 401)


@pytest.mark.parametrize("path", READ_ROUTES)
async def test_write_only_key_cannot_read(client: TestClient[Any, Any], path: str) -> None:
    error = await error_of(await client.get(path, headers=auth(WRITER)), 403)
    assert "presence:read" in error["message"]


async def test_registrations_need_admin(client: TestClient[Any, Any]) -> None:
    await error_of(await client.get("/v1/registrations", headers=auth(READER)), 403)
    await error_of(await client.get("/v1/registrations"), 401)


async def test_registrations_and_healthz_still_work(
    client: TestClient[Any, Any], locations: MemoryLocationStore
) -> None:
    now = time.time()
    await locations.update(
        "sip:alice@example.test",
        lambda _: [binding("sip:alice@example.test", "sip:alice@10.0.0.5:5062", now)],
        now,
    )
    response = await client.get("/v1/registrations", headers=auth(ADMIN))
    assert response.status == 200
    body = await response.json()
    assert body["registrations"][0]["aor"] == "sip:alice@example.test"
    assert body["registrations"][0]["contacts"][0]["contact"] == "sip:alice@10.0.0.5:5062"
    health = await client.get("/healthz")
    assert health.status == 200
    assert (await health.json())["status"] == "ok"


async def test_unknown_route_is_json_404(client: TestClient[Any, Any]) -> None:
    await error_of(await client.get("/v1/nothing-here", headers=auth(ADMIN)), 404)


async def test_wrong_method_is_json_405(client: TestClient[Any, Any]) -> None:
    response = await client.delete("/v1/presence/alice/status", headers=auth(ADMIN))
    await error_of(response, 405)
    assert "PUT" in response.headers["Allow"]


# --- reading ---------------------------------------------------------------------------


async def test_list_returns_every_configured_agent(client: TestClient[Any, Any]) -> None:
    response = await client.get("/v1/presence", headers=auth(READER))
    assert response.status == 200
    body = PresenceList.model_validate(await response.json())
    assert [d.agent for d in body.agents] == ["alice", "bob", "carol"]
    # The version is read before the documents, so no document can be newer than it here
    # (nothing changed in between).
    assert body.version >= max(d.version for d in body.agents)
    assert all(d.status == "offline" for d in body.agents)


async def test_get_one_agent(client: TestClient[Any, Any], service: PresenceService) -> None:
    response = await client.get("/v1/presence/alice", headers=auth(READER))
    assert response.status == 200
    doc = PresenceDocumentOut.model_validate(await response.json())
    expected = await service.get("alice")
    assert expected is not None
    assert doc.version == expected.version
    assert [(c.channel, c.capacity) for c in doc.channels] == [("voice", 1), ("chat", 3)]


async def test_unknown_agent_is_404_json(client: TestClient[Any, Any]) -> None:
    error = await error_of(await client.get("/v1/presence/mallory", headers=auth(ADMIN)), 404)
    assert error["field"] == "agent"


async def test_filters(client: TestClient[Any, Any], service: PresenceService) -> None:
    now = time.time()
    await service.sync_devices("alice", [binding("sip:alice@example.test", "sip:a@h", now)])
    await service.sync_devices("bob", [binding("sip:bob@example.test", "sip:b@h", now)])
    await service.set_manual("bob", "away", note=None, set_by="test")

    async def agents(query: str) -> list[str]:
        response = await client.get(f"/v1/presence?{query}", headers=auth(READER))
        assert response.status == 200, await response.text()
        return [d["agent"] for d in (await response.json())["agents"]]

    assert await agents("status=available") == ["alice"]
    assert await agents("status=away") == ["bob"]
    assert await agents("status=offline") == ["carol"]
    assert await agents("voice=available") == ["alice", "bob"]
    assert await agents("voice=offline") == ["carol"]
    assert await agents("routable=true") == ["alice"]
    assert await agents("routable=false") == ["bob", "carol"]
    assert await agents("agent=carol,alice") == ["alice", "carol"]
    assert await agents("agent=alice,mallory") == ["alice"]
    assert await agents("voice=available&routable=false") == ["bob"]
    # A voice state is a valid overall status too (manual available + on a call).
    assert await agents("status=on_call") == []


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("voice=flying", "voice"),
        ("routable=maybe", "routable"),
        ("status=napping", "status"),
        ("colour=blue", "colour"),
        ("voice=offline&voice=available", "voice"),
    ],
)
async def test_bad_filter_is_422_naming_the_parameter(
    client: TestClient[Any, Any], query: str, field: str
) -> None:
    response = await client.get(f"/v1/presence?{query}", headers=auth(READER))
    error = await error_of(response, 422)
    assert error["field"] == field


# --- setting the manual status ---------------------------------------------------------


async def put_status(client: TestClient[Any, Any], agent: str, key: str, body: object) -> Any:
    # Serialised here: aiohttp's json=None would send no body at all rather than "null".
    return await client.put(
        f"/v1/presence/{agent}/status",
        data=json.dumps(body),
        headers={**auth(key), "Content-Type": "application/json"},
    )


@pytest.mark.parametrize(("key", "label"), [(WRITER, "supervisor"), (ADMIN, "ops")])
async def test_supervisor_or_admin_sets_any_agent(
    client: TestClient[Any, Any], service: PresenceService, key: str, label: str
) -> None:
    response = await put_status(client, "bob", key, {"status": "break", "note": "coffee"})
    assert response.status == 200, await response.text()
    doc = PresenceDocumentOut.model_validate(await response.json())
    assert (doc.manual.status, doc.manual.note, doc.manual.set_by) == ("break", "coffee", label)
    stored = await service.get("bob")
    assert stored is not None and stored.version == doc.version


async def test_agent_key_sets_own_status(client: TestClient[Any, Any]) -> None:
    response = await put_status(client, "alice", ALICE, {"status": "away", "note": "back at 3"})
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["manual"] == {
        "status": "away",
        "note": "back at 3",
        "set_by": "agent:alice",
        "since": body["manual"]["since"],
    }


async def test_agent_key_cannot_set_another_agent(
    client: TestClient[Any, Any], service: PresenceService
) -> None:
    before = await service.get("bob")
    error = await error_of(await put_status(client, "bob", ALICE, {"status": "away"}), 403)
    assert "alice" in error["message"]
    assert await service.get("bob") == before


async def test_read_only_key_cannot_set(client: TestClient[Any, Any]) -> None:
    error = await error_of(await put_status(client, "alice", READER, {"status": "away"}), 403)
    assert "presence:write" in error["message"]


async def test_put_without_key_is_401(client: TestClient[Any, Any]) -> None:
    response = await client.put("/v1/presence/alice/status", json={"status": "away"})
    await error_of(response, 401)


async def test_custom_status_accepted(client: TestClient[Any, Any]) -> None:
    response = await put_status(client, "carol", WRITER, {"status": "lunch"})
    assert response.status == 200
    assert (await response.json())["manual"]["status"] == "lunch"


async def test_put_unknown_agent_is_404(client: TestClient[Any, Any]) -> None:
    error = await error_of(await put_status(client, "mallory", WRITER, {"status": "away"}), 404)
    assert error["field"] == "agent"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"status": "napping"}, "status"),
        ({"status": "Away!"}, "status"),
        ({"status": ""}, "status"),
        ({"status": 3}, "status"),
        ({"note": "no status"}, "status"),
        ({"status": "away", "note": 5}, "note"),
        ({"status": "away", "note": "x" * (NOTE_MAX + 1)}, "note"),
        ({"status": "away", "note": "line\r\nInjected: header"}, "note"),
        ({"status": "away", "colour": "red"}, "colour"),
        (["away"], "body"),
        ("away", "body"),
        (None, "body"),
    ],
)
async def test_bad_body_is_422_naming_the_field(
    client: TestClient[Any, Any], service: PresenceService, body: object, field: str
) -> None:
    before = await service.get("alice")
    error = await error_of(await put_status(client, "alice", WRITER, body), 422)
    assert error["field"] == field
    assert error["message"].startswith(field)
    assert await service.get("alice") == before


async def test_every_problem_is_listed(client: TestClient[Any, Any]) -> None:
    body = {"status": 1, "note": 2, "extra": True}
    error = await error_of(await put_status(client, "alice", WRITER, body), 422)
    assert {issue["field"] for issue in error["errors"]} == {"status", "note", "extra"}


async def test_not_json_is_400(client: TestClient[Any, Any]) -> None:
    response = await client.put(
        "/v1/presence/alice/status",
        data=b'{"status": "away"',
        headers={**auth(WRITER), "Content-Type": "application/json"},
    )
    error = await error_of(response, 400)
    assert error["field"] == "body"


async def test_wrong_content_type_is_415(client: TestClient[Any, Any]) -> None:
    response = await client.put(
        "/v1/presence/alice/status", data="status=away", headers=auth(WRITER)
    )
    error = await error_of(response, 415)
    assert error["field"] == "Content-Type"


async def test_oversized_body_is_413(client: TestClient[Any, Any]) -> None:
    body = {"status": "away", "note": "x" * 10_000}
    error = await error_of(await put_status(client, "alice", WRITER, body), 413)
    assert error["field"] == "body"


async def test_manual_away_survives_reregistration(
    client: TestClient[Any, Any], service: PresenceService
) -> None:
    now = time.time()
    phone = binding("sip:alice@example.test", "sip:alice@10.0.0.5", now)
    await service.sync_devices("alice", [phone])
    assert (await put_status(client, "alice", ALICE, {"status": "away"})).status == 200
    await service.sync_devices("alice", [])  # the phone leaves...
    gone = await (await client.get("/v1/presence/alice", headers=auth(READER))).json()
    assert (gone["voice"], gone["status"]) == ("offline", "away")
    await service.sync_devices("alice", [phone])  # ...and registers again
    back = await (await client.get("/v1/presence/alice", headers=auth(READER))).json()
    assert (back["voice"], back["status"], back["manual"]["status"]) == (
        "available",
        "away",
        "away",
    )


async def test_setting_the_same_status_twice_keeps_the_version(
    client: TestClient[Any, Any],
) -> None:
    first = await (await put_status(client, "alice", ALICE, {"status": "away"})).json()
    again = await (await put_status(client, "alice", ALICE, {"status": "away"})).json()
    assert again["version"] == first["version"]


# --- body validation, exhaustively -----------------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
_bodies = st.one_of(
    _json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "status": _json_values | st.sampled_from(sorted(STATUSES)),
            "note": _json_values | st.text(max_size=NOTE_MAX + 5),
            "extra": _json_values,
        },
    ),
)


@given(_bodies)
def test_any_body_validates_or_names_a_field(body: object) -> None:
    """Whatever the JSON, validation either yields a model or a 422 naming a real field."""
    try:
        update = StatusUpdate.model_validate(body)
    except ValidationError as exc:
        error = validation_error(exc)
        assert error.status == 422
        allowed = {"body", "status", "note"} | (set(body) if isinstance(body, dict) else set())
        assert error.field in allowed
        assert error.message.startswith(str(error.field))
    else:
        assert isinstance(update.status, str) and 1 <= len(update.status) <= 32
        assert update.note is None or len(update.note) <= NOTE_MAX


# --- store outage and key configuration ------------------------------------------------


class _DownStore:
    """A presence source whose backend is unreachable."""

    async def current_version(self) -> int:
        raise StoreUnavailable("redis timed out")

    async def get(self, agent: str) -> None:
        raise StoreUnavailable("redis timed out")


async def test_store_outage_is_503_json(locations: MemoryLocationStore) -> None:
    app = build_app(locations, _keys(), presence=_DownStore(), statuses=STATUSES)  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as c:
        for path in ("/v1/presence", "/v1/presence/alice"):
            response = await c.get(path, headers=auth(READER))
            error = await error_of(response, 503)
            assert "unavailable" in error["message"]
            assert response.headers["Retry-After"].isdigit()


def test_keys_from_config_carry_name_agent_and_scopes() -> None:
    config = validate_config(
        {
            "sip": {"domain": "example.test"},
            "agents": [{"id": "alice", "password": "correct horse battery"}],
            "api_keys": [
                {"key": "k" * 16, "scopes": ["presence:read"], "agent": "alice"},
                {"key": "s" * 16, "scopes": ["presence:write"], "name": "sup"},
            ],
        }
    )
    keys = ApiKeys.from_config(config.api_keys)
    assert keys.principal_for("k" * 16) == Principal(frozenset({"presence:read"}), agent="alice")
    supervisor = keys.principal_for("s" * 16)
    assert supervisor is not None and supervisor.label == "sup"
    assert keys.scopes_for("s" * 16) == frozenset({"presence:write"})
    assert keys.principal_for("k" * 15) is None
