"""Server transactions (RFC 3261 §17.2, RFC 6026 §8.5-§8.7), driven directly."""

from __future__ import annotations

import pytest

from ucgate.sip.errors import LocalProtocolError
from ucgate.sip.message import Headers, Request, Response
from ucgate.sip.peer import Peer, TransportKind
from ucgate.sip.transaction.events import (
    AckReceived,
    TransactionTerminated,
    TransactionTimedOut,
    TransportErrorOccurred,
)
from ucgate.sip.transaction.key import server_key
from ucgate.sip.transaction.server import (
    INVITE_SERVER_TABLE,
    NON_INVITE_SERVER_TABLE,
    InviteServerState,
    InviteServerTransaction,
    NonInviteServerState,
    NonInviteServerTransaction,
)
from ucgate.sip.transaction.timers import TimerConfig
from ucgate.sip.uas_checks import make_response

CFG = TimerConfig()
UDP = Peer(TransportKind.UDP, "192.0.2.1", 5060)
TCP = Peer(TransportKind.TCP, "192.0.2.1", 5060, flow=3)


def make_request(method: str = "INVITE") -> Request:
    headers = Headers(
        [
            ("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKsrv1"),
            ("Max-Forwards", "70"),
            ("From", "<sip:alice@example.com>;tag=a1"),
            ("To", "<sip:bob@example.net>"),
            ("Call-ID", "srv-call@example.com"),
            ("CSeq", f"1 {method}"),
        ]
    )
    return Request(method, "sip:bob@example.net", headers)


def ack_for(req: Request, resp: Response) -> Request:
    headers = Headers(
        [
            ("Via", req.headers.values("Via")[0]),
            ("From", req.headers.get("From") or ""),
            ("To", resp.headers.get("To") or ""),
            ("Call-ID", req.headers.get("Call-ID") or ""),
            ("CSeq", "1 ACK"),
        ]
    )
    return Request("ACK", req.uri, headers)


def invite_tx(peer: Peer = UDP, trying: bool = True) -> InviteServerTransaction:
    req = make_request()
    tx = InviteServerTransaction(server_key(req), req, peer, CFG)
    tx.start(0.0, make_response(req, 100) if trying else None)
    return tx


def non_invite_tx(peer: Peer = UDP) -> NonInviteServerTransaction:
    req = make_request("OPTIONS")
    return NonInviteServerTransaction(server_key(req), req, peer, CFG)


def sent_statuses(tx: InviteServerTransaction | NonInviteServerTransaction) -> list[int]:
    out = [m.status for m in tx.outbox if isinstance(m, Response)]
    tx.outbox.clear()
    return out


def step_until(tx: InviteServerTransaction, end: float) -> list[float]:
    sent: list[float] = []
    while (at := tx.next_deadline()) is not None and at <= end:
        tx.handle_timer(at)
        if tx.outbox:
            sent.append(at)
            tx.outbox.clear()
    return sent


# ------------------------------------------------------------------ INVITE server


def test_100_trying_then_retransmitted_invite_gets_latest_provisional() -> None:
    tx = invite_tx()
    assert sent_statuses(tx) == [100]
    tx.receive_request(tx.request, 0.1)
    assert sent_statuses(tx) == [100]
    tx.send_response(make_response(tx.request, 180, to_tag="t"), 0.2)
    tx.receive_request(tx.request, 0.3)
    assert sent_statuses(tx) == [180, 180]


def test_timer_g_backs_off_to_t2_until_timer_h() -> None:
    tx = invite_tx()
    tx.send_response(make_response(tx.request, 486, to_tag="t"), 0.0)
    assert tx.state is InviteServerState.COMPLETED
    tx.outbox.clear()
    sent = step_until(tx, 31.9)
    assert sent == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    tx.handle_timer(32.0)
    assert tx.terminated
    assert tx.events == [TransactionTimedOut(tx.key, None), TransactionTerminated(tx.key)]


def test_ack_confirms_absorbs_and_timer_i_terminates() -> None:
    tx = invite_tx()
    busy = make_response(tx.request, 486, to_tag="t")
    tx.send_response(busy, 0.0)
    tx.outbox.clear()
    ack = ack_for(tx.request, busy)
    tx.receive_ack(ack, UDP, 1.0)
    assert tx.state is InviteServerState.CONFIRMED
    tx.receive_ack(ack, UDP, 1.1)
    tx.receive_request(tx.request, 1.2)
    assert tx.outbox == [] and tx.events == []  # absorbed, nothing for the TU
    assert tx.next_deadline() == 1.0 + CFG.t4  # G and H stopped
    tx.handle_timer(6.0)
    assert tx.terminated


