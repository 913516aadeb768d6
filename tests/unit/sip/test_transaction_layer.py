"""TransactionLayer end to end: a UAC layer and a UAS layer wired in memory.

Messages cross as bytes (``to_bytes`` -> ``parse_message``) so the wire format is part of
what is tested; "UDP loss" is a predicate that drops chosen messages. Time is a number.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from ucgate.sip.errors import LocalProtocolError
from ucgate.sip.fields import cseq, to, top_via
from ucgate.sip.message import Headers, Request, Response
from ucgate.sip.parser import parse_message
from ucgate.sip.peer import Peer, TransportKind
from ucgate.sip.transaction import (
    AckReceived,
    CancelReceived,
    RequestReceived,
    ResponseReceived,
    Side,
    StrayResponseReceived,
    TransactionEvent,
    TransactionLayer,
    TransactionTerminated,
    TransactionTimedOut,
    TransportErrorOccurred,
    TxKey,
)
from ucgate.sip.uas_checks import make_response

UAC_HOST, UAS_HOST = "192.0.2.1", "192.0.2.2"
Message = Request | Response


def branches(prefix: str) -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"z9hG4bK{prefix}{next(counter)}"


class Pair:
    """A UAC layer and a UAS layer; ``now`` is stepped by the test."""

    def __init__(self, kind: TransportKind = TransportKind.UDP) -> None:
        self.kind = kind
        self.uac = TransactionLayer(via_host=UAC_HOST, via_port=5060, branch_factory=branches("c"))
        self.uas = TransactionLayer(via_host=UAS_HOST, via_port=5070, branch_factory=branches("s"))
        self.now = 0.0
        self.uas_addr = Peer(kind, UAS_HOST, 5070, flow=1 if kind.reliable else None)
        self.uac_addr = Peer(kind, UAC_HOST, 5060, flow=1 if kind.reliable else None)

    def transfer(
        self, src: TransactionLayer, drop: Callable[[Message], bool] | None = None
    ) -> list[Message]:
        """Move ``src``'s outbox into the other layer; return what was sent (dropped too)."""
        dst, source = (self.uas, self.uac_addr) if src is self.uac else (self.uac, self.uas_addr)
        expected_dest = self.uas_addr if src is self.uac else self.uac_addr
        sent: list[Message] = []
        for msg, dest in src.messages_to_send():
            assert dest == expected_dest, (dest, msg)
            sent.append(msg)
            if drop is not None and drop(msg):
                continue
            dst.receive(parse_message(msg.to_bytes()), source, self.now)
        return sent

    def c2s(self, drop: Callable[[Message], bool] | None = None) -> list[Message]:
        return self.transfer(self.uac, drop)

    def s2c(self, drop: Callable[[Message], bool] | None = None) -> list[Message]:
        return self.transfer(self.uas, drop)

    def advance(self, to_time: float) -> None:
        self.now = to_time
        self.uac.handle_timer(to_time)
        self.uas.handle_timer(to_time)

    def send(self, request: Request) -> TxKey:
        return self.uac.send_request(request, self.uas_addr, self.now)


def events(layer: TransactionLayer) -> list[TransactionEvent]:
    out: list[TransactionEvent] = []
    while (ev := layer.next_event()) is not None:
        out.append(ev)
    return out


def of(kind: type, evs: list[TransactionEvent]) -> list:  # type: ignore[type-arg]
    return [e for e in evs if isinstance(e, kind)]


def make_request(
    method: str = "INVITE", *, call: str = "call-1", seq: int = 1, to_tag: str | None = None
) -> Request:
    to_value = "<sip:bob@example.net>" + (f";tag={to_tag}" if to_tag else "")
    headers = Headers(
        [
            ("Max-Forwards", "70"),
            ("From", "<sip:alice@example.com>;tag=a1"),
            ("To", to_value),
            ("Call-ID", call),
            ("CSeq", f"{seq} {method}"),
            ("Contact", f"<sip:alice@{UAC_HOST}>"),
        ]
    )
    return Request(method, "sip:bob@example.net", headers)


