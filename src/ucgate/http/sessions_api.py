"""The sessions HTTP API (issue 5), mounted by :func:`add_sessions_routes`.

- ``POST /v1/sessions`` (sessions:write): create a session with one channel, routed at once;
- ``GET /v1/sessions`` / ``GET /v1/sessions/{id}`` (sessions:read);
- ``POST /v1/sessions/{id}/channels`` (sessions:write): add a channel; voice with ``to`` is
  an elevation to the session's agent;
- ``POST /v1/sessions/{id}/channels/{channel}/{action}`` (sessions:write), action one of
  accept, reject, hold, resume, end, wrap_up_done. accept/reject name the agent in the body
  or use the key's own agent (config ``api_keys[].agent``);
- ``POST /v1/sessions/{id}/close`` (sessions:write);
- ``GET /v1/metrics/{agents|queues|channels}`` (metrics:read), JSON or CSV
  (``Accept: text/csv`` or ``?format=csv``);
- ``GET /v1/reports/self-service`` (metrics:read);
- ``GET /v1/events`` (sessions:read): WebSocket of session events (offers carry the
  session and its self-service context).

Errors: 422 naming the field, 404 unknown session or channel, 409 illegal transition.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from aiohttp import WSMsgType, web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ucgate.config import Scope
from ucgate.http.auth import PRINCIPAL, require
from ucgate.http.calls_api import parse_time
from ucgate.http.presence_api import ApiError, validation_error
from ucgate.sessions.metrics import compute_metrics, to_csv
from ucgate.sessions.model import ChannelInput, Customer, Media, SessionError
from ucgate.sessions.service import SessionService

__all__ = [
    "SESSIONS",
    "ChannelAction",
    "ChannelCreate",
    "CloseBody",
    "SessionCreate",
    "add_sessions_routes",
]

SESSIONS_READ = Scope.SESSIONS_READ.value
SESSIONS_WRITE = Scope.SESSIONS_WRITE.value
METRICS_READ = Scope.METRICS_READ.value
SESSIONS: web.AppKey[SessionService] = web.AppKey("sessions")
MAX_BODY = 64 * 1024

_BODY = ConfigDict(extra="forbid", frozen=True)


class CustomerIn(BaseModel):
    model_config = _BODY
    id: str | None = Field(default=None, max_length=256)
    phone: str | None = Field(default=None, max_length=64, description="E.164 callback number.")
    email: str | None = Field(default=None, max_length=256)
    name: str | None = Field(default=None, max_length=256)


class SessionCreate(BaseModel):
    model_config = _BODY
    customer: CustomerIn = Field(default_factory=CustomerIn)
    media: Media
    queue: str = Field(min_length=1, max_length=128)
    context: dict[str, Any] = Field(
        default_factory=dict, description="Self-service context shown to the agent."
    )
    external_ref: str | None = Field(default=None, max_length=256)
    self_service_step: str | None = Field(default=None, max_length=128)


class ChannelCreate(BaseModel):
    model_config = _BODY
    media: Media
    to: str | None = Field(
        default=None, max_length=64, description="Voice elevation: the customer's number."
    )
    queue: str | None = Field(default=None, min_length=1, max_length=128)
    external_ref: str | None = Field(default=None, max_length=256)


class ChannelAction(BaseModel):
    model_config = _BODY
    agent: str | None = Field(default=None, min_length=1, max_length=128)
    detail: str = Field(default="", max_length=256)


class CloseBody(BaseModel):
    model_config = _BODY
    force: bool = False
    self_service_step: str | None = Field(default=None, max_length=128)


class MetricsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    from_: str | None = Field(default=None, alias="from", description="Unix seconds or ISO 8601.")
    to: str | None = Field(default=None, description="Unix seconds or ISO 8601 (exclusive).")
    interval: float = Field(default=900.0, gt=0, le=86400 * 31, description="Seconds.")
    format: Literal["json", "csv"] | None = None


_ACTIONS = {
    "accept": ChannelInput.ACCEPT,
    "reject": ChannelInput.REJECT,
    "hold": ChannelInput.HOLD,
    "resume": ChannelInput.RESUME,
    "end": ChannelInput.END,
    "wrap_up_done": ChannelInput.WRAP_UP_DONE,
}
_GROUPS = {"agents": ("agent",), "queues": ("queue",), "channels": ("media",)}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _session_errors(handler: Handler) -> Handler:
    async def inner(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except SessionError as exc:
            raise ApiError(exc.status, exc.message, field=exc.field) from None

    inner.__name__ = handler.__name__
    return inner


async def _body(request: web.Request, model: type[Any]) -> Any:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(413, "body too large", field="body")
    raw = await request.read()
    if len(raw) > MAX_BODY:
        raise ApiError(413, "body too large", field="body")
    if not raw and model in (CloseBody, ChannelAction):
        return model()
    try:
        data = json.loads(raw)
    except ValueError:
        raise ApiError(400, "body is not JSON", field="body") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


@require(SESSIONS_WRITE)
@_session_errors
async def create_session(request: web.Request) -> web.StreamResponse:
    body: SessionCreate = await _body(request, SessionCreate)
    c = body.customer
    session = await request.app[SESSIONS].create_session(
        Customer(id=c.id, phone=c.phone, email=c.email, name=c.name),
        body.media,
        body.queue,
        body.context,
        external_ref=body.external_ref,
        self_service_step=body.self_service_step,
    )
    return web.json_response(session.to_json_dict(), status=201)


@require(SESSIONS_READ)
@_session_errors
async def list_sessions(request: web.Request) -> web.StreamResponse:
    q = request.query
    try:
        limit = int(q.get("limit", "100"))
    except ValueError:
        raise ApiError(422, "limit: must be an integer", field="limit") from None
    open_only = q.get("open", "true") != "false"
    try:
        page = await request.app[SESSIONS].store.list(
            open_only=open_only, agent=q.get("agent"), limit=limit, cursor=q.get("cursor")
        )
    except ValueError as exc:
        field = "limit" if "limit" in str(exc) else "cursor"
        raise ApiError(422, f"{field}: {exc}", field=field) from None
    return web.json_response(
        {"sessions": [s.to_json_dict() for s in page.sessions], "next_cursor": page.next_cursor}
    )


@require(SESSIONS_READ)
@_session_errors
async def get_session(request: web.Request) -> web.StreamResponse:
    session = await request.app[SESSIONS].get(request.match_info["id"])
    return web.json_response(session.to_json_dict())


@require(SESSIONS_WRITE)
@_session_errors
async def add_channel(request: web.Request) -> web.StreamResponse:
    body: ChannelCreate = await _body(request, ChannelCreate)
    if body.to is not None and body.media is not Media.VOICE:
        raise ApiError(422, "to: only voice channels are placed to a number", field="to")
    session = await request.app[SESSIONS].add_channel(
        request.match_info["id"],
        body.media,
        to=body.to,
        queue=body.queue,
        external_ref=body.external_ref,
    )
    return web.json_response(session.to_json_dict(), status=201)


@require(SESSIONS_WRITE)
@_session_errors
async def channel_action(request: web.Request) -> web.StreamResponse:
    action = _ACTIONS.get(request.match_info["action"])
    if action is None:
        raise ApiError(404, "unknown action", field="action")
    body: ChannelAction = await _body(request, ChannelAction)
    agent = body.agent or request[PRINCIPAL].agent
    if action in (ChannelInput.ACCEPT, ChannelInput.REJECT) and agent is None:
        raise ApiError(422, "agent: required (or use the agent's own key)", field="agent")
    session = await request.app[SESSIONS].channel_event(
        request.match_info["id"],
        request.match_info["channel"],
        action,
        agent=agent,
        detail=body.detail,
    )
    return web.json_response(session.to_json_dict())


@require(SESSIONS_WRITE)
@_session_errors
async def close_session(request: web.Request) -> web.StreamResponse:
    body: CloseBody = await _body(request, CloseBody)
    session = await request.app[SESSIONS].close(
        request.match_info["id"], force=body.force, self_service_step=body.self_service_step
    )
    return web.json_response(session.to_json_dict())


def _window(request: web.Request) -> MetricsQuery:
    try:
        query = MetricsQuery.model_validate(dict(request.query))
    except ValidationError as exc:
        raise validation_error(exc, where="query") from None
    for name, value in (("from", query.from_), ("to", query.to)):
        if value is not None:
            try:
                parse_time(value)
            except ValueError as exc:
                raise ApiError(422, f"{name}: {exc}", field=name) from None
    return query


@require(METRICS_READ)
async def get_metrics(request: web.Request) -> web.StreamResponse:
    group = _GROUPS.get(request.match_info["group"])
    if group is None:
        raise ApiError(404, "metrics group must be agents, queues or channels", field="group")
    query = _window(request)
    start = None if query.from_ is None else parse_time(query.from_)
    end = None if query.to is None else parse_time(query.to)
    store = request.app[SESSIONS].store
    # Sessions created before the window still contribute events inside it; those created
    # after its end cannot.
    sessions = []
    cursor: str | None = None
    while True:
        page = await store.list(open_only=False, until=end, limit=1000, cursor=cursor)
        sessions.extend(page.sessions)
        cursor = page.next_cursor
        if cursor is None:
            break
    rows = [
        r
        for r in compute_metrics(sessions, interval=query.interval, group_by=group)
        if (start is None or r.interval_start >= start - query.interval)
        and (end is None or r.interval_start < end)
        and (start is None or r.interval_start + query.interval > start)
    ]
    wants_csv = query.format == "csv" or (
        query.format is None and "text/csv" in request.headers.get("Accept", "")
    )
    if wants_csv:
        return web.Response(text=to_csv(rows), content_type="text/csv")
    return web.json_response({"interval": query.interval, "rows": [r.to_json_dict() for r in rows]})


@require(METRICS_READ)
async def self_service_report(request: web.Request) -> web.StreamResponse:
    query = _window(request)
    counts = await request.app[SESSIONS].self_service_report(
        since=None if query.from_ is None else parse_time(query.from_),
        until=None if query.to is None else parse_time(query.to),
    )
    return web.json_response(
        {"steps": [{"step": step, "sessions": n} for step, n in counts.items()]}
    )


@require(SESSIONS_READ, allow_query_token=True)
async def events_stream(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse(heartbeat=20.0)
    if not ws.can_prepare(request).ok:
        raise ApiError(400, "GET /v1/events is a WebSocket endpoint", field="Upgrade")
    await ws.prepare(request)
    service = request.app[SESSIONS]
    queue = service.events.subscribe()
    principal = request[PRINCIPAL]
    reader = asyncio.create_task(_drain_incoming(ws))
    try:
        while not ws.closed:
            getter = asyncio.create_task(queue.get())
            done, _ = await _first(getter, reader)
            if getter not in done:
                getter.cancel()
                break
            event = getter.result()
            if event is None:
                await ws.close(code=1013, message=b"fell behind; re-read sessions")
                break
            # An agent's own key sees only its sessions' events.
            if principal.agent is not None and principal.agent not in (
                event.agent,
                event.session.agent,
            ):
                continue
            await ws.send_str(json.dumps(event.to_json_dict(), separators=(",", ":")))
    finally:
        service.events.unsubscribe(queue)
        reader.cancel()
        with contextlib.suppress(BaseException):
            await reader
        await ws.close()
    return ws


async def _first(*tasks: Any) -> tuple[set[Any], set[Any]]:
    return await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)


async def _drain_incoming(ws: web.WebSocketResponse) -> None:
    async for msg in ws:
        if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
            break


def add_sessions_routes(app: web.Application, service: SessionService) -> None:
    """Mount the sessions, metrics, report and event routes over ``service``."""
    app[SESSIONS] = service
    app.router.add_post("/v1/sessions", create_session)
    app.router.add_get("/v1/sessions", list_sessions)
    app.router.add_get("/v1/sessions/{id}", get_session)
    app.router.add_post("/v1/sessions/{id}/channels", add_channel)
    app.router.add_post("/v1/sessions/{id}/channels/{channel}/{action}", channel_action)
    app.router.add_post("/v1/sessions/{id}/close", close_session)
    app.router.add_get("/v1/metrics/{group}", get_metrics)
    app.router.add_get("/v1/reports/self-service", self_service_report)
    app.router.add_get("/v1/events", events_stream)


def sessions_paths(
    paths: dict[str, Any],
    operation: Callable[..., dict[str, Any]],
    json_: Callable[[dict[str, Any], str], dict[str, Any]],
    ref: Callable[[type[BaseModel]], dict[str, str]],
    query_parameters: Callable[..., list[dict[str, Any]]],
) -> tuple[type[BaseModel], ...]:
    """Add the OpenAPI operations of these routes to ``paths`` (helpers are
    :mod:`ucgate.http.openapi`'s, passed in to avoid an import cycle); returns the body
    models whose schemas the document must include."""

    def body(model: type[BaseModel]) -> dict[str, Any]:
        return {"required": True, "content": {"application/json": {"schema": ref(model)}}}

    def path_param(name: str, text: str) -> dict[str, Any]:
        return {
            "name": name,
            "in": "path",
            "required": True,
            "description": text,
            "schema": {"type": "string"},
        }

    session_obj = json_({"type": "object"}, "The session: id, customer, channels, agent, pin.")
    sid = path_param("id", "The session id.")
    write_errors = {
        "400": "The body is not JSON.",
        "404": "No such session or channel.",
        "409": "The transition is not allowed in the channel's state.",
        "413": "The body is too large.",
        "422": "Invalid field (`field` names it).",
    }
    paths["/v1/sessions"] = {
        "post": operation(
            "createSession",
            "Create a session with one channel; it is routed at once",
            scopes=(SESSIONS_WRITE,),
            body=body(SessionCreate),
            ok=session_obj,
            errors=write_errors,
        ),
        "get": operation(
            "listSessions",
            "Sessions, newest first (open ones unless open=false)",
            scopes=(SESSIONS_READ,),
            parameters=[
                {"name": n, "in": "query", "required": False, "schema": {"type": "string"}}
                for n in ("open", "agent", "limit", "cursor")
            ],
            ok=json_({"type": "object"}, "`sessions` and `next_cursor`."),
            errors={"422": "A parameter is invalid."},
        ),
    }
    paths["/v1/sessions/{id}"] = {
        "get": operation(
            "getSession",
            "One session",
            scopes=(SESSIONS_READ,),
            parameters=[sid],
            ok=session_obj,
            errors={"404": "No such session."},
        )
    }
    paths["/v1/sessions/{id}/channels"] = {
        "post": operation(
            "addSessionChannel",
            "Add a channel; voice with `to` elevates to the session's agent",
            scopes=(SESSIONS_WRITE,),
            parameters=[sid],
            body=body(ChannelCreate),
            ok=session_obj,
            errors=write_errors,
        )
    }
    paths["/v1/sessions/{id}/channels/{channel}/{action}"] = {
        "post": operation(
            "channelAction",
            "accept, reject, hold, resume, end or wrap_up_done a channel",
            scopes=(SESSIONS_WRITE,),
            parameters=[
                sid,
                path_param("channel", "The channel id."),
                {
                    "name": "action",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "enum": sorted(_ACTIONS)},
                },
            ],
            body={
                "required": False,
                "content": {"application/json": {"schema": ref(ChannelAction)}},
            },
            ok=session_obj,
            errors=write_errors,
        )
    }
    paths["/v1/sessions/{id}/close"] = {
        "post": operation(
            "closeSession",
            "Close a session (live channels need force)",
            scopes=(SESSIONS_WRITE,),
            parameters=[sid],
            body={"required": False, "content": {"application/json": {"schema": ref(CloseBody)}}},
            ok=session_obj,
            errors=write_errors,
        )
    }
    paths["/v1/metrics/{group}"] = {
        "get": operation(
            "getMetrics",
            "Talk, hold, ACW, AHT, ATT, offers, service level, abandonment per interval",
            scopes=(METRICS_READ,),
            parameters=[
                {
                    "name": "group",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "enum": sorted(_GROUPS)},
                },
                *query_parameters(MetricsQuery),
            ],
            ok={
                "description": "Rows per interval (JSON), or CSV with format=csv or "
                "Accept: text/csv.",
                "content": {
                    "application/json": {"schema": {"type": "object"}},
                    "text/csv": {"schema": {"type": "string"}},
                },
            },
            errors={"404": "Unknown group.", "422": "A parameter is invalid."},
        )
    }
    paths["/v1/reports/self-service"] = {
        "get": operation(
            "selfServiceReport",
            "Where customers give up: last self-service step of sessions no agent took",
            scopes=(METRICS_READ,),
            parameters=query_parameters(MetricsQuery, skip=("interval", "format")),
            ok=json_({"type": "object"}, "`steps`: step and sessions count."),
            errors={"422": "A parameter is invalid."},
        )
    }
    paths["/v1/events"] = {
        "get": operation(
            "sessionEvents",
            "WebSocket of session events (offers with context, assignments, changes)",
            scopes=(SESSIONS_READ,),
            security=[{"bearer": []}, {"accessToken": []}],
            ok={"description": "Upgraded to a WebSocket; text frames of event JSON."},
            errors={"400": "Not a WebSocket upgrade request."},
        )
    }
    return (SessionCreate, ChannelCreate, ChannelAction, CloseBody)
