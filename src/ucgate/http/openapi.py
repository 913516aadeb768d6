"""The OpenAPI 3.1 document served at ``/openapi.json``.

Schemas come from the pydantic models in :mod:`ucgate.http.schemas`
(``model_json_schema``: JSON Schema 2020-12, which OpenAPI 3.1 uses as is), so a field
added to a model is documented without touching this module. Each operation states the
scopes it needs in ``x-required-scopes`` (any one of them suffices; ``admin`` implies all),
which ``tests/unit/http/test_openapi.py`` uses to check every documented 401/403 against
the running app.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from ucgate.http.auth import ADMIN, PRESENCE_READ, PRESENCE_WRITE, QUERY_TOKEN
from ucgate.http.calls_api import CALLS_READ, CallList, CallRecordOut, CallsQuery
from ucgate.http.schemas import (
    ChangeEvent,
    ErrorBody,
    Health,
    PresenceDocumentOut,
    PresenceList,
    PresenceQuery,
    RegistrationList,
    SnapshotEvent,
    StatusUpdate,
    StreamQuery,
)

_REF = "#/components/schemas/{model}"
_MODELS: tuple[type[BaseModel], ...] = (
    ChangeEvent,
    ErrorBody,
    Health,
    PresenceDocumentOut,
    PresenceList,
    RegistrationList,
    SnapshotEvent,
    StatusUpdate,
)
_BEARER: list[dict[str, list[str]]] = [{"bearer": []}]

_DESCRIPTION = """\
ucgate's HTTP API: registrations, agent presence and call records.

**Authentication.** Every `/v1` route takes an API key as `Authorization: Bearer <key>`.
Keys carry scopes (`presence:read`, `presence:write`, `calls:read`, `admin`; `admin`
implies the others); a key may also belong to one agent, which lets it set that agent's own status.
Without a valid key the answer is 401, without the scope 403.

Browsers cannot set headers on `EventSource` or `WebSocket` requests, so
`/v1/presence/stream` also accepts the key as `?access_token=<key>`. Prefer the header
where you can: query strings end up in proxy logs and browser history.

**Errors** are JSON: `{"error": {"status": 422, "message": "...", "field": "note"}}`;
`field` names the body field, query parameter or header at fault.

**Versions.** Every presence change gets the next value of one global, strictly
increasing version. `GET /v1/presence` returns the version it read before the documents;
open the stream with `?since=<version>` to follow on from it without a gap. A stream may
repeat a state already known: apply a change only if its version is above the agent's
document version you hold.
"""


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref(ErrorBody), description)


def _query_parameters(model: type[BaseModel], *, skip: Iterable[str] = ()) -> list[dict[str, Any]]:
    """OpenAPI parameters from a query model's fields (each documented by the model)."""
    schema = model.model_json_schema(ref_template=_REF)
    params = []
    for name, prop in schema["properties"].items():
        if name in skip:
            continue
        prop = dict(prop)
        description = prop.pop("description", None)
        prop.pop("default", None)
        prop.pop("title", None)
        param: dict[str, Any] = {"name": name, "in": "query", "required": False, "schema": prop}
        if description:
            param["description"] = description
        params.append(param)
    return params


_AGENT = {
    "name": "agent",
    "in": "path",
    "required": True,
    "description": "The agent id (config `agents[].id`).",
    "schema": {"type": "string"},
}


