"""Agent login, agent tokens held to their own sessions, the public widget and the chat
relay, over a real aiohttp test server and a real SessionService."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from ucgate.config import ConfigError
from ucgate.http.api import build_app
from ucgate.http.auth import ApiKeys, Principal
from ucgate.registrar.accounts import Account, AccountDirectory, AccountKind
from ucgate.registrar.guests import GuestAccounts, guest_password
from ucgate.sessions.model import Media
from ucgate.sessions.routing import QueueSpec, RoutingEngine
from ucgate.sessions.service import AgentProfile, SessionService
from ucgate.sessions.store import MemorySessionStore
from ucgate.sip.digest import UserSecret
from ucgate.store.memory import MemoryLocationStore
from ucgate.web.config import WebConfig
from ucgate.web.routes import WebSetup, add_web_routes, check_agent_password
from ucgate.web.tokens import TokenKind, TokenSigner, derive_key

DOMAIN = "example.test"
SECRET = "test-shared-nonce-secret"
ORIGIN = "https://shop.example.test"
ADMIN = "admin-key-0000001"
READER = "reader-key-000001"
AGENT_KEY = "alice-owned-key-1"


def accounts() -> AccountDirectory:
    return AccountDirectory(
        [
            Account("alice", AccountKind.AGENT, UserSecret.from_password("alice", DOMAIN, "pw-a")),
            Account("bob", AccountKind.AGENT, UserSecret.from_password("bob", DOMAIN, "pw-b")),
            # An agent provisioned with a SHA-256 HA1 only (no password in the config).
            Account(
                "carol",
                AccountKind.AGENT,
                UserSecret(ha1_sha256=UserSecret.from_password("carol", DOMAIN, "pw-c").ha1_sha256),
            ),
            Account("pbx", AccountKind.TRUNK, UserSecret.from_password("pbx", DOMAIN, "pw-t")),
        ]
    )


def setup(**web: Any) -> WebSetup:
    config = WebConfig(
        widget_enabled=True,
        widget_queue="support",
        widget_allowed_origins=(ORIGIN,),
        widget_max_body=1024,
        **web,
    )
    return WebSetup(
        config=config,
        domain=DOMAIN,
        accounts=accounts(),
        guests=GuestAccounts(derive_key(SECRET, "guest-sip"), DOMAIN),
        signer=TokenSigner(derive_key(SECRET, "web-token")),
        ws_port=5066,
        queues={"support": frozenset({Media.CHAT, Media.VOICE})},
    )


async def _client(web: WebSetup) -> tuple[TestClient[Any, Any], SessionService]:
    service = SessionService(
        MemorySessionStore(),
        RoutingEngine([QueueSpec("support", frozenset({Media.CHAT, Media.VOICE}))]),
        agents={
            "alice": AgentProfile({"voice": 1, "chat": 1}),
            "bob": AgentProfile({"voice": 1, "chat": 1}),
        },
    )
    await service.start()
    keys = ApiKeys(
        [
            (ADMIN, Principal(frozenset({"admin"}), name="ops")),
            (READER, Principal(frozenset({"sessions:read"}), name="reader")),
            (AGENT_KEY, Principal(frozenset({"sessions:read"}), name="crm", agent="alice")),
        ]
    )
    app = build_app(MemoryLocationStore(node_id="n"), keys, sessions=service, web_setup=web)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    return client, service


@pytest.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    c, service = await _client(setup())
    yield c
    await c.close()
    await service.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def login(client: TestClient[Any, Any], agent: str, password: str) -> str:
    r = await client.post("/v1/auth/login", json={"agent": agent, "password": password})
    assert r.status == 200, await r.text()
    body = await r.json()
    assert body["agent"] == agent and body["sip"]["uri"] == f"sip:{agent}@{DOMAIN}"
    assert body["sip"]["ws_port"] == 5066
    assert r.headers["Cache-Control"] == "no-store"
    token: str = body["token"]
    return token


# --- login ------------------------------------------------------------------------------------


def test_password_check_matches_the_registrars_ha1() -> None:
    directory = accounts()
    assert check_agent_password(directory, DOMAIN, "alice", "pw-a")
    assert check_agent_password(directory, DOMAIN, "carol", "pw-c")  # SHA-256 HA1 only
    assert not check_agent_password(directory, DOMAIN, "alice", "pw-b")
    assert not check_agent_password(directory, DOMAIN, "nobody", "pw-a")
    assert not check_agent_password(directory, DOMAIN, "pbx", "pw-t")  # trunks are no agents
    # The realm is part of HA1: the same password for another realm is another secret.
    assert not check_agent_password(directory, "other.test", "alice", "pw-a")


async def test_login_answers_unknown_and_wrong_alike(client: TestClient[Any, Any]) -> None:
    bodies = []
    for agent, password in (("alice", "wrong"), ("nobody", "pw-a"), ("pbx", "pw-t")):
        r = await client.post("/v1/auth/login", json={"agent": agent, "password": password})
        assert r.status == 401
        bodies.append(await r.json())
    assert bodies[0] == bodies[1] == bodies[2]
    assert bodies[0]["error"]["field"] == "password"


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"not json", 400, "body"),
        (json.dumps({"agent": "alice"}).encode(), 422, "password"),
        (json.dumps({"agent": "", "password": "x"}).encode(), 422, "agent"),
        (json.dumps({"agent": "alice", "password": "x", "admin": True}).encode(), 422, "admin"),
        (json.dumps({"agent": "a", "password": "x" * 5000}).encode(), 413, "body"),
    ],
)
async def test_login_bad_input_names_the_field(
    client: TestClient[Any, Any], body: bytes, status: int, field: str
) -> None:
    r = await client.post("/v1/auth/login", data=body, headers={"Content-Type": "application/json"})
    assert r.status == status
    assert (await r.json())["error"]["field"] == field


async def test_agent_token_is_held_to_the_agents_own_sessions(
    client: TestClient[Any, Any],
) -> None:
    alice = await login(client, "alice", "pw-a")
    bob = await login(client, "bob", "pw-b")
    r = await client.post(
        "/v1/sessions", json={"media": "chat", "queue": "support"}, headers=bearer(ADMIN)
    )
    assert r.status == 201
    session = await r.json()
    offered_to = session["channels"][0]["agent"]
    mine, theirs = (alice, bob) if offered_to == "alice" else (bob, alice)
    sid, ch = session["id"], session["channels"][0]["id"]

    assert (await client.get(f"/v1/sessions/{sid}", headers=bearer(mine))).status == 200
    r = await client.get(f"/v1/sessions/{sid}", headers=bearer(theirs))
    assert r.status == 403 and (await r.json())["error"]["field"] == "id"
    r = await client.post(
        f"/v1/sessions/{sid}/channels/{ch}/accept", json={}, headers=bearer(theirs)
    )
    assert r.status == 403
    r = await client.post(f"/v1/sessions/{sid}/channels/{ch}/accept", json={}, headers=bearer(mine))
    assert r.status == 200 and (await r.json())["agent"] == offered_to

    r = await client.get("/v1/sessions", headers=bearer(mine))
    assert r.status == 403 and (await r.json())["error"]["field"] == "agent"
    r = await client.get(f"/v1/sessions?agent={offered_to}", headers=bearer(mine))
    assert r.status == 200 and [s["id"] for s in (await r.json())["sessions"]] == [sid]
    r = await client.post(
        "/v1/sessions", json={"media": "chat", "queue": "support"}, headers=bearer(mine)
    )
    assert r.status == 403
    # No metrics or call records for an agent token.
    assert (await client.get("/v1/metrics/agents", headers=bearer(mine))).status == 403


async def test_configured_agent_keys_keep_their_scopes(client: TestClient[Any, Any]) -> None:
    # Only login tokens are held to their own sessions; a configured key belonging to an
    # agent (api_keys[].agent) reads what its scopes allow, as before.
    assert (await client.get("/v1/sessions", headers=bearer(AGENT_KEY))).status == 200


async def test_expired_or_foreign_tokens_are_unknown_keys(client: TestClient[Any, Any]) -> None:
    old = TokenSigner(derive_key(SECRET, "web-token")).issue(
        TokenKind.AGENT, "alice", now=0, ttl=60
    )
    foreign = TokenSigner(derive_key("another-secret", "web-token")).issue(
        TokenKind.AGENT, "alice", now=2e9, ttl=60
    )
    for token in (old, foreign):
        r = await client.get("/v1/sessions?agent=alice", headers=bearer(token))
        assert r.status == 401


# --- widget -------------------------------------------------------------------------------


async def create_widget(client: TestClient[Any, Any], **body: Any) -> dict[str, Any]:
    r = await client.post("/v1/widget/sessions", json=body, headers={"Origin": ORIGIN})
    assert r.status == 201, await r.text()
    assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
    data: dict[str, Any] = await r.json()
    return data


async def test_widget_session_credentials_and_scope(client: TestClient[Any, Any]) -> None:
    w = await create_widget(client, name="Carol", context={"cart": 3})
    sid = w["session_id"]
    sip = w["sip"]
    assert sip["user"] == f"guest.{sid}"
    assert sip["password"] == guest_password(derive_key(SECRET, "guest-sip"), sid)
    assert sip["call"] == f"sip:session@{DOMAIN}"
    assert sip["headers"] == [f"X-UCGate-Session: {sid}"]

    r = await client.get(f"/v1/sessions/{sid}", headers=bearer(ADMIN))
    session = await r.json()
    assert session["customer"]["name"] == "Carol"
    assert session["context"] == {"source": "web-widget", "cart": 3}
    assert session["channels"][0]["media"] == "chat"

    token = w["token"]
    r = await client.get(f"/v1/widget/sessions/{sid}", headers=bearer(token))
    view = await r.json()
    assert r.status == 200 and view["open"] and "context" not in view
    # The token opens nothing else: not another session, not the staff API.
    other = await create_widget(client)
    r = await client.get(f"/v1/widget/sessions/{other['session_id']}", headers=bearer(token))
    assert r.status == 403
    assert (await client.get(f"/v1/sessions/{sid}", headers=bearer(token))).status == 403
    assert (await client.get("/v1/sessions?agent=x", headers=bearer(token))).status == 403


@pytest.mark.parametrize(
    "headers", [{}, {"Origin": "https://evil.example.test"}, {"Origin": "null"}]
)
async def test_widget_refuses_other_origins(
    client: TestClient[Any, Any], headers: dict[str, str]
) -> None:
    r = await client.post("/v1/widget/sessions", json={}, headers=headers)
    assert r.status == 403
    assert (await r.json())["error"]["field"] == "Origin"
    assert "Access-Control-Allow-Origin" not in r.headers


async def test_widget_preflight_and_body_limits(client: TestClient[Any, Any]) -> None:
    r = await client.options(
        "/v1/widget/sessions",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
    )
    assert r.status == 204 and r.headers["Access-Control-Allow-Origin"] == ORIGIN
    big = {"context": {"blob": "x" * 2000}}
    r = await client.post("/v1/widget/sessions", json=big, headers={"Origin": ORIGIN})
    assert r.status == 413 and (await r.json())["error"]["field"] == "body"
    r = await client.post("/v1/widget/sessions", json={"nme": "typo"}, headers={"Origin": ORIGIN})
    assert r.status == 422 and (await r.json())["error"]["field"] == "nme"


async def test_widget_disabled_is_404() -> None:
    disabled = WebSetup(**{**_fields(setup()), "config": WebConfig()})
    c, service = await _client(disabled)
    try:
        r = await c.post("/v1/widget/sessions", json={}, headers={"Origin": ORIGIN})
        assert r.status == 404
    finally:
        await c.close()
        await service.stop()


def _fields(web: WebSetup) -> dict[str, Any]:
    return {name: getattr(web, name) for name in web.__dataclass_fields__}


def test_widget_queue_is_checked_at_start() -> None:
    from aiohttp import web as aioweb

    for config, problem in (
        (WebConfig(widget_enabled=True, widget_allowed_origins=(ORIGIN,)), "web.widget_queue"),
        (
            WebConfig(widget_enabled=True, widget_queue="nope", widget_allowed_origins=(ORIGIN,)),
            "web.widget_queue",
        ),
        (WebConfig(widget_enabled=True, widget_queue="support"), "web.widget_allowed_origins"),
    ):
        web = WebSetup(**{**_fields(setup()), "config": config})
        with pytest.raises(ConfigError) as err:
            add_web_routes(aioweb.Application(), web, None)  # type: ignore[arg-type]
        assert err.value.problems[0].startswith(problem)
    voice_only = WebSetup(**{**_fields(setup()), "queues": {"support": frozenset({Media.VOICE})}})
    with pytest.raises(ConfigError):
        add_web_routes(aioweb.Application(), voice_only, None)  # type: ignore[arg-type]


# --- chat --------------------------------------------------------------------------------------


async def test_chat_flows_both_ways_and_streams_live(client: TestClient[Any, Any]) -> None:
    w = await create_widget(client, name="Carol")
    sid, token = w["session_id"], w["token"]
    r = await client.get(f"/v1/sessions/{sid}", headers=bearer(ADMIN))
    session = await r.json()
    agent = session["channels"][0]["agent"]
    assert agent in ("alice", "bob")
    agent_token = await login(client, agent, {"alice": "pw-a", "bob": "pw-b"}[agent])
    other = await login(
        client, "bob" if agent == "alice" else "alice", "pw-b" if agent == "alice" else "pw-a"
    )

    r = await client.post(
        f"/v1/widget/sessions/{sid}/messages", json={"text": "hello"}, headers=bearer(token)
    )
    assert r.status == 201 and (await r.json())["sender"] == "customer"

    ws = await client.ws_connect(f"/v1/chat/{sid}?access_token={agent_token}")
    first = await ws.receive_json(timeout=5)
    assert (first["sender"], first["text"], first["name"]) == ("customer", "hello", "Carol")
    r = await client.post(
        f"/v1/chat/{sid}/messages", json={"text": "hi Carol"}, headers=bearer(agent_token)
    )
    assert r.status == 201
    live = await ws.receive_json(timeout=5)
    assert (live["sender"], live["text"], live["name"]) == ("agent", "hi Carol", agent)
    await ws.close()

    # Another agent may neither write to nor read this chat.
    r = await client.post(f"/v1/chat/{sid}/messages", json={"text": "x"}, headers=bearer(other))
    assert r.status == 403
    r = await client.get(f"/v1/chat/{sid}?access_token={other}")
    assert r.status == 403
    # A sessions:read key may read (supervisors); the widget sees the history in its view.
    ws = await client.ws_connect(f"/v1/chat/{sid}?access_token={READER}")
    assert [(await ws.receive_json(timeout=5))["text"] for _ in range(2)] == ["hello", "hi Carol"]
    await ws.close()
    view = await (await client.get(f"/v1/widget/sessions/{sid}", headers=bearer(token))).json()
    assert [m["text"] for m in view["messages"]] == ["hello", "hi Carol"]

    # Validation: empty or oversized messages name the field.
    r = await client.post(
        f"/v1/widget/sessions/{sid}/messages", json={"text": ""}, headers=bearer(token)
    )
    assert r.status == 422 and (await r.json())["error"]["field"] == "text"
    r = await client.post(
        f"/v1/widget/sessions/{sid}/messages", json={"text": "x" * 5000}, headers=bearer(token)
    )
    assert r.status == 413

    # Closed sessions take no more messages.
    r = await client.post(f"/v1/sessions/{sid}/close", json={"force": True}, headers=bearer(ADMIN))
    assert r.status == 200
    r = await client.post(
        f"/v1/widget/sessions/{sid}/messages", json={"text": "still there?"}, headers=bearer(token)
    )
    assert r.status == 409


async def test_chat_stream_without_token_is_401(client: TestClient[Any, Any]) -> None:
    w = await create_widget(client)
    r = await client.get(f"/v1/chat/{w['session_id']}")
    assert r.status == 401


# --- pages and OpenAPI --------------------------------------------------------------------------


async def test_pages_and_vendored_jssip_are_served(client: TestClient[Any, Any]) -> None:
    for page, needle in (
        ("desk", "desk.js"),
        ("widget", "widget.js"),
        ("wallboard", "wallboard.js"),
    ):
        r = await client.get(f"/{page}/")
        assert r.status == 200 and needle in await r.text()
        assert r.headers["X-Frame-Options"] == "DENY"
    r = await client.get("/web/vendor/jssip.min.js")
    assert r.status == 200 and len(await r.read()) > 100_000
    assert (await client.get("/web/vendor/jssip.LICENSES.txt")).status == 200
    assert (await client.get("/web/../config.py")).status in (403, 404)
    cfg = await (await client.get("/v1/web/config")).json()
    assert cfg == {"domain": DOMAIN, "sip_ws_url": None, "sip_ws_port": 5066, "widget": True}


async def test_every_web_route_is_in_openapi(client: TestClient[Any, Any]) -> None:
    document = json.loads(await (await client.get("/openapi.json")).read())
    documented = {
        (path, method)
        for path, item in document["paths"].items()
        for method in item
        if method in {"get", "post", "put", "delete", "options"}
    }
    assert isinstance(client.server, TestServer)
    routes = set()
    for route in client.server.app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if path and route.method not in ("HEAD", "OPTIONS"):
            routes.add((path, route.method.lower()))
    assert routes == documented
    for path in ("/v1/auth/login", "/v1/widget/sessions", "/desk/", "/v1/chat/{id}"):
        assert path in document["paths"]
    assert "AgentLogin" in document["components"]["schemas"]


def test_relay_drops_a_subscriber_that_falls_behind() -> None:
    from ucgate.web.chat import ChatRelay

    relay = ChatRelay(history=3, max_pending=2)
    queue = relay.subscribe("s")
    for i in range(3):
        relay.post("s", "customer", f"m{i}", float(i))
    got = [queue.get_nowait() for _ in range(3)]
    assert [m.text if m else None for m in got] == ["m0", "m1", None]
    relay.post("s", "customer", "m3", 3.0)
    assert queue.empty()
    assert [m.text for m in relay.history("s")] == ["m1", "m2", "m3"]


async def test_failed_logins_are_throttled_then_even_the_right_password_waits(
    client: TestClient[Any, Any],
) -> None:
    for _ in range(5):
        r = await client.post("/v1/auth/login", json={"agent": "alice", "password": "guess"})
        assert r.status == 401
    r = await client.post("/v1/auth/login", json={"agent": "alice", "password": "pw-a"})
    assert r.status == 429
    assert int(r.headers["Retry-After"]) >= 1
    assert (await r.json())["error"]["field"] == "agent"
