"""Server transactions: INVITE (RFC 3261 §17.2.1 as amended by RFC 6026 §8.5-§8.7) and
non-INVITE (§17.2.2).

Tables ``{(State, Input): (Action, next_state)}`` drive both. A missing pair means:

* for network inputs (a retransmitted request, an ACK) - absorb it, as the RFC says;
* for TU inputs (a response to send) - the TU broke the rules (a second final response,
  a provisional after the final...), so :class:`LocalProtocolError` is raised at once.
"""

from __future__ import annotations

import enum

from ucgate.sip.errors import LocalProtocolError
from ucgate.sip.message import Message, Request, Response
from ucgate.sip.peer import Peer
from ucgate.sip.transaction.events import (
    AckReceived,
    TransactionEvent,
    TransactionTerminated,
    TransactionTimedOut,
    TransportErrorOccurred,
)
from ucgate.sip.transaction.key import TxKey
from ucgate.sip.transaction.machine import TimedMachine
from ucgate.sip.transaction.timers import Deadlines, TimerConfig

# ---------------------------------------------------------------------------- INVITE server


class InviteServerState(enum.Enum):
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"  # RFC 6026 §8.6
    TERMINATED = "Terminated"


class InviteServerInput(enum.Enum):
    REQUEST = "INVITE retransmission"
    ACK = "ACK"
    TU_PROVISIONAL = "1xx from TU"
    TU_SUCCESS = "2xx from TU"
    TU_FAILURE = "3xx-6xx from TU"
    TIMER_G = "G"
    TIMER_H = "H"
    TIMER_I = "I"
    TIMER_L = "L"
    TRANSPORT_ERROR = "transport-error"


class InviteServerAction(enum.Enum):
    SEND = "send the TU's response"
    RESEND = "send the last response again"
    RETRANSMIT_FINAL = "send the final again, G = min(2G, T2)"
    PASS_ACK_UP = "hand the ACK to the TU"
    TIME_OUT = "tell the TU the ACK never came"
    TRANSPORT_FAILED = "tell the TU sending failed"
    NONE = "absorb"


_ISS, _ISI, _ISA = InviteServerState, InviteServerInput, InviteServerAction

INVITE_SERVER_TABLE: dict[
    tuple[InviteServerState, InviteServerInput], tuple[InviteServerAction, InviteServerState]
] = {
    # §17.2.1: a retransmitted INVITE in Proceeding gets the latest provisional again.
    (_ISS.PROCEEDING, _ISI.REQUEST): (_ISA.RESEND, _ISS.PROCEEDING),
    (_ISS.PROCEEDING, _ISI.TU_PROVISIONAL): (_ISA.SEND, _ISS.PROCEEDING),
    (_ISS.PROCEEDING, _ISI.TU_SUCCESS): (_ISA.SEND, _ISS.ACCEPTED),
    (_ISS.PROCEEDING, _ISI.TU_FAILURE): (_ISA.SEND, _ISS.COMPLETED),
    (_ISS.PROCEEDING, _ISI.TRANSPORT_ERROR): (_ISA.TRANSPORT_FAILED, _ISS.TERMINATED),
    (_ISS.COMPLETED, _ISI.REQUEST): (_ISA.RESEND, _ISS.COMPLETED),
    (_ISS.COMPLETED, _ISI.TIMER_G): (_ISA.RETRANSMIT_FINAL, _ISS.COMPLETED),
    (_ISS.COMPLETED, _ISI.ACK): (_ISA.NONE, _ISS.CONFIRMED),
    (_ISS.COMPLETED, _ISI.TIMER_H): (_ISA.TIME_OUT, _ISS.TERMINATED),
    (_ISS.COMPLETED, _ISI.TRANSPORT_ERROR): (_ISA.TRANSPORT_FAILED, _ISS.TERMINATED),
    # §17.2.1: Confirmed absorbs further ACKs and INVITEs (no entries) until Timer I.
    (_ISS.CONFIRMED, _ISI.TIMER_I): (_ISA.NONE, _ISS.TERMINATED),
    # RFC 6026 §8.7: Accepted absorbs INVITE retransmissions (no entry), sends the TU's
    # 2xx retransmissions, and passes the ACK up instead of absorbing it.
    (_ISS.ACCEPTED, _ISI.TU_SUCCESS): (_ISA.SEND, _ISS.ACCEPTED),
    (_ISS.ACCEPTED, _ISI.ACK): (_ISA.PASS_ACK_UP, _ISS.ACCEPTED),
    (_ISS.ACCEPTED, _ISI.TIMER_L): (_ISA.NONE, _ISS.TERMINATED),
    (_ISS.ACCEPTED, _ISI.TRANSPORT_ERROR): (_ISA.TRANSPORT_FAILED, _ISS.TERMINATED),
}

