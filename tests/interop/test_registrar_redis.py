"""Two real ucgate nodes sharing one real redis-server behave as one registrar."""

from __future__ import annotations

from pathlib import Path

import pytest

from sip_test_rig.sipp_runner import make_users_csv, run_sipp
from sip_test_rig.softphone_client import Softphone
from tests.support.ucgate_process import Account, UcgateProcess

pytestmark = [pytest.mark.interop, pytest.mark.redis]

USERS = [Account(f"r{i:03d}", f"redis-pw-{i:03d}") for i in range(1, 41)]
ALICE = Account("alice", "alice-Pa55word")


def test_binding_taken_on_node_a_is_seen_on_node_b_and_survives_restart(
    tmp_path: Path, redis_url: str
) -> None:
    agents = [ALICE, *USERS]
    a = UcgateProcess(
        tmp_path / "a",
        agents=agents,
        backend="redis",
        redis_url=redis_url,
        node_id="node-a",
        persist=False,
    )
    b = UcgateProcess(
        tmp_path / "b",
        agents=agents,
        backend="redis",
        redis_url=redis_url,
        node_id="node-b",
        persist=False,
    )
    a.start()
    try:
        b.start()
        with Softphone() as phone:
            phone.register(
                server=f"127.0.0.1:{a.sip_port}",
                transport="udp",
                user=ALICE.id,
                password=ALICE.password,
                domain="example.test",
                expires=300,
            )
            ev = phone.wait_event(lambda e: e.get("event") == "reg_state", 15)
            assert ev["code"] == 200, phone.history
            seen_on_b = b.registrations()["sip:alice@example.test"]
            assert len(seen_on_b) == 1 and seen_on_b[0]["node"] == "node-a"

            csv = make_users_csv(tmp_path / "users.csv", [(u.id, u.password) for u in USERS])
            result = run_sipp(
                "register_auth",
                f"127.0.0.1:{b.sip_port}",
                users_csv=csv,
                rate=100,
                calls=len(USERS),
                timeout=60,
            )
            assert result.successful == len(USERS), result.summary()

            assert a.stop() == 0
            a.start()
            regs = a.registrations()
            assert "sip:alice@example.test" in regs
            assert all(f"sip:{u.id}@example.test" in regs for u in USERS)
    finally:
        a.stop()
        b.stop()
