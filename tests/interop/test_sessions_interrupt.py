"""The interrupt matrix with a real call: an agent at full chat capacity is still offered
a voice call when voice may interrupt chats, and is not when it may not."""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path

import aiohttp
import pytest

from tests.interop.test_calls_raw import SDP, recv_request, recv_status, register
from tests.support.raw_sip import RawSipClient
from tests.support.ucgate_process import Account, UcgateProcess

pytestmark = pytest.mark.interop

ALICE = Account("alice", "alice-Pa55word")
PBX = Account("pbx1", "pbx1-Pa55word", allowed_ips=("127.0.0.1",))


def tail(voice_over_chat: bool) -> str:
    over = '["chat"]' if voice_over_chat else "[]"
    return f"""
[[dids]]
number = "+15550200"
target = "queue:support"
[[queues]]
id = "support"
media = ["voice", "chat"]
[routing]
interrupt = {{ voice = {over}, chat = [] }}
"""


async def fill_chat_then_call(node: UcgateProcess, trunk: RawSipClient) -> str:
    """Alice takes a chat (capacity 1 → full), then a customer calls the queue; returns
    the first routing event about the call's voice channel."""
    headers = {"Authorization": f"Bearer {node.api_key}"}
    base = f"http://127.0.0.1:{node.http_port}"
    async with (
        aiohttp.ClientSession(headers=headers) as http,
        http.ws_connect(f"{base}/v1/events") as ws,
    ):
        async with http.post(
            f"{base}/v1/sessions",
            json={
                "customer": {"id": "c-chat", "phone": "+15550001111"},
                "media": "chat",
                "queue": "support",
            },
        ) as resp:
            session = await resp.json()
            assert resp.status == 201, session
        chat = session["channels"][0]
        assert chat["state"] == "offered" and chat["agent"] == "alice", session
        async with http.post(
            f"{base}/v1/sessions/{session['id']}/channels/{chat['id']}/accept",
            json={"agent": "alice"},
        ) as resp:
            assert resp.status == 200, await resp.text()
        trunk.request(
            "INVITE",
            "sip:+15550200@example.test",
            [
                ("From", "<sip:+15552223333@pbx.example>;tag=t1"),
                ("To", "<sip:+15550200@example.test>"),
                ("Call-ID", secrets.token_hex(6)),
                ("CSeq", "1 INVITE"),
                ("Contact", f"<sip:pbx@127.0.0.1:{trunk.local_port}>"),
                ("Content-Type", "application/sdp"),
            ],
            body=SDP,
        )
        while True:
            event = json.loads((await ws.receive(timeout=15)).data)
            if event.get("session_id") == session["id"]:
                continue  # the chat's own events
            if event["type"] in ("offer_made", "channel_waiting"):
                return str(event["type"])


@pytest.mark.parametrize("voice_over_chat", [True, False])
def test_full_chat_capacity_and_the_interrupt_matrix(tmp_path: Path, voice_over_chat: bool) -> None:
    # One chat fills Alice up.
    alice = Account("alice", ALICE.password, capacity="{ voice = 1, chat = 1 }")
    node = UcgateProcess(tmp_path / "n", agents=[alice], trunks=[PBX], tail=tail(voice_over_chat))
    node.start()
    device = register(node, ALICE)
    trunk = RawSipClient("udp", node.sip_port)
    try:
        first = asyncio.run(fill_chat_then_call(node, trunk))
        assert recv_status(trunk, 180).status == 180  # the caller waits in the queue
        if voice_over_chat:
            assert first == "offer_made"
            inv = recv_request(device, "INVITE")  # alice's phone rings despite 1/1 chats
            device.respond(inv, 486, "Busy Here", to_tag="x")
        else:
            assert first == "channel_waiting"  # not offered: voice may not interrupt chat
    finally:
        device.close()
        trunk.close()
        node.stop()