def is_status(status: int) -> Callable[[Message], bool]:
    return lambda m: isinstance(m, Response) and m.status == status


def drop_all(_: Message) -> bool:
    return True


def uas_request(pair: Pair) -> RequestReceived:
    (ev,) = of(RequestReceived, events(pair.uas))
    assert isinstance(ev, RequestReceived)
    return ev


def run_out(pair: Pair, horizon: float = 400.0) -> None:
    """Deliver everything and fire every timer until both layers are idle."""
    while True:
        pair.c2s()
        pair.s2c()
        pending = (pair.uac.next_deadline(), pair.uas.next_deadline())
        deadlines = [d for d in pending if d is not None]
        if not deadlines:
            return
        assert min(deadlines) <= horizon
        pair.advance(max(pair.now, min(deadlines)))


# ------------------------------------------------------------------ basic flows


def test_invite_rejected_end_to_end_acked_and_cleaned_up() -> None:
    pair = Pair()
    key = pair.send(make_request())
    (invite,) = pair.c2s()
    assert isinstance(invite, Request)
    via = top_via(invite)
    assert via.branch == "z9hG4bKc1" and via.has_rport and via.transport == "UDP"
    req = uas_request(pair)
    assert req.key.side is Side.SERVER and req.peer == pair.uac_addr
    # §17.2.1: the server transaction sent 100 Trying on its own.
    assert [m.status for m in pair.s2c() if isinstance(m, Response)] == [100]
    pair.uas.send_response(req.key, make_response(req.request, 486, to_tag="b"), pair.now)
    pair.s2c()
    uac_events = events(pair.uac)
    assert [e.response.status for e in of(ResponseReceived, uac_events)] == [100, 486]
    assert all(e.key == key for e in of(ResponseReceived, uac_events))
    (ack,) = pair.c2s()
    assert isinstance(ack, Request) and ack.method == "ACK"
    assert events(pair.uas) == []  # the non-2xx ACK is absorbed (§17.2.1)
    run_out(pair)
    assert len(pair.uac) == 0 and len(pair.uas) == 0
    assert pair.uac.next_deadline() is None and pair.uas.next_deadline() is None


def test_rport_and_received_stamped_and_response_routed_to_source() -> None:
    pair = Pair()
    request = make_request("OPTIONS")
    # The UAC claims a private sent-by; the UAS sees its packets from 192.0.2.1:5060.
    request.headers.add("Via", "SIP/2.0/UDP 10.1.1.1:5099;rport;branch=z9hG4bKnat1")
    pair.send(request)
    pair.c2s()
    req = uas_request(pair)
    via = top_via(req.request)
    assert via.rport == 5060 and via.received == UAC_HOST
    pair.uas.send_response(req.key, make_response(req.request, 200), pair.now)
    [(resp, dest)] = pair.uas.messages_to_send()
    assert dest == pair.uac_addr  # RFC 3581 §4: source address and port
    assert top_via(resp).rport == 5060


def test_response_without_rport_goes_to_via_port() -> None:
    layer = TransactionLayer(via_host=UAS_HOST, via_port=5060)
    request = make_request("OPTIONS")
    request.headers.prepend("Via", "SIP/2.0/UDP 192.0.2.9:5077;branch=z9hG4bKp1")
    layer.receive(request, Peer(TransportKind.UDP, "192.0.2.9", 40000), 0.0)
    req = uas_request_from(layer)
    layer.send_response(req.key, make_response(req.request, 200), 0.0)
    [(_, dest)] = layer.messages_to_send()
    assert dest == Peer(TransportKind.UDP, "192.0.2.9", 5077)  # §18.2.2


