"""Media anchoring: a browser (WebRTC) agent and a SIP trunk (plain RTP) on one call.

The "browser" here is :class:`tests.support.webrtc_phone.WebRtcPhone` (SIP over WebSocket
like JsSIP, aiortc for ICE/DTLS-SRTP/Opus); the trunk is a real pjsua2 phone from the rig.
Each plays its own tone and detects the other's, so every assertion means audio crossed
the anchor, both ways. Every test runs against both media backends, for real: an
rtpengine daemon on free ports, and ucgate's embedded media workers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from sip_test_rig.media import DEFAULT_TONES
from sip_test_rig.ports import free_port
from sip_test_rig.softphone_client import Softphone
from tests.support.media_backends import MediaUnderTest
from tests.support.phones import registered_phone
from tests.support.rest import accepted_chat, api
from tests.support.ucgate_process import Account, UcgateProcess
from tests.support.webrtc_phone import WebRtcPhone
from ucgate.sip.sdp import parse_sdp

pytestmark = pytest.mark.interop

DOMAIN = "example.test"
ALICE = Account("alice", "alice-Pa55word")
BOB = Account("bob", "bob-Pa55word")
PBX = Account("pbx1", "pbx1-Pa55word")
TONE_TRUNK, TONE_BROWSER, TONE_BOB = DEFAULT_TONES[0], DEFAULT_TONES[2], DEFAULT_TONES[3]


@pytest.fixture
def node(tmp_path: Path, media: MediaUnderTest) -> Iterator[UcgateProcess]:
    tail = """
