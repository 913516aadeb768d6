"""HTTP glue of the browser pages: static pages, agent login, the public widget, chat relay.

Routes (mounted by :func:`add_web_routes` when ``[web]`` is configured):

- ``GET /desk/``, ``/widget/``, ``/wallboard/``: the pages; their scripts and JsSIP under
  ``/web/``;
- ``GET /v1/web/config`` (public): what a page needs to start (SIP domain, WebSocket URL);
- ``POST /v1/auth/login`` (public): agent id + SIP password → an agent token;
- ``POST /v1/widget/sessions`` (public, only from ``web.widget_allowed_origins``): a chat
  session in ``web.widget_queue``, its widget token and its guest SIP credentials;
- ``GET /v1/widget/sessions/{id}``, ``POST /v1/widget/sessions/{id}/messages``: the widget
  token of that session;
- ``POST /v1/chat/{id}/messages``: the session's agent (its token or key) or sessions:write;
- ``GET /v1/chat/{id}`` (WebSocket; ``?access_token=``): the chat's history, then each new
  message, for the widget of that session, its agent, or sessions:read.

Agent tokens are held to the agent's own sessions by :func:`agent_token_scope`, a
middleware on the /v1/sessions routes (the routes themselves predate agent tokens).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ucgate.config import Scope
from ucgate.http.auth import TOKENS, Principal, authenticate, json_error
from ucgate.http.presence_api import ApiError, validation_error
from ucgate.registrar.accounts import AccountDirectory, AccountKind
from ucgate.registrar.guests import SESSION_HEADER, SESSION_USER, GuestAccounts, guest_user
from ucgate.sessions.model import Customer, Media, Session, SessionError
from ucgate.sessions.service import SessionService
from ucgate.sip.digest import DigestAlgorithm
from ucgate.web.chat import ChatRelay
from ucgate.web.config import WebConfig
from ucgate.web.throttle import LoginThrottle
from ucgate.web.tokens import TokenKind, TokenSigner

__all__ = [
    "STATIC_DIR",
    "AgentLogin",
    "ChatPost",
    "WebSetup",
    "WidgetSessionCreate",
    "add_web_routes",
    "agent_token_scope",
]

STATIC_DIR = Path(__file__).parent / "static"
PAGES = ("desk", "widget", "wallboard")
# What an agent's login token may do; its own status follows from Principal.agent.
AGENT_SCOPES = frozenset(
    {Scope.PRESENCE_READ.value, Scope.SESSIONS_READ.value, Scope.SESSIONS_WRITE.value}
)
# A widget token's one scope: no other route accepts it.
WIDGET_SCOPE = "widget"
LOGIN_MAX_BODY = 4096

_BODY = ConfigDict(extra="forbid", frozen=True)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AgentLogin(BaseModel):
    model_config = _BODY
    agent: str = Field(min_length=1, max_length=128, description="The agent id.")
    password: str = Field(min_length=1, max_length=256, description="The agent's SIP password.")


class WidgetSessionCreate(BaseModel):
    model_config = _BODY
    name: str | None = Field(default=None, max_length=128, description="The customer's name.")
    email: str | None = Field(default=None, max_length=256)
    context: dict[str, Any] = Field(
        default_factory=dict, description="What the page knows (shown to the agent)."
    )


class ChatPost(BaseModel):
    model_config = _BODY
    text: str = Field(min_length=1, max_length=4000)


@dataclass(frozen=True, slots=True)
class WebSetup:
    """What the web routes need from the node."""

    config: WebConfig
    domain: str
    accounts: AccountDirectory
    guests: GuestAccounts
    signer: TokenSigner
    # Port of the first ws: SIP listener (None: none configured).
    ws_port: int | None
    # Queue id → the media it takes, to check web.widget_queue at start.
    queues: Mapping[str, frozenset[Media]]
    throttle: LoginThrottle = field(default_factory=LoginThrottle)


WEB = web.AppKey("web", WebSetup)
CHAT = web.AppKey("chat", ChatRelay)
SESSIONS_KEY = web.AppKey("web_sessions", SessionService)


class _Tokens:
    """The app's TokenVerifier: agent and widget tokens → principals."""

    def __init__(self, signer: TokenSigner) -> None:
        self._signer = signer

    def principal_for_token(self, token: str, now: float) -> Principal | None:
        claims = self._signer.verify(token, now=now)
        if claims is None:
            return None
        if claims.kind is TokenKind.AGENT:
            return Principal(AGENT_SCOPES, agent=claims.subject)
        return Principal(
            frozenset({WIDGET_SCOPE}),
            name=f"widget:{claims.subject[:8]}",
            session=claims.subject,
        )


