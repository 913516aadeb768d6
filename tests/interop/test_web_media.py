"""A browser agent (real headless Chromium running the /desk/ page and JsSIP) and a SIP
trunk (a pjsua2 phone from the rig) on one call, media anchored by each backend for real:
an rtpengine daemon on free ports, and ucgate's embedded media workers.

Chromium's fake microphone plays 1800 Hz, the trunk 600 Hz; the desk's WebAudio analyser
and the trunk's Goertzel detector must each hear the other, before and after hold/resume,
and a key pressed on the desk's keypad must reach the trunk: as RFC 4733 telephone-event
through rtpengine, as SIP INFO with the embedded backend (aiortc cannot negotiate
telephone-event, so the desk falls back to INFO, which the B2BUA relays).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from sip_test_rig.media import DEFAULT_TONES
from sip_test_rig.ports import free_port
from sip_test_rig.softphone_client import Softphone
from tests.support.browser import Chromium, chromium_available, screenshot, wait_for_tone
from tests.support.media_backends import BACKENDS, MediaUnderTest
from tests.support.ucgate_process import Account, UcgateProcess

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(not chromium_available(), reason="needs /usr/bin/chromium"),
    pytest.mark.timeout(240),
]

DOMAIN = "example.test"
ALICE = Account("alice", "alice-Pa55word")
PBX = Account("pbx1", "pbx1-Pa55word")
TONE_TRUNK, TONE_BROWSER = DEFAULT_TONES[0], DEFAULT_TONES[2]  # 600 Hz, 1800 Hz


@pytest.fixture(params=BACKENDS)
def media(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MediaUnderTest]:
    backend = MediaUnderTest.start(request.param, tmp_path)
    try:
        yield backend
    finally:
        backend.stop()


@pytest.fixture
def node(tmp_path: Path, media: MediaUnderTest) -> Iterator[UcgateProcess]:
    http_port = free_port()
    tail = """