_TU_INPUTS = frozenset({_ISI.TU_PROVISIONAL, _ISI.TU_SUCCESS, _ISI.TU_FAILURE})


class InviteServerTransaction(TimedMachine[InviteServerState, InviteServerInput]):
    """§17.2.1 with the RFC 6026 Accepted state."""

    TERMINAL = _ISS.TERMINATED

    def __init__(self, key: TxKey, request: Request, peer: Peer, config: TimerConfig) -> None:
        self.key = key
        self.request = request
        self.peer = peer  # where responses go (§18.2.2, decided by the layer)
        self.config = config
        self.state = InviteServerState.PROCEEDING
        self.outbox: list[Message] = []
        self.events: list[TransactionEvent] = []
        self.scheduled: float | None = None
        self.last_response: Response | None = None
        self._timers: Deadlines[InviteServerInput] = Deadlines()
        self._interval = config.t1

    def start(self, now: float, trying: Response | None) -> None:
        # §17.2.1: a 100 Trying goes out unless the TU answers within 200 ms; the layer
        # passes None when it answers at once itself (482, ...).
        if trying is not None:
            self._input(_ISI.TU_PROVISIONAL, trying, None, now)

    def receive_request(self, request: Request, now: float) -> None:
        self._input(_ISI.REQUEST, request, None, now)

    def receive_ack(self, ack: Request, peer: Peer, now: float) -> None:
        self._input(_ISI.ACK, ack, peer, now)
        self.handle_timer(now)

    def send_response(self, response: Response, now: float) -> None:
        if response.status < 200:
            inp = _ISI.TU_PROVISIONAL
        elif response.status < 300:
            inp = _ISI.TU_SUCCESS
        else:
            inp = _ISI.TU_FAILURE
        self._input(inp, response, None, now)

    def transport_error(self, now: float) -> None:
        self._input(_ISI.TRANSPORT_ERROR, None, None, now)

    def _fire(self, timer: InviteServerInput, now: float) -> None:
        self._input(timer, None, None, now)

    def _input(
        self, inp: InviteServerInput, msg: Message | None, peer: Peer | None, now: float
    ) -> None:
        entry = INVITE_SERVER_TABLE.get((self.state, inp))
        if entry is None:
            if inp in _TU_INPUTS:
                raise LocalProtocolError(
                    f"INVITE server transaction in {self.state.value} cannot send {inp.value}"
                )
            return
        action, next_state = entry
        match action:
            case _ISA.SEND:
                assert isinstance(msg, Response)
                self.last_response = msg
                self.outbox.append(msg)
            case _ISA.RESEND:
                if self.last_response is not None:
                    self.outbox.append(self.last_response)
            case _ISA.RETRANSMIT_FINAL:
                assert self.last_response is not None
                self.outbox.append(self.last_response)
                self._interval = min(2 * self._interval, self.config.t2)
                self._timers.arm(_ISI.TIMER_G, now + self._interval)
            case _ISA.PASS_ACK_UP:
                assert isinstance(msg, Request) and peer is not None
                self.events.append(AckReceived(msg, peer))
            case _ISA.TIME_OUT:
                self.events.append(TransactionTimedOut(self.key, None))
            case _ISA.TRANSPORT_FAILED:
                self.events.append(TransportErrorOccurred(self.key, None))
            case _ISA.NONE:
                pass
        if next_state is not self.state:
            self._enter(next_state, now)

    def _enter(self, state: InviteServerState, now: float) -> None:
        self.state = state
        match state:
            case _ISS.COMPLETED:
                # §17.2.1: G retransmits the final on unreliable transports; H bounds the
                # wait for the ACK on every transport.
                if not self.peer.kind.reliable:
                    self._timers.arm(_ISI.TIMER_G, now + self._interval)
                self._timers.arm(_ISI.TIMER_H, now + self.config.h)
            case _ISS.CONFIRMED:
                self._timers.clear()
                # §17.2.1: Timer I = T4 absorbs ACK retransmissions; zero when reliable.
                wait = 0.0 if self.peer.kind.reliable else self.config.t4
                self._timers.arm(_ISI.TIMER_I, now + wait)
            case _ISS.ACCEPTED:
                self._timers.clear()
                self._timers.arm(_ISI.TIMER_L, now + self.config.l)
            case _ISS.TERMINATED:
                self._timers.clear()
                self.events.append(TransactionTerminated(self.key))
            case _ISS.PROCEEDING:
                pass


# ------------------------------------------------------------------------ non-INVITE server


class NonInviteServerState(enum.Enum):
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    TERMINATED = "Terminated"


class NonInviteServerInput(enum.Enum):
    REQUEST = "request retransmission"
    TU_PROVISIONAL = "1xx from TU"
    TU_FINAL = "200-699 from TU"
    TIMER_J = "J"
    TRANSPORT_ERROR = "transport-error"


