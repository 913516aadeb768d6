"""The sans-IO SIP endpoint: bytes in, transaction events and bytes out.

It sits between the transports and the transaction layer (RFC 3261 §18): it parses
what a transport hands it, answers hopelessly broken requests statelessly, stamps
``received``/``rport`` on the top Via (§18.2.1, RFC 3581 §4), feeds the transaction
layer, and serialises what the transaction layer wants sent, picking the response
destination from the Via (§18.2.2). It owns no socket and no clock: the adapter passes
``now`` and drains :meth:`data_to_send`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ucgate.sip.errors import RemoteProtocolError
from ucgate.sip.fields import parse_via
from ucgate.sip.message import Request, Response
from ucgate.sip.parser import MalformedRequest, parse_message, validate_response
from ucgate.sip.peer import Peer, TransportKind
from ucgate.sip.transaction.events import TransactionEvent
from ucgate.sip.transaction.layer import TransactionLayer
from ucgate.sip.uas_checks import make_response


@dataclass(frozen=True, slots=True)
class MessageDropped:
    """A datagram or framed message we could not use (for logs and counters only)."""

    peer: Peer
    reason: str


Observer = Callable[[MessageDropped], None]


def _stamp_via(req: Request, peer: Peer) -> None:
    """§18.2.1: add ``received`` when the sent-by host differs from the source address;
    RFC 3581 §4: fill an empty ``rport`` with the source port (and then always add received).
    """
    values = req.headers.values("Via")
    if not values:
        return
    via = parse_via(values[0])
    if via.has_rport:
        stamped = via.with_params(rport=str(peer.port), received=peer.host)
    elif via.host.strip("[]") != peer.host:
        stamped = via.with_params(received=peer.host)
    else:
        return
    req.headers.remove_first_value("Via")
    req.headers.prepend("Via", str(stamped))


def response_destination(resp: Response, request_peer: Peer) -> Peer:
    """Where a response goes (§18.2.2, RFC 3581 §4).

    Stream transports answer on the connection the request came in on. Over UDP the
    response goes to ``received`` (the source address) and to ``rport`` when the client
    asked for symmetric response routing, otherwise to the Via's sent-by port.
    """
    if request_peer.kind.reliable:
        return request_peer
    values = resp.headers.values("Via")
    if not values:
        return request_peer
    via = parse_via(values[0])
    host = via.received or request_peer.host
    if via.rport is not None:
        port = via.rport
    elif via.port is not None:
        port = via.port
    else:
        port = 5060
    return Peer(request_peer.kind, host, port, None)


class SipEndpoint:
    """Transport-facing facade of the core. One per process, shared by all listeners."""

    def __init__(
        self,
        transactions: TransactionLayer,
        *,
        max_message_size: int = 65535,
        on_drop: Observer | None = None,
    ) -> None:
        self.transactions = transactions
        self.max_message_size = max_message_size
        self._out: list[tuple[bytes, Peer]] = []
        self._on_drop = on_drop

    # -- input ---------------------------------------------------------------------------
    def receive_data(self, data: bytes, peer: Peer, now: float) -> None:
        """Feed one whole message (a datagram, or one framed by :class:`StreamFramer`)."""
        if not data.strip(b"\r\n"):
            return  # RFC 5626 §3.5.1 keep-alive; the stream adapter answers CRLFCRLF itself
        try:
            msg = parse_message(data, max_size=self.max_message_size)
            # Requests get received/rport stamped by the transaction layer (§18.2.1).
            if isinstance(msg, Response):
                validate_response(msg)
        except MalformedRequest as exc:
            self._answer_malformed(exc, peer)
            return
        except RemoteProtocolError as exc:
            self._drop(peer, exc.reason)
            return
        try:
            self.transactions.receive(msg, peer, now)
        except RemoteProtocolError as exc:
            # A request whose Via/CSeq the transaction layer cannot key on.
            self._drop(peer, exc.reason)

    def _answer_malformed(self, exc: MalformedRequest, peer: Peer) -> None:
        # §8.2 / §16.3: answer a broken request when the headers needed to route a response
        # are readable; otherwise silently drop (RFC 4475 §3.1.2, esp. garbage on UDP).
        if exc.status is None or exc.partial is None or exc.partial.method == "ACK":
            self._drop(peer, exc.reason)
            return
        try:
            _stamp_via(exc.partial, peer)
            resp = make_response(exc.partial, exc.status, exc.reason[:100])
            dest = response_destination(resp, peer)
            self._out.append((resp.to_bytes(), dest))
        except RemoteProtocolError as inner:
            self._drop(peer, inner.reason)

    def _drop(self, peer: Peer, reason: str) -> None:
        if self._on_drop is not None:
            self._on_drop(MessageDropped(peer, reason))

    # -- application side --------------------------------------------------------------
    def next_event(self) -> TransactionEvent | None:
        return self.transactions.next_event()

    # -- output --------------------------------------------------------------------------
    def data_to_send(self) -> list[tuple[bytes, Peer]]:
        """Drain everything to transmit, serialised, with its destination."""
        out = self._out
        self._out = []
        for msg, peer in self.transactions.messages_to_send():
            dest = response_destination(msg, peer) if isinstance(msg, Response) else peer
            out.append((msg.to_bytes(), dest))
        return out

    # -- time ----------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        return self.transactions.next_deadline()

    def handle_timer(self, now: float) -> None:
        self.transactions.handle_timer(now)

    def transport_error(self, peer: Peer, now: float) -> None:
        self.transactions.transport_error(peer, now)


__all__ = ["MessageDropped", "SipEndpoint", "TransportKind", "response_destination"]
