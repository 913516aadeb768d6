"""Omnichannel: a chat routed to Alice by capacity is elevated to voice with the same
agent; the call reaches the customer through the PBX trunk with real audio both ways,
and the chat stays open the whole time."""

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
PBX = Account("pbx1", "pbx1-Pa55word")
TONE_CUSTOMER, TONE_ALICE = DEFAULT_TONES[0], DEFAULT_TONES[2]
TAIL = """
[[dial_rules]]
prefix = "+1"
trunk = "pbx1"
[[queues]]
id = "support"
media = ["voice", "chat"]
[calls]
ring_timeout = 15
"""


@pytest.fixture
def node(tmp_path: Path) -> Iterator[UcgateProcess]:
    n = UcgateProcess(tmp_path / "n", agents=[ALICE], trunks=[PBX], tail=TAIL).start()
    try:
        yield n
    finally:
        n.stop()


@pytest.fixture
def phones() -> Iterator[tuple[Softphone, Softphone]]:
    started: list[Softphone] = []
    try:
        for tone in (TONE_CUSTOMER, TONE_ALICE):
            started.append(Softphone(tone=tone).start())
        yield started[0], started[1]
    finally:
        for phone in started:
            phone.stop()


def test_chat_elevated_to_voice_with_the_same_agent(
    node: UcgateProcess, phones: tuple[Softphone, Softphone]
) -> None:
    customer_phone, alice = phones
    for phone, acc, extra in (
        (customer_phone, PBX, {"auto_answer": 200, "answer_delay_ms": 300}),
        (alice, ALICE, {"auto_answer": 200, "answer_delay_ms": 100}),
    ):
        account = phone.register(
            server=f"127.0.0.1:{node.sip_port}",
            user=acc.id,
            password=acc.password,
            domain=DOMAIN,
            proxy=True,
            **extra,
        )
        assert phone.wait_reg_state(account=account, timeout=10)["code"] == 200

    async def scenario() -> tuple[dict, dict]:
        session, offer = await accepted_chat(
            node,
            {"id": "c-1", "phone": "+15557654321"},
            context={"order": "A-1001", "ivr_path": ["billing"]},
        )
        assert offer["agent"] == "alice"
        # The offer carries the self-service context: no repeating for the customer.
        assert offer["session"]["context"]["order"] == "A-1001"
        status, body = await api(
            node,
            "POST",
            f"/v1/sessions/{session['id']}/channels",
            {"media": "voice", "to": "+15557654321"},
        )
        assert status in (200, 201), body
        return session, body

    session, _ = asyncio.run(scenario())
    call_alice = int(alice.wait_incoming()["call"])  # the agent's phone rings first
    incoming = customer_phone.wait_incoming(timeout=15)  # then the customer, via the trunk
    assert "+15557654321@" in incoming["request_uri"], incoming
    assert incoming["headers"].get("X-UCGate-Session") == session["id"]
    call_customer = int(incoming["call"])
    customer_phone.wait_call_state(call_customer, "confirmed")
    alice.wait_tone(call_alice, TONE_CUSTOMER, timeout=10)
    customer_phone.wait_tone(call_customer, TONE_ALICE, timeout=10)

    node.wait_log(lambda e: e.get("event") == "session.elevated", 10)
    status, now = asyncio.run(api(node, "GET", f"/v1/sessions/{session['id']}"))
    assert status == 200, now
    states = {ch["media"]: ch["state"] for ch in now["channels"]}
    assert states == {"chat": "active", "voice": "active"}, now
    status, doc = asyncio.run(api(node, "GET", "/v1/presence/alice"))
    assert status == 200 and doc["voice"] == "on_call", doc
    loads = {c["channel"]: c["used"] for c in doc["channels"]}
    assert loads.get("chat") == 1, doc  # the agent's presence shows both

    alice.hangup(call_alice)
    customer_phone.wait_call_state(call_customer, "disconnected")
    node.wait_log(lambda e: e.get("event") == "call.tracked" and e.get("event_type") == "ended", 10)
    status, later = asyncio.run(api(node, "GET", f"/v1/sessions/{session['id']}"))
    assert status == 200, later
    states = {ch["media"]: ch["state"] for ch in later["channels"]}
    assert states["chat"] == "active", later  # ending the call leaves the chat untouched
    assert states["voice"] in ("wrap_up", "ended"), later


BOB = Account("bob", "bob-Pa55word")
QUEUE_TAIL = """
[[dids]]
number = "+15550200"
target = "queue:support"
[[queues]]
id = "support"
media = ["voice", "chat"]
"""


def test_queued_call_with_the_session_header_rings_the_agent_of_the_chat(
    tmp_path: Path, phones: tuple[Softphone, Softphone]
) -> None:
    customer_phone, alice = phones
    bob = Softphone(tone=DEFAULT_TONES[3]).start()
    node = UcgateProcess(tmp_path / "q", agents=[ALICE, BOB], trunks=[PBX], tail=QUEUE_TAIL)
    node.start()
    try:
        for phone, acc, extra in (
            (customer_phone, PBX, {}),
            (alice, ALICE, {"auto_answer": 200, "answer_delay_ms": 100}),
            (bob, BOB, {"auto_answer": 200, "answer_delay_ms": 100}),
        ):
            account = phone.register(
                server=f"127.0.0.1:{node.sip_port}",
                user=acc.id,
                password=acc.password,
                domain=DOMAIN,
                proxy=True,
                **extra,
            )
            assert phone.wait_reg_state(account=account, timeout=10)["code"] == 200

        async def chat() -> tuple[str, str]:
            session, offer = await accepted_chat(node, {"id": "c-2", "phone": "+15551230000"})
            return session["id"], offer["agent"]

        sid, chat_agent = asyncio.run(chat())
        agent_phone, tone = (
            (alice, TONE_ALICE) if chat_agent == "alice" else (bob, DEFAULT_TONES[3])
        )
        # The customer presses "call" in the widget: the call carries the session id.
        call_c = customer_phone.make_call(
            f"sip:+15550200@{DOMAIN}", headers={"X-UCGate-Session": sid}
        )
        call_agent = int(agent_phone.wait_incoming(timeout=15)["call"])
        customer_phone.wait_call_state(call_c, "confirmed")
        customer_phone.wait_tone(call_c, tone, timeout=10)
        agent_phone.wait_tone(call_agent, TONE_CUSTOMER, timeout=10)
        status, now = asyncio.run(api(node, "GET", f"/v1/sessions/{sid}"))
        assert status == 200, now
        by_media = {ch["media"]: ch for ch in now["channels"]}
        assert by_media["voice"]["agent"] == chat_agent, now  # sticky: the same agent
        assert by_media["chat"]["state"] == "active", now
        customer_phone.hangup(call_c)
        agent_phone.wait_call_state(call_agent, "disconnected")
    finally:
        bob.stop()
        node.stop()
