"""The transaction layer facade (RFC 3261 §17), the object the asyncio glue talks to.

Messages in (``receive``), TU calls (``send_request`` / ``send_response`` / ``cancel``),
events out (``next_event``), messages out (``messages_to_send``), time in
(``next_deadline`` / ``handle_timer``). Nothing here does I/O or reads a clock.

The layer also does the few things only it can see across transactions:

* matching (§17.1.3, §17.2.3) including the RFC 2543 fallback;
* answering CANCEL (200 or 481, §9.2) - it knows whether an INVITE matches;
* merged requests (§8.2.2.2) and looped requests (our own branch coming back, §16.3
  item 4 spirit): 482 without bothering the TU;
* §18.2.1 / RFC 3581 Via stamping (``received``/``rport``) and §18.2.2 response routing.

Max-Forwards is deliberately *not* checked: a UAS must still answer an OPTIONS with
Max-Forwards 0 (§11.1), and only a proxy core refuses with 483 (§16.3 item 3), so that
decision belongs above this layer (``ucgate.sip.uas_checks.check_request``).
"""

from __future__ import annotations

import heapq
import itertools
import secrets
from collections import Counter, deque
from collections.abc import Callable

from ucgate.sip.errors import LocalProtocolError, RemoteProtocolError
from ucgate.sip.fields import Via, call_id, cseq, from_, parse_via, to, top_via
from ucgate.sip.message import Message, Request, Response
from ucgate.sip.peer import Peer
from ucgate.sip.transaction.client import (
    ClientTransaction,
    InviteClientTransaction,
    NonInviteClientTransaction,
)
from ucgate.sip.transaction.events import (
    AckReceived,
    CancelReceived,
    RequestReceived,
    StrayResponseReceived,
    TransactionEvent,
)
from ucgate.sip.transaction.key import (
    MAGIC_COOKIE,
    Side,
    TxKey,
    client_key,
    default_port,
    sent_by,
    server_key,
)
from ucgate.sip.transaction.server import (
    InviteServerTransaction,
    NonInviteServerTransaction,
    ServerTransaction,
)
from ucgate.sip.transaction.timers import TimerConfig
from ucgate.sip.uas_checks import make_response

Transaction = ClientTransaction | ServerTransaction

# (From tag, Call-ID, CSeq number, CSeq method): what §8.2.2.2 compares for merged requests.
_MergeKey = tuple[str, str, int, str]


def random_branch() -> str:
    """§8.1.1.7: the magic cookie plus enough randomness to be unique in space and time."""
    return MAGIC_COOKIE + secrets.token_hex(12)


