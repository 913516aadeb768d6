"""Client transactions (RFC 3261 §17.1, RFC 6026 §8.4), driven directly: no layer, no
sockets, time stepped by hand."""

from __future__ import annotations

import pytest

from ucgate.sip.fields import cseq, to, top_via
from ucgate.sip.message import Headers, Request, Response
from ucgate.sip.peer import Peer, TransportKind
from ucgate.sip.transaction.client import (
    INVITE_CLIENT_TABLE,
    NON_INVITE_CLIENT_TABLE,
    InviteClientState,
    InviteClientTransaction,
    NonInviteClientState,
    NonInviteClientTransaction,
)
from ucgate.sip.transaction.events import (
    ResponseReceived,
    TransactionTerminated,
    TransactionTimedOut,
    TransportErrorOccurred,
)
from ucgate.sip.transaction.key import client_key
from ucgate.sip.transaction.timers import TimerConfig
from ucgate.sip.uas_checks import make_response

CFG = TimerConfig()
UDP = Peer(TransportKind.UDP, "192.0.2.10", 5060)
TCP = Peer(TransportKind.TCP, "192.0.2.10", 5060, flow=7)


def make_request(method: str = "INVITE", branch: str = "z9hG4bKclient1") -> Request:
    headers = Headers(
        [
            ("Via", f"SIP/2.0/UDP 192.0.2.1:5060;rport;branch={branch}"),
            ("Route", "<sip:p1.example.net;lr>"),
            ("Route", "<sip:p2.example.net;lr>"),
            ("Max-Forwards", "70"),
            ("From", "Alice <sip:alice@example.com>;tag=a1"),
            ("To", "Bob <sip:bob@example.net>"),
            ("Call-ID", "call-1@example.com"),
            ("CSeq", f"4711 {method}"),
            ("Contact", "<sip:alice@192.0.2.1>"),
        ]
    )
    return Request(method, "sip:bob@example.net", headers)


def invite_tx(peer: Peer = UDP) -> InviteClientTransaction:
    req = make_request("INVITE")
    tx = InviteClientTransaction(client_key(req), req, peer, CFG)
    tx.start(0.0)
    assert tx.outbox == [req]
    tx.outbox.clear()
    return tx


def non_invite_tx(peer: Peer = UDP) -> NonInviteClientTransaction:
    req = make_request("OPTIONS")
    tx = NonInviteClientTransaction(client_key(req), req, peer, CFG)
    tx.start(0.0)
    tx.outbox.clear()
    return tx


def step_until(tx: InviteClientTransaction | NonInviteClientTransaction, end: float) -> list[float]:
    """Fire every deadline up to ``end``; return the times a message went out."""
    sent: list[float] = []
    while (at := tx.next_deadline()) is not None and at <= end:
        tx.handle_timer(at)
        if tx.outbox:
            sent.append(at)
            tx.outbox.clear()
    return sent


def response(req: Request, status: int, tag: str | None = "b1") -> Response:
    return make_response(req, status, to_tag=tag)


# ------------------------------------------------------------------ INVITE client


def test_timer_a_doubles_without_cap_then_timer_b_times_out_with_408() -> None:
    tx = invite_tx()
    sent = step_until(tx, 31.9)
    # §17.1.1.2: intervals 0.5, 1, 2, 4, 8, 16 (A is not capped at T2).
    assert sent == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert not tx.terminated
    tx.handle_timer(32.0)
    assert tx.terminated
    timeout, terminated = tx.events
    assert isinstance(timeout, TransactionTimedOut)
    assert timeout.response is not None and timeout.response.status == 408
    assert cseq(timeout.response).method == "INVITE"
    assert terminated == TransactionTerminated(tx.key)


def test_reliable_transport_never_retransmits_invite() -> None:
    tx = invite_tx(TCP)
    assert step_until(tx, 31.9) == []
    tx.handle_timer(32.0)
    assert tx.terminated


def test_provisional_stops_timers_a_and_b() -> None:
    tx = invite_tx()
    tx.handle_timer(0.5)
    tx.outbox.clear()
    tx.receive_response(response(tx.request, 180), 0.7)
    assert tx.state is InviteClientState.PROCEEDING
    assert isinstance(tx.events[-1], ResponseReceived)
    # Only Timer C (180 s) is left: no retransmission, no Timer B at 32 s.
    assert tx.next_deadline() == pytest.approx(0.7 + 180.0)
    assert step_until(tx, 100.0) == []
    assert not tx.terminated


def test_non_2xx_final_is_acked_per_17_1_1_3() -> None:
    tx = invite_tx()
    busy = response(tx.request, 486, tag="callee-tag")
    tx.receive_response(busy, 1.0)
    assert tx.state is InviteClientState.COMPLETED
    (ack,) = tx.outbox
    assert isinstance(ack, Request) and ack.method == "ACK"
    assert ack.uri == tx.request.uri
    assert ack.headers.values("Via") == tx.request.headers.values("Via")[:1]
    assert top_via(ack).branch == top_via(tx.request).branch
    assert to(ack).tag == "callee-tag"
    assert ack.headers.get("From") == tx.request.headers.get("From")
    assert ack.headers.get("Call-ID") == tx.request.headers.get("Call-ID")
    assert ack.headers.get("CSeq") == "4711 ACK"
    assert ack.headers.get_all("Route") == tx.request.headers.get_all("Route")
    assert [type(e) for e in tx.events] == [ResponseReceived]


