"""What the transaction layer tells its transaction user (TU), RFC 3261 §17.

Every event is a frozen dataclass named in the past tense. ``key`` is the transaction the
event belongs to; the TU answers a request by passing that key back to
``TransactionLayer.send_response``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ucgate.sip.message import Request, Response
from ucgate.sip.peer import Peer
from ucgate.sip.transaction.key import TxKey


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A new request created a server transaction; the TU must answer it (§17.2)."""

    key: TxKey
    request: Request
    peer: Peer


@dataclass(frozen=True, slots=True)
class AckReceived:
    """An ACK for a 2xx: not part of any transaction, it belongs to the dialog (§17.1.1.3,
    RFC 6026 §8.7: also when it matches an INVITE server transaction in Accepted)."""

    request: Request
    peer: Peer


@dataclass(frozen=True, slots=True)
class CancelReceived:
    """A CANCEL, already answered by the layer (200, or 481 when ``invite_key`` is None,
    §9.2). Sending 487 to the INVITE is the TU's job: only it knows whether it already
    answered."""

    key: TxKey
    request: Request
    peer: Peer
    invite_key: TxKey | None


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """A response for a client transaction. ``retransmission`` marks a 2xx passed up again
    in the Accepted state (RFC 6026 §8.4) with a To tag already seen, so the UAC core
    re-sends its ACK instead of creating a dialog (§13.2.2.4)."""

    key: TxKey
    response: Response
    retransmission: bool = False


@dataclass(frozen=True, slots=True)
class StrayResponseReceived:
    """A response matching no client transaction (§18.1.2, RFC 6026 §7.2). A UAC core
    still ACKs a stray 2xx it can tie to a dialog; everyone else drops it."""

    response: Response
    peer: Peer


@dataclass(frozen=True, slots=True)
class TransactionTimedOut:
    """Timer B/F (client: ``response`` is the synthetic 408 of §8.1.3.1), Timer H (server:
    the ACK never came, ``response`` is None) or the CANCEL guard of §9.1 fired."""

    key: TxKey
    response: Response | None


@dataclass(frozen=True, slots=True)
class TransportErrorOccurred:
    """Sending failed (§17.1.1.2, §17.2.1). For a client transaction ``response`` is the
    synthetic 503 of §8.1.3.1; for a server transaction it is None."""

    key: TxKey
    response: Response | None


@dataclass(frozen=True, slots=True)
class TransactionTerminated:
    """The transaction reached Terminated and was forgotten; its key is free again."""

    key: TxKey


TransactionEvent = (
    RequestReceived
    | AckReceived
    | CancelReceived
    | ResponseReceived
    | StrayResponseReceived
    | TransactionTimedOut
    | TransportErrorOccurred
    | TransactionTerminated
)
