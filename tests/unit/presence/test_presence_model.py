"""The presence model: one test per derived rule (R1-R9 in ucgate.presence.model), then
properties over arbitrary sources and the JSON forms."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ucgate.presence.model import (
    BUILTIN_STATUSES,
    AgentSources,
    Channel,
    ChannelLoad,
    Device,
    Interaction,
    InteractionState,
    ManualStatus,
    PresenceDataError,
    PresenceDocument,
    Published,
    StatusDef,
    VoiceState,
    compose,
    status_table,
)

T0 = 1_700_000_000.0
CAPACITY = {"voice": 1, "chat": 3, "email": 5}
STATUSES = status_table([StatusDef("training", False, "Training"), StatusDef("meeting", False)])

PHONE = Device("sip:alice@192.0.2.1:5060", "sip", "sip:alice@192.0.2.1:5060", "Yealink", T0)
PHONE2 = Device("sip:alice@192.0.2.2:5060", "sip", "sip:alice@192.0.2.2:5060", "Bria", T0)
WEB = Device("ws-1", "web", None, "Chrome", T0)


def call(
    state: InteractionState = InteractionState.ACTIVE, id: str = "c1", **kw: str
) -> Interaction:
    return Interaction(id, Channel.VOICE, state, T0, **kw)


def chat(state: InteractionState = InteractionState.ACTIVE, id: str = "ch1") -> Interaction:
    return Interaction(id, Channel.CHAT, state, T0)


def doc_of(sources: AgentSources, now: float = T0 + 10) -> PresenceDocument:
    return compose(sources, capacity=CAPACITY, statuses=STATUSES, now=now)


def alice(*devices: Device) -> AgentSources:
    return AgentSources("alice", devices=devices)


def load(doc: PresenceDocument, channel: Channel) -> ChannelLoad:
    found = doc.channel(channel)
    assert found is not None
    return found


# --- R1 / R3: no device → voice offline; the last device leaving is immediate -----------


def test_no_device_is_offline_for_voice_whatever_the_manual_status() -> None:
    for manual in ("available", "away", "busy", "dnd", "break", "training"):
        doc = doc_of(alice().with_manual(ManualStatus(manual)))
        assert doc.voice is VoiceState.OFFLINE
        assert load(doc, Channel.VOICE).free == 0
        assert doc.routable is False


def test_no_device_with_a_call_in_the_sources_is_still_offline() -> None:
    doc = doc_of(alice().with_interaction(call()))
    assert doc.voice is VoiceState.OFFLINE
    assert doc.status == "offline"


def test_a_web_session_alone_keeps_the_agent_online() -> None:
    doc = doc_of(alice(WEB))
    assert doc.voice is VoiceState.AVAILABLE
    assert doc.status == "available"
    assert doc.routable is True


def test_last_device_leaving_flips_to_offline_at_once() -> None:
    sources = alice(PHONE, PHONE2)
    assert doc_of(sources).status == "available"
    one_left = sources.without_device(PHONE.id)
    assert doc_of(one_left).voice is VoiceState.AVAILABLE
    none_left = one_left.with_devices([], kind="sip")
    doc = doc_of(none_left, now=T0 + 10.001)
    assert doc.voice is VoiceState.OFFLINE
    assert doc.status == "offline"
    assert doc.routable is False


# --- R2: overall status ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("manual", "devices", "interactions", "status"),
    [
        ("available", (PHONE,), (), "available"),
        ("available", (), (), "offline"),
        ("offline", (PHONE,), (), "offline"),
        ("offline", (), (), "offline"),
        ("away", (), (), "away"),
        ("break", (), (), "break"),
        ("training", (), (), "training"),
        ("available", (PHONE,), (call(InteractionState.RINGING),), "ringing"),
        ("available", (PHONE,), (call(),), "on_call"),
        ("available", (PHONE,), (call(InteractionState.HELD),), "held"),
        ("available", (PHONE,), (call(InteractionState.WRAP_UP),), "wrap_up"),
        ("available", (PHONE,), (chat(),), "available"),
        ("dnd", (PHONE,), (call(),), "dnd"),
        ("busy", (PHONE,), (call(InteractionState.RINGING),), "busy"),
    ],
)
def test_overall_status(
    manual: str,
    devices: tuple[Device, ...],
    interactions: tuple[Interaction, ...],
    status: str,
) -> None:
    sources = AgentSources("alice", devices, interactions, ManualStatus(manual))
    assert doc_of(sources).status == status


# --- R4: voice state ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("states", "voice"),
    [
        ((), VoiceState.AVAILABLE),
        ((InteractionState.RINGING,), VoiceState.RINGING),
        ((InteractionState.ACTIVE,), VoiceState.ON_CALL),
        ((InteractionState.HELD,), VoiceState.HELD),
        ((InteractionState.WRAP_UP,), VoiceState.WRAP_UP),
        ((InteractionState.RINGING, InteractionState.ACTIVE), VoiceState.ON_CALL),
        ((InteractionState.HELD, InteractionState.ACTIVE), VoiceState.ON_CALL),
        ((InteractionState.HELD, InteractionState.RINGING), VoiceState.RINGING),
        ((InteractionState.WRAP_UP, InteractionState.HELD), VoiceState.HELD),
        ((InteractionState.WRAP_UP, InteractionState.RINGING), VoiceState.RINGING),
    ],
)
def test_voice_state(states: tuple[InteractionState, ...], voice: VoiceState) -> None:
    sources = alice(PHONE)
    for n, state in enumerate(states):
        sources = sources.with_interaction(call(state, id=f"c{n}"))
    # Chats never move the voice state.
    sources = sources.with_interaction(chat())
    assert doc_of(sources).voice is voice


def test_manual_away_with_idle_phone_line_is_available_but_not_routable() -> None:
    doc = doc_of(alice(PHONE).with_manual(ManualStatus("away")))
    assert doc.voice is VoiceState.AVAILABLE
    assert doc.status == "away"
    assert doc.routable is False


# --- R5: channel load -----------------------------------------------------------------


def test_a_call_does_not_consume_chat_capacity() -> None:
    doc = doc_of(alice(PHONE).with_interaction(call()).with_interaction(chat()))
    assert load(doc, Channel.VOICE) == ChannelLoad(Channel.VOICE, 1, 1, 0)
    assert load(doc, Channel.CHAT) == ChannelLoad(Channel.CHAT, 1, 3, 2)
    assert load(doc, Channel.EMAIL) == ChannelLoad(Channel.EMAIL, 0, 5, 5)
    assert doc.status == "on_call"


def test_wrap_up_and_ringing_occupy_their_slot() -> None:
    doc = doc_of(
        alice(PHONE)
        .with_interaction(call(InteractionState.WRAP_UP))
        .with_interaction(chat(InteractionState.RINGING, "a"))
        .with_interaction(chat(InteractionState.WRAP_UP, "b"))
    )
    assert load(doc, Channel.VOICE).free == 0
    assert load(doc, Channel.CHAT) == ChannelLoad(Channel.CHAT, 2, 3, 1)


def test_over_capacity_never_goes_negative_and_unconfigured_channels_show_when_used() -> None:
    sources = alice(PHONE)
    for n in range(5):
        sources = sources.with_interaction(chat(id=f"ch{n}"))
    sources = sources.with_interaction(Interaction("s1", Channel.SMS, InteractionState.ACTIVE, T0))
    doc = doc_of(sources)
    assert load(doc, Channel.CHAT) == ChannelLoad(Channel.CHAT, 5, 3, 0)
    assert load(doc, Channel.SMS) == ChannelLoad(Channel.SMS, 1, 0, 0)
    assert doc.channel(Channel.VIDEO) is None
    assert [c.channel for c in doc.channels] == [
        Channel.VOICE,
        Channel.CHAT,
        Channel.EMAIL,
        Channel.SMS,
    ]


def test_chat_capacity_stays_free_without_a_phone_when_a_web_session_exists() -> None:
    doc = doc_of(alice(WEB).with_interaction(chat()))
    assert load(doc, Channel.CHAT).free == 2
    assert load(doc, Channel.VOICE).free == 1


# --- R6: manual status survives device changes ----------------------------------------


def test_manual_away_is_kept_across_re_registration() -> None:
    manual = ManualStatus("away", note="back at 3", set_by="supervisor-1", since=T0)
    sources = alice(PHONE).with_manual(manual)
    gone = sources.with_devices([], kind="sip")
    back = gone.with_devices([replace(PHONE, since=T0 + 60)], kind="sip")
    assert back.manual == manual
    doc = doc_of(back)
    assert doc.status == "away"
    assert doc.manual == manual
    assert doc.note == "back at 3"


def test_with_devices_by_kind_keeps_the_other_kind() -> None:
    sources = alice(PHONE, WEB).with_devices([PHONE2], kind="sip")
    assert sources.devices == (WEB, PHONE2)
    with pytest.raises(ValueError):
        sources.with_devices([WEB], kind="sip")
    assert sources.with_devices([]).devices == ()


# --- R7: routable ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("manual", "routable"),
    [
        ("available", True),
        ("away", False),
        ("busy", False),
        ("dnd", False),
        ("break", False),
        ("offline", False),
        ("training", False),
        ("no-such-status", False),
    ],
)
def test_routable_follows_the_manual_status(manual: str, routable: bool) -> None:
    assert doc_of(alice(PHONE).with_manual(ManualStatus(manual))).routable is routable


def test_a_routable_custom_status() -> None:
    statuses = status_table([StatusDef("outbound-campaign", True)])
    sources = alice(PHONE).with_manual(ManualStatus("outbound-campaign"))
    doc = compose(sources, capacity=CAPACITY, statuses=statuses, now=T0)
    assert doc.routable is True
    assert doc.status == "outbound-campaign"


def test_routable_is_not_changed_by_a_call() -> None:
    # Routing decides with free capacity; an on-call agent may still take chats.
    doc = doc_of(alice(PHONE).with_interaction(call()))
    assert doc.routable is True
    assert load(doc, Channel.VOICE).free == 0


def test_custom_statuses_never_replace_builtins() -> None:
    table = status_table([StatusDef("available", False)])
    assert table["available"].routable is True
    assert set(BUILTIN_STATUSES) == {"available", "away", "busy", "dnd", "break", "offline"}
    assert [n for n, d in BUILTIN_STATUSES.items() if d.routable] == ["available"]


# --- R8: published state merges -------------------------------------------------------


def pub(etag: str, *activities: str, note: str | None = None, expires: float = 3600) -> Published:
    return Published(etag, "open", activities, note, T0 + expires, source=PHONE.id)


def test_published_activities_and_note_merge_into_one_document() -> None:
    sources = alice(PHONE, PHONE2).with_published(pub("e1", "meeting", note="in a meeting"))
    sources = sources.with_published(pub("e2", "meeting", "busy"))
    doc = doc_of(sources)
    assert doc.activities == ("meeting", "busy")
    assert doc.note == "in a meeting"
    assert doc.status == "available"
    assert doc.routable is True


def test_published_closed_does_not_take_the_agent_out_of_routing() -> None:
    sources = alice(PHONE).with_published(Published("e1", "closed", ("away",), None, T0 + 60))
    doc = doc_of(sources)
    assert doc.routable is True
    assert doc.status == "available"
    assert doc.activities == ("away",)


def test_manual_note_wins_and_latest_publication_note_is_used() -> None:
    sources = (
        alice(PHONE)
        .with_published(pub("e1", note="first"))
        .with_published(pub("e2", note="second"))
    )
    assert doc_of(sources).note == "second"
    # Re-publishing e1 makes it the latest.
    assert doc_of(sources.with_published(pub("e1", note="again"))).note == "again"
    assert doc_of(sources.with_manual(ManualStatus("away", note="lunch"))).note == "lunch"


def test_expired_publications_are_ignored_and_dropped() -> None:
    sources = alice(PHONE).with_published(pub("e1", "meeting", note="x", expires=5))
    assert doc_of(sources, now=T0 + 4).activities == ("meeting",)
    late = doc_of(sources, now=T0 + 5)
    assert late.activities == ()
    assert late.note is None
    assert sources.next_expiry() == T0 + 5
    assert sources.without_expired(T0 + 5).published == ()
    assert sources.without_expired(T0 + 4) is sources


def test_publication_replace_and_remove_by_etag() -> None:
    sources = alice(PHONE).with_published(pub("e1", "away")).with_published(pub("e2"))
    modified = sources.replacing_published("e1", pub("e3", "busy"))
    assert [p.etag for p in modified.published] == ["e2", "e3"]
    assert modified.without_published("e2").without_published("nope").published == (
        pub("e3", "busy"),
    )
    assert AgentSources("bob").next_expiry() is None


# --- R9: activities -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("manual", "states", "activities"),
    [
        ("available", (), ()),
        ("away", (), ("away",)),
        ("break", (), ("away",)),
        ("busy", (), ("busy",)),
        ("dnd", (), ("busy",)),
        ("meeting", (), ("meeting",)),
        ("training", (), ()),
        ("available", (InteractionState.RINGING,), ("on-the-phone",)),
        ("available", (InteractionState.HELD,), ("on-the-phone",)),
        ("available", (InteractionState.WRAP_UP,), ("busy",)),
        ("away", (InteractionState.ACTIVE,), ("on-the-phone", "away")),
        ("busy", (InteractionState.WRAP_UP,), ("busy",)),
    ],
)
def test_activities(
    manual: str, states: tuple[InteractionState, ...], activities: tuple[str, ...]
) -> None:
    sources = alice(PHONE).with_manual(ManualStatus(manual))
    for n, state in enumerate(states):
        sources = sources.with_interaction(call(state, id=f"c{n}"))
    assert doc_of(sources).activities == activities


def test_lunch_maps_to_meal() -> None:
    statuses = status_table([StatusDef("lunch", False)])
    sources = alice(PHONE).with_manual(ManualStatus("lunch"))
    doc = compose(sources, capacity=CAPACITY, statuses=statuses, now=T0)
    assert doc.activities == ("meal",)


# --- sources helpers ------------------------------------------------------------------


def test_interactions_replace_in_place_and_remove_by_id() -> None:
    sources = alice(PHONE).with_interaction(call(id="a")).with_interaction(chat(id="b"))
    sources = sources.with_interaction(call(InteractionState.HELD, id="a"))
    assert [(i.id, i.state) for i in sources.interactions] == [
        ("a", InteractionState.HELD),
        ("b", InteractionState.ACTIVE),
    ]
    assert [i.id for i in sources.without_interaction("a").interactions] == ["b"]
    assert sources.with_device(replace(PHONE, user_agent="new")).devices[0].user_agent == "new"


def test_compose_sets_version_zero_and_the_time() -> None:
    doc = compose(alice(PHONE), capacity={}, statuses=STATUSES, now=12)
    assert (doc.version, doc.updated_at, doc.channels) == (0, 12.0, ())
    assert isinstance(doc.updated_at, float)


def test_capacity_ignores_unknown_channels_and_negative_slots() -> None:
    doc = compose(alice(PHONE), capacity={"fax": 2, "chat": -1}, statuses=STATUSES, now=T0)
    assert doc.channels == ()


# --- same_content ---------------------------------------------------------------------


def test_same_content_ignores_version_and_time_only() -> None:
    a = doc_of(alice(PHONE), now=T0)
    b = replace(doc_of(alice(PHONE), now=T0 + 99), version=7)
    assert a.same_content(b) and b.same_content(a)
    assert not a.same_content(doc_of(alice(PHONE).with_manual(ManualStatus("away"))))
    assert not a.same_content(doc_of(alice(PHONE2), now=T0))


# --- properties -----------------------------------------------------------------------

_text = st.text(max_size=12)
_opt_text = st.none() | _text
_times = st.floats(min_value=0, max_value=2e9, allow_nan=False)

devices = st.builds(
    Device,
    id=_text,
    kind=st.sampled_from(["sip", "web"]),
    contact=_opt_text,
    user_agent=_opt_text,
    since=_times,
)
interactions = st.builds(
    Interaction,
    id=_text,
    channel=st.sampled_from(Channel),
    state=st.sampled_from(InteractionState),
    since=_times,
    remote=_opt_text,
    remote_display=_opt_text,
    direction=st.sampled_from([None, "inbound", "outbound"]),
    call_id=_opt_text,
    local_tag=_opt_text,
    remote_tag=_opt_text,
)
manuals = st.builds(
    ManualStatus,
    status=st.sampled_from([*STATUSES, "unknown-x"]),
    note=_opt_text,
    set_by=_opt_text,
    since=_times,
)
publications = st.builds(
    Published,
    etag=_text,
    basic=st.sampled_from(["open", "closed"]),
    activities=st.lists(st.sampled_from(["away", "busy", "meeting", "on-the-phone"])).map(tuple),
    note=_opt_text,
    expires_at=_times,
    source=_opt_text,
)
sources_st = st.builds(
    AgentSources,
    agent=_text,
    devices=st.lists(devices, max_size=3).map(tuple),
    interactions=st.lists(interactions, max_size=6).map(tuple),
    manual=manuals,
    published=st.lists(publications, max_size=3).map(tuple),
)
capacities = st.dictionaries(st.sampled_from([c.value for c in Channel]), st.integers(0, 5))


@given(sources_st, capacities, _times)
def test_invariants(sources: AgentSources, capacity: dict[str, int], now: float) -> None:
    doc = compose(sources, capacity=capacity, statuses=STATUSES, now=now)
    assert (doc.voice is VoiceState.OFFLINE) == (not sources.devices)
    if not sources.devices:
        assert not doc.routable
        if sources.manual.status == "available":
            assert doc.status == "offline"
    if sources.manual.status == "offline":
        assert doc.status == "offline"
    for load_ in doc.channels:
        assert load_.used == sum(1 for i in sources.interactions if i.channel is load_.channel)
        assert load_.capacity == capacity.get(load_.channel.value, 0)
        assert 0 <= load_.free <= max(0, load_.capacity - load_.used)
        assert load_.capacity or load_.used
    assert doc.manual == sources.manual
    assert len(set(doc.activities)) == len(doc.activities)
    assert doc.routable <= STATUSES.get(sources.manual.status, StatusDef("", False)).routable


@given(sources_st, capacities, _times)
def test_document_json_round_trip(
    sources: AgentSources, capacity: dict[str, int], now: float
) -> None:
    doc = compose(sources, capacity=capacity, statuses=STATUSES, now=now)
    doc = replace(doc, version=42)
    wire = json.loads(json.dumps(doc.to_json_dict()))
    assert PresenceDocument.from_json_dict(wire) == doc
    assert AgentSources.from_json_dict(json.loads(json.dumps(sources.to_json_dict()))) == sources


def test_document_json_field_names_are_stable() -> None:
    doc = doc_of(
        alice(PHONE)
        .with_interaction(call(remote="sip:+15550100@example.test", direction="inbound"))
        .with_manual(ManualStatus("available", set_by="alice", since=T0))
    )
    wire = doc.to_json_dict()
    assert list(wire) == [
        "agent",
        "version",
        "updated_at",
        "status",
        "routable",
        "voice",
        "manual",
        "channels",
        "devices",
        "interactions",
        "activities",
        "note",
    ]
    assert wire["voice"] == "on_call"
    assert wire["channels"][0] == {"channel": "voice", "used": 1, "capacity": 1, "free": 0}
    assert wire["interactions"][0]["state"] == "active"
    assert wire["interactions"][0]["channel"] == "voice"
    assert wire["manual"] == {"status": "available", "note": None, "set_by": "alice", "since": T0}
    assert set(wire["devices"][0]) == {"id", "kind", "contact", "user_agent", "since"}


def test_sources_json_defaults_for_missing_lists() -> None:
    assert AgentSources.from_json_dict({"agent": "bob"}) == AgentSources("bob")


@pytest.mark.parametrize(
    "bad",
    [
        [],
        {},
        {"agent": 3},
        {"agent": "a", "devices": {}},
        {"agent": "a", "devices": [{"id": "x"}]},
        {"agent": "a", "manual": {"status": "away", "since": "yesterday"}},
        {"agent": "a", "manual": {"status": "away", "since": float("inf")}},
        {"agent": "a", "manual": {"status": "away", "since": True}},
        {
            "agent": "a",
            "interactions": [{"id": "i", "channel": "fax", "state": "active", "since": 1}],
        },
        {"agent": "a", "published": [{"etag": "e", "basic": "open", "activities": "away"}]},
    ],
)
def test_malformed_json_raises_presence_data_error(bad: object) -> None:
    with pytest.raises(PresenceDataError):
        AgentSources.from_json_dict(bad)  # type: ignore[arg-type]


def test_malformed_document_json() -> None:
    wire = doc_of(alice(PHONE)).to_json_dict()
    for key, value in [("version", "1"), ("voice", "nap"), ("routable", 1), ("activities", [1])]:
        with pytest.raises(PresenceDataError, match=key):
            PresenceDocument.from_json_dict({**wire, key: value})
    with pytest.raises(PresenceDataError, match="note"):
        PresenceDocument.from_json_dict({**wire, "note": 5})