def uas_request_from(layer: TransactionLayer) -> RequestReceived:
    (ev,) = of(RequestReceived, events(layer))
    assert isinstance(ev, RequestReceived)
    return ev


def test_lost_invite_is_retransmitted_and_delivered_once() -> None:
    pair = Pair()
    pair.send(make_request())
    pair.c2s(drop=drop_all)
    pair.advance(0.5)
    assert len(pair.c2s()) == 1
    uas_request(pair)
    pair.s2c()  # 100 Trying stops Timer A
    pair.advance(10.0)
    assert pair.c2s() == []


def test_invite_retransmission_reaching_uas_gets_trying_again_without_new_event() -> None:
    pair = Pair()
    pair.send(make_request())
    pair.c2s()
    uas_request(pair)
    pair.s2c(drop=drop_all)  # 100 lost
    pair.advance(0.5)
    pair.c2s()
    assert events(pair.uas) == []
    assert [m.status for m in pair.s2c() if isinstance(m, Response)] == [100]


def test_non_invite_retransmission_gets_final_again() -> None:
    pair = Pair()
    pair.send(make_request("OPTIONS"))
    pair.c2s()
    req = uas_request(pair)
    pair.uas.send_response(req.key, make_response(req.request, 200), pair.now)
    pair.s2c(drop=drop_all)
    pair.advance(0.5)
    pair.c2s()  # retransmitted OPTIONS; server in Completed answers it
    assert events(pair.uas) == []
    pair.s2c()
    assert [e.response.status for e in of(ResponseReceived, events(pair.uac))] == [200]


def test_non_invite_timeout_gives_408_and_no_leak() -> None:
    pair = Pair()
    key = pair.send(make_request("OPTIONS"))
    for t in (0.5, 1.5, 3.5, 7.5, 11.5):
        pair.advance(t)
    assert len(pair.uac.messages_to_send()) == 6
    pair.advance(32.0)
    evs = events(pair.uac)
    (timeout,) = of(TransactionTimedOut, evs)
    assert timeout.key == key and timeout.response.status == 408
    assert TransactionTerminated(key) in evs
    assert len(pair.uac) == 0


def test_reliable_transport_never_retransmits() -> None:
    pair = Pair(TransportKind.TCP)
    pair.send(make_request("INVITE"))
    pair.send(make_request("OPTIONS", call="call-2"))
    assert len(pair.uac.messages_to_send()) == 2
    for t in range(1, 33):
        pair.advance(float(t))
        assert pair.uac.messages_to_send() == []
    assert len(of(TransactionTimedOut, events(pair.uac))) == 2


# ------------------------------------------------------------------ RFC 6026


def test_2xx_accepted_absorbs_invite_retransmission_and_passes_2xx_retransmissions() -> None:
    pair = Pair()
    key = pair.send(make_request())
    pair.c2s()
    req = uas_request(pair)
    ok = make_response(req.request, 200, to_tag="b")
    pair.uas.send_response(req.key, ok, pair.now)
    pair.s2c(drop=drop_all)  # 100 and 200 both lost
    pair.advance(0.5)
    assert len(pair.c2s()) == 1  # retransmitted INVITE
    assert events(pair.uas) == []  # not a new request (the RFC 6026 fix)
    assert pair.uas.messages_to_send() == []  # and nothing resent by the transaction
    # The UAS core retransmits its 2xx itself (§13.3.1.4); each one reaches the UAC TU.
    pair.uas.send_response(req.key, ok, pair.now)
    pair.s2c()
    pair.advance(1.0)
    pair.uas.send_response(req.key, ok, pair.now)
    pair.s2c()
    got = of(ResponseReceived, events(pair.uac))
    assert [(e.key, e.response.status, e.retransmission) for e in got] == [
        (key, 200, False),
        (key, 200, True),
    ]
    # The UAC core's ACK for the 2xx: new branch, no transaction, an event at the UAS.
    ack = make_request("ACK", to_tag=to(got[0].response).tag)
    pair.send(ack)
    assert len(pair.uac) == 1  # only the INVITE transaction (Accepted)
    pair.c2s()
    (ack_ev,) = of(AckReceived, events(pair.uas))
    assert cseq(ack_ev.request).method == "ACK"
    run_out(pair)
    assert len(pair.uac) == len(pair.uas) == 0


