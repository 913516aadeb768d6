"""The omnichannel session model: sessions, their channels, and an agent's routing view.

A :class:`Session` is one interaction with one customer. It holds any number of
:class:`Channel` objects at once (a chat, then a voice call added to it, an email...), each
with its own lifecycle and timeline. Everything here is pure: objects are frozen, time is an
argument, and every change returns a new object, so the store (memory, SQLite, Redis) and the
routing engine can share them without locks and tests can step time by hand.

The channel lifecycle is the table :data:`TRANSITIONS`; a pair missing from it is a conflict
(:class:`SessionError`, status 409), never a silent no-op. See docs/sessions.md.
"""

from __future__ import annotations

import random
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType
from typing import Any, TypeVar

__all__ = [
    "TRANSITIONS",
    "AgentState",
    "Channel",
    "ChannelInput",
    "ChannelState",
    "CloseReason",
    "Customer",
    "Media",
    "Session",
    "SessionError",
    "TimelineEntry",
    "generate_pin",
]

_E = TypeVar("_E", bound=StrEnum)


class Media(StrEnum):
    """A channel's medium. The values match presence's ``Channel`` and config capacity keys."""

    VOICE = "voice"
    CHAT = "chat"
    EMAIL = "email"
    SMS = "sms"
    VIDEO = "video"
    SOCIAL = "social"


class ChannelState(StrEnum):
    QUEUED = "queued"
    OFFERED = "offered"
    ACTIVE = "active"
    HELD = "held"
    WRAP_UP = "wrap_up"
    ENDED = "ended"


class ChannelInput(StrEnum):
    OFFER = "offer"
    ACCEPT = "accept"
    REJECT = "reject"
    OFFER_TIMEOUT = "offer_timeout"
    HOLD = "hold"
    RESUME = "resume"
    END = "end"
    WRAP_UP_DONE = "wrap_up_done"
    # Back to a queue: a blind transfer to a queue, or an overflow while offered.
    REQUEUE = "requeue"


class CloseReason(StrEnum):
    # The agent (or the owning system through the API) closed it.
    AGENT = "agent"
    # Every channel ended and wrap-up is done; recorded, so never a silent close.
    COMPLETED = "completed"
    # Closed with channels still live (``close(force=True)``): those channels are ended.
    FORCED = "forced"


_S = ChannelState
_I = ChannelInput

# The channel lifecycle. Ending an interaction that was answered goes through wrap-up
# (after-contact work, possibly zero seconds long) so ACW is always measured the same way;
# ending one that never reached an agent (queued or offered) is an abandonment.
TRANSITIONS: Mapping[tuple[ChannelState, ChannelInput], ChannelState] = MappingProxyType(
    {
        (_S.QUEUED, _I.OFFER): _S.OFFERED,
        (_S.QUEUED, _I.END): _S.ENDED,
        (_S.QUEUED, _I.REQUEUE): _S.QUEUED,
        (_S.OFFERED, _I.ACCEPT): _S.ACTIVE,
        (_S.OFFERED, _I.REJECT): _S.QUEUED,
        (_S.OFFERED, _I.OFFER_TIMEOUT): _S.QUEUED,
        (_S.OFFERED, _I.REQUEUE): _S.QUEUED,
        (_S.OFFERED, _I.END): _S.ENDED,
        (_S.ACTIVE, _I.HOLD): _S.HELD,
        (_S.ACTIVE, _I.END): _S.WRAP_UP,
        (_S.ACTIVE, _I.REQUEUE): _S.QUEUED,
        (_S.HELD, _I.RESUME): _S.ACTIVE,
        (_S.HELD, _I.END): _S.WRAP_UP,
        (_S.HELD, _I.REQUEUE): _S.QUEUED,
        (_S.WRAP_UP, _I.WRAP_UP_DONE): _S.ENDED,
    }
)

# States in which a channel occupies one of its agent's capacity slots.
LOAD_STATES: frozenset[ChannelState] = frozenset({_S.OFFERED, _S.ACTIVE, _S.HELD, _S.WRAP_UP})
# States in which a channel is a live conversation a plain close must not cut.
LIVE_STATES: frozenset[ChannelState] = frozenset({_S.QUEUED, _S.OFFERED, _S.ACTIVE, _S.HELD})


