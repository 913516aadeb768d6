"""The presence model: an agent's sources and the one document composed from them.

Everything here is pure: :func:`compose` is a function of the current
:class:`AgentSources` and ``now``; it has no timers and keeps no state. The store assigns
versions (``compose`` returns ``version=0``) and only bumps one when
:meth:`PresenceDocument.same_content` says something really changed.

Sources of one agent (:class:`AgentSources`):

- ``devices``: every registered SIP binding (``kind="sip"``) and every web session
  (``kind="web"``);
- ``interactions``: calls, chats, e-mails… each with its channel and state;
- ``manual``: the status the agent or a supervisor set (builtin or custom);
- ``published``: what softphones PUBLISHed (RFC 3903), one entry per entity-tag.

The derived rules (each has a test in ``tests/unit/presence/test_presence_model.py``;
docs/presence.md explains them for operators):

R1 **No device → voice offline.** With no SIP binding and no web session, ``voice`` is
   ``offline`` whatever the manual status and the interactions say, and the voice channel
   has ``free == 0``: nothing can ring.
R2 **Overall status.** ``status`` is the manual status, except:
   a manual ``offline`` is always ``offline``; a manual ``available`` becomes ``offline``
   when there is no device (R1) and becomes the voice state (``ringing``, ``on_call``,
   ``held``, ``wrap_up``) while the line is busy. Any other manual status (``away``,
   ``break``, ``dnd``, ``busy``, custom) stays visible even with no device, so a
   supervisor sees "away" rather than a bare "offline" for an agent on a break.
R3 **The last device leaving is immediate.** ``compose`` is pure, so the first document
   composed after the last binding is removed already says ``offline``.
R4 **Voice state** from the voice interactions (only when R1 does not apply), first match
   wins: any ``active`` → ``on_call``; any ``ringing`` → ``ringing``; any ``held`` →
   ``held``; any ``wrap_up`` → ``wrap_up``; otherwise ``available``. ``voice`` describes the
   line, not willingness: an agent on manual "away" with an idle phone has
   ``voice == available`` and ``routable == False``.
R5 **Channel load.** Calls override "available" for voice only, never chat capacity: each
   channel is counted on its own. ``used`` counts every interaction of the channel in
   any state, wrap-up included (after-call work occupies the slot, as in common ACD
   practice; an interaction leaves the sources when wrap-up ends) and ringing included
   (an offer reserves its slot so routing cannot double-offer). ``free`` is
   ``max(0, capacity - used)``, and 0 for voice when voice is offline (R1). Channels are
   listed in :class:`Channel` order when they have capacity or are in use.
R6 **Manual status is its own source.** Device and interaction changes never touch
   ``manual``, so a manual "away" is kept across re-registrations.
R7 **Routable** is the manual status's ``routable`` flag, and false when there is no
   device at all (no phone and no web session: nothing can be delivered). Unknown status
   names (neither builtin nor configured) are not routable; names are validated at the
   API. Routing decides per channel with ``routable`` and ``free``.
R8 **PUBLISHed state merges into the one document.** Expired publications are ignored.
   Live ones add their RPID activities to ``activities`` (after the derived ones, without
   duplicates) and lend their note when the manual status has none (the latest
   publication wins). They never change ``status`` or ``routable``: in a contact
   center the status set through the API by the agent or a supervisor is authoritative,
   and a softphone cannot take an agent out of (or into) routing.
R9 **Activities** (RFC 4480 §3.2) derived from the sources: ``on-the-phone`` while voice is
   ringing, on a call or held; ``busy`` during voice wrap-up; and from the manual status
   away → ``away``, break → ``away``, busy → ``busy``, dnd → ``busy`` (RFC 4480 has no
   do-not-disturb; phones show busy), a custom status whose name is an RFC 4480 activity
   (e.g. ``meeting``) → itself, ``lunch`` → ``meal``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType
from typing import Any, TypeVar

_T = TypeVar("_T")
_E = TypeVar("_E", bound=StrEnum)


class Channel(StrEnum):
    VOICE = "voice"
    CHAT = "chat"
    EMAIL = "email"
    SMS = "sms"
    VIDEO = "video"
    SOCIAL = "social"


class InteractionState(StrEnum):
    RINGING = "ringing"
    ACTIVE = "active"
    HELD = "held"
    WRAP_UP = "wrap_up"


class VoiceState(StrEnum):
    OFFLINE = "offline"
    AVAILABLE = "available"
    RINGING = "ringing"
    ON_CALL = "on_call"
    HELD = "held"
    WRAP_UP = "wrap_up"


DEVICE_SIP = "sip"
DEVICE_WEB = "web"
DEVICE_KINDS = (DEVICE_SIP, DEVICE_WEB)

DIRECTION_INBOUND = "inbound"
DIRECTION_OUTBOUND = "outbound"

PUBLISHED_OPEN = "open"
PUBLISHED_CLOSED = "closed"

# RFC 4480 §3.2 activity values (the element names inside <rpid:activities>).
RPID_ACTIVITIES: frozenset[str] = frozenset(
    {
        "appointment",
        "away",
        "breakfast",
        "busy",
        "dinner",
        "holiday",
        "in-transit",
        "looking-for-work",
        "meal",
        "meeting",
        "on-the-phone",
        "performance",
        "permanent-absence",
        "playing",
        "presentation",
        "shopping",
        "sleeping",
        "spectator",
        "steering",
        "travel",
        "tv",
        "unknown",
        "vacation",
        "working",
        "worship",
        "other",
    }
)


class PresenceDataError(ValueError):
    """A stored or transmitted JSON form of a presence object is malformed."""


@dataclass(frozen=True, slots=True)
class StatusDef:
    """A manual status: builtin or from ``presence.custom_statuses`` in the config."""

    name: str
    routable: bool
    label: str | None = None


BUILTIN_STATUSES: Mapping[str, StatusDef] = MappingProxyType(
    {
        "available": StatusDef("available", True, "Available"),
        "away": StatusDef("away", False, "Away"),
        "busy": StatusDef("busy", False, "Busy"),
        "dnd": StatusDef("dnd", False, "Do not disturb"),
        "break": StatusDef("break", False, "Break"),
        "offline": StatusDef("offline", False, "Offline"),
    }
)


def status_table(custom: Iterable[StatusDef] = ()) -> Mapping[str, StatusDef]:
    """The builtin statuses plus ``custom`` ones (a custom name never replaces a builtin)."""
    table = dict(BUILTIN_STATUSES)
    for item in custom:
        table.setdefault(item.name, item)
    return MappingProxyType(table)


@dataclass(frozen=True, slots=True)
class Device:
    """A SIP binding (``kind="sip"``, ``id`` = the Contact) or a web session (``"web"``)."""

    id: str
    kind: str
    contact: str | None
    user_agent: str | None
    since: float


@dataclass(frozen=True, slots=True)
class Interaction:
    """One piece of work the agent holds: a call, a chat, an e-mail…

    ``remote``/``remote_display`` identify the other party (shown on BLF keys);
    ``call_id``/``local_tag``/``remote_tag`` are the SIP dialog identifiers RFC 4235 §4.1.1
    puts on a ``<dialog>`` element (phones use them for directed pickup).
    """

    id: str
    channel: Channel
    state: InteractionState
    since: float
    remote: str | None = None
    remote_display: str | None = None
    direction: str | None = None
    call_id: str | None = None
    local_tag: str | None = None
    remote_tag: str | None = None


@dataclass(frozen=True, slots=True)
class ManualStatus:
    """The status an agent or a supervisor set by hand; survives device changes (R6)."""

    status: str = "available"
    note: str | None = None
    set_by: str | None = None
    since: float = 0.0


@dataclass(frozen=True, slots=True)
class Published:
    """What one softphone PUBLISHed (RFC 3903), keyed by the entity-tag we issued."""

    etag: str
    basic: str
    activities: tuple[str, ...]
    note: str | None
    expires_at: float
    source: str | None = None

    def live(self, now: float) -> bool:
        """RFC 3903 §6 step 7: soft state past its expiry is gone."""
        return self.expires_at > now


@dataclass(frozen=True, slots=True)
class AgentSources:
    """Everything presence knows about one agent, before derivation."""

    agent: str
    devices: tuple[Device, ...] = ()
    interactions: tuple[Interaction, ...] = ()
    manual: ManualStatus = field(default_factory=ManualStatus)
    published: tuple[Published, ...] = ()

    def with_devices(self, devices: Iterable[Device], *, kind: str | None = None) -> AgentSources:
        """Replace the devices; with ``kind``, only those of that kind (others are kept).

        ``kind="sip"`` lets the registrar listener replace the bindings without dropping
        the web sessions, and the reverse.
        """
        new = tuple(devices)
        if kind is None:
            return replace(self, devices=new)
        if any(d.kind != kind for d in new):
            raise ValueError(f"with_devices(kind={kind!r}) given a device of another kind")
        kept = tuple(d for d in self.devices if d.kind != kind)
        return replace(self, devices=kept + new)

    def with_device(self, device: Device) -> AgentSources:
        """Add ``device`` or replace the one with the same id (in place)."""
        return replace(self, devices=_put(self.devices, device, lambda d: d.id == device.id))

    def without_device(self, device_id: str) -> AgentSources:
        return replace(self, devices=tuple(d for d in self.devices if d.id != device_id))

    def with_interaction(self, interaction: Interaction) -> AgentSources:
        """Add ``interaction`` or replace the one with the same id (in place)."""
        items = _put(self.interactions, interaction, lambda i: i.id == interaction.id)
        return replace(self, interactions=items)

    def without_interaction(self, interaction_id: str) -> AgentSources:
        kept = tuple(i for i in self.interactions if i.id != interaction_id)
        return replace(self, interactions=kept)

    def with_manual(self, manual: ManualStatus) -> AgentSources:
        return replace(self, manual=manual)

    def with_published(self, published: Published) -> AgentSources:
        """Add a publication, replacing the one with the same etag.

        The new one goes last: the tuple is ordered by publish time so "the latest
        publication" (R8) is the last live one.
        """
        kept = tuple(p for p in self.published if p.etag != published.etag)
        return replace(self, published=(*kept, published))

    def replacing_published(self, old_etag: str, published: Published) -> AgentSources:
        """RFC 3903 §6 refresh/modify: the entity-tag changes on every successful PUBLISH."""
        return self.without_published(old_etag).with_published(published)

    def without_published(self, etag: str) -> AgentSources:
        return replace(self, published=tuple(p for p in self.published if p.etag != etag))

    def without_expired(self, now: float) -> AgentSources:
        """Drop expired publications (the only sources that expire by themselves here)."""
        live = tuple(p for p in self.published if p.live(now))
        if len(live) == len(self.published):
            return self
        return replace(self, published=live)

    def next_expiry(self) -> float | None:
        """When the next publication expires, for the caller's timer; None if none."""
        return min((p.expires_at for p in self.published), default=None)

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "agent": self.agent,
            "devices": [_device_to_json(d) for d in self.devices],
            "interactions": [_interaction_to_json(i) for i in self.interactions],
            "manual": _manual_to_json(self.manual),
            "published": [_published_to_json(p) for p in self.published],
        }

    @classmethod
    def from_json_dict(cls, d: Mapping[str, Any]) -> AgentSources:
        r = _Reader(d, "sources")
        return cls(
            agent=r.text("agent"),
            devices=tuple(_device_from_json(x) for x in r.objects("devices", optional=True)),
            interactions=tuple(
                _interaction_from_json(x) for x in r.objects("interactions", optional=True)
            ),
            manual=_manual_from_json(r.object("manual")) if "manual" in d else ManualStatus(),
            published=tuple(_published_from_json(x) for x in r.objects("published", optional=True)),
        )