# ------------------------------------------------------------------ CANCEL


def test_cancel_after_provisional_delivers_events_and_487_is_acked() -> None:
    pair = Pair()
    inv_key = pair.send(make_request())
    pair.c2s()
    req = uas_request(pair)
    pair.uas.send_response(req.key, make_response(req.request, 180, to_tag="b"), pair.now)
    pair.s2c()
    events(pair.uac)
    cancel_key = pair.uac.cancel(inv_key, pair.now)
    assert cancel_key == inv_key.with_method("CANCEL")
    (cancel,) = pair.c2s()
    assert isinstance(cancel, Request) and cancel.method == "CANCEL"
    assert top_via(cancel).branch == inv_key.branch
    (cancel_ev,) = of(CancelReceived, events(pair.uas))
    assert cancel_ev.invite_key == req.key
    (ok,) = pair.s2c()
    assert isinstance(ok, Response) and ok.status == 200 and to(ok).tag == "b"  # §9.2
    (cancel_ok,) = of(ResponseReceived, events(pair.uac))
    assert cancel_ok.key == cancel_key
    # The 487 is the TU's job; the layer ACKs it on the UAC side.
    pair.uas.send_response(req.key, make_response(req.request, 487, to_tag="b"), pair.now)
    pair.s2c()
    assert [e.response.status for e in of(ResponseReceived, events(pair.uac))] == [487]
    (ack,) = pair.c2s()
    assert isinstance(ack, Request) and ack.method == "ACK"
    run_out(pair)
    assert len(pair.uac) == len(pair.uas) == 0


def test_cancel_before_provisional_waits_for_one() -> None:
    pair = Pair()
    inv_key = pair.send(make_request())
    pair.c2s()
    uas_request(pair)
    pair.uas.messages_to_send()  # the 100 Trying is "in flight"
    pair.uac.cancel(inv_key, pair.now)
    assert pair.uac.messages_to_send() == []  # §9.1: not before a provisional
    pair.advance(0.5)  # the INVITE is retransmitted meanwhile; the UAS answers 100
    pair.c2s()
    pair.s2c()
    sent = pair.c2s()
    assert [m.method for m in sent if isinstance(m, Request)] == ["CANCEL"]
    assert len(of(CancelReceived, events(pair.uas))) == 1
    # A second cancel() does not send a second CANCEL.
    pair.uac.cancel(inv_key, pair.now)
    assert pair.c2s() == []


def test_cancel_guard_ends_invite_without_final() -> None:
    pair = Pair()
    inv_key = pair.send(make_request())
    pair.c2s()
    uas_request(pair)
    pair.s2c()
    pair.uac.cancel(inv_key, pair.now)
    pair.c2s(drop=drop_all)
    pair.advance(100.0)
    evs = events(pair.uac)
    invite_timeouts = [e for e in of(TransactionTimedOut, evs) if e.key == inv_key]
    assert len(invite_timeouts) == 1 and invite_timeouts[0].response.status == 408


def test_timer_c_cancels_a_call_that_rings_forever() -> None:
    pair = Pair()
    pair.send(make_request())
    pair.c2s()
    uas_request(pair)
    pair.s2c()
    pair.advance(179.0)
    pair.c2s()
    assert pair.uac.messages_to_send() == []
    pair.advance(180.0)
    sent = pair.c2s()
    assert [m.method for m in sent if isinstance(m, Request)] == ["CANCEL"]
    assert len(of(CancelReceived, events(pair.uas))) == 1