def _operation(
    operation_id: str,
    summary: str,
    *,
    scopes: tuple[str, ...] | None,
    ok: dict[str, Any],
    errors: dict[str, str],
    description: str | None = None,
    parameters: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    security: list[dict[str, list[str]]] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": operation_id, "summary": summary}
    if description:
        op["description"] = description
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = body
    responses: dict[str, Any] = {"200": ok}
    if scopes is None:
        op["security"] = []
    else:
        op["security"] = security or _BEARER
        op["x-required-scopes"] = list(scopes)
        responses["401"] = _error("Missing or unknown API key.")
        responses["403"] = _error("The key lacks the scope.")
    for code, text in errors.items():
        responses[code] = _error(text)
    op["responses"] = dict(sorted(responses.items()))
    return op


def build_openapi(
    *,
    version: str,
    presence: bool = True,
    statuses: Iterable[str] = (),
    calls: bool = False,
    sessions: bool = False,
    web: bool = False,
    web_pages: bool = False,
) -> dict[str, Any]:
    """The document for an app with (``presence=True``) or without the presence routes,
    and with (``calls=True``) or without the call-record routes.

    ``statuses`` are the manual statuses ``PUT .../status`` accepts (builtin + custom).
    """
    models = _MODELS + ((CallList, CallRecordOut) if calls else ())
    _, defs = models_json_schema([(m, "validation") for m in models], ref_template=_REF)
    schemas: dict[str, Any] = copy.deepcopy(defs["$defs"])
    known = list(statuses)
    if known:
        schemas["StatusUpdate"]["properties"]["status"]["enum"] = known

    paths: dict[str, Any] = {
        "/healthz": {
            "get": _operation(
                "getHealth",
                "Liveness",
                scopes=None,
                ok=_json(_ref(Health), "The node is up."),
                errors={},
            )
        },
        "/openapi.json": {
            "get": _operation(
                "getOpenApi",
                "This document",
                scopes=None,
                ok=_json({"type": "object"}, "The OpenAPI 3.1 document."),
                errors={},
            )
        },
        "/v1/registrations": {
            "get": _operation(
                "listRegistrations",
                "Every registered contact, per address-of-record",
                scopes=(ADMIN,),
                ok=_json(_ref(RegistrationList), "The live bindings."),
                errors={"503": "The location store is unavailable."},
            )
        },
        "/v1/media": {
            "get": _operation(
                "getMediaStats",
                "The media anchor's counters (backend, anchored sessions, workers)",
                scopes=(ADMIN,),
                ok=_json(
                    {
                        "type": "object",
                        "required": ["backend", "sessions"],
                        "properties": {
                            "backend": {
                                "type": "string",
                                "enum": ["none", "embedded", "rtpengine"],
                            },
                            "sessions": {"type": "integer", "minimum": 0},
                        },
                        "additionalProperties": True,
                    },
                    "Counters of the configured backend.",
                ),
                errors={},
            )
        },
    }
    if presence:
        paths.update(_presence_paths())
    if calls:
        paths.update(_calls_paths())
    if sessions:
        from ucgate.http.sessions_api import sessions_paths

        sessions_models = sessions_paths(paths, _operation, _json, _ref, _query_parameters)
        _, sdefs = models_json_schema(
            [(m, "validation") for m in sessions_models], ref_template=_REF
        )
        schemas.update(copy.deepcopy(sdefs["$defs"]))
    if web:
        from ucgate.web.routes import web_paths

        web_models = web_paths(paths, _operation, _json, _ref, pages=web_pages)
        _, wdefs = models_json_schema([(m, "validation") for m in web_models], ref_template=_REF)
        schemas.update(copy.deepcopy(wdefs["$defs"]))

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ucgate API",
            "version": version,
            "description": _DESCRIPTION,
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key from the config's `api_keys`.",
                },
                "accessToken": {
                    "type": "apiKey",
                    "in": "query",
                    "name": QUERY_TOKEN,
                    "description": "The same key as a query parameter, for browser "
                    "EventSource/WebSocket clients only (stream route).",
                },
            },
        },
        "security": _BEARER,
    }