def test_retransmitted_invite_in_completed_resends_final() -> None:
    tx = invite_tx()
    tx.send_response(make_response(tx.request, 404, to_tag="t"), 0.0)
    tx.outbox.clear()
    tx.receive_request(tx.request, 0.2)
    assert sent_statuses(tx) == [404]


def test_reliable_invite_server_no_g_and_i_zero() -> None:
    tx = invite_tx(TCP)
    busy = make_response(tx.request, 486, to_tag="t")
    tx.send_response(busy, 0.0)
    tx.outbox.clear()
    assert tx.next_deadline() == CFG.h  # only Timer H
    tx.receive_ack(ack_for(tx.request, busy), TCP, 0.5)
    assert tx.terminated


def test_accepted_absorbs_invite_passes_ack_and_tu_2xx_then_timer_l() -> None:
    tx = invite_tx()
    ok = make_response(tx.request, 200, to_tag="t")
    tx.send_response(ok, 1.0)
    assert tx.state is InviteServerState.ACCEPTED
    tx.outbox.clear()
    tx.receive_request(tx.request, 1.1)
    assert tx.outbox == []  # RFC 6026 §8.7: absorbed, not a new request
    tx.send_response(ok, 1.5)  # the TU retransmits its 2xx (§13.3.1.4)
    assert sent_statuses(tx) == [200]
    ack = ack_for(tx.request, ok)
    tx.receive_ack(ack, UDP, 2.0)
    assert tx.events == [AckReceived(ack, UDP)]
    with pytest.raises(LocalProtocolError):
        tx.send_response(make_response(tx.request, 486, to_tag="t"), 2.1)
    with pytest.raises(LocalProtocolError):
        tx.send_response(make_response(tx.request, 180, to_tag="t"), 2.1)
    tx.handle_timer(1.0 + CFG.l)
    assert tx.terminated


def test_second_final_after_non_2xx_is_local_error() -> None:
    tx = invite_tx()
    tx.send_response(make_response(tx.request, 486, to_tag="t"), 0.0)
    with pytest.raises(LocalProtocolError):
        tx.send_response(make_response(tx.request, 200, to_tag="t"), 0.1)
    with pytest.raises(LocalProtocolError):
        tx.send_response(make_response(tx.request, 603, to_tag="t"), 0.1)


def test_invite_server_transport_error() -> None:
    tx = invite_tx()
    tx.transport_error(0.5)
    assert tx.terminated
    assert tx.events[0] == TransportErrorOccurred(tx.key, None)


# ------------------------------------------------------------------ non-INVITE server


def test_non_invite_trying_absorbs_then_proceeding_and_completed_resend() -> None:
    tx = non_invite_tx()
    tx.receive_request(tx.request, 0.1)
    assert tx.outbox == []
    tx.send_response(make_response(tx.request, 183, to_tag="t"), 0.2)
    assert tx.state is NonInviteServerState.PROCEEDING
    tx.receive_request(tx.request, 0.3)
    assert sent_statuses(tx) == [183, 183]
    tx.send_response(make_response(tx.request, 200, to_tag="t"), 0.4)
    tx.receive_request(tx.request, 0.5)
    assert sent_statuses(tx) == [200, 200]
    with pytest.raises(LocalProtocolError):
        tx.send_response(make_response(tx.request, 500, to_tag="t"), 0.6)
    tx.handle_timer(0.4 + CFG.j_udp - 0.01)
    assert not tx.terminated
    tx.handle_timer(0.4 + CFG.j_udp)
    assert tx.terminated
    assert tx.events == [TransactionTerminated(tx.key)]


def test_non_invite_reliable_timer_j_zero() -> None:
    tx = non_invite_tx(TCP)
    tx.send_response(make_response(tx.request, 200, to_tag="t"), 0.4)
    assert tx.terminated


def test_non_invite_transport_error_in_completed() -> None:
    tx = non_invite_tx()
    tx.send_response(make_response(tx.request, 200, to_tag="t"), 0.0)
    tx.transport_error(0.1)
    assert tx.terminated
    assert tx.events[0] == TransportErrorOccurred(tx.key, None)


@pytest.mark.parametrize(
    ("table", "terminated"),
    [
        (INVITE_SERVER_TABLE, InviteServerState.TERMINATED),
        (NON_INVITE_SERVER_TABLE, NonInviteServerState.TERMINATED),
    ],
)
def test_tables_have_no_exit_from_terminated(table: dict, terminated: object) -> None:  # type: ignore[type-arg]
    assert all(state is not terminated for state, _ in table)
    assert any(next_state is terminated for _, next_state in table.values())