def _bare_host(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _same_peer(a: Peer, b: Peer) -> bool:
    if (a.kind, _bare_host(a.host).lower(), a.port) != (b.kind, _bare_host(b.host).lower(), b.port):
        return False
    return a.flow is None or b.flow is None or a.flow == b.flow


class TransactionLayer:
    """Every client and server transaction of one SIP endpoint."""

    def __init__(
        self,
        *,
        timers: TimerConfig = TimerConfig(),  # noqa: B008 - frozen, so sharing is safe
        via_host: str,
        via_port: int,
        branch_factory: Callable[[], str] | None = None,
    ) -> None:
        self.timers = timers
        self.via_host = via_host
        self.via_port = via_port
        self._branch_factory = branch_factory or random_branch
        # Compared with sent_by() of received Vias, so normalised the same way.
        self._our_sent_by = sent_by(parse_via(f"SIP/2.0/UDP {self._via_hostport()}"))
        self._client: dict[TxKey, ClientTransaction] = {}
        self._sent_by_of: dict[TxKey, str] = {}  # our Via sent-by per client key, §18.1.2
        # Server transactions by key; an RFC 2543 INVITE transaction also sits under the
        # key its ACK will carry (the To tag of our response, §17.2.3).
        self._server: dict[TxKey, ServerTransaction] = {}
        self._server_keys: dict[ServerTransaction, list[TxKey]] = {}
        self._merged: dict[_MergeKey, TxKey] = {}
        self._merge_key_of: dict[ServerTransaction, _MergeKey] = {}
        self._our_branches: Counter[str] = Counter()
        # Min-heap of (deadline, seq, transaction) with lazy deletion: an entry is live
        # only while it equals ``transaction.scheduled``, so re-arming is O(log n) and
        # nothing is ever searched for (20k live transactions is the design point).
        self._heap: list[tuple[float, int, Transaction]] = []
        self._seq = itertools.count()
        self._events: deque[TransactionEvent] = deque()
        self._outbox: list[tuple[Message, Peer]] = []

    # ------------------------------------------------------------------ drains & clock

    def next_event(self) -> TransactionEvent | None:
        return self._events.popleft() if self._events else None

    def messages_to_send(self) -> list[tuple[Request | Response, Peer]]:
        out, self._outbox = self._outbox, []
        return out

    def next_deadline(self) -> float | None:
        while self._heap:
            at, _, tx = self._heap[0]
            if not tx.terminated and tx.scheduled == at:
                return at
            heapq.heappop(self._heap)
        return None

    def handle_timer(self, now: float) -> None:
        # ``self._heap`` is re-read every turn: ``_after`` may compact it in place.
        while self._heap and self._heap[0][0] <= now:
            at, _, tx = heapq.heappop(self._heap)
            if tx.terminated or tx.scheduled != at:
                continue  # stale entry: the transaction re-armed or ended since
            tx.scheduled = None
            tx.handle_timer(now)
            self._after(tx, now)

    @property
    def active_count(self) -> int:
        return len(self._client) + len(self._server_keys)

    def __len__(self) -> int:
        return self.active_count

    # ------------------------------------------------------------------ network input

    def receive(self, msg: Request | Response, peer: Peer, now: float) -> None:
        """Feed one parsed message from ``peer``. Never raises: peer faults are answered
        (400…) or dropped here."""
        if isinstance(msg, Request):
            self._receive_request(msg, peer, now)
        else:
            self._receive_response(msg, peer, now)

    def transport_error(self, peer: Peer, now: float) -> None:
        """Sending to ``peer`` failed: every transaction talking to it ends (§17.1.1.2,
        §17.1.2.2, §17.2.1, §17.2.2) and the TU gets TransportErrorOccurred."""
        victims: list[Transaction] = [
            tx for tx in self._client.values() if _same_peer(tx.peer, peer)
        ]
        victims.extend(tx for tx in self._server_keys if _same_peer(tx.peer, peer))
        for tx in victims:
            if not tx.terminated:
                tx.transport_error(now)
                self._after(tx, now)

    def _receive_request(self, request: Request, peer: Peer, now: float) -> None:
        try:
            via = top_via(request)
            key = server_key(request, via=via)
            to_tag = to(request).tag
            merge_key: _MergeKey = (
                from_(request).tag or "",
                call_id(request),
                cseq(request).seq,
                cseq(request).method,
            )
        except RemoteProtocolError as exc:
            self._refuse_statelessly(request, peer, exc)
            return
        if request.method == "ACK":
            self._receive_ack(request, key, peer, now)
            return
        existing = self._server.get(key)
        if existing is not None:
            # A retransmission: the transaction answers it itself (§17.2.1, §17.2.2).
            existing.receive_request(request, now)
            self._after(existing, now)
            return
        request = self._stamp_via(request, via, peer)
        reply_to = self._response_peer(via, peer)
        if self._looped(request) or self._merged_with_other(to_tag, merge_key, key):
            # §8.2.2.2: 482 from a transaction of its own, so retransmissions of the
            # looped request are absorbed and (INVITE) the 482 is retransmitted until ACK.
            refused = self._new_server_tx(key, request, reply_to, now, trying=False)
            refused.send_response(make_response(request, 482), now)
            self._after(refused, now)
            return
        if request.method == "CANCEL":
            self._receive_cancel(request, key, peer, reply_to, now)
            return
        tx = self._new_server_tx(key, request, reply_to, now, trying=True)
        if to_tag is None:
            self._merged[merge_key] = key
            self._merge_key_of[tx] = merge_key
        self._events.append(RequestReceived(key, request, peer))
        self._after(tx, now)

    def _receive_ack(self, ack: Request, key: TxKey, peer: Peer, now: float) -> None:
        tx = self._server.get(key)
        if isinstance(tx, InviteServerTransaction):
            # Non-2xx ACK: absorbed (§17.2.1); in Accepted it goes up (RFC 6026 §8.7).
            tx.receive_ack(ack, peer, now)
            self._after(tx, now)
            return
        # §17.1.1.3 / RFC 6026: the ACK for a 2xx is its own transaction-less request.
        self._events.append(AckReceived(ack, peer))

    def _receive_cancel(
        self, cancel: Request, key: TxKey, peer: Peer, reply_to: Peer, now: float
    ) -> None:
        # §9.2: the CANCEL matches the INVITE by the §17.2.3 rules, method aside.
        invite_key = key.with_method("INVITE")
        invite = self._server.get(invite_key)
        tx = self._new_server_tx(key, cancel, reply_to, now, trying=False)
        if isinstance(invite, InviteServerTransaction) and not invite.terminated:
            # §9.2: "the To tag of the response to the CANCEL and the response to the
            # original request SHOULD be the same".
            tag = _to_tag(invite.last_response)
            tx.send_response(make_response(cancel, 200, to_tag=tag), now)
            self._events.append(CancelReceived(key, cancel, peer, invite_key))
        else:
            tx.send_response(make_response(cancel, 481), now)
            self._events.append(CancelReceived(key, cancel, peer, None))
        self._after(tx, now)

    def _receive_response(self, response: Response, peer: Peer, now: float) -> None:
        try:
            via = top_via(response)
            key = client_key(response, via=via)
        except RemoteProtocolError:
            return  # §18.1.2: a response we cannot match is dropped
        tx = self._client.get(key)
        if tx is None:
            self._events.append(StrayResponseReceived(response, peer))
            return
        # §18.1.2: the top Via must carry the sent-by we inserted.
        if sent_by(via) != self._sent_by_of[tx.key]:
            return
        tx.receive_response(response, now)
        self._after(tx, now)

    # ------------------------------------------------------------------ TU calls

    def send_request(self, request: Request, peer: Peer, now: float) -> TxKey:
        """Start a client transaction for ``request`` towards ``peer`` and return its key.

        Without a Via we prepend ours (§18.1.1) with ``rport`` (RFC 3581 §3) and a fresh
        branch; a Via the TU supplied must carry a branch. An ACK (for a 2xx, §13.2.2.4)
        is sent as is, without a transaction.
        """
        req = Request(request.method, request.uri, request.headers.copy(), request.body)
        if "Via" not in req.headers:
            branch = self._new_branch()
            req.headers.prepend(
                "Via",
                f"SIP/2.0/{peer.kind.via_token} {self._via_hostport()};rport;branch={branch}",
            )
        try:
            via = top_via(req)
            key = client_key(req, via=via)
            cseq(req)
        except RemoteProtocolError as exc:
            raise LocalProtocolError(f"cannot send request: {exc.reason}") from None
        if req.method == "ACK":
            self._outbox.append((req, peer))
            return key
        if key in self._client:
            raise LocalProtocolError(f"a client transaction with branch {key.branch} exists")
        tx: ClientTransaction
        if req.method == "INVITE":
            tx = InviteClientTransaction(key, req, peer, self.timers)
        else:
            tx = NonInviteClientTransaction(key, req, peer, self.timers)
        self._client[key] = tx
        self._sent_by_of[key] = sent_by(via)
        self._our_branches[key.branch] += 1
        tx.start(now)
        self._after(tx, now)
        return key

    def send_response(self, key: TxKey, response: Response, now: float) -> None:
        """Send the TU's response through the server transaction ``key``.

        Raises LocalProtocolError when the transaction does not exist (any more) or its
        state forbids the response (a second final, §17.2.1/§17.2.2).
        """
        tx = self._server.get(key) if key.side is Side.SERVER else None
        if tx is None:
            raise LocalProtocolError(f"no server transaction {key}")
        tx.send_response(response, now)
        if isinstance(tx, InviteServerTransaction) and tx.key.rfc2543:
            self._add_ack_alias(tx, response)
        self._after(tx, now)

    def cancel(self, key: TxKey, now: float) -> TxKey:
        """CANCEL the INVITE client transaction ``key`` (§9.1); returns the CANCEL's key.

        Before a provisional response the CANCEL is remembered and sent when one arrives;
        after a final response (a race the TU cannot see) nothing is sent, as §9.1 asks.
        """
        if key.side is not Side.CLIENT or key.method != "INVITE":
            raise LocalProtocolError("only an INVITE client transaction can be cancelled")
        tx = self._client.get(key)
        if isinstance(tx, InviteClientTransaction):
            tx.wants_cancel = True
            self._after(tx, now)
        return key.with_method("CANCEL")

    # ------------------------------------------------------------------ internals

    def _via_hostport(self) -> str:
        host = self.via_host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # RFC 5118 §4.5: IPv6 references are bracketed
        return f"{host}:{self.via_port}"

    def _new_branch(self) -> str:
        branch = self._branch_factory()
        return branch if branch.startswith(MAGIC_COOKIE) else MAGIC_COOKIE + branch

    def _new_server_tx(
        self, key: TxKey, request: Request, reply_to: Peer, now: float, *, trying: bool
    ) -> ServerTransaction:
        tx: ServerTransaction
        if request.method == "INVITE":
            tx = InviteServerTransaction(key, request, reply_to, self.timers)
            # §17.2.1: 100 Trying at once; the TU's own answer follows whenever it likes.
            tx.start(now, make_response(request, 100) if trying else None)
        else:
            tx = NonInviteServerTransaction(key, request, reply_to, self.timers)
        self._server[key] = tx
        self._server_keys[tx] = [key]
        return tx

    def _add_ack_alias(self, tx: InviteServerTransaction, response: Response) -> None:
        tag = _to_tag(response)
        if tag is None or tag == tx.key.legacy[1]:
            return
        alias = server_key(tx.request, to_tag=tag)
        if alias not in self._server:
            self._server[alias] = tx
            self._server_keys[tx].append(alias)

    def _maybe_send_cancel(self, tx: InviteClientTransaction, now: float) -> None:
        if not (tx.wants_cancel and tx.cancel_key is None and tx.can_cancel):
            return
        request = tx.build_cancel()
        key = tx.key.with_method("CANCEL")
        if key not in self._client:
            ctx = NonInviteClientTransaction(key, request, tx.peer, self.timers)
            self._client[key] = ctx
            self._sent_by_of[key] = self._sent_by_of[tx.key]
            self._our_branches[key.branch] += 1
            ctx.start(now)
            self._after(ctx, now)
        tx.cancel_sent(key, now)

    def _after(self, tx: Transaction, now: float) -> None:
        """Collect what a transaction produced, then re-arm or forget it."""
        tx.handle_timer(now)  # zero-length timers (D, I, J, K on reliable transports)
        if isinstance(tx, InviteClientTransaction):
            self._maybe_send_cancel(tx, now)
        for message in tx.outbox:
            self._outbox.append((message, tx.peer))
        tx.outbox.clear()
        self._events.extend(tx.events)
        tx.events.clear()
        if tx.terminated:
            self._forget(tx)
            return
        deadline = tx.next_deadline()
        if deadline != tx.scheduled:
            tx.scheduled = deadline
            if deadline is not None:
                heapq.heappush(self._heap, (deadline, next(self._seq), tx))
                self._compact_heap()

    def _compact_heap(self) -> None:
        live = self.active_count
        if len(self._heap) > 1024 and len(self._heap) > 4 * live:
            self._heap = [
                entry
                for entry in self._heap
                if not entry[2].terminated and entry[2].scheduled == entry[0]
            ]
            heapq.heapify(self._heap)

    def _forget(self, tx: Transaction) -> None:
        tx.scheduled = None
        if isinstance(tx, InviteClientTransaction | NonInviteClientTransaction):
            if self._client.get(tx.key) is tx:
                del self._client[tx.key]
                del self._sent_by_of[tx.key]
                self._our_branches[tx.key.branch] -= 1
                if self._our_branches[tx.key.branch] <= 0:
                    del self._our_branches[tx.key.branch]
            return
        for key in self._server_keys.pop(tx, []):
            if self._server.get(key) is tx:
                del self._server[key]
        merge_key = self._merge_key_of.pop(tx, None)
        if merge_key is not None and self._merged.get(merge_key) == tx.key:
            del self._merged[merge_key]

    def _looped(self, request: Request) -> bool:
        """Our own sent-by with a branch of one of our live client transactions: the
        request we sent came back to us (§8.2.2.2 / §16.3 item 4)."""
        if not self._our_branches:
            return False
        for value in request.headers.values("Via"):
            try:
                via = parse_via(value)
            except RemoteProtocolError:
                continue
            if (
                via.branch is not None
                and via.branch in self._our_branches
                and sent_by(via) == self._our_sent_by
            ):
                return True
        return False

    def _merged_with_other(self, to_tag: str | None, merge_key: _MergeKey, key: TxKey) -> bool:
        # §8.2.2.2: only out-of-dialog requests (no To tag) can be merged.
        if to_tag is not None:
            return False
        other = self._merged.get(merge_key)
        return other is not None and other != key and other in self._server

    @staticmethod
    def _stamp_via(request: Request, via: Via, peer: Peer) -> Request:
        """§18.2.1 ``received`` and RFC 3581 §4 ``rport`` on the top Via."""
        source = _bare_host(peer.host)
        params: dict[str, str | None] = {}
        if via.has_rport and via.rport is None:
            # RFC 3581 §4: fill in the source port, and always add received.
            params["rport"] = str(peer.port)
            params["received"] = source
        elif _bare_host(via.host).lower() != source.lower():
            params["received"] = source
        if not params:
            return request
        headers = request.headers.copy()
        headers.remove_first_value("Via")
        headers.prepend("Via", str(via.with_params(**params)))
        return Request(request.method, request.uri, headers, request.body, request.version)

    @staticmethod
    def _response_peer(via: Via, peer: Peer) -> Peer:
        """Where responses go, §18.2.2 (maddr is not supported)."""
        if peer.kind.reliable:
            return peer  # the same connection
        if via.has_rport:
            return peer  # RFC 3581 §4: back to the source address and port
        port = via.port if via.port is not None else default_port(via.transport)
        return Peer(peer.kind, peer.host, port, peer.flow)

    def _refuse_statelessly(self, request: Request, peer: Peer, exc: RemoteProtocolError) -> None:
        # §8.2 / RFC 4475: answer what can be answered; never answer an ACK (§17.1.1.3).
        if exc.status is None or request.method == "ACK":
            return
        self._outbox.append((make_response(request, exc.status), peer))


def _to_tag(response: Response | None) -> str | None:
    if response is None:
        return None
    try:
        return to(response).tag
    except RemoteProtocolError:
        return None
