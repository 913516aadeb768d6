"""The INVITE usage of one call leg (RFC 3261 §13-15, RFC 3311, RFC 4028), sans-IO.

A B2BUA holds two kinds of leg: :class:`InviteServerSession` toward the caller (we are
the UAS of the initial INVITE) and one :class:`InviteClientSession` per callee fork
toward the callees (we are the UAC). Once a dialog is confirmed both legs behave the
same way (re-INVITE, UPDATE, INFO, REFER, BYE in either direction), which lives in
:class:`_Session`.

The sessions send nothing. Methods return the :class:`Request`/:class:`Response`
objects the caller passes to the transaction layer (responses go on the server
transaction of the request they answer, ``server_key(request)``; requests through
``send_request``, an ACK included). What the application must learn is queued as
frozen events drained with ``next_event()``. Time comes in as ``now``; every session
exposes ``next_deadline()`` / ``handle_timer(now)`` for three timers:

* the 2xx retransmission of a UAS core (§13.3.1.4: T1 doubling up to T2 until the ACK,
  give up after 64*T1), for the initial INVITE and for re-INVITEs we answer (§14.2);
* the glare retry after a 491 (§14.1: 2.1-4 s when we own the Call-ID, 0-2 s when not);
* RFC 4028 session timers: when the refresh is due (half the interval, §10) and when the
  session expires without one (interval minus min(32, interval/3), §10). A peer without
  RFC 4028 support still gets a refresher: we refresh ourselves and a refresh that fails
  with 408/481 ends the session (§12.2.1.2) - the dead-call detector the B2BUA needs.

Lifecycles are tables ``{(state, input): (action, next_state)}``; a pair missing from a
table is a protocol error (remote input → RemoteProtocolError, local → LocalProtocolError).
"""

from __future__ import annotations

import contextlib
import enum
import random
import secrets
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ucgate.sip import fields
from ucgate.sip.dialog import Dialog, create_ack
from ucgate.sip.errors import LocalProtocolError, RemoteProtocolError
from ucgate.sip.fields import NameAddr, parse_name_addr
from ucgate.sip.message import Headers, Request, Response
from ucgate.sip.sdp import SessionDescription, parse_sdp
from ucgate.sip.uas_checks import make_response

SDP = "application/sdp"
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, REFER, NOTIFY"


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """Timer values of the INVITE usage, in seconds."""

    t1: float = 0.5  # §17.1.1.1, drives the 2xx retransmission (§13.3.1.4)
    t2: float = 4.0
    # RFC 4028: our preferred Session-Expires and the smallest we accept (§4: 90 minimum).
    session_expires: int = 1800
    min_se: int = 90
    session_timer: bool = True

    def __post_init__(self) -> None:
        if self.min_se < 90 or self.session_expires < self.min_se:
            raise ValueError("need 90 <= min_se <= session_expires (RFC 4028 §4)")


# ---------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Ringing:
    """A 101-199 to our INVITE; ``remote_tag`` names the early dialog (fork)."""

    status: int
    sdp: SessionDescription | None
    remote_tag: str | None


@dataclass(frozen=True, slots=True)
class Answered:
    """The first 2xx to our INVITE: the dialog is confirmed and the ACK was returned."""

    sdp: SessionDescription | None
    remote_tag: str


@dataclass(frozen=True, slots=True)
class Rejected:
    status: int
    reason: str
    response: Response


@dataclass(frozen=True, slots=True)
class SessionConfirmed:
    """The ACK for our 2xx to the initial INVITE arrived (§13.3.1.4)."""

    sdp: SessionDescription | None