@dataclass(frozen=True, slots=True)
class ChannelLoad:
    channel: Channel
    used: int
    capacity: int
    free: int


@dataclass(frozen=True, slots=True)
class PresenceDocument:
    """The one composed presence of an agent; see the module docstring for the rules."""

    agent: str
    version: int
    updated_at: float
    status: str
    manual: ManualStatus
    voice: VoiceState
    routable: bool
    channels: tuple[ChannelLoad, ...]
    devices: tuple[Device, ...]
    interactions: tuple[Interaction, ...]
    activities: tuple[str, ...]
    note: str | None

    def same_content(self, other: PresenceDocument) -> bool:
        """Equal ignoring ``version`` and ``updated_at``."""
        return replace(other, version=self.version, updated_at=self.updated_at) == self

    def channel(self, channel: Channel) -> ChannelLoad | None:
        return next((c for c in self.channels if c.channel is channel), None)

    def to_json_dict(self) -> dict[str, Any]:
        """The API and store form. Field names are stable: add fields, never rename."""
        return {
            "agent": self.agent,
            "version": self.version,
            "updated_at": self.updated_at,
            "status": self.status,
            "routable": self.routable,
            "voice": self.voice.value,
            "manual": _manual_to_json(self.manual),
            "channels": [
                {
                    "channel": c.channel.value,
                    "used": c.used,
                    "capacity": c.capacity,
                    "free": c.free,
                }
                for c in self.channels
            ],
            "devices": [_device_to_json(d) for d in self.devices],
            "interactions": [_interaction_to_json(i) for i in self.interactions],
            "activities": list(self.activities),
            "note": self.note,
        }

    @classmethod
    def from_json_dict(cls, d: Mapping[str, Any]) -> PresenceDocument:
        r = _Reader(d, "document")
        return cls(
            agent=r.text("agent"),
            version=r.integer("version"),
            updated_at=r.number("updated_at"),
            status=r.text("status"),
            manual=_manual_from_json(r.object("manual")),
            voice=r.enum("voice", VoiceState),
            routable=r.boolean("routable"),
            channels=tuple(_channel_from_json(x) for x in r.objects("channels")),
            devices=tuple(_device_from_json(x) for x in r.objects("devices")),
            interactions=tuple(_interaction_from_json(x) for x in r.objects("interactions")),
            activities=tuple(r.texts("activities")),
            note=r.opt_text("note"),
        )


