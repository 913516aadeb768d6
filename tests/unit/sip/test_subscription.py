"""RFC 6665 notifier: SUBSCRIBE answers, NOTIFY contents, throttle, failures, expiry.

No sockets and no clock: the tests step ``now`` by hand and answer NOTIFYs themselves.
"""

from __future__ import annotations

import itertools
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ucgate.sip import fields
from ucgate.sip.event_header import parse_event, parse_subscription_state
from ucgate.sip.message import Request
from ucgate.sip.parser import parse_message
from ucgate.sip.subscription import (
    SUBSCRIPTION_TABLE,
    NotifyDue,
    SubscribeOutcome,
    SubscriptionEvent,
    SubscriptionInput,
    SubscriptionState,
    SubscriptionTable,
    SubscriptionTerminated,
    TerminationReason,
)
from ucgate.sip.uas_checks import make_response

PIDF = "application/pidf+xml"
RESOURCE = "sip:alice@example.test"


class Watcher:
    """Builds the SUBSCRIBEs of one subscriber dialog, as bytes parsed back."""

    def __init__(
        self,
        n: int,
        *,
        event: str = "presence",
        accept: str | None = None,
        record_route: tuple[str, ...] = (),
    ) -> None:
        self.call_id = f"w{n}@198.51.100.7"
        self.from_tag = f"ft{n}"
        self.event = event
        self.accept = accept
        self.record_route = record_route
        self.cseq = 0
        self.to_tag: str | None = None

    def subscribe(
        self,
        expires: int | None = 600,
        *,
        contact: str = "<sip:bob@198.51.100.7:5062>",
        event: str | None = None,
        cseq: int | None = None,
    ) -> Request:
        self.cseq = self.cseq + 1 if cseq is None else cseq
        to = "<sip:alice@example.test>" + (f";tag={self.to_tag}" if self.to_tag else "")
        lines = [
            "SUBSCRIBE sip:alice@example.test SIP/2.0",
            f"Via: SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bK{self.call_id}{self.cseq}",
            "Max-Forwards: 70",
            f"From: <sip:bob@example.test>;tag={self.from_tag}",
            f"To: {to}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} SUBSCRIBE",
            f"Contact: {contact}",
            f"Event: {event or self.event}",
        ]
        if expires is not None:
            lines.append(f"Expires: {expires}")
        if self.accept is not None:
            lines.append(f"Accept: {self.accept}")
        lines += [f"Record-Route: {rr}" for rr in self.record_route]
        msg = parse_message(("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode())
        assert isinstance(msg, Request)
        return msg

    def accepted(self, outcome: SubscribeOutcome) -> str:
        assert outcome.status == 200, outcome
        assert outcome.subscription is not None and outcome.to_tag is not None
        self.to_tag = outcome.to_tag
        return outcome.subscription.id


def make_table(interval: float = 0.0, notify_timeout: float = 64.0) -> SubscriptionTable:
    tags = itertools.count(1)
    return SubscriptionTable(
        min_expires=60,
        max_expires=3600,
        default_expires=3600,
        notify_min_interval=interval,
        tag_factory=lambda: f"nt{next(tags)}",
        notify_timeout=notify_timeout,
    )


def drain(table: SubscriptionTable) -> list[SubscriptionEvent]:
    out: list[SubscriptionEvent] = []
    while (event := table.next_event()) is not None:
        out.append(event)
    return out


def notify(table: SubscriptionTable, sub_id: str, now: float, body: bytes = b"<p/>") -> Request:
    req = table.build_notify(sub_id, body=body, content_type=PIDF, now=now)
    assert req is not None
    return req


def sub_state(req: Request) -> str:
    value = req.headers.get("Subscription-State")
    assert value is not None
    return value


# ------------------------------------------------------------------ SUBSCRIBE answers


def test_initial_subscribe_and_first_notify() -> None:
    table = make_table()
    w = Watcher(1)
    req = w.subscribe(600)
    out = table.on_subscribe(req, watcher="bob", now=0.0)
    sub_id = w.accepted(out)
    assert out.notify_now
    assert out.headers == (("Expires", "600"),)
    resp = make_response(req, out.status, out.reason, to_tag=out.to_tag,
                         extra_headers=out.headers)
    assert fields.to(resp).tag == out.to_tag
    sub = table.get(sub_id)
    assert sub is not None
    assert (sub.resource, sub.event, sub.watcher, sub.accept) == (RESOURCE, "presence", "bob", PIDF)
    assert table.find_by_dialog(w.call_id, out.to_tag or "", w.from_tag) is sub
    assert len(table) == 1

    n = notify(table, sub_id, 0.0)
    wire = parse_message(n.to_bytes())
    assert isinstance(wire, Request)
    assert wire.method == "NOTIFY"
    assert wire.uri == "sip:bob@198.51.100.7:5062"
    assert wire.headers.get("Event") == "presence"
    assert sub_state(wire) == "active;expires=600"
    assert wire.headers.get("Content-Type") == PIDF
    assert fields.from_(wire).tag == out.to_tag
    assert fields.to(wire).tag == w.from_tag
    assert fields.cseq(wire).seq == 1
    assert wire.body == b"<p/>"


@pytest.mark.parametrize(("expires", "granted"), [(None, 3600), (99999, 3600), (60, 60)])
def test_expires_default_and_clamp(expires: int | None, granted: int) -> None:
    table = make_table()
    out = table.on_subscribe(Watcher(1).subscribe(expires), watcher="bob", now=10.0)
    assert out.status == 200
    assert out.headers == (("Expires", str(granted)),)
    assert out.subscription is not None
    assert out.subscription.expires_at == 10.0 + granted


def test_interval_too_brief() -> None:
    table = make_table()
    out = table.on_subscribe(Watcher(1).subscribe(59), watcher="bob", now=0.0)
    assert (out.status, out.headers, out.subscription) == (423, (("Min-Expires", "60"),), None)
    assert len(table) == 0


@pytest.mark.parametrize("event", ["message-summary", "Presence", "presence.winfo"])
def test_bad_event(event: str) -> None:
    table = make_table()
    out = table.on_subscribe(Watcher(1).subscribe(event=event), watcher="bob", now=0.0)
    assert out.status == 489
    assert out.headers == (("Allow-Events", "presence, dialog"),)
    assert len(table) == 0


def test_missing_event_is_bad_event() -> None:
    table = make_table()
    req = Watcher(1).subscribe()
    req.headers.remove("Event")
    assert table.on_subscribe(req, watcher="bob", now=0.0).status == 489


def test_malformed_expires_is_400() -> None:
    table = make_table()
    req = Watcher(1).subscribe()
    req.headers.set("Expires", "soon")
    assert table.on_subscribe(req, watcher="bob", now=0.0).status == 400


@pytest.mark.parametrize(
    ("event", "accept", "status"),
    [
        ("presence", "application/xpidf+xml", 406),
        ("presence", "application/xpidf+xml, application/pidf+xml;q=0.5", 200),
        ("presence", "application/*", 200),
        ("dialog", "application/dialog-info+xml", 200),
        ("dialog", "application/pidf+xml", 406),
    ],
)
def test_accept_negotiation(event: str, accept: str, status: int) -> None:
    table = make_table()
    out = table.on_subscribe(
        Watcher(1, event=event, accept=accept).subscribe(), watcher="bob", now=0.0
    )
    assert out.status == status
    if status == 406:
        assert out.headers[0][0] == "Accept"
    else:
        assert out.subscription is not None
        assert out.subscription.accept == (PIDF if event == "presence" else
                                           "application/dialog-info+xml")


def test_refresh_extends_and_retargets() -> None:
    table = make_table()
    w = Watcher(1)
    sub_id = w.accepted(table.on_subscribe(w.subscribe(600), watcher="bob", now=0.0))
    notify(table, sub_id, 0.0)
    table.on_notify_result(sub_id, 200, 0.1)

    out = table.on_subscribe(
        w.subscribe(1200, contact="<sip:bob@203.0.113.5:7000>"), watcher="bob", now=100.0
    )
    assert out.status == 200 and out.notify_now
    assert out.headers == (("Expires", "1200"),)
    assert out.to_tag == w.to_tag
    assert len(table) == 1
    n = notify(table, sub_id, 100.0)
    assert sub_state(n) == "active;expires=1200"
    assert n.uri == "sip:bob@203.0.113.5:7000"  # §4.2.1.2: SUBSCRIBE refreshes the target
    assert fields.cseq(n).seq == 2


def test_refresh_out_of_order_cseq_is_500() -> None:
    table = make_table()
    w = Watcher(1)
    w.accepted(table.on_subscribe(w.subscribe(600, cseq=10), watcher="bob", now=0.0))
    assert table.on_subscribe(w.subscribe(600, cseq=3), watcher="bob", now=1.0).status == 500


def test_refresh_of_unknown_dialog_is_481() -> None:
    table = make_table()
    w = Watcher(1)
    w.to_tag = "never-issued"
    assert table.on_subscribe(w.subscribe(600), watcher="bob", now=0.0).status == 481


def test_refresh_with_other_event_or_id_is_481() -> None:
    table = make_table()
    w = Watcher(1, event="presence;id=a")
    w.accepted(table.on_subscribe(w.subscribe(), watcher="bob", now=0.0))
    assert table.on_subscribe(w.subscribe(event="presence;id=b"), watcher="bob",
                              now=1.0).status == 481
    assert table.on_subscribe(w.subscribe(event="dialog;id=a"), watcher="bob",
                              now=1.0).status == 481
    assert table.on_subscribe(w.subscribe(event="presence;id=a"), watcher="bob",
                              now=1.0).status == 200


def test_refresh_by_someone_else_is_403() -> None:
    table = make_table()
    w = Watcher(1)
    w.accepted(table.on_subscribe(w.subscribe(), watcher="bob", now=0.0))
    assert table.on_subscribe(w.subscribe(), watcher="mallory", now=1.0).status == 403


def test_event_id_is_echoed() -> None:
    table = make_table()
    w = Watcher(1, event="presence;id=xyz")
    sub_id = w.accepted(table.on_subscribe(w.subscribe(), watcher="bob", now=0.0))
    event_value = notify(table, sub_id, 0.0).headers.get("Event")
    assert event_value is not None
    assert parse_event(event_value).id == "xyz"


def test_notify_follows_record_route() -> None:
    table = make_table()
    w = Watcher(1, record_route=("<sip:edge.example.test;lr>",))
    sub_id = w.accepted(table.on_subscribe(w.subscribe(), watcher="bob", now=0.0))
    n = notify(table, sub_id, 0.0)
    assert n.uri == "sip:bob@198.51.100.7:5062"
    assert n.headers.values("Route") == ["<sip:edge.example.test;lr>"]


# ------------------------------------------------------------------ unsubscribe and fetch


def test_unsubscribe_sends_final_notify_then_goes() -> None:
    table = make_table()
    w = Watcher(1)
    sub_id = w.accepted(table.on_subscribe(w.subscribe(600), watcher="bob", now=0.0))
    notify(table, sub_id, 0.0)
    table.on_notify_result(sub_id, 200, 0.1)

    out = table.on_subscribe(w.subscribe(0), watcher="bob", now=50.0)
    assert out.status == 200 and out.notify_now
    assert out.headers == (("Expires", "0"),)
    assert table.subscriptions_for(RESOURCE) == []  # no more state changes for it
    final = notify(table, sub_id, 50.0, body=b"")
    assert sub_state(final) == "terminated;reason=timeout"
    assert "Content-Type" not in final.headers
    assert table.build_notify(sub_id, body=b"", content_type=PIDF, now=50.0) is None
    assert drain(table) == []
    table.on_notify_result(sub_id, 200, 50.2)
    assert len(table) == 0
    assert drain(table) == [
        SubscriptionTerminated(sub_id, RESOURCE, "presence", "bob", TerminationReason.TIMEOUT)
    ]
    # The dialog is gone: a later SUBSCRIBE in it is 481 (§4.2.1.2).
    assert table.on_subscribe(w.subscribe(600), watcher="bob", now=60.0).status == 481


def test_fetch_is_one_terminated_notify() -> None:
    table = make_table()
    w = Watcher(1)
    out = table.on_subscribe(w.subscribe(0), watcher="bob", now=0.0)
    sub_id = w.accepted(out)
    assert out.headers == (("Expires", "0"),) and out.notify_now
    n = notify(table, sub_id, 0.0)
    assert parse_subscription_state(sub_state(n)).reason == "timeout"
    assert n.body == b"<p/>"  # a fetch carries the current state (§4.2.1.1)
    table.on_notify_result(sub_id, 200, 0.1)
    assert len(table) == 0
    assert table.next_deadline() is None


# ------------------------------------------------------------------ NOTIFY delivery


def test_expires_counts_down_and_cseq_grows() -> None:
    table = make_table()
    w = Watcher(1)
    sub_id = w.accepted(table.on_subscribe(w.subscribe(600), watcher="bob", now=0.0))
    seen = []
    for t in (0.0, 100.0, 250.5, 599.2):
        n = notify(table, sub_id, t)
        seen.append((sub_state(n), fields.cseq(n).seq))
        table.on_notify_result(sub_id, 200, t + 0.01)
    assert seen == [
        ("active;expires=600", 1),
        ("active;expires=500", 2),
        ("active;expires=350", 3),
        ("active;expires=1", 4),  # rounded up: never "active;expires=0"
    ]


def test_dialog_info_version_increments_per_notify() -> None:
    table = make_table()
    w = Watcher(1, event="dialog")
    sub_id = w.accepted(table.on_subscribe(w.subscribe(), watcher="bob", now=0.0))
    sub = table.get(sub_id)
    assert sub is not None
    versions = []
    for t in (0.0, 1.0, 2.0):
        versions.append(sub.version)
        body = f'<dialog-info version="{sub.version}"/>'.encode()
        table.build_notify(sub_id, body=body, content_type=sub.accept, now=t)
        table.on_notify_result(sub_id, 200, t)
    assert versions == [0, 1, 2]
    # A refused build (in flight) does not consume a version.
    notify(table, sub_id, 3.0)
    assert table.build_notify(sub_id, body=b"x", content_type=sub.accept, now=3.0) is None
    assert sub.version == 4


def test_never_two_notifies_in_flight() -> None:
    table = make_table()
    w = Watcher(1)
    sub_id = w.accepted(table.on_subscribe(w.subscribe(), watcher="bob", now=0.0))
    notify(table, sub_id, 0.0)
    assert table.build_notify(sub_id, body=b"2", content_type=PIDF, now=0.5) is None
    assert not table.want_notify(sub_id, 0.6)
    assert drain(table) == []
    table.on_notify_result(sub_id, 100, 0.7)  # provisional: still in flight
    assert drain(table) == []
    table.on_notify_result(sub_id, 200, 0.8)
    assert drain(table) == [NotifyDue(sub_id)]
    assert notify(table, sub_id, 0.8, body=b"3").body == b"3"


def test_throttle_coalesces_changes() -> None:
    table = make_table(interval=5.0)
    w = Watcher(1)
    sub_id = w.accepted(table.on_subscribe(w.subscribe(), watcher="bob", now=0.0))
    sent = [notify(table, sub_id, 0.0, body=b"v0")]  # first one after quiet: at once
    table.on_notify_result(sub_id, 200, 0.1)
    for t, body in ((1.0, b"v1"), (2.0, b"v2"), (3.0, b"v3")):
        assert table.build_notify(sub_id, body=body, content_type=PIDF, now=t) is None
    assert drain(table) == []
    assert table.next_deadline() == 5.0
    table.handle_timer(4.999)
    assert drain(table) == []
    table.handle_timer(5.0)
    assert drain(table) == [NotifyDue(sub_id)]
    sent.append(notify(table, sub_id, 5.0, body=b"v3"))  # the newest state, built now
    table.on_notify_result(sub_id, 200, 5.1)
    assert [n.body for n in sent] == [b"v0", b"v3"]
    assert drain(table) == []
    # Quiet again past the interval: the next change goes out immediately.
    assert table.want_notify(sub_id, 20.0)


def test_throttle_applies_after_in_flight_answer() -> None:
    table = make_table(interval=5.0)
    w = Watcher(1)
    sub_id = w.accepted(table.on_subscribe(w.subscribe(), watcher="bob", now=0.0))
    notify(table, sub_id, 0.0)
    assert not table.want_notify(sub_id, 1.0)
    table.on_notify_result(sub_id, 200, 2.0)
    assert drain(table) == []  # answered, but still inside the interval
    table.handle_timer(5.0)
    assert drain(table) == [NotifyDue(sub_id)]


def test_final_notify_ignores_throttle() -> None:
    table = make_table(interval=30.0)
    w = Watcher(1)
    sub_id = w.accepted(table.on_subscribe(w.subscribe(), watcher="bob", now=0.0))
    notify(table, sub_id, 0.0)
    table.on_notify_result(sub_id, 200, 0.1)
    table.on_subscribe(w.subscribe(0), watcher="bob", now=1.0)
    assert sub_state(notify(table, sub_id, 1.0)) == "terminated;reason=timeout"


@pytest.mark.parametrize("status", [481, 408, 503, 404, 500, 603])
def test_failed_notify_removes_subscription(status: int) -> None:
    table = make_table()
    w = Watcher(1)
    sub_id = w.accepted(table.on_subscribe(w.subscribe(), watcher="bob", now=0.0))
    notify(table, sub_id, 0.0)
    table.on_notify_result(sub_id, status, 1.0)
    assert len(table) == 0 and table.subscriptions_for(RESOURCE) == []
    assert drain(table) == [
        SubscriptionTerminated(sub_id, RESOURCE, "presence", "bob", None, status)
    ]
    assert table.next_deadline() is None
    # Late or duplicate results and builds for a removed id are harmless.
    table.on_notify_result(sub_id, 200, 2.0)
    assert table.build_notify(sub_id, body=b"", content_type=PIDF, now=2.0) is None


def test_unanswered_notify_times_out() -> None:
    table = make_table(notify_timeout=40.0)
    w = Watcher(1)
    sub_id = w.accepted(table.on_subscribe(w.subscribe(), watcher="bob", now=0.0))
    notify(table, sub_id, 0.0)
    assert table.next_deadline() == 40.0
    table.handle_timer(40.0)
    assert drain(table) == [SubscriptionTerminated(sub_id, RESOURCE, "presence", "bob", None, 408)]


def test_expiry_sends_final_notify_then_removes() -> None:
    table = make_table()
    w = Watcher(1)
    sub_id = w.accepted(table.on_subscribe(w.subscribe(600), watcher="bob", now=0.0))
    notify(table, sub_id, 0.0)
    table.on_notify_result(sub_id, 200, 0.1)
    assert table.next_deadline() == 600.0
    table.handle_timer(599.9)
    assert drain(table) == []
    table.handle_timer(600.0)
    assert drain(table) == [NotifyDue(sub_id)]
    sub = table.get(sub_id)
    assert sub is not None and sub.state is SubscriptionState.TERMINATED
    final = notify(table, sub_id, 600.0, body=b"")
    assert sub_state(final) == "terminated;reason=timeout"
    assert len(table) == 1  # until the final NOTIFY is answered
    table.on_notify_result(sub_id, 200, 600.2)
    assert len(table) == 0
    assert drain(table) == [
        SubscriptionTerminated(sub_id, RESOURCE, "presence", "bob", TerminationReason.TIMEOUT)
    ]


def test_expiry_while_notify_in_flight_waits_for_answer() -> None:
    table = make_table()
    w = Watcher(1)
    sub_id = w.accepted(table.on_subscribe(w.subscribe(60), watcher="bob", now=0.0))
    notify(table, sub_id, 59.5)
    table.handle_timer(60.0)
    assert drain(table) == []  # the final NOTIFY must not overtake the one in flight
    table.on_notify_result(sub_id, 200, 61.0)
    assert drain(table) == [NotifyDue(sub_id)]
    assert sub_state(notify(table, sub_id, 61.0)) == "terminated;reason=timeout"


def test_expired_but_timer_not_run_builds_final() -> None:
    table = make_table()
    w = Watcher(1)
    sub_id = w.accepted(table.on_subscribe(w.subscribe(60), watcher="bob", now=0.0))
    n = notify(table, sub_id, 61.0)
    assert sub_state(n) == "terminated;reason=timeout"
    assert drain(table) == []


def test_final_notify_never_built_is_dropped() -> None:
    table = make_table(notify_timeout=10.0)
    w = Watcher(1)
    sub_id = w.accepted(table.on_subscribe(w.subscribe(60), watcher="bob", now=0.0))
    notify(table, sub_id, 0.0)
    table.on_notify_result(sub_id, 200, 0.0)
    table.handle_timer(60.0)
    assert drain(table) == [NotifyDue(sub_id)]
    table.handle_timer(70.0)  # the application never built it
    assert len(table) == 0
    assert drain(table) == [
        SubscriptionTerminated(sub_id, RESOURCE, "presence", "bob", TerminationReason.TIMEOUT)
    ]


def test_final_notify_due_after_in_flight_answer_is_still_guarded() -> None:
    table = make_table(notify_timeout=10.0)
    w = Watcher(1)
    sub_id = w.accepted(table.on_subscribe(w.subscribe(60), watcher="bob", now=0.0))
    notify(table, sub_id, 55.0)
    table.on_notify_result(sub_id, 200, 55.0)
    notify(table, sub_id, 59.0)
    table.handle_timer(60.0)  # expires with a NOTIFY in flight
    table.on_notify_result(sub_id, 200, 61.0)
    assert drain(table) == [NotifyDue(sub_id)]
    assert table.next_deadline() == 71.0
    table.handle_timer(71.0)  # nobody built the final NOTIFY
    assert len(table) == 0
    assert drain(table) == [
        SubscriptionTerminated(sub_id, RESOURCE, "presence", "bob", TerminationReason.TIMEOUT)
    ]


def test_application_terminates_with_reason() -> None:
    table = make_table()
    w = Watcher(1)
    sub_id = w.accepted(table.on_subscribe(w.subscribe(), watcher="bob", now=0.0))
    notify(table, sub_id, 0.0)
    table.on_notify_result(sub_id, 200, 0.0)
    table.terminate(sub_id, TerminationReason.NORESOURCE, 1.0)
    table.terminate(sub_id, TerminationReason.REJECTED, 1.0)  # idempotent, first reason wins
    table.terminate("no-such-id", TerminationReason.REJECTED, 1.0)
    assert drain(table) == [NotifyDue(sub_id)]
    assert sub_state(notify(table, sub_id, 1.0)) == "terminated;reason=noresource"


def test_pending_then_authorized() -> None:
    table = make_table()
    w = Watcher(1)
    out = table.on_subscribe(w.subscribe(600), watcher="bob", now=0.0, authorized=False)
    sub_id = w.accepted(out)
    assert sub_state(notify(table, sub_id, 0.0)) == "pending;expires=600"
    table.on_notify_result(sub_id, 200, 0.0)
    table.authorize(sub_id, 5.0)
    assert drain(table) == [NotifyDue(sub_id)]
    assert sub_state(notify(table, sub_id, 5.0)) == "active;expires=595"


def test_lookup_by_resource_and_event() -> None:
    table = make_table()
    p = Watcher(1)
    d = Watcher(2, event="dialog")
    p_id = p.accepted(table.on_subscribe(p.subscribe(), watcher="bob", now=0.0))
    d_id = d.accepted(table.on_subscribe(d.subscribe(), watcher="carol", now=0.0))
    other = table.on_subscribe(Watcher(3).subscribe(), watcher="bob", now=0.0,
                               resource="sip:zed@example.test")
    assert other.subscription is not None
    assert [s.id for s in table.subscriptions_for(RESOURCE)] == [p_id, d_id]
    assert [s.id for s in table.subscriptions_for(RESOURCE, "dialog")] == [d_id]
    assert table.subscriptions_for("sip:nobody@example.test") == []
    assert len(table) == 3


def test_table_has_no_transition_out_of_terminated_for_subscribe() -> None:
    for what in (SubscriptionInput.REFRESH, SubscriptionInput.UNSUBSCRIBE):
        assert (SubscriptionState.TERMINATED, what) not in SUBSCRIPTION_TABLE


def test_ten_thousand_subscriptions_stay_small() -> None:
    table = make_table()
    watchers = [Watcher(i) for i in range(10_000)]
    requests = [w.subscribe(3600) for w in watchers]
    sampled = 2_000  # tracemalloc is slow: measure a sample, then fill up untraced
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i, req in enumerate(requests[:sampled]):
            assert table.on_subscribe(req, watcher="bob", now=float(i % 100)).status == 200
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    for i, req in enumerate(requests[sampled:]):
        assert table.on_subscribe(req, watcher="bob", now=float(i % 100)).status == 200
    assert len(table) == 10_000
    # Subscription + Dialog + indexes: about 1.2 KB today; fail well before it doubles.
    assert used / sampled < 3072, used / sampled


# ------------------------------------------------------------------ properties


# Every operation is (kind, a, b); what a and b mean depends on the kind (see run()).
Op = tuple[str, int, int]
OPS = st.lists(
    st.tuples(
        st.sampled_from(["subscribe", "refresh", "change", "answer", "tick", "terminate"]),
        st.integers(0, 7),
        st.integers(0, 90),
    ),
    max_size=60,
)
EXPIRIES = (0, 60, 120, 600)
STATUSES = (200, 200, 481, 408)


class Harness:
    """Plays the application: builds NOTIFYs on NotifyDue and checks invariants."""

    def __init__(self, interval: float) -> None:
        self.table = make_table(interval=interval, notify_timeout=40.0)
        self.now = 0.0
        self.watchers: list[tuple[Watcher, str]] = []
        self.in_flight: dict[str, Request] = {}
        self.last_cseq: dict[str, int] = {}
        self.resources = [f"sip:agent{i}@example.test" for i in range(3)]

    def send(self, sub_id: str) -> None:
        req = self.table.build_notify(sub_id, body=b"<p/>", content_type=PIDF, now=self.now)
        if req is None:
            return
        assert sub_id not in self.in_flight, "two NOTIFYs in flight"
        seq = fields.cseq(req).seq
        assert seq > self.last_cseq.get(sub_id, 0)
        self.last_cseq[sub_id] = seq
        self.in_flight[sub_id] = req

    def pump(self) -> None:
        while (event := self.table.next_event()) is not None:
            if isinstance(event, NotifyDue):
                self.send(event.sub_id)
            else:
                assert self.table.get(event.sub_id) is None
                self.in_flight.pop(event.sub_id, None)

    def run(self, op: Op) -> None:
        kind, a, b = op
        if kind == "subscribe":
            w = Watcher(len(self.watchers))
            res = self.resources[len(self.watchers) % 3]
            out = self.table.on_subscribe(
                w.subscribe(EXPIRIES[a % 4]), watcher="bob", now=self.now, resource=res
            )
            sub_id = w.accepted(out)
            self.watchers.append((w, sub_id))
            self.send(sub_id)
        elif kind == "refresh" and self.watchers:
            w, sub_id = self.watchers[a % len(self.watchers)]
            out = self.table.on_subscribe(w.subscribe(EXPIRIES[b % 4]), watcher="bob",
                                          now=self.now)
            assert out.status in (200, 481)
            if out.status == 200:
                self.send(sub_id)
        elif kind == "change":
            for sub in self.table.subscriptions_for(self.resources[a % 3]):
                self.send(sub.id)
        elif kind == "answer" and self.in_flight:
            ids = sorted(self.in_flight)
            sub_id = ids[a % len(ids)]
            del self.in_flight[sub_id]
            self.table.on_notify_result(sub_id, STATUSES[b % 4], self.now)
        elif kind == "tick":
            self.now += b + a / 8
            self.fire()
        elif kind == "terminate" and self.watchers:
            _, sub_id = self.watchers[a % len(self.watchers)]
            self.table.terminate(sub_id, TerminationReason.DEACTIVATED, self.now)
        self.pump()

    def fire(self) -> None:
        while (at := self.table.next_deadline()) is not None and at <= self.now:
            self.table.handle_timer(self.now)
            self.pump()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, interval=st.sampled_from([0.0, 1.0, 5.0]))
def test_random_operations_never_leak(ops: list[Op], interval: float) -> None:
    h = Harness(interval)
    for op in ops:
        h.run(op)
        for sub_id in h.in_flight:
            sub = h.table.get(sub_id)
            assert sub is not None and sub.notify_in_flight
    # Wind down: answer every NOTIFY with 200 and let time run past every expiry.
    for _ in range(200):
        for sub_id in list(h.in_flight):
            del h.in_flight[sub_id]
            h.table.on_notify_result(sub_id, 200, h.now)
        h.pump()
        deadline = h.table.next_deadline()
        if deadline is None and not h.in_flight:
            break
        h.now = max(h.now, deadline or h.now)
        h.fire()
    assert len(h.table) == 0
    assert h.table._by_resource == {} and h.table._by_dialog == {}
    assert h.table.next_deadline() is None
    assert h.table._heap == []
