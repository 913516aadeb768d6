"""Call records: an ordered list of what happened to a call, and what follows from it.

A record is event-sourced. The B2BUA reports each step as a frozen, past-tense event;
:meth:`CallRecord.apply` is a pure reducer that returns the next record or raises
:class:`CallRecordError` for an order that cannot happen (hold before answer, anything but
wrap-up after the end, time running backwards). Stored records keep only the events; the
legs and timestamps are rebuilt by replaying them, so the two can never disagree.

Durations (seconds; for a call still going, up to the last event, or to ``now`` with the
``*_at(now)`` methods):

- ``ring_seconds``: first ``ringing`` to answer (or to the end when never answered);
  0 when no device ever rang.
- ``hold_seconds``: the sum of every hold interval; a hold still open when the call ends
  or is transferred is closed at that moment (the held party is then either gone or
  connected to the transfer target).
- ``talk_seconds``: answer to end, minus hold; 0 for a call never answered.
- ``wrap_up_seconds``: end to ``wrap_up_ended`` (after-call work), 0 without it.
- ``handle_seconds``: talk + hold + wrap-up, the contact-center "handle time".

JSON: ``{"type": "hold_start", "at": 1700000000.5, ...}`` per event (None fields left
out); a record's JSON adds the derived values for readers and is decoded by replaying
its ``events``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

from ucgate.sip.errors import LocalProtocolError

__all__ = [
    "CallAnswered",
    "CallEnded",
    "CallEvent",
    "CallOffered",
    "CallRecord",
    "CallRecordError",
    "CallState",
    "CallTransferred",
    "Direction",
    "EndReason",
    "HoldEnded",
    "HoldStarted",
    "Leg",
    "LegAdded",
    "LegEnded",
    "LegRole",
    "RingingStarted",
    "TransferMode",
    "WrapUpEnded",
    "event_from_dict",
    "event_to_dict",
]


class CallRecordError(LocalProtocolError):
    """An event that cannot follow the record's history (our B2BUA's bug, not the peer's)."""


class Direction(enum.StrEnum):
    INBOUND = "inbound"  # trunk -> agent
    OUTBOUND = "outbound"  # agent -> trunk
    INTERNAL = "internal"  # agent -> agent


class LegRole(enum.StrEnum):
    A = "a"  # the caller's dialog
    B = "b"  # a dialog ucgate opened towards a callee (one per forked device)


class TransferMode(enum.StrEnum):
    BLIND = "blind"  # REFER without Replaces (RFC 3515)
    ATTENDED = "attended"  # REFER with Replaces (RFC 3891)


class EndReason(enum.StrEnum):
    CALLER_BYE = "caller_bye"
    CALLEE_BYE = "callee_bye"
    CANCELLED = "cancelled"  # the caller gave up before an answer
    BUSY = "busy"  # 486/600
    NO_ANSWER = "no_answer"  # calls.ring_timeout
    REJECTED = "rejected"  # 403/603 and other refusals
    FAILED = "failed"  # 5xx, transport failure, routing failure
    TIMEOUT = "timeout"  # a transaction timed out (RFC 3261 Timer B/F)
    SESSION_EXPIRED = "session_expired"  # RFC 4028 refresh missing: dead-call detector
    # Leg-only reasons:
    ANSWERED_ELSEWHERE = "answered_elsewhere"  # forked leg CANCELled (RFC 3326 cause 200)
    TRANSFERRED = "transferred"  # the transferor's leg left after a transfer


# The end of a call answered vs. not answered; FAILED and TIMEOUT can be either.
_ANSWERED_ENDS = frozenset({EndReason.CALLER_BYE, EndReason.CALLEE_BYE, EndReason.SESSION_EXPIRED})
_UNANSWERED_ENDS = frozenset(
    {EndReason.CANCELLED, EndReason.BUSY, EndReason.NO_ANSWER, EndReason.REJECTED}
)
_LEG_ONLY_ENDS = frozenset({EndReason.ANSWERED_ELSEWHERE, EndReason.TRANSFERRED})