# --- pages ---------------------------------------------------------------------------------


def _page(name: str) -> Handler:
    path = STATIC_DIR / name / "index.html"

    async def serve(request: web.Request) -> web.StreamResponse:
        response = web.FileResponse(path)
        # The pages hold tokens: nobody may frame them (clickjacking), nothing is cached.
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Cache-Control"] = "no-store"
        return response

    serve.__name__ = f"{name}_page"
    return serve


async def web_config(request: web.Request) -> web.StreamResponse:
    setup = request.app[WEB]
    return web.json_response(
        {
            "domain": setup.domain,
            "sip_ws_url": setup.config.sip_ws_url,
            "sip_ws_port": setup.ws_port,
            "widget": setup.config.widget_enabled,
        }
    )


# --- agent login ---------------------------------------------------------------------------


async def _json_body(request: web.Request, model: type[Any], limit: int) -> Any:
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "body too large", field="body")
    raw = await request.content.read(limit + 1)
    if len(raw) > limit:
        raise ApiError(413, "body too large", field="body")
    if not raw and model is WidgetSessionCreate:
        return model()
    try:
        data = json.loads(raw)
    except ValueError:
        raise ApiError(400, "body is not JSON", field="body") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


# A stand-in HA1 compared when the agent id is unknown, so both failures take the same time.
_NO_HA1 = "0" * 32


def check_agent_password(accounts: AccountDirectory, realm: str, agent: str, password: str) -> bool:
    """Whether ``password`` is ``agent``'s SIP password: the registrar's question (RFC 3261
    §22, RFC 7616 §3.4.2: HA1 = H(user:realm:password)) asked of a typed password. The HA1
    is compared in constant time, and an unknown id costs the same as a wrong password."""
    account = accounts.get(agent)
    is_agent = account is not None and account.kind is AccountKind.AGENT
    stored = account.secret if account is not None else None
    algorithm = DigestAlgorithm.MD5
    expected = _NO_HA1
    if stored is not None:
        if stored.ha1_md5 is not None:
            expected = stored.ha1_md5
        elif stored.ha1_sha256 is not None:
            algorithm = DigestAlgorithm.SHA256
            expected = stored.ha1_sha256
    computed = algorithm.hash_hex(f"{agent}:{realm}:{password}")
    same = hmac.compare_digest(computed.encode(), expected.encode())
    return same and is_agent


async def login(request: web.Request) -> web.StreamResponse:
    setup = request.app[WEB]
    body: AgentLogin = await _json_body(request, AgentLogin, LOGIN_MAX_BODY)
    now = time.time()
    keys = (f"agent:{body.agent}", f"addr:{request.remote}")
    wait = setup.throttle.retry_after(keys, now)
    if wait is not None:
        resp = json_error(429, "too many failed logins; retry later", field="agent")
        resp.headers["Retry-After"] = str(max(1, int(wait + 0.999)))
        return resp
    if not check_agent_password(setup.accounts, setup.domain, body.agent, body.password):
        setup.throttle.failed(keys, now)
        # One answer for an unknown id and a wrong password: nobody learns which ids exist.
        raise ApiError(401, "unknown agent or wrong password", field="password")
    setup.throttle.succeeded(keys)
    ttl = setup.config.token_ttl
    token = setup.signer.issue(TokenKind.AGENT, body.agent, now=now, ttl=ttl)
    account = setup.accounts.get(body.agent)
    return web.json_response(
        {
            "token": token,
            "token_type": "Bearer",
            "expires_at": int(now) + ttl,
            "agent": body.agent,
            "display_name": account.display_name if account is not None else None,
            "scopes": sorted(AGENT_SCOPES),
            "sip": _sip_info(setup, f"sip:{body.agent}@{setup.domain}"),
        },
        headers={"Cache-Control": "no-store"},
    )