class NonInviteServerAction(enum.Enum):
    SEND = "send the TU's response"
    RESEND = "send the last response again"
    TRANSPORT_FAILED = "tell the TU sending failed"
    NONE = "absorb"


_NSS, _NSI, _NSA = NonInviteServerState, NonInviteServerInput, NonInviteServerAction

NON_INVITE_SERVER_TABLE: dict[
    tuple[NonInviteServerState, NonInviteServerInput],
    tuple[NonInviteServerAction, NonInviteServerState],
] = {
    # §17.2.2: in Trying a retransmission is discarded (no entry needed, but explicit).
    (_NSS.TRYING, _NSI.REQUEST): (_NSA.NONE, _NSS.TRYING),
    (_NSS.TRYING, _NSI.TU_PROVISIONAL): (_NSA.SEND, _NSS.PROCEEDING),
    (_NSS.TRYING, _NSI.TU_FINAL): (_NSA.SEND, _NSS.COMPLETED),
    (_NSS.PROCEEDING, _NSI.REQUEST): (_NSA.RESEND, _NSS.PROCEEDING),
    (_NSS.PROCEEDING, _NSI.TU_PROVISIONAL): (_NSA.SEND, _NSS.PROCEEDING),
    (_NSS.PROCEEDING, _NSI.TU_FINAL): (_NSA.SEND, _NSS.COMPLETED),
    (_NSS.PROCEEDING, _NSI.TRANSPORT_ERROR): (_NSA.TRANSPORT_FAILED, _NSS.TERMINATED),
    (_NSS.COMPLETED, _NSI.REQUEST): (_NSA.RESEND, _NSS.COMPLETED),
    (_NSS.COMPLETED, _NSI.TIMER_J): (_NSA.NONE, _NSS.TERMINATED),
    (_NSS.COMPLETED, _NSI.TRANSPORT_ERROR): (_NSA.TRANSPORT_FAILED, _NSS.TERMINATED),
}

_NS_TU_INPUTS = frozenset({_NSI.TU_PROVISIONAL, _NSI.TU_FINAL})


class NonInviteServerTransaction(TimedMachine[NonInviteServerState, NonInviteServerInput]):
    """§17.2.2 (also answers CANCEL, a non-INVITE transaction of its own, §9.2)."""

    TERMINAL = _NSS.TERMINATED

    def __init__(self, key: TxKey, request: Request, peer: Peer, config: TimerConfig) -> None:
        self.key = key
        self.request = request
        self.peer = peer
        self.config = config
        self.state = NonInviteServerState.TRYING
        self.outbox: list[Message] = []
        self.events: list[TransactionEvent] = []
        self.scheduled: float | None = None
        self.last_response: Response | None = None
        self._timers: Deadlines[NonInviteServerInput] = Deadlines()

    def receive_request(self, request: Request, now: float) -> None:
        self._input(_NSI.REQUEST, None, now)

    def send_response(self, response: Response, now: float) -> None:
        inp = _NSI.TU_PROVISIONAL if response.status < 200 else _NSI.TU_FINAL
        self._input(inp, response, now)
        self.handle_timer(now)  # Timer J is zero on reliable transports

    def transport_error(self, now: float) -> None:
        self._input(_NSI.TRANSPORT_ERROR, None, now)

    def _fire(self, timer: NonInviteServerInput, now: float) -> None:
        self._input(timer, None, now)

    def _input(self, inp: NonInviteServerInput, response: Response | None, now: float) -> None:
        entry = NON_INVITE_SERVER_TABLE.get((self.state, inp))
        if entry is None:
            if inp in _NS_TU_INPUTS:
                raise LocalProtocolError(
                    f"non-INVITE server transaction in {self.state.value} cannot send {inp.value}"
                )
            return
        action, next_state = entry
        match action:
            case _NSA.SEND:
                assert response is not None
                self.last_response = response
                self.outbox.append(response)
            case _NSA.RESEND:
                if self.last_response is not None:
                    self.outbox.append(self.last_response)
            case _NSA.TRANSPORT_FAILED:
                self.events.append(TransportErrorOccurred(self.key, None))
            case _NSA.NONE:
                pass
        if next_state is not self.state:
            self.state = next_state
            if next_state is _NSS.COMPLETED:
                # §17.2.2: Timer J = 64*T1 absorbs request retransmissions; zero when
                # reliable since there are none.
                wait = 0.0 if self.peer.kind.reliable else self.config.j_udp
                self._timers.arm(_NSI.TIMER_J, now + wait)
            elif next_state is _NSS.TERMINATED:
                self._timers.clear()
                self.events.append(TransactionTerminated(self.key))


ServerTransaction = InviteServerTransaction | NonInviteServerTransaction
