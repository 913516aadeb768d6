"""Calls through the B2BUA between two sipp instances: a trunk UAC and an agent's UAS.

The sipp UAC calls from 127.0.0.1, an address of trunk ``pbx1``, so it is the trunk (no
digest) and dials the DID ``+15550100``; the DID rings agent ``alice``, whose only device is
a sipp UAS: the test registers ``alice`` *from the port the UAS then listens on* (the
B2BUA sends to a binding's source address), and only then starts the UAS. Every outcome is
asserted from sipp's own counters (``SippResult``), and after each scenario ucgate's log
must show as many calls ended as offered (no call left behind) and its HTTP side healthy.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sip_test_rig.ports import free_port
from sip_test_rig.sipp_runner import SippResult, run_sipp
from tests.support.raw_sip import RawSipClient
from tests.support.ucgate_process import Account, UcgateProcess
from ucgate.sip.message import Request

pytestmark = pytest.mark.interop

ALICE = Account("alice", "alice-Pa55word")
PBX = Account("pbx1", "pbx1-Pa55word", allowed_ips=("127.0.0.1",))
DID = "+15550100"
DID_VARS = {"did": DID}
#: Bound for one sipp run; every scenario here needs well under 10 s.
SIPP_TIMEOUT = 30.0


def tail(ring_timeout: int) -> str:
    return f"""
