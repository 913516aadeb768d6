"""Property tests: random traffic, loss, TU behaviour and time never break the layer.

Claims checked over random sequences:

* the only exception that ever escapes is LocalProtocolError, and only from TU calls;
* every event's key belongs to a transaction the TU started or was told about;
* after the TU has answered everything and enough time passed, every transaction on both
  sides has terminated and no deadline is left (no leak).
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from ucgate.sip.errors import LocalProtocolError
from ucgate.sip.fields import to
from ucgate.sip.message import Headers, Request, Response
from ucgate.sip.peer import Peer, TransportKind
from ucgate.sip.transaction import (
    RequestReceived,
    ResponseReceived,
    TransactionEvent,
    TransactionLayer,
    TxKey,
)
from ucgate.sip.transaction.client import InviteClientTransaction, NonInviteClientTransaction
from ucgate.sip.transaction.key import client_key, server_key
from ucgate.sip.transaction.server import InviteServerTransaction, NonInviteServerTransaction
from ucgate.sip.transaction.timers import TimerConfig
from ucgate.sip.uas_checks import make_response

STATUSES = [100, 180, 183, 200, 202, 302, 404, 486, 487, 500, 603]
METHODS = ["INVITE", "OPTIONS", "BYE", "MESSAGE"]


def request(method: str, n: int, to_tag: str | None = None) -> Request:
    to_value = "<sip:bob@example.net>" + (f";tag={to_tag}" if to_tag else "")
    return Request(
        method,
        "sip:bob@example.net",
        Headers(
            [
                ("Max-Forwards", "70"),
                ("From", f"<sip:alice@example.com>;tag=f{n}"),
                ("To", to_value),
                ("Call-ID", f"prop-{n}"),
                ("CSeq", f"{n + 1} {method}"),
            ]
        ),
    )


@dataclass
class World:
    kind: TransportKind
    uac: TransactionLayer = field(init=False)
    uas: TransactionLayer = field(init=False)
    now: float = 0.0
    counter: itertools.count[int] = field(default_factory=itertools.count)
    sent_keys: set[TxKey] = field(default_factory=set)
    invites: list[TxKey] = field(default_factory=list)
    pending: list[RequestReceived] = field(default_factory=list)
    oks: list[Response] = field(default_factory=list)
    last: dict[str, tuple[Request | Response, Peer]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.uac = TransactionLayer(via_host="192.0.2.1", via_port=5060)
        self.uas = TransactionLayer(via_host="192.0.2.2", via_port=5060)
        reliable = self.kind.reliable
        self.uac_addr = Peer(self.kind, "192.0.2.1", 5060, 1 if reliable else None)
        self.uas_addr = Peer(self.kind, "192.0.2.2", 5060, 1 if reliable else None)

    # -- plumbing ----------------------------------------------------------------

    def collect(self) -> None:
        for layer, side in ((self.uac, "uac"), (self.uas, "uas")):
            while (ev := layer.next_event()) is not None:
                self.check(ev, side)

    def check(self, ev: TransactionEvent, side: str) -> None:
        if side == "uas":
            if isinstance(ev, RequestReceived):
                self.pending.append(ev)
            return
        key = getattr(ev, "key", None)
        if key is not None:
            assert key in self.sent_keys, ev
        if (
            isinstance(ev, ResponseReceived)
            and ev.key.method == "INVITE"
            and 200 <= ev.response.status < 300
        ):
            self.oks.append(ev.response)

    def transfer(self, src: str, mask: int) -> None:
        layer, dst, source = (
            (self.uac, self.uas, self.uac_addr)
            if src == "uac"
            else (self.uas, self.uac, self.uas_addr)
        )
        for i, (msg, _dest) in enumerate(layer.messages_to_send()):
            self.last[src] = (msg, source)
            if mask >> i & 1 and not self.kind.reliable:
                continue  # lost datagram
            dst.receive(msg, source, self.now)
        self.collect()

    # -- operations ----------------------------------------------------------------

    def send(self, method: str) -> None:
        key = self.uac.send_request(request(method, next(self.counter)), self.uas_addr, self.now)
        self.sent_keys.add(key)
        if method == "INVITE":
            self.invites.append(key)
            self.sent_keys.add(key.with_method("CANCEL"))
        self.collect()

    def respond(self, index: int, status: int) -> None:
        if not self.pending:
            return
        ev = self.pending[index % len(self.pending)]
        if ev.key.method != "INVITE" and status < 200 and status != 100:
            status = 183
        resp = make_response(ev.request, status, to_tag=f"t{ev.key.branch[-6:]}")
        # TU misuse (second final, answer after the end): the only allowed raise.
        with contextlib.suppress(LocalProtocolError):
            self.uas.send_response(ev.key, resp, self.now)
        self.collect()

    def cancel(self, index: int) -> None:
        if self.invites:
            self.uac.cancel(self.invites[index % len(self.invites)], self.now)
            self.collect()

    def ack(self, index: int) -> None:
        if not self.oks:
            return
        ok = self.oks[index % len(self.oks)]
        n = int((ok.headers.get("Call-ID") or "prop-0").split("-")[1])
        self.uac.send_request(request("ACK", n, to_tag=to(ok).tag), self.uas_addr, self.now)
        self.collect()

    def replay(self, src: str) -> None:
        if src in self.last:
            msg, source = self.last[src]
            (self.uas if src == "uac" else self.uac).receive(msg, source, self.now)
            self.collect()

    def advance(self, dt: float) -> None:
        self.now += dt
        self.uac.handle_timer(self.now)
        self.uas.handle_timer(self.now)
        self.collect()

    def transport_error(self, side: str) -> None:
        if side == "uac":
            self.uac.transport_error(self.uas_addr, self.now)
        else:
            self.uas.transport_error(self.uac_addr, self.now)
        self.collect()

    def settle(self, invite_status: int) -> None:
        """Deliver everything, let the TU answer everything, run the clock out."""
        for _ in range(10_000):
            self.transfer("uac", 0)
            self.transfer("uas", 0)
            for ev in list(self.pending):
                try:
                    status = invite_status if ev.key.method == "INVITE" else 200
                    resp = make_response(ev.request, status)
                    self.uas.send_response(ev.key, resp, self.now)
                except LocalProtocolError:
                    pass
            self.pending.clear()
            self.collect()
            deadlines = [d for d in (self.uac.next_deadline(), self.uas.next_deadline()) if d]
            if not deadlines:
                self.transfer("uac", 0)
                self.transfer("uas", 0)
                if self.uac.next_deadline() is None and self.uas.next_deadline() is None:
                    break
                continue
            self.advance(max(0.0, min(deadlines) - self.now))
        assert len(self.uac) == 0, "client transactions leaked"
        assert len(self.uas) == 0, "server transactions leaked"


OPS = st.one_of(
    st.tuples(st.just("send"), st.sampled_from(METHODS)),
    st.tuples(st.just("c2s"), st.integers(0, 255)),
    st.tuples(st.just("s2c"), st.integers(0, 255)),
    st.tuples(st.just("respond"), st.integers(0, 50), st.sampled_from(STATUSES)),
    st.tuples(st.just("cancel"), st.integers(0, 50)),
    st.tuples(st.just("ack"), st.integers(0, 50)),
    st.tuples(st.just("replay"), st.sampled_from(["uac", "uas"])),
    st.tuples(st.just("advance"), st.floats(0.0, 40.0, allow_nan=False)),
    st.tuples(st.just("terr"), st.sampled_from(["uac", "uas"])),
)


@settings(max_examples=150, deadline=None)
@given(
    kind=st.sampled_from([TransportKind.UDP, TransportKind.TCP]),
    first=st.sampled_from(METHODS),
    ops=st.lists(OPS, max_size=40),
    invite_status=st.sampled_from([200, 486]),
)
def test_random_traffic_never_raises_and_never_leaks(
    kind: TransportKind, first: str, ops: list[tuple[object, ...]], invite_status: int
) -> None:
    world = World(kind)
    world.send(first)  # every example has traffic
    for op in ops:
        match op:
            case ("send", str(method)):
                world.send(method)
            case ("c2s", int(mask)):
                world.transfer("uac", mask)
            case ("s2c", int(mask)):
                world.transfer("uas", mask)
            case ("respond", int(i), int(status)):
                world.respond(i, status)
            case ("cancel", int(i)):
                world.cancel(i)
            case ("ack", int(i)):
                world.ack(i)
            case ("replay", str(src)):
                world.replay(src)
            case ("advance", float(dt)):
                world.advance(dt)
            case ("terr", str(side)):
                world.transport_error(side)
    world.settle(invite_status)


# ------------------------------------------------------------ single machines, every input

CFG = TimerConfig()
UDP = Peer(TransportKind.UDP, "192.0.2.9", 5060)
TCP = Peer(TransportKind.TCP, "192.0.2.9", 5060, 4)


def with_via(req: Request) -> Request:
    req.headers.prepend("Via", "SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKm1")
    return req


SERVER_OPS = st.one_of(
    st.tuples(st.just("tu"), st.sampled_from(STATUSES)),
    st.tuples(st.just("request"), st.none()),
    st.tuples(st.just("ack"), st.none()),
    st.tuples(st.just("advance"), st.floats(0.0, 70.0, allow_nan=False)),
    st.tuples(st.just("terr"), st.none()),
)


@settings(max_examples=200, deadline=None)
@given(
    method=st.sampled_from(["INVITE", "OPTIONS"]),
    peer=st.sampled_from([UDP, TCP]),
    ops=st.lists(SERVER_OPS, max_size=25),
)
def test_server_machines_only_reject_tu_misuse(
    method: str, peer: Peer, ops: list[tuple[str, object]]
) -> None:
    req = with_via(request(method, 1))
    tx: InviteServerTransaction | NonInviteServerTransaction
    if method == "INVITE":
        tx = InviteServerTransaction(server_key(req), req, peer, CFG)
        tx.start(0.0, make_response(req, 100))
    else:
        tx = NonInviteServerTransaction(server_key(req), req, peer, CFG)
    now = 0.0
    final_sent = False
    for name, arg in ops:
        if name == "tu":
            assert isinstance(arg, int)
            try:
                tx.send_response(make_response(req, arg, to_tag="x"), now)
                final_sent = final_sent or arg >= 200
            except LocalProtocolError:
                # Only a response after a final (other than a 2xx retransmission in
                # Accepted) or after the end may be refused.
                assert final_sent or tx.terminated
        elif name == "request":
            tx.receive_request(req, now)
        elif name == "ack":
            ack = request("ACK", 1, to_tag="x")
            if isinstance(tx, InviteServerTransaction):
                tx.receive_ack(with_via(ack), peer, now)
        elif name == "advance":
            assert isinstance(arg, float)
            now += arg
            tx.handle_timer(now)
        else:
            tx.transport_error(now)
        if tx.terminated:
            assert tx.next_deadline() is None
    if final_sent:
        tx.handle_timer(now + 1000.0)
        assert tx.terminated


CLIENT_OPS = st.one_of(
    st.tuples(st.just("response"), st.sampled_from(STATUSES)),
    st.tuples(st.just("advance"), st.floats(0.0, 70.0, allow_nan=False)),
    st.tuples(st.just("terr"), st.none()),
)


@settings(max_examples=200, deadline=None)
@given(
    method=st.sampled_from(["INVITE", "OPTIONS"]),
    peer=st.sampled_from([UDP, TCP]),
    ops=st.lists(CLIENT_OPS, max_size=25),
)
def test_client_machines_accept_any_response_order_and_end(
    method: str, peer: Peer, ops: list[tuple[str, object]]
) -> None:
    req = with_via(request(method, 1))
    tx: InviteClientTransaction | NonInviteClientTransaction
    if method == "INVITE":
        tx = InviteClientTransaction(client_key(req), req, peer, CFG)
    else:
        tx = NonInviteClientTransaction(client_key(req), req, peer, CFG)
    tx.start(0.0)
    now = 0.0
    finals = 0
    for name, arg in ops:
        if name == "response":
            assert isinstance(arg, int)
            tx.receive_response(make_response(req, arg, to_tag="x"), now)
        elif name == "advance":
            assert isinstance(arg, float)
            now += arg
            tx.handle_timer(now)
        else:
            tx.transport_error(now)
        finals = sum(
            1 for e in tx.events if isinstance(e, ResponseReceived) and e.response.status >= 300
        )
        # §17.1: at most one non-2xx final ever reaches the TU.
        assert finals <= 1
    if isinstance(tx, InviteClientTransaction):
        tx.wants_cancel = True  # a TU that gives up; Timer C would do the same
        if tx.can_cancel:
            tx.cancel_sent(tx.key.with_method("CANCEL"), now)
    tx.handle_timer(now + 1000.0)
    assert tx.terminated and tx.next_deadline() is None