def test_cancel_without_invite_gets_481() -> None:
    layer = TransactionLayer(via_host=UAS_HOST, via_port=5070)
    cancel = make_request("CANCEL")
    cancel.headers.prepend("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKnone")
    peer = Peer(TransportKind.UDP, UAC_HOST, 5060)
    layer.receive(cancel, peer, 0.0)
    (ev,) = events(layer)
    assert isinstance(ev, CancelReceived) and ev.invite_key is None
    [(resp, _)] = layer.messages_to_send()
    assert isinstance(resp, Response) and resp.status == 481


def test_cancel_of_unknown_or_non_invite_key() -> None:
    pair = Pair()
    key = pair.send(make_request("OPTIONS"))
    with pytest.raises(LocalProtocolError):
        pair.uac.cancel(key, 0.0)
    gone = TxKey(Side.CLIENT, "INVITE", "z9hG4bKgone")
    pair.uac.messages_to_send()
    # A race the TU cannot see (the INVITE already ended): nothing is sent, no error.
    assert pair.uac.cancel(gone, 0.0) == gone.with_method("CANCEL")
    assert pair.uac.messages_to_send() == []


# ------------------------------------------------------------------ 482s


def test_merged_request_gets_482_without_event() -> None:
    pair = Pair()
    pair.send(make_request())
    (invite,) = pair.c2s()
    uas_request(pair)
    pair.uas.messages_to_send()
    # The same request forked by a proxy arrives again with another branch.
    assert isinstance(invite, Request)
    other = parse_message(invite.to_bytes())
    assert isinstance(other, Request)
    other.headers.prepend("Via", "SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKproxyB")
    pair.uas.receive(other, Peer(TransportKind.UDP, "198.51.100.7", 5060), pair.now)
    assert events(pair.uas) == []
    [(resp, dest)] = pair.uas.messages_to_send()
    assert isinstance(resp, Response) and resp.status == 482
    assert dest.host == "198.51.100.7"
    # A retransmission of the merged request is absorbed by its 482 transaction.
    pair.uas.receive(other, Peer(TransportKind.UDP, "198.51.100.7", 5060), pair.now)
    assert events(pair.uas) == []


def test_same_request_with_to_tag_is_not_merged() -> None:
    layer = TransactionLayer(via_host=UAS_HOST, via_port=5070)
    peer = Peer(TransportKind.UDP, UAC_HOST, 5060)
    for branch in ("z9hG4bKx1", "z9hG4bKx2"):
        bye = make_request("BYE", to_tag="b")
        bye.headers.prepend("Via", f"SIP/2.0/UDP {UAC_HOST}:5060;branch={branch}")
        layer.receive(bye, peer, 0.0)
    assert len(of(RequestReceived, events(layer))) == 2


def test_looped_request_gets_482() -> None:
    pair = Pair()
    pair.send(make_request("OPTIONS"))
    [(sent, _)] = pair.uac.messages_to_send()
    looped = parse_message(sent.to_bytes())
    assert isinstance(looped, Request)
    looped.headers.prepend("Via", "SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKproxyL")
    pair.uac.receive(looped, Peer(TransportKind.UDP, "198.51.100.7", 5060), 0.1)
    assert of(RequestReceived, events(pair.uac)) == []
    [(resp, _)] = pair.uac.messages_to_send()
    assert isinstance(resp, Response) and resp.status == 482


# ------------------------------------------------------------------ RFC 2543


def rfc2543(method: str, *, to_tag: str | None = None, seq: int = 1) -> Request:
    # RFC 4475 §3.4 "inv2543": no branch at all; matching falls back to §17.2.3's fields.
    req = make_request(method, to_tag=to_tag, seq=seq, call="2543-call")
    req.headers.prepend("Via", f"SIP/2.0/UDP {UAC_HOST}")
    return req