class CallState(enum.StrEnum):
    RINGING = "ringing"  # offered, not answered yet (alerting or not)
    ACTIVE = "active"
    HELD = "held"
    ENDED = "ended"


# --- events ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallOffered:
    """A new call arrived on its a-leg. Always the first event of a record."""

    TYPE: ClassVar[str] = "offered"
    at: float
    direction: Direction
    caller: str  # the calling party (URI or number)
    callee: str  # what was dialled
    leg_id: str
    party: str  # the a-leg's remote party URI
    contact: str | None = None
    sip_call_id: str | None = None
    agent: str | None = None  # when the caller is an agent


@dataclass(frozen=True, slots=True)
class LegAdded:
    """A b-leg towards one device (one per forked contact, and per transfer target)."""

    TYPE: ClassVar[str] = "leg_added"
    at: float
    leg_id: str
    party: str
    contact: str | None = None
    sip_call_id: str | None = None
    agent: str | None = None


@dataclass(frozen=True, slots=True)
class RingingStarted:
    """A b-leg's device is alerting (180/183)."""

    TYPE: ClassVar[str] = "ringing"
    at: float
    leg_id: str


@dataclass(frozen=True, slots=True)
class CallAnswered:
    """A b-leg answered (200 OK)."""

    TYPE: ClassVar[str] = "answered"
    at: float
    leg_id: str


@dataclass(frozen=True, slots=True)
class HoldStarted:
    """A party put the call on hold (SDP sendonly/inactive, RFC 3264 §8.4)."""

    TYPE: ClassVar[str] = "hold_start"
    at: float
    leg_id: str | None = None  # the leg whose party pressed hold


@dataclass(frozen=True, slots=True)
class HoldEnded:
    TYPE: ClassVar[str] = "hold_end"
    at: float


@dataclass(frozen=True, slots=True)
class CallTransferred:
    TYPE: ClassVar[str] = "transferred"
    at: float
    mode: TransferMode
    target: str  # the party the call was transferred to
    leg_id: str | None = None  # the transferor's leg


@dataclass(frozen=True, slots=True)
class LegEnded:
    TYPE: ClassVar[str] = "leg_ended"
    at: float
    leg_id: str
    reason: EndReason


@dataclass(frozen=True, slots=True)
class CallEnded:
    """The whole call is over; legs still open end with the same reason."""

    TYPE: ClassVar[str] = "ended"
    at: float
    reason: EndReason


@dataclass(frozen=True, slots=True)
class WrapUpEnded:
    """The agent's after-call work is over (timer ``calls.wrap_up`` or the agent)."""

    TYPE: ClassVar[str] = "wrap_up_ended"
    at: float


CallEvent = (
    CallOffered
    | LegAdded
    | RingingStarted
    | CallAnswered
    | HoldStarted
    | HoldEnded
    | CallTransferred
    | LegEnded
    | CallEnded
    | WrapUpEnded
)

_EVENT_TYPES: dict[str, type[CallEvent]] = {
    cls.TYPE: cls
    for cls in (
        CallOffered,
        LegAdded,
        RingingStarted,
        CallAnswered,
        HoldStarted,
        HoldEnded,
        CallTransferred,
        LegEnded,
        CallEnded,
        WrapUpEnded,
    )
}
_ENUM_FIELDS: dict[str, type[enum.StrEnum]] = {
    "direction": Direction,
    "mode": TransferMode,
    "reason": EndReason,
}


def event_to_dict(event: CallEvent) -> dict[str, Any]:
    out: dict[str, Any] = {"type": event.TYPE}
    for f in fields(event):
        value = getattr(event, f.name)
        if value is not None:
            out[f.name] = value.value if isinstance(value, enum.Enum) else value
    return out