[[dids]]
number = "+15550100"
target = "agent:alice"
[[dids]]
number = "+15550102"
target = "agent:bob"
[[dial_rules]]
prefix = "+1"
trunk = "pbx1"
[[queues]]
id = "support"
media = ["voice", "chat"]
[calls]
ring_timeout = 15
""" + media.toml()
    n = UcgateProcess(
        tmp_path / "n", agents=[ALICE, BOB], trunks=[PBX], tail=tail, ws_port=free_port()
    ).start()
    try:
        yield n
    finally:
        n.stop()


@pytest.fixture
def trunk(node: UcgateProcess) -> Iterator[Softphone]:
    with registered_phone(node, PBX, tone=TONE_TRUNK, auto_answer=200, answer_delay_ms=100) as p:
        yield p


async def browser(node: UcgateProcess) -> WebRtcPhone:
    phone = WebRtcPhone(
        f"ws://127.0.0.1:{node.ws_port}/",
        ALICE.id,
        ALICE.password,
        domain=DOMAIN,
        tone=TONE_BROWSER,
        listen=[TONE_TRUNK, TONE_BROWSER, TONE_BOB],
    )
    await phone.connect()
    resp = await phone.register()
    assert resp.status == 200, resp
    return phone


async def wait_until(predicate: object, timeout: float = 10.0) -> None:
    assert callable(predicate)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)  # polling an external process's state, bounded


def test_trunk_calls_browser_agent_two_way_audio_hold_resume(
    node: UcgateProcess, trunk: Softphone, media: MediaUnderTest
) -> None:
    async def scenario() -> None:
        alice = await browser(node)
        try:
            call_t = trunk.make_call(f"sip:+15550100@{DOMAIN}")
            invite = await alice.next_request("INVITE")
            # The trunk offered RTP/AVP; the browser gets WebRTC from the anchor.
            offer = parse_sdp(invite.body)
            assert offer.media[0].proto == "UDP/TLS/RTP/SAVPF", invite.body
            assert b"a=fingerprint" in invite.body and b"a=ice-ufrag" in invite.body
            await alice.answer(invite)
            confirmed = await asyncio.to_thread(trunk.wait_call_state, call_t, "confirmed")
            assert confirmed["code"] == 200
            await alice.wait_tone(TONE_TRUNK)
            await asyncio.to_thread(trunk.wait_tone, call_t, TONE_BROWSER, 10)
            assert len(media.active_calls(node)) == 1

            # DTMF from the trunk as INFO is relayed to the browser (RFC 6086 INFO).
            trunk.dial_dtmf(call_t, "5", method="info")
            info = await alice.next_request("INFO")
            assert b"Signal=5" in info.body or b"Signal= 5" in info.body, info.body
            if media.name == "embedded":
                # RFC 4733 from the trunk reaches a browser that has no telephone-event
                # (aiortc) as INFO generated from the worker's DTMF event.
                trunk.dial_dtmf(call_t, "7")
                info = await alice.next_request("INFO")
                assert b"Signal=7" in info.body, info.body

            # Hold from the trunk (RFC 3264 §8.4): the browser gets the re-offer through
            # the anchor, still sendonly from the holder's side, and answers it.
            trunk.hold(call_t)
            await asyncio.to_thread(
                trunk.wait_call_event, "media_state", call_t, status="local_hold"
            )
            reoffer = parse_sdp(alice.last_reoffer)
            assert reoffer.direction() in ("sendonly", "inactive"), alice.last_reoffer
            assert reoffer.media[0].proto == "UDP/TLS/RTP/SAVPF"
            _, doc = node.http_get("/v1/presence/alice", key=node.api_key)
            assert doc["voice"] == "held", doc
            trunk.resume(call_t)
            await asyncio.to_thread(trunk.wait_call_event, "media_state", call_t, status="active")
            alice.reset_audio()
            trunk.reset_audio(call_t)
            await alice.wait_tone(TONE_TRUNK)
            await asyncio.to_thread(trunk.wait_tone, call_t, TONE_BROWSER, 10)

            trunk.hangup(call_t)
            await alice.next_request("BYE")
            assert not alice.errors, alice.errors
            await wait_until(lambda: not media.active_calls(node))
        finally:
            await alice.close()

    asyncio.run(scenario())


def test_browser_agent_calls_out_through_trunk(
    node: UcgateProcess, trunk: Softphone, media: MediaUnderTest
) -> None:
    async def scenario() -> None:
        alice = await browser(node)
        try:
            resp = await alice.call(f"sip:+15557654321@{DOMAIN}")
            assert resp.status == 200, resp
            answer = parse_sdp(resp.body)
            assert answer.media[0].proto == "UDP/TLS/RTP/SAVPF", resp.body
            incoming = await asyncio.to_thread(trunk.wait_incoming)
            call_t = int(incoming["call"])
            await alice.wait_tone(TONE_TRUNK)
            await asyncio.to_thread(trunk.wait_tone, call_t, TONE_BROWSER, 10)
            bye = await alice.hangup()
            assert bye.status == 200
            assert await asyncio.to_thread(trunk.wait_call_state, call_t, "disconnected")
            await wait_until(lambda: not media.active_calls(node))
        finally:
            await alice.close()

    asyncio.run(scenario())


def test_browser_tab_closed_mid_call_ends_it_at_once(
    node: UcgateProcess, trunk: Softphone, media: MediaUnderTest
) -> None:
    async def scenario() -> None:
        alice = await browser(node)
        call_t = trunk.make_call(f"sip:+15550100@{DOMAIN}")
        try:
            invite = await alice.next_request("INVITE")
            await alice.answer(invite)
            await alice.wait_tone(TONE_TRUNK)
        finally:
            await alice.close()  # the tab is gone: no BYE, the WebSocket just closes
        # The trunk gets its BYE from ucgate now, not after a session timer (minutes).
        gone = await asyncio.to_thread(trunk.wait_call_state, call_t, "disconnected", 5)
        assert gone["state"] == "disconnected"
        await wait_until(lambda: not media.active_calls(node))
        _, doc = node.http_get("/v1/presence/alice", key=node.api_key)
        assert doc["voice"] == "offline", doc

    asyncio.run(scenario())


def test_browser_agent_elevates_chat_to_a_call_with_the_customer(
    node: UcgateProcess, trunk: Softphone, media: MediaUnderTest
) -> None:
    """RFC 3725 third-party call control through the anchor: the browser agent is rung
    with the anchor's WebRTC side, the customer (behind the trunk) is offered the anchor's
    RTP side, and both hear each other."""

    async def scenario() -> None:
        alice = await browser(node)
        try:
            session, offer = await accepted_chat(node, {"id": "c-9", "phone": "+15557654321"})
            assert offer["agent"] == "alice", offer
            sid = session["id"]
            status, body = await api(
                node,
                "POST",
                f"/v1/sessions/{sid}/channels",
                {"media": "voice", "to": "+15557654321"},
            )
            assert status in (200, 201), body
            invite = await alice.next_request("INVITE")  # the agent's browser rings first
            assert parse_sdp(invite.body).media[0].proto == "UDP/TLS/RTP/SAVPF"
            await alice.answer(invite)
            incoming = await asyncio.to_thread(trunk.wait_incoming, 15)
            call_t = int(incoming["call"])
            assert incoming["headers"].get("X-UCGate-Session") == sid
            await alice.wait_tone(TONE_TRUNK)
            await asyncio.to_thread(trunk.wait_tone, call_t, TONE_BROWSER, 10)
            assert not alice.errors, alice.errors
            trunk.hangup(call_t)
            await alice.next_request("BYE")
            await wait_until(lambda: not media.active_calls(node))
        finally:
            await alice.close()

    asyncio.run(scenario())


@pytest.fixture
def bob(node: UcgateProcess) -> Iterator[Softphone]:
    with registered_phone(node, BOB, tone=TONE_BOB, auto_answer=200, answer_delay_ms=100) as p:
        yield p


def test_browser_agent_transfers_a_trunk_call_to_a_desk_phone(
    node: UcgateProcess, trunk: Softphone, bob: Softphone, media: MediaUnderTest
) -> None:
    """Anchored before, pass-through after: the trunk and bob's desk phone both speak RTP."""

    async def scenario() -> None:
        alice = await browser(node)
        try:
            call_t = trunk.make_call(f"sip:+15550100@{DOMAIN}")
            await alice.answer(await alice.next_request("INVITE"))
            await alice.wait_tone(TONE_TRUNK)
            resp = await alice.refer(f"sip:bob@{DOMAIN}")
            assert resp.status == 202, resp
            call_b = int((await asyncio.to_thread(bob.wait_incoming))["call"])
            await alice.next_request("BYE")  # the transferor leaves
            trunk.reset_audio(call_t)
            await asyncio.to_thread(trunk.wait_tone, call_t, TONE_BOB, 10)
            await asyncio.to_thread(bob.wait_tone, call_b, TONE_TRUNK, 10)
            await wait_until(lambda: not media.active_calls(node))  # no anchor needed now
            trunk.hangup(call_t)
            await asyncio.to_thread(bob.wait_call_state, call_b, "disconnected")
        finally:
            await alice.close()

    asyncio.run(scenario())


