"""The call-records HTTP API.

Routes (mounted by :func:`add_calls_routes`), each needing scope ``calls:read`` (or admin):

- ``GET /v1/calls``: records newest first, filtered by ``agent`` (had a leg in the call),
  ``since`` (inclusive) and ``until`` (exclusive) on the start time, each either Unix
  seconds or ISO 8601 with a time zone; ``limit`` 1-1000 (default 100); ``cursor`` from a
  previous page's ``next_cursor``. Bad values get 422 naming the parameter.
- ``GET /v1/calls/{id}``: one record, 404 when unknown.

Each record carries its legs, its events and the derived ring/talk/hold/wrap-up/handle
seconds (see :mod:`ucgate.calls.records`).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ucgate.calls.record_store import MAX_PAGE, CallRecordStore
from ucgate.config import Scope
from ucgate.http.auth import json_error, require
from ucgate.http.presence_api import ApiError, validation_error
from ucgate.store.location import StoreUnavailable

__all__ = [
    "CALLS_READ",
    "CALL_RECORDS",
    "CallList",
    "CallRecordOut",
    "CallsQuery",
    "add_calls_routes",
    "parse_time",
]

CALLS_READ = Scope.CALLS_READ.value
CALL_RECORDS: web.AppKey[CallRecordStore] = web.AppKey("call_records")

_RESPONSE = ConfigDict(extra="forbid", frozen=True)


def parse_time(text: str) -> float:
    """Unix seconds from ``"1700000000.5"`` or ISO 8601 with a zone; ValueError otherwise."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError("must be Unix seconds or an ISO 8601 date-time") from None
        if moment.tzinfo is None:
            # A zoneless time means a different instant on every server: refuse, not guess.
            raise ValueError("ISO 8601 time needs a zone, e.g. 'Z' or '+02:00'") from None
        return moment.timestamp()
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


class CallsQuery(BaseModel):
    """Query parameters of ``GET /v1/calls`` (all optional, combined with AND)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agent: str | None = Field(
        default=None, min_length=1, description="Only calls in which this agent had a leg."
    )
    since: str | None = Field(
        default=None,
        description="Calls started at or after: Unix seconds or ISO 8601 with a zone.",
        examples=["2024-05-01T00:00:00Z"],
    )
    until: str | None = Field(
        default=None,
        description="Calls started before: Unix seconds or ISO 8601 with a zone.",
        examples=["1714608000"],
    )
    limit: int = Field(default=100, ge=1, le=MAX_PAGE, description="Page size, 1-1000.")
    cursor: str | None = Field(
        default=None, description="`next_cursor` of the previous page (older records)."
    )

    @field_validator("since", "until")
    @classmethod
    def _time(cls, value: str | None) -> str | None:
        if value is not None:
            parse_time(value)
        return value


# --- response models (documentation, and the tests validate real responses) -------------


class LegOut(BaseModel):
    model_config = _RESPONSE

    id: str
    role: Literal["a", "b"] = Field(description="`a`: the caller's dialog; `b`: towards a callee.")
    party: str = Field(description="The leg's remote party URI.")
    contact: str | None = Field(description="The device's Contact, when known.")
    sip_call_id: str | None
    agent: str | None = Field(description="The agent whose device this leg reached.")
    created_at: float
    ringing_at: float | None
    answered_at: float | None
    ended_at: float | None
    end_reason: str | None


class CallEventOut(BaseModel):
    model_config = _RESPONSE

    type: Literal[
        "offered",
        "leg_added",
        "ringing",
        "answered",
        "hold_start",
        "hold_end",
        "transferred",
        "leg_ended",
        "ended",
        "wrap_up_ended",
    ]
    at: float = Field(description="Unix time.")
    direction: Literal["inbound", "outbound", "internal"] | None = None
    caller: str | None = None
    callee: str | None = None
    leg_id: str | None = None
    party: str | None = None
    contact: str | None = None
    sip_call_id: str | None = None
    agent: str | None = None
    mode: Literal["blind", "attended"] | None = None
    target: str | None = None
    reason: str | None = None


class HoldOut(BaseModel):
    model_config = _RESPONSE

    start: float
    end: float | None = Field(description="None while the hold lasts.")


class CallRecordOut(BaseModel):
    model_config = _RESPONSE

    id: str
    direction: Literal["inbound", "outbound", "internal"]
    caller: str
    callee: str
    agents: list[str]
    state: Literal["ringing", "active", "held", "ended"]
    started_at: float
    ringing_at: float | None
    answered_at: float | None
    ended_at: float | None
    end_reason: str | None = Field(
        description="caller_bye, callee_bye, cancelled, busy, no_answer, rejected, failed, "
        "timeout or session_expired."
    )
    ring_seconds: float = Field(ge=0, description="First ringing to answer (or end).")
    talk_seconds: float = Field(ge=0, description="Answer to end, minus hold.")
    hold_seconds: float = Field(ge=0)
    wrap_up_seconds: float = Field(ge=0, description="After-call work.")
    handle_seconds: float = Field(ge=0, description="Talk + hold + wrap-up.")
    holds: list[HoldOut]
    transfers: int = Field(ge=0)
    legs: list[LegOut]
    events: list[CallEventOut]


class CallList(BaseModel):
    model_config = _RESPONSE

    calls: list[CallRecordOut] = Field(description="Newest first.")
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; None at the end."
    )


RESPONSE_MODELS: tuple[type[BaseModel], ...] = (CallList, CallRecordOut)


# --- handlers --------------------------------------------------------------------------


def _unavailable() -> web.Response:
    response = json_error(503, "call record store unavailable")
    response.headers["Retry-After"] = "5"
    return response


def _query(request: web.Request) -> CallsQuery:
    query: dict[str, str] = {}
    for name in request.query:
        values = request.query.getall(name)
        if len(values) > 1:
            raise ApiError(422, f"{name}: given more than once", field=name)
        query[name] = values[0]
    try:
        return CallsQuery.model_validate(query)
    except ValidationError as exc:
        raise validation_error(exc, where="query") from None


@require(CALLS_READ)
async def list_calls(request: web.Request) -> web.StreamResponse:
    try:
        query = _query(request)
    except ApiError as exc:
        return exc.response()
    since = None if query.since is None else parse_time(query.since)
    until = None if query.until is None else parse_time(query.until)
    try:
        page = await request.app[CALL_RECORDS].list(
            agent=query.agent, since=since, until=until, limit=query.limit, cursor=query.cursor
        )
    except StoreUnavailable:
        return _unavailable()
    except ValueError as exc:
        # The store validates the cursor (limit was checked above).
        return json_error(422, f"cursor: {exc}", field="cursor")
    body: dict[str, Any] = {
        "calls": [r.to_json_dict() for r in page.records],
        "next_cursor": page.next_cursor,
    }
    return web.json_response(body)


@require(CALLS_READ)
async def get_call(request: web.Request) -> web.StreamResponse:
    call_id = request.match_info["id"]
    try:
        record = await request.app[CALL_RECORDS].get(call_id)
    except StoreUnavailable:
        return _unavailable()
    if record is None:
        return json_error(404, "no such call", field="id")
    return web.json_response(record.to_json_dict())


def add_calls_routes(app: web.Application, store: CallRecordStore) -> None:
    """Mount ``GET /v1/calls`` and ``GET /v1/calls/{id}`` reading ``store``."""
    app[CALL_RECORDS] = store
    app.router.add_get("/v1/calls", list_calls)
    app.router.add_get("/v1/calls/{id}", get_call)
