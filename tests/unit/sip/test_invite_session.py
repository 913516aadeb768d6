"""INVITE sessions end to end: a UAC leg and a UAS leg over two TransactionLayers.

Messages cross as bytes so the wire format is tested too; time is stepped by hand and
the harness routes transaction events to the sessions the way the B2BUA will.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ucgate.sip.errors import RemoteProtocolError
from ucgate.sip.invite_session import (
    AckTimedOut,
    Answered,
    Cancelled,
    InfoReceived,
    InviteClientSession,
    InviteServerSession,
    RefreshDue,
    ReInviteAcked,
    ReInviteReceived,
    Rejected,
    RequestAnswered,
    ResponseRetransmissionDue,
    RetryReInvite,
    Ringing,
    SessionConfig,
    SessionConfirmed,
    SessionEvent,
    SessionExpired,
    SessionState,
    SessionTerminated,
    UpdateReceived,
    error_response,
)
from ucgate.sip.message import Request, Response
from ucgate.sip.parser import parse_message
from ucgate.sip.peer import Peer, TransportKind
from ucgate.sip.sdp import parse_sdp
from ucgate.sip.transaction import (
    AckReceived,
    CancelReceived,
    RequestReceived,
    ResponseReceived,
    TransactionLayer,
    TransactionTimedOut,
    TxKey,
    server_key,
)
from ucgate.sip.uas_checks import make_response

A, B = "192.0.2.1", "192.0.2.2"
OFFER = (
    b"v=0\r\no=a 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
)
ANSWER = OFFER.replace(b"192.0.2.1", b"192.0.2.2").replace(b"4000", b"5000")


def branches(prefix: str) -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"z9hG4bK{prefix}{next(counter)}"


class Call:
    """Caller side ``uac`` (InviteClientSession) and callee side ``uas``."""

    def __init__(self, config: SessionConfig | None = None) -> None:
        config = config or SessionConfig(session_timer=False)
        self.config = config
        self.now = 0.0
        self.ltx_a = TransactionLayer(via_host=A, via_port=5060, branch_factory=branches("a"))
        self.ltx_b = TransactionLayer(via_host=B, via_port=5060, branch_factory=branches("b"))
        self.peer_a = Peer(TransportKind.UDP, A, 5060)
        self.peer_b = Peer(TransportKind.UDP, B, 5060)
        self.uac = InviteClientSession(contact=f"sip:a@{A}", config=config, rng=lambda: 0.5)
        self.uas: InviteServerSession | None = None
        self.invite_key: TxKey | None = None
        self.client_invite_key: TxKey | None = None
        self.events_a: list[SessionEvent] = []
        self.events_b: list[SessionEvent] = []
        self.drop: Callable[[Request | Response], bool] = lambda m: False
        self.sent: list[Request | Response] = []

    # -- sending helpers
    def a_send(self, req: Request) -> TxKey:
        return self.ltx_a.send_request(req, self.peer_b, self.now)

    def b_send(self, req: Request) -> TxKey:
        return self.ltx_b.send_request(req, self.peer_a, self.now)

    def b_respond(self, req: Request, resp: Response | None) -> None:
        if resp is not None:
            self.ltx_b.send_response(server_key(req), resp, self.now)

    def a_respond(self, req: Request, resp: Response | None) -> None:
        if resp is not None:
            self.ltx_a.send_response(server_key(req), resp, self.now)

    def start(self, sdp: bytes | None = OFFER) -> None:
        invite = self.uac.create_invite(f"sip:b@{B}", f"<sip:a@{A}>", f"<sip:b@{B}>", sdp, self.now)
        self.client_invite_key = self.a_send(invite)
        self.pump()

    # -- the pump: deliver messages both ways, route events, until quiet
    def pump(self) -> None:
        for _ in range(100):
            moved = self._move(self.ltx_a, self.ltx_b, self.peer_a)
            moved |= self._move(self.ltx_b, self.ltx_a, self.peer_b)
            moved |= self._route_a() | self._route_b()
            if not moved:
                return
        raise AssertionError("pump did not settle")

    def _move(self, src: TransactionLayer, dst: TransactionLayer, source: Peer) -> bool:
        out = src.messages_to_send()
        for msg, _ in out:
            self.sent.append(msg)
            if not self.drop(msg):
                dst.receive(parse_message(msg.to_bytes()), source, self.now)
        return bool(out)

    def _route_a(self) -> bool:
        moved = False
        while (ev := self.ltx_a.next_event()) is not None:
            moved = True
            resp = ev.response if isinstance(ev, ResponseReceived | TransactionTimedOut) else None
            if resp is not None:
                for req in self.uac.on_response(resp, self.now):
                    self.a_send(req)
            elif isinstance(ev, RequestReceived):
                self.a_respond(ev.request, self.uac.on_request(ev.request, self.now))
            elif isinstance(ev, AckReceived):
                self.uac.on_ack(ev.request, self.now)
        moved |= self._drain(self.uac, self.events_a, self.a_respond_key)
        return moved

    def a_respond_key(self, req: Request, resp: Response) -> None:
        self.a_respond(req, resp)

    def _route_b(self) -> bool:
        moved = False
        while (ev := self.ltx_b.next_event()) is not None:
            moved = True
            if isinstance(ev, RequestReceived):
                if ev.request.method == "INVITE" and self.uas is None:
                    self.invite_key = ev.key
                    try:
                        self.uas = InviteServerSession.from_invite(
                            ev.request, "btag", self.now, contact=f"sip:b@{B}",
                            config=self.config, rng=lambda: 0.5,
                        )
                    except RemoteProtocolError as exc:
                        self.b_respond(ev.request, error_response(ev.request, exc, to_tag="btag"))
                    continue
                assert self.uas is not None
                self.b_respond(ev.request, self.uas.on_request(ev.request, self.now))
            elif isinstance(ev, AckReceived) and self.uas is not None:
                self.uas.on_ack(ev.request, self.now)
            elif isinstance(ev, CancelReceived) and self.uas is not None and ev.invite_key:
                resp = self.uas.on_cancel(self.now)
                if resp is not None:
                    self.ltx_b.send_response(ev.invite_key, resp, self.now)
            elif isinstance(ev, ResponseReceived) and self.uas is not None:
                for req in self.uas.on_response(ev.response, self.now):
                    self.b_send(req)
            elif isinstance(ev, TransactionTimedOut) and ev.response and self.uas is not None:
                self.uas.on_response(ev.response, self.now)
        if self.uas is not None:
            moved |= self._drain(self.uas, self.events_b, self.b_respond_key)
        return moved

    def b_respond_key(self, req: Request, resp: Response) -> None:
        self.b_respond(req, resp)

    @staticmethod
    def _drain(
        session: InviteClientSession | InviteServerSession, log: list[SessionEvent],
        resend: Callable[[Request, Response], None],
    ) -> bool:
        moved = False
        while (ev := session.next_event()) is not None:
            moved = True
            log.append(ev)
            if isinstance(ev, ResponseRetransmissionDue):
                resend(ev.request, ev.response)
        return moved

    def advance(self, to_time: float) -> None:
        self.now = to_time
        self.ltx_a.handle_timer(to_time)
        self.ltx_b.handle_timer(to_time)
        self.uac.handle_timer(to_time)
        if self.uas is not None:
            self.uas.handle_timer(to_time)
        self.pump()

    def run_until(self, horizon: float) -> None:
        while True:
            ds = [
                d for d in (
                    self.ltx_a.next_deadline(), self.ltx_b.next_deadline(),
                    self.uac.next_deadline(), self.uas.next_deadline() if self.uas else None,
                ) if d is not None and d <= horizon
            ]
            if not ds:
                self.advance(max(self.now, horizon))
                return
            self.advance(max(self.now, min(ds)))

    def answered_call(self) -> InviteServerSession:
        self.start()
        assert self.uas is not None
        self.b_respond(self.uas.invite, self.uas.provisional(180))
        self.pump()
        self.b_respond(self.uas.invite, self.uas.accept(ANSWER, now=self.now))
        self.pump()
        return self.uas


E = TypeVar("E")


def of(kind: type[E], evs: list[SessionEvent]) -> list[E]:
    return [e for e in evs if isinstance(e, kind)]


# ------------------------------------------------------------------ basic flows


def test_basic_call_and_bye_from_caller() -> None:
    call = Call()
    uas = call.answered_call()
    assert [type(e) for e in call.events_a] == [Ringing, Answered]
    answered = call.events_a[1]
    assert isinstance(answered, Answered) and answered.sdp == parse_sdp(ANSWER)
    assert of(SessionConfirmed, call.events_b)
    assert uas.state is SessionState.CONFIRMED and call.uac.state is SessionState.CONFIRMED
    assert isinstance(uas.offer, type(parse_sdp(OFFER)))
    call.a_send(call.uac.bye())
    call.pump()
    assert uas.terminated and call.uac.terminated
    assert SessionTerminated("bye") in call.events_b
    assert of(RequestAnswered, call.events_a)[-1] == RequestAnswered(
        "BYE", 200, None, of(RequestAnswered, call.events_a)[-1].response
    )


def test_bye_from_callee() -> None:
    call = Call()
    uas = call.answered_call()
    call.b_send(uas.bye())
    call.pump()
    assert call.uac.terminated and SessionTerminated("bye") in call.events_a
    assert uas.terminate_reason == "local-bye"


def test_cancel_before_answer_gives_487_and_200() -> None:
    call = Call()
    call.start()
    assert call.uas is not None and call.client_invite_key is not None
    call.b_respond(call.uas.invite, call.uas.provisional(180))
    call.pump()
    call.uac.cancel()
    call.ltx_a.cancel(call.client_invite_key, call.now)
    call.pump()
    statuses = [m.status for m in call.sent if isinstance(m, Response)]
    assert 487 in statuses and 200 in statuses
    assert of(Cancelled, call.events_b) and call.uas.terminated
    rejected = of(Rejected, call.events_a)
    assert rejected and rejected[0].status == 487
    assert call.uac.terminated


def test_2xx_after_cancel_is_acked_and_byed() -> None:
    call = Call()
    call.start()
    assert call.uas is not None
    call.uac.cancel()  # the app decided; the CANCEL itself crosses the 200 on the wire
    call.b_respond(call.uas.invite, call.uas.accept(ANSWER, now=call.now))
    call.pump()
    methods = [m.method for m in call.sent if isinstance(m, Request)]
    assert "ACK" in methods and "BYE" in methods
    assert call.uas.terminated and call.uac.terminated


def test_2xx_retransmitted_until_ack_then_ack_timeout() -> None:
    call = Call()
    call.start()
    assert call.uas is not None
    call.drop = lambda m: isinstance(m, Request) and m.method == "ACK"
    call.b_respond(call.uas.invite, call.uas.accept(ANSWER, now=call.now))
    call.pump()
    call.run_until(40.0)
    retrans = of(ResponseRetransmissionDue, call.events_b)
    # T1 doubling to T2: 0.5, 1, 2, 4, 4, 4... within 64*T1 = 32 s → 10 retransmissions.
    assert len(retrans) == 10
    assert of(AckTimedOut, call.events_b) and call.uas.terminated
    # The UAC ACKed every retransmission it received (§13.2.2.4).
    acks = [m for m in call.sent if isinstance(m, Request) and m.method == "ACK"]
    assert len(acks) >= 2
    bye = call.uas.bye()  # the app ends the session with a BYE (§13.3.1.4)
    assert bye.method == "BYE"


def test_retransmission_stops_on_ack() -> None:
    call = Call()
    call.answered_call()
    call.run_until(40.0)
    assert not of(ResponseRetransmissionDue, call.events_b)
    assert not of(AckTimedOut, call.events_b)


def test_reject_busy() -> None:
    call = Call()
    call.start()
    assert call.uas is not None
    call.b_respond(call.uas.invite, call.uas.reject(486))
    call.pump()
    rejected = of(Rejected, call.events_a)
    assert rejected and rejected[0].status == 486
    assert call.uac.terminated and call.uas.terminated


def test_malformed_sdp_gets_488() -> None:
    call = Call()
    call.start(sdp=b"v=0\r\nthis is not sdp\r\n")
    assert call.uas is None
    assert of(Rejected, call.events_a)[0].status == 488


# ------------------------------------------------------------------ forking


def _response(invite: Request, status: int, tag: str, contact: str) -> Response:
    return make_response(invite, status, to_tag=tag, extra_headers=[("Contact", f"<{contact}>")])


def test_forked_early_dialogs_and_second_2xx_acked_and_byed() -> None:
    uac = InviteClientSession(contact="sip:a@192.0.2.1", config=SessionConfig(session_timer=False))
    invite = uac.create_invite(
        "sip:b@example.net", "<sip:a@example.com>", "<sip:b@example.net>", OFFER, 0.0
    )
    invite.headers.prepend("Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKx")
    assert uac.on_response(_response(invite, 180, "f1", "sip:b@10.0.0.1"), 0.1) == []
    assert uac.on_response(_response(invite, 183, "f2", "sip:b@10.0.0.2"), 0.2) == []
    assert set(uac.early) == {"f1", "f2"}
    out = uac.on_response(_response(invite, 200, "f1", "sip:b@10.0.0.1"), 0.3)
    assert [r.method for r in out] == ["ACK"] and out[0].uri == "sip:b@10.0.0.1"
    assert out[0].headers.get("CSeq") == "1 ACK"
    # The retransmitted 2xx gets the same ACK.
    assert uac.on_response(_response(invite, 200, "f1", "sip:b@10.0.0.1"), 0.4) == out
    extra = uac.on_response(_response(invite, 200, "f2", "sip:b@10.0.0.2"), 0.5)
    assert [r.method for r in extra] == ["ACK", "BYE"]
    assert all(r.uri == "sip:b@10.0.0.2" for r in extra)
    assert uac.state is SessionState.CONFIRMED and uac.dialog is not None
    assert uac.dialog.remote_tag == "f1"
    assert uac.build_bye_for_extra_dialog("f2").method == "BYE"


# ------------------------------------------------------------------ in-dialog


def test_reinvite_hold_and_resume() -> None:
    call = Call()
    uas = call.answered_call()
    hold = parse_sdp(OFFER).with_direction("sendonly").bump_version()
    call.a_send(call.uac.create_request("INVITE", hold.to_bytes(), "application/sdp"))
    call.pump()
    (ev,) = of(ReInviteReceived, call.events_b)
    assert isinstance(ev, ReInviteReceived) and ev.sdp is not None and ev.sdp.is_hold()
    answer = parse_sdp(ANSWER).with_direction("recvonly").bump_version().to_bytes()
    call.b_respond(ev.request, uas.respond(ev.request, 200, sdp=answer, now=call.now))
    call.pump()
    assert of(ReInviteAcked, call.events_b)
    answered = [e for e in of(RequestAnswered, call.events_a) if e.method == "INVITE"]
    assert answered[0].sdp is not None and answered[0].sdp.direction() == "recvonly"
    # Resume.
    resume = hold.with_direction("sendrecv").bump_version()
    call.a_send(call.uac.create_request("INVITE", resume.to_bytes(), "application/sdp"))
    call.pump()
    ev2 = of(ReInviteReceived, call.events_b)[-1]
    assert isinstance(ev2, ReInviteReceived) and ev2.sdp is not None and not ev2.sdp.is_hold()


def test_glare_491_and_retry_timer() -> None:
    call = Call()
    uas = call.answered_call()
    # Both sides send a re-INVITE at once; each gets 491 (§14.2).
    call.a_send(call.uac.create_request("INVITE", OFFER, "application/sdp"))
    call.b_send(uas.create_request("INVITE", ANSWER, "application/sdp"))
    call.pump()
    a491 = [e for e in of(RequestAnswered, call.events_a) if e.status == 491]
    b491 = [e for e in of(RequestAnswered, call.events_b) if e.status == 491]
    assert a491 and b491
    # rng 0.5: the Call-ID owner (uac) waits 2.1 + 0.95 s, the other 1.0 s (§14.1).
    assert call.uac.next_deadline() == pytest.approx(call.now + 3.05)
    assert uas.next_deadline() == pytest.approx(call.now + 1.0)
    start = call.now
    call.advance(start + 1.0)
    assert RetryReInvite("INVITE") in call.events_b
    assert RetryReInvite("INVITE") not in call.events_a
    call.advance(start + 3.05)
    assert RetryReInvite("INVITE") in call.events_a


def test_reinvite_while_previous_in_progress_gets_500() -> None:
    call = Call()
    uas = call.answered_call()
    call.a_send(call.uac.create_request("INVITE", OFFER, "application/sdp"))
    call.pump()
    (ev,) = of(ReInviteReceived, call.events_b)
    assert isinstance(ev, ReInviteReceived)
    caller_dialog = call.uac.dialog
    assert caller_dialog is not None
    # A second re-INVITE from the peer (built by hand: our UAC would refuse to send it).
    req = caller_dialog.create_request(
        "INVITE", body=OFFER, content_type="application/sdp",
        extra_headers=[("Contact", "<sip:a@192.0.2.1>")],
    )
    resp = uas.on_request(req, call.now)
    assert resp is not None and resp.status == 500 and resp.headers.get("Retry-After") == "5"


def test_update_and_info() -> None:
    call = Call()
    uas = call.answered_call()
    call.a_send(call.uac.create_request("UPDATE", OFFER, "application/sdp"))
    call.pump()
    (upd,) = of(UpdateReceived, call.events_b)
    assert isinstance(upd, UpdateReceived)
    call.b_respond(upd.request, uas.respond(upd.request, 200, sdp=ANSWER))
    call.pump()
    assert [e.status for e in of(RequestAnswered, call.events_a)] == [200]
    body = b"Signal=5\r\nDuration=160\r\n"
    call.a_send(call.uac.create_request("INFO", body, "application/dtmf-relay"))
    call.pump()
    (info,) = of(InfoReceived, call.events_b)
    assert info == InfoReceived(info.request, "application/dtmf-relay", body)


def test_cseq_lower_gets_500_and_unknown_dialog_481() -> None:
    call = Call()
    uas = call.answered_call()
    assert call.uac.dialog is not None
    req = call.uac.create_request("INFO", b"x", "text/plain")
    assert uas.on_request(req, call.now) is None
    old = Request(req.method, req.uri, req.headers.copy(), req.body)
    old.headers.set("CSeq", "1 INFO")
    resp = uas.on_request(old, call.now)
    assert resp is not None and resp.status == 500
    stranger = Request(req.method, req.uri, req.headers.copy(), req.body)
    stranger.headers.set("Call-ID", "other")
    resp = uas.on_request(stranger, call.now)
    assert resp is not None and resp.status == 481


# ------------------------------------------------------------------ session timers


def test_session_timer_negotiated_refreshed_and_expiring() -> None:
    cfg = SessionConfig(session_expires=120, min_se=90)
    call = Call(cfg)
    call.answered_call()
    assert call.uac.session_interval == 120 and call.uac.we_refresh
    assert call.uas is not None and not call.uas.we_refresh
    t0 = call.now
    call.advance(t0 + 60)
    assert RefreshDue() in call.events_a
    call.a_send(call.uac.create_request("UPDATE"))
    call.pump()
    assert [e.status for e in of(RequestAnswered, call.events_a)] == []  # app must answer
    (upd,) = of(UpdateReceived, call.events_b)
    call.b_respond(upd.request, call.uas.respond(upd.request, 200, now=call.now))
    call.pump()
    # Refreshed at t0+60: the expiry moved to t0+60+120-32.
    call.advance(t0 + 100)
    assert not of(SessionExpired, call.events_b)
    # The caller vanishes: no more refreshes, and the callee side expires.
    call.drop = lambda m: True
    call.run_until(t0 + 60 + 120)
    assert of(SessionExpired, call.events_b) and call.uas.terminated
    assert call.uas.bye().method == "BYE"


def test_session_interval_too_small_422() -> None:
    call = Call(SessionConfig(session_expires=1800, min_se=600))
    invite = call.uac.create_invite("sip:b@x", "<sip:a@x>", "<sip:b@x>", OFFER, 0.0)
    invite.headers.set("Session-Expires", "100")
    invite.headers.prepend("Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKq")
    with pytest.raises(RemoteProtocolError) as info:
        InviteServerSession.from_invite(invite, "t", 0.0, contact="sip:b@x", config=call.config)
    resp = error_response(invite, info.value, to_tag="t")
    assert resp is not None and resp.status == 422 and resp.headers.get("Min-SE") == "600"


# ------------------------------------------------------------------ random orders


ACTIONS = [
    "ring", "accept", "reject", "cancel", "bye_a", "bye_b", "reinvite", "info", "drop_acks", "wait",
]


@given(st.lists(st.sampled_from(ACTIONS), max_size=12))
@settings(max_examples=120, deadline=None)
def test_random_orders_terminate(actions: list[str]) -> None:
    from ucgate.sip.errors import LocalProtocolError

    call = Call(SessionConfig(session_expires=90, min_se=90))
    call.start()
    uas = call.uas
    assert uas is not None
    for action in actions:
        try:
            if action == "ring":
                call.b_respond(uas.invite, uas.provisional(180))
            elif action == "accept":
                call.b_respond(uas.invite, uas.accept(ANSWER, now=call.now))
            elif action == "reject":
                call.b_respond(uas.invite, uas.reject(486))
            elif action == "cancel":
                call.uac.cancel()
                assert call.client_invite_key is not None
                call.ltx_a.cancel(call.client_invite_key, call.now)
            elif action == "bye_a":
                call.a_send(call.uac.bye())
            elif action == "bye_b":
                call.b_send(uas.bye())
            elif action == "reinvite":
                call.a_send(call.uac.create_request("INVITE", OFFER, "application/sdp"))
            elif action == "info":
                call.a_send(call.uac.create_request("INFO", b"x", "text/plain"))
            elif action == "drop_acks":
                call.drop = lambda m: isinstance(m, Request) and m.method == "ACK"
            else:
                call.advance(call.now + 1.0)
        except LocalProtocolError:
            pass  # the documented misuse error for a call in the wrong state
        call.pump()
    # Whatever happened, with enough time every leg ends (timers, or the callee gives
    # up waiting); an unanswered INVITE is answered by the app in real life: reject it.
    if uas.state in (SessionState.NEW, SessionState.EARLY):
        call.b_respond(uas.invite, uas.reject(480))
        call.pump()
    call.run_until(call.now + 400)
    assert uas.terminated
    assert call.uac.terminated