def event_from_dict(data: Mapping[str, Any]) -> CallEvent:
    """Decode :func:`event_to_dict` output; ValueError on anything malformed."""
    cls = _EVENT_TYPES.get(str(data.get("type")))
    if cls is None:
        raise ValueError(f"unknown call event type {data.get('type')!r}")
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        if f.name == "at":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError("event 'at' must be a number")
            value = float(value)
        elif f.name in _ENUM_FIELDS:
            value = _ENUM_FIELDS[f.name](value)
        elif value is not None and not isinstance(value, str):
            raise ValueError(f"event field {f.name!r} must be a string")
        kwargs[f.name] = value
    unknown = set(data) - {f.name for f in fields(cls)} - {"type"}
    if unknown:
        raise ValueError(f"unknown fields in {cls.TYPE!r} event: {sorted(unknown)}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"incomplete {cls.TYPE!r} event: {exc}") from None


# --- the record ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Leg:
    id: str
    role: LegRole
    party: str
    contact: str | None
    sip_call_id: str | None
    agent: str | None
    created_at: float
    ringing_at: float | None = None
    answered_at: float | None = None
    ended_at: float | None = None
    end_reason: EndReason | None = None

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "role": self.role.value,
            "party": self.party,
            "contact": self.contact,
            "sip_call_id": self.sip_call_id,
            "agent": self.agent,
            "created_at": self.created_at,
            "ringing_at": self.ringing_at,
            "answered_at": self.answered_at,
            "ended_at": self.ended_at,
            "end_reason": None if self.end_reason is None else self.end_reason.value,
        }


