"""The routing engine with time stepped by hand: strategy, matrix, timeouts, overflow, sticky."""

from __future__ import annotations

from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ucgate.sessions.model import AgentState, Media
from ucgate.sessions.routing import (
    DEFAULT_INTERRUPT,
    ChannelOverflowed,
    InterruptMatrix,
    NoAgentAvailable,
    OfferMade,
    OfferTimedOut,
    PreferredAgentUnavailable,
    QueueSpec,
    RoutingEngine,
    RoutingError,
    RoutingEvent,
    eligible,
)

V, C, E = Media.VOICE, Media.CHAT, Media.EMAIL
CAP = {V: 1, C: 3, E: 5}

SUPPORT = QueueSpec(
    "support",
    frozenset({V, C}),
    skills=("billing",),
    offer_timeout=20.0,
    overflow="general",
    overflow_after=120.0,
)
GENERAL = QueueSpec("general", frozenset({V, C, E}), offer_timeout=10.0)
VIP = QueueSpec("vip", frozenset({V, C}), priority=10)


def agent(
    name: str,
    *,
    load: dict[Media, int] | None = None,
    skills: dict[str, int] | None = None,
    idle_since: float = 0.0,
    routable: bool = True,
    devices: bool = True,
) -> AgentState:
    return AgentState(
        name,
        capacity=CAP,
        skills=skills if skills is not None else {"billing": 5},
        load=load or {},
        idle_since=idle_since,
        routable=routable,
        devices=devices,
    )


def drain(engine: RoutingEngine) -> list[RoutingEvent]:
    out = []
    while (event := engine.next_event()) is not None:
        out.append(event)
    return out


def offers(events: list[RoutingEvent]) -> list[tuple[str, str]]:
    return [(e.channel_id, e.agent) for e in events if isinstance(e, OfferMade)]


def engine_with(*agents: AgentState, matrix: InterruptMatrix = DEFAULT_INTERRUPT) -> RoutingEngine:
    engine = RoutingEngine([SUPPORT, GENERAL, VIP], matrix)
    for a in agents:
        engine.agent_changed(a, 0.0)
    drain(engine)
    return engine


def test_highest_proficiency_then_longest_idle() -> None:
    engine = engine_with(
        agent("alice", skills={"billing": 5}, idle_since=50.0),
        agent("bob", skills={"billing": 5}, idle_since=10.0),
        agent("carol", skills={"billing": 3}, idle_since=0.0),
        agent("dave", skills={}, idle_since=0.0),
    )
    engine.enqueue("s1", "c1", "support", C, 100.0)
    assert offers(drain(engine)) == [("c1", "bob")]
    engine.enqueue("s2", "c2", "support", C, 100.0)
    # bob has an open offer but free chat capacity: still the best ranked.
    assert offers(drain(engine)) == [("c2", "bob")]


def test_never_beyond_capacity_counting_open_offers() -> None:
    engine = engine_with(agent("alice", load={C: 2}))
    engine.enqueue("s1", "c1", "support", C, 0.0)
    engine.enqueue("s2", "c2", "support", C, 0.0)
    events = drain(engine)
    assert offers(events) == [("c1", "alice")]
    assert isinstance(events[-1], NoAgentAvailable) and events[-1].channel_id == "c2"
    # The service reports the offer in the load (offered=1): no double counting.
    engine.agent_changed(AgentState("alice", CAP, {"billing": 5}, load={C: 3}, offered={C: 1}), 1.0)
    assert drain(engine) == []
    engine.reject("s1", "c1", "alice", 2.0)
    engine.agent_changed(agent("alice", load={C: 2}), 2.0)
    # c1 will not go back to alice, c2 (waiting) does.
    assert offers(drain(engine)) == [("c2", "alice")]


def test_interrupt_matrix_voice_over_full_chats_but_not_chat_over_voice() -> None:
    engine = engine_with(agent("alice", load={C: 3}))
    engine.enqueue("s1", "v1", "support", V, 0.0)
    assert offers(drain(engine)) == [("v1", "alice")]
    engine.accept("s1", "v1", "alice", 1.0)
    engine.agent_changed(agent("alice", load={C: 2, V: 1}), 1.0)
    engine.enqueue("s2", "c2", "support", C, 2.0)
    assert offers(drain(engine)) == []
    # Voice ends (wrap-up done): the waiting chat is offered.
    engine.agent_changed(agent("alice", load={C: 2}), 30.0)
    assert offers(drain(engine)) == [("c2", "alice")]


def test_matrix_without_voice_over_chat_refuses_the_call() -> None:
    strict = InterruptMatrix(MappingProxyType({V: frozenset(), C: frozenset()}))
    engine = engine_with(agent("alice", load={C: 3}), matrix=strict)
    engine.enqueue("s1", "v1", "support", V, 0.0)
    assert offers(drain(engine)) == []