def _presence_paths() -> dict[str, Any]:
    read = (PRESENCE_READ,)
    stream_events = {"oneOf": [_ref(SnapshotEvent), _ref(ChangeEvent)]}
    return {
        "/v1/presence": {
            "get": _operation(
                "listPresence",
                "Every agent's presence document",
                scopes=read,
                parameters=_query_parameters(PresenceQuery),
                ok=_json(_ref(PresenceList), "The documents, sorted by agent."),
                errors={
                    "422": "A filter value is invalid (`field` names the parameter).",
                    "503": "The presence store is unavailable.",
                },
            )
        },
        "/v1/presence/{agent}": {
            "get": _operation(
                "getPresence",
                "One agent's presence document",
                scopes=read,
                parameters=[_AGENT],
                ok=_json(_ref(PresenceDocumentOut), "The document."),
                errors={"404": "No such agent.", "503": "The presence store is unavailable."},
            )
        },
        "/v1/presence/{agent}/status": {
            "put": _operation(
                "setPresenceStatus",
                "Set an agent's manual status",
                description="Allowed with `presence:write` (supervisors) or `admin`, or "
                "with the agent's own key (any scope). The manual status is kept across "
                "device re-registrations until set again.",
                scopes=(PRESENCE_WRITE, "own agent key"),
                parameters=[_AGENT],
                body={
                    "required": True,
                    "content": {"application/json": {"schema": _ref(StatusUpdate)}},
                },
                ok=_json(_ref(PresenceDocumentOut), "The agent's new document."),
                errors={
                    "400": "The body is not JSON.",
                    "404": "No such agent.",
                    "413": "The body is too large.",
                    "415": "The body is not application/json.",
                    "422": "Invalid field, unknown field or unknown status (`field` names it).",
                    "503": "The presence store is unavailable.",
                },
            )
        },
        "/v1/presence/stream": {
            "get": _operation(
                "streamPresence",
                "Follow every presence change (WebSocket or Server-Sent Events)",
                description=(
                    "A WebSocket upgrade request gets a WebSocket; any other request gets "
                    "`text/event-stream`. Both send a `snapshot` event (every agent, with "
                    "the version it reflects) and then one `change` event per change, in "
                    "version order.\n\n"
                    "Resume with `?since=<version>`: the changes after it, or a snapshot "
                    'with `"resumed": false` when the version is too old for the change '
                    "log. SSE events carry `id: <version>`, so a browser EventSource "
                    "resumes by itself through `Last-Event-ID` (which wins over `since`).\n\n"
                    "WebSocket: text frames of the event JSON; server pings every "
                    "heartbeat; close 1001 when the server shuts down, 1013 for a client "
                    "that fell too far behind (the reason names the version to resume "
                    "from). SSE: `retry:` first, `: keep-alive` comments when idle."
                ),
                scopes=read,
                security=[{"bearer": []}, {"accessToken": []}],
                parameters=[
                    *_query_parameters(StreamQuery),
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "description": "SSE resume point (sent by EventSource).",
                        "schema": {"type": "string", "pattern": "^[0-9]+$"},
                    },
                ],
                ok={
                    "description": "The event stream (SSE). Each `data:` line is one event's JSON.",
                    "content": {"text/event-stream": {"schema": stream_events}},
                },
                errors={
                    "422": "`since` or `Last-Event-ID` is not a version.",
                    "503": "The server is shutting down.",
                },
            )
        },
    }


def _calls_paths() -> dict[str, Any]:
    scopes = (CALLS_READ,)
    return {
        "/v1/calls": {
            "get": _operation(
                "listCalls",
                "Call records, newest first",
                description="Each record has its legs, its events (offered, ringing, "
                "answered, hold_start, hold_end, transferred, leg_ended, ended, "
                "wrap_up_ended) and the ring, talk, hold, wrap-up and handle seconds "
                "derived from them. Page with `cursor` = the previous `next_cursor`.",
                scopes=scopes,
                parameters=_query_parameters(CallsQuery),
                ok=_json(_ref(CallList), "One page of records."),
                errors={
                    "422": "A parameter is invalid (`field` names it); `limit` is 1-1000.",
                    "503": "The call record store is unavailable.",
                },
            )
        },
        "/v1/calls/{id}": {
            "get": _operation(
                "getCall",
                "One call record",
                scopes=scopes,
                parameters=[
                    {
                        "name": "id",
                        "in": "path",
                        "required": True,
                        "description": "The call id (`id` of a record).",
                        "schema": {"type": "string"},
                    }
                ],
                ok=_json(_ref(CallRecordOut), "The record."),
                errors={
                    "404": "No such call.",
                    "503": "The call record store is unavailable.",
                },
            )
        },
    }