@dataclass(frozen=True, slots=True)
class CallRecord:
    id: str
    direction: Direction
    caller: str
    callee: str
    started_at: float
    legs: tuple[Leg, ...]
    events: tuple[CallEvent, ...]
    ringing_at: float | None = None
    answered_at: float | None = None
    ended_at: float | None = None
    end_reason: EndReason | None = None
    # (start, end) of each hold; end None while the hold lasts.
    holds: tuple[tuple[float, float | None], ...] = ()
    transfers: int = 0
    wrap_up_ended_at: float | None = None

    # -- building ---------------------------------------------------------------------

    @classmethod
    def start(cls, call_id: str, event: CallOffered) -> CallRecord:
        if not call_id:
            raise CallRecordError("a call record needs an id")
        leg = Leg(
            id=event.leg_id,
            role=LegRole.A,
            party=event.party,
            contact=event.contact,
            sip_call_id=event.sip_call_id,
            agent=event.agent,
            created_at=event.at,
        )
        return cls(
            id=call_id,
            direction=event.direction,
            caller=event.caller,
            callee=event.callee,
            started_at=event.at,
            legs=(leg,),
            events=(event,),
        )

    @classmethod
    def replay(cls, call_id: str, events: Iterable[CallEvent]) -> CallRecord:
        iterator = iter(events)
        first = next(iterator, None)
        if not isinstance(first, CallOffered):
            raise CallRecordError("a call record starts with an 'offered' event")
        record = cls.start(call_id, first)
        for event in iterator:
            record = record.apply(event)
        return record

    def apply(self, event: CallEvent) -> CallRecord:
        """The record after ``event``; raises :class:`CallRecordError` if it cannot follow."""
        if event.at < self.last_event_at:
            raise CallRecordError(f"{event.TYPE!r} at {event.at} is before the last event")
        if self.ended_at is not None and not isinstance(event, WrapUpEnded):
            raise CallRecordError(f"{event.TYPE!r} after the call ended")
        events = (*self.events, event)
        match event:
            case CallOffered():
                raise CallRecordError("'offered' only starts a record")
            case LegAdded():
                if self._leg(event.leg_id, must_exist=False) is not None:
                    raise CallRecordError(f"leg {event.leg_id!r} already exists")
                leg = Leg(
                    id=event.leg_id,
                    role=LegRole.B,
                    party=event.party,
                    contact=event.contact,
                    sip_call_id=event.sip_call_id,
                    agent=event.agent,
                    created_at=event.at,
                )
                return replace(self, legs=(*self.legs, leg), events=events)
            case RingingStarted():
                leg = self._open_b_leg(event.leg_id, event.TYPE)
                if leg.answered_at is not None:
                    raise CallRecordError(f"leg {leg.id!r} rings after it answered")
                ringing = self.ringing_at
                if ringing is None and self.answered_at is None:
                    ringing = event.at
                new_leg = leg if leg.ringing_at is not None else replace(leg, ringing_at=event.at)
                return replace(self, legs=self._with(new_leg), ringing_at=ringing, events=events)
            case CallAnswered():
                leg = self._open_b_leg(event.leg_id, event.TYPE)
                if leg.answered_at is not None:
                    raise CallRecordError(f"leg {leg.id!r} answered twice")
                answered = self.answered_at if self.answered_at is not None else event.at
                return replace(
                    self,
                    legs=self._with(replace(leg, answered_at=event.at)),
                    answered_at=answered,
                    events=events,
                )
            case HoldStarted():
                if self.answered_at is None:
                    raise CallRecordError("hold before the call was answered")
                if self.held:
                    raise CallRecordError("hold while already on hold")
                return replace(self, holds=(*self.holds, (event.at, None)), events=events)
            case HoldEnded():
                if not self.held:
                    raise CallRecordError("hold_end without a hold")
                return replace(self, holds=self._holds_closed(event.at), events=events)
            case CallTransferred():
                if self.answered_at is None:
                    raise CallRecordError("transfer before the call was answered")
                return replace(
                    self,
                    holds=self._holds_closed(event.at),
                    transfers=self.transfers + 1,
                    events=events,
                )
            case LegEnded():
                leg = self._open_leg(event.leg_id, event.TYPE)
                ended = replace(leg, ended_at=event.at, end_reason=event.reason)
                return replace(self, legs=self._with(ended), events=events)
            case CallEnded():
                self._check_end_reason(event.reason)
                legs = tuple(
                    leg
                    if leg.ended_at is not None
                    else replace(leg, ended_at=event.at, end_reason=event.reason)
                    for leg in self.legs
                )
                return replace(
                    self,
                    legs=legs,
                    holds=self._holds_closed(event.at),
                    ended_at=event.at,
                    end_reason=event.reason,
                    events=events,
                )
            case WrapUpEnded():
                if self.ended_at is None:
                    raise CallRecordError("wrap_up_ended before the call ended")
                if self.wrap_up_ended_at is not None:
                    raise CallRecordError("wrap_up_ended twice")
                return replace(self, wrap_up_ended_at=event.at, events=events)

    def _check_end_reason(self, reason: EndReason) -> None:
        if reason in _LEG_ONLY_ENDS:
            raise CallRecordError(f"{reason.value!r} ends a leg, not a call")
        if self.answered_at is None and reason in _ANSWERED_ENDS:
            raise CallRecordError(f"{reason.value!r} for a call never answered")
        if self.answered_at is not None and reason in _UNANSWERED_ENDS:
            raise CallRecordError(f"{reason.value!r} for an answered call")

    def _leg(self, leg_id: str, *, must_exist: bool = True) -> Leg | None:
        for leg in self.legs:
            if leg.id == leg_id:
                return leg
        if must_exist:
            raise CallRecordError(f"no leg {leg_id!r}")
        return None

    def _open_leg(self, leg_id: str, what: str) -> Leg:
        leg = self._leg(leg_id)
        assert leg is not None
        if leg.ended_at is not None:
            raise CallRecordError(f"{what!r} on leg {leg_id!r}, which has ended")
        return leg

    def _open_b_leg(self, leg_id: str, what: str) -> Leg:
        leg = self._open_leg(leg_id, what)
        if leg.role is not LegRole.B:
            raise CallRecordError(f"{what!r} on the caller's leg {leg_id!r}")
        return leg

    def _with(self, new: Leg) -> tuple[Leg, ...]:
        return tuple(new if leg.id == new.id else leg for leg in self.legs)

    def _holds_closed(self, at: float) -> tuple[tuple[float, float | None], ...]:
        return tuple((start, at if end is None else end) for start, end in self.holds)

    # -- derived values ---------------------------------------------------------------

    @property
    def last_event_at(self) -> float:
        return self.events[-1].at

    @property
    def held(self) -> bool:
        return bool(self.holds) and self.holds[-1][1] is None

    @property
    def state(self) -> CallState:
        if self.ended_at is not None:
            return CallState.ENDED
        if self.answered_at is None:
            return CallState.RINGING
        return CallState.HELD if self.held else CallState.ACTIVE

    @property
    def agents(self) -> tuple[str, ...]:
        """Every agent with a leg in this call, in order of appearance."""
        return tuple(dict.fromkeys(leg.agent for leg in self.legs if leg.agent is not None))

    def _horizon(self, now: float | None) -> float:
        if self.ended_at is not None:
            return self.ended_at
        return self.last_event_at if now is None else max(now, self.last_event_at)

    def hold_seconds_at(self, now: float | None = None) -> float:
        until = self._horizon(now)
        return sum((until if end is None else end) - start for start, end in self.holds)

    def talk_seconds_at(self, now: float | None = None) -> float:
        if self.answered_at is None:
            return 0.0
        return max(0.0, self._horizon(now) - self.answered_at - self.hold_seconds_at(now))

    def ring_seconds_at(self, now: float | None = None) -> float:
        if self.ringing_at is None:
            return 0.0
        until = self.answered_at if self.answered_at is not None else self._horizon(now)
        return until - self.ringing_at

    @property
    def hold_seconds(self) -> float:
        return self.hold_seconds_at()

    @property
    def talk_seconds(self) -> float:
        return self.talk_seconds_at()

    @property
    def ring_seconds(self) -> float:
        return self.ring_seconds_at()

    @property
    def wrap_up_seconds(self) -> float:
        if self.ended_at is None or self.wrap_up_ended_at is None:
            return 0.0
        return self.wrap_up_ended_at - self.ended_at

    @property
    def handle_seconds(self) -> float:
        return self.talk_seconds + self.hold_seconds + self.wrap_up_seconds

    # -- JSON -------------------------------------------------------------------------

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "direction": self.direction.value,
            "caller": self.caller,
            "callee": self.callee,
            "agents": list(self.agents),
            "state": self.state.value,
            "started_at": self.started_at,
            "ringing_at": self.ringing_at,
            "answered_at": self.answered_at,
            "ended_at": self.ended_at,
            "end_reason": None if self.end_reason is None else self.end_reason.value,
            "ring_seconds": _ms(self.ring_seconds),
            "talk_seconds": _ms(self.talk_seconds),
            "hold_seconds": _ms(self.hold_seconds),
            "wrap_up_seconds": _ms(self.wrap_up_seconds),
            "handle_seconds": _ms(self.handle_seconds),
            "holds": [{"start": start, "end": end} for start, end in self.holds],
            "transfers": self.transfers,
            "legs": [leg.to_json_dict() for leg in self.legs],
            "events": [event_to_dict(e) for e in self.events],
        }

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> CallRecord:
        """Rebuild from the ``id`` and ``events`` of :meth:`to_json_dict` output.

        ValueError (CallRecordError included) when the data is malformed.
        """
        call_id = data.get("id")
        raw_events = data.get("events")
        if not isinstance(call_id, str) or not isinstance(raw_events, list):
            raise ValueError("a call record needs a string 'id' and an 'events' list")
        events = [event_from_dict(e) for e in raw_events if isinstance(e, Mapping)]
        if len(events) != len(raw_events):
            raise ValueError("every event must be an object")
        try:
            return cls.replay(call_id, events)
        except CallRecordError as exc:
            raise ValueError(f"inconsistent call record {call_id!r}: {exc}") from None


def _ms(seconds: float) -> float:
    # Durations are differences of wall-clock floats; milliseconds are what a report wants
    # and hide float noise such as 9.999999999.
    return round(seconds, 3)
