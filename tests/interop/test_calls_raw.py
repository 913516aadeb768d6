"""Calls through the B2BUA, driven byte by byte from raw SIP endpoints.

A trunk (IP-authenticated) calls a DID that rings both of Alice's devices; the first
200 wins, the other device gets CANCEL; BYE crosses from one leg to the other. The
pjsua2 tests in test_calls_audio.py prove the same paths with real audio.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.raw_sip import RawSipClient
from tests.support.ucgate_process import Account, UcgateProcess

pytestmark = pytest.mark.interop

ALICE = Account("alice", "alice-Pa55word")
BOB = Account("bob", "bob-Pa55word")
PBX = Account("pbx1", "pbx1-Pa55word", allowed_ips=("127.0.0.1",))
SDP = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
)
TAIL = """
[[dids]]
number = "+15550100"
target = "agent:alice"
[[dial_rules]]
prefix = "+1"
trunk = "pbx1"
[calls]
ring_timeout = 5
"""


@pytest.fixture
def node(tmp_path: Path) -> Iterator[UcgateProcess]:
    n = UcgateProcess(tmp_path / "n", agents=[ALICE, BOB], trunks=[PBX], tail=TAIL).start()
    try:
        yield n
    finally:
        n.stop()


def tracked(node: UcgateProcess, event: str) -> None:
    """Wait (bounded) until the call tracker applied ``event`` to records and presence."""
    node.wait_log(lambda e: e.get("event") == "call.tracked" and e.get("event_type") == event, 10)


def register(node: UcgateProcess, account: Account) -> RawSipClient:
    dev = RawSipClient("udp", node.sip_port)
    ok = dev.register_with_auth(account.id, account.password, algorithm="MD5")
    assert ok.status == 200, ok
    return dev


def recv_request(dev: RawSipClient, method: str):
    while True:
        msg = dev.recv_any()
        if getattr(msg, "method", None) == method:
            return msg
        if getattr(msg, "method", None) is not None and msg.method != "ACK":
            dev.respond(msg, 200)


def recv_status(dev: RawSipClient, status: int):
    while True:
        msg = dev.recv_any()
        if getattr(msg, "status", None) == status:
            return msg


def invite(trunk: RawSipClient, did: str, call_id: str) -> str:
    return trunk.request(
        "INVITE",
        f"sip:{did}@example.test",
        [
            ("From", "<sip:+15551234567@pbx.example>;tag=t1"),
            ("To", f"<sip:{did}@example.test>"),
            ("Call-ID", call_id),
            ("CSeq", "1 INVITE"),
            ("Contact", f"<sip:pbx@127.0.0.1:{trunk.local_port}>"),
            ("Content-Type", "application/sdp"),
            ("User-to-User", "56a390f3d2b7310023a2;encoding=hex"),
        ],
        body=SDP,
    )


def test_trunk_call_forks_to_both_devices_first_answer_wins_bye_crosses(
    node: UcgateProcess,
) -> None:
    d1, d2 = register(node, ALICE), register(node, ALICE)
    # Two different Contacts (ports) → two bindings.
    assert len(node.registrations()["sip:alice@example.test"]) == 2
    trunk = RawSipClient("udp", node.sip_port)
    try:
        call_id = secrets.token_hex(6)
        invite(trunk, "+15550100", call_id)
        inv1, inv2 = recv_request(d1, "INVITE"), recv_request(d2, "INVITE")
        assert inv1.body == SDP  # SDP passed through unchanged
        assert inv1.headers.get("User-to-User") == "56a390f3d2b7310023a2;encoding=hex"
        assert inv1.headers.get("Call-ID") != call_id  # a B2BUA: a new dialog per leg
        d1.respond(inv1, 180, "Ringing", to_tag="d1")
        # §9.1: a CANCEL waits for a provisional response; a real phone sends one at once.
        d2.respond(inv2, 180, "Ringing", to_tag="d2")
        ringing = recv_status(trunk, 180)
        assert ringing.headers.get("To", "").count("tag=") == 1
        answer = SDP.replace(b"40000", b"40002")
        d1.respond(
            inv1,
            200,
            "OK",
            to_tag="d1",
            body=answer,
            headers=[
                ("Contact", f"<sip:alice@127.0.0.1:{d1.local_port}>"),
                ("Content-Type", "application/sdp"),
            ],
        )
        ok = recv_status(trunk, 200)
        assert ok.body == answer
        # The other device is cancelled (§9.1) and its INVITE answered 487.
        cancel = recv_request(d2, "CANCEL")
        d2.respond(cancel, 200)
        d2.respond(inv2, 487, "Request Terminated", to_tag="d2")
        recv_request(d2, "ACK")
        # d1 gets the ACK of the B2BUA's own dialog.
        recv_request(d1, "ACK")
        # Presence follows the call (BLF and the API see Alice on the phone).
        tracked(node, "answered")
        status, doc = node.http_get("/v1/presence/alice", key=node.api_key)
        assert status == 200 and doc["voice"] == "on_call", doc
        assert doc["interactions"][0]["remote"] == "sip:+15551234567@pbx.example"
        to_hdr = ok.headers.get("To")
        contact = ok.headers.values("Contact")[0].strip("<>")
        trunk.request(
            "ACK",
            contact,
            [
                ("From", "<sip:+15551234567@pbx.example>;tag=t1"),
                ("To", to_hdr),
                ("Call-ID", call_id),
                ("CSeq", "1 ACK"),
            ],
        )
        trunk.request(
            "BYE",
            contact,
            [
                ("From", "<sip:+15551234567@pbx.example>;tag=t1"),
                ("To", to_hdr),
                ("Call-ID", call_id),
                ("CSeq", "2 BYE"),
            ],
        )
        assert recv_status(trunk, 200).headers.get("CSeq") == "2 BYE"
        bye = recv_request(d1, "BYE")
        d1.respond(bye, 200)
        tracked(node, "ended")
        status, doc = node.http_get("/v1/presence/alice", key=node.api_key)
        assert doc["voice"] == "wrap_up", doc
        status, page = node.http_get("/v1/calls", key=node.api_key)
        assert status == 200, page
        record = page["calls"][0]
        assert record["end_reason"] == "caller_bye", record
        assert record["direction"] == "inbound"
        assert record["talk_seconds"] >= 0 and record["answered_at"] is not None
        b_legs = [leg for leg in record["legs"] if leg["role"] == "b"]
        assert sorted(leg["end_reason"] for leg in b_legs) == [
            "answered_elsewhere",
            "caller_bye",
        ], json.dumps(record)
    finally:
        for c in (d1, d2, trunk):
            c.close()


def test_unknown_did_is_404_and_unregistered_agent_is_480(node: UcgateProcess) -> None:
    trunk = RawSipClient("udp", node.sip_port)
    try:
        invite(trunk, "+15559999", secrets.token_hex(6))
        assert recv_status(trunk, 404).status == 404
        invite(trunk, "+15550100", secrets.token_hex(6))  # alice has no device
        assert recv_status(trunk, 480).status == 480
    finally:
        trunk.close()


def test_cancel_before_answer_and_busy(node: UcgateProcess) -> None:
    dev = register(node, ALICE)
    trunk = RawSipClient("udp", node.sip_port)
    try:
        call_id = secrets.token_hex(6)
        branch = invite(trunk, "+15550100", call_id)
        inv = recv_request(dev, "INVITE")
        dev.respond(inv, 180, "Ringing", to_tag="x1")
        recv_status(trunk, 180)
        cancel_headers = [
            ("From", "<sip:+15551234567@pbx.example>;tag=t1"),
            ("To", "<sip:+15550100@example.test>"),
            ("Call-ID", call_id),
            ("CSeq", "1 CANCEL"),
        ]
        trunk.request("CANCEL", "sip:+15550100@example.test", cancel_headers, branch=branch)
        # The 200 for the CANCEL and the 487 for the INVITE (§9.2) …
        assert recv_status(trunk, 200).headers.get("CSeq") == "1 CANCEL"
        assert recv_status(trunk, 487).status == 487
        # … and the device's ringing INVITE is cancelled too.
        cancel = recv_request(dev, "CANCEL")
        dev.respond(cancel, 200)
        dev.respond(inv, 487, "Request Terminated", to_tag="x1")
        recv_request(dev, "ACK")

        # A busy device: 486 reaches the caller.
        call_id = secrets.token_hex(6)
        invite(trunk, "+15550100", call_id)
        inv = recv_request(dev, "INVITE")
        dev.respond(inv, 486, "Busy Here", to_tag="x2")
        assert recv_status(trunk, 486).status == 486
    finally:
        dev.close()
        trunk.close()


def test_unauthenticated_caller_cannot_dial_out(node: UcgateProcess, tmp_path: Path) -> None:
    # Not from a trunk address (we pretend by claiming to be an agent) and no credentials:
    # challenged, never relayed to a trunk.
    cli = RawSipClient("udp", node.sip_port)
    try:
        cli.request(
            "INVITE",
            "sip:+15557654321@example.test",
            [
                ("From", "<sip:bob@example.test>;tag=b1"),
                ("To", "<sip:+15557654321@example.test>"),
                ("Call-ID", secrets.token_hex(6)),
                ("CSeq", "1 INVITE"),
                ("Contact", f"<sip:bob@127.0.0.1:{cli.local_port}>"),
            ],
        )
        assert recv_status(cli, 401).status == 401
    finally:
        cli.close()


def test_blf_watcher_sees_ringing_then_confirmed_then_idle(node: UcgateProcess) -> None:
    from tests.interop.test_presence_sip import Watcher

    blf = Watcher(node, BOB)  # bob's desk phone has a BLF key for alice
    dev = register(node, ALICE)
    trunk = RawSipClient("udp", node.sip_port)
    try:
        assert blf.subscribe("alice", event="dialog").status == 200
        idle = blf.wait_notify(lambda n: True)
        assert b"<dialog " not in idle.body
        call_id = secrets.token_hex(6)
        invite(trunk, "+15550100", call_id)
        inv = recv_request(dev, "INVITE")
        dev.respond(inv, 180, "Ringing", to_tag="r1")
        early = blf.wait_notify(lambda n: b"<state>early</state>" in n.body)
        assert b'direction="recipient"' in early.body
        assert b"+15551234567" in early.body  # the remote party's identity on the key
        dev.respond(
            inv,
            200,
            "OK",
            to_tag="r1",
            body=SDP,
            headers=[
                ("Contact", f"<sip:alice@127.0.0.1:{dev.local_port}>"),
                ("Content-Type", "application/sdp"),
            ],
        )
        ok = recv_status(trunk, 200)
        blf.wait_notify(lambda n: b"<state>confirmed</state>" in n.body)
        contact = ok.headers.values("Contact")[0].strip("<>")
        common = [
            ("From", "<sip:+15551234567@pbx.example>;tag=t1"),
            ("To", ok.headers.get("To")),
            ("Call-ID", call_id),
        ]
        trunk.request("ACK", contact, [*common, ("CSeq", "1 ACK")])
        trunk.request("BYE", contact, [*common, ("CSeq", "2 BYE")])
        bye = recv_request(dev, "BYE")
        dev.respond(bye, 200)
        # After the call alice is in wrap-up: the key shows the dialog terminated.
        blf.wait_notify(lambda n: b"<state>terminated</state>" in n.body)
    finally:
        for c in (dev, trunk):
            c.close()
        blf.close()


def test_outbound_call_answers_the_pbx_challenge_with_the_trunk_credentials(
    node: UcgateProcess,
) -> None:
    from ucgate.sip.digest import DigestAuthenticator, UserSecret

    pbx_realm = "pbx.example"
    pbx_auth = DigestAuthenticator(pbx_realm, secret_key=b"k" * 32)
    trunk = register(node, PBX)  # the PBX registered as trunk pbx1
    alice = RawSipClient("udp", node.sip_port)
    try:
        uri = "sip:+15557654321@example.test"
        headers = [
            ("From", "<sip:alice@example.test>;tag=a1"),
            ("To", f"<{uri}>"),
            ("Call-ID", secrets.token_hex(6)),
            ("Contact", f"<sip:alice@127.0.0.1:{alice.local_port}>"),
            ("Content-Type", "application/sdp"),
        ]
        alice.request("INVITE", uri, [*headers, ("CSeq", "1 INVITE")], body=SDP)
        challenge = recv_status(alice, 401)
        auth = alice.authorize(
            challenge, method="INVITE", uri=uri, user=ALICE.id, password=ALICE.password
        )
        alice.request(
            "INVITE", uri, [*headers, ("CSeq", "2 INVITE"), ("Authorization", auth)], body=SDP
        )
        first = recv_request(trunk, "INVITE")
        assert first.uri.startswith("sip:+15557654321@127.0.0.1"), first.uri
        # The PBX wants proof: 407 (RFC 3261 §22.3), then checks the retried INVITE.
        trunk.respond(
            first,
            407,
            "Proxy Authentication Required",
            to_tag="p1",
            headers=[("Proxy-Authenticate", v) for v in pbx_auth.challenge(time.time())],
        )
        recv_request(trunk, "ACK")
        second = recv_request(trunk, "INVITE")
        result = pbx_auth.verify(
            method="INVITE",
            request_uri=second.uri,
            authorization=second.headers.get("Proxy-Authorization") or "",
            lookup=lambda user: (
                UserSecret.from_password(user, pbx_realm, PBX.password) if user == PBX.id else None
            ),
            now=time.time(),
        )
        assert result.ok and result.username == PBX.id, result
        trunk.respond(
            second,
            200,
            "OK",
            to_tag="p2",
            body=SDP,
            headers=[
                ("Contact", f"<sip:pbx@127.0.0.1:{trunk.local_port}>"),
                ("Content-Type", "application/sdp"),
            ],
        )
        assert recv_status(alice, 200).body == SDP
    finally:
        trunk.close()
        alice.close()
