"""The presence HTTP API: REST documents, manual status, and the change stream.

Routes (mounted by :func:`add_presence_routes`):

- ``GET /v1/presence`` (presence:read): every agent's document, filterable;
- ``GET /v1/presence/{agent}`` (presence:read);
- ``PUT /v1/presence/{agent}/status``: presence:write (supervisors) or admin, or the
  agent's own key (config ``api_keys[].agent``) with any scope;
- ``GET /v1/presence/stream`` (presence:read): a WebSocket when the request is an upgrade,
  Server-Sent Events otherwise. Both send the same events: a snapshot, then every change
  in version order.

Resuming. Every change carries the global version the store assigned. A client that
reconnects with ``?since=V`` (or, for SSE, the ``Last-Event-ID`` header a browser's
EventSource sends by itself) receives exactly the changes after V; when V is older than
the store's change log (or newer than anything the store knows, e.g. after a reset) it
receives a snapshot marked ``"resumed": false`` instead. The header wins over ``since``
because EventSource reconnects to the original URL, whose ``since`` is stale by then.

No gap, no duplicate. A stream subscribes *before* reading the snapshot or the replay, so
a change made meanwhile is both in the subscription and (maybe) in what was read; the
subscription's copy is dropped when its version is not newer than what the client
already has (the snapshot version, or that agent's document version in the snapshot).

Slow consumers. Each stream holds one store subscription, whose queue is bounded by the
store. A client that stops reading makes our send block; after ``send_timeout`` the
connection is aborted, and a subscription the store drops for lagging ends the stream
(WebSocket close 1013 "try again later" naming the version to resume from). Memory per
client stays bounded either way, and the client resumes with ``since``.
"""

from __future__ import annotations

import asyncio
import builtins
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol, TypeVar

import structlog
from aiohttp import WSCloseCode, WSMsgType, web
from pydantic import BaseModel, ValidationError

from ucgate.http.auth import (
    PRESENCE_READ,
    PRESENCE_WRITE,
    PRINCIPAL,
    authenticate,
    json_error,
    require,
)
from ucgate.http.schemas import PresenceQuery, StatusUpdate, StreamQuery
from ucgate.presence.model import BUILTIN_STATUSES, PresenceDocument, StatusDef, VoiceState
from ucgate.presence.store import ChangeSubscription, PresenceChange, SubscriptionLagged
from ucgate.store.location import StoreUnavailable

log = structlog.get_logger(__name__)

_M = TypeVar("_M", bound=BaseModel)

# Bodies of PUT .../status are a status and a short note; anything bigger is not ours.
MAX_BODY = 4096


class PresenceSource(Protocol):
    """The part of ``ucgate.presence.service.PresenceService`` this API uses."""

    async def get(self, agent: str) -> PresenceDocument | None: ...
    async def list(
        self,
        *,
        status: str | None = None,
        voice: str | None = None,
        routable: bool | None = None,
    ) -> list[PresenceDocument]: ...
    async def set_manual(
        self, agent: str, status: str, *, note: str | None, set_by: str
    ) -> PresenceDocument: ...
    def subscribe(self) -> ChangeSubscription: ...
    async def changes_since(self, version: int) -> builtins.list[PresenceChange] | None: ...
    async def current_version(self) -> int: ...


@dataclass(frozen=True, slots=True)
class StreamSettings:
    # WebSocket ping interval; aiohttp closes a socket whose pong does not come back.
    heartbeat: float = 20.0
    # SSE comment line sent when idle, so proxies keep the connection and a vanished
    # client is noticed by a failing write.
    keepalive: float = 15.0
    # SSE ``retry:`` field (milliseconds before EventSource reconnects).
    retry_ms: int = 3000
    # A send blocked longer than this means the client stopped reading.
    send_timeout: float = 10.0
    # How long a WebSocket close handshake may take before the socket is dropped.
    close_timeout: float = 2.0
    # Bytes aiohttp buffers for one WebSocket before our send waits for the peer.
    ws_writer_limit: int = 256 * 1024


PRESENCE: web.AppKey[PresenceSource] = web.AppKey("presence")
STATUSES: web.AppKey[Mapping[str, StatusDef]] = web.AppKey("presence_statuses")
STREAMS: web.AppKey[StreamHub] = web.AppKey("presence_streams")


