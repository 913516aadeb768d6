"""Client transactions: INVITE (RFC 3261 §17.1.1 as amended by RFC 6026 §8.4) and
non-INVITE (§17.1.2).

Each machine is a table ``{(State, Input): (Action, next_state)}``. Inputs come from the
network (responses), the transport (errors) and timers; a pair missing from a table is a
message the RFC tells us to ignore (e.g. a 1xx after the final response). The TU never
feeds a client transaction directly, so there is no misuse to reject here.

A transaction does no I/O: it appends messages for its peer to ``outbox`` and TU events to
``events``; the layer drains both after every call.
"""

from __future__ import annotations

import enum

from ucgate.sip.fields import to
from ucgate.sip.message import Headers, Message, Request, Response
from ucgate.sip.peer import Peer
from ucgate.sip.transaction.events import (
    ResponseReceived,
    TransactionEvent,
    TransactionTerminated,
    TransactionTimedOut,
    TransportErrorOccurred,
)
from ucgate.sip.transaction.key import TxKey
from ucgate.sip.transaction.machine import TimedMachine
from ucgate.sip.transaction.timers import Deadlines, TimerConfig

# §8.1.1: the headers a response copies from its request; enough for the TU to match a
# synthetic response (§8.1.3.1) to what it sent.
_COPIED = ("Via", "From", "To", "Call-ID", "CSeq")


def synthetic_response(request: Request, status: int, reason: str) -> Response:
    """A response the client transaction makes up for the TU (408 timeout, 503 transport
    failure, RFC 3261 §8.1.3.1); it never goes on the wire."""
    headers = Headers()
    for name in _COPIED:
        for value in request.headers.get_all(name):
            headers.add(name, value)
    return Response(status, reason, headers)


class Kind(enum.Enum):
    """How a response drives a client transaction (§17.1.1.2, §17.1.2.2)."""

    PROVISIONAL = "1xx"
    SUCCESS = "2xx"
    FAILURE = "3xx-6xx"


def classify(response: Response) -> Kind:
    if response.status < 200:
        return Kind.PROVISIONAL
    return Kind.SUCCESS if response.status < 300 else Kind.FAILURE


# --------------------------------------------------------------------------- INVITE client


class InviteClientState(enum.Enum):
    CALLING = "Calling"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    ACCEPTED = "Accepted"  # RFC 6026 §8.4
    TERMINATED = "Terminated"


class InviteClientInput(enum.Enum):
    PROVISIONAL = "1xx"
    SUCCESS = "2xx"
    FAILURE = "3xx-6xx"
    TIMER_A = "A"
    TIMER_B = "B"
    TIMER_C = "C"
    TIMER_D = "D"
    TIMER_M = "M"
    CANCEL_GUARD = "cancel-guard"
    TRANSPORT_ERROR = "transport-error"


class InviteClientAction(enum.Enum):
    RETRANSMIT = "retransmit the INVITE, double A"
    PASS_UP = "pass the response to the TU"
    PASS_UP_2XX = "pass the 2xx to the TU, flag retransmissions"
    ACK_AND_PASS_UP = "send ACK, pass the response to the TU"
    RESEND_ACK = "send the ACK again"
    TIME_OUT = "tell the TU: 408"
    REQUEST_CANCEL = "ask the layer to CANCEL"
    TRANSPORT_FAILED = "tell the TU: 503"
    NONE = "nothing"


_ICS, _ICI, _ICA = InviteClientState, InviteClientInput, InviteClientAction

