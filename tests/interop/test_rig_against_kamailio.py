"""Prove the SIP test rig against a real registrar (Kamailio) before it is pointed at ucgate.

Kamailio runs on free loopback ports with an in-memory registrar and digest auth; the pjsua2
softphone and sipp must register, fail on a wrong password, and unregister through it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sip_test_rig.kamailio import Kamailio, users_range
from sip_test_rig.sipp_runner import make_users_csv, run_sipp
from sip_test_rig.softphone_client import Softphone, SoftphoneError

pytestmark = [
    pytest.mark.interop,
]
needs_sipp = pytest.mark.interop  # make test installs sipp; a missing one fails loudly
needs_pjsua2 = pytest.mark.interop  # pjsua2-python is a test dependency

DOMAIN = "example.test"
ALICE = ("alice", "alice:Secret-1")  # ":" exercises the db_text escaping
BULK = users_range(200)


@pytest.fixture(scope="module")
def kamailio() -> Iterator[Kamailio]:
    with Kamailio([ALICE, *BULK], domain=DOMAIN) as server:
        yield server


@pytest.fixture
def phone() -> Iterator[Softphone]:
    with Softphone() as softphone:
        yield softphone


@needs_pjsua2
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_softphone_registers_and_unregisters(
    kamailio: Kamailio, phone: Softphone, transport: str
) -> None:
    user, password = ALICE
    account = phone.register(
        server=kamailio.target,
        user=user,
        password=password,
        domain=DOMAIN,
        transport=transport,
        expires=300,
    )
    registered = phone.wait_reg_state(account=account, timeout=10)
    assert registered["code"] == 200, phone.history
    assert registered["active"] is True
    assert registered["expires"] == 300

    phone.unregister(account)
    removed = phone.wait_reg_state(account=account, timeout=10)
    assert removed["code"] == 200, phone.history
    assert removed["active"] is False
    assert removed["expires"] == 0


@needs_pjsua2
def test_softphone_reports_wrong_password(kamailio: Kamailio, phone: Softphone) -> None:
    account = phone.register(
        server=kamailio.target, user=ALICE[0], password="not-the-password", domain=DOMAIN
    )
    state = phone.wait_reg_state(account=account, timeout=10)
    assert state["code"] in (401, 403), phone.history
    assert state["active"] is False
    assert "not-the-password" not in phone.log_text()


@needs_pjsua2
def test_softphone_rejects_bad_commands(phone: Softphone) -> None:
    with pytest.raises(SoftphoneError, match="unknown command"):
        phone.request("no_such_command")
    with pytest.raises(SoftphoneError, match="'server' is required"):
        phone.request("register", user="x", password="y", domain=DOMAIN)
    assert phone.info()["udp_port"] == phone.udp_port


@needs_sipp
def test_sipp_registers_200_users_with_auth_over_udp(kamailio: Kamailio, tmp_path: Path) -> None:
    users_csv = make_users_csv(tmp_path / "users.csv", BULK)
    result = run_sipp(
        "register_auth",
        kamailio.target,
        users_csv=users_csv,
        rate=200,
        calls=len(BULK),
        transport="udp",
        timeout=30,
    )
    assert result.successful == 200, result.summary()
    assert result.failed == 0, result.summary()
    assert result.retransmissions == 0, result.summary()
    assert result.returncode == 0, result.summary()


@needs_sipp
def test_sipp_registers_and_unregisters_over_tcp(kamailio: Kamailio, tmp_path: Path) -> None:
    users_csv = make_users_csv(tmp_path / "users.csv", BULK[:50])
    for scenario in ("register_auth", "unregister"):
        result = run_sipp(
            scenario,
            kamailio.target,
            users_csv=users_csv,
            rate=100,
            calls=50,
            transport="tcp",
            timeout=30,
        )
        assert (result.successful, result.failed) == (50, 0), result.summary()


@needs_sipp
def test_sipp_counts_failures_on_wrong_password(kamailio: Kamailio, tmp_path: Path) -> None:
    users_csv = make_users_csv(tmp_path / "users.csv", [(u, p + "x") for u, p in BULK[:5]])
    result = run_sipp(
        "register_auth",
        kamailio.target,
        users_csv=users_csv,
        rate=50,
        calls=5,
        transport="udp",
        timeout=15,
    )
    assert (result.successful, result.failed) == (0, 5), result.summary()
    assert result.failures == {"FailedUnexpectedMessage": 5}
    assert result.returncode != 0


def test_users_csv_refuses_separator(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        make_users_csv(tmp_path / "u.csv", [("a;b", "pw")])
    path = make_users_csv(tmp_path / "u.csv", [("a", "p1"), ("b", "p2")])
    assert path.read_text() == "SEQUENTIAL\na;p1\nb;p2\n"