class ApiError(Exception):
    """A request the handlers refuse; :func:`api_errors` turns it into the JSON body."""

    def __init__(
        self, status: int, message: str, *, field: str | None = None, **extra: object
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.extra = extra

    def response(self) -> web.Response:
        extra = dict(self.extra)
        if self.field is not None:
            extra["field"] = self.field
        return json_error(self.status, self.message, **extra)


@web.middleware
async def api_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every error as ``{"error": {...}}`` JSON, aiohttp's own 404/405 included."""
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except StoreUnavailable:
        response = json_error(503, "presence store unavailable")
        response.headers["Retry-After"] = "5"
        return response
    except web.HTTPException as exc:
        if exc.status < 400 or exc.empty_body:
            raise
        response = json_error(exc.status, exc.reason)
        for name in ("Allow", "Retry-After"):
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
        return response


def validation_error(exc: ValidationError, *, where: str = "body") -> ApiError:
    """422 naming the first offending field (all of them in ``errors``)."""
    issues = []
    for error in exc.errors(include_url=False):
        loc = ".".join(str(part) for part in error["loc"]) or where
        issues.append({"field": loc, "message": error["msg"]})
    first = issues[0]
    return ApiError(
        422, f"{first['field']}: {first['message']}", field=first["field"], errors=issues
    )


def _parse_query(model: type[_M], request: web.Request) -> _M:
    query: dict[str, str] = {}
    for name in request.query:
        values = request.query.getall(name)
        if len(values) > 1:
            raise ApiError(422, f"{name}: given more than once", field=name)
        query[name] = values[0]
    try:
        return model.model_validate(query)
    except ValidationError as exc:
        raise validation_error(exc, where="query") from None


def _documents(docs: Sequence[PresenceDocument]) -> list[dict[str, Any]]:
    return [d.to_json_dict() for d in docs]


# --- REST ------------------------------------------------------------------------------


@require(PRESENCE_READ)
async def list_presence(request: web.Request) -> web.StreamResponse:
    service = request.app[PRESENCE]
    query = _parse_query(PresenceQuery, request)
    if query.status is not None and query.status not in _status_filter_values(request.app):
        known = ", ".join(sorted(_status_filter_values(request.app)))
        raise ApiError(422, f"status: unknown status (known: {known})", field="status")
    # Version first, documents second: a change in between is then both in the documents
    # and in a stream opened with ?since=version, never in neither.
    version = await service.current_version()
    docs = await service.list(
        status=query.status,
        voice=None if query.voice is None else query.voice.value,
        routable=query.routable,
    )
    wanted = query.agents()
    if wanted is not None:
        docs = [d for d in docs if d.agent in wanted]
    return web.json_response({"version": version, "agents": _documents(docs)})


@require(PRESENCE_READ)
async def get_presence(request: web.Request) -> web.StreamResponse:
    agent = request.match_info["agent"]
    doc = await request.app[PRESENCE].get(agent)
    if doc is None:
        raise ApiError(404, f"no agent {agent!r}", field="agent")
    return web.json_response(doc.to_json_dict())


async def put_status(request: web.Request) -> web.StreamResponse:
    principal = authenticate(request)
    if isinstance(principal, web.Response):
        return principal
    agent = request.match_info["agent"]
    own_key = principal.agent == agent and (
        principal.allows(PRESENCE_READ) or principal.allows(PRESENCE_WRITE)
    )
    if not (own_key or principal.allows(PRESENCE_WRITE)):
        if principal.agent is not None:
            message = f"this API key belongs to agent {principal.agent!r}"
        else:
            message = f"API key lacks scope {PRESENCE_WRITE!r}"
        return json_error(403, message)
    request[PRINCIPAL] = principal
    service = request.app[PRESENCE]
    if await service.get(agent) is None:
        raise ApiError(404, f"no agent {agent!r}", field="agent")
    update = await _read_body(request, StatusUpdate)
    statuses = request.app[STATUSES]
    if update.status not in statuses:
        known = ", ".join(statuses)
        raise ApiError(422, f"status: unknown status (known: {known})", field="status")
    try:
        doc = await service.set_manual(
            agent, update.status, note=update.note, set_by=principal.label
        )
    except ValueError as exc:
        # UnknownAgent / UnknownStatus (raced with a config reload) carry the field.
        field = getattr(exc, "field", None)
        status = 404 if field == "agent" else 422
        raise ApiError(status, str(exc), field=field) from None
    log.info("presence.status_set", agent=agent, status=update.status, by=principal.label)
    return web.json_response(doc.to_json_dict())


async def _read_body(request: web.Request, model: type[_M]) -> _M:
    if request.content_type != "application/json":
        raise ApiError(415, "the body must be application/json", field="Content-Type")
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(413, f"body larger than {MAX_BODY} bytes", field="body")
    raw = await request.content.read(MAX_BODY + 1)
    # read(n) may return less than is there; drain the rest to know the real size.
    while len(raw) <= MAX_BODY and not request.content.at_eof():
        more = await request.content.read(MAX_BODY + 1 - len(raw))
        if not more:
            break
        raw += more
    if len(raw) > MAX_BODY:
        raise ApiError(413, f"body larger than {MAX_BODY} bytes", field="body")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"body is not valid JSON ({exc})", field="body") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


