"""The session model: the channel lifecycle table, ownership, closing, JSON round trips."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ucgate.sessions.model import (
    TRANSITIONS,
    AgentState,
    ChannelInput,
    ChannelState,
    CloseReason,
    Customer,
    Media,
    Session,
    SessionError,
    generate_pin,
)

In = ChannelInput
S = ChannelState


def new_session(now: float = 100.0) -> Session:
    return Session(
        id="s1",
        customer=Customer(id="c-9", phone="+15550199", name="Pat"),
        queue="support",
        created_at=now,
        context={"ivr_path": ["billing", "refund"], "order": "A-17"},
        pin="123456",
    )


def test_a_chat_goes_through_its_whole_lifecycle_with_a_timeline() -> None:
    s = new_session().add_channel(Media.CHAT, 100.0, external_ref="chat-7")
    cid = s.channels[0].id
    s = s.apply(cid, In.OFFER, 101.0, agent="alice")
    s = s.apply(cid, In.ACCEPT, 105.0)
    assert s.agent == "alice"
    s = s.apply(cid, In.HOLD, 110.0).apply(cid, In.RESUME, 115.0)
    s = s.apply(cid, In.END, 160.0)
    assert s.channel(cid).state is S.WRAP_UP and not s.closed
    s = s.apply(cid, In.WRAP_UP_DONE, 190.0)
    ch = s.channel(cid)
    assert [(e.at, e.state) for e in ch.timeline] == [
        (100.0, S.QUEUED),
        (101.0, S.OFFERED),
        (105.0, S.ACTIVE),
        (110.0, S.HELD),
        (115.0, S.ACTIVE),
        (160.0, S.WRAP_UP),
        (190.0, S.ENDED),
    ]
    assert ch.offer_attempts == 1 and ch.external_ref == "chat-7"
    # Every channel ended and wrap-up done: closed, with the reason recorded.
    assert s.closed_at == 190.0 and s.close_reason is CloseReason.COMPLETED


def test_reject_and_timeout_go_back_to_the_queue_and_count_attempts() -> None:
    s = new_session().add_channel(Media.VOICE, 0.0)
    cid = s.channels[0].id
    s = s.apply(cid, In.OFFER, 1.0, agent="alice").apply(cid, In.REJECT, 2.0)
    assert s.channel(cid).state is S.QUEUED and s.channel(cid).agent is None
    assert s.channel(cid).timeline[-1].agent == "alice"  # who rejected is kept
    s = s.apply(cid, In.OFFER, 3.0, agent="bob").apply(cid, In.OFFER_TIMEOUT, 23.0)
    assert s.channel(cid).offer_attempts == 2 and s.channel(cid).timeline[-1].agent == "bob"


def test_missing_table_entry_is_a_409_naming_the_channel() -> None:
    s = new_session().add_channel(Media.CHAT, 0.0)
    with pytest.raises(SessionError) as info:
        s.apply(s.channels[0].id, In.HOLD, 1.0)
    assert info.value.status == 409 and info.value.field == "channels[0].state"


def test_offer_without_agent_and_accept_by_another_agent_are_refused() -> None:
    s = new_session().add_channel(Media.CHAT, 0.0)
    cid = s.channels[0].id
    with pytest.raises(SessionError) as info:
        s.apply(cid, In.OFFER, 1.0)
    assert info.value.status == 422
    s = s.apply(cid, In.OFFER, 1.0, agent="alice")
    with pytest.raises(SessionError):
        s.apply(cid, In.ACCEPT, 2.0, agent="bob")


def test_unknown_channel_is_404() -> None:
    with pytest.raises(SessionError) as info:
        new_session().apply("nope", In.OFFER, 1.0, agent="a")
    assert info.value.status == 404


def test_elevation_keeps_the_chat_and_the_owner() -> None:
    s = new_session().add_channel(Media.CHAT, 0.0)
    chat = s.channels[0].id
    s = s.apply(chat, In.OFFER, 1.0, agent="alice").apply(chat, In.ACCEPT, 2.0)
    s = s.add_channel(Media.VOICE, 50.0, external_ref="call-1")
    voice = s.channels[1].id
    s = s.apply(voice, In.OFFER, 50.0, agent="alice").apply(voice, In.ACCEPT, 55.0)
    s = s.apply(voice, In.END, 120.0).apply(voice, In.WRAP_UP_DONE, 130.0)
    assert s.channel(chat).state is S.ACTIVE and not s.closed and s.agent == "alice"


def test_a_fallback_agent_on_voice_does_not_steal_the_session() -> None:
    s = new_session().add_channel(Media.CHAT, 0.0)
    chat = s.channels[0].id
    s = s.apply(chat, In.OFFER, 1.0, agent="alice").apply(chat, In.ACCEPT, 2.0)
    s = s.add_channel(Media.VOICE, 10.0)
    voice = s.channels[1].id
    s = s.apply(voice, In.OFFER, 11.0, agent="bob").apply(voice, In.ACCEPT, 12.0)
    assert s.agent == "alice"
    # After a transfer away from alice (her chat requeued), the next accepter owns it.
    s = s.apply(chat, In.REQUEUE, 20.0, queue="general")
    s = s.apply(chat, In.OFFER, 21.0, agent="carol").apply(chat, In.ACCEPT, 22.0)
    assert s.agent == "carol" and s.channel(chat).queue == "general"


def test_close_refuses_live_channels_unless_forced() -> None:
    s = new_session().add_channel(Media.CHAT, 0.0).add_channel(Media.EMAIL, 0.0)
    chat, email = (c.id for c in s.channels)
    s = s.apply(chat, In.OFFER, 1.0, agent="alice").apply(chat, In.ACCEPT, 2.0)
    with pytest.raises(SessionError) as info:
        s.close(5.0)
    assert info.value.field == "channels[0].state"
    forced = s.close(5.0, force=True)
    assert forced.close_reason is CloseReason.FORCED
    assert all(c.state is S.ENDED for c in forced.channels)
    with pytest.raises(SessionError):
        forced.add_channel(Media.VOICE, 6.0)
    # Wrap-up does not block a close: closing ends the after-contact work.
    s = s.apply(chat, In.END, 10.0).apply(email, In.END, 10.0)
    closed = s.close(20.0) if not s.closed else s
    assert closed.close_reason is CloseReason.AGENT
    assert closed.channel(chat).timeline[-1].at == 20.0


def test_context_merges_and_is_immutable() -> None:
    s = new_session().with_context({"order": None, "lang": "en"})
    assert dict(s.context) == {"ivr_path": ["billing", "refund"], "lang": "en"}
    with pytest.raises(TypeError):
        s.context["x"] = 1  # type: ignore[index]


def test_json_round_trip() -> None:
    s = new_session().add_channel(Media.CHAT, 0.0, external_ref="x")
    s = s.apply(s.channels[0].id, In.OFFER, 1.0, agent="alice").with_self_service_step("menu")
    data = json.loads(json.dumps(s.to_json_dict()))
    assert Session.from_json_dict(data) == s


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"id": ""}, "id"),
        ({"created_at": "yesterday"}, "created_at"),
        ({"customer": {"phone": 5}}, "customer.phone"),
        ({"customer": {"fax": "1"}}, "customer.fax"),
        ({"channels": [{"id": "c", "media": "fax"}]}, "channels[0].media"),
        ({"close_reason": "bored"}, "close_reason"),
    ],
)
def test_bad_json_names_the_field(patch: dict[str, object], field: str) -> None:
    data = new_session().to_json_dict() | patch
    with pytest.raises(SessionError) as info:
        Session.from_json_dict(data)
    assert info.value.field == field and info.value.status == 422


@given(
    st.lists(
        st.tuples(st.sampled_from(list(ChannelInput)), st.sampled_from(["alice", "bob", None])),
        max_size=30,
    )
)
def test_any_input_sequence_follows_the_table_or_raises_session_error(
    steps: list[tuple[ChannelInput, str | None]],
) -> None:
    s = new_session().add_channel(Media.VOICE, 0.0)
    cid = s.channels[0].id
    for t, (event, agent) in enumerate(steps, start=1):
        before = s.channel(cid).state if not s.closed else None
        try:
            s = s.apply(cid, event, float(t), agent=agent)
        except SessionError as exc:
            assert exc.status in (404, 409, 422)
            continue
        assert before is not None
        assert s.channel(cid).state is TRANSITIONS[(before, event)]
        assert s.channel(cid).timeline[-1].at == float(t)
        ch = s.channel(cid)
        if ch.state is S.QUEUED:
            assert ch.agent is None
        if ch.occupies_capacity:
            assert ch.agent is not None


def test_agent_load_is_counted_from_channels() -> None:
    s = new_session().add_channel(Media.CHAT, 0.0).add_channel(Media.VOICE, 0.0)
    chat, voice = (c.id for c in s.channels)
    s = s.apply(chat, In.OFFER, 1.0, agent="alice").apply(chat, In.ACCEPT, 2.0)
    s = s.apply(voice, In.OFFER, 3.0, agent="alice")
    assert AgentState.load_from_channels(s.channels, "alice") == {Media.CHAT: 1, Media.VOICE: 1}
    assert AgentState.offered_from_channels(s.channels, "alice") == {Media.VOICE: 1}
    state = AgentState("alice", capacity={Media.CHAT: 3}, load={Media.CHAT: 1})
    assert state.free(Media.CHAT) == 2 and state.free(Media.EMAIL) == 0


def test_pin_avoids_taken_and_is_deterministic_with_a_seed() -> None:
    first = generate_pin(random.Random(7), set())
    assert len(first) == 6 and first.isdigit()
    second = generate_pin(random.Random(7), {first})
    assert second != first
    with pytest.raises(SessionError):
        generate_pin(random.Random(1), _Everything(), digits=4)


class _Everything:
    def __contains__(self, item: object) -> bool:
        return True