def test_voice_needs_a_device_and_routable_status() -> None:
    engine = engine_with(
        agent("alice", devices=False), agent("bob", routable=False, idle_since=-5.0)
    )
    engine.enqueue("s1", "v1", "support", V, 0.0)
    assert offers(drain(engine)) == []
    engine.enqueue("s2", "c1", "support", C, 0.0)
    assert offers(drain(engine)) == [("c1", "alice")]  # chat needs no device


def test_offer_timeout_goes_to_the_next_agent_then_overflows() -> None:
    engine = engine_with(agent("alice", idle_since=0.0), agent("bob", idle_since=1.0))
    engine.enqueue("s1", "v1", "support", V, 100.0)
    assert offers(drain(engine)) == [("v1", "alice")]
    assert engine.next_deadline() == 120.0
    engine.handle_timer(119.9)
    assert drain(engine) == []
    engine.handle_timer(120.0)
    events = drain(engine)
    assert isinstance(events[0], OfferTimedOut) and events[0].agent == "alice"
    assert offers(events) == [("v1", "bob")]
    engine.handle_timer(140.0)
    assert offers(drain(engine)) == []  # nobody else in support
    # Overflow after 120 s in support, at 220: general (timeout 10 s) offers alice again.
    assert engine.next_deadline() == 220.0
    engine.handle_timer(220.0)
    events = drain(engine)
    assert events[0] == ChannelOverflowed("s1", "v1", "support", "general", 220.0)
    assert events[1] == OfferMade("s1", "v1", "general", "alice", V, 230.0)


def test_overflow_waits_for_an_open_offer_to_finish() -> None:
    engine = engine_with(agent("alice"), agent("bob", idle_since=1.0))
    engine.enqueue("s1", "c1", "support", C, 0.0)
    drain(engine)
    engine.handle_timer(20.0)  # alice timed out -> bob offered until 40
    drain(engine)
    engine.agent_changed(agent("bob"), 30.0)
    # bob's offer is still open at the overflow deadline (120): nothing moves.
    engine.agent_changed(agent("alice", routable=False), 30.0)
    drain(engine)
    engine.reject("s1", "c1", "bob", 130.0)  # past overflow_after: overflows at once
    events = drain(engine)
    assert events[0] == ChannelOverflowed("s1", "c1", "support", "general", 130.0)
    assert offers(events) == [("c1", "bob")]  # a fresh queue forgets earlier refusals


def test_priority_then_fifo() -> None:
    engine = engine_with()
    engine.enqueue("s1", "a", "support", C, 0.0)
    engine.enqueue("s2", "b", "support", C, 1.0, priority=5)
    engine.enqueue("s3", "c", "support", C, 2.0)
    engine.enqueue("s4", "d", "vip", C, 3.0)
    assert engine.waiting() == [("s4", "d"), ("s2", "b"), ("s1", "a"), ("s3", "c")]
    drain(engine)
    engine.agent_changed(agent("alice", load={C: 2}), 5.0)
    assert offers(drain(engine)) == [("d", "alice")]


def test_sticky_agent_first_then_queue_fallback() -> None:
    engine = engine_with(
        agent("alice", skills={}, load={C: 3}, idle_since=99.0), agent("bob", idle_since=0.0)
    )
    # alice lacks the queue's skills but handles the session: she is offered first.
    engine.enqueue("s1", "v1", "support", V, 0.0, preferred_agent="alice")
    events = drain(engine)
    assert events == [OfferMade("s1", "v1", "support", "alice", V, 20.0, sticky=True)]
    engine.reject("s1", "v1", "alice", 5.0)
    assert offers(drain(engine)) == [("v1", "bob")]


def test_sticky_agent_unable_falls_back_at_once() -> None:
    engine = engine_with(agent("alice", load={V: 1}), agent("bob"))
    engine.enqueue("s1", "v2", "support", V, 0.0, preferred_agent="alice")
    events = drain(engine)
    assert events[0] == PreferredAgentUnavailable("s1", "v2", "alice", "support", 0.0)
    assert offers(events) == [("v2", "bob")]


def test_cancel_withdraws_and_frees_the_offer() -> None:
    engine = engine_with(agent("alice", load={V: 0}))
    engine.enqueue("s1", "v1", "support", V, 0.0)
    engine.enqueue("s2", "v2", "support", V, 0.0)
    assert offers(drain(engine)) == [("v1", "alice")]
    engine.cancel("s1", "v1", 3.0)
    assert offers(drain(engine)) == [("v2", "alice")]
    assert engine.open_offers("alice") == [("s2", "v2")]
    engine.accept("s2", "v2", "alice", 4.0)
    assert engine.waiting() == [] and engine.next_deadline() is None