INVITE_CLIENT_TABLE: dict[
    tuple[InviteClientState, InviteClientInput], tuple[InviteClientAction, InviteClientState]
] = {
    (_ICS.CALLING, _ICI.TIMER_A): (_ICA.RETRANSMIT, _ICS.CALLING),
    (_ICS.CALLING, _ICI.TIMER_B): (_ICA.TIME_OUT, _ICS.TERMINATED),
    (_ICS.CALLING, _ICI.PROVISIONAL): (_ICA.PASS_UP, _ICS.PROCEEDING),
    (_ICS.CALLING, _ICI.SUCCESS): (_ICA.PASS_UP_2XX, _ICS.ACCEPTED),
    (_ICS.CALLING, _ICI.FAILURE): (_ICA.ACK_AND_PASS_UP, _ICS.COMPLETED),
    (_ICS.CALLING, _ICI.TRANSPORT_ERROR): (_ICA.TRANSPORT_FAILED, _ICS.TERMINATED),
    (_ICS.PROCEEDING, _ICI.PROVISIONAL): (_ICA.PASS_UP, _ICS.PROCEEDING),
    (_ICS.PROCEEDING, _ICI.SUCCESS): (_ICA.PASS_UP_2XX, _ICS.ACCEPTED),
    (_ICS.PROCEEDING, _ICI.FAILURE): (_ICA.ACK_AND_PASS_UP, _ICS.COMPLETED),
    (_ICS.PROCEEDING, _ICI.TIMER_C): (_ICA.REQUEST_CANCEL, _ICS.PROCEEDING),
    (_ICS.PROCEEDING, _ICI.CANCEL_GUARD): (_ICA.TIME_OUT, _ICS.TERMINATED),
    (_ICS.PROCEEDING, _ICI.TRANSPORT_ERROR): (_ICA.TRANSPORT_FAILED, _ICS.TERMINATED),
    # §17.1.1.2: every retransmitted final response is answered with the same ACK.
    (_ICS.COMPLETED, _ICI.FAILURE): (_ICA.RESEND_ACK, _ICS.COMPLETED),
    (_ICS.COMPLETED, _ICI.TIMER_D): (_ICA.NONE, _ICS.TERMINATED),
    (_ICS.COMPLETED, _ICI.TRANSPORT_ERROR): (_ICA.TRANSPORT_FAILED, _ICS.TERMINATED),
    # RFC 6026 §8.4: every 2xx (retransmission or another fork) goes up; nothing else does.
    (_ICS.ACCEPTED, _ICI.SUCCESS): (_ICA.PASS_UP_2XX, _ICS.ACCEPTED),
    (_ICS.ACCEPTED, _ICI.TIMER_M): (_ICA.NONE, _ICS.TERMINATED),
}

_INVITE_KIND_INPUT = {
    Kind.PROVISIONAL: _ICI.PROVISIONAL,
    Kind.SUCCESS: _ICI.SUCCESS,
    Kind.FAILURE: _ICI.FAILURE,
}