def _status_filter_values(app: web.Application) -> frozenset[str]:
    # The overall status is a manual status or, for an available agent, the voice state.
    statuses: Mapping[str, StatusDef] = app[STATUSES]
    return frozenset(statuses.keys()) | frozenset(v.value for v in VoiceState)


# --- the change stream -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """One stream event: its SSE event name and id, and the JSON text."""

    event: str
    id: int
    data: str


class End(Enum):
    """Why a stream ended."""

    CLIENT_GONE = "client gone"
    SHUTDOWN = "server shutting down"
    LAGGED = "slow consumer"
    SEND_TIMEOUT = "send timed out"


class StreamHub:
    """What every open stream shares: the shutdown signal, counters, encoded changes."""

    # Changes are encoded once and shared by every client; a few hundred recent ones
    # cover clients that are a little behind.
    _CACHE = 512

    def __init__(self, settings: StreamSettings) -> None:
        self.settings = settings
        self.closing = asyncio.Event()
        self.open_streams = 0
        self.ended: dict[End, int] = dict.fromkeys(End, 0)
        self._all_closed = asyncio.Event()
        self._all_closed.set()
        self._counts_changed = asyncio.Event()
        self._encoded: dict[int, Frame] = {}

    def change_frame(self, change: PresenceChange) -> Frame:
        frame = self._encoded.get(change.version)
        if frame is None:
            payload = {
                "type": "change",
                "version": change.version,
                "agent": change.agent,
                "document": change.document.to_json_dict(),
            }
            frame = Frame("change", change.version, _dumps(payload))
            self._encoded[change.version] = frame
            if len(self._encoded) > self._CACHE:
                del self._encoded[next(iter(self._encoded))]
        return frame

    def opened(self) -> None:
        self.open_streams += 1
        self._all_closed.clear()
        self._notify()

    def closed(self, end: End) -> None:
        self.open_streams -= 1
        self.ended[end] += 1
        if self.open_streams == 0:
            self._all_closed.set()
        self._notify()

    def _notify(self) -> None:
        self._counts_changed.set()
        self._counts_changed = asyncio.Event()

    async def wait_until(self, predicate: Callable[[StreamHub], bool]) -> None:
        """Return once ``predicate(self)`` holds (checked at every open/close of a stream).

        Callers bound it with ``asyncio.timeout``.
        """
        while not predicate(self):
            await self._counts_changed.wait()

    async def shutdown(self, app: web.Application) -> None:
        """``on_shutdown``: end every stream (WebSockets close with 1001), bounded."""
        self.closing.set()
        bound = self.settings.close_timeout + 1.0
        try:
            async with asyncio.timeout(bound):
                await self._all_closed.wait()
        except TimeoutError:
            log.warning("presence.streams_not_closed", open=self.open_streams)


def _dumps(payload: object) -> str:
    # Compact and one line: SSE ``data:`` must not contain a newline.
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


class Feed:
    """What one client is sent: an opening (snapshot or replay), then new changes only."""

    __slots__ = ("_floors", "_max_floor", "last")

    def __init__(self) -> None:
        # The newest version the client has (what it would resume from).
        self.last = 0
        self._floors: dict[str, int] = {}
        self._max_floor = 0

    async def open(self, service: PresenceSource, hub: StreamHub, since: int | None) -> list[Frame]:
        # A version beyond the store's newest is from another history (a reset store,
        # another site): resuming from it would silently miss everything.
        if since is not None and since <= await service.current_version():
            changes = await service.changes_since(since)
            if changes is not None:
                frames = [hub.change_frame(c) for c in changes if c.version > since]
                self.last = max([since, *(f.id for f in frames)])
                return frames
        version = await service.current_version()
        docs = await service.list()
        self.last = version
        self._floors = {d.agent: d.version for d in docs}
        self._max_floor = max(self._floors.values(), default=0)
        payload: dict[str, Any] = {
            "type": "snapshot",
            "version": version,
            "agents": _documents(docs),
        }
        if since is not None:
            payload["resumed"] = False
        return [Frame("snapshot", version, _dumps(payload))]

    def admit(self, change: PresenceChange) -> bool:
        """Whether ``change`` is news to this client (see the module docstring)."""
        if change.version <= self.last:
            return False
        if self._floors:
            if change.version > self._max_floor:
                self._floors = {}
            elif change.version <= self._floors.get(change.agent, -1):
                return False
        self.last = change.version
        return True