@dataclass(frozen=True, slots=True)
class AckTimedOut:
    """64*T1 without ACK for our 2xx: the session must end with a BYE (§13.3.1.4)."""


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The caller CANCELled before we answered; the 487 was returned by on_cancel."""


@dataclass(frozen=True, slots=True)
class SessionTerminated:
    """``reason``: "bye" (peer BYE), "local-bye", "rejected", "cancelled", "ack-timeout",
    "expired", "481"/"408" (an in-dialog request failed, §12.2.1.2)."""

    reason: str


@dataclass(frozen=True, slots=True)
class ResponseRetransmissionDue:
    """Re-send ``response`` on the server transaction of ``request`` (§13.3.1.4)."""

    request: Request
    response: Response


@dataclass(frozen=True, slots=True)
class ReInviteReceived:
    request: Request
    sdp: SessionDescription | None


@dataclass(frozen=True, slots=True)
class ReInviteAcked:
    """The ACK for our 2xx to a re-INVITE (carries the answer for a late offer)."""

    sdp: SessionDescription | None


@dataclass(frozen=True, slots=True)
class UpdateReceived:
    request: Request
    sdp: SessionDescription | None


@dataclass(frozen=True, slots=True)
class InfoReceived:
    """RFC 6086 INFO, e.g. DTMF relay (application/dtmf-relay)."""

    request: Request
    content_type: str | None
    body: bytes


@dataclass(frozen=True, slots=True)
class ReferReceived:
    request: Request


@dataclass(frozen=True, slots=True)
class NotifyReceived:
    request: Request


@dataclass(frozen=True, slots=True)
class OptionsReceived:
    request: Request


@dataclass(frozen=True, slots=True)
class RequestAnswered:
    """A final response to one of our in-dialog requests (re-INVITE, UPDATE, INFO…)."""

    method: str
    status: int
    sdp: SessionDescription | None
    response: Response


@dataclass(frozen=True, slots=True)
class RetryReInvite:
    """The §14.1 glare back-off after a 491 ended: send ``method`` again."""

    method: str


@dataclass(frozen=True, slots=True)
class RefreshDue:
    """RFC 4028 §10: we are the refresher; send a re-INVITE or UPDATE now."""


@dataclass(frozen=True, slots=True)
class SessionExpired:
    """RFC 4028 §10: no refresh in time; the app sends BYE (``bye()``) on both legs."""


SessionEvent = (
    Ringing
    | Answered
    | Rejected
    | SessionConfirmed
    | AckTimedOut
    | Cancelled
    | SessionTerminated
    | ResponseRetransmissionDue
    | ReInviteReceived
    | ReInviteAcked
    | UpdateReceived
    | InfoReceived
    | ReferReceived
    | NotifyReceived
    | OptionsReceived
    | RequestAnswered
    | RetryReInvite
    | RefreshDue
    | SessionExpired
)


class SessionState(enum.Enum):
    NEW = "new"  # INVITE sent / received, nothing with a To tag yet
    EARLY = "early"  # provisional with a To tag (§12.1)
    ANSWERED = "answered"  # UAS: 2xx sent, waiting for the ACK
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class SessionInput(enum.Enum):
    PROVISIONAL = "101-199 sent or received"
    SUCCESS = "2xx to the initial INVITE"
    SUCCESS_AFTER_CANCEL = "2xx to an INVITE we already cancelled"
    FAILURE = "300-699 to the initial INVITE"
    CANCEL = "CANCEL received / cancel() called"
    ACK = "ACK for the initial 2xx"
    ACK_TIMEOUT = "64*T1 without ACK"
    BYE_RECEIVED = "BYE from the peer"
    BYE_SENT = "bye() called"
    DIALOG_FAILED = "481/408 to an in-dialog request, or session expired"


class SessionAction(enum.Enum):
    NONE = "nothing"
    SEND = "send the response / note the provisional"
    START_2XX = "start 2xx retransmissions"
    REJECTED = "report Rejected, terminate"
    CANCELLED = "answer 487, report Cancelled"
    CONFIRM = "report confirmation"
    ACK_AND_BYE = "ACK the 2xx and BYE the dialog (§15, §9.1 race)"
    ACK_AGAIN = "re-send the ACK or ACK+BYE an extra fork (§13.2.2.4)"
    ACK_TIMEOUT = "report AckTimedOut, terminate"
    TERMINATE = "report SessionTerminated"
    EARLY_BYE = "487 the INVITE, terminate (§15.1.2)"


_S, _I, _A = SessionState, SessionInput, SessionAction
_Table = dict[tuple[SessionState, SessionInput], tuple[SessionAction, SessionState]]

# §13.3 as seen by the UAS core of the initial INVITE.
UAS_TABLE: _Table = {
    (_S.NEW, _I.PROVISIONAL): (_A.SEND, _S.EARLY),
    (_S.EARLY, _I.PROVISIONAL): (_A.SEND, _S.EARLY),
    (_S.NEW, _I.SUCCESS): (_A.START_2XX, _S.ANSWERED),
    (_S.EARLY, _I.SUCCESS): (_A.START_2XX, _S.ANSWERED),
    (_S.NEW, _I.FAILURE): (_A.REJECTED, _S.TERMINATED),
    (_S.EARLY, _I.FAILURE): (_A.REJECTED, _S.TERMINATED),
    (_S.NEW, _I.CANCEL): (_A.CANCELLED, _S.TERMINATED),
    (_S.EARLY, _I.CANCEL): (_A.CANCELLED, _S.TERMINATED),
    # §9.2: a CANCEL after the final response has no effect on the INVITE.
    (_S.ANSWERED, _I.CANCEL): (_A.NONE, _S.ANSWERED),
    (_S.CONFIRMED, _I.CANCEL): (_A.NONE, _S.CONFIRMED),
    (_S.TERMINATED, _I.CANCEL): (_A.NONE, _S.TERMINATED),
    (_S.ANSWERED, _I.ACK): (_A.CONFIRM, _S.CONFIRMED),
    (_S.CONFIRMED, _I.ACK): (_A.NONE, _S.CONFIRMED),  # a retransmitted ACK
    (_S.TERMINATED, _I.ACK): (_A.NONE, _S.TERMINATED),
    (_S.ANSWERED, _I.ACK_TIMEOUT): (_A.ACK_TIMEOUT, _S.TERMINATED),
    (_S.EARLY, _I.BYE_RECEIVED): (_A.EARLY_BYE, _S.TERMINATED),
    (_S.ANSWERED, _I.BYE_RECEIVED): (_A.TERMINATE, _S.TERMINATED),
    (_S.CONFIRMED, _I.BYE_RECEIVED): (_A.TERMINATE, _S.TERMINATED),
    # §15: the callee must not send BYE before the ACK (or its timeout) - no ANSWERED row.
    (_S.CONFIRMED, _I.BYE_SENT): (_A.NONE, _S.TERMINATED),
    (_S.ANSWERED, _I.DIALOG_FAILED): (_A.TERMINATE, _S.TERMINATED),
    (_S.CONFIRMED, _I.DIALOG_FAILED): (_A.TERMINATE, _S.TERMINATED),
}

# §13.2 as seen by the UAC core of the initial INVITE.
UAC_TABLE: _Table = {
    (_S.NEW, _I.PROVISIONAL): (_A.SEND, _S.EARLY),
    (_S.EARLY, _I.PROVISIONAL): (_A.SEND, _S.EARLY),
    (_S.NEW, _I.SUCCESS): (_A.CONFIRM, _S.CONFIRMED),
    (_S.EARLY, _I.SUCCESS): (_A.CONFIRM, _S.CONFIRMED),
    (_S.CONFIRMED, _I.SUCCESS): (_A.ACK_AGAIN, _S.CONFIRMED),
    (_S.TERMINATED, _I.SUCCESS): (_A.ACK_AND_BYE, _S.TERMINATED),
    (_S.NEW, _I.SUCCESS_AFTER_CANCEL): (_A.ACK_AND_BYE, _S.TERMINATED),
    (_S.EARLY, _I.SUCCESS_AFTER_CANCEL): (_A.ACK_AND_BYE, _S.TERMINATED),
    (_S.CONFIRMED, _I.SUCCESS_AFTER_CANCEL): (_A.ACK_AGAIN, _S.CONFIRMED),
    (_S.TERMINATED, _I.SUCCESS_AFTER_CANCEL): (_A.ACK_AND_BYE, _S.TERMINATED),
    (_S.NEW, _I.FAILURE): (_A.REJECTED, _S.TERMINATED),
    (_S.EARLY, _I.FAILURE): (_A.REJECTED, _S.TERMINATED),
    (_S.CONFIRMED, _I.FAILURE): (_A.NONE, _S.CONFIRMED),
    (_S.TERMINATED, _I.FAILURE): (_A.NONE, _S.TERMINATED),
    (_S.NEW, _I.CANCEL): (_A.NONE, _S.NEW),
    (_S.EARLY, _I.CANCEL): (_A.NONE, _S.EARLY),
    # §9.1: cancelling after the final response is a race the app cannot see; no effect.
    (_S.CONFIRMED, _I.CANCEL): (_A.NONE, _S.CONFIRMED),
    (_S.TERMINATED, _I.CANCEL): (_A.NONE, _S.TERMINATED),
    (_S.CONFIRMED, _I.BYE_RECEIVED): (_A.TERMINATE, _S.TERMINATED),
    (_S.CONFIRMED, _I.BYE_SENT): (_A.NONE, _S.TERMINATED),
    (_S.CONFIRMED, _I.DIALOG_FAILED): (_A.TERMINATE, _S.TERMINATED),
}


class _Timer(enum.Enum):
    RETRANSMIT_2XX = "2xx retransmission (§13.3.1.4)"
    GIVE_UP_2XX = "no ACK after 64*T1"
    GLARE = "491 retry (§14.1)"
    REFRESH = "session refresh due (RFC 4028 §10)"
    EXPIRE = "session expired (RFC 4028 §10)"


def _sdp_of(msg: Request | Response) -> SessionDescription | None:
    """The SDP body of a message, or None; malformed SDP raises 488."""
    if not msg.body:
        return None
    ctype = (msg.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
    if ctype != SDP:
        return None
    return parse_sdp(msg.body)


def _as_name_addr(value: str | NameAddr) -> NameAddr:
    return value if isinstance(value, NameAddr) else parse_name_addr(value)


def _session_expires(msg: Request | Response) -> tuple[int, str | None] | None:
    """(interval, refresher) from Session-Expires (RFC 4028 §4), or None."""
    value = msg.headers.get("Session-Expires")
    if value is None:
        return None
    head, *params = [p.strip() for p in value.split(";")]
    interval = fields.parse_int_header(head, name="Session-Expires")
    refresher = None
    for param in params:
        name, _, val = param.partition("=")
        if name.strip().lower() == "refresher" and val.strip().lower() in ("uac", "uas"):
            refresher = val.strip().lower()
    return interval, refresher


def _supports_timer(msg: Request | Response) -> bool:
    tags = [v.lower() for v in msg.headers.values("Supported") + msg.headers.values("Require")]
    return "timer" in tags


def error_response(req: Request, exc: RemoteProtocolError, *, to_tag: str) -> Response | None:
    """The response for a RemoteProtocolError raised while handling ``req``: 422 gets
    the Min-SE it needs (RFC 4028 §6), 500 a Retry-After (§14.2). None: drop it."""
    if exc.status is None or req.method == "ACK":
        return None
    extra: list[tuple[str, str]] = []
    if isinstance(exc, IntervalTooSmall):
        extra.append(("Min-SE", str(exc.min_se)))
    if exc.status == 500 and isinstance(exc, RetryLater):
        extra.append(("Retry-After", str(exc.retry_after)))
    return make_response(req, exc.status, to_tag=to_tag, extra_headers=extra)


class IntervalTooSmall(RemoteProtocolError):
    """RFC 4028 §8.1: Session-Expires below our Min-SE → 422 with Min-SE."""

    def __init__(self, min_se: int) -> None:
        super().__init__("Session-Expires below Min-SE", status=422)
        self.min_se = min_se


class RetryLater(RemoteProtocolError):
    """§14.2: a re-INVITE while an earlier one is still being answered → 500."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("previous re-INVITE still in progress", status=500)
        self.retry_after = retry_after