class SessionError(Exception):
    """A request on a session that cannot be honoured.

    ``field`` names what is wrong (``"channels[1].state"``, ``"customer.phone"``); ``status``
    is the HTTP status the API answers with: 409 for a state conflict, 422 for bad data,
    404 for an unknown channel.
    """

    def __init__(self, message: str, *, field: str, status: int = 409) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.status = status


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One step of a channel: the state entered at ``at`` and what caused it."""

    at: float
    state: ChannelState
    # None for the initial entry (the channel was created queued).
    input: ChannelInput | None = None
    # The agent concerned (offered to, accepted by, ...), if any.
    agent: str | None = None
    # The queue the channel was in at that moment (overflow and transfers change it).
    queue: str | None = None
    detail: str = ""

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "state": self.state.value,
            "input": None if self.input is None else self.input.value,
            "agent": self.agent,
            "queue": self.queue,
            "detail": self.detail,
        }

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any], where: str = "timeline") -> TimelineEntry:
        raw_input = data.get("input")
        return cls(
            at=_number(data, "at", where),
            state=_enum(ChannelState, data.get("state"), f"{where}.state"),
            input=None if raw_input is None else _enum(ChannelInput, raw_input, f"{where}.input"),
            agent=_opt_str(data, "agent", where),
            queue=_opt_str(data, "queue", where),
            detail=_opt_str(data, "detail", where) or "",
        )


@dataclass(frozen=True, slots=True)
class Channel:
    id: str
    media: Media
    state: ChannelState
    # The agent offered or handling this channel; None while queued and after a requeue.
    agent: str | None
    queue: str | None
    created_at: float
    timeline: tuple[TimelineEntry, ...]
    offer_attempts: int = 0
    # The id the owning system knows it by: a SIP Call-ID, a chat platform's id...
    external_ref: str | None = None

    @property
    def occupies_capacity(self) -> bool:
        return self.state in LOAD_STATES

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    def apply(
        self,
        event: ChannelInput,
        now: float,
        *,
        agent: str | None = None,
        queue: str | None = None,
        detail: str = "",
    ) -> Channel:
        """The channel after ``event``; raise :class:`SessionError` if the table has no entry."""
        target = TRANSITIONS.get((self.state, event))
        if target is None:
            raise SessionError(
                f"channel {self.id} is {self.state.value}; {event.value!r} is not allowed",
                field="state",
                status=409,
            )
        new_agent = self.agent
        new_queue = self.queue
        attempts = self.offer_attempts
        if event is ChannelInput.OFFER:
            if not agent:
                raise SessionError("an offer names the agent", field="agent", status=422)
            new_agent = agent
            attempts += 1
        elif event in (ChannelInput.REJECT, ChannelInput.OFFER_TIMEOUT, ChannelInput.REQUEUE):
            new_agent = None
            if queue is not None:
                new_queue = queue
        elif event is ChannelInput.ACCEPT and agent is not None and agent != self.agent:
            # Only the offered agent may accept; another agent answering would bypass routing.
            raise SessionError(
                f"channel {self.id} is offered to another agent", field="agent", status=409
            )
        entry = TimelineEntry(
            at=now,
            state=target,
            input=event,
            # Record who was concerned, including who rejected or let the offer time out.
            agent=agent if agent is not None else self.agent,
            queue=new_queue,
            detail=detail,
        )
        return replace(
            self,
            state=target,
            agent=new_agent,
            queue=new_queue,
            offer_attempts=attempts,
            timeline=(*self.timeline, entry),
        )

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "media": self.media.value,
            "state": self.state.value,
            "agent": self.agent,
            "queue": self.queue,
            "created_at": self.created_at,
            "offer_attempts": self.offer_attempts,
            "external_ref": self.external_ref,
            "timeline": [t.to_json_dict() for t in self.timeline],
        }

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any], where: str = "channel") -> Channel:
        timeline = data.get("timeline", [])
        if not isinstance(timeline, list):
            raise SessionError("must be a list", field=f"{where}.timeline", status=422)
        attempts = data.get("offer_attempts", 0)
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 0:
            raise SessionError(
                "must be a non-negative integer", field=f"{where}.offer_attempts", status=422
            )
        return cls(
            id=_str(data, "id", where),
            media=_enum(Media, data.get("media"), f"{where}.media"),
            state=_enum(ChannelState, data.get("state"), f"{where}.state"),
            agent=_opt_str(data, "agent", where),
            queue=_opt_str(data, "queue", where),
            created_at=_number(data, "created_at", where),
            timeline=tuple(
                TimelineEntry.from_json_dict(
                    _mapping(t, f"{where}.timeline[{i}]"), f"{where}.timeline[{i}]"
                )
                for i, t in enumerate(timeline)
            ),
            offer_attempts=attempts,
            external_ref=_opt_str(data, "external_ref", where),
        )


@dataclass(frozen=True, slots=True)
class Customer:
    # The owning system's customer id; any of the four may be absent.
    id: str | None = None
    # E.164 callback number / caller ID, used to match a call back to an open session.
    phone: str | None = None
    email: str | None = None
    name: str | None = None

    def to_json_dict(self) -> dict[str, Any]:
        return {"id": self.id, "phone": self.phone, "email": self.email, "name": self.name}

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any], where: str = "customer") -> Customer:
        unknown = sorted(set(data) - {"id", "phone", "email", "name"})
        if unknown:
            raise SessionError("unknown key", field=f"{where}.{unknown[0]}", status=422)
        return cls(
            id=_opt_str(data, "id", where),
            phone=_opt_str(data, "phone", where),
            email=_opt_str(data, "email", where),
            name=_opt_str(data, "name", where),
        )


def _frozen(context: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(context))


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    customer: Customer
    # The queue new channels are routed to unless a channel names another.
    queue: str | None
    created_at: float
    # Self-service context (IVR path, bot transcript reference, collected fields such as an
    # order number): JSON values, shown to the agent in the offer.
    context: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    channels: tuple[Channel, ...] = ()
    # The owning agent: the first to accept a channel; sticky voice rings this agent.
    agent: str | None = None
    closed_at: float | None = None
    close_reason: CloseReason | None = None
    # Short numeric PIN shown in the chat, entered by DTMF to join this session by phone;
    # unique among open sessions (the store enforces it, see generate_pin).
    pin: str | None = None
    # Where a session that ended in self-service stopped (for /v1/reports/self-service).
    last_self_service_step: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.context, MappingProxyType):
            object.__setattr__(self, "context", _frozen(self.context))

    @property
    def closed(self) -> bool:
        return self.closed_at is not None

    def channel(self, channel_id: str) -> Channel:
        for ch in self.channels:
            if ch.id == channel_id:
                return ch
        raise SessionError(f"no channel {channel_id!r}", field="channel_id", status=404)

    def _check_open(self) -> None:
        if self.closed:
            raise SessionError(f"session {self.id} is closed", field="session", status=409)

    def add_channel(
        self,
        media: Media,
        now: float,
        external_ref: str | None = None,
        *,
        queue: str | None = None,
        channel_id: str | None = None,
    ) -> Session:
        """Add a queued channel; ``queue`` defaults to the session's queue."""
        self._check_open()
        new_id = channel_id or f"{self.id}-{len(self.channels) + 1}"
        if any(ch.id == new_id for ch in self.channels):
            raise SessionError(f"channel {new_id!r} exists", field="channel_id", status=409)
        target_queue = queue if queue is not None else self.queue
        channel = Channel(
            id=new_id,
            media=media,
            state=ChannelState.QUEUED,
            agent=None,
            queue=target_queue,
            created_at=now,
            timeline=(TimelineEntry(at=now, state=ChannelState.QUEUED, queue=target_queue),),
            external_ref=external_ref,
        )
        return replace(self, channels=(*self.channels, channel))

    def apply(
        self,
        channel_id: str,
        event: ChannelInput,
        now: float,
        agent: str | None = None,
        *,
        queue: str | None = None,
        detail: str = "",
    ) -> Session:
        """Feed ``event`` to one channel. Closes the session when its last channel ends."""
        self._check_open()
        index = next((i for i, c in enumerate(self.channels) if c.id == channel_id), None)
        if index is None:
            raise SessionError(f"no channel {channel_id!r}", field="channel_id", status=404)
        try:
            updated = self.channels[index].apply(
                event, now, agent=agent, queue=queue, detail=detail
            )
        except SessionError as exc:
            raise SessionError(
                exc.message, field=f"channels[{index}].{exc.field}", status=exc.status
            ) from None
        channels = (*self.channels[:index], updated, *self.channels[index + 1 :])
        owner = self.agent
        # A new agent becomes the owner only when the old one no longer handles any of this
        # session's channels (e.g. after a transfer); otherwise a voice call that fell back
        # to another agent would steal the customer from the chat agent.
        if (
            event is ChannelInput.ACCEPT
            and updated.agent is not None
            and not any(c.agent == owner and c.occupies_capacity for c in channels)
        ):
            owner = updated.agent
        session = replace(self, channels=channels, agent=owner)
        if all(c.state is ChannelState.ENDED for c in channels):
            session = replace(session, closed_at=now, close_reason=CloseReason.COMPLETED)
        return session

    def close(self, now: float, *, force: bool = False) -> Session:
        """Close the session; channels in wrap-up finish it, live channels need ``force``."""
        self._check_open()
        channels: list[Channel] = []
        for index, ch in enumerate(self.channels):
            if ch.live and not force:
                raise SessionError(
                    f"channel {ch.id} is still {ch.state.value}; end it first or force",
                    field=f"channels[{index}].state",
                    status=409,
                )
            if ch.state is ChannelState.WRAP_UP:
                ch = ch.apply(ChannelInput.WRAP_UP_DONE, now, detail="session closed")
            elif ch.live:
                if ch.state in (ChannelState.ACTIVE, ChannelState.HELD):
                    ch = ch.apply(ChannelInput.END, now, detail="session closed")
                    ch = ch.apply(ChannelInput.WRAP_UP_DONE, now, detail="session closed")
                else:
                    ch = ch.apply(ChannelInput.END, now, detail="session closed")
            channels.append(ch)
        forced = force and any(c.live for c in self.channels)
        return replace(
            self,
            channels=tuple(channels),
            closed_at=now,
            close_reason=CloseReason.FORCED if forced else CloseReason.AGENT,
        )

    def with_context(self, updates: Mapping[str, Any]) -> Session:
        """Merge ``updates`` into the context (a key set to None is removed)."""
        self._check_open()
        merged = dict(self.context)
        for key, value in updates.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        return replace(self, context=_frozen(merged))

    def with_self_service_step(self, step: str) -> Session:
        return replace(self, last_self_service_step=step)

    def live_channels(self, media: Media | None = None) -> tuple[Channel, ...]:
        return tuple(c for c in self.channels if c.live and (media is None or c.media is media))

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "customer": self.customer.to_json_dict(),
            "queue": self.queue,
            "created_at": self.created_at,
            "context": dict(self.context),
            "channels": [c.to_json_dict() for c in self.channels],
            "agent": self.agent,
            "closed_at": self.closed_at,
            "close_reason": None if self.close_reason is None else self.close_reason.value,
            "pin": self.pin,
            "last_self_service_step": self.last_self_service_step,
        }

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> Session:
        channels = data.get("channels", [])
        if not isinstance(channels, list):
            raise SessionError("must be a list", field="channels", status=422)
        context = data.get("context", {})
        raw_reason = data.get("close_reason")
        closed_at = data.get("closed_at")
        return cls(
            id=_str(data, "id", ""),
            customer=Customer.from_json_dict(_mapping(data.get("customer", {}), "customer")),
            queue=_opt_str(data, "queue", ""),
            created_at=_number(data, "created_at", ""),
            context=_mapping(context, "context"),
            channels=tuple(
                Channel.from_json_dict(_mapping(c, f"channels[{i}]"), f"channels[{i}]")
                for i, c in enumerate(channels)
            ),
            agent=_opt_str(data, "agent", ""),
            closed_at=None if closed_at is None else _number(data, "closed_at", ""),
            close_reason=None
            if raw_reason is None
            else _enum(CloseReason, raw_reason, "close_reason"),
            pin=_opt_str(data, "pin", ""),
            last_self_service_step=_opt_str(data, "last_self_service_step", ""),
        )