class InviteClientTransaction(TimedMachine[InviteClientState, InviteClientInput]):
    """§17.1.1 with the RFC 6026 Accepted state. Also carries the CANCEL bookkeeping of
    §9.1: a CANCEL may only go out once a provisional response arrived."""

    TERMINAL = _ICS.TERMINATED

    def __init__(self, key: TxKey, request: Request, peer: Peer, config: TimerConfig) -> None:
        self.key = key
        self.request = request
        self.peer = peer
        self.config = config
        self.state = InviteClientState.CALLING
        self.outbox: list[Message] = []
        self.events: list[TransactionEvent] = []
        self.scheduled: float | None = None  # the layer's heap bookkeeping
        self.wants_cancel = False
        self.cancel_key: TxKey | None = None
        self._timers: Deadlines[InviteClientInput] = Deadlines()
        self._interval = config.t1
        self._ack: Request | None = None
        self._success_tags: set[str] = set()

    # -- inputs --------------------------------------------------------------------

    def start(self, now: float) -> None:
        self.outbox.append(self.request)
        # §17.1.1.2: Timer A only on unreliable transports; Timer B always.
        if not self.peer.kind.reliable:
            self._timers.arm(_ICI.TIMER_A, now + self._interval)
        self._timers.arm(_ICI.TIMER_B, now + self.config.b)

    def receive_response(self, response: Response, now: float) -> None:
        self._input(_INVITE_KIND_INPUT[classify(response)], response, now)
        self.handle_timer(now)

    def transport_error(self, now: float) -> None:
        self._input(_ICI.TRANSPORT_ERROR, None, now)

    def cancel_sent(self, cancel_key: TxKey, now: float) -> None:
        """The layer sent our CANCEL: start the §9.1 guard, Timer C has done its job."""
        self.cancel_key = cancel_key
        self._timers.stop(_ICI.TIMER_C)
        self._timers.arm(_ICI.CANCEL_GUARD, now + self.config.cancel_guard)

    @property
    def can_cancel(self) -> bool:
        """§9.1: a CANCEL is sent only after a provisional and before a final response."""
        return self.state is _ICS.PROCEEDING

    # -- machinery -----------------------------------------------------------------

    def _fire(self, timer: InviteClientInput, now: float) -> None:
        self._input(timer, None, now)

    def _input(self, inp: InviteClientInput, response: Response | None, now: float) -> None:
        entry = INVITE_CLIENT_TABLE.get((self.state, inp))
        if entry is None:
            return  # e.g. a 1xx or 3xx in Accepted: the RFC says to ignore it
        action, next_state = entry
        self._perform(action, response, now)
        if next_state is not self.state:
            self._enter(next_state, now)

    def _perform(self, action: InviteClientAction, response: Response | None, now: float) -> None:
        match action:
            case _ICA.RETRANSMIT:
                # §17.1.1.2: A doubles without the T2 cap (only E and G are capped).
                self.outbox.append(self.request)
                self._interval *= 2
                self._timers.arm(_ICI.TIMER_A, now + self._interval)
            case _ICA.PASS_UP:
                assert response is not None
                if self.config.timer_c is not None and not self.wants_cancel:
                    # §16.6 item 11: every provisional restarts Timer C.
                    self._timers.arm(_ICI.TIMER_C, now + self.config.timer_c)
                self.events.append(ResponseReceived(self.key, response))
            case _ICA.PASS_UP_2XX:
                assert response is not None
                tag = to(response).tag or ""
                repeated = tag in self._success_tags
                self._success_tags.add(tag)
                self.events.append(ResponseReceived(self.key, response, repeated))
            case _ICA.ACK_AND_PASS_UP:
                assert response is not None
                self._ack = self.build_ack(response)
                self.outbox.append(self._ack)
                self.events.append(ResponseReceived(self.key, response))
            case _ICA.RESEND_ACK:
                if self._ack is not None:
                    self.outbox.append(self._ack)
            case _ICA.TIME_OUT:
                timeout = synthetic_response(self.request, 408, "Request Timeout")
                self.events.append(TransactionTimedOut(self.key, timeout))
            case _ICA.REQUEST_CANCEL:
                self.wants_cancel = True
            case _ICA.TRANSPORT_FAILED:
                failure = synthetic_response(self.request, 503, "Service Unavailable")
                self.events.append(TransportErrorOccurred(self.key, failure))
            case _ICA.NONE:
                pass

    def _enter(self, state: InviteClientState, now: float) -> None:
        self.state = state
        match state:
            case _ICS.PROCEEDING:
                # §17.1.1.2: a provisional stops the retransmissions and Timer B.
                self._timers.stop(_ICI.TIMER_A, _ICI.TIMER_B)
            case _ICS.COMPLETED:
                self._timers.clear()
                # §17.1.1.2: Timer D absorbs retransmitted finals; zero when reliable.
                wait = 0.0 if self.peer.kind.reliable else self.config.timer_d_udp
                self._timers.arm(_ICI.TIMER_D, now + wait)
            case _ICS.ACCEPTED:
                self._timers.clear()
                self._timers.arm(_ICI.TIMER_M, now + self.config.m)
            case _ICS.TERMINATED:
                self._timers.clear()
                self.events.append(TransactionTerminated(self.key))
            case _ICS.CALLING:
                pass

    # -- messages this transaction builds --------------------------------------------

    def build_ack(self, response: Response) -> Request:
        """The ACK for a non-2xx final response, §17.1.1.3."""
        inv = self.request.headers
        headers = Headers()
        # One Via: the INVITE's top Via, so the ACK matches the server transaction.
        vias = inv.values("Via")
        if vias:
            headers.add("Via", vias[0])
        for route in inv.get_all("Route"):
            headers.add("Route", route)
        headers.add("Max-Forwards", inv.get("Max-Forwards") or "70")
        for name in ("From", "Call-ID"):
            value = inv.get(name)
            if value is not None:
                headers.add(name, value)
        # To comes from the response: it carries the tag the server chose.
        headers.add("To", response.headers.get("To") or inv.get("To") or "")
        headers.add("CSeq", f"{_cseq_number(self.request)} ACK")
        return Request("ACK", self.request.uri, headers)

    def build_cancel(self) -> Request:
        """The CANCEL for this INVITE, §9.1: same Request-URI, Call-ID, To, From, CSeq
        number and Route set, a single Via equal to the INVITE's top Via (same branch)."""
        inv = self.request.headers
        headers = Headers()
        vias = inv.values("Via")
        if vias:
            headers.add("Via", vias[0])
        for route in inv.get_all("Route"):
            headers.add("Route", route)
        headers.add("Max-Forwards", inv.get("Max-Forwards") or "70")
        for name in ("From", "To", "Call-ID"):
            value = inv.get(name)
            if value is not None:
                headers.add(name, value)
        headers.add("CSeq", f"{_cseq_number(self.request)} CANCEL")
        return Request("CANCEL", self.request.uri, headers)


