"""Metrics for a scripted day of interactions equal hand-computed values."""

from __future__ import annotations

import csv
import io

import pytest

from ucgate.sessions.metrics import MetricsRow, compute_metrics, to_csv
from ucgate.sessions.model import ChannelInput, Customer, Media, Session

In = ChannelInput
SL = {"support": 20.0, "general": 30.0}


def session(sid: str, media: Media, created: float, steps: list[tuple]) -> Session:
    s = Session(id=sid, customer=Customer(id=sid), queue="support", created_at=created)
    s = s.add_channel(media, created)
    cid = s.channels[0].id
    for step in steps:
        at, event, *rest = step
        agent = rest[0] if rest and event is not In.REQUEUE else None
        queue = rest[0] if rest and event is In.REQUEUE else None
        s = s.apply(cid, event, at, agent=agent, queue=queue)
    return s


def scripted_day() -> list[Session]:
    # Interval 0-900. A: chat; bob lets the offer time out, alice takes it after 30 s.
    a = session(
        "A",
        Media.CHAT,
        100.0,
        [
            (105.0, In.OFFER, "bob"),
            (125.0, In.OFFER_TIMEOUT),
            (126.0, In.OFFER, "alice"),
            (130.0, In.ACCEPT),
            (400.0, In.END),
            (430.0, In.WRAP_UP_DONE),
        ],
    )
    # B: voice answered in 10 s, 60 s on hold, in parallel with A on alice's desk.
    b = session(
        "B",
        Media.VOICE,
        200.0,
        [
            (202.0, In.OFFER, "alice"),
            (210.0, In.ACCEPT),
            (300.0, In.HOLD),
            (360.0, In.RESUME),
            (500.0, In.END),
            (560.0, In.WRAP_UP_DONE),
        ],
    )
    # Interval 900-1800. C: alice rejects, carol accepts after 50 s; ends in the next interval.
    c = session(
        "C",
        Media.CHAT,
        950.0,
        [
            (951.0, In.OFFER, "alice"),
            (955.0, In.REJECT),
            (956.0, In.OFFER, "carol"),
            (1000.0, In.ACCEPT),
            (1900.0, In.END),
            (1900.0, In.WRAP_UP_DONE),
        ],
    )
    # D: the caller hangs up after 30 s in the queue.
    d = session("D", Media.VOICE, 1000.0, [(1030.0, In.END)])
    # E: bob times out, the call overflows to "general" at 1320, alice answers at 1325.
    e = session(
        "E",
        Media.VOICE,
        1200.0,
        [
            (1201.0, In.OFFER, "bob"),
            (1221.0, In.OFFER_TIMEOUT),
            (1320.0, In.REQUEUE, "general"),
            (1321.0, In.OFFER, "alice"),
            (1325.0, In.ACCEPT),
            (1400.0, In.END),
            (1410.0, In.WRAP_UP_DONE),
        ],
    )
    return [a, b, c, d, e]


def by_queue() -> dict[tuple[float, str | None], MetricsRow]:
    rows = compute_metrics(scripted_day(), group_by=("queue",), service_levels=SL)
    return {(r.interval_start, r.queue): r for r in rows}


def test_per_queue_and_interval() -> None:
    rows = by_queue()
    assert sorted(rows) == [
        (0.0, "support"),
        (900.0, "general"),
        (900.0, "support"),
        (1800.0, "support"),
    ]
    r = rows[(0.0, "support")]
    assert (r.offered, r.accepted, r.rejected, r.timed_out) == (3, 2, 0, 1)
    assert (r.handled, r.talk_time, r.hold_time, r.acw_time) == (2, 500.0, 60.0, 90.0)
    assert (r.aht, r.att) == (325.0, 250.0)
    assert (r.answered, r.answered_within_sl, r.abandoned) == (2, 1, 0)
    assert r.service_level == 50.0
    r = rows[(900.0, "support")]
    assert (r.offered, r.accepted, r.rejected, r.timed_out) == (3, 1, 1, 1)
    assert (r.handled, r.aht) == (0, None)
    assert (r.answered, r.answered_within_sl, r.abandoned) == (1, 0, 1)
    assert (r.service_level, r.abandonment_rate) == (0.0, 50.0)
    r = rows[(900.0, "general")]
    # Waited 125 s counted from 1200 across the overflow: outside general's 30 s.
    assert (r.offered, r.accepted, r.answered, r.answered_within_sl) == (1, 1, 1, 0)
    assert (r.handled, r.talk_time, r.hold_time, r.acw_time, r.aht) == (1, 75.0, 0.0, 10.0, 85.0)
    r = rows[(1800.0, "support")]
    assert (r.offered, r.handled, r.talk_time, r.acw_time, r.aht, r.att) == (
        0,
        1,
        900.0,
        0.0,
        900.0,
        900.0,
    )


def test_per_agent_with_concurrency() -> None:
    rows = {
        (r.interval_start, r.agent): r
        for r in compute_metrics(scripted_day(), group_by=("agent",), service_levels=SL)
    }
    alice = rows[(0.0, "alice")]
    assert (alice.offered, alice.accepted, alice.handled) == (2, 2, 2)
    assert alice.handle_time == 650.0
    # Chat A engaged 130-400, call B 210-500: two at once; 560 s of work in 370 s busy.
    assert alice.concurrency_max == 2
    assert alice.concurrency_avg == 560.0 / 370.0
    bob = rows[(0.0, "bob")]
    assert (bob.offered, bob.timed_out, bob.handled, bob.concurrency_max) == (1, 1, 0, None)
    # carol's chat is engaged 1000-1900: clipped to 1000-1800 and 1800-1900.
    assert rows[(900.0, "carol")].concurrency_max == 1
    assert rows[(900.0, "carol")].concurrency_avg == 1.0
    assert rows[(1800.0, "carol")].talk_time == 900.0
    assert rows[(900.0, "alice")].rejected == 1
    assert rows[(900.0, None)].abandoned == 1  # D never reached an agent


def test_per_media_totals_and_one_day_interval() -> None:
    rows = {
        r.media: r
        for r in compute_metrics(
            scripted_day(), interval=86400.0, group_by=("media",), service_levels=SL
        )
    }
    voice, chat = rows[Media.VOICE], rows[Media.CHAT]
    assert (voice.handled, voice.talk_time, voice.hold_time, voice.acw_time) == (
        2,
        305.0,
        60.0,
        70.0,
    )
    assert (voice.answered, voice.answered_within_sl, voice.abandoned) == (2, 1, 1)
    assert voice.service_level == 100.0 / 3
    assert (chat.handled, chat.talk_time, chat.acw_time, chat.aht) == (2, 1170.0, 30.0, 600.0)


def test_csv_has_a_header_and_empty_cells_for_undefined_ratios() -> None:
    rows = compute_metrics(scripted_day(), group_by=("queue",), service_levels=SL)
    parsed = list(csv.DictReader(io.StringIO(to_csv(rows))))
    assert len(parsed) == 4
    assert parsed[0]["queue"] == "support" and parsed[0]["aht"] == "325.0"
    assert parsed[2]["queue"] == "support" and parsed[2]["aht"] == ""
    assert parsed[2]["media"] == ""
    assert to_csv([]).startswith("interval_start,queue,agent,media,")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        compute_metrics([], group_by=("skill",))
    with pytest.raises(ValueError):
        compute_metrics([], interval=0)