class _Session:
    """What both legs share once a dialog exists: in-dialog requests both ways, the 2xx
    retransmission of a UAS core, glare back-off and session timers."""

    _table: _Table

    def __init__(
        self,
        *,
        config: SessionConfig,
        contact: str,
        rng: Callable[[], float] | None,
        owns_call_id: bool,
    ) -> None:
        self.config = config
        self.contact = contact
        self.state = SessionState.NEW
        self.dialog: Dialog | None = None
        self._rng = rng or random.random
        self._owns_call_id = owns_call_id
        self._events: deque[SessionEvent] = deque()
        self._timers: dict[_Timer, float] = {}
        # The 2xx we retransmit until its ACK, with the request it answers.
        self._pending_2xx: tuple[Request, Response, int] | None = None
        self._retransmit_interval = config.t1
        self._initial_cseq: int | None = None
        # Offer/answer and glare bookkeeping (§14.1, §14.2, RFC 3311 §5.2).
        self._our_pending: dict[str, int] = {}  # method -> CSeq of our outstanding request
        self._their_pending: dict[str, int] = {}  # method -> CSeq not yet answered by us
        self._glare_method: str | None = None
        # RFC 4028 state, set when a 2xx fixes the interval.
        self.session_interval: int | None = None
        self.we_refresh = False
        self._bye_allowed_after_end = False
        self.terminate_reason: str | None = None

    # ------------------------------------------------------------------ drains & clock

    def next_event(self) -> SessionEvent | None:
        return self._events.popleft() if self._events else None

    def next_deadline(self) -> float | None:
        return min(self._timers.values(), default=None)

    def handle_timer(self, now: float) -> None:
        for timer, at in sorted(self._timers.items(), key=lambda item: item[1]):
            if at > now or self._timers.get(timer) != at:
                continue
            del self._timers[timer]
            self._fire(timer, now)

    def _fire(self, timer: _Timer, now: float) -> None:
        if timer is _Timer.RETRANSMIT_2XX and self._pending_2xx is not None:
            request, response, _ = self._pending_2xx
            self._events.append(ResponseRetransmissionDue(request, response))
            self._retransmit_interval = min(2 * self._retransmit_interval, self.config.t2)
            self._timers[_Timer.RETRANSMIT_2XX] = now + self._retransmit_interval
        elif timer is _Timer.GIVE_UP_2XX and self._pending_2xx is not None:
            _, _, seq = self._pending_2xx
            self._stop_2xx()
            if seq == self._initial_cseq and self.state is SessionState.ANSWERED:
                self._bye_allowed_after_end = True
                self._step(SessionInput.ACK_TIMEOUT)
            else:
                # §14.2 / §13.3.1.4: an unacknowledged re-INVITE 2xx ends the session too.
                self._events.append(AckTimedOut())
                self._fail_dialog("ack-timeout", bye_allowed=True)
        elif timer is _Timer.GLARE and self._glare_method is not None:
            method, self._glare_method = self._glare_method, None
            self._events.append(RetryReInvite(method))
        elif timer is _Timer.REFRESH:
            self._events.append(RefreshDue())
        elif timer is _Timer.EXPIRE:
            self._events.append(SessionExpired())
            self._fail_dialog("expired", bye_allowed=True)

    # ------------------------------------------------------------------ state table

    def _step(self, inp: SessionInput) -> SessionAction:
        entry = self._table.get((self.state, inp))
        if entry is None:
            raise LocalProtocolError(f"{inp.name} not allowed in {self.state.name}")
        action, nxt = entry
        self.state = nxt
        if action is SessionAction.ACK_TIMEOUT:
            self.terminate_reason = "ack-timeout"
            self._events.append(AckTimedOut())
        if nxt is SessionState.TERMINATED:
            self._timers.clear()
            self._stop_2xx()
        return action

    def _fail_dialog(self, reason: str, *, bye_allowed: bool) -> None:
        if self.state is SessionState.TERMINATED:
            return
        self._bye_allowed_after_end = bye_allowed
        self.terminate_reason = reason
        self._step(SessionInput.DIALOG_FAILED)
        self._events.append(SessionTerminated(reason))

    def _stop_2xx(self) -> None:
        self._pending_2xx = None
        self._timers.pop(_Timer.RETRANSMIT_2XX, None)
        self._timers.pop(_Timer.GIVE_UP_2XX, None)

    def _start_2xx(self, request: Request, response: Response, now: float) -> None:
        # §13.3.1.4: T1, doubling up to T2; after 64*T1 without ACK, give up.
        self._pending_2xx = (request, response, fields.cseq(request).seq)
        self._retransmit_interval = self.config.t1
        self._timers[_Timer.RETRANSMIT_2XX] = now + self.config.t1
        self._timers[_Timer.GIVE_UP_2XX] = now + 64 * self.config.t1

    @property
    def terminated(self) -> bool:
        return self.state is SessionState.TERMINATED

    # ------------------------------------------------------------------ session timer

    def _start_session_timer(self, interval: int | None, we_refresh: bool, now: float) -> None:
        self._timers.pop(_Timer.REFRESH, None)
        self._timers.pop(_Timer.EXPIRE, None)
        self.session_interval = interval
        self.we_refresh = we_refresh
        if interval is None or self.terminated:
            return
        if we_refresh:
            self._timers[_Timer.REFRESH] = now + interval / 2
        # §10: the side that does not refresh sends BYE at interval - min(32, interval/3);
        # the refresher uses the same bound so a refresh that never succeeds ends it too.
        self._timers[_Timer.EXPIRE] = now + interval - min(32, interval / 3)

    def _session_expires_header(self, *, sender_refreshes: bool) -> tuple[str, str]:
        assert self.session_interval is not None
        role = "uac" if sender_refreshes else "uas"
        return ("Session-Expires", f"{self.session_interval};refresher={role}")

    # ------------------------------------------------------------------ outgoing in-dialog

    def _confirmed_dialog(self) -> Dialog:
        if self.dialog is None or self.state is not SessionState.CONFIRMED:
            raise LocalProtocolError(f"no confirmed dialog (state {self.state.name})")
        return self.dialog

    def create_request(
        self,
        method: str,
        body: bytes = b"",
        content_type: str | None = None,
        extra_headers: Iterable[tuple[str, str]] = (),
        now: float = 0.0,
    ) -> Request:
        """A re-INVITE, UPDATE, INFO, REFER, NOTIFY, OPTIONS or BYE in the dialog."""
        del now  # kept in the signature for symmetry; building a request needs no clock
        method = method.upper()
        if method == "BYE":
            return self.bye(extra_headers=extra_headers)
        dialog = self._confirmed_dialog()
        # §14.1 / RFC 3311 §5.1: one offer at a time in each direction.
        if method in ("INVITE", "UPDATE") and (
            self._our_pending.get("INVITE") is not None
            or (method == "UPDATE" and self._our_pending.get("UPDATE") is not None)
        ):
            raise LocalProtocolError(f"a {method} of ours is still outstanding")
        headers = list(extra_headers)
        if method in ("INVITE", "UPDATE", "REFER", "NOTIFY"):
            headers.append(("Contact", f"<{self.contact}>"))  # target refresh (§12.2)
        if method in ("INVITE", "UPDATE") and self.session_interval is not None:
            headers.append(("Supported", "timer"))
            headers.append(self._session_expires_header(sender_refreshes=self.we_refresh))
        req = dialog.create_request(
            method, body=body, content_type=content_type, extra_headers=headers
        )
        if method in ("INVITE", "UPDATE"):
            self._our_pending[method] = dialog.local_seq
            self._glare_method = None
            self._timers.pop(_Timer.GLARE, None)
        return req

    def bye(self, extra_headers: Iterable[tuple[str, str]] = ()) -> Request:
        """The BYE ending this leg; the session is terminated at once (§15.1.1: the
        caller must not wait for the BYE's response to consider the session over)."""
        if self.dialog is None:
            raise LocalProtocolError("no dialog to BYE")
        if self.state is SessionState.TERMINATED:
            if not self._bye_allowed_after_end:
                raise LocalProtocolError("session already ended")
            self._bye_allowed_after_end = False
            return self.dialog.create_request("BYE", extra_headers=extra_headers)
        self._step(SessionInput.BYE_SENT)
        self.terminate_reason = "local-bye"
        return self.dialog.create_request("BYE", extra_headers=extra_headers)

    def _in_dialog_response(self, resp: Response, now: float) -> list[Request]:
        """A response to one of our in-dialog requests (or its synthetic 408/503)."""
        cs = fields.cseq(resp)
        if resp.status < 200:
            return []
        dialog = self.dialog
        method = cs.method
        if dialog is None:
            return []
        out: list[Request] = []
        if self._our_pending.get(method) == cs.seq:
            del self._our_pending[method]
        sdp: SessionDescription | None = None
        try:
            sdp = _sdp_of(resp)
        except RemoteProtocolError:
            sdp = None  # a bad answer; the app sees sdp None and a 2xx, and may BYE
        if method == "INVITE" and 200 <= resp.status < 300:
            # §13.2.2.4 also for re-INVITE: every 2xx is ACKed by the UAC core.
            out.append(create_ack(dialog, cs.seq))
        if method in ("INVITE", "UPDATE") and 200 <= resp.status < 300:
            self._refresh_succeeded(resp, now, sent_by_us=True)
        if method in ("INVITE", "UPDATE") and resp.status == 491:
            # §14.1: retry after a random delay, longer for the Call-ID owner.
            low, high = (2.1, 4.0) if self._owns_call_id else (0.0, 2.0)
            self._glare_method = method
            self._timers[_Timer.GLARE] = now + low + (high - low) * self._rng()
        self._events.append(RequestAnswered(method, resp.status, sdp, resp))
        if method != "BYE" and resp.status in (408, 481):
            # §12.2.1.2: the dialog is gone (or the peer is); end the session.
            self._fail_dialog(str(resp.status), bye_allowed=resp.status == 408)
        return out

    def _refresh_succeeded(self, msg: Request | Response, now: float, *, sent_by_us: bool) -> None:
        """A 2xx to a re-INVITE/UPDATE (either direction) refreshed the session (§10)."""
        if self.session_interval is None:
            return
        interval = self.session_interval
        we_refresh = self.we_refresh
        try:
            se = _session_expires(msg)
        except RemoteProtocolError:
            se = None
        if se is not None:
            interval = max(se[0], self.config.min_se)
            if se[1] is not None:
                # "uac" names the sender of the refresh request.
                we_refresh = (se[1] == "uac") == sent_by_us
        self._start_session_timer(interval, we_refresh, now)

    # ------------------------------------------------------------------ incoming in-dialog

    def on_request(self, req: Request, now: float) -> Response | None:
        """An in-dialog request from the peer (not ACK, not CANCEL).

        Returns the response when the session answers itself (200 to BYE, 481, 500,
        491, 488, 405); None when an event was queued and the app answers with
        :meth:`respond`. Never raises for peer faults.
        """
        tag = self.dialog.local_tag if self.dialog is not None else "-"
        try:
            return self._on_request(req, now)
        except RemoteProtocolError as exc:
            return error_response(req, exc, to_tag=tag)

    def _on_request(self, req: Request, now: float) -> Response | None:
        dialog = self.dialog
        if req.method in ("ACK", "CANCEL"):
            raise LocalProtocolError(f"{req.method} goes to on_ack / on_cancel")
        if dialog is None or not dialog.matches(req) or (self.state is SessionState.TERMINATED):
            raise RemoteProtocolError("no such dialog", status=481)  # §12.2.2
        if self.state in (SessionState.NEW, SessionState.EARLY) and req.method != "BYE":
            # Early-dialog requests (UPDATE/INFO before answer) are not supported yet.
            raise RemoteProtocolError("early dialog requests not supported", status=481)
        dialog.check_in_dialog_request(req)  # §12.2.2: lower CSeq → 500
        method = req.method
        if method == "BYE":
            self._answer_pending_with_487()
            self.terminate_reason = "bye"
            action = self._step(SessionInput.BYE_RECEIVED)
            del action
            self._events.append(SessionTerminated("bye"))
            return make_response(req, 200, to_tag=dialog.local_tag)
        if method in ("INVITE", "UPDATE"):
            return self._on_offer_request(req, now)
        if method == "INFO":
            self._events.append(InfoReceived(req, req.headers.get("Content-Type"), req.body))
        elif method == "REFER":
            self._events.append(ReferReceived(req))
        elif method == "NOTIFY":
            self._events.append(NotifyReceived(req))
        elif method == "OPTIONS":
            self._events.append(OptionsReceived(req))
        else:
            return make_response(
                req, 405, to_tag=dialog.local_tag, extra_headers=[("Allow", ALLOW)]
            )
        self._their_pending.setdefault(method, fields.cseq(req).seq)
        return None

    def _on_offer_request(self, req: Request, now: float) -> Response | None:
        assert self.dialog is not None
        method = req.method
        if method == "INVITE" and (
            self._their_pending.get("INVITE") is not None or self.state is SessionState.ANSWERED
        ):
            if self._their_pending.get("INVITE") is not None:
                # §14.2: a re-INVITE while we are still answering the previous one.
                raise RetryLater(int(self._rng() * 10))
            # Our initial 2xx is not ACKed: the offer/answer is incomplete (RFC 5407 §3.1.5).
            raise RemoteProtocolError("previous INVITE not acknowledged", status=491)
        if self._our_pending.get("INVITE") is not None or self._our_pending.get(method) is not None:
            # §14.2 / RFC 3311 §5.2: glare, both sides offered at once.
            raise RemoteProtocolError("glare: our own offer is outstanding", status=491)
        if method == "UPDATE" and self._their_pending.get("INVITE") is not None:
            raise RemoteProtocolError("offer pending in a re-INVITE", status=491)
        se = _session_expires(req)
        if se is not None and se[0] < self.config.min_se:
            raise IntervalTooSmall(self.config.min_se)
        sdp = _sdp_of(req)  # 488 on garbage
        self._their_pending[method] = fields.cseq(req).seq
        if method == "INVITE":
            self._events.append(ReInviteReceived(req, sdp))
        else:
            self._events.append(UpdateReceived(req, sdp))
        del now
        return None

    def _answer_pending_with_487(self) -> None:
        # §15.1.2: a BYE ends pending requests; the app learns of it by the event.
        self._their_pending.clear()

    def respond(
        self,
        req: Request,
        status: int,
        reason: str | None = None,
        *,
        sdp: bytes | None = None,
        body: bytes = b"",
        content_type: str | None = None,
        extra_headers: Iterable[tuple[str, str]] = (),
        now: float = 0.0,
    ) -> Response:
        """The app's answer to an in-dialog request announced by an event."""
        if self.dialog is None:
            raise LocalProtocolError("no dialog")
        method = req.method
        seq = fields.cseq(req).seq
        if status >= 200 and self._their_pending.get(method) == seq:
            del self._their_pending[method]
        headers = list(extra_headers)
        if sdp is not None:
            body, content_type = sdp, SDP
        if method in ("INVITE", "UPDATE") and 200 <= status < 300:
            headers.append(("Contact", f"<{self.contact}>"))
            if self.session_interval is not None:
                se = _session_expires(req)
                if se is not None:
                    self.session_interval = max(se[0], self.config.min_se)
                    if se[1] is not None:
                        self.we_refresh = se[1] == "uas"
                headers.append(("Require", "timer"))
                headers.append(self._session_expires_header(sender_refreshes=not self.we_refresh))
        if body and content_type is None:
            raise LocalProtocolError("a body needs a Content-Type")
        if content_type is not None:
            headers.append(("Content-Type", content_type))
        resp = make_response(
            req, status, reason, to_tag=self.dialog.local_tag, extra_headers=headers
        )
        resp.body = body
        if method in ("INVITE", "UPDATE") and 200 <= status < 300:
            self._start_session_timer(self.session_interval, self.we_refresh, now)
        if method == "INVITE" and 200 <= status < 300:
            self._start_2xx(req, resp, now)
        return resp

    def on_ack(self, ack: Request, now: float) -> None:
        """An ACK for one of our 2xx (the transaction layer's AckReceived)."""
        del now
        if self.dialog is None or self._pending_2xx is None:
            return  # a late or duplicated ACK: absorbed (§13.3.1.4)
        try:
            seq = fields.cseq(ack).seq
        except RemoteProtocolError:
            return
        if seq != self._pending_2xx[2]:
            return
        self._stop_2xx()
        try:
            sdp = _sdp_of(ack)
        except RemoteProtocolError:
            sdp = None
        if seq == self._initial_cseq and self.state is SessionState.ANSWERED:
            self._step(SessionInput.ACK)
            self._events.append(SessionConfirmed(sdp))
        else:
            self._events.append(ReInviteAcked(sdp))


