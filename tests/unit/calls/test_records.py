"""Call records: scripted calls with hand-computed durations, refused orders, JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ucgate.calls.records import (
    CallAnswered,
    CallEnded,
    CallEvent,
    CallOffered,
    CallRecord,
    CallRecordError,
    CallState,
    CallTransferred,
    Direction,
    EndReason,
    HoldEnded,
    HoldStarted,
    LegAdded,
    LegEnded,
    LegRole,
    RingingStarted,
    TransferMode,
    WrapUpEnded,
    event_from_dict,
    event_to_dict,
)
from ucgate.sip.errors import LocalProtocolError

T0 = 1_700_000_000.0


def offered(at: float = T0) -> CallOffered:
    return CallOffered(
        at=at,
        direction=Direction.INBOUND,
        caller="sip:+15557777@pbx",
        callee="+15550100",
        leg_id="a",
        party="sip:+15557777@pbx",
        contact="sip:pbx@192.0.2.10:5060",
        sip_call_id="cid-a",
    )


def fork(at: float = T0 + 0.1) -> list[CallEvent]:
    """Two devices of alice ring; desk answers first, the softphone is cancelled."""
    return [
        LegAdded(at, "b1", "sip:alice@example.test", "sip:alice@10.0.0.5", "cid-b1", "alice"),
        LegAdded(at, "b2", "sip:alice@example.test", "sip:alice@10.0.0.6", "cid-b2", "alice"),
    ]


def build(events: Sequence[CallEvent]) -> CallRecord:
    return CallRecord.replay("call-1", [offered(), *events])


def test_answered_call_with_two_holds() -> None:
    # offered 0, rings 0.5, answered 5.5, hold 15.5-25.5 and 40-42.5, BYE at 65.5.
    record = build(
        [
            *fork(),
            RingingStarted(T0 + 0.5, "b1"),
            RingingStarted(T0 + 0.75, "b2"),
            CallAnswered(T0 + 5.5, "b1"),
            LegEnded(T0 + 5.5, "b2", EndReason.ANSWERED_ELSEWHERE),
            HoldStarted(T0 + 15.5, "b1"),
            HoldEnded(T0 + 25.5),
            HoldStarted(T0 + 40.0, "a"),
            HoldEnded(T0 + 42.5),
            CallEnded(T0 + 65.5, EndReason.CALLER_BYE),
            WrapUpEnded(T0 + 95.5),
        ]
    )
    assert record.state is CallState.ENDED
    assert record.ring_seconds == 5.0  # 0.5 -> 5.5
    assert record.hold_seconds == 12.5  # 10 + 2.5
    assert record.talk_seconds == 47.5  # 60 answered - 12.5 held
    assert record.wrap_up_seconds == 30.0
    assert record.handle_seconds == 90.0
    assert record.agents == ("alice",)
    legs = {leg.id: leg for leg in record.legs}
    assert legs["a"].role is LegRole.A and legs["b1"].role is LegRole.B
    assert legs["b2"].end_reason is EndReason.ANSWERED_ELSEWHERE
    assert legs["b2"].ended_at == T0 + 5.5
    assert legs["b1"].end_reason is EndReason.CALLER_BYE  # closed by the call's end
    assert legs["b1"].ringing_at == T0 + 0.5 and legs["b1"].answered_at == T0 + 5.5
    assert record.end_reason is EndReason.CALLER_BYE


def test_cancelled_call_has_no_talk_and_rang_until_the_end() -> None:
    record = build(
        [
            *fork(),
            RingingStarted(T0 + 1.0, "b1"),
            CallEnded(T0 + 13.0, EndReason.CANCELLED),
        ]
    )
    assert record.talk_seconds == 0.0
    assert record.hold_seconds == 0.0
    assert record.ring_seconds == 12.0
    assert record.state is CallState.ENDED
    assert all(leg.end_reason is EndReason.CANCELLED for leg in record.legs)


def test_blind_transfer_keeps_counting_talk_and_adds_the_new_agent() -> None:
    # answered 10; hold 20-30 then blind transfer at 30 (closes nothing: hold ended);
    # bob rings 31, answers 35; held again 50 and transferred at 56 (closes that hold);
    # callee BYE at 100.
    record = build(
        [
            *fork(),
            CallAnswered(T0 + 10.0, "b1"),
            LegEnded(T0 + 10.0, "b2", EndReason.ANSWERED_ELSEWHERE),
            HoldStarted(T0 + 20.0, "b1"),
            HoldEnded(T0 + 30.0),
            CallTransferred(T0 + 30.0, TransferMode.BLIND, "sip:bob@example.test", "b1"),
            LegEnded(T0 + 30.0, "b1", EndReason.TRANSFERRED),
            LegAdded(T0 + 30.5, "b3", "sip:bob@example.test", "sip:bob@10.0.0.7", "c3", "bob"),
            RingingStarted(T0 + 31.0, "b3"),
            CallAnswered(T0 + 35.0, "b3"),
            HoldStarted(T0 + 50.0, "b3"),
            CallTransferred(T0 + 56.0, TransferMode.ATTENDED, "sip:carol@example.test", "b3"),
            CallEnded(T0 + 100.0, EndReason.CALLEE_BYE),
        ]
    )
    assert record.hold_seconds == 16.0  # 10 + 6
    assert record.talk_seconds == 74.0  # 90 - 16
    assert record.transfers == 2
    assert record.agents == ("alice", "bob")
    assert record.answered_at == T0 + 10.0  # the first answer is the call's
    assert record.ring_seconds == 0.0  # no device of the original fork rang


def test_state_and_running_durations() -> None:
    record = build([*fork(), RingingStarted(T0 + 1.0, "b1")])
    assert record.state is CallState.RINGING
    assert record.ring_seconds_at(T0 + 4.0) == 3.0
    record = record.apply(CallAnswered(T0 + 4.0, "b1"))
    assert record.state is CallState.ACTIVE
    record = record.apply(HoldStarted(T0 + 10.0))
    assert record.state is CallState.HELD and record.held
    assert record.hold_seconds_at(T0 + 13.0) == 3.0
    assert record.talk_seconds_at(T0 + 13.0) == 6.0
    # Without `now`, a running call is measured up to its last event.
    assert record.hold_seconds == 0.0 and record.talk_seconds == 6.0
    record = record.apply(HoldEnded(T0 + 14.0))
    assert record.state is CallState.ACTIVE


def test_an_open_hold_is_closed_by_the_end() -> None:
    record = build(
        [
            *fork(),
            CallAnswered(T0 + 1.0, "b1"),
            HoldStarted(T0 + 2.0),
            CallEnded(T0 + 7.0, EndReason.SESSION_EXPIRED),
        ]
    )
    assert record.holds == ((T0 + 2.0, T0 + 7.0),)
    assert (record.hold_seconds, record.talk_seconds) == (5.0, 1.0)


ANSWERED = [*fork(), CallAnswered(T0 + 1.0, "b1")]
ENDED = [*ANSWERED, CallEnded(T0 + 2.0, EndReason.CALLER_BYE)]


@pytest.mark.parametrize(
    ("history", "event", "why"),
    [
        (fork(), HoldStarted(T0 + 1.0), "hold before the call was answered"),
        (ANSWERED, HoldEnded(T0 + 2.0), "hold_end without a hold"),
        ([*ANSWERED, HoldStarted(T0 + 1.5)], HoldStarted(T0 + 2.0), "already on hold"),
        (fork(), CallTransferred(T0 + 1, TransferMode.BLIND, "x"), "transfer before"),
        (ENDED, HoldStarted(T0 + 3.0), "after the call ended"),
        (ENDED, CallEnded(T0 + 3.0, EndReason.CALLEE_BYE), "after the call ended"),
        (ANSWERED, RingingStarted(T0 + 0.5, "b2"), "before the last event"),
        (fork(), CallAnswered(T0 + 1.0, "zz"), "no leg 'zz'"),
        (fork(), CallAnswered(T0 + 1.0, "a"), "caller's leg"),
        (ANSWERED, CallAnswered(T0 + 1.0, "b1"), "answered twice"),
        (ANSWERED, RingingStarted(T0 + 1.0, "b1"), "rings after it answered"),
        (fork(), LegAdded(T0 + 1.0, "b1", "sip:x@y"), "already exists"),
        (
            [*fork(), LegEnded(T0 + 1.0, "b2", EndReason.BUSY)],
            CallAnswered(T0 + 1.0, "b2"),
            "has ended",
        ),
        (fork(), CallEnded(T0 + 1.0, EndReason.CALLER_BYE), "never answered"),
        (ANSWERED, CallEnded(T0 + 2.0, EndReason.CANCELLED), "for an answered call"),
        (ANSWERED, CallEnded(T0 + 2.0, EndReason.TRANSFERRED), "ends a leg"),
        (ANSWERED, WrapUpEnded(T0 + 2.0), "before the call ended"),
        ([*ENDED, WrapUpEnded(T0 + 3.0)], WrapUpEnded(T0 + 4.0), "twice"),
        (fork(), offered(T0 + 1.0), "only starts a record"),
    ],
)
def test_impossible_orders_are_refused(
    history: list[CallEvent], event: CallEvent, why: str
) -> None:
    record = build(history)
    with pytest.raises(CallRecordError, match=why) as info:
        record.apply(event)
    assert isinstance(info.value, LocalProtocolError)


def test_replay_must_start_with_offered() -> None:
    with pytest.raises(CallRecordError):
        CallRecord.replay("x", [CallAnswered(T0, "b1")])
    with pytest.raises(CallRecordError):
        CallRecord.start("", offered())


def test_failed_and_timeout_end_either_kind_of_call() -> None:
    assert build([CallEnded(T0 + 1, EndReason.TIMEOUT)]).talk_seconds == 0.0
    assert build([*ANSWERED, CallEnded(T0 + 4, EndReason.FAILED)]).talk_seconds == 3.0


# --- JSON ------------------------------------------------------------------------------


def test_record_json_round_trip_and_derived_fields() -> None:
    record = build(
        [
            *ENDED[:-1],
            HoldStarted(T0 + 1.25),
            HoldEnded(T0 + 1.5),
            CallTransferred(T0 + 1.5, TransferMode.ATTENDED, "sip:bob@example.test", "b1"),
            CallEnded(T0 + 3.0, EndReason.CALLEE_BYE),
            WrapUpEnded(T0 + 4.0),
        ]
    )
    data = json.loads(json.dumps(record.to_json_dict()))
    assert CallRecord.from_json_dict(data) == record
    assert data["talk_seconds"] == 1.75 and data["hold_seconds"] == 0.25
    assert data["handle_seconds"] == 3.0
    assert data["events"][1] == {
        "type": "leg_added",
        "at": T0 + 0.1,
        "leg_id": "b1",
        "party": "sip:alice@example.test",
        "contact": "sip:alice@10.0.0.5",
        "sip_call_id": "cid-b1",
        "agent": "alice",
    }
    assert data["legs"][0]["role"] == "a"


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "nope", "at": 1.0},
        {"type": "hold_end"},
        {"type": "hold_end", "at": "soon"},
        {"type": "hold_end", "at": True},
        {"type": "ended", "at": 1.0, "reason": "bored"},
        {"type": "ringing", "at": 1.0, "leg_id": 7},
        {"type": "hold_end", "at": 1.0, "extra": 1},
    ],
)
def test_malformed_events_are_value_errors(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        event_from_dict(bad)


def test_inconsistent_stored_record_is_a_value_error() -> None:
    data = build(ANSWERED).to_json_dict()
    data["events"].append({"type": "hold_end", "at": T0 + 5})
    with pytest.raises(ValueError, match="inconsistent"):
        CallRecord.from_json_dict(data)
    with pytest.raises(ValueError):
        CallRecord.from_json_dict({"id": "x", "events": ["not an object"]})


_times = st.floats(min_value=0.0, max_value=1e4, allow_nan=False, allow_infinity=False)


@given(st.lists(st.tuples(st.sampled_from(["hold", "resume", "transfer"]), _times), max_size=12))
def test_durations_add_up_for_any_valid_script(steps: list[tuple[str, float]]) -> None:
    answered = T0 + 1.0
    record = build([*fork(), CallAnswered(answered, "b1")])
    at = answered
    for action, delta in steps:
        at += delta
        choices: dict[str, CallEvent] = {
            "hold": HoldStarted(at),
            "resume": HoldEnded(at),
            "transfer": CallTransferred(at, TransferMode.BLIND, "sip:bob@example.test"),
        }
        event = choices[action]
        try:
            record = record.apply(event)
        except CallRecordError:
            continue
    end = at + 1.0
    record = record.apply(CallEnded(end, EndReason.CALLER_BYE))
    assert record.hold_seconds >= 0 and record.talk_seconds >= 0
    assert record.talk_seconds + record.hold_seconds == pytest.approx(end - answered)
    assert event_from_dict(event_to_dict(record.events[-1])) == record.events[-1]
    assert CallRecord.from_json_dict(record.to_json_dict()) == record
