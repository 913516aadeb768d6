"""Sticky voice by PIN: a customer calls back, types the PIN shown in their chat (DTMF in
the RTP stream, RFC 4733, or as SIP INFO), and reaches the agent already handling their
session, with real audio."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from sip_test_rig.media import DEFAULT_TONES
from sip_test_rig.softphone_client import Softphone
from tests.support.rest import accepted_chat, api
from tests.support.ucgate_process import Account, UcgateProcess

pytestmark = pytest.mark.interop

DOMAIN = "example.test"
ALICE = Account("alice", "alice-Pa55word")
BOB = Account("bob", "bob-Pa55word")
PBX = Account("pbx1", "pbx1-Pa55word")
TONE_CUSTOMER, TONE_ALICE, TONE_BOB = DEFAULT_TONES[0], DEFAULT_TONES[2], DEFAULT_TONES[3]
TAIL = """
[[dids]]
number = "+15550199"
target = "pin:support"
[[queues]]
id = "support"
media = ["voice", "chat"]
[calls]
pin_timeout = 20
"""


@pytest.fixture
def node(tmp_path: Path) -> Iterator[UcgateProcess]:
    n = UcgateProcess(tmp_path / "n", agents=[ALICE, BOB], trunks=[PBX], tail=TAIL).start()
    try:
        yield n
    finally:
        n.stop()


@pytest.fixture
def phones(node: UcgateProcess) -> Iterator[tuple[Softphone, Softphone, Softphone]]:
    started: list[Softphone] = []
    try:
        for tone, acc, extra in (
            (TONE_CUSTOMER, PBX, {}),
            (TONE_ALICE, ALICE, {"auto_answer": 200, "answer_delay_ms": 100}),
            (TONE_BOB, BOB, {"auto_answer": 200, "answer_delay_ms": 100}),
        ):
            phone = Softphone(tone=tone).start()
            started.append(phone)
            account = phone.register(
                server=f"127.0.0.1:{node.sip_port}",
                user=acc.id,
                password=acc.password,
                domain=DOMAIN,
                proxy=True,
                **extra,
            )
            assert phone.wait_reg_state(account=account, timeout=10)["code"] == 200
        yield started[0], started[1], started[2]
    finally:
        for phone in started:
            phone.stop()


async def chat_with(node: UcgateProcess, agent: str) -> dict:
    """A chat session routed to and accepted by ``agent``; returns the session."""
    session, offer = await accepted_chat(node, {"id": "c-7", "phone": "+15557654321"})
    assert offer["agent"] == agent, offer
    return session


def test_caller_with_the_session_pin_reaches_the_agent_of_the_chat(
    node: UcgateProcess, phones: tuple[Softphone, Softphone, Softphone]
) -> None:
    customer, alice, bob = phones
    session = asyncio.run(chat_with(node, "alice"))
    pin = session["pin"]
    assert pin and len(pin) == 6 and pin.isdigit(), session

    # From another number (no caller-ID match): only the PIN can tie it to the session.
    call_c = customer.make_call(f"sip:+15550199@{DOMAIN}")
    assert customer.wait_call_state(call_c, "confirmed")["code"] == 200  # ucgate answers
    node.wait_log(lambda e: e.get("event") == "call.pin_requested", 10)
    customer.dial_dtmf(call_c, pin)  # RFC 4733 events to ucgate's DTMF port
    call_a = int(alice.wait_incoming(timeout=10)["call"])  # the chat's agent, not bob
    alice.wait_call_state(call_a, "confirmed")
    alice.wait_tone(call_a, TONE_CUSTOMER, timeout=10)
    customer.wait_tone(call_c, TONE_ALICE, timeout=10)
    assert not [e for e in bob.history if e.get("event") == "incoming_call"], bob.history

    status, now = asyncio.run(api(node, "GET", f"/v1/sessions/{session['id']}"))
    assert status == 200, now
    states = {ch["media"]: ch["state"] for ch in now["channels"]}
    assert states == {"chat": "active", "voice": "active"}, now
    customer.hangup(call_c)
    alice.wait_call_state(call_a, "disconnected")


def test_wrong_pins_are_bounded(
    node: UcgateProcess, phones: tuple[Softphone, Softphone, Softphone]
) -> None:
    customer, _, _ = phones
    session = asyncio.run(chat_with(node, "alice"))
    wrong = "000000" if session["pin"] != "000000" else "111111"
    call_c = customer.make_call(f"sip:+15550199@{DOMAIN}")
    assert customer.wait_call_state(call_c, "confirmed")["code"] == 200
    node.wait_log(lambda e: e.get("event") == "call.pin_requested", 10)
    for attempt in range(3):
        customer.dial_dtmf(call_c, wrong, method="info")
        node.wait_log(
            lambda e, n=attempt + 1: e.get("event") == "call.pin_wrong" and e.get("tries") == n, 10
        )
    # Three wrong entries: ucgate hangs up (a 6-digit PIN must not be guessable).
    assert customer.wait_call_state(call_c, "disconnected", timeout=10)
    node.wait_log(lambda e: e.get("event") == "call.pin_failed", 10)
