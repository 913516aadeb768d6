"""RFC 3903 Event State Compositor: initial/refresh/modify/remove, 412/423/489, expiry."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ucgate.sip.message import Request
from ucgate.sip.parser import parse_message
from ucgate.sip.publication import (
    PUBLICATION_TABLE,
    PublicationExpired,
    PublicationState,
    PublicationTable,
    PublishOperation,
    PublishOutcome,
)

PIDF = "application/pidf+xml"
RESOURCE = "sip:alice@example.test"
DOC1 = b'<presence entity="sip:alice@example.test"><tuple id="a"/></presence>'
DOC2 = b'<presence entity="sip:alice@example.test"><tuple id="b"/></presence>'


def publish(
    *,
    body: bytes = b"",
    etag: str | None = None,
    expires: int | None = 600,
    event: str | None = "presence",
    content_type: str = PIDF,
) -> Request:
    lines = [
        "PUBLISH sip:alice@example.test SIP/2.0",
        "Via: SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bKpub",
        "Max-Forwards: 70",
        "From: <sip:alice@example.test>;tag=p1",
        "To: <sip:alice@example.test>",
        "Call-ID: pub-1",
        "CSeq: 1 PUBLISH",
    ]
    if event is not None:
        lines.append(f"Event: {event}")
    if etag is not None:
        lines.append(f"SIP-If-Match: {etag}")
    if expires is not None:
        lines.append(f"Expires: {expires}")
    if body:
        lines.append(f"Content-Type: {content_type}")
    head = "\r\n".join(lines) + f"\r\nContent-Length: {len(body)}\r\n\r\n"
    msg = parse_message(head.encode() + body)
    assert isinstance(msg, Request)
    return msg


def make_table() -> PublicationTable:
    tags = itertools.count(1)
    return PublicationTable(
        min_expires=60, max_expires=3600, etag_factory=lambda: f"e{next(tags)}"
    )


def header(out: PublishOutcome, name: str) -> str | None:
    return next((v for n, v in out.headers if n == name), None)


def drain(table: PublicationTable) -> list[PublicationExpired]:
    out: list[PublicationExpired] = []
    while (event := table.next_event()) is not None:
        out.append(event)
    return out


def initial(table: PublicationTable, now: float = 0.0, publisher: str = "alice") -> str:
    out = table.on_publish(publish(body=DOC1), publisher=publisher, resource=RESOURCE, now=now)
    assert out.status == 200
    etag = header(out, "SIP-ETag")
    assert etag is not None
    return etag


def test_initial_publication() -> None:
    table = make_table()
    out = table.on_publish(publish(body=DOC1), publisher="alice", resource=RESOURCE, now=5.0)
    assert out.status == 200
    assert out.headers == (("SIP-ETag", "e1"), ("Expires", "600"))
    change = out.change
    assert change is not None
    assert change.operation is PublishOperation.INITIAL
    assert (change.resource, change.event, change.publisher) == (RESOURCE, "presence", "alice")
    assert (change.etag, change.old_etag, change.body, change.content_type) == (
        "e1", None, DOC1, PIDF,
    )
    assert change.expires_at == 605.0 and not change.removed
    assert [p.etag for p in table.publications_for(RESOURCE)] == ["e1"]
    assert len(table) == 1


def test_refresh_keeps_state_under_new_etag() -> None:
    table = make_table()
    etag = initial(table)
    out = table.on_publish(publish(etag=etag, expires=1200), publisher="alice",
                           resource=RESOURCE, now=100.0)
    assert out.status == 200
    assert out.headers == (("SIP-ETag", "e2"), ("Expires", "1200"))
    assert out.change is not None
    assert out.change.operation is PublishOperation.REFRESH
    assert (out.change.etag, out.change.old_etag, out.change.body) == ("e2", etag, DOC1)
    assert table.get(etag) is None  # §6: the old tag is spent
    pub = table.get("e2")
    assert pub is not None and pub.expires_at == 1300.0 and pub.body == DOC1
    assert len(table) == 1
    # Reusing the spent tag is a conditional failure.
    stale = table.on_publish(publish(etag=etag), publisher="alice", resource=RESOURCE, now=101.0)
    assert stale.status == 412 and stale.change is None


def test_modify_replaces_state() -> None:
    table = make_table()
    etag = initial(table)
    out = table.on_publish(publish(etag=etag, body=DOC2), publisher="alice",
                           resource=RESOURCE, now=10.0)
    assert out.status == 200
    assert out.change is not None
    assert out.change.operation is PublishOperation.MODIFY
    assert (out.change.etag, out.change.old_etag, out.change.body) == ("e2", etag, DOC2)
    assert [p.body for p in table.publications_for(RESOURCE)] == [DOC2]


def test_remove() -> None:
    table = make_table()
    etag = initial(table)
    out = table.on_publish(publish(etag=etag, expires=0), publisher="alice",
                           resource=RESOURCE, now=10.0)
    assert out.status == 200
    assert header(out, "Expires") == "0"
    assert out.change is not None
    assert out.change.operation is PublishOperation.REMOVE
    assert out.change.removed and out.change.etag is None and out.change.old_etag == etag
    assert out.change.body == DOC1  # what to take out of the composed document
    assert len(table) == 0 and table.publications_for(RESOURCE) == []
    assert table.next_deadline() is None
    again = table.on_publish(publish(etag=etag, expires=0), publisher="alice",
                             resource=RESOURCE, now=11.0)
    assert again.status == 412


def test_two_publishers_two_entries() -> None:
    table = make_table()
    a = initial(table, publisher="alice")
    b = initial(table, publisher="alice")
    assert a != b
    assert {p.etag for p in table.publications_for(RESOURCE)} == {a, b}


@pytest.mark.parametrize("etag", ["nonexistent", "e1 "])
def test_unknown_etag_is_412(etag: str) -> None:
    table = make_table()
    out = table.on_publish(publish(etag=etag, body=DOC2), publisher="alice",
                           resource=RESOURCE, now=0.0)
    assert (out.status, out.change) == (412, None)


def test_etag_of_other_resource_is_412() -> None:
    table = make_table()
    etag = initial(table)
    out = table.on_publish(publish(etag=etag), publisher="alice",
                           resource="sip:bob@example.test", now=1.0)
    assert out.status == 412
    assert table.get(etag) is not None


def test_etag_of_other_publisher_is_403() -> None:
    table = make_table()
    etag = initial(table, publisher="alice")
    out = table.on_publish(publish(etag=etag, body=DOC2), publisher="mallory",
                           resource=RESOURCE, now=1.0)
    assert out.status == 403
    pub = table.get(etag)
    assert pub is not None and pub.body == DOC1


def test_interval_too_brief() -> None:
    table = make_table()
    out = table.on_publish(publish(body=DOC1, expires=59), publisher="alice",
                           resource=RESOURCE, now=0.0)
    assert (out.status, out.headers) == (423, (("Min-Expires", "60"),))
    assert len(table) == 0


@pytest.mark.parametrize(("expires", "granted"), [(None, 3600), (86400, 3600)])
def test_default_and_clamped_expires(expires: int | None, granted: int) -> None:
    table = make_table()
    out = table.on_publish(publish(body=DOC1, expires=expires), publisher="alice",
                           resource=RESOURCE, now=0.0)
    assert header(out, "Expires") == str(granted)


@pytest.mark.parametrize("event", [None, "dialog", "Presence"])
def test_bad_event(event: str | None) -> None:
    table = make_table()
    out = table.on_publish(publish(body=DOC1, event=event), publisher="alice",
                           resource=RESOURCE, now=0.0)
    assert (out.status, out.headers) == (489, (("Allow-Events", "presence"),))


def test_initial_without_body_is_400() -> None:
    table = make_table()
    out = table.on_publish(publish(), publisher="alice", resource=RESOURCE, now=0.0)
    assert out.status == 400 and len(table) == 0


def test_unsupported_body_is_415() -> None:
    table = make_table()
    out = table.on_publish(publish(body=b"<x/>", content_type="application/xpidf+xml"),
                           publisher="alice", resource=RESOURCE, now=0.0)
    assert (out.status, out.headers) == (415, (("Accept", PIDF),))


def test_two_if_match_values_are_400() -> None:
    table = make_table()
    req = publish(etag="a")
    req.headers.add("SIP-If-Match", "b")
    assert table.on_publish(req, publisher="alice", resource=RESOURCE, now=0.0).status == 400


def test_expiry_event() -> None:
    table = make_table()
    etag = initial(table, now=0.0)
    assert table.next_deadline() == 600.0
    table.handle_timer(599.0)
    assert drain(table) == []
    table.handle_timer(600.0)
    assert drain(table) == [
        PublicationExpired(RESOURCE, "presence", "alice", etag, DOC1, PIDF)
    ]
    assert len(table) == 0 and table.next_deadline() is None


def test_refresh_moves_the_deadline() -> None:
    table = make_table()
    etag = initial(table, now=0.0)
    table.on_publish(publish(etag=etag, expires=600), publisher="alice",
                     resource=RESOURCE, now=500.0)
    assert table.next_deadline() == 1100.0
    table.handle_timer(600.0)
    assert drain(table) == []


def test_expired_but_timer_not_run_is_412() -> None:
    table = make_table()
    etag = initial(table, now=0.0)
    out = table.on_publish(publish(etag=etag), publisher="alice", resource=RESOURCE, now=600.0)
    assert out.status == 412
    assert [e.etag for e in drain(table)] == [etag]


def test_table_shape() -> None:
    # Only a published entry can be refreshed, modified, removed or expire (§6 step 3).
    for op in (PublishOperation.REFRESH, PublishOperation.MODIFY, PublishOperation.REMOVE):
        assert (PublicationState.ABSENT, op) not in PUBLICATION_TABLE


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["initial", "refresh", "modify", "remove", "tick"]),
            st.integers(0, 5),
            st.sampled_from([0, 60, 600]),
        ),
        max_size=40,
    )
)
def test_random_publications_expire_cleanly(ops: list[tuple[str, int, int]]) -> None:
    table = make_table()
    now = 0.0
    live: set[str] = set()
    for kind, pick, expires in ops:
        tags = sorted(live)
        etag = tags[pick % len(tags)] if tags else f"missing{pick}"
        if kind == "tick":
            now += expires + pick
            table.handle_timer(now)
            live -= {e.etag for e in drain(table)}
            continue
        if kind == "initial":
            req = publish(body=DOC1, expires=expires or 600)
        elif kind == "refresh":
            req = publish(etag=etag, expires=expires or 600)
        elif kind == "modify":
            req = publish(etag=etag, body=DOC2, expires=expires or 600)
        else:
            req = publish(etag=etag, expires=0)
        out = table.on_publish(req, publisher="alice", resource=RESOURCE, now=now)
        live -= {e.etag for e in drain(table)}
        assert out.status in (200, 412)
        assert (out.status == 200) == (kind == "initial" or etag in live)
        if out.change is not None:
            live.discard(out.change.old_etag or "")
            if not out.change.removed:
                assert out.change.etag is not None
                live.add(out.change.etag)
        assert {p.etag for p in table.publications_for(RESOURCE)} == live
    table.handle_timer(now + 3600)
    drain(table)
    assert len(table) == 0 and table.next_deadline() is None
