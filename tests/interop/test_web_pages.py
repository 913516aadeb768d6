"""The browser pages in a real Chromium: /desk/ (JsSIP over ucgate's SIP WebSocket),
/widget/ (public chat + guest credentials), /wallboard/ (live presence, queues, metrics).

Two desks run in two Chromium processes whose fake microphones play different tones; they
call each other through ucgate (browser to browser, SDP passed through) and each hears the
other's tone through the desk's diagnostic API (a WebAudio AnalyserNode on the remote
track), before and after hold/resume. Screenshots land in test-artifacts/.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.sync_api import Page, expect

from sip_test_rig.ports import free_port
from tests.support.browser import (
    Chromium,
    screenshot,
    wait_for_silence_or_other,
    wait_for_tone,
)
from tests.support.ucgate_process import Account, UcgateProcess
from ucgate.sip.digest import DigestChallenge, build_authorization
from ucgate.sip.message import Response
from ucgate.sip.parser import parse_message

pytestmark = [
    pytest.mark.interop,
    pytest.mark.timeout(240),
]

ALICE = Account("alice", "alice-Pa55word", capacity="{ voice = 1, chat = 2 }")
BOB = Account("bob", "bob-Pa55word", capacity="{ voice = 1, chat = 2 }")
# A trunk nobody answers on: elevation ("Call customer") rings the agent's desk first.
PBX = Account("pbx1", "pbx1-Pa55word")
ADMIN_KEY = "admin-test-key"
ALICE_TONE = 440.0
BOB_TONE = 1000.0


def tail(http_port: int) -> str:
    return f"""
[[queues]]
id = "support"
media = ["chat", "voice"]

[[dial_rules]]
prefix = "+1"
trunk = "pbx1"

