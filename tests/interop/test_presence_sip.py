"""SIP presence against a real ucgate process: SUBSCRIBE/NOTIFY (PIDF, dialog-info), PUBLISH.

The watcher here is a raw SIP client so the test sees every byte; the pjsua2 Buddy and
sipp tests exercise the same server with real stacks.
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sip_test_rig.softphone_client import Softphone
from tests.support.raw_sip import RawSipClient
from tests.support.ucgate_process import Account, UcgateProcess

pytestmark = pytest.mark.interop

ALICE = Account("alice", "alice-Pa55word")
BOB = Account("bob", "bob-Pa55word")
PBX = Account("pbx1", "pbx1-Pa55word")
WALLBOARD = Account("wallboard", "wallboard-Pa55word")
PIDF_OPEN = (
    b'<?xml version="1.0" encoding="UTF-8"?>'
    b'<presence xmlns="urn:ietf:params:xml:ns:pidf" '
    b'xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" '
    b'xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" entity="sip:alice@example.test">'
    b'<tuple id="t1"><status><basic>open</basic></status></tuple>'
    b'<dm:person id="p1"><rpid:activities><rpid:meeting/></rpid:activities></dm:person>'
    b"<note>in the standup</note></presence>"
)


class Watcher:
    """A raw SIP subscriber: SUBSCRIBE with digest, then collect NOTIFYs (answered 200)."""

    def __init__(self, node: UcgateProcess, account: Account, *, notify_status: int = 200):
        self.client = RawSipClient("udp", node.sip_port)
        self.account = account
        self.notify_status = notify_status
        self.notifies: list[object] = []
        self.call_id = secrets.token_hex(8)
        self.from_tag = secrets.token_hex(4)
        self.cseq = 0
        self.to_tag: str | None = None

    def close(self) -> None:
        self.client.close()

    def _headers(self, target: str, event: str, expires: int, auth: str | None):
        self.cseq += 1
        to = f"<sip:{target}@example.test>" + (f";tag={self.to_tag}" if self.to_tag else "")
        h = [
            ("From", f"<sip:{self.account.id}@example.test>;tag={self.from_tag}"),
            ("To", to),
            ("Call-ID", self.call_id),
            ("CSeq", f"{self.cseq} SUBSCRIBE"),
            ("Contact", f"<sip:{self.account.id}@127.0.0.1:{self.client.local_port}>"),
            ("Event", event),
            ("Expires", str(expires)),
        ]
        if auth:
            h.append(("Authorization", auth))
        return h

    def subscribe(self, target: str, event: str = "presence", expires: int = 600):
        uri = f"sip:{target}@example.test"
        self.client.request("SUBSCRIBE", uri, self._headers(target, event, expires, None))
        first = self.next_response()
        if first.status != 401:
            return first
        auth = self.client.authorize(
            first,
            method="SUBSCRIBE",
            uri=uri,
            user=self.account.id,
            password=self.account.password,
        )
        self.client.request("SUBSCRIBE", uri, self._headers(target, event, expires, auth))
        resp = self.next_response()
        if resp.status == 200:
            to = resp.headers.get("To") or ""
            self.to_tag = to.split("tag=", 1)[1].split(";")[0]
        return resp

    def next_response(self):
        while True:
            msg = self.client.recv_any()
            if hasattr(msg, "status"):
                return msg
            self._take_notify(msg)

    def _take_notify(self, msg) -> None:
        assert msg.method == "NOTIFY", msg
        self.notifies.append(msg)
        self.client.respond(msg, self.notify_status, "OK" if self.notify_status == 200 else "X")

    def wait_notify(self, pred: Callable[[object], bool], timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        for n in self.notifies:
            if pred(n):
                return n
        while time.monotonic() < deadline:
            self.client.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                msg = self.client.recv_any()
            except TimeoutError:
                break
            if hasattr(msg, "status"):
                continue
            self._take_notify(msg)
            if pred(msg):
                return msg
        raise AssertionError(f"no matching NOTIFY; got {[n.body for n in self.notifies]}")


def put_status(node: UcgateProcess, agent: str, status: str, note: str | None = None) -> dict:
    body = json.dumps({"status": status, "note": note}).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{node.http_port}/v1/presence/{agent}/status",
        data=body,
        method="PUT",
        headers={"Authorization": f"Bearer {node.api_key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


@pytest.fixture
def node(tmp_path: Path) -> Iterator[UcgateProcess]:
    n = UcgateProcess(
        tmp_path / "node", agents=[ALICE, BOB], trunks=[PBX], applications=[WALLBOARD]
    ).start()
    try:
        yield n
    finally:
        n.stop()


def state_of(notify) -> str:
    return notify.headers.get("Subscription-State") or ""


def test_presence_subscription_follows_devices_and_manual_status(node: UcgateProcess) -> None:
    w = Watcher(node, BOB)
    try:
        ok = w.subscribe("alice")
        assert ok.status == 200, ok
        assert ok.headers.get("Expires") == "600"
        first = w.wait_notify(lambda n: True)
        assert state_of(first).startswith("active")
        assert first.headers.get("Content-Type") == "application/pidf+xml"
        assert b"<basic>closed</basic>" in first.body  # no device registered yet

        with Softphone() as phone:
            phone.register(
                server=f"127.0.0.1:{node.sip_port}",
                transport="udp",
                user=ALICE.id,
                password=ALICE.password,
                domain="example.test",
            )
            phone.wait_event(lambda e: e.get("event") == "reg_state" and e["code"] == 200, 15)
            w.wait_notify(lambda n: b"<basic>open</basic>" in n.body)

            put_status(node, "alice", "away", "back at 3")
            away = w.wait_notify(lambda n: b"away" in n.body and b"back at 3" in n.body)
            assert state_of(away).startswith("active;expires=")

            # The last device leaving flips to offline at once; the manual away stays.
            phone.unregister()
            w.wait_notify(lambda n: b"<basic>closed</basic>" in n.body and b"away" in n.body)
        # Unsubscribe: 200 and a final NOTIFY with state terminated.
        resp = w.subscribe("alice", expires=0)
        assert resp.status == 200
        w.wait_notify(lambda n: state_of(n).startswith("terminated"))
    finally:
        w.close()


def test_dialog_event_gives_an_empty_full_dialog_info(node: UcgateProcess) -> None:
    w = Watcher(node, BOB)
    try:
        assert w.subscribe("alice", event="dialog").status == 200
        n = w.wait_notify(lambda n: True)
        assert n.headers.get("Content-Type") == "application/dialog-info+xml"
        assert b'state="full"' in n.body and b"<dialog " not in n.body
    finally:
        w.close()


def test_fetch_with_expires_zero(node: UcgateProcess) -> None:
    w = Watcher(node, BOB)
    try:
        assert w.subscribe("alice", expires=0).status == 200
        n = w.wait_notify(lambda n: True)
        assert state_of(n).startswith("terminated")
    finally:
        w.close()


def test_application_accounts_may_watch(node: UcgateProcess) -> None:
    w = Watcher(node, WALLBOARD)
    try:
        assert w.subscribe("alice").status == 200
        assert w.wait_notify(lambda n: True).headers.get("Content-Type") == "application/pidf+xml"
    finally:
        w.close()


def test_trunks_may_not_watch_and_unknown_presentities_are_404(node: UcgateProcess) -> None:
    w = Watcher(node, PBX)
    try:
        assert w.subscribe("alice").status == 403
    finally:
        w.close()
    w = Watcher(node, BOB)
    try:
        assert w.subscribe("nobody").status == 404
    finally:
        w.close()
    w = Watcher(node, Account("bob", "wrong-password"))
    try:
        assert w.subscribe("alice").status == 401
    finally:
        w.close()


def test_watcher_whose_notify_fails_is_removed(node: UcgateProcess) -> None:
    w = Watcher(node, BOB, notify_status=481)
    try:
        assert w.subscribe("alice").status == 200
        w.wait_notify(lambda n: True)
        node.wait_log(lambda e: e.get("event") == "presence.watcher_removed", 10)
        put_status(node, "alice", "busy")
        with pytest.raises(AssertionError):
            w.wait_notify(lambda n: b"busy" in n.body, timeout=1.5)
    finally:
        w.close()


def test_publish_merges_into_the_document_and_412_on_bad_etag(node: UcgateProcess) -> None:
    watcher = Watcher(node, BOB)
    pub = RawSipClient("udp", node.sip_port)
    try:
        assert watcher.subscribe("alice").status == 200
        watcher.wait_notify(lambda n: True)
        uri = "sip:alice@example.test"
        call_id = secrets.token_hex(6)

        def publish(cseq: int, extra: list[tuple[str, str]], body: bytes = b"", auth=None):
            h = [
                ("From", f"<{uri}>;tag=p1"),
                ("To", f"<{uri}>"),
                ("Call-ID", call_id),
                ("CSeq", f"{cseq} PUBLISH"),
                ("Event", "presence"),
                *extra,
            ]
            if body:
                h.append(("Content-Type", "application/pidf+xml"))
            if auth:
                h.append(("Authorization", auth))
            pub.request("PUBLISH", uri, h, body=body)
            return pub.recv()

        challenge = publish(1, [("Expires", "600")], PIDF_OPEN)
        assert challenge.status == 401
        auth = pub.authorize(
            challenge, method="PUBLISH", uri=uri, user=ALICE.id, password=ALICE.password
        )
        ok = publish(2, [("Expires", "600")], PIDF_OPEN, auth)
        assert ok.status == 200, ok
        etag = ok.headers.get("SIP-ETag")
        assert etag
        watcher.wait_notify(lambda n: b"meeting" in n.body and b"standup" in n.body)

        auth = pub.authorize(
            challenge, method="PUBLISH", uri=uri, user=ALICE.id, password=ALICE.password, nc=2
        )
        bad = publish(3, [("Expires", "600"), ("SIP-If-Match", "no-such-etag")], auth=auth)
        assert bad.status == 412
        auth = pub.authorize(
            challenge, method="PUBLISH", uri=uri, user=ALICE.id, password=ALICE.password, nc=3
        )
        gone = publish(4, [("Expires", "0"), ("SIP-If-Match", etag)], auth=auth)
        assert gone.status == 200
        watcher.wait_notify(lambda n: b"meeting" not in n.body and n is not watcher.notifies[0])
    finally:
        watcher.close()
        pub.close()
