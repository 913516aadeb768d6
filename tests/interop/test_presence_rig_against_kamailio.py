"""Prove the rig's presence tools against a real presence server (Kamailio) before ucgate.

Kamailio runs presence + presence_xml + presence_dialoginfo with an in-memory registrar and
digest auth (sip_test_rig/kamailio_presence.cfg.tmpl). The pjsua2 softphone must PUBLISH and
see another softphone's state through a Buddy subscription (RFC 3856, RFC 3903, RPID RFC 4480),
and the sipp SUBSCRIBE / PUBLISH scenarios must complete for many users at once.
"""

from __future__ import annotations

import itertools
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
ALICE = ("alice", "alice-Secret-1")
BOB = ("bob", "bob-Secret-2")
WATCHERS = users_range(60, prefix="w", width=3)
# Softphone tests take fresh users from this pool: Kamailio is shared by the module and a
# publication left behind by an earlier test (softphones exit without unpublishing) would be
# aggregated into the next test's NOTIFYs.
PHONE_USERS = users_range(20, prefix="p", width=3)
_next_phone_user = itertools.count()


@pytest.fixture(scope="module")
def kamailio() -> Iterator[Kamailio]:
    # Presence keeps ~13 KB per transaction for a while (KAMAILIO_BASELINE.md): 64 MB is
    # plenty for these few hundred requests.
    with Kamailio(
        [ALICE, BOB, *WATCHERS, *PHONE_USERS], domain=DOMAIN, presence=True, shm_mb=64
    ) as server:
        yield server


def watchers_csv(path: Path, users: list[tuple[str, str]], presentity: str) -> Path:
    """sipp injection file for the SUBSCRIBE scenarios: watcher;password;presentity."""
    rows = [f"{user};{password};{presentity}" for user, password in users]
    path.write_text("SEQUENTIAL\n" + "\n".join(rows) + "\n")
    return path


# -- pjsua2 softphones -----------------------------------------------------------------------


@pytest.fixture
def alice_and_bob(kamailio: Kamailio) -> Iterator[tuple[Softphone, Softphone, str]]:
    """Two registered softphones (fresh users) and the first one's presentity URI."""
    users = [PHONE_USERS[next(_next_phone_user)] for _ in range(2)]
    with Softphone() as alice, Softphone() as bob:
        for phone, (user, password) in zip((alice, bob), users, strict=True):
            account = phone.register(
                server=kamailio.target, user=user, password=password, domain=DOMAIN, proxy=True
            )
            assert phone.wait_reg_state(account=account, timeout=10)["code"] == 200
        yield alice, bob, f"sip:{users[0][0]}@{DOMAIN}"


@needs_pjsua2
def test_buddy_sees_published_state_changes(
    alice_and_bob: tuple[Softphone, Softphone, str],
) -> None:
    alice, bob, alice_uri = alice_and_bob
    alice.publish_presence(status="online", activity="busy", note="on the phone")
    bob.subscribe_buddy(alice_uri)
    # The first NOTIFY may carry the dummy document if it overtakes alice's PUBLISH: wait for
    # the published one, bounded.
    seen = bob.wait_buddy_state(uri=alice_uri, activity="busy", timeout=10)
    assert seen["status"] == "online", bob.history
    assert seen["note"] == "on the phone"
    assert seen["sub_state"] == "ACTIVE"

    alice.publish_presence(status="online", activity="away", note="lunch")
    seen = bob.wait_buddy_state(uri=alice_uri, activity="away", timeout=10)
    assert (seen["status"], seen["note"]) == ("online", "lunch"), bob.history

    alice.publish_presence(status="offline")
    seen = bob.wait_buddy_state(uri=alice_uri, status="offline", timeout=10)
    assert seen["sub_state"] == "ACTIVE"

    bob.unsubscribe_buddy(alice_uri)
    ended = bob.wait_buddy_state(uri=alice_uri, sub_state="TERMINATED", timeout=10)
    assert ended["sub_term_code"] == 200, bob.history
    # Once terminated, pjsua forgets the subscription (NULL) but keeps the buddy.
    assert bob.buddy_info(alice_uri)["sub_state"] in ("NULL", "TERMINATED")


@needs_pjsua2
def test_unpublish_removes_the_state(alice_and_bob: tuple[Softphone, Softphone, str]) -> None:
    alice, bob, alice_uri = alice_and_bob
    alice.publish_presence(status="online", activity="busy", note="unpublish me")
    bob.subscribe_buddy(alice_uri)
    bob.wait_buddy_state(uri=alice_uri, note="unpublish me", timeout=10)
    alice.unpublish()
    # With alice's only publication removed, Kamailio notifies its "no state" document.
    after = bob.wait_buddy_state(uri=alice_uri, status="offline", timeout=10)
    assert after["note"] != "unpublish me", bob.history