# ---------------------------------------------------------------------------------------
# Composition


# R9: manual status → RFC 4480 activity. Custom statuses named after an activity map to it.
_MANUAL_ACTIVITY: Mapping[str, str] = MappingProxyType(
    {"away": "away", "break": "away", "busy": "busy", "dnd": "busy", "lunch": "meal"}
)

_BUSY_VOICE = frozenset({VoiceState.RINGING, VoiceState.ON_CALL, VoiceState.HELD})


def voice_state(sources: AgentSources) -> VoiceState:
    """R1 and R4."""
    if not sources.devices:
        return VoiceState.OFFLINE
    states = {i.state for i in sources.interactions if i.channel is Channel.VOICE}
    for state, voice in (
        (InteractionState.ACTIVE, VoiceState.ON_CALL),
        (InteractionState.RINGING, VoiceState.RINGING),
        (InteractionState.HELD, VoiceState.HELD),
        (InteractionState.WRAP_UP, VoiceState.WRAP_UP),
    ):
        if state in states:
            return voice
    return VoiceState.AVAILABLE


def compose(
    sources: AgentSources,
    *,
    capacity: Mapping[str, int],
    statuses: Mapping[str, StatusDef],
    now: float,
) -> PresenceDocument:
    """Derive the agent's document from its sources (rules R1-R9 above).

    ``capacity`` maps channel names (``Channel`` values) to concurrent slots, as in the
    agent's config; names that are not channels are ignored. ``statuses`` is the table
    of known manual statuses (:func:`status_table`). Returns ``version=0``,
    ``updated_at=now``: the store assigns versions.
    """
    voice = voice_state(sources)
    manual = sources.manual
    has_device = bool(sources.devices)

    # R2
    if manual.status == "offline" or (manual.status == "available" and not has_device):
        status = "offline"
    elif manual.status == "available" and voice is not VoiceState.AVAILABLE:
        status = voice.value
    else:
        status = manual.status

    # R7
    definition = statuses.get(manual.status)
    routable = has_device and definition is not None and definition.routable

    # R5
    used: dict[Channel, int] = dict.fromkeys(Channel, 0)
    for interaction in sources.interactions:
        used[interaction.channel] += 1
    channels = []
    for channel in Channel:
        slots = max(0, int(capacity.get(channel.value, 0)))
        if slots == 0 and used[channel] == 0:
            continue
        free = max(0, slots - used[channel])
        if channel is Channel.VOICE and voice is VoiceState.OFFLINE:
            free = 0
        channels.append(ChannelLoad(channel, used[channel], slots, free))

    # R8 + R9
    live = [p for p in sources.published if p.live(now)]
    activities: list[str] = []
    if voice in _BUSY_VOICE:
        activities.append("on-the-phone")
    elif voice is VoiceState.WRAP_UP:
        activities.append("busy")
    manual_activity = _MANUAL_ACTIVITY.get(manual.status)
    if manual_activity is None and manual.status in RPID_ACTIVITIES:
        manual_activity = manual.status
    if manual_activity is not None:
        activities.append(manual_activity)
    for published in live:
        activities.extend(published.activities)
    note = manual.note
    if note is None:
        note = next((p.note for p in reversed(live) if p.note), None)

    return PresenceDocument(
        agent=sources.agent,
        version=0,
        updated_at=float(now),
        status=status,
        manual=manual,
        voice=voice,
        routable=routable,
        channels=tuple(channels),
        devices=sources.devices,
        interactions=sources.interactions,
        activities=tuple(dict.fromkeys(activities)),
        note=note,
    )