@dataclass(frozen=True, slots=True)
class AgentState:
    """What routing knows about one agent at one moment.

    ``load`` counts the agent's channels per media in offered, active, held or wrap-up
    state (what presence shows as "used"); ``offered`` says how many of those are offers, so
    the routing engine can replace them by its own, always current, count of open offers.
    Leaving ``offered`` empty is safe: offers are then counted twice until answered, which
    can only delay an offer, never exceed capacity.
    """

    id: str
    capacity: Mapping[Media, int]
    skills: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    load: Mapping[Media, int] = field(default_factory=lambda: MappingProxyType({}))
    # When the agent last became free (ended wrap-up, logged in); longest idle wins ties.
    idle_since: float = 0.0
    # The manual status allows routing (presence's "routable").
    routable: bool = True
    # A registered SIP device or WebRTC session: voice cannot be offered without one.
    devices: bool = True
    offered: Mapping[Media, int] = field(default_factory=lambda: MappingProxyType({}))

    def used(self, media: Media) -> int:
        return self.load.get(media, 0)

    def free(self, media: Media) -> int:
        return self.capacity.get(media, 0) - self.load.get(media, 0)

    def busy_media(self) -> frozenset[Media]:
        """Media on which the agent has at least one interaction in progress."""
        return frozenset(m for m, n in self.load.items() if n > 0)

    @staticmethod
    def load_from_channels(channels: Iterable[Channel], agent: str) -> dict[Media, int]:
        """``load`` computed from sessions' channels (the one truth presence also uses)."""
        load: dict[Media, int] = {}
        for ch in channels:
            if ch.agent == agent and ch.occupies_capacity:
                load[ch.media] = load.get(ch.media, 0) + 1
        return load

    @staticmethod
    def offered_from_channels(channels: Iterable[Channel], agent: str) -> dict[Media, int]:
        offered: dict[Media, int] = {}
        for ch in channels:
            if ch.agent == agent and ch.state is ChannelState.OFFERED:
                offered[ch.media] = offered.get(ch.media, 0) + 1
        return offered


