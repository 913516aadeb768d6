"""Sticky voice by caller ID, byte by byte: a customer with an open chat calls the queue's
DID from the number on their session and the call rings the chat's agent."""

from __future__ import annotations

import json
import secrets
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.test_calls_raw import SDP, recv_request, recv_status, register
from tests.support.raw_sip import RawSipClient
from tests.support.ucgate_process import Account, UcgateProcess

pytestmark = pytest.mark.interop

ALICE = Account("alice", "alice-Pa55word")
PBX = Account("pbx1", "pbx1-Pa55word", allowed_ips=("127.0.0.1",))
TAIL = """
[[dids]]
number = "+15550200"
target = "queue:support"
[[queues]]
id = "support"
media = ["voice", "chat"]
"""


@pytest.fixture
def node(tmp_path: Path) -> Iterator[UcgateProcess]:
    n = UcgateProcess(tmp_path / "n", agents=[ALICE], trunks=[PBX], tail=TAIL).start()
    try:
        yield n
    finally:
        n.stop()


def api(node: UcgateProcess, method: str, path: str, body: object = None) -> tuple[int, dict]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{node.http_port}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {node.api_key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_caller_id_of_an_open_session_rings_its_agent(node: UcgateProcess) -> None:
    device = register(node, ALICE)
    trunk = RawSipClient("udp", node.sip_port)
    try:
        status, session = api(
            node,
            "POST",
            "/v1/sessions",
            {
                "customer": {"id": "c-9", "phone": "+15557770000"},
                "media": "chat",
                "queue": "support",
            },
        )
        assert status == 201, session
        chat = session["channels"][0]
        # With one routable agent the offer is made at once.
        assert chat["state"] == "offered" and chat["agent"] == "alice", session
        status, body = api(
            node,
            "POST",
            f"/v1/sessions/{session['id']}/channels/{chat['id']}/accept",
            {"agent": "alice"},
        )
        assert status == 200, body

        call_id = secrets.token_hex(6)
        trunk.request(
            "INVITE",
            "sip:+15550200@example.test",
            [
                ("From", "<sip:+15557770000@pbx.example>;tag=t9"),
                ("To", "<sip:+15550200@example.test>"),
                ("Call-ID", call_id),
                ("CSeq", "1 INVITE"),
                ("Contact", f"<sip:pbx@127.0.0.1:{trunk.local_port}>"),
                ("Content-Type", "application/sdp"),
            ],
            body=SDP,
        )
        assert recv_status(trunk, 180).status == 180  # held while routing decides
        inv = recv_request(device, "INVITE")  # alice's device: the chat's agent
        device.respond(
            inv,
            200,
            "OK",
            to_tag="al",
            body=SDP,
            headers=[
                ("Contact", f"<sip:alice@127.0.0.1:{device.local_port}>"),
                ("Content-Type", "application/sdp"),
            ],
        )
        assert recv_status(trunk, 200).status == 200
        node.wait_log(
            lambda e: e.get("event") == "call.tracked" and e.get("event_type") == "answered", 10
        )
        node.wait_log(lambda e: e.get("event") == "session.call_joined", 10)
        status, now = api(node, "GET", f"/v1/sessions/{session['id']}")
        assert status == 200, now
        voice = next(ch for ch in now["channels"] if ch["media"] == "voice")
        assert voice["agent"] == "alice", now
    finally:
        device.close()
        trunk.close()