[[dids]]
number = "+15550100"
target = "agent:alice"
[[dial_rules]]
prefix = "+1"
trunk = "pbx1"
[[queues]]
id = "support"
media = ["chat", "voice"]
""" + media.toml()
    n = UcgateProcess(
        tmp_path / "node",
        agents=[ALICE],
        trunks=[PBX],
        http_port=http_port,
        ws_port=free_port(),
        tail=tail,
    ).start()
    try:
        yield n
    finally:
        n.stop()


@pytest.fixture
def trunk(node: UcgateProcess) -> Iterator[Softphone]:
    phone = Softphone(tone=TONE_TRUNK).start()
    try:
        account = phone.register(
            server=f"127.0.0.1:{node.sip_port}",
            user=PBX.id,
            password=PBX.password,
            domain=DOMAIN,
            proxy=True,
            auto_answer=200,
            answer_delay_ms=100,
        )
        assert phone.wait_reg_state(account=account, timeout=10)["code"] == 200
        yield phone
    finally:
        phone.stop()


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Chromium]:
    browser = Chromium(tmp_path / "chromium", tone_hz=float(TONE_BROWSER)).start()
    try:
        yield browser
    finally:
        browser.stop()


def open_desk(browser: Chromium, node: UcgateProcess) -> Page:
    page = browser.new_page(f"http://127.0.0.1:{node.http_port}")
    page.goto("/desk/")
    page.fill("#login-agent", ALICE.id)
    page.fill("#login-password", ALICE.password)
    page.click("#login-form button[type=submit]")
    expect(page.get_by_test_id("reg-state")).to_have_text("Registered", timeout=15000)
    return page


def test_trunk_call_to_a_browser_agent_two_way_audio_hold_dtmf(
    node: UcgateProcess, trunk: Softphone, chromium: Chromium, media: MediaUnderTest
) -> None:
    desk = open_desk(chromium, node)
    call_t = trunk.make_call(f"sip:+15550100@{DOMAIN}")
    expect(desk.locator("#incoming")).to_be_visible(timeout=10000)
    desk.click("#answer")
    expect(desk.get_by_test_id("call-state")).to_have_text("confirmed")
    assert trunk.wait_call_state(call_t, "confirmed")["code"] == 200
    assert len(media.active_calls(node)) == 1  # anchored: WebRTC on one side, RTP on the other

    heard = wait_for_tone(desk, TONE_TRUNK)
    trunk.wait_tone(call_t, TONE_BROWSER, timeout=15)
    print("browser heard", heard)

    # The desk's keypad: RFC 4733 in the browser's RTP, through rtpengine to the trunk.
    desk.click("#keypad button[data-dtmf='5']")
    got = trunk.wait_call_event("dtmf_received", call_t, timeout=10)
    assert got["digit"] == "5", got
    transport = desk.evaluate("() => window.ucgateDesk.state().dtmfTransport")
    assert transport == ("rfc4733" if media.name == "rtpengine" else "info"), transport
    assert (got.get("method") == "info") == (transport == "info"), got

    # Hold from the browser (JsSIP re-INVITE sendonly, rewritten by the anchor).
    desk.click("#hold")
    expect(desk.get_by_test_id("call-state")).to_have_text("confirmed (held)")
    trunk.wait_call_event("media_state", call_t, status="remote_hold", timeout=10)
    trunk.reset_audio(call_t)
    quiet = trunk.wait_frames(call_t, 25)
    assert TONE_BROWSER not in quiet["detected"], quiet
    desk.click("#resume")
    expect(desk.get_by_test_id("call-state")).to_have_text("confirmed")
    trunk.wait_call_event("media_state", call_t, status="active", timeout=10)
    trunk.reset_audio(call_t)
    trunk.wait_tone(call_t, TONE_BROWSER, timeout=15)
    wait_for_tone(desk, TONE_TRUNK)
    screenshot(desk, "desk-trunk-call")

    trunk.hangup(call_t)
    expect(desk.get_by_test_id("call-state")).to_have_text("ended", timeout=10000)
    node.wait_log(lambda e: e.get("event") == "call.tracked" and e.get("event_type") == "ended", 10)


def test_browser_agent_dials_out_through_the_trunk(
    node: UcgateProcess, trunk: Softphone, chromium: Chromium, media: MediaUnderTest
) -> None:
    desk = open_desk(chromium, node)
    desk.fill("#dial-target", "+15557654321")
    desk.click("#dial")
    call_t = int(trunk.wait_incoming(timeout=10)["call"])
    expect(desk.get_by_test_id("call-state")).to_have_text("confirmed", timeout=10000)
    wait_for_tone(desk, TONE_TRUNK)
    trunk.wait_tone(call_t, TONE_BROWSER, timeout=15)
    desk.click("#hangup")
    assert trunk.wait_call_state(call_t, "disconnected")
    expect(desk.get_by_test_id("call-state")).to_have_text("ended", timeout=10000)


def test_desk_call_customer_on_a_chat_rings_the_desk_then_the_customer_with_audio(
    node: UcgateProcess, trunk: Softphone, chromium: Chromium, media: MediaUnderTest
) -> None:
    """Elevation from the desk: a browser agent presses "Call customer" on a chat; ucgate
    rings the desk with the anchor's WebRTC side, then the customer through the trunk with
    the anchor's RTP side (RFC 3725), and both hear each other."""
    desk = open_desk(chromium, node)
    body = json.dumps(
        {"customer": {"id": "c-1", "phone": "+15557654321"}, "media": "chat", "queue": "support"}
    ).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{node.http_port}/v1/sessions", data=body, method="POST"
    )
    req.add_header("Authorization", f"Bearer {node.api_key}")
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=5) as resp:
        session_id = json.loads(resp.read())["id"]
    card = desk.locator(f"article[data-session='{session_id}']")
    card.locator("button[data-action=accept]").click()
    expect(card.locator("[data-media=chat]")).to_have_attribute("data-state", "active")

    card.locator("input[aria-label='Customer number']").fill("+15557654321")
    card.locator("button[data-action=call-customer]").click()
    expect(desk.locator("#incoming")).to_be_visible(timeout=10000)
    desk.click("#answer")
    call_t = int(trunk.wait_incoming(timeout=15)["call"])
    assert trunk.wait_call_state(call_t, "confirmed")["code"] == 200
    wait_for_tone(desk, TONE_TRUNK)
    trunk.wait_tone(call_t, TONE_BROWSER, timeout=15)
    expect(card.locator("[data-media=voice]")).to_have_attribute("data-state", "active")
    expect(card.locator("[data-media=chat]")).to_have_attribute("data-state", "active")
    screenshot(desk, "desk-elevated-call")
    trunk.hangup(call_t)
    expect(desk.get_by_test_id("call-state")).to_have_text("ended", timeout=10000)
