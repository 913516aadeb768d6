"""SIP over WebSocket (RFC 7118), the transport browser SIP stacks use: REGISTER with
digest over a ``sip`` WebSocket, and the binding disappears the moment the socket closes."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from sip_test_rig.ports import free_port
from tests.support.raw_sip import RawSipClient
from tests.support.ucgate_process import Account, UcgateProcess
from ucgate.sip.digest import DigestChallenge, build_authorization
from ucgate.sip.message import Response
from ucgate.sip.parser import parse_message

pytestmark = pytest.mark.interop

ALICE = Account("alice", "alice-Pa55word")
PBX = Account("pbx1", "pbx1-Pa55word", allowed_ips=("127.0.0.1",))
TAIL = """
[[dids]]
number = "+15550100"
target = "agent:alice"
"""


@pytest.fixture
def node(tmp_path: Path) -> Iterator[UcgateProcess]:
    n = UcgateProcess(
        tmp_path / "n", agents=[ALICE], trunks=[PBX], tail=TAIL, ws_port=free_port()
    ).start()
    try:
        yield n
    finally:
        n.stop()


def register(cseq: int, auth: str | None, call_id: str) -> str:
    # What JsSIP sends: a made-up .invalid host in Via and Contact (RFC 7118 §5.2).
    lines = [
        "REGISTER sip:example.test SIP/2.0",
        f"Via: SIP/2.0/WS df7jal23ls0d.invalid;branch=z9hG4bK{secrets.token_hex(6)}",
        "Max-Forwards: 69",
        "From: <sip:alice@example.test>;tag=ws1",
        "To: <sip:alice@example.test>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        "Contact: <sip:r8bp3gtt@df7jal23ls0d.invalid;transport=ws>;+sip.instance="
        '"<urn:uuid:9dc7f7a0-6bb8-4c1b-8f69-2b1c0a4cd5f1>";expires=600',
        "Expires: 600",
        "Content-Length: 0",
    ]
    if auth:
        lines.insert(-1, f"Authorization: {auth}")
    return "\r\n".join(lines) + "\r\n\r\n"


async def ws_register(node: UcgateProcess) -> None:
    url = f"ws://127.0.0.1:{node.ws_port}/"
    call_id = secrets.token_hex(8)
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url, protocols=("sip",)) as ws:
            await ws.send_str(register(1, None, call_id))
            challenge = parse_message((await ws.receive(timeout=5)).data.encode())
            assert isinstance(challenge, Response) and challenge.status == 401
            chosen = next(
                c
                for c in map(DigestChallenge.parse, challenge.headers.get_all("WWW-Authenticate"))
                if c.algorithm.value == "MD5"  # browser SIP stacks only do MD5
            )
            auth = build_authorization(
                chosen,
                method="REGISTER",
                uri="sip:example.test",
                username=ALICE.id,
                cnonce=secrets.token_hex(4),
                password=ALICE.password,
            )
            await ws.send_str(register(2, auth, call_id))
            ok = parse_message((await ws.receive(timeout=5)).data.encode())
            assert isinstance(ok, Response) and ok.status == 200, ok
            regs = node.registrations()["sip:alice@example.test"]
            assert regs[0]["source"].startswith("ws:127.0.0.1:")
            status, doc = node.http_get("/v1/presence/alice", key=node.api_key)
            assert status == 200 and doc["voice"] == "available", doc

            # A call to the browser agent goes down the same WebSocket (the flow).
            trunk = RawSipClient("udp", node.sip_port)
            try:
                invite_call(trunk)
                msg = parse_message((await ws.receive(timeout=5)).data.encode())
                assert getattr(msg, "method", None) == "INVITE", msg
                assert "transport=ws" in msg.uri, msg.uri
            finally:
                trunk.close()
        # The socket is closed: the browser tab is gone, so is its binding, at once.
        node.wait_log(lambda e: e.get("event") == "registrar.flow_closed", 10)
        assert "sip:alice@example.test" not in node.registrations()
        status, doc = node.http_get("/v1/presence/alice", key=node.api_key)
        assert doc["voice"] == "offline", doc

        # Without the "sip" subprotocol the upgrade is refused (RFC 7118 §4).
        with pytest.raises(aiohttp.WSServerHandshakeError):
            async with http.ws_connect(url):
                pass


def invite_call(trunk: RawSipClient) -> None:
    trunk.request(
        "INVITE",
        "sip:+15550100@example.test",
        [
            ("From", "<sip:+15551234567@pbx.example>;tag=t1"),
            ("To", "<sip:+15550100@example.test>"),
            ("Call-ID", secrets.token_hex(6)),
            ("CSeq", "1 INVITE"),
            ("Contact", f"<sip:pbx@127.0.0.1:{trunk.local_port}>"),
        ],
    )


def test_register_over_websocket_and_cleanup_on_close(node: UcgateProcess) -> None:
    asyncio.run(ws_register(node))