def test_rfc2543_retransmission_ack_and_cancel_match() -> None:
    layer = TransactionLayer(via_host=UAS_HOST, via_port=5070)
    peer = Peer(TransportKind.UDP, UAC_HOST, 5060)
    layer.receive(rfc2543("INVITE"), peer, 0.0)
    (req,) = of(RequestReceived, events(layer))
    assert req.key.rfc2543
    layer.messages_to_send()
    layer.receive(rfc2543("INVITE"), peer, 0.2)  # retransmission
    assert events(layer) == []
    assert [m.status for m, _ in layer.messages_to_send() if isinstance(m, Response)] == [100]
    layer.receive(rfc2543("CANCEL"), peer, 0.3)
    (cancel_ev,) = of(CancelReceived, events(layer))
    assert cancel_ev.invite_key == req.key
    layer.send_response(req.key, make_response(req.request, 487, to_tag="srv"), 0.4)
    layer.messages_to_send()
    # The ACK carries the To tag of our 487: it must still match (§17.2.3).
    layer.receive(rfc2543("ACK", to_tag="srv"), peer, 0.5)
    assert events(layer) == []  # absorbed, not an AckReceived
    layer.handle_timer(0.5 + 5.0)  # Timer I
    layer.handle_timer(0.3 + 32.0)  # Timer J of the CANCEL
    assert len(layer) == 0


def test_rfc2543_different_cseq_is_a_new_transaction() -> None:
    layer = TransactionLayer(via_host=UAS_HOST, via_port=5070)
    peer = Peer(TransportKind.UDP, UAC_HOST, 5060)
    layer.receive(rfc2543("OPTIONS", seq=1), peer, 0.0)
    layer.receive(rfc2543("OPTIONS", seq=2), peer, 0.0)
    assert len(of(RequestReceived, events(layer))) == 2


# ------------------------------------------------------------------ errors & misuse


def test_transport_error_terminates_with_503() -> None:
    pair = Pair(TransportKind.TCP)
    key = pair.send(make_request())
    elsewhere = Peer(TransportKind.TCP, "192.0.2.50", 5060)
    other = pair.uac.send_request(make_request("OPTIONS", call="x"), elsewhere, 0.0)
    pair.uac.transport_error(pair.uas_addr, 0.1)
    evs = events(pair.uac)
    (err,) = of(TransportErrorOccurred, evs)
    assert err.key == key and err.response.status == 503
    assert TransactionTerminated(key) in evs
    assert len(pair.uac) == 1  # the transaction towards another peer is untouched
    pair.uac.transport_error(elsewhere, 0.2)
    assert [e.key for e in of(TransportErrorOccurred, events(pair.uac))] == [other]
    assert len(pair.uac) == 0


def test_server_transport_error_reported() -> None:
    pair = Pair(TransportKind.TCP)
    pair.send(make_request())
    pair.c2s()
    req = uas_request(pair)
    pair.uas.transport_error(pair.uac_addr, 0.1)
    assert TransportErrorOccurred(req.key, None) in events(pair.uas)
    assert len(pair.uas) == 0
    with pytest.raises(LocalProtocolError):
        pair.uas.send_response(req.key, make_response(req.request, 200), 0.2)


def test_stray_response_is_reported() -> None:
    layer = TransactionLayer(via_host=UAC_HOST, via_port=5060)
    request = make_request("INVITE")
    request.headers.prepend("Via", f"SIP/2.0/UDP {UAC_HOST}:5060;branch=z9hG4bKlong-gone")
    stray = make_response(request, 200, to_tag="x")
    peer = Peer(TransportKind.UDP, UAS_HOST, 5070)
    layer.receive(stray, peer, 0.0)
    assert events(layer) == [StrayResponseReceived(stray, peer)]