[[dids]]
number = "{DID}"
target = "agent:alice"
[calls]
ring_timeout = {ring_timeout}
"""


def start_node(workdir: Path, ring_timeout: int) -> UcgateProcess:
    return UcgateProcess(workdir, agents=[ALICE], trunks=[PBX], tail=tail(ring_timeout)).start()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[UcgateProcess]:
    n = start_node(tmp_path / "n", ring_timeout=10)
    try:
        yield n
    finally:
        n.stop()


# -- helpers ----------------------------------------------------------------------------------


def _bound(port: int, transport: str) -> bool:
    """True once something listens on 127.0.0.1:``port`` (read from /proc/net)."""
    wanted = f"0100007F:{port:04X}"
    table = "/proc/net/udp" if transport == "udp" else "/proc/net/tcp"
    with open(table, encoding="ascii") as f:
        for line in list(f)[1:]:
            fields = line.split()
            # TCP state 0A is LISTEN; any UDP socket bound to the address will do.
            if fields[1] == wanted and (transport == "udp" or fields[3] == "0A"):
                return True
    return False


def register_device(node: UcgateProcess, port: int, transport: str) -> None:
    """Register ``alice`` from 127.0.0.1:``port``, then free the port for the UAS."""
    dev = RawSipClient(transport, node.sip_port, local_port=port)
    try:
        ok = dev.register_with_auth(ALICE.id, ALICE.password, algorithm="MD5")
        assert ok.status == 200, ok
    finally:
        # TCP: RST instead of FIN, so no TIME_WAIT keeps the UAS from listening on the port.
        dev.close(reset=True)
    contacts = node.registrations()[f"sip:{ALICE.id}@example.test"]
    assert len(contacts) == 1, contacts


class SippUas:
    """A sipp UAS registered as ``alice``, running ``calls`` calls of ``scenario`` in a thread.

    sipp itself is bounded (``-timeout``, and the runner kills it by PID), so joining the thread
    is bounded too; ``result()`` is the UAS's final counters.
    """

    def __init__(
        self,
        node: UcgateProcess,
        scenario: str,
        *,
        calls: int = 1,
        transport: str = "udp",
        timeout: float = SIPP_TIMEOUT,
        port: int | None = None,
    ) -> None:
        # Reusing a finished UAS's port refreshes the same binding instead of adding one.
        self.port = port or free_port()
        self.transport = transport
        self.timeout = timeout
        self._out: list[SippResult] = []
        self._failure: list[BaseException] = []
        register_device(node, self.port, transport)

        def run() -> None:
            try:
                self._out.append(
                    run_sipp(
                        scenario,
                        f"127.0.0.1:{node.sip_port}",
                        calls=calls,
                        transport=transport,
                        timeout=timeout,
                        # The runner picks a free -p; a later -p wins: the registered port.
                        extra_args=["-p", str(self.port)],
                        max_open_calls=calls,
                    )
                )
            except BaseException as exc:  # reported by result(), not lost in the thread
                self._failure.append(exc)

        self._thread = threading.Thread(target=run, name=f"sipp-uas-{scenario}", daemon=True)
        self._thread.start()
        self._wait_listening()

    def _wait_listening(self) -> None:
        done = threading.Event()
        for _ in range(500):  # bounded: 500 x 10 ms
            if _bound(self.port, self.transport):
                return
            if not self._thread.is_alive():
                break
            done.wait(0.01)
        raise AssertionError(f"the sipp UAS never listened on {self.port}: {self.result()}")

    def result(self) -> SippResult:
        self._thread.join(self.timeout + 30)
        assert not self._thread.is_alive(), "sipp UAS still running after its bound"
        if self._failure:
            raise self._failure[0]
        return self._out[0]


def uac(
    node: UcgateProcess,
    scenario: str,
    *,
    calls: int = 1,
    rate: float = 10,
    transport: str = "udp",
    extra_args: tuple[str, ...] = (),
) -> SippResult:
    return run_sipp(
        scenario,
        f"127.0.0.1:{node.sip_port}",
        calls=calls,
        rate=rate,
        transport=transport,
        timeout=SIPP_TIMEOUT,
        variables=DID_VARS,
        extra_args=extra_args,
    )


def nth(event: str, n: int) -> Callable[[dict[str, object]], bool]:
    """A ``wait_log`` predicate true at the ``n``-th log line whose event is ``event``."""
    seen = [0]

    def pred(entry: dict[str, object]) -> bool:
        if entry.get("event") == event:
            seen[0] += 1
        return seen[0] >= n

    return pred


def count(node: UcgateProcess, event: str) -> int:
    return sum(1 for e in list(node.lines) if e.get("event") == event)


def call_records(node: UcgateProcess) -> list[dict[str, object]]:
    status, page = node.http_get("/v1/calls?limit=1000", key=node.api_key)
    assert status == 200 and isinstance(page, dict), page
    records: list[dict[str, object]] = page["calls"]
    return records


def assert_no_call_left(node: UcgateProcess, offered: int) -> None:
    """Every call the B2BUA offered has ended (and its record was written); ucgate is up."""
    node.wait_log(nth("call.offered", offered), 10)
    node.wait_log(nth("call.ended", offered), 10)
    assert count(node, "call.offered") == offered, node.log_text()
    assert count(node, "call.ended") == offered, node.log_text()
    assert node.proc is not None and node.proc.poll() is None
    records = call_records(node)
    assert len(records) == offered, records
    assert all(r["end_reason"] is not None for r in records), records
    status, doc = node.http_get(f"/v1/presence/{ALICE.id}", key=node.api_key)
    assert status == 200 and isinstance(doc, dict) and doc["voice"] != "on_call", doc


def ok(result: SippResult, calls: int) -> None:
    assert (result.successful, result.failed) == (calls, 0), result.summary()
    assert result.returncode == 0, result.summary()


# -- (a) many calls, UDP and TCP --------------------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_twenty_calls_all_succeed(node: UcgateProcess, transport: str) -> None:
    uas = SippUas(node, "uas_call", calls=20, transport=transport)
    caller = uac(node, "uac_call", calls=20, rate=20, transport=transport, extra_args=("-d", "200"))
    ok(caller, 20)
    ok(uas.result(), 20)
    assert caller.created == 20
    assert_no_call_left(node, offered=20)
    assert {r["end_reason"] for r in call_records(node)} == {"caller_bye"}


# -- (b) CANCEL before the answer --------------------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_cancel_before_answer_reaches_the_callee_and_leaves_nothing(
    node: UcgateProcess, transport: str
) -> None:
    first = SippUas(node, "uas_noanswer", transport=transport)
    # uac_cancel needs 180, then 200 for its CANCEL and 487 for its INVITE (RFC 3261 §9.2).
    ok(uac(node, "uac_cancel", transport=transport), 1)
    # uas_noanswer succeeds only when the CANCEL arrived and its 487 was ACKed.
    ok(first.result(), 1)
    assert_no_call_left(node, offered=1)
    # The process is still fine for a normal call afterwards.
    uas = SippUas(node, "uas_call", port=first.port, transport=transport)
    ok(uac(node, "uac_call", transport=transport, extra_args=("-d", "100")), 1)
    ok(uas.result(), 1)
    assert_no_call_left(node, offered=2)


# -- (c) busy ----------------------------------------------------------------------------------


def test_busy_callee_gives_the_caller_486(node: UcgateProcess) -> None:
    uas = SippUas(node, "uas_486")
    ok(uac(node, "uac_busy"), 1)
    ok(uas.result(), 1)
    assert_no_call_left(node, offered=1)


# -- (d) ring timeout -------------------------------------------------------------------------


def test_ring_timeout_cancels_the_callee_and_gives_the_caller_480(tmp_path: Path) -> None:
    quick = start_node(tmp_path / "quick", ring_timeout=2)
    try:
        uas = SippUas(quick, "uas_noanswer")
        caller = uac(quick, "uac_unavailable")
        ok(caller, 1)
        # The 480 came from the ring timeout (2 s), not from an early failure.
        assert caller.elapsed >= 1.5, caller.summary()
        # The ringing device got the B2BUA's CANCEL (uas_noanswer requires it).
        ok(uas.result(), 1)
        assert_no_call_left(quick, offered=1)
        quick.wait_log(lambda e: e.get("event") == "call.no_answer", 5)
    finally:
        quick.stop()


# -- (e) SDP that does not parse -----------------------------------------------------------------


def test_syntactically_broken_sdp_is_488_and_never_reaches_the_callee(
    node: UcgateProcess,
) -> None:
    # The callee is a raw socket so that "no INVITE arrived" is checkable without waiting:
    # after the refused call, a good one is sent; the first INVITE the device sees must be
    # that good one (UDP on loopback keeps the order, and the B2BUA handles one at a time).
    dev = RawSipClient("udp", node.sip_port)
    trunk = RawSipClient("udp", node.sip_port)
    try:
        assert dev.register_with_auth(ALICE.id, ALICE.password, algorithm="MD5").status == 200
        ok(uac(node, "uac_bad_sdp_syntax"), 1)
        good_sdp = (
            b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            b"m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        )
        trunk.request(
            "INVITE",
            f"sip:{DID}@example.test",
            [
                ("From", "<sip:+15551234567@pbx.example>;tag=t1"),
                ("To", f"<sip:{DID}@example.test>"),
                ("Call-ID", "good-after-bad"),
                ("CSeq", "1 INVITE"),
                ("Contact", f"<sip:pbx@127.0.0.1:{trunk.local_port}>"),
                ("Content-Type", "application/sdp"),
            ],
            body=good_sdp,
        )
        first = dev.recv_any()
        assert isinstance(first, Request) and first.method == "INVITE", first
        assert first.body == good_sdp, first  # not the broken offer
        dev.respond(first, 486, "Busy Here")
        while getattr(msg := trunk.recv_any(), "status", 0) < 200:
            pass
        assert getattr(msg, "status", None) == 486, msg
        # Only the good call was ever offered: the broken one created no call and no leg.
        assert_no_call_left(node, offered=1)
    finally:
        dev.close()
        trunk.close()


# -- (f) re-INVITE: hold relayed, and glare ---------------------------------------------------


def test_hold_reinvite_from_the_caller_is_relayed_and_answered(node: UcgateProcess) -> None:
    uas = SippUas(node, "uas_reinvite")
    # uac_reinvite needs the UAS's recvonly answer back; uas_reinvite needs the sendonly offer.
    ok(uac(node, "uac_reinvite"), 1)
    ok(uas.result(), 1)
    assert_no_call_left(node, offered=1)
    # The B2BUA saw the sendonly offer cross: the record has exactly one hold, closed at
    # the end of the call.
    (record,) = call_records(node)
    holds = record["holds"]
    assert isinstance(holds, list) and len(holds) == 1 and holds[0]["end"] is not None, record


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_reinvite_glare_is_491_on_both_sides_and_the_retry_succeeds(
    node: UcgateProcess, transport: str
) -> None:
    # The UAS crosses the relayed hold with its own re-INVITE and answers it 491; the B2BUA's
    # callee leg has its own re-INVITE outstanding, so it answers the UAS's 491 (§14.2), and
    # relays the UAS's 491 to the caller, who retries after the §14.1 back-off.
    uas = SippUas(node, "uas_reinvite_glare", transport=transport)
    caller = uac(node, "uac_reinvite_glare", transport=transport)
    ok(caller, 1)
    ok(uas.result(), 1)
    assert caller.failures == {} and caller.dead_call_msgs == 0, caller.summary()
    assert_no_call_left(node, offered=1)
    (record,) = call_records(node)
    assert record["end_reason"] == "caller_bye", record