@needs_pjsua2
def test_presence_commands_reject_bad_input(
    alice_and_bob: tuple[Softphone, Softphone, str],
) -> None:
    alice, _, _ = alice_and_bob
    with pytest.raises(SoftphoneError, match="'uri' is required"):
        alice.request("subscribe_buddy")
    with pytest.raises(SoftphoneError, match="no buddy"):
        alice.unsubscribe_buddy("sip:nobody@example.test")
    with pytest.raises(SoftphoneError, match="activity must be one of"):
        alice.publish_presence(activity="sleeping")
    with pytest.raises(SoftphoneError, match="status must be one of"):
        alice.publish_presence(status="maybe")
    with pytest.raises(SoftphoneError, match="not publishing"):
        alice.unpublish()


# -- sipp scenarios --------------------------------------------------------------------------


@needs_sipp
@pytest.mark.parametrize("scenario", ["subscribe_presence", "subscribe_dialog"])
def test_sipp_watchers_subscribe_to_one_presentity(
    kamailio: Kamailio, tmp_path: Path, scenario: str
) -> None:
    users_csv = watchers_csv(tmp_path / "watchers.csv", WATCHERS[:50], ALICE[0])
    result = run_sipp(
        scenario,
        kamailio.target,
        users_csv=users_csv,
        rate=100,
        calls=50,
        timeout=30,
        # Digest uri == Request-URI, as a strict server (ucgate) requires.
        extra_args=["-auth_uri", f"{ALICE[0]}@{DOMAIN}"],
    )
    assert (result.successful, result.failed) == (50, 0), result.summary()
    assert result.retransmissions == 0, result.summary()
    assert result.returncode == 0, result.summary()


@needs_sipp
def test_sipp_subscribe_fails_on_wrong_password(kamailio: Kamailio, tmp_path: Path) -> None:
    wrong = [(user, password + "x") for user, password in WATCHERS[:3]]
    users_csv = watchers_csv(tmp_path / "watchers.csv", wrong, ALICE[0])
    result = run_sipp(
        "subscribe_presence", kamailio.target, users_csv=users_csv, rate=50, calls=3, timeout=15
    )
    assert (result.successful, result.failed) == (0, 3), result.summary()
    assert result.failures == {"FailedUnexpectedMessage": 3}


@needs_sipp
def test_sipp_publish_initial_refresh_modify_remove(kamailio: Kamailio, tmp_path: Path) -> None:
    users_csv = make_users_csv(tmp_path / "users.csv", WATCHERS[:40])
    result = run_sipp(
        "publish_presence", kamailio.target, users_csv=users_csv, rate=100, calls=40, timeout=30
    )
    assert (result.successful, result.failed) == (40, 0), result.summary()
    assert result.retransmissions == 0, result.summary()


@needs_sipp
def test_sipp_publish_one_presentity_from_many_devices(kamailio: Kamailio, tmp_path: Path) -> None:
    # How the scenario runs against a server that checks the digest uri: one user, -auth_uri.
    users_csv = make_users_csv(tmp_path / "users.csv", [BOB] * 10)
    result = run_sipp(
        "publish_presence",
        kamailio.target,
        users_csv=users_csv,
        rate=50,
        calls=10,
        timeout=30,
        extra_args=["-auth_uri", f"{BOB[0]}@{DOMAIN}"],
    )
    assert (result.successful, result.failed) == (10, 0), result.summary()


@needs_sipp
def test_sipp_bad_etag_scenario_reaches_the_conditional_request(
    kamailio: Kamailio, tmp_path: Path
) -> None:
    """RFC 3903 §6 step 3 wants 412; Kamailio 5.6 answers an unknown SIP-If-Match with 500.

    This pins the deviation (so a Kamailio that fixes it shows up here) and proves the
    scenario authenticates and sends the conditional request; against ucgate it must pass.
    """
    users_csv = make_users_csv(tmp_path / "users.csv", WATCHERS[:3])
    result = run_sipp(
        "publish_bad_etag", kamailio.target, users_csv=users_csv, rate=50, calls=3, timeout=15
    )
    assert (result.successful, result.failed) == (0, 3), result.summary()
    assert result.failures == {"FailedUnexpectedMessage": 3}, result.summary()
    assert "while expecting '412'" in result.errors_tail, result.summary()
    assert "SIP/2.0 500" in result.errors_tail, result.summary()
