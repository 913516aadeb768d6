"""ucgate's presence server with real SIP stacks: pjsua2 Buddy subscriptions and sipp."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from sip_test_rig.sipp_runner import make_users_csv, run_sipp
from sip_test_rig.softphone_client import Softphone
from tests.support.ucgate_process import Account, UcgateProcess

pytestmark = pytest.mark.interop

DOMAIN = "example.test"
ALICE = Account("alice", "alice-Secret-1")
BOB = Account("bob", "bob-Secret-2")
WATCHERS = [Account(f"w{i:03d}", f"w-secret-{i:03d}") for i in range(1, 51)]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[UcgateProcess]:
    n = UcgateProcess(tmp_path / "node", agents=[ALICE, BOB, *WATCHERS]).start()
    try:
        yield n
    finally:
        n.stop()


def watchers_csv(path: Path, users: list[Account], presentity: str) -> Path:
    rows = [f"{u.id};{u.password};{presentity}" for u in users]
    path.write_text("SEQUENTIAL\n" + "\n".join(rows) + "\n")
    return path


def put_status(node: UcgateProcess, agent: str, status: str, note: str | None = None) -> None:
    req = urllib.request.Request(
        f"http://127.0.0.1:{node.http_port}/v1/presence/{agent}/status",
        data=json.dumps({"status": status, "note": note}).encode(),
        method="PUT",
        headers={"Authorization": f"Bearer {node.api_key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200


def test_pjsua2_buddy_follows_registration_publish_and_manual_status(node: UcgateProcess) -> None:
    target = f"127.0.0.1:{node.sip_port}"
    alice_uri = f"sip:alice@{DOMAIN}"
    with Softphone() as alice, Softphone() as bob:
        for phone, acc in ((alice, ALICE), (bob, BOB)):
            account = phone.register(
                server=target, user=acc.id, password=acc.password, domain=DOMAIN, proxy=True
            )
            assert phone.wait_reg_state(account=account, timeout=10)["code"] == 200
        bob.subscribe_buddy(alice_uri)
        seen = bob.wait_buddy_state(uri=alice_uri, status="online", timeout=10)
        assert seen["sub_state"] == "ACTIVE", bob.history

        # A manual status from the API reaches the phone as an RPID activity.
        put_status(node, "alice", "away", "back soon")
        seen = bob.wait_buddy_state(uri=alice_uri, activity="away", timeout=10)
        assert seen["note"] == "back soon", bob.history

        # The phone's own PUBLISH merges into the one document (RFC 3903).
        put_status(node, "alice", "available")
        alice.publish_presence(status="online", activity="busy", note="on a call")
        seen = bob.wait_buddy_state(uri=alice_uri, activity="busy", timeout=10)
        assert seen["status"] == "online", bob.history

        bob.unsubscribe_buddy(alice_uri)
        ended = bob.wait_buddy_state(uri=alice_uri, sub_state="TERMINATED", timeout=10)
        assert ended["sub_term_code"] == 200, bob.history


@pytest.mark.parametrize("scenario", ["subscribe_presence", "subscribe_dialog"])
def test_sipp_watchers_subscribe_notify_unsubscribe(
    node: UcgateProcess, tmp_path: Path, scenario: str
) -> None:
    csv = watchers_csv(tmp_path / "watchers.csv", WATCHERS, ALICE.id)
    result = run_sipp(
        scenario,
        f"127.0.0.1:{node.sip_port}",
        users_csv=csv,
        rate=50,
        calls=len(WATCHERS),
        timeout=60,
        extra_args=["-auth_uri", f"{ALICE.id}@{DOMAIN}"],
    )
    assert (result.successful, result.failed) == (len(WATCHERS), 0), result.summary()
    assert result.retransmissions == 0, result.summary()


def test_sipp_publish_initial_refresh_modify_remove(node: UcgateProcess, tmp_path: Path) -> None:
    csv = make_users_csv(tmp_path / "users.csv", [(ALICE.id, ALICE.password)] * 10)
    result = run_sipp(
        "publish_presence",
        f"127.0.0.1:{node.sip_port}",
        users_csv=csv,
        rate=20,
        calls=10,
        timeout=60,
        extra_args=["-auth_uri", f"{ALICE.id}@{DOMAIN}"],
    )
    assert (result.successful, result.failed) == (10, 0), result.summary()


def test_sipp_bad_etag_gets_412(node: UcgateProcess, tmp_path: Path) -> None:
    csv = make_users_csv(tmp_path / "users.csv", [(ALICE.id, ALICE.password)])
    result = run_sipp(
        "publish_bad_etag",
        f"127.0.0.1:{node.sip_port}",
        users_csv=csv,
        rate=5,
        calls=1,
        timeout=30,
        extra_args=["-auth_uri", f"{ALICE.id}@{DOMAIN}"],
    )
    assert (result.successful, result.failed) == (1, 0), result.summary()
