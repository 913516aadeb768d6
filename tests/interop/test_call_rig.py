"""Prove the call half of the SIP test rig before it is pointed at ucgate's B2BUA.

pjsua2 softphones call each other directly (no server: the Request-URI is the callee's contact)
and through Kamailio as a stateful proxy with a registrar and digest auth. Every phone plays its
own tone and detects the tone it receives, so "audio flows both ways" is an assertion, not a hope.
Each softphone process holds at most 4 calls (pjsua2's compiled-in PJSUA_MAX_CALLS).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree

import pytest

from sip_test_rig.kamailio import Kamailio
from sip_test_rig.media import DEFAULT_TONES, ToneDetector, sine_pcm16
from sip_test_rig.ports import free_port
from sip_test_rig.sipp_runner import SippResult, run_sipp, scenario_path
from sip_test_rig.softphone_client import Softphone, SoftphoneError

pytestmark = [pytest.mark.interop]

DOMAIN = "example.test"
TONE_A, TONE_B, TONE_C = DEFAULT_TONES[0], DEFAULT_TONES[2], DEFAULT_TONES[3]
#: 25 frames of 20 ms: the window in which an absent tone must stay absent.
QUIET_FRAMES = 25


def _phone(tone: int) -> Softphone:
    return Softphone(tone=tone)


@pytest.fixture
def phones() -> Iterator[tuple[Softphone, Softphone, Softphone]]:
    started: list[Softphone] = []
    try:
        for tone in (TONE_A, TONE_B, TONE_C):
            started.append(_phone(tone).start())
        yield started[0], started[1], started[2]
    finally:
        for phone in started:
            phone.stop()


def _assert_two_way(
    x: Softphone, x_call: int, x_hears: int, y: Softphone, y_call: int, y_hears: int
) -> None:
    # 10 s, as the gateway audio tests: media after a Replaces transfer can take a few
    # seconds to start on a 2-core machine busy with the rest of the suite.
    x.wait_tone(x_call, x_hears, timeout=10)
    y.wait_tone(y_call, y_hears, timeout=10)


def _connect(a: Softphone, b: Softphone, *, answer: int | None = 200) -> tuple[int, int, str]:
    """A calls B directly; returns (A's call, B's call, B's contact)."""
    a.local_account("a")
    _, contact = b.local_account("b", auto_answer=answer)
    call = a.make_call(contact, headers={"X-UCGate-Session": "rig-1"})
    incoming = b.wait_incoming()
    return call, int(incoming["call"]), contact


# -- the detector on its own ---------------------------------------------------------------


def test_detector_finds_a_tone_after_its_minimum_duration() -> None:
    det = ToneDetector((600, 1800), min_duration_ms=200)
    for i in range(9):
        det.feed(sine_pcm16(1800, phase=i))
    assert det.take_new_detections() == []
    det.feed(sine_pcm16(1800))
    assert det.take_new_detections() == [1800]
    report = det.report()
    assert report["detected"] == [1800] and report["frames"] == 10
    assert report["rx_freq_power"]["1800"] > 0.9 > 0.01 > report["rx_freq_power"]["600"]


def test_detector_ignores_silence_and_other_tones() -> None:
    det = ToneDetector((600, 1800))
    for _ in range(20):
        det.feed(sine_pcm16(1000))
        det.feed(sine_pcm16(600, amplitude=50))  # below the silence floor
        det.feed(b"\x00" * 320)
    assert det.take_new_detections() == [] and det.report()["detected"] == []
    det.feed(sine_pcm16(600))
    det.reset()
    assert det.report()["frames"] == 0


# -- direct phone-to-phone --------------------------------------------------------------------


def test_direct_call_two_way_audio_dtmf_hold_resume(
    phones: tuple[Softphone, Softphone, Softphone],
) -> None:
    a, b, _ = phones
    call_a, call_b, _ = _connect(a, b)
    incoming = next(e for e in b.history if e.get("event") == "incoming_call")
    assert incoming["headers"].get("X-UCGate-Session") == "rig-1"
    assert a.wait_call_state(call_a, "confirmed")["code"] == 200
    _assert_two_way(a, call_a, TONE_B, b, call_b, TONE_A)
    report = a.audio_report(call_a)
    assert TONE_A not in report["detected"], report  # hears the peer, not itself

    a.dial_dtmf(call_a, "19#")
    got = [b.wait_call_event("dtmf_received", call_b)["digit"] for _ in range(3)]
    assert got == ["1", "9", "#"]
    a.dial_dtmf(call_a, "5", method="info")
    info = b.wait_call_event("dtmf_received", call_b)
    assert (info["digit"], info["method"]) == ("5", "info")

    a.hold(call_a)
    a.wait_call_event("media_state", call_a, status="local_hold")
    b.wait_call_event("media_state", call_b, status="remote_hold")
    a.reset_audio(call_a)
    quiet = a.wait_frames(call_a, QUIET_FRAMES)
    assert TONE_B not in quiet["detected"], quiet  # sendonly: the holder hears nothing back

    a.resume(call_a)
    a.wait_call_event("media_state", call_a, status="active")
    b.wait_call_event("media_state", call_b, status="active")
    a.reset_audio(call_a)
    b.reset_audio(call_b)
    _assert_two_way(a, call_a, TONE_B, b, call_b, TONE_A)

    a.hangup(call_a)
    assert b.wait_call_state(call_b, "disconnected")["code"] == 200
    a.wait_call_state(call_a, "disconnected")


def test_direct_cancel_before_answer(phones: tuple[Softphone, Softphone, Softphone]) -> None:
    a, b, _ = phones
    call_a, call_b, _ = _connect(a, b, answer=None)
    assert a.wait_call_state(call_a, "early")["code"] == 180
    a.hangup(call_a)  # before a final response: CANCEL (RFC 3261 §9)
    assert a.wait_call_state(call_a, "disconnected")["code"] == 487
    assert b.wait_call_state(call_b, "disconnected")["code"] == 487


def test_direct_busy(phones: tuple[Softphone, Softphone, Softphone]) -> None:
    a, b, _ = phones
    call_a, _, _ = _connect(a, b, answer=486)
    state = a.wait_call_state(call_a, "disconnected")
    assert state["code"] == 486, a.history


def test_direct_blind_transfer(phones: tuple[Softphone, Softphone, Softphone]) -> None:
    """A talks to B, then REFERs B to C: B calls C, B and C hear each other."""
    a, b, c = phones
    call_a, call_b, _ = _connect(a, b)
    a.wait_call_state(call_a, "confirmed")
    _, contact_c = c.local_account("c", auto_answer=200)
    a.transfer(call_a, contact_c)
    request = b.wait_call_event("transfer_request", call_b)
    new_b = int(request["new_call"])
    call_c = int(c.wait_incoming()["call"])
    b.wait_call_state(new_b, "confirmed")
    _assert_two_way(b, new_b, TONE_C, c, call_c, TONE_B)
    status = a.wait_call_event("transfer_status", call_a, final=True, timeout=10)
    assert status["code"] == 200
    a.hangup(call_a)
    b.wait_call_state(call_b, "disconnected")
    b.hangup(new_b)
    c.wait_call_state(call_c, "disconnected")


def test_direct_attended_transfer(phones: tuple[Softphone, Softphone, Softphone]) -> None:
    """A talks to B and to C, then transfers B to C with Replaces: B and C end up talking."""
    a, b, c = phones
    call_ab, call_b, _ = _connect(a, b)
    a.wait_call_state(call_ab, "confirmed")
    _, contact_c = c.local_account("c", auto_answer=200)
    call_ac = a.make_call(contact_c)
    call_c = int(c.wait_incoming()["call"])
    a.wait_call_state(call_ac, "confirmed")
    a.transfer_attended(call_ab, call_ac)
    new_b = int(b.wait_call_event("transfer_request", call_b)["new_call"])
    new_c = int(c.wait_call_event("call_replaced", call_c)["new_call"])
    b.wait_call_state(new_b, "confirmed")
    _assert_two_way(b, new_b, TONE_C, c, new_c, TONE_B)
    # The replaced dialog A-C is ended by C (RFC 3891 §3: BYE to the replaced dialog).
    a.wait_call_state(call_ac, "disconnected", timeout=10)
    b.hangup(new_b)
    c.wait_call_state(new_c, "disconnected")


def test_softphone_refuses_bad_call_commands(
    phones: tuple[Softphone, Softphone, Softphone],
) -> None:
    a, _, _ = phones
    a.local_account("a")
    with pytest.raises(SoftphoneError, match="no call"):
        a.hangup(99)
    with pytest.raises(SoftphoneError, match="'uri' is required"):
        a.request("make_call")
    call = a.make_call("sip:nobody@127.0.0.1:9")
    with pytest.raises(SoftphoneError, match="digits"):
        a.dial_dtmf(call, "x")


# -- through Kamailio (stateful proxy + registrar + digest auth) ------------------------------

PROXY_TEMPLATE = Path(__file__).resolve().parents[2] / "sip_test_rig/kamailio_proxy.cfg.tmpl"
USERS = [("alice", "alice-pw-1"), ("bob", "bob-pw-2")]


@pytest.fixture(scope="module")
def proxy() -> Iterator[Kamailio]:
    with Kamailio(USERS, domain=DOMAIN, template=PROXY_TEMPLATE) as server:
        yield server


def test_call_through_kamailio_with_auth_and_two_way_audio(
    proxy: Kamailio, phones: tuple[Softphone, Softphone, Softphone]
) -> None:
    a, b, _ = phones
    a.register(server=proxy.target, user="alice", password=USERS[0][1], domain=DOMAIN, proxy=True)
    b.register(
        server=proxy.target,
        user="bob",
        password=USERS[1][1],
        domain=DOMAIN,
        proxy=True,
        auto_answer=200,
        answer_delay_ms=100,
    )
    a.wait_reg_state(code=200)
    b.wait_reg_state(code=200)
    call_a = a.make_call(f"sip:bob@{DOMAIN}", headers={"X-UCGate-Session": "via-proxy"})
    incoming = b.wait_incoming()
    call_b = int(incoming["call"])
    assert incoming["remote_uri"] == f"<sip:alice@{DOMAIN}>"
    assert incoming["headers"]["X-UCGate-Session"] == "via-proxy"
    assert a.wait_call_state(call_a, "early")["code"] == 180
    a.wait_call_state(call_a, "confirmed")
    _assert_two_way(a, call_a, TONE_B, b, call_b, TONE_A)
    b.hangup(call_b)  # BYE from the callee follows the Record-Route set back through Kamailio
    assert a.wait_call_state(call_a, "disconnected")["code"] == 200


def test_kamailio_refuses_a_caller_with_a_wrong_password(
    proxy: Kamailio, phones: tuple[Softphone, Softphone, Softphone]
) -> None:
    a, _, _ = phones
    a.local_account("alice", domain=DOMAIN, password="wrong", proxy=f"sip:{proxy.target};lr")
    call = a.make_call(f"sip:bob@{DOMAIN}")
    state = a.wait_call_state(call, "disconnected")
    assert state["code"] in (401, 407), a.history
    assert "wrong" not in a.log_text()


# -- sipp call scenarios ------------------------------------------------------------------------


def _sipp_pair(
    uac: str, uas: str, target_port: int, *, via: str | None, tmp_path: Path, hold_ms: int = 200
) -> tuple[SippResult, SippResult]:
    """Run ``uas`` on ``target_port`` and ``uac`` against it (through ``via`` if given)."""
    results: dict[str, SippResult] = {}

    def serve() -> None:
        results["uas"] = run_sipp(
            uas,
            f"127.0.0.1:{target_port}",
            calls=1,
            timeout=20,
            extra_args=["-p", str(target_port)],
            workdir=tmp_path / "uas",
        )

    thread = threading.Thread(target=serve, name="sipp-uas")
    thread.start()
    extra = ["-d", str(hold_ms)] + (["-rsa", via] if via else [])
    # The UAS must listen before the UAC sends: sipp retransmits the INVITE (T1 = 500 ms) anyway.
    results["uac"] = run_sipp(
        uac,
        f"127.0.0.1:{target_port}",
        calls=1,
        timeout=15,
        variables={"did": "+15550100"},
        extra_args=extra,
        workdir=tmp_path / "uac",
    )
    thread.join(timeout=40)
    assert not thread.is_alive()
    return results["uac"], results["uas"]


@pytest.mark.parametrize(("uac", "uas"), [("uac_call", "uas_call"), ("uac_cancel", "uas_noanswer")])
def test_sipp_scenarios_through_kamailio(
    proxy: Kamailio, tmp_path: Path, uac: str, uas: str
) -> None:
    uac_res, uas_res = _sipp_pair(uac, uas, free_port(), via=proxy.target, tmp_path=tmp_path)
    for res in (uac_res, uas_res):
        assert (res.successful, res.failed) == (1, 0), res.summary()


def test_sipp_bad_sdp_is_refused_with_488(phones: tuple[Softphone, Softphone, Softphone]) -> None:
    _, b, _ = phones
    b.local_account("+15550100", auto_answer=200)
    result = run_sipp(
        "uac_bad_sdp",
        f"127.0.0.1:{b.udp_port}",
        calls=1,
        timeout=15,
        variables={"did": "+15550100"},
    )
    assert (result.successful, result.failed) == (1, 0), result.summary()


def test_softphone_gets_486_from_sipp(
    phones: tuple[Softphone, Softphone, Softphone], tmp_path: Path
) -> None:
    a, _, _ = phones
    a.local_account("a")
    port = free_port()
    out: list[SippResult] = []
    thread = threading.Thread(
        target=lambda: out.append(
            run_sipp(
                "uas_486", f"127.0.0.1:{port}", calls=1, timeout=15, extra_args=["-p", str(port)]
            )
        )
    )
    thread.start()
    call = a.make_call(f"sip:busy@127.0.0.1:{port}")
    assert a.wait_call_state(call, "disconnected", timeout=10)["code"] == 486
    thread.join(timeout=30)
    assert out and out[0].successful == 1, out


def test_every_call_scenario_is_well_formed() -> None:
    for name in ("uac_call", "uas_call", "uac_cancel", "uas_noanswer", "uas_486", "uac_bad_sdp"):
        root = ElementTree.parse(scenario_path(name)).getroot()
        assert root.tag == "scenario" and root.get("name") == name