class InviteServerSession(_Session):
    """The UAS leg: created from the initial INVITE (§13.3)."""

    _table = UAS_TABLE

    def __init__(
        self,
        invite: Request,
        local_tag: str,
        *,
        contact: str,
        config: SessionConfig = SessionConfig(),  # frozen, so sharing the default is safe
        rng: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(config=config, contact=contact, rng=rng, owns_call_id=False)
        self.invite = invite
        self.local_tag = local_tag
        self.dialog = Dialog.from_request(invite, local_tag)  # 400 without one Contact
        self._initial_cseq = fields.cseq(invite).seq
        self.offer = _sdp_of(invite)  # 488 on garbage (§13.3.1.2)
        # RFC 4028 §9: the UAS picks the interval and refresher for the 2xx.
        se = _session_expires(invite)
        if se is not None and se[0] < config.min_se:
            raise IntervalTooSmall(config.min_se)
        self._offered_interval: int | None = None
        self._offered_refresher: str | None = None
        if se is not None:
            self._offered_interval = se[0]
            self._offered_refresher = se[1]
        self._uac_supports_timer = _supports_timer(invite)

    @classmethod
    def from_invite(
        cls,
        req: Request,
        local_tag: str,
        now: float,
        *,
        contact: str,
        config: SessionConfig = SessionConfig(),  # frozen, so sharing the default is safe
        rng: Callable[[], float] | None = None,
    ) -> InviteServerSession:
        """Raises RemoteProtocolError (400 Contact, 488 SDP, 422 interval; answer with
        :func:`error_response`)."""
        del now
        if req.method != "INVITE" or fields.to(req).tag is not None:
            raise LocalProtocolError("from_invite needs an initial INVITE")
        return cls(req, local_tag, contact=contact, config=config, rng=rng)

    def provisional(self, status: int = 180, sdp: bytes | None = None) -> Response:
        """180/183 with our To tag (early dialog, §13.3.1.1)."""
        if not 100 < status < 200:
            raise LocalProtocolError("provisional needs 101-199")
        self._step(SessionInput.PROVISIONAL)
        extra = [("Contact", f"<{self.contact}>")]
        if sdp is not None:
            extra.append(("Content-Type", SDP))
        resp = make_response(self.invite, status, to_tag=self.local_tag, extra_headers=extra)
        resp.body = sdp or b""
        return resp

    def accept(
        self,
        sdp: bytes | None,
        contact: str | None = None,
        now: float = 0.0,
        extra_headers: Iterable[tuple[str, str]] = (),
    ) -> Response:
        """The 2xx; the session retransmits it until the ACK (§13.3.1.4)."""
        if contact is not None:
            self.contact = contact
        headers = [("Contact", f"<{self.contact}>"), ("Allow", ALLOW), *extra_headers]
        if self.config.session_timer or self._offered_interval is not None:
            interval = self._offered_interval or self.config.session_expires
            if self._offered_refresher is not None:
                we = self._offered_refresher == "uas"
            else:
                # §9: a UAC that supports timers refreshes; otherwise we must.
                we = not self._uac_supports_timer
            self.session_interval, self.we_refresh = interval, we
            headers.append(("Session-Expires", f"{interval};refresher={'uas' if we else 'uac'}"))
            if self._uac_supports_timer:
                headers.append(("Require", "timer"))
        if sdp is not None:
            headers.append(("Content-Type", SDP))
        self._step(SessionInput.SUCCESS)
        resp = make_response(self.invite, 200, to_tag=self.local_tag, extra_headers=headers)
        resp.body = sdp or b""
        self._start_2xx(self.invite, resp, now)
        self._start_session_timer(self.session_interval, self.we_refresh, now)
        return resp

    def reject(
        self,
        status: int,
        reason: str | None = None,
        extra_headers: Iterable[tuple[str, str]] = (),
    ) -> Response:
        if not 300 <= status <= 699:
            raise LocalProtocolError("reject needs 300-699")
        self._step(SessionInput.FAILURE)
        self.terminate_reason = "rejected"
        self._events.append(SessionTerminated("rejected"))
        return make_response(
            self.invite, status, reason, to_tag=self.local_tag, extra_headers=extra_headers
        )

    def on_cancel(self, now: float) -> Response | None:
        """CANCEL matched our INVITE (CancelReceived): the 487 for the INVITE if it is
        still unanswered (§9.2), else None."""
        del now
        action = self._step(SessionInput.CANCEL)
        if action is not SessionAction.CANCELLED:
            return None
        self.terminate_reason = "cancelled"
        self._events.append(Cancelled())
        self._events.append(SessionTerminated("cancelled"))
        return make_response(self.invite, 487, to_tag=self.local_tag)

    def on_request(self, req: Request, now: float) -> Response | None:
        if (
            req.method == "BYE"
            and self.state is SessionState.EARLY
            and self.dialog is not None
            and self.dialog.matches(req)
        ):
            # §15.1.2: BYE on an early dialog: 200 it and 487 the INVITE (app sends both).
            self._step(SessionInput.BYE_RECEIVED)
            self.terminate_reason = "bye"
            self._events.append(SessionTerminated("bye"))
            return make_response(req, 200, to_tag=self.local_tag)
        return super().on_request(req, now)

    def invite_487(self) -> Response:
        """The 487 for the INVITE after an early BYE (§15.1.2)."""
        return make_response(self.invite, 487, to_tag=self.local_tag)

    def on_response(self, resp: Response, now: float) -> list[Request]:
        """A response to one of our in-dialog requests; returns ACKs to send."""
        return self._in_dialog_response(resp, now)


class InviteClientSession(_Session):
    """The UAC leg toward one callee (all its forks): §13.2."""

    _table = UAC_TABLE

    def __init__(
        self,
        *,
        contact: str,
        config: SessionConfig = SessionConfig(),  # frozen, so sharing the default is safe
        rng: Callable[[], float] | None = None,
        call_id: str | None = None,
        local_tag: str | None = None,
    ) -> None:
        super().__init__(config=config, contact=contact, rng=rng, owns_call_id=True)
        self.call_id = call_id or f"{secrets.token_hex(12)}"
        self.local_tag = local_tag or secrets.token_hex(6)
        self.invite: Request | None = None
        self.early: dict[str, Dialog] = {}
        self.extra_dialogs: dict[str, Dialog] = {}
        self._ack: Request | None = None
        self._cancelled = False

    def create_invite(
        self,
        target_uri: str,
        from_: str | NameAddr,
        to: str | NameAddr,
        sdp: bytes | None,
        now: float,
        extra_headers: Iterable[tuple[str, str]] = (),
    ) -> Request:
        """The initial INVITE (§8.1.1, §13.2.1): new From tag, CSeq 1, our Contact."""
        del now
        if self.invite is not None:
            raise LocalProtocolError("INVITE already created")
        headers = Headers()
        to_addr = _as_name_addr(to)
        if to_addr.tag is not None:
            raise LocalProtocolError("an initial INVITE has no To tag")
        headers.add("To", str(to_addr))
        headers.add("From", str(_as_name_addr(from_).with_tag(self.local_tag)))
        headers.add("Call-ID", self.call_id)
        headers.add("CSeq", "1 INVITE")
        headers.add("Max-Forwards", "70")
        headers.add("Contact", f"<{self.contact}>")
        headers.add("Allow", ALLOW)
        if self.config.session_timer:
            headers.add("Supported", "timer")
            headers.add("Session-Expires", str(self.config.session_expires))
            headers.add("Min-SE", str(self.config.min_se))
        for name, value in extra_headers:
            headers.add(name, value)
        if sdp is not None:
            headers.add("Content-Type", SDP)
        self.invite = Request("INVITE", target_uri, headers, sdp or b"")
        self._initial_cseq = 1
        return self.invite

    def retry_invite(self, extra_headers: Iterable[tuple[str, str]] = ()) -> Request:
        """The INVITE again with CSeq + 1 (after 401/407 with credentials, or 422 with a
        larger Session-Expires, RFC 4028 §7.4): same Call-ID and From tag (§8.1.3.5)."""
        if self.invite is None or self.state is not SessionState.TERMINATED or self.dialog:
            raise LocalProtocolError("retry only after a failed INVITE")
        headers = self.invite.headers.copy()
        seq = fields.cseq(self.invite).seq + 1
        headers.set("CSeq", f"{seq} INVITE")
        for name, value in extra_headers:
            headers.set(name, value)
        self.invite = Request("INVITE", self.invite.uri, headers, self.invite.body)
        self._initial_cseq = seq
        self.state = SessionState.NEW
        self.early.clear()
        self.terminate_reason = None
        return self.invite

    def cancel(self) -> None:
        """Note that the app CANCELs (it calls the transaction layer's ``cancel``); a 2xx
        that still arrives is ACKed and BYEd (§9.1, §15)."""
        self._step(SessionInput.CANCEL)
        self._cancelled = True

    def ack(self) -> Request:
        if self._ack is None:
            raise LocalProtocolError("no 2xx to ACK yet")
        return self._ack

    def on_response(self, resp: Response, now: float) -> list[Request]:
        """Any response for this leg: to the initial INVITE (1xx/2xx/failure, also the
        synthetic 408/503 of the transaction layer) or to an in-dialog request. Returns
        the requests to send now (ACKs, BYE for an extra fork). Never raises for peer
        faults; unmatched responses are ignored."""
        try:
            cs = fields.cseq(resp)
        except RemoteProtocolError:
            return []
        if cs.method == "INVITE" and cs.seq == self._initial_cseq:
            try:
                return self._initial_response(resp, now)
            except RemoteProtocolError:
                return []
        if self.dialog is None:
            return []
        try:
            if fields.to(resp).tag != self.dialog.remote_tag:
                return []  # e.g. the 200 to a BYE of an extra fork
        except RemoteProtocolError:
            return []
        return self._in_dialog_response(resp, now)

    def _initial_response(self, resp: Response, now: float) -> list[Request]:
        assert self.invite is not None
        tag = fields.to(resp).tag
        if resp.status < 200:
            if resp.status == 100 or self.state not in (SessionState.NEW, SessionState.EARLY):
                return []
            try:
                sdp = _sdp_of(resp)
            except RemoteProtocolError:
                sdp = None
            if tag is not None and tag not in self.early:
                # No usable Contact: ringing still counts, there is just no early dialog.
                with contextlib.suppress(RemoteProtocolError):
                    self.early[tag] = Dialog.from_response(self.invite, resp)
            self._step(SessionInput.PROVISIONAL)
            self._events.append(Ringing(resp.status, sdp, tag))
            return []
        if resp.status >= 300:
            action = self._step(SessionInput.FAILURE)
            if action is SessionAction.REJECTED:
                self.terminate_reason = "rejected"
                self._events.append(Rejected(resp.status, resp.reason, resp))
                self._events.append(SessionTerminated("rejected"))
            return []
        if tag is None:
            return []  # a 2xx without To tag cannot be ACKed in a dialog; Timer B ends it
        inp = SessionInput.SUCCESS_AFTER_CANCEL if self._cancelled else SessionInput.SUCCESS
        action = self._step(inp)
        if action is SessionAction.CONFIRM:
            self.dialog = self._dialog_from(resp)
            self.early.clear()
            self._ack = create_ack(self.dialog, self._initial_cseq or 1)
            self._negotiate_timer(resp, now)
            try:
                sdp = _sdp_of(resp)
            except RemoteProtocolError:
                sdp = None
            self._events.append(Answered(sdp, tag))
            return [self._ack]
        if (
            action is SessionAction.ACK_AGAIN
            and self.dialog is not None
            and tag == self.dialog.remote_tag
        ):
            return [self.ack()]  # §13.2.2.4: a retransmitted 2xx gets the same ACK
        # Another fork's 2xx (§13.2.2.4), or a 2xx after CANCEL/hang-up: ACK, then BYE.
        if tag in self.extra_dialogs:
            extra = self.extra_dialogs[tag]
            return [create_ack(extra, self._initial_cseq or 1)]
        extra = self._dialog_from(resp)
        self.extra_dialogs[tag] = extra
        if self.dialog is None:
            self.dialog = extra  # so a late BYE response still matches something
            if action is SessionAction.ACK_AND_BYE and self.terminate_reason is None:
                self.terminate_reason = "cancelled"
                self._events.append(SessionTerminated("cancelled"))
        return [create_ack(extra, self._initial_cseq or 1), extra.create_request("BYE")]

    def build_bye_for_extra_dialog(self, remote_tag: str) -> Request:
        """A BYE for a fork whose 2xx we did not keep (already sent by on_response)."""
        return self.extra_dialogs[remote_tag].create_request("BYE")

    def _dialog_from(self, resp: Response) -> Dialog:
        assert self.invite is not None
        if len(resp.headers.values("Contact")) != 1:
            # A 2xx without a usable Contact still has to be ACKed (§13.2.2.4); send it
            # to the Request-URI, the only target we know.
            headers = resp.headers.copy()
            headers.remove("Contact")
            headers.add("Contact", f"<{self.invite.uri}>")
            resp = Response(resp.status, resp.reason, headers, resp.body)
        return Dialog.from_response(self.invite, resp)

    def _negotiate_timer(self, resp: Response, now: float) -> None:
        # RFC 4028 §7.2: the 2xx fixes interval and refresher; without Session-Expires
        # the UAS does not do timers and we refresh ourselves (dead-call detection).
        if not self.config.session_timer:
            return
        try:
            se = _session_expires(resp)
        except RemoteProtocolError:
            se = None
        if se is None:
            self._start_session_timer(self.config.session_expires, True, now)
            return
        interval = max(se[0], self.config.min_se)
        self._start_session_timer(interval, se[1] != "uas", now)