def _cseq_number(request: Request) -> str:
    value = request.headers.get("CSeq") or ""
    return value.split(None, 1)[0] if value.strip() else "1"


# ----------------------------------------------------------------------- non-INVITE client


class NonInviteClientState(enum.Enum):
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    TERMINATED = "Terminated"


class NonInviteClientInput(enum.Enum):
    PROVISIONAL = "1xx"
    FINAL = "200-699"
    TIMER_E = "E"
    TIMER_F = "F"
    TIMER_K = "K"
    TRANSPORT_ERROR = "transport-error"


class NonInviteClientAction(enum.Enum):
    RETRANSMIT_BACKOFF = "retransmit, E = min(2E, T2)"
    RETRANSMIT_AT_T2 = "retransmit, E = T2"
    PASS_UP = "pass the response to the TU"
    TIME_OUT = "tell the TU: 408"
    TRANSPORT_FAILED = "tell the TU: 503"
    NONE = "nothing"


_NCS, _NCI, _NCA = NonInviteClientState, NonInviteClientInput, NonInviteClientAction

NON_INVITE_CLIENT_TABLE: dict[
    tuple[NonInviteClientState, NonInviteClientInput],
    tuple[NonInviteClientAction, NonInviteClientState],
] = {
    (_NCS.TRYING, _NCI.TIMER_E): (_NCA.RETRANSMIT_BACKOFF, _NCS.TRYING),
    (_NCS.TRYING, _NCI.TIMER_F): (_NCA.TIME_OUT, _NCS.TERMINATED),
    (_NCS.TRYING, _NCI.PROVISIONAL): (_NCA.PASS_UP, _NCS.PROCEEDING),
    (_NCS.TRYING, _NCI.FINAL): (_NCA.PASS_UP, _NCS.COMPLETED),
    (_NCS.TRYING, _NCI.TRANSPORT_ERROR): (_NCA.TRANSPORT_FAILED, _NCS.TERMINATED),
    (_NCS.PROCEEDING, _NCI.TIMER_E): (_NCA.RETRANSMIT_AT_T2, _NCS.PROCEEDING),
    (_NCS.PROCEEDING, _NCI.TIMER_F): (_NCA.TIME_OUT, _NCS.TERMINATED),
    (_NCS.PROCEEDING, _NCI.PROVISIONAL): (_NCA.PASS_UP, _NCS.PROCEEDING),
    (_NCS.PROCEEDING, _NCI.FINAL): (_NCA.PASS_UP, _NCS.COMPLETED),
    (_NCS.PROCEEDING, _NCI.TRANSPORT_ERROR): (_NCA.TRANSPORT_FAILED, _NCS.TERMINATED),
    # §17.1.2.2: Completed absorbs retransmitted responses (no entries) until Timer K.
    (_NCS.COMPLETED, _NCI.TIMER_K): (_NCA.NONE, _NCS.TERMINATED),
}