def test_retransmitted_final_in_completed_resends_ack_without_event() -> None:
    tx = invite_tx()
    busy = response(tx.request, 486)
    tx.receive_response(busy, 1.0)
    first_ack = tx.outbox.pop()
    tx.events.clear()
    tx.receive_response(busy, 2.0)
    assert tx.outbox == [first_ack]
    assert tx.events == []


def test_timer_d_is_32s_on_udp_and_zero_on_tcp() -> None:
    udp = invite_tx()
    udp.receive_response(response(udp.request, 603), 1.0)
    udp.handle_timer(32.9)
    assert not udp.terminated
    udp.handle_timer(33.0)
    assert udp.terminated

    tcp = invite_tx(TCP)
    tcp.receive_response(response(tcp.request, 603), 1.0)
    assert tcp.terminated  # §17.1.1.2: Timer D is zero on reliable transports


def test_accepted_state_passes_every_2xx_and_flags_retransmissions() -> None:
    tx = invite_tx()
    ok = response(tx.request, 200, tag="fork-1")
    tx.receive_response(ok, 1.0)
    assert tx.state is InviteClientState.ACCEPTED
    tx.receive_response(ok, 1.5)
    tx.receive_response(response(tx.request, 200, tag="fork-2"), 2.0)
    tx.receive_response(response(tx.request, 180, tag="fork-3"), 2.1)  # ignored
    tx.receive_response(response(tx.request, 486, tag="fork-4"), 2.2)  # ignored
    passed = [e for e in tx.events if isinstance(e, ResponseReceived)]
    flags = [(e.response.status, e.retransmission) for e in passed]
    assert flags == [(200, False), (200, True), (200, False)]
    assert tx.outbox == []  # the 2xx ACK is the TU's job (§13.2.2.4)
    tx.handle_timer(1.0 + CFG.m - 0.01)
    assert not tx.terminated
    tx.handle_timer(1.0 + CFG.m)
    assert tx.terminated


def test_transport_error_gives_synthetic_503() -> None:
    tx = invite_tx()
    tx.transport_error(0.1)
    assert tx.terminated
    err = tx.events[0]
    assert isinstance(err, TransportErrorOccurred)
    assert err.response is not None and err.response.status == 503


def test_cancel_is_built_per_9_1() -> None:
    tx = invite_tx()
    cancel = tx.build_cancel()
    assert cancel.method == "CANCEL"
    assert cancel.uri == tx.request.uri
    assert cancel.headers.values("Via") == tx.request.headers.values("Via")[:1]
    assert cancel.headers.get("CSeq") == "4711 CANCEL"
    for name in ("From", "To", "Call-ID"):
        assert cancel.headers.get(name) == tx.request.headers.get(name)
    assert cancel.headers.get_all("Route") == tx.request.headers.get_all("Route")


def test_can_cancel_only_in_proceeding() -> None:
    tx = invite_tx()
    assert not tx.can_cancel
    tx.receive_response(response(tx.request, 183), 0.2)
    assert tx.can_cancel
    tx.receive_response(response(tx.request, 487), 0.3)
    assert not tx.can_cancel


# ------------------------------------------------------------------ non-INVITE client


def test_timer_e_backs_off_to_t2_then_timer_f() -> None:
    tx = non_invite_tx()
    sent = step_until(tx, 31.9)
    # §17.1.2.2: 0.5, 1, 2, 4, 4, 4 ... (capped at T2 = 4 s).
    assert sent == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    tx.handle_timer(32.0)
    assert tx.terminated
    timeout = tx.events[0]
    assert isinstance(timeout, TransactionTimedOut)
    assert timeout.response is not None and timeout.response.status == 408


def test_timer_e_is_t2_in_proceeding() -> None:
    tx = non_invite_tx()
    tx.handle_timer(0.5)  # first retransmission; next E at 1.5
    tx.receive_response(response(tx.request, 100, tag=None), 0.6)
    assert tx.state is NonInviteClientState.PROCEEDING
    tx.outbox.clear()
    assert step_until(tx, 14.0) == [1.5, 5.5, 9.5, 13.5]


def test_final_completes_absorbs_retransmissions_then_timer_k() -> None:
    tx = non_invite_tx()
    ok = response(tx.request, 200)
    tx.receive_response(ok, 1.0)
    tx.receive_response(ok, 1.1)
    tx.receive_response(response(tx.request, 180), 1.2)
    assert [type(e) for e in tx.events] == [ResponseReceived]
    assert tx.next_deadline() == 1.0 + CFG.t4
    tx.handle_timer(6.0)
    assert tx.terminated


def test_non_invite_reliable_no_retransmission_and_k_zero() -> None:
    tx = non_invite_tx(TCP)
    assert step_until(tx, 31.0) == []
    tx.receive_response(response(tx.request, 200), 31.0)
    assert tx.terminated


def test_non_invite_transport_error() -> None:
    tx = non_invite_tx()
    tx.transport_error(0.1)
    assert tx.terminated
    assert isinstance(tx.events[0], TransportErrorOccurred)


# ------------------------------------------------------------------ tables


@pytest.mark.parametrize(
    ("table", "terminated"),
    [
        (INVITE_CLIENT_TABLE, InviteClientState.TERMINATED),
        (NON_INVITE_CLIENT_TABLE, NonInviteClientState.TERMINATED),
    ],
)
def test_tables_have_no_exit_from_terminated(table: dict, terminated: object) -> None:  # type: ignore[type-arg]
    assert all(state is not terminated for state, _ in table)
    assert any(next_state is terminated for _, next_state in table.values())