def _sip_info(setup: WebSetup, uri: str) -> dict[str, Any]:
    return {
        "uri": uri,
        "domain": setup.domain,
        "ws_url": setup.config.sip_ws_url,
        "ws_port": setup.ws_port,
    }


@web.middleware
async def agent_token_scope(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Hold agents' login tokens to their own sessions on the /v1/sessions routes: a
    session they are offered or own, a list filtered to themselves, no creating sessions.
    Configured keys (``api_keys[].agent`` included) keep the access their scopes give."""
    path = request.path
    if not path.startswith("/v1/sessions"):
        return await handler(request)
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return await handler(request)  # the route itself answers 401 / checks scopes
    principal = request.app[TOKENS].principal_for_token(token.strip(), time.time())
    if principal is None or principal.agent is None:
        return await handler(request)
    parts = path.rstrip("/").split("/")
    if len(parts) == 3:  # /v1/sessions
        if request.method != "GET":
            return json_error(403, "an agent cannot create sessions", field="Authorization")
        if request.query.get("agent") != principal.agent:
            return json_error(
                403, f"agent: must be {principal.agent!r} (your own sessions)", field="agent"
            )
        return await handler(request)
    try:
        session = await request.app[SESSIONS_KEY].get(parts[3])
    except SessionError:
        return await handler(request)  # the route answers 404
    if not _concerns(session, principal.agent):
        return json_error(403, "not one of your sessions", field="id")
    return await handler(request)


def _concerns(session: Session, agent: str) -> bool:
    return session.agent == agent or any(c.agent == agent for c in session.channels)


# --- widget --------------------------------------------------------------------------------


def _origin(request: web.Request) -> str | None:
    origin = request.headers.get("Origin")
    if origin is None:
        return None
    origin = origin.strip().lower()
    return origin if origin in request.app[WEB].config.widget_allowed_origins else None


def _cors(response: web.StreamResponse, origin: str | None) -> web.StreamResponse:
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
    return response


async def widget_preflight(request: web.Request) -> web.StreamResponse:
    origin = _origin(request)
    if origin is None:
        raise ApiError(403, "origin not allowed", field="Origin")
    response = web.Response(status=204)
    response.headers["Access-Control-Allow-Methods"] = "GET, POST"
    response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
    response.headers["Access-Control-Max-Age"] = "600"
    return _cors(response, origin)


def _widget_enabled(setup: WebSetup) -> None:
    if not setup.config.widget_enabled or setup.config.widget_queue is None:
        raise ApiError(404, "the web widget is not enabled", field="web.widget_enabled")


async def create_widget_session(request: web.Request) -> web.StreamResponse:
    setup = request.app[WEB]
    _widget_enabled(setup)
    origin = _origin(request)
    if origin is None:
        # Browsers always send Origin on a cross-site POST; a missing or unlisted one is a
        # script elsewhere or a page that was not allowed to embed the widget.
        raise ApiError(403, "origin not allowed", field="Origin")
    body: WidgetSessionCreate = await _json_body(
        request, WidgetSessionCreate, setup.config.widget_max_body
    )
    assert setup.config.widget_queue is not None
    try:
        session = await request.app[SESSIONS_KEY].create_session(
            Customer(name=body.name, email=body.email),
            Media.CHAT,
            setup.config.widget_queue,
            {"source": "web-widget", **body.context},
        )
    except SessionError as exc:
        raise ApiError(exc.status, exc.message, field=exc.field) from None
    now = time.time()
    ttl = setup.config.widget_token_ttl
    token = setup.signer.issue(TokenKind.WIDGET, session.id, now=now, ttl=ttl)
    user = guest_user(session.id)
    sip = _sip_info(setup, f"sip:{user}@{setup.domain}")
    sip.update(
        {
            "user": user,
            "password": setup.guests.password(session.id),
            "call": f"sip:{SESSION_USER}@{setup.domain}",
            "headers": [f"{SESSION_HEADER}: {session.id}"],
        }
    )
    response = web.json_response(
        {
            "session_id": session.id,
            "token": token,
            "expires_at": int(now) + ttl,
            "pin": session.pin,
            "sip": sip,
        },
        status=201,
        headers={"Cache-Control": "no-store"},
    )
    return _cors(response, origin)


def _widget_principal(request: web.Request) -> Principal:
    principal = authenticate(request)
    if isinstance(principal, web.Response):
        raise ApiError(401, "missing or unknown widget token", field="Authorization")
    if principal.session != request.match_info["id"]:
        raise ApiError(403, "this token belongs to another session", field="Authorization")
    return principal


async def widget_session(request: web.Request) -> web.StreamResponse:
    _widget_principal(request)
    sid = request.match_info["id"]
    try:
        session = await request.app[SESSIONS_KEY].get(sid)
    except SessionError as exc:
        raise ApiError(exc.status, exc.message, field=exc.field) from None
    # What the customer may see: not the context, not other customers' data, no timelines.
    response = web.json_response(
        {
            "session_id": session.id,
            "open": session.closed_at is None,
            "agent": session.agent,
            "pin": session.pin,
            "channels": [
                {"id": c.id, "media": c.media.value, "state": c.state.value}
                for c in session.channels
            ],
            "messages": [m.to_json_dict() for m in request.app[CHAT].history(sid)],
        }
    )
    return _cors(response, _origin(request))


async def widget_message(request: web.Request) -> web.StreamResponse:
    principal = _widget_principal(request)
    assert principal.session is not None
    setup = request.app[WEB]
    body: ChatPost = await _json_body(request, ChatPost, setup.config.widget_max_body)
    session = await _open_session(request, principal.session)
    message = request.app[CHAT].post(
        session.id, "customer", body.text, time.time(), name=session.customer.name
    )
    return _cors(web.json_response(message.to_json_dict(), status=201), _origin(request))


async def _open_session(request: web.Request, sid: str) -> Session:
    try:
        session = await request.app[SESSIONS_KEY].get(sid)
    except SessionError as exc:
        raise ApiError(exc.status, exc.message, field=exc.field) from None
    if session.closed_at is not None:
        raise ApiError(409, "the session is closed", field="id")
    return session


# --- chat (agent side and stream) ------------------------------------------------------------


async def agent_message(request: web.Request) -> web.StreamResponse:
    principal = authenticate(request)
    if isinstance(principal, web.Response):
        return principal
    sid = request.match_info["id"]
    session = await _open_session(request, sid)
    if not (
        (principal.agent is not None and _concerns(session, principal.agent))
        or (principal.allows(Scope.SESSIONS_WRITE.value) and principal.agent is None)
    ):
        raise ApiError(403, "not one of your sessions", field="id")
    body: ChatPost = await _json_body(request, ChatPost, request.app[WEB].config.widget_max_body)
    message = request.app[CHAT].post(
        sid, "agent", body.text, time.time(), name=principal.agent or principal.label
    )
    return web.json_response(message.to_json_dict(), status=201)


async def chat_stream(request: web.Request) -> web.StreamResponse:
    principal = authenticate(request, allow_query_token=True)
    if isinstance(principal, web.Response):
        return principal
    sid = request.match_info["id"]
    try:
        session = await request.app[SESSIONS_KEY].get(sid)
    except SessionError as exc:
        raise ApiError(exc.status, exc.message, field=exc.field) from None
    allowed = (
        principal.session == sid
        or (principal.agent is not None and _concerns(session, principal.agent))
        or (principal.agent is None and principal.allows(Scope.SESSIONS_READ.value))
    )
    if not allowed:
        raise ApiError(403, "not allowed to read this chat", field="access_token")
    ws = web.WebSocketResponse(heartbeat=20.0)
    if not ws.can_prepare(request).ok:
        raise ApiError(400, f"GET {request.path} is a WebSocket endpoint", field="Upgrade")
    await ws.prepare(request)
    relay = request.app[CHAT]
    # Subscribe before reading the history so nothing posted in between is lost; the
    # client drops repeats by seq.
    queue = relay.subscribe(sid)
    reader = asyncio.create_task(_drain(ws))
    try:
        for message in relay.history(sid):
            await ws.send_str(json.dumps(message.to_json_dict()))
        while not ws.closed:
            getter = asyncio.create_task(queue.get())
            done, _ = await asyncio.wait((getter, reader), return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                break
            item = getter.result()
            if item is None:
                await ws.close(code=1013, message=b"fell behind; reconnect")
                break
            await ws.send_str(json.dumps(item.to_json_dict()))
    finally:
        relay.unsubscribe(sid, queue)
        reader.cancel()
        with contextlib.suppress(BaseException):
            await reader
        await ws.close()
    return ws


async def _drain(ws: web.WebSocketResponse) -> None:
    async for msg in ws:
        if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
            break


# --- mounting ------------------------------------------------------------------------------


def check_widget_queue(setup: WebSetup) -> None:
    """Refuse to start with a widget whose queue cannot take chats (a config mistake the
    model alone cannot see: queues are another section)."""
    cfg = setup.config
    if not cfg.widget_enabled:
        return
    from ucgate.config import ConfigError

    if cfg.widget_queue is None:
        raise ConfigError(["web.widget_queue: required when web.widget_enabled is true"])
    media = setup.queues.get(cfg.widget_queue)
    if media is None:
        raise ConfigError([f"web.widget_queue: no queue {cfg.widget_queue!r} in [[queues]]"])
    if Media.CHAT not in media:
        raise ConfigError(["web.widget_queue: that queue does not take chat"])
    if not cfg.widget_allowed_origins:
        raise ConfigError(["web.widget_allowed_origins: list at least one origin"])


def add_web_routes(app: web.Application, setup: WebSetup, sessions: SessionService) -> None:
    """Mount the pages and the login, widget and chat routes."""
    check_widget_queue(setup)
    app[WEB] = setup
    app[CHAT] = ChatRelay(history=setup.config.chat_history)
    app[SESSIONS_KEY] = sessions
    app[TOKENS] = _Tokens(setup.signer)
    app.middlewares.append(agent_token_scope)
    app.router.add_get("/v1/web/config", web_config)
    app.router.add_post("/v1/auth/login", login)
    app.router.add_post("/v1/widget/sessions", create_widget_session)
    app.router.add_route("OPTIONS", "/v1/widget/sessions", widget_preflight)
    app.router.add_get("/v1/widget/sessions/{id}", widget_session)
    app.router.add_route("OPTIONS", "/v1/widget/sessions/{id}", widget_preflight)
    app.router.add_post("/v1/widget/sessions/{id}/messages", widget_message)
    app.router.add_route("OPTIONS", "/v1/widget/sessions/{id}/messages", widget_preflight)
    app.router.add_post("/v1/chat/{id}/messages", agent_message)
    app.router.add_get("/v1/chat/{id}", chat_stream)
    if setup.config.pages:
        for name in PAGES:
            app.router.add_get(f"/{name}/", _page(name))
        app.router.add_static("/web/", STATIC_DIR, follow_symlinks=False)


def web_paths(
    paths: dict[str, Any],
    operation: Callable[..., dict[str, Any]],
    json_: Callable[[dict[str, Any], str], dict[str, Any]],
    ref: Callable[[type[BaseModel]], dict[str, str]],
    *,
    pages: bool,
) -> tuple[type[BaseModel], ...]:
    """Add these routes' OpenAPI operations to ``paths`` (helpers are
    :mod:`ucgate.http.openapi`'s, passed in to avoid an import cycle); returns the body
    models whose schemas the document must include."""

    def body(model: type[BaseModel]) -> dict[str, Any]:
        return {"required": True, "content": {"application/json": {"schema": ref(model)}}}

    sid = {
        "name": "id",
        "in": "path",
        "required": True,
        "description": "The session id.",
        "schema": {"type": "string"},
    }
    widget_auth: list[dict[str, list[str]]] = [{"bearer": []}]
    body_errors = {
        "400": "The body is not JSON.",
        "413": "The body is too large.",
        "422": "Invalid field (`field` names it).",
    }
    obj = {"type": "object"}
    paths["/v1/web/config"] = {
        "get": operation(
            "getWebConfig",
            "What the browser pages need to start: SIP domain and WebSocket URL or port",
            scopes=None,
            ok=json_(obj, "`domain`, `sip_ws_url`, `sip_ws_port`, `widget`."),
            errors={},
        )
    }
    paths["/v1/auth/login"] = {
        "post": operation(
            "agentLogin",
            "Log an agent in with its SIP password; returns a short-lived bearer token",
            description="The token (HMAC-signed, `web.token_ttl` seconds) has the scopes "
            "presence:read, sessions:read and sessions:write, belongs to the agent (it may "
            "set its own status) and is held to the agent's own sessions.",
            scopes=None,
            body=body(AgentLogin),
            ok=json_(obj, "`token`, `expires_at`, `agent`, `scopes`, `sip`."),
            errors={**body_errors, "401": "Unknown agent or wrong password (one answer)."},
        )
    }
    paths["/v1/widget/sessions"] = {
        "post": operation(
            "createWidgetSession",
            "Public: a chat session for the web widget, its token and guest SIP credentials",
            description="Only from an `Origin` in `web.widget_allowed_origins`; the guest "
            "may only INVITE `sip:session@<domain>` with `X-UCGate-Session: <session id>`.",
            scopes=None,
            body={
                "required": False,
                "content": {"application/json": {"schema": ref(WidgetSessionCreate)}},
            },
            ok=json_(obj, "`session_id`, `token`, `expires_at`, `pin`, `sip`."),
            errors={**body_errors, "403": "Origin not allowed.", "404": "Widget disabled."},
        )
    }
    widget_errors = {
        "401": "Missing or unknown widget token.",
        "403": "The token belongs to another session.",
        "404": "No such session.",
    }
    paths["/v1/widget/sessions/{id}"] = {
        "get": operation(
            "getWidgetSession",
            "The widget's own session: open, agent, channels, chat history",
            scopes=None,
            security=widget_auth,
            parameters=[sid],
            ok=json_(obj, "The customer's view of the session."),
            errors=widget_errors,
        )
    }
    paths["/v1/widget/sessions/{id}/messages"] = {
        "post": operation(
            "postWidgetMessage",
            "The customer sends a chat message",
            scopes=None,
            security=widget_auth,
            parameters=[sid],
            body=body(ChatPost),
            ok=json_(obj, "The message as relayed (201)."),
            errors={**body_errors, **widget_errors, "409": "The session is closed."},
        )
    }
    paths["/v1/chat/{id}/messages"] = {
        "post": operation(
            "postAgentMessage",
            "The session's agent sends a chat message",
            scopes=None,
            security=widget_auth,
            parameters=[sid],
            body=body(ChatPost),
            ok=json_(obj, "The message as relayed (201)."),
            errors={
                **body_errors,
                "401": "Missing or unknown token.",
                "403": "Not the session's agent.",
                "404": "No such session.",
                "409": "The session is closed.",
            },
        )
    }
    paths["/v1/chat/{id}"] = {
        "get": operation(
            "chatStream",
            "WebSocket: the chat's history, then every new message",
            description="For the session's widget token, its agent, or sessions:read; "
            "browsers pass the token as `?access_token=`.",
            scopes=None,
            security=[{"bearer": []}, {"accessToken": []}],
            parameters=[sid],
            ok=json_(obj, "WebSocket frames: chat_message objects."),
            errors={
                "400": "Not a WebSocket request.",
                "401": "Missing or unknown token.",
                "403": "Not allowed to read this chat.",
                "404": "No such session.",
            },
        )
    }
    if pages:
        for name, text in (
            ("desk", "The agent desktop (HTML)"),
            ("widget", "The customer chat widget (HTML)"),
            ("wallboard", "The supervisor wallboard (HTML)"),
        ):
            paths[f"/{name}/"] = {
                "get": operation(
                    f"{name}Page",
                    text,
                    scopes=None,
                    ok={"description": "The page.", "content": {"text/html": {}}},
                    errors={},
                )
            }
    return (AgentLogin, WidgetSessionCreate, ChatPost)
