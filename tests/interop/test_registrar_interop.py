"""The registrar with real SIP stacks: a pjsua2 softphone and sipp, over UDP and TCP.

Each test starts a real ``ucgate serve`` process on free loopback ports and stops it by PID.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from sip_test_rig.sipp_runner import make_users_csv, run_sipp
from sip_test_rig.softphone_client import Softphone
from tests.support.ucgate_process import Account, UcgateProcess

pytestmark = pytest.mark.interop

USERS = [Account(f"u{i:04d}", f"pw-{i:04d}-secret") for i in range(1, 201)]
ALICE = Account("alice", "alice-Pa55word")
AOR = "sip:alice@example.test"


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[UcgateProcess]:
    node = UcgateProcess(tmp_path / "node", agents=[ALICE, *USERS]).start()
    try:
        yield node
    finally:
        node.stop()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_pjsua2_softphone_registers_with_digest(gateway: UcgateProcess, transport: str) -> None:
    with Softphone() as phone:
        phone.register(
            server=f"127.0.0.1:{gateway.sip_port}",
            transport=transport,
            user=ALICE.id,
            password=ALICE.password,
            domain="example.test",
            expires=300,
        )
        ev = phone.wait_event(lambda e: e.get("event") == "reg_state", 15)
        assert ev["code"] == 200 and ev["active"], phone.history
        contacts = gateway.registrations()[AOR]
        assert len(contacts) == 1
        assert contacts[0]["source"].startswith(f"{transport}:127.0.0.1:")
        assert 290 <= contacts[0]["expires"] <= 300

        phone.unregister()
        ev = phone.wait_event(lambda e: e.get("event") == "reg_state" and not e["active"], 15)
        assert ev["code"] == 200, phone.history
        assert AOR not in gateway.registrations()
    # Secrets never reach the log, even at info level with digest traffic in it.
    log = gateway.raw_log()
    assert ALICE.password not in log
    assert "response=" not in log


def test_wrong_password_is_refused(gateway: UcgateProcess) -> None:
    with Softphone() as phone:
        phone.register(
            server=f"127.0.0.1:{gateway.sip_port}",
            transport="udp",
            user=ALICE.id,
            password="not-the-password",
            domain="example.test",
            expires=300,
        )
        ev = phone.wait_event(lambda e: e.get("event") == "reg_state", 15)
        assert ev["code"] in (401, 403) and not ev["active"], phone.history
    assert AOR not in gateway.registrations()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_sipp_registers_many_distinct_users_with_auth(
    gateway: UcgateProcess, tmp_path: Path, transport: str
) -> None:
    csv = make_users_csv(tmp_path / "users.csv", [(u.id, u.password) for u in USERS])
    result = run_sipp(
        "register_auth",
        f"127.0.0.1:{gateway.sip_port}",
        users_csv=csv,
        rate=200,
        calls=len(USERS),
        transport=transport,
        timeout=60,
    )
    assert result.successful == len(USERS), result.summary()
    assert result.failed == 0, result.summary()
    regs = gateway.registrations()
    assert all(f"sip:{u.id}@example.test" in regs for u in USERS)


def test_garbage_and_malformed_requests_do_not_hurt_the_worker(gateway: UcgateProcess) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        target = ("127.0.0.1", gateway.sip_port)
        s.sendto(b"\x00\xff garbage that is not SIP \r\n\r\n", target)  # dropped silently
        broken = (
            "OPTIONS sip:example.test SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKbroken1;rport\r\n"
            "From: <sip:x@example.test>;tag=1\r\nTo: <sip:example.test>\r\n"
            "Call-ID: broken-1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        s.sendto(broken, target)  # CSeq method mismatch → 400 (RFC 4475 mismatch01)
        data, _ = s.recvfrom(65535)
        assert data.startswith(b"SIP/2.0 400 "), data
        ok = (
            "OPTIONS sip:example.test SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKok1;rport\r\n"
            "From: <sip:x@example.test>;tag=1\r\nTo: <sip:example.test>\r\n"
            "Call-ID: ok-1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        s.sendto(ok, target)
        data, _ = s.recvfrom(65535)
        assert data.startswith(b"SIP/2.0 200 "), data
        assert b"Allow:" in data
        unknown = (
            ok.replace(b"OPTIONS sip", b"FOOBAR sip")
            .replace(b"1 OPTIONS", b"1 FOOBAR")
            .replace(b"ok1", b"ok2")
        )
        s.sendto(unknown, target)
        data, _ = s.recvfrom(65535)
        assert data.startswith(b"SIP/2.0 501 "), data
    assert gateway.proc is not None and gateway.proc.poll() is None


def test_restart_with_memory_backend_keeps_bindings(tmp_path: Path) -> None:
    users = USERS[:50]
    node = UcgateProcess(tmp_path / "node", agents=users).start()
    try:
        csv = make_users_csv(tmp_path / "users.csv", [(u.id, u.password) for u in users])
        result = run_sipp(
            "register_auth",
            f"127.0.0.1:{node.sip_port}",
            users_csv=csv,
            rate=100,
            calls=len(users),
            timeout=60,
        )
        assert result.successful == len(users), result.summary()
        before = node.registrations()
        assert node.stop() == 0  # SIGTERM: clean shutdown, exit 0
        node.start()
        after = node.registrations()
        assert set(after) == set(before)
        assert len(after) == len(users)
    finally:
        node.stop()