def generate_pin(rng: random.Random, taken: Container[str], digits: int = 6) -> str:
    """A ``digits``-long numeric PIN not in ``taken`` (the PINs of open sessions).

    The caller passes the random source: ``random.SystemRandom()`` in production (a PIN
    lets a caller join a session, so it must not be predictable), a seeded one in tests.
    """
    if not 4 <= digits <= 12:
        raise ValueError("digits must be between 4 and 12")
    # Bounded: with a million six-digit PINs and thousands open, a free one is found at
    # once; a full space is a configuration problem worth an error, not a loop.
    for _ in range(1000):
        pin = "".join(str(rng.randrange(10)) for _ in range(digits))
        if pin not in taken:
            return pin
    raise SessionError("no free PIN", field="pin", status=503)


# --- JSON helpers: every error names the field ------------------------------------------


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _str(data: Mapping[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise SessionError("must be a non-empty string", field=_join(where, key), status=422)
    return value


def _opt_str(data: Mapping[str, Any], key: str, where: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise SessionError("must be a string or null", field=_join(where, key), status=422)
    return value


def _number(data: Mapping[str, Any], key: str, where: str) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SessionError("must be a number", field=_join(where, key), status=422)
    return float(value)


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SessionError("must be an object", field=where, status=422)
    return value


def _enum(kind: type[_E], value: object, where: str) -> _E:
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        return kind(value)
    except ValueError:
        known = ", ".join(m.value for m in kind)
        raise SessionError(f"must be one of {known}", field=where, status=422) from None
