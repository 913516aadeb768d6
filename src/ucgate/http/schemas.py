"""Pydantic models of the HTTP API's bodies, query strings and stream events.

Requests are validated with them (so a 422 can name the offending field); responses are
built by the domain objects' ``to_json_dict()`` for speed and *described* by these models
in the OpenAPI document. ``tests/unit/http/test_openapi.py`` validates real responses
against the response models, so the document cannot drift from what is sent.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ucgate.presence.model import Channel, InteractionState, VoiceState

# A manual status name as in config ``presence.custom_statuses[].name``.
STATUS_NAME_PATTERN = r"^[a-z][a-z0-9_-]*$"
STATUS_NAME_MAX = 32
# Long enough for "back at 3, covering the Spanish queue"; short enough for a BLF label and
# a PIDF <note> that still fits a UDP NOTIFY (RFC 3261 §18.1.1).
NOTE_MAX = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

_REQUEST = ConfigDict(extra="forbid", strict=True, frozen=True)
_RESPONSE = ConfigDict(extra="forbid", frozen=True)


# --- requests --------------------------------------------------------------------------


class StatusUpdate(BaseModel):
    """Body of ``PUT /v1/presence/{agent}/status``."""

    model_config = _REQUEST

    status: str = Field(
        min_length=1,
        max_length=STATUS_NAME_MAX,
        pattern=STATUS_NAME_PATTERN,
        description="A built-in status (available, away, busy, dnd, break, offline) "
        "or a custom one from presence.custom_statuses.",
        examples=["away"],
    )
    note: str | None = Field(
        default=None,
        max_length=NOTE_MAX,
        description="Free text shown next to the status (PIDF <note>, RFC 3863 §4.1.6).",
        examples=["back at 3"],
    )

    @field_validator("note")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        # The note goes into NOTIFY bodies and BLF labels: no line breaks or controls.
        if value is not None and _CONTROL.search(value):
            raise ValueError("must not contain control characters")
        return value


class PresenceQuery(BaseModel):
    """Query parameters of ``GET /v1/presence`` (all optional, combined with AND)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: str | None = Field(
        default=None, description="Only agents whose overall `status` is this."
    )
    voice: VoiceState | None = Field(default=None, description="Only agents in this voice state.")
    routable: bool | None = Field(default=None, description="`true` or `false`.")
    agent: str | None = Field(
        default=None,
        description="Comma-separated agent ids, e.g. `alice,bob`.",
        examples=["alice,bob"],
    )

    def agents(self) -> frozenset[str] | None:
        if self.agent is None:
            return None
        return frozenset(a.strip() for a in self.agent.split(",") if a.strip())


class StreamQuery(BaseModel):
    """Query parameters of ``GET /v1/presence/stream``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    since: int | None = Field(
        default=None,
        ge=0,
        description="Resume: send the changes after this version instead of a snapshot. "
        "For SSE the Last-Event-ID header, when present, takes precedence.",
    )
    access_token: str | None = Field(
        default=None,
        description="The API key, for browsers whose EventSource/WebSocket cannot set "
        "an Authorization header. Prefer the header: query strings reach proxy logs.",
    )


# --- presence documents ----------------------------------------------------------------


class ManualStatusOut(BaseModel):
    model_config = _RESPONSE

    status: str
    note: str | None
    set_by: str | None = Field(description="Who set it: an API key's name or agent.")
    since: float = Field(description="Unix time the status was set.")


class ChannelLoadOut(BaseModel):
    model_config = _RESPONSE

    channel: Channel
    used: int = Field(ge=0)
    capacity: int = Field(ge=0)
    free: int = Field(ge=0)


class DeviceOut(BaseModel):
    model_config = _RESPONSE

    id: str
    kind: Literal["sip", "web"]
    contact: str | None
    user_agent: str | None
    since: float


class InteractionOut(BaseModel):
    model_config = _RESPONSE

    id: str
    channel: Channel
    state: InteractionState
    since: float
    remote: str | None
    remote_display: str | None
    direction: Literal["inbound", "outbound"] | None
    call_id: str | None
    local_tag: str | None
    remote_tag: str | None


class PresenceDocumentOut(BaseModel):
    """One agent's composed presence (see docs/presence.md for the derivation rules)."""

    model_config = _RESPONSE

    agent: str
    version: int = Field(ge=0, description="Global change version of this document.")
    updated_at: float = Field(description="Unix time of the change.")
    status: str = Field(description="Overall status: manual, offline, or the voice state.")
    routable: bool
    voice: VoiceState
    manual: ManualStatusOut
    channels: list[ChannelLoadOut]
    devices: list[DeviceOut]
    interactions: list[InteractionOut]
    activities: list[str] = Field(description="RPID activities (RFC 4480 §3.2).")
    note: str | None


class PresenceList(BaseModel):
    model_config = _RESPONSE

    version: int = Field(
        ge=0,
        description="The change version read before the documents: stream with "
        "?since=<version> to follow on without a gap.",
    )
    agents: list[PresenceDocumentOut]


# --- stream events ---------------------------------------------------------------------


class SnapshotEvent(BaseModel):
    """First event of a stream without (or with a too old) ``since``."""

    model_config = _RESPONSE

    type: Literal["snapshot"]
    version: int = Field(ge=0)
    agents: list[PresenceDocumentOut]
    resumed: bool | None = Field(
        default=None,
        description="Present (false) when a resume was asked but the version was too "
        "old or unknown: replace all local state with this snapshot.",
    )


class ChangeEvent(BaseModel):
    model_config = _RESPONSE

    type: Literal["change"]
    version: int = Field(ge=1)
    agent: str
    document: PresenceDocumentOut


# --- registrations, health, errors -----------------------------------------------------


class RegistrationContact(BaseModel):
    model_config = _RESPONSE

    contact: str
    expires: int = Field(description="Seconds left.")
    q: float | None
    source: str
    node: str
    user_agent: str | None


class Registration(BaseModel):
    model_config = _RESPONSE

    aor: str
    contacts: list[RegistrationContact]


class RegistrationList(BaseModel):
    model_config = _RESPONSE

    registrations: list[Registration]


class Health(BaseModel):
    model_config = _RESPONSE

    status: Literal["ok"]
    version: str


class FieldIssue(BaseModel):
    model_config = _RESPONSE

    field: str
    message: str


class ErrorDetail(BaseModel):
    model_config = _RESPONSE

    status: int
    message: str
    field: str | None = Field(
        default=None,
        description="The body field, query parameter or header at fault, when one is.",
    )
    errors: list[FieldIssue] | None = Field(
        default=None, description="Every validation problem, when there were several."
    )


class ErrorBody(BaseModel):
    model_config = _RESPONSE

    error: ErrorDetail