def test_desk_phone_transfers_a_trunk_call_to_a_browser_agent(
    node: UcgateProcess, trunk: Softphone, bob: Softphone, media: MediaUnderTest
) -> None:
    """Pass-through before, anchored after: the transfer target's fork gets its own
    anchored session and the trunk is re-INVITEd toward the anchor."""

    async def scenario() -> None:
        alice = await browser(node)
        try:
            call_t = trunk.make_call(f"sip:+15550102@{DOMAIN}")
            call_b = int((await asyncio.to_thread(bob.wait_incoming))["call"])
            await asyncio.to_thread(trunk.wait_tone, call_t, TONE_BOB, 10)
            assert not media.active_calls(node)
            bob.transfer(call_b, f"sip:alice@{DOMAIN}")
            invite = await alice.next_request("INVITE")
            assert parse_sdp(invite.body).media[0].proto == "UDP/TLS/RTP/SAVPF"
            await alice.answer(invite)
            await asyncio.to_thread(bob.wait_call_state, call_b, "disconnected")
            trunk.reset_audio(call_t)
            await alice.wait_tone(TONE_TRUNK)
            await asyncio.to_thread(trunk.wait_tone, call_t, TONE_BROWSER, 10)
            assert len(media.active_calls(node)) == 1
            trunk.hangup(call_t)
            await alice.next_request("BYE")
            await wait_until(lambda: not media.active_calls(node))
        finally:
            await alice.close()

    asyncio.run(scenario())