Send = Callable[[Frame], Awaitable[None]]


async def pump(
    hub: StreamHub,
    subscription: ChangeSubscription,
    feed: Feed,
    opening: Sequence[Frame],
    send: Send,
    *,
    idle: Callable[[], Awaitable[None]] | None = None,
    client_gone: asyncio.Future[Any] | None = None,
) -> End:
    """Send ``opening`` then every admitted change until something ends the stream.

    ``idle`` runs after ``settings.keepalive`` seconds without a change (SSE comments);
    ``client_gone`` completes when the client hangs up (the WebSocket reader). Every send
    is bounded by ``settings.send_timeout``. The subscription is closed on return.
    """
    settings = hub.settings

    async def bounded(frame: Frame) -> None:
        async with asyncio.timeout(settings.send_timeout):
            await send(frame)

    closing = asyncio.ensure_future(hub.closing.wait())
    next_change: asyncio.Future[PresenceChange] | None = None
    try:
        for frame in opening:
            await bounded(frame)
        while True:
            if next_change is None:
                next_change = asyncio.ensure_future(anext(subscription))
            waiting: set[asyncio.Future[Any]] = {next_change, closing}
            if client_gone is not None:
                waiting.add(client_gone)
            done, _ = await asyncio.wait(
                waiting,
                timeout=settings.keepalive if idle is not None else None,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if closing in done:
                return End.SHUTDOWN
            if client_gone is not None and client_gone in done:
                return End.CLIENT_GONE
            if next_change not in done:
                if idle is not None:
                    async with asyncio.timeout(settings.send_timeout):
                        await idle()
                continue
            finished, next_change = next_change, None
            try:
                change = finished.result()
            except SubscriptionLagged:
                return End.LAGGED
            except StopAsyncIteration:
                # The store closed: the node is going down.
                return End.SHUTDOWN
            if feed.admit(change):
                await bounded(hub.change_frame(change))
    except TimeoutError:
        return End.SEND_TIMEOUT
    except (ConnectionError, RuntimeError):
        # aiohttp raises ConnectionResetError (RuntimeError once closing) on writes to a
        # transport the peer has left.
        return End.CLIENT_GONE
    finally:
        closing.cancel()
        if next_change is not None:
            next_change.cancel()
        subscription.close()


async def presence_stream(request: web.Request) -> web.StreamResponse:
    principal = authenticate(request, allow_query_token=True)
    if isinstance(principal, web.Response):
        return principal
    if not principal.allows(PRESENCE_READ):
        return json_error(403, f"API key lacks scope {PRESENCE_READ!r}")
    request[PRINCIPAL] = principal
    query = _parse_query(StreamQuery, request)
    hub = request.app[STREAMS]
    if hub.closing.is_set():
        raise ApiError(503, "server shutting down")
    ws = web.WebSocketResponse(
        heartbeat=hub.settings.heartbeat,
        timeout=hub.settings.close_timeout,
        # Every change goes to every client: per-message deflate would cost one
        # compression per client per change.
        compress=False,
        max_msg_size=4096,
        writer_limit=hub.settings.ws_writer_limit,
    )
    if ws.can_prepare(request).ok:
        return await _serve_websocket(request, ws, hub, query.since)
    since = query.since
    last_event_id = request.headers.get("Last-Event-ID", "").strip()
    if last_event_id:
        since = _parse_version(last_event_id, field="Last-Event-ID")
    return await _serve_sse(request, hub, since)


def _parse_version(text: str, *, field: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ApiError(422, f"{field}: expected a version number", field=field)
    return int(text)


def _abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()


async def _serve_websocket(
    request: web.Request, ws: web.WebSocketResponse, hub: StreamHub, since: int | None
) -> web.WebSocketResponse:
    service = request.app[PRESENCE]
    # Subscribe before reading the opening: see "No gap, no duplicate" above.
    subscription = service.subscribe()
    feed = Feed()
    end = End.CLIENT_GONE
    hub.opened()
    reader: asyncio.Future[None] | None = None
    try:
        await ws.prepare(request)
        reader = asyncio.ensure_future(_read_until_closed(ws))
        opening = await feed.open(service, hub, since)

        async def send(frame: Frame) -> None:
            await ws.send_str(frame.data)

        end = await pump(hub, subscription, feed, opening, send, client_gone=reader)
        if end is End.SEND_TIMEOUT:
            # The peer stopped reading, so a close frame would block too.
            _abort(request)
        elif not ws.closed:
            if end is End.LAGGED:
                # 1013 Try Again Later (IANA WebSocket close codes): reconnect and resume.
                code = WSCloseCode.TRY_AGAIN_LATER
                message = f"slow consumer; resume with since={feed.last}".encode()
            elif end is End.SHUTDOWN:
                # 1001 Going Away (RFC 6455 §7.4.1).
                code, message = WSCloseCode.GOING_AWAY, b"server shutting down"
            else:
                code, message = WSCloseCode.OK, b""
            try:
                async with asyncio.timeout(hub.settings.close_timeout):
                    await ws.close(code=code, message=message)
            except TimeoutError:
                _abort(request)
    finally:
        subscription.close()
        if reader is not None:
            reader.cancel()
        hub.closed(end)
        log.debug("presence.stream_closed", transport="websocket", reason=end.value)
    return ws


async def _read_until_closed(ws: web.WebSocketResponse) -> None:
    # Reading is what processes the client's pongs and close frame; clients have nothing
    # to say on this socket, so data messages are ignored.
    async for message in ws:
        if message.type is WSMsgType.ERROR:
            break


async def _serve_sse(request: web.Request, hub: StreamHub, since: int | None) -> web.StreamResponse:
    service = request.app[PRESENCE]
    subscription = service.subscribe()
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            # nginx would otherwise buffer the stream until it ends.
            "X-Accel-Buffering": "no",
        }
    )
    feed = Feed()
    end = End.CLIENT_GONE
    hub.opened()
    try:
        await response.prepare(request)
        # HTML Living Standard §9.2.6: "retry" sets EventSource's reconnection delay (ms).
        await response.write(f"retry: {hub.settings.retry_ms}\n\n".encode())
        opening = await feed.open(service, hub, since)

        async def send(frame: Frame) -> None:
            event = f"id: {frame.id}\nevent: {frame.event}\ndata: {frame.data}\n\n"
            await response.write(event.encode())

        async def idle() -> None:
            await response.write(b": keep-alive\n\n")

        end = await pump(hub, subscription, feed, opening, send, idle=idle)
        if end is End.SEND_TIMEOUT:
            _abort(request)
        elif end is not End.CLIENT_GONE:
            # EventSource reconnects after "retry" with Last-Event-ID = the last id sent.
            async with asyncio.timeout(hub.settings.close_timeout):
                await response.write_eof()
    except (ConnectionError, RuntimeError):
        end = End.CLIENT_GONE
    except TimeoutError:
        _abort(request)
    finally:
        subscription.close()
        hub.closed(end)
        log.debug("presence.stream_closed", transport="sse", reason=end.value)
    return response


# --- mounting --------------------------------------------------------------------------


def add_presence_routes(
    app: web.Application,
    service: PresenceSource,
    *,
    statuses: Mapping[str, StatusDef] = BUILTIN_STATUSES,
    settings: StreamSettings | None = None,
) -> StreamHub:
    """Mount the presence routes on ``app``; returns the stream hub (for tests/metrics)."""
    hub = StreamHub(settings or StreamSettings())
    app[PRESENCE] = service
    app[STATUSES] = statuses
    app[STREAMS] = hub
    if api_errors not in app.middlewares:
        app.middlewares.append(api_errors)
    app.on_shutdown.append(hub.shutdown)
    app.router.add_get("/v1/presence", list_presence)
    # Registered before /{agent} so "stream" is never taken for an agent id.
    app.router.add_get("/v1/presence/stream", presence_stream)
    app.router.add_get("/v1/presence/{agent}", get_presence)
    app.router.add_put("/v1/presence/{agent}/status", put_status)
    return hub