def _put(items: tuple[_T, ...], item: _T, same: Callable[[_T], bool]) -> tuple[_T, ...]:
    for index, existing in enumerate(items):
        if same(existing):
            return (*items[:index], item, *items[index + 1 :])
    return (*items, item)


# ---------------------------------------------------------------------------------------
# JSON forms. Readable field names (this is the API form too); None values are written as
# null so clients see every field.


def _device_to_json(d: Device) -> dict[str, Any]:
    return {
        "id": d.id,
        "kind": d.kind,
        "contact": d.contact,
        "user_agent": d.user_agent,
        "since": d.since,
    }


def _device_from_json(d: Mapping[str, Any]) -> Device:
    r = _Reader(d, "device")
    return Device(
        id=r.text("id"),
        kind=r.text("kind"),
        contact=r.opt_text("contact"),
        user_agent=r.opt_text("user_agent"),
        since=r.number("since"),
    )


def _interaction_to_json(i: Interaction) -> dict[str, Any]:
    return {
        "id": i.id,
        "channel": i.channel.value,
        "state": i.state.value,
        "since": i.since,
        "remote": i.remote,
        "remote_display": i.remote_display,
        "direction": i.direction,
        "call_id": i.call_id,
        "local_tag": i.local_tag,
        "remote_tag": i.remote_tag,
    }