def test_misuse_is_refused() -> None:
    engine = engine_with(agent("alice"))
    with pytest.raises(RoutingError):
        engine.enqueue("s1", "e1", "support", E, 0.0)  # support takes no email
    with pytest.raises(RoutingError) as info:
        engine.enqueue("s1", "x", "nope", C, 0.0)
    assert info.value.status == 404
    engine.enqueue("s1", "c1", "support", C, 0.0)
    with pytest.raises(RoutingError):
        engine.enqueue("s1", "c1", "support", C, 0.0)
    with pytest.raises(RoutingError):
        engine.accept("s1", "c1", "bob", 1.0)
    with pytest.raises(RoutingError):
        RoutingEngine([QueueSpec("q", frozenset({C}), overflow="missing")])


def test_matrix_from_config() -> None:
    m = InterruptMatrix.from_config({"voice": ["chat"], "chat": []})
    assert m.allows(V, [C]) and not m.allows(V, [E]) and not m.allows(C, [V])
    assert m.allows(C, [C]) and not m.allows(Media.SMS, [C])


# --- invariants over random workloads --------------------------------------------------

_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("enqueue"),
            st.sampled_from([V, C, E]),
            st.sampled_from(["support", "general", "vip"]),
        ),
        st.tuples(st.just("answer"), st.booleans(), st.integers(0, 50)),
        st.tuples(st.just("tick"), st.floats(0, 60), st.just(0)),
        st.tuples(st.just("agent"), st.integers(0, 3), st.integers(0, 3)),
    ),
    max_size=60,
)

_MATRICES = [
    DEFAULT_INTERRUPT,
    InterruptMatrix.from_config({"voice": [], "chat": ["voice"], "email": ["chat"]}),
    InterruptMatrix.from_config({}),
]


@settings(max_examples=150, deadline=None)
@given(_ops, st.sampled_from(_MATRICES))
def test_offers_respect_capacity_skills_and_matrix(
    ops: list[tuple[object, object, object]], matrix: InterruptMatrix
) -> None:
    engine = RoutingEngine([SUPPORT, GENERAL, VIP], matrix)
    queues = {q.id: q for q in (SUPPORT, GENERAL, VIP)}
    cap = {V: 1, C: 2, E: 1}
    skills = [{"billing": 3}, {}, {"billing": 9}, {"english": 2}]
    # The service's view: accepted channels per agent (reported as load) and status.
    accepted: dict[str, dict[Media, int]] = {f"a{i}": {} for i in range(4)}
    status = {name: (True, True) for name in accepted}
    # Open offers as the events announced them: (session, channel) -> (agent, media).
    open_offers: dict[tuple[str, str], tuple[str, Media]] = {}

    def report(name: str, now: float) -> None:
        routable, devices = status[name]
        engine.agent_changed(
            AgentState(
                name,
                cap,
                skills[int(name[1:])],
                dict(accepted[name]),
                float(name[1:]),
                routable,
                devices,
            ),
            now,
        )

    def check(event: RoutingEvent) -> None:
        if isinstance(event, OfferTimedOut):
            del open_offers[(event.session_id, event.channel_id)]
            return
        if not isinstance(event, OfferMade):
            return
        name = event.agent
        routable, devices = status[name]
        assert routable
        assert devices or event.media is not V
        have = skills[int(name[1:])]
        assert all(have.get(s, 0) > 0 for s in queues[event.queue].skills)
        # The agent's load at the moment of the offer: accepted + open offers.
        load = dict(accepted[name])
        for ag, m in open_offers.values():
            if ag == name:
                load[m] = load.get(m, 0) + 1
        assert load.get(event.media, 0) + 1 <= cap[event.media]
        assert matrix.allows(event.media, [m for m, n in load.items() if n > 0])
        open_offers[(event.session_id, event.channel_id)] = (name, event.media)

    now = 0.0
    for name in accepted:
        report(name, now)
    n = 0
    for op, a, b in ops:
        if op == "enqueue":
            assert isinstance(a, Media) and isinstance(b, str)
            if a in queues[b].media:
                n += 1
                engine.enqueue(f"s{n}", f"c{n}", b, a, now)
        elif op == "answer" and open_offers:
            assert isinstance(b, int)
            key = sorted(open_offers)[b % len(open_offers)]
            ag, media = open_offers.pop(key)
            if a:
                engine.accept(*key, ag, now)
                accepted[ag][media] = accepted[ag].get(media, 0) + 1
                report(ag, now)
            else:
                engine.reject(*key, ag, now)
        elif op == "tick":
            assert isinstance(a, float)
            now += a
            engine.handle_timer(now)
        elif op == "agent":
            assert isinstance(a, int) and isinstance(b, int)
            name = f"a{a}"
            status[name] = (b != 1, b != 2)
            report(name, now)
        while (event := engine.next_event()) is not None:
            check(event)
    assert sorted(open_offers) == sorted(o for name in accepted for o in engine.open_offers(name))


def test_eligible_uses_pending_instead_of_reported_offers() -> None:
    a = AgentState("a", {C: 2}, load={C: 2}, offered={C: 2})
    assert eligible(a, C, DEFAULT_INTERRUPT)
    assert not eligible(a, C, DEFAULT_INTERRUPT, pending={C: 2})
