"""Call routing decisions (the decision tables of ucgate.calls.routing) and their config."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ucgate.calls.routing import (
    Caller,
    CallerKind,
    Route,
    RouteKind,
    agent_target,
    classify_caller,
    no_answer_status,
    normalize_number,
    route_call,
    route_inbound,
    route_outbound,
)
from ucgate.config import ConfigError, UcgateConfig, validate_config


def config(**extra: Any) -> UcgateConfig:
    data: dict[str, Any] = {
        "sip": {"domain": "example.test"},
        "agents": [
            {"id": "alice", "password": "a-secret"},
            {"id": "bob", "password": "b-secret"},
        ],
        "trunks": [
            {"id": "pbx1", "password": "p-secret", "allowed_ips": ["192.0.2.10", "10.0.0.0/8"]},
            {"id": "pbx2", "password": "q-secret", "allowed_ips": ["10.1.0.0/16"]},
            {"id": "pbx3", "password": "r-secret"},
        ],
        "dids": [
            {"number": "+15550100", "target": "agent:alice"},
            {"number": "+15550101", "target": "queue:sales"},
            {"number": "2000", "target": "agent:bob"},
        ],
        "dial_rules": [
            {"prefix": "+1", "trunk": "pbx1"},
            {"prefix": "+1555", "trunk": "pbx2"},
            {"prefix": "+44", "trunk": "pbx3"},
        ],
    }
    data.update(extra)
    return validate_config(data)


CFG = config()
AGENTS = frozenset(a.id for a in CFG.agents)


def route(caller: Caller, dialled: str) -> Route:
    return route_call(caller, dialled, dids=CFG.dids, dial_rules=CFG.dial_rules, agents=AGENTS)


# --- config --------------------------------------------------------------------------


def test_defaults_and_normalised_networks() -> None:
    assert (CFG.calls.ring_timeout, CFG.calls.wrap_up) == (30, 30)
    assert (CFG.calls.session_expires, CFG.calls.min_se) == (1800, 90)
    assert CFG.trunks[0].allowed_ips == ("192.0.2.10/32", "10.0.0.0/8")
    assert CFG.dids[1].target_kind.value == "queue" and CFG.dids[1].target_id == "sales"


@pytest.mark.parametrize(
    ("change", "where", "why"),
    [
        ({"dids": [{"number": "555-0100", "target": "agent:alice"}]}, "dids[0].number", "digits"),
        ({"dids": [{"number": "+1", "target": "agent:zed"}]}, "dids[0].target", "no agent 'zed'"),
        ({"dids": [{"number": "+1", "target": "alice"}]}, "dids[0].target", "agent:<id>"),
        (
            {
                "dids": [
                    {"number": "+1", "target": "agent:alice"},
                    {"number": "+1", "target": "agent:bob"},
                ]
            },
            "dids[1].number",
            "same number as dids[0]",
        ),
        ({"dial_rules": [{"prefix": "+1", "trunk": "nope"}]}, "dial_rules[0].trunk", "no trunk"),
        ({"dial_rules": [{"prefix": "", "trunk": "pbx1"}]}, "dial_rules[0].prefix", "at least 1"),
        ({"dial_rules": [{"prefix": "00*", "trunk": "pbx1"}]}, "dial_rules[0].prefix", "digits"),
        (
            {"dial_rules": [{"prefix": "+4", "trunk": "pbx1"}, {"prefix": "+4", "trunk": "pbx3"}]},
            "dial_rules[1].prefix",
            "same prefix as dial_rules[0]",
        ),
        (
            {"trunks": [{"id": "t", "password": "x", "allowed_ips": ["10.0.0.1/8"]}]},
            "trunks[0].allowed_ips[0]",
            "CIDR",
        ),
        (
            {"trunks": [{"id": "t", "password": "x", "allowed_ips": ["1.2.3.4", "1.2.3.4/32"]}]},
            "trunks[0].allowed_ips[1]",
            "duplicates allowed_ips[0]",
        ),
        ({"calls": {"session_expires": 100, "min_se": 120}}, "calls.session_expires", ">= min_se"),
        ({"calls": {"min_se": 60}}, "calls.min_se", "greater than or equal to 90"),
        ({"calls": {"ring_timeout": 0}}, "calls.ring_timeout", "greater than or equal to 1"),
    ],
)
def test_invalid_call_config_names_the_key(change: dict[str, Any], where: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        config(**change)
    assert any(p.startswith(f"{where}:") and why in p for p in info.value.problems), (
        info.value.problems
    )


# --- pieces --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("+15550100", "+15550100"),
        ("+1-555-0100", "+15550100"),
        ("(555).0100", "5550100"),
        ("%2B15550100", "+15550100"),
        ("alice", None),
        ("+", None),
        ("1+2", None),
        ("", None),
    ],
)
def test_normalize_number(text: str, expected: str | None) -> None:
    assert normalize_number(text) == expected


def test_agent_target_is_exact_and_percent_decoded() -> None:
    assert agent_target("alice", AGENTS) == "alice"
    assert agent_target("%61lice", AGENTS) == "alice"
    assert agent_target("Alice", AGENTS) is None  # RFC 3261 §19.1.4: user is case-sensitive
    assert agent_target("carol", AGENTS) is None


@pytest.mark.parametrize(
    ("dialled", "kind", "ident", "status"),
    [
        ("+15550100", RouteKind.AGENT, "alice", None),
        ("15550100", RouteKind.AGENT, "alice", None),  # PBX stripped the "+"
        ("+1-555-0100", RouteKind.AGENT, "alice", None),
        ("+15550101", RouteKind.QUEUE, "sales", None),
        ("2000", RouteKind.AGENT, "bob", None),
        ("+2000", RouteKind.REFUSED, None, 404),  # a "+" is never removed, only added
        ("+15550199", RouteKind.REFUSED, None, 404),
        ("alice", RouteKind.REFUSED, None, 404),
    ],
)
def test_route_inbound(
    dialled: str, kind: RouteKind, ident: str | None, status: int | None
) -> None:
    result = route_inbound(dialled, dids=CFG.dids, agents=AGENTS)
    assert (result.kind, result.id, result.status) == (kind, ident, status)


def test_route_inbound_refuses_a_did_whose_agent_is_gone() -> None:
    result = route_inbound("+15550100", dids=CFG.dids, agents={"bob"})
    assert (result.kind, result.status) == (RouteKind.REFUSED, 404)


@pytest.mark.parametrize(
    ("number", "trunk"),
    [
        ("+12125550000", "pbx1"),
        ("+15551234", "pbx2"),  # longest prefix wins over "+1"
        ("+1-555-1234", "pbx2"),
        ("+442071234567", "pbx3"),
        ("12125550000", None),  # "+1" is not "1"
        ("+33123456789", None),
        ("bob", None),
    ],
)
def test_route_outbound_longest_prefix(number: str, trunk: str | None) -> None:
    assert route_outbound(number, dial_rules=CFG.dial_rules) == trunk


@given(st.from_regex(r"\+[0-9]{1,14}", fullmatch=True))
def test_route_outbound_picks_the_longest_matching_prefix(number: str) -> None:
    matching = [r for r in CFG.dial_rules if number.startswith(r.prefix)]
    expected = max(matching, key=lambda r: len(r.prefix)).trunk if matching else None
    assert route_outbound(number, dial_rules=CFG.dial_rules) == expected


@pytest.mark.parametrize(
    ("ip", "user", "claimed", "expected"),
    [
        ("203.0.113.5", "alice", None, Caller(CallerKind.AGENT, "alice")),
        ("192.0.2.10", "alice", "alice", Caller(CallerKind.AGENT, "alice")),  # digest wins
        ("203.0.113.5", "pbx3", None, Caller(CallerKind.TRUNK, "pbx3")),
        ("192.0.2.10", "pbx3", None, Caller(CallerKind.TRUNK, "pbx3")),  # digest wins over IP
        ("192.0.2.10", None, None, Caller(CallerKind.TRUNK, "pbx1", by_ip=True)),
        ("192.0.2.10", None, "+15557777", Caller(CallerKind.TRUNK, "pbx1", by_ip=True)),
        ("10.1.2.3", None, None, Caller(CallerKind.TRUNK, "pbx2", by_ip=True)),  # /16 beats /8
        ("10.9.9.9", None, None, Caller(CallerKind.TRUNK, "pbx1", by_ip=True)),
        ("::ffff:192.0.2.10", None, None, Caller(CallerKind.TRUNK, "pbx1", by_ip=True)),
        ("[::ffff:192.0.2.10]", None, None, Caller(CallerKind.TRUNK, "pbx1", by_ip=True)),
        # An agent's phone on the PBX's host is challenged, not taken for the PBX.
        ("192.0.2.10", None, "alice", Caller(CallerKind.UNKNOWN)),
        ("203.0.113.5", None, None, Caller(CallerKind.UNKNOWN)),
        ("2001:db8::1", None, None, Caller(CallerKind.UNKNOWN)),
        ("not-an-ip", None, None, Caller(CallerKind.UNKNOWN)),
        ("203.0.113.5", "wallboard", None, Caller(CallerKind.UNKNOWN, "wallboard")),
    ],
)
def test_classify_caller(ip: str, user: str | None, claimed: str | None, expected: Caller) -> None:
    assert classify_caller(ip, user, CFG.trunks, AGENTS, claimed_user=claimed) == expected


# --- the whole decision, fraud attempts included ----------------------------------------

ALICE = Caller(CallerKind.AGENT, "alice")
PBX = Caller(CallerKind.TRUNK, "pbx1", by_ip=True)
STRANGER = Caller(CallerKind.UNKNOWN)
WALLBOARD = Caller(CallerKind.UNKNOWN, "wallboard")


@pytest.mark.parametrize(
    ("caller", "dialled", "kind", "ident", "status"),
    [
        # Trunks reach DIDs only.
        (PBX, "+15550100", RouteKind.AGENT, "alice", None),
        (PBX, "+15550101", RouteKind.QUEUE, "sales", None),
        (PBX, "alice", RouteKind.REFUSED, None, 404),  # AOR bypassing the DID plan
        (PBX, "+12125550000", RouteKind.REFUSED, None, 404),  # hairpin back out: toll fraud
        (PBX, "+442071234567", RouteKind.REFUSED, None, 404),
        # Strangers are challenged, whatever they dial; accounts that may not call are refused.
        (STRANGER, "+12125550000", RouteKind.CHALLENGE, None, 401),
        (STRANGER, "+15550100", RouteKind.CHALLENGE, None, 401),
        (STRANGER, "bob", RouteKind.CHALLENGE, None, 401),
        (WALLBOARD, "+12125550000", RouteKind.REFUSED, None, 403),
        (WALLBOARD, "bob", RouteKind.REFUSED, None, 403),
        # Agents.
        (ALICE, "bob", RouteKind.AGENT, "bob", None),
        (ALICE, "alice", RouteKind.REFUSED, None, 403),
        (ALICE, "+15550100", RouteKind.REFUSED, None, 403),  # own DID: calling oneself
        (ALICE, "2000", RouteKind.AGENT, "bob", None),  # a DID stays inside
        (ALICE, "+15550101", RouteKind.QUEUE, "sales", None),
        (ALICE, "+12125550000", RouteKind.TRUNK, "pbx1", None),
        (ALICE, "+15551234", RouteKind.TRUNK, "pbx2", None),
        (ALICE, "+33123456789", RouteKind.REFUSED, None, 404),  # no dial rule
        (ALICE, "0033123456789", RouteKind.REFUSED, None, 404),
        (ALICE, "carol", RouteKind.REFUSED, None, 404),  # no such agent
    ],
)
def test_route_call(
    caller: Caller, dialled: str, kind: RouteKind, ident: str | None, status: int | None
) -> None:
    result = route(caller, dialled)
    assert (result.kind, result.id, result.status) == (kind, ident, status)
    assert result.reason


@given(dialled=st.text(max_size=20))
def test_nothing_but_an_authenticated_agent_ever_reaches_a_trunk(dialled: str) -> None:
    for caller in (PBX, STRANGER, WALLBOARD, Caller(CallerKind.TRUNK, "pbx3")):
        assert route(caller, dialled).kind is not RouteKind.TRUNK


def test_no_answer_status() -> None:
    assert no_answer_status(any_device_rang=True) == 480
    assert no_answer_status(any_device_rang=False) == 408


def test_pin_did_routes_to_its_queue_and_needs_the_queue_to_exist() -> None:
    queues = [{"id": "support", "media": ["voice", "chat"]}]
    dids = [{"number": "+15550300", "target": "pin:support"}]
    cfg = config(queues=queues, dids=dids)
    result = route_inbound("+15550300", dids=cfg.dids, agents=AGENTS)
    assert (result.kind, result.id) == (RouteKind.PIN, "support")
    with pytest.raises(ConfigError) as caught:
        config(dids=[{"number": "+15550300", "target": "pin:nowhere"}])
    assert "dids[0].target" in str(caught.value) and "no queue" in str(caught.value)