def _interaction_from_json(d: Mapping[str, Any]) -> Interaction:
    r = _Reader(d, "interaction")
    return Interaction(
        id=r.text("id"),
        channel=r.enum("channel", Channel),
        state=r.enum("state", InteractionState),
        since=r.number("since"),
        remote=r.opt_text("remote"),
        remote_display=r.opt_text("remote_display"),
        direction=r.opt_text("direction"),
        call_id=r.opt_text("call_id"),
        local_tag=r.opt_text("local_tag"),
        remote_tag=r.opt_text("remote_tag"),
    )


def _manual_to_json(m: ManualStatus) -> dict[str, Any]:
    return {"status": m.status, "note": m.note, "set_by": m.set_by, "since": m.since}


def _manual_from_json(d: Mapping[str, Any]) -> ManualStatus:
    r = _Reader(d, "manual")
    return ManualStatus(
        status=r.text("status"),
        note=r.opt_text("note"),
        set_by=r.opt_text("set_by"),
        since=r.number("since"),
    )


def _published_to_json(p: Published) -> dict[str, Any]:
    return {
        "etag": p.etag,
        "basic": p.basic,
        "activities": list(p.activities),
        "note": p.note,
        "expires_at": p.expires_at,
        "source": p.source,
    }


def _published_from_json(d: Mapping[str, Any]) -> Published:
    r = _Reader(d, "published")
    return Published(
        etag=r.text("etag"),
        basic=r.text("basic"),
        activities=tuple(r.texts("activities")),
        note=r.opt_text("note"),
        expires_at=r.number("expires_at"),
        source=r.opt_text("source"),
    )


