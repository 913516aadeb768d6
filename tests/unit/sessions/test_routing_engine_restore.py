"""RoutingEngine.restore/reset: a new router takes over channels as the store shows them."""

from __future__ import annotations

import pytest

from ucgate.sessions.model import AgentState, Media
from ucgate.sessions.routing import (
    OfferMade,
    OfferTimedOut,
    QueueSpec,
    RoutingEngine,
    RoutingError,
    RoutingEvent,
)

C = Media.CHAT
SUPPORT = QueueSpec("support", frozenset({C}), offer_timeout=20.0)


def agent(name: str, idle_since: float = 0.0) -> AgentState:
    return AgentState(name, capacity={C: 1}, idle_since=idle_since)


def drain(engine: RoutingEngine) -> list[RoutingEvent]:
    out = []
    while (e := engine.next_event()) is not None:
        out.append(e)
    return out


def test_open_offer_is_kept_not_made_again_and_times_out_at_its_deadline() -> None:
    engine = RoutingEngine([SUPPORT])
    engine.agent_changed(agent("alice"), 100.0)
    engine.agent_changed(agent("bob", idle_since=50.0), 100.0)
    # Offered to alice at 95 by the previous router: deadline 115.
    engine.restore(
        "s1", "c1", "support", C, 100.0, entered_queue_at=90.0, offer=("alice", 115.0, False)
    )
    engine.dispatch(100.0)
    assert drain(engine) == []
    assert engine.offer_of("s1", "c1") == "alice"
    assert engine.next_deadline() == 115.0
    engine.handle_timer(115.0)
    # Timed out: never back to alice in this queue; bob is next.
    assert drain(engine) == [
        OfferTimedOut("s1", "c1", "support", "alice", 115.0),
        OfferMade("s1", "c1", "support", "bob", C, 135.0),
    ]


def test_restored_offer_holds_capacity_and_exclusions_hold() -> None:
    engine = RoutingEngine([SUPPORT])
    engine.agent_changed(agent("alice"), 100.0)
    engine.restore(
        "s1", "c1", "support", C, 100.0, entered_queue_at=90.0, offer=("alice", 115.0, False)
    )
    # s2 was rejected by bob before the takeover; bob is not logged in yet.
    engine.restore("s2", "c2", "support", C, 100.0, entered_queue_at=91.0, excluded={"bob"})
    engine.dispatch(100.0)
    assert drain(engine) == []  # alice is full with the restored offer
    engine.agent_changed(agent("bob"), 101.0)
    assert drain(engine) == []  # bob rejected s2
    engine.agent_changed(agent("carol"), 102.0)
    assert drain(engine) == [OfferMade("s2", "c2", "support", "carol", C, 122.0)]
    with pytest.raises(RoutingError):
        engine.restore("s2", "c2", "support", C, 103.0, entered_queue_at=91.0)


def test_reset_forgets_everything() -> None:
    engine = RoutingEngine([SUPPORT])
    engine.agent_changed(agent("alice"), 100.0)
    engine.enqueue("s1", "c1", "support", C, 100.0)
    engine.enqueue("s2", "c2", "support", C, 100.0)
    engine.reset()
    assert engine.waiting() == [] and engine.next_deadline() is None
    assert engine.next_event() is None and not engine.is_waiting("s1", "c1")
    engine.enqueue("s3", "c3", "support", C, 101.0)
    assert [type(e).__name__ for e in drain(engine)] == ["NoAgentAvailable"]  # no agents left
