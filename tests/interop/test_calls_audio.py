"""Calls through ucgate's B2BUA with real pjsua2 phones sending real audio.

Every phone plays its own tone and detects the tone it receives (Goertzel), so each
assertion means audio really crossed the gateway's routing, both ways.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sip_test_rig.media import DEFAULT_TONES
from sip_test_rig.softphone_client import Softphone
from tests.support.ucgate_process import Account, UcgateProcess

pytestmark = pytest.mark.interop

DOMAIN = "example.test"
ALICE = Account("alice", "alice-Pa55word")
BOB = Account("bob", "bob-Pa55word")
PBX = Account("pbx1", "pbx1-Pa55word")
TONE_TRUNK, TONE_ALICE, TONE_BOB = DEFAULT_TONES[0], DEFAULT_TONES[2], DEFAULT_TONES[3]
QUIET_FRAMES = 25
TAIL = """
[[dids]]
number = "+15550100"
target = "agent:alice"
[[dial_rules]]
prefix = "+1"
trunk = "pbx1"
[calls]
ring_timeout = 10
"""


@pytest.fixture
def node(tmp_path: Path) -> Iterator[UcgateProcess]:
    n = UcgateProcess(tmp_path / "n", agents=[ALICE, BOB], trunks=[PBX], tail=TAIL).start()
    try:
        yield n
    finally:
        n.stop()


@pytest.fixture
def phones() -> Iterator[tuple[Softphone, Softphone, Softphone]]:
    started: list[Softphone] = []
    try:
        for tone in (TONE_TRUNK, TONE_ALICE, TONE_BOB):
            started.append(Softphone(tone=tone).start())
        yield started[0], started[1], started[2]
    finally:
        for phone in started:
            phone.stop()


def register(phone: Softphone, node: UcgateProcess, acc: Account, **extra: object) -> None:
    account = phone.register(
        server=f"127.0.0.1:{node.sip_port}",
        user=acc.id,
        password=acc.password,
        domain=DOMAIN,
        proxy=True,
        **extra,
    )
    assert phone.wait_reg_state(account=account, timeout=10)["code"] == 200


def two_way(x: Softphone, x_call: int, x_hears: int, y: Softphone, y_call: int, y_hears: int):
    x.wait_tone(x_call, x_hears, timeout=8)
    y.wait_tone(y_call, y_hears, timeout=8)


def test_trunk_to_agent_two_way_audio_hold_resume_dtmf(
    node: UcgateProcess, phones: tuple[Softphone, Softphone, Softphone]
) -> None:
    trunk, alice, _ = phones
    register(trunk, node, PBX)  # the PBX registers as a trunk and authenticates by digest
    register(alice, node, ALICE, auto_answer=200, answer_delay_ms=200)
    call_t = trunk.make_call(f"sip:+15550100@{DOMAIN}", headers={"X-UCGate-Session": "s-42"})
    incoming = alice.wait_incoming()
    call_a = int(incoming["call"])
    assert incoming["headers"].get("X-UCGate-Session") == "s-42"
    assert trunk.wait_call_state(call_t, "confirmed")["code"] == 200
    two_way(trunk, call_t, TONE_ALICE, alice, call_a, TONE_TRUNK)

    # DTMF end to end: RFC 4733 rides the media (SDP passed through), INFO is relayed.
    trunk.dial_dtmf(call_t, "42#")
    got = [alice.wait_call_event("dtmf_received", call_a)["digit"] for _ in range(3)]
    assert got == ["4", "2", "#"]
    trunk.dial_dtmf(call_t, "7", method="info")
    info = alice.wait_call_event("dtmf_received", call_a)
    assert (info["digit"], info["method"]) == ("7", "info")

    # Hold (re-INVITE sendonly relayed by the B2BUA) and resume.
    alice.hold(call_a)
    alice.wait_call_event("media_state", call_a, status="local_hold")
    trunk.wait_call_event("media_state", call_t, status="remote_hold")
    alice.reset_audio(call_a)
    quiet = alice.wait_frames(call_a, QUIET_FRAMES)
    assert TONE_TRUNK not in quiet["detected"], quiet
    status, doc = node.http_get("/v1/presence/alice", key=node.api_key)
    assert doc["voice"] == "held", doc

    alice.resume(call_a)
    alice.wait_call_event("media_state", call_a, status="active")
    trunk.wait_call_event("media_state", call_t, status="active")
    alice.reset_audio(call_a)
    trunk.reset_audio(call_t)
    two_way(trunk, call_t, TONE_ALICE, alice, call_a, TONE_TRUNK)

    alice.hangup(call_a)
    assert trunk.wait_call_state(call_t, "disconnected")["code"] == 200
    node.wait_log(lambda e: e.get("event") == "call.tracked" and e.get("event_type") == "ended", 10)
    status, page = node.http_get("/v1/calls", key=node.api_key)
    assert status == 200, page
    record = page["calls"][0]
    assert record["end_reason"] == "callee_bye"
    assert len(record["holds"]) == 1 and record["hold_seconds"] > 0
    assert record["talk_seconds"] > 0


def test_agent_to_agent_and_busy(
    node: UcgateProcess, phones: tuple[Softphone, Softphone, Softphone]
) -> None:
    _, alice, bob = phones
    register(alice, node, ALICE)
    register(bob, node, BOB)
    call_a = alice.make_call(f"sip:bob@{DOMAIN}")
    call_b = int(bob.wait_incoming()["call"])
    bob.answer(call_b, 200)
    assert alice.wait_call_state(call_a, "confirmed")["code"] == 200
    two_way(alice, call_a, TONE_BOB, bob, call_b, TONE_ALICE)
    alice.hangup(call_a)
    bob.wait_call_state(call_b, "disconnected")

    # Bob is busy: 486 reaches Alice through the B2BUA.
    call_a = alice.make_call(f"sip:bob@{DOMAIN}")
    call_b = int(bob.wait_incoming()["call"])
    bob.answer(call_b, 486)
    assert alice.wait_call_state(call_a, "disconnected")["code"] == 486


def test_agent_dials_out_through_the_trunk(
    node: UcgateProcess, phones: tuple[Softphone, Softphone, Softphone]
) -> None:
    trunk, alice, _ = phones
    register(trunk, node, PBX, auto_answer=200, answer_delay_ms=100)
    register(alice, node, ALICE)
    call_a = alice.make_call(f"sip:+15557654321@{DOMAIN}")
    incoming = trunk.wait_incoming()
    # The PBX sees the dialled number as the user part of the Request-URI.
    assert "+15557654321@" in incoming["request_uri"], incoming
    call_t = int(incoming["call"])
    assert alice.wait_call_state(call_a, "confirmed")["code"] == 200
    two_way(alice, call_a, TONE_TRUNK, trunk, call_t, TONE_ALICE)
    trunk.hangup(call_t)
    assert alice.wait_call_state(call_a, "disconnected")["code"] == 200


def test_blind_transfer_from_agent_to_agent_keeps_the_caller_with_audio(
    node: UcgateProcess, phones: tuple[Softphone, Softphone, Softphone]
) -> None:
    trunk, alice, bob = phones
    register(trunk, node, PBX)
    register(alice, node, ALICE, auto_answer=200, answer_delay_ms=100)
    register(bob, node, BOB, auto_answer=200, answer_delay_ms=100)
    call_t = trunk.make_call(f"sip:+15550100@{DOMAIN}")
    call_a = int(alice.wait_incoming()["call"])
    assert trunk.wait_call_state(call_t, "confirmed")["code"] == 200
    two_way(trunk, call_t, TONE_ALICE, alice, call_a, TONE_TRUNK)
    alice.wait_call_state(call_a, "confirmed")

    alice.transfer(call_a, f"sip:bob@{DOMAIN}")  # REFER, carried out by the B2BUA
    incoming = bob.wait_incoming()
    call_b = int(incoming["call"])
    bob.wait_call_state(call_b, "confirmed")
    alice.wait_call_state(call_a, "disconnected")  # the transferor leaves
    trunk.reset_audio(call_t)
    two_way(trunk, call_t, TONE_BOB, bob, call_b, TONE_TRUNK)

    trunk.hangup(call_t)
    bob.wait_call_state(call_b, "disconnected")
    node.wait_log(lambda e: e.get("event") == "call.tracked" and e.get("event_type") == "ended", 10)
    status, page = node.http_get("/v1/calls", key=node.api_key)
    assert status == 200, page
    record = page["calls"][0]
    assert record["transfers"] == 1, record
    assert set(record["agents"]) == {"alice", "bob"}, record
    reasons = {leg["agent"]: leg["end_reason"] for leg in record["legs"] if leg["agent"]}
    assert reasons["alice"] == "transferred", record


def test_attended_transfer_joins_the_caller_and_the_consulted_agent(
    node: UcgateProcess, phones: tuple[Softphone, Softphone, Softphone]
) -> None:
    trunk, alice, bob = phones
    register(trunk, node, PBX)
    register(alice, node, ALICE, auto_answer=200, answer_delay_ms=100)
    register(bob, node, BOB, auto_answer=200, answer_delay_ms=100)
    call_t = trunk.make_call(f"sip:+15550100@{DOMAIN}")
    call_1 = int(alice.wait_incoming()["call"])
    assert trunk.wait_call_state(call_t, "confirmed")["code"] == 200
    alice.wait_call_state(call_1, "confirmed")  # the ACK reached her phone
    alice.hold(call_1)  # the customer waits while alice consults bob
    trunk.wait_call_event("media_state", call_t, status="remote_hold")
    call_2 = alice.make_call(f"sip:bob@{DOMAIN}")
    call_b = int(bob.wait_incoming()["call"])
    assert alice.wait_call_state(call_2, "confirmed")["code"] == 200
    two_way(alice, call_2, TONE_BOB, bob, call_b, TONE_ALICE)

    alice.transfer_attended(call_1, call_2)  # REFER with Replaces
    alice.wait_call_state(call_1, "disconnected", timeout=10)
    alice.wait_call_state(call_2, "disconnected", timeout=10)
    trunk.reset_audio(call_t)
    bob.reset_audio(call_b)
    # The customer and bob talk, both ways, on their existing dialogs.
    two_way(trunk, call_t, TONE_BOB, bob, call_b, TONE_TRUNK)
    bob.hangup(call_b)
    assert trunk.wait_call_state(call_t, "disconnected")["code"] == 200
    # Two calls end: the consultation (at the transfer) and the customer's (now).
    ended: list[object] = []

    def second_end(e: dict[str, object]) -> bool:
        if e.get("event") == "call.tracked" and e.get("event_type") == "ended":
            ended.append(e)
        return len(ended) == 2

    node.wait_log(second_end, 10)
    status, page = node.http_get("/v1/calls", key=node.api_key)
    assert status == 200, page
    customer_call = next(r for r in page["calls"] if r["direction"] == "inbound")
    assert customer_call["transfers"] == 1, customer_call
    kinds = [e.get("mode") for e in customer_call["events"] if e["type"] == "transferred"]
    assert kinds == ["attended"], customer_call