def _channel_from_json(d: Mapping[str, Any]) -> ChannelLoad:
    r = _Reader(d, "channel")
    return ChannelLoad(
        channel=r.enum("channel", Channel),
        used=r.integer("used"),
        capacity=r.integer("capacity"),
        free=r.integer("free"),
    )


class _Reader:
    """Typed field access on a decoded JSON object; malformed input → PresenceDataError."""

    __slots__ = ("_d", "_what")

    def __init__(self, d: Mapping[str, Any], what: str) -> None:
        if not isinstance(d, Mapping):
            raise PresenceDataError(f"{what}: expected an object")
        self._d = d
        self._what = what

    def _get(self, key: str) -> Any:
        try:
            return self._d[key]
        except KeyError:
            raise PresenceDataError(f"{self._what}.{key}: missing") from None

    def _bad(self, key: str, expected: str) -> PresenceDataError:
        return PresenceDataError(f"{self._what}.{key}: expected {expected}")

    def text(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            raise self._bad(key, "a string")
        return value

    def opt_text(self, key: str) -> str | None:
        value = self._d.get(key)
        if value is not None and not isinstance(value, str):
            raise self._bad(key, "a string or null")
        return value

    def integer(self, key: str) -> int:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(key, "an integer")
        return value

    def number(self, key: str) -> float:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._bad(key, "a number")
        result = float(value)
        if not math.isfinite(result):
            raise self._bad(key, "a finite number")
        return result

    def boolean(self, key: str) -> bool:
        value = self._get(key)
        if not isinstance(value, bool):
            raise self._bad(key, "a boolean")
        return value

    def enum(self, key: str, kind: type[_E]) -> _E:
        value = self.text(key)
        try:
            return kind(value)
        except ValueError:
            raise self._bad(key, f"one of {', '.join(m.value for m in kind)}") from None

    def texts(self, key: str) -> list[str]:
        value = self._get(key)
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise self._bad(key, "a list of strings")
        return value

    def object(self, key: str) -> Mapping[str, Any]:
        value = self._get(key)
        if not isinstance(value, Mapping):
            raise self._bad(key, "an object")
        return value

    def objects(self, key: str, *, optional: bool = False) -> list[Mapping[str, Any]]:
        if optional and key not in self._d:
            return []
        value = self._get(key)
        if not isinstance(value, list) or not all(isinstance(x, Mapping) for x in value):
            raise self._bad(key, "a list of objects")
        return value