[web]
widget_enabled = true
widget_queue = "support"
widget_allowed_origins = ["http://127.0.0.1:{http_port}"]
"""


@pytest.fixture
def node(tmp_path: Path) -> Iterator[UcgateProcess]:
    http_port = free_port()
    n = UcgateProcess(
        tmp_path / "node",
        agents=[ALICE, BOB],
        trunks=[PBX],
        http_port=http_port,
        ws_port=free_port(),
        tail=tail(http_port),
        # The default algorithms (MD5, SHA-256): JsSIP 3.13 keeps only the LAST
        # WWW-Authenticate of a 401, so this proves requests over WebSocket get MD5 alone
        # (auth.websocket_md5_only).
    ).start()
    try:
        yield n
    finally:
        n.stop()


@pytest.fixture
def chromium_a(tmp_path: Path) -> Iterator[Chromium]:
    browser = Chromium(tmp_path / "chromium-a", tone_hz=ALICE_TONE).start()
    try:
        yield browser
    finally:
        browser.stop()


@pytest.fixture
def chromium_b(tmp_path: Path) -> Iterator[Chromium]:
    browser = Chromium(tmp_path / "chromium-b", tone_hz=BOB_TONE).start()
    try:
        yield browser
    finally:
        browser.stop()


def base(node: UcgateProcess) -> str:
    return f"http://127.0.0.1:{node.http_port}"


def rest(
    node: UcgateProcess, method: str, path: str, body: Any = None, key: str = ADMIN_KEY
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{base(node)}{path}", data=data, method=method)
    req.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def desk_state(page: Page) -> dict[str, Any]:
    state: dict[str, Any] = page.evaluate("() => window.ucgateDesk.state()")
    return state


def open_desk(browser: Chromium, node: UcgateProcess, agent: Account) -> Page:
    page = browser.new_page(base(node))
    page.goto("/desk/")
    page.fill("#login-agent", agent.id)
    page.fill("#login-password", agent.password)
    page.click("#login-form button[type=submit]")
    expect(page.get_by_test_id("reg-state")).to_have_text("Registered", timeout=15000)
    return page


def call_state(page: Page) -> str:
    return str(desk_state(page)["call"]["state"])


# --- desk ------------------------------------------------------------------------------------


def test_desk_logs_in_registers_and_shows_team_presence(
    node: UcgateProcess, chromium_a: Chromium
) -> None:
    page = open_desk(chromium_a, node, ALICE)
    # The JsSIP binding is in the location store, over the WebSocket flow.
    node.wait_log(
        lambda e: (
            e.get("event") == "registrar.bindings" and e.get("aor") == "sip:alice@example.test"
        ),
        10,
    )
    assert node.registrations()["sip:alice@example.test"][0]["source"].startswith("ws:")
    team = page.get_by_test_id("team")
    expect(team.locator("tr[data-agent=alice]")).to_be_visible()
    expect(team.locator("tr[data-agent=bob]")).to_contain_text("offline")

    # Own status through the selector: the team panel (the presence stream) follows.
    page.select_option("#status-select", "away")
    page.click("#status-set")
    expect(page.get_by_test_id("my-status")).to_have_text("away")
    expect(team.locator("tr[data-agent=alice]")).to_contain_text("away")
    status, doc = rest(node, "GET", "/v1/presence/alice")
    assert status == 200 and doc["status"] == "away", doc
    screenshot(page, "desk")

    # A wrong password gets the one answer an unknown agent gets, shown on the page.
    other = chromium_a.new_page(base(node))
    other.goto("/desk/")
    other.fill("#login-agent", "alice")
    other.fill("#login-password", "wrong-password")
    other.click("#login-form button[type=submit]")
    expect(other.locator("#login-error")).to_have_text("unknown agent or wrong password")


# --- browser to browser call -------------------------------------------------------------------


def test_two_desks_call_each_other_and_hear_each_others_tone_through_hold(
    node: UcgateProcess, chromium_a: Chromium, chromium_b: Chromium
) -> None:
    alice = open_desk(chromium_a, node, ALICE)
    bob = open_desk(chromium_b, node, BOB)

    # Alice dials Bob from the dial box; Bob's incoming panel rings and he answers.
    alice.fill("#dial-target", "bob")
    alice.click("#dial")
    expect(bob.locator("#incoming")).to_be_visible()
    expect(bob.locator("#incoming-from")).to_contain_text("alice")
    bob.click("#answer")
    expect(alice.get_by_test_id("call-state")).to_have_text("confirmed")
    expect(bob.get_by_test_id("call-state")).to_have_text("confirmed")

    # Each side hears the other's microphone: Alice's page 1000 Hz (Bob), Bob's 440 Hz.
    heard_by_alice = wait_for_tone(alice, BOB_TONE)
    heard_by_bob = wait_for_tone(bob, ALICE_TONE)
    assert heard_by_alice["energy_db"] > -40 and heard_by_bob["energy_db"] > -40

    # Hold (JsSIP re-INVITE a=sendonly through ucgate): Bob stops hearing Alice's tone.
    alice.click("#hold")
    expect(alice.get_by_test_id("call-state")).to_have_text("confirmed (held)")
    held = wait_for_silence_or_other(bob, ALICE_TONE)
    print("heard:", heard_by_alice, heard_by_bob, "while held:", held)
    # Resume: both directions carry the tones again.
    alice.click("#resume")
    expect(alice.get_by_test_id("call-state")).to_have_text("confirmed")
    wait_for_tone(alice, BOB_TONE)
    wait_for_tone(bob, ALICE_TONE)

    # DTMF from the keypad goes out as JsSIP sendDTMF (SIP INFO, relayed by ucgate).
    alice.click("#keypad button[data-dtmf='5']")
    alice.wait_for_function("() => window.ucgateDesk.state().dtmfSent.join() === '5'")
    screenshot(alice, "desk-in-call")

    bob.click("#hangup")
    expect(alice.get_by_test_id("call-state")).to_have_text("ended", timeout=10000)
    expect(bob.get_by_test_id("call-state")).to_have_text("ended")


# --- widget ----------------------------------------------------------------------------------


def test_widget_session_reaches_the_routed_agents_desk_and_chat_flows(
    node: UcgateProcess, chromium_a: Chromium
) -> None:
    desk = open_desk(chromium_a, node, ALICE)
    # Bob is offline (never registered): routing can only offer the chat to Alice.
    expect(desk.get_by_test_id("my-status")).to_have_text("available")

    customer = chromium_a.new_page(base(node))
    customer.goto("/widget/")
    customer.fill("#name", "Carol Customer")
    customer.click("#start-form button[type=submit]")
    session_id = customer.wait_for_function(
        "() => window.ucgateWidget.state().session_id"
    ).json_value()

    # The offer appears on Alice's desk live (/v1/events) with the widget's context.
    card = desk.locator(f"article[data-session='{session_id}']")
    expect(card).to_contain_text("Carol Customer")
    expect(card.locator("table.context")).to_contain_text("web-widget")
    card.locator("button[data-action=accept]").click()
    expect(card.locator("[data-media=chat]")).to_have_attribute("data-state", "active")
    expect(customer.get_by_test_id("widget-status")).to_have_text("Connected to alice")

    # Customer → agent and agent → customer, both live over /v1/chat/{id}.
    customer.fill("#text", "Hello, my order 1234 is late")
    customer.click("#send-form button[type=submit]")
    expect(card.get_by_test_id("chat-log")).to_contain_text("Hello, my order 1234 is late")
    card.locator("[data-chat-input]").fill("Sorry about that, checking now")
    card.locator("form.row button[type=submit]").first.click()
    expect(customer.get_by_test_id("widget-log")).to_contain_text("Sorry about that, checking now")
    screenshot(customer, "widget")
    screenshot(desk, "desk-with-chat")

    status, body = rest(node, "GET", f"/v1/sessions/{session_id}")
    assert status == 200 and body["agent"] == "alice", body

    # "Call customer" elevates the chat to voice (POST /v1/sessions/{id}/channels): ucgate
    # rings the agent's desk first (RFC 3725 3PCC), then calls the number through the trunk.
    card.locator("input[aria-label='Customer number']").fill("+15557654321")
    card.locator("button[data-action=call-customer]").click()
    expect(card.locator("[data-media=voice]")).to_be_visible()
    expect(desk.locator("#incoming")).to_be_visible()
    expect(desk.locator("#incoming-from")).to_contain_text("+15557654321")
    desk.click("#decline")
    expect(desk.get_by_test_id("call-state")).to_contain_text("ended")


# --- wallboard -------------------------------------------------------------------------------


def test_wallboard_shows_agents_queues_and_follows_status_changes(
    node: UcgateProcess, chromium_a: Chromium
) -> None:
    # A chat waiting in the queue (no agent is registered, so nobody is offered it).
    status, created = rest(node, "POST", "/v1/sessions", {"media": "chat", "queue": "support"})
    assert status == 201, created

    board = chromium_a.new_page(base(node))
    board.goto(f"/wallboard/?access_token={ADMIN_KEY}")
    agents = board.get_by_test_id("agents")
    expect(agents.locator("tr[data-agent=alice]")).to_have_attribute("data-status", "offline")
    expect(agents.locator("tr[data-agent=bob]")).to_be_visible()
    expect(
        board.get_by_test_id("queues").locator("tr[data-queue=support] td[data-field=waiting]")
    ).to_have_text("1")
    expect(board.get_by_test_id("open-sessions")).to_have_text("1")
    expect(
        board.get_by_test_id("channel-chart").locator("rect[data-label=chat]")
    ).to_have_attribute("data-value", "1")
    # The key left the address bar (and so the history).
    assert "access_token" not in board.url

    # A status change through the API reaches the board live, no reload.
    status, _ = rest(node, "PUT", "/v1/presence/bob/status", {"status": "break"})
    assert status == 200
    expect(agents.locator("tr[data-agent=bob]")).to_have_attribute("data-status", "break")
    expect(
        board.get_by_test_id("status-chart").locator("rect[data-label=break]")
    ).to_have_attribute("data-value", "1")

    # A second chat arriving shows up live through /v1/events.
    status, _ = rest(node, "POST", "/v1/sessions", {"media": "chat", "queue": "support"})
    assert status == 201
    expect(
        board.get_by_test_id("queues").locator("tr[data-queue=support] td[data-field=waiting]")
    ).to_have_text("2")
    screenshot(board, "wallboard")

    # A key without the scopes is refused on the page, not shown an empty board.
    other = chromium_a.new_page(base(node))
    other.goto("/wallboard/")
    other.fill("#key", "not-a-key-at-all")
    other.click("#key-form button[type=submit]")
    expect(other.locator("#key-error")).to_have_text("unknown API key")


# --- guest SIP credentials -----------------------------------------------------------------------


def _sip_request(
    method: str, uri: str, user: str, call_id: str, cseq: int, extra: list[str]
) -> str:
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/WS guest.invalid;branch=z9hG4bK{secrets.token_hex(6)}",
        "Max-Forwards: 70",
        f"From: <sip:{user}@example.test>;tag=g{cseq}",
        # REGISTER names the AOR in To (RFC 3261 §10.2), everything else the callee.
        f"To: <sip:{user}@example.test>" if method == "REGISTER" else f"To: <{uri}>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        "Contact: <sip:g@guest.invalid;transport=ws>",
        *extra,
        "Content-Length: 0",
    ]
    return "\r\n".join(lines) + "\r\n\r\n"


async def _ask(
    node: UcgateProcess, method: str, uri: str, user: str, password: str, extra: list[str]
) -> Response:
    """Send ``method`` over a SIP WebSocket, answer the digest challenge, return the final
    response to the authenticated request."""
    call_id = secrets.token_hex(8)

    async def final(ws: aiohttp.ClientWebSocketResponse) -> Response:
        while True:
            msg = parse_message((await ws.receive(timeout=5)).data.encode())
            # A 1xx other than 100 also shows the request got past authentication (a call
            # the B2BUA holds in a queue rings, 180, until an agent is offered it).
            if isinstance(msg, Response) and msg.status > 100:
                return msg

    async with aiohttp.ClientSession() as http:
        url = f"ws://127.0.0.1:{node.ws_port}/"
        async with http.ws_connect(url, protocols=("sip",)) as ws:
            await ws.send_str(_sip_request(method, uri, user, call_id, 1, extra))
            challenge = await final(ws)
            assert challenge.status == 401, challenge
            chosen = DigestChallenge.parse(challenge.headers.get_all("WWW-Authenticate")[0])
            auth = build_authorization(
                chosen,
                method=method,
                uri=uri,
                username=user,
                cnonce=secrets.token_hex(4),
                password=password,
            )
            await ws.send_str(
                _sip_request(method, uri, user, call_id, 2, [*extra, f"Authorization: {auth}"])
            )
            return await final(ws)


def _widget_session(node: UcgateProcess) -> dict[str, Any]:
    req = urllib.request.Request(
        f"{base(node)}/v1/widget/sessions",
        data=json.dumps({"name": "Guest"}).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Origin": base(node)},
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 201
        created: dict[str, Any] = json.loads(resp.read())
    return created


def test_guest_credentials_pass_the_digest_gate_only_for_their_session_call(
    node: UcgateProcess,
) -> None:
    widget = _widget_session(node)
    sid, user, password = widget["session_id"], widget["sip"]["user"], widget["sip"]["password"]
    header = f"X-UCGate-Session: {sid}"
    scope_refusal = "Guests may only call their session"

    # A guest never registers (it would receive calls meant for agents).
    reg = asyncio.run(_ask(node, "REGISTER", "sip:example.test", user, password, []))
    assert (reg.status, reg.reason) == (403, scope_refusal)
    # It cannot call an agent directly, nor its session without the header.
    direct = asyncio.run(_ask(node, "INVITE", "sip:alice@example.test", user, password, [header]))
    assert (direct.status, direct.reason) == (403, scope_refusal)
    bare = asyncio.run(_ask(node, "INVITE", "sip:session@example.test", user, password, []))
    assert bare.status == 403 and bare.reason.startswith("X-UCGate-Session")
    # Its session call passes authentication; where it goes is the B2BUA's routing.
    ok = asyncio.run(_ask(node, "INVITE", "sip:session@example.test", user, password, [header]))
    print("guest session call answered:", ok.status, ok.reason)
    assert ok.status not in (401, 407) and ok.reason != scope_refusal, (ok.status, ok.reason)
    # A made-up guest (no session ucgate issued) is just a wrong password.
    fake = "guest." + "0" * 32
    bad = asyncio.run(_ask(node, "INVITE", "sip:session@example.test", fake, password, [header]))
    assert bad.status == 401


def test_widget_call_me_in_the_browser_rings_the_chats_agent_with_audio(
    node: UcgateProcess, chromium_a: Chromium, chromium_b: Chromium
) -> None:
    """The widget's guest call (sip:session@ + X-UCGate-Session) reaches the agent who took
    the chat; both browsers hear each other (routing: app/session_calls.py)."""
    desk = open_desk(chromium_a, node, ALICE)
    customer = chromium_b.new_page(base(node))
    customer.goto("/widget/")
    customer.fill("#name", "Carol Customer")
    customer.click("#start-form button[type=submit]")
    session_id = customer.wait_for_function(
        "() => window.ucgateWidget.state().session_id"
    ).json_value()
    card = desk.locator(f"article[data-session='{session_id}']")
    card.locator("button[data-action=accept]").click()
    expect(customer.get_by_test_id("widget-status")).to_have_text("Connected to alice")

    customer.click("#call")
    expect(desk.locator("#incoming")).to_be_visible()
    expect(desk.locator("#incoming-from")).to_contain_text(f"guest.{session_id}")
    desk.click("#answer")
    expect(customer.get_by_test_id("widget-call-state")).to_have_text("confirmed")
    wait_for_tone(desk, BOB_TONE)  # the customer's microphone (chromium_b)
    wait_for_tone(customer, ALICE_TONE, api="ucgateWidget")
    screenshot(customer, "widget-in-call")
    customer.click("#hangup")
    expect(desk.get_by_test_id("call-state")).to_have_text("ended")