def test_tu_misuse_raises_local_protocol_error() -> None:
    pair = Pair()
    pair.send(make_request("OPTIONS"))
    pair.c2s()
    req = uas_request(pair)
    pair.uas.send_response(req.key, make_response(req.request, 200), 0.0)
    with pytest.raises(LocalProtocolError):
        pair.uas.send_response(req.key, make_response(req.request, 404), 0.0)
    with pytest.raises(LocalProtocolError):
        unknown = TxKey(Side.SERVER, "OPTIONS", "z9hG4bKnope", "h:1")
        pair.uas.send_response(unknown, make_response(req.request, 200), 0.0)
    dup = make_request("OPTIONS")
    dup.headers.prepend("Via", f"SIP/2.0/UDP {UAC_HOST}:5060;branch=z9hG4bKdup")
    pair.uac.send_request(dup, pair.uas_addr, 0.0)
    with pytest.raises(LocalProtocolError):
        pair.uac.send_request(dup, pair.uas_addr, 0.0)
    no_branch = make_request("OPTIONS")
    no_branch.headers.prepend("Via", f"SIP/2.0/UDP {UAC_HOST}:5060")
    with pytest.raises(LocalProtocolError):
        pair.uac.send_request(no_branch, pair.uas_addr, 0.0)


def test_unreadable_request_answered_400_statelessly() -> None:
    layer = TransactionLayer(via_host=UAS_HOST, via_port=5070)
    request = make_request("OPTIONS")
    request.headers.prepend("Via", f"SIP/2.0/UDP {UAC_HOST}:5060;branch=z9hG4bKbad")
    request.headers.remove("Call-ID")
    peer = Peer(TransportKind.UDP, UAC_HOST, 5060)
    layer.receive(request, peer, 0.0)
    assert events(layer) == []
    [(resp, _)] = layer.messages_to_send()
    assert isinstance(resp, Response) and resp.status == 400
    assert len(layer) == 0
    bad_ack = make_request("ACK")  # no Via at all: never answered (§17.1.1.3)
    layer.receive(bad_ack, peer, 0.0)
    assert layer.messages_to_send() == []


# ------------------------------------------------------------------ scale


def test_twenty_thousand_transactions_heap_and_no_leak() -> None:
    layer = TransactionLayer(via_host=UAC_HOST, via_port=5060, branch_factory=branches("n"))
    peer = Peer(TransportKind.TCP, UAS_HOST, 5070, flow=1)
    keys = [
        layer.send_request(make_request("OPTIONS", call=f"c{i}"), peer, i * 0.001)
        for i in range(20_000)
    ]
    assert len(layer) == 20_000
    assert layer.next_deadline() == pytest.approx(32.0)
    sent = [m for m, _ in layer.messages_to_send()]
    for req in sent[::20]:  # some of them are answered
        assert isinstance(req, Request)
        layer.receive(make_response(req, 200), peer, 1.0)
    assert len(layer) == 19_000  # Timer K is zero over TCP
    assert layer.next_deadline() == pytest.approx(32.001)  # the answered first one is gone
    layer.handle_timer(100.0)
    assert len(layer) == 0 and layer.next_deadline() is None
    assert len(of(TransactionTimedOut, events(layer))) == 19_000
    assert keys[0] != keys[1]


def test_ipv6_via_and_loop_detection() -> None:
    layer = TransactionLayer(via_host="2001:db8::1", via_port=5060, branch_factory=branches("v"))
    peer = Peer(TransportKind.UDP, "2001:db8::2", 5060)
    layer.send_request(make_request("OPTIONS"), peer, 0.0)
    [(sent, _)] = layer.messages_to_send()
    assert top_via(sent).sent_by == "[2001:db8::1]:5060"
    looped = parse_message(sent.to_bytes())
    assert isinstance(looped, Request)
    looped.headers.prepend("Via", "SIP/2.0/UDP [2001:db8::2]:5060;branch=z9hG4bKp6")
    layer.receive(looped, peer, 0.1)
    [(resp, _)] = layer.messages_to_send()
    assert isinstance(resp, Response) and resp.status == 482