class NonInviteClientTransaction(TimedMachine[NonInviteClientState, NonInviteClientInput]):
    """§17.1.2 (also used for CANCEL, which is a non-INVITE transaction of its own)."""

    TERMINAL = _NCS.TERMINATED

    def __init__(self, key: TxKey, request: Request, peer: Peer, config: TimerConfig) -> None:
        self.key = key
        self.request = request
        self.peer = peer
        self.config = config
        self.state = NonInviteClientState.TRYING
        self.outbox: list[Message] = []
        self.events: list[TransactionEvent] = []
        self.scheduled: float | None = None
        self._timers: Deadlines[NonInviteClientInput] = Deadlines()
        self._interval = config.t1

    def start(self, now: float) -> None:
        self.outbox.append(self.request)
        # §17.1.2.2: Timer E only on unreliable transports; Timer F always.
        if not self.peer.kind.reliable:
            self._timers.arm(_NCI.TIMER_E, now + self._interval)
        self._timers.arm(_NCI.TIMER_F, now + self.config.f)

    def receive_response(self, response: Response, now: float) -> None:
        inp = _NCI.PROVISIONAL if response.status < 200 else _NCI.FINAL
        self._input(inp, response, now)
        self.handle_timer(now)

    def transport_error(self, now: float) -> None:
        self._input(_NCI.TRANSPORT_ERROR, None, now)

    def _fire(self, timer: NonInviteClientInput, now: float) -> None:
        self._input(timer, None, now)

    def _input(self, inp: NonInviteClientInput, response: Response | None, now: float) -> None:
        entry = NON_INVITE_CLIENT_TABLE.get((self.state, inp))
        if entry is None:
            return  # a retransmitted response in Completed: absorbed (§17.1.2.2)
        action, next_state = entry
        match action:
            case _NCA.RETRANSMIT_BACKOFF:
                self.outbox.append(self.request)
                self._interval = min(2 * self._interval, self.config.t2)
                self._timers.arm(_NCI.TIMER_E, now + self._interval)
            case _NCA.RETRANSMIT_AT_T2:
                # §17.1.2.2: once a provisional arrived, retransmit every T2.
                self.outbox.append(self.request)
                self._interval = self.config.t2
                self._timers.arm(_NCI.TIMER_E, now + self._interval)
            case _NCA.PASS_UP:
                assert response is not None
                self.events.append(ResponseReceived(self.key, response))
            case _NCA.TIME_OUT:
                timeout = synthetic_response(self.request, 408, "Request Timeout")
                self.events.append(TransactionTimedOut(self.key, timeout))
            case _NCA.TRANSPORT_FAILED:
                failure = synthetic_response(self.request, 503, "Service Unavailable")
                self.events.append(TransportErrorOccurred(self.key, failure))
            case _NCA.NONE:
                pass
        if next_state is not self.state:
            self.state = next_state
            if next_state is _NCS.COMPLETED:
                self._timers.clear()
                # §17.1.2.2: Timer K = T4 on unreliable transports, zero otherwise.
                wait = 0.0 if self.peer.kind.reliable else self.config.t4
                self._timers.arm(_NCI.TIMER_K, now + wait)
            elif next_state is _NCS.TERMINATED:
                self._timers.clear()
                self.events.append(TransactionTerminated(self.key))


ClientTransaction = InviteClientTransaction | NonInviteClientTransaction
