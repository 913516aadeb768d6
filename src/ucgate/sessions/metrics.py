"""Contact-center metrics computed from channel timelines (pure; docs/sessions.md defines them).

Everything is derived from :class:`~ucgate.sessions.model.Channel` timelines, so a report
recomputed from the store always equals the live one. Durations are seconds.

Attribution (the common convention, e.g. interval reports in ACD products):

* offers, accepts, rejects and timeouts count in the interval in which they happened, for
  the agent concerned and the queue the channel was in;
* a *handling* runs from an accept to the end of its wrap-up (or to a requeue, i.e. a
  transfer back to a queue); its talk, hold and after-contact work count, whole, in the
  interval in which it completed, for the accepting agent and the queue it was accepted
  from. Handlings still in progress are not counted yet;
* an answer (accept) counts in its interval for service level; its wait is measured from
  when the customer began waiting, across overflows;
* an abandonment (the channel ended while queued or offered) counts in the interval in
  which it ended;
* concurrency is measured per agent per interval from the time channels were active or
  held, clipped to the interval.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace

from ucgate.sessions.model import Channel, ChannelInput, ChannelState, Media, Session

__all__ = ["GROUP_KEYS", "MetricsRow", "compute_metrics", "to_csv"]

GROUP_KEYS = ("queue", "agent", "media")
_DEFAULT_SERVICE_LEVEL = 20.0


@dataclass(frozen=True, slots=True)
class MetricsRow:
    # Start of the interval (Unix seconds, a multiple of the interval length).
    interval_start: float
    # Grouping keys; None when the report is not grouped by that key.
    queue: str | None = None
    agent: str | None = None
    media: Media | None = None
    offered: int = 0
    accepted: int = 0
    rejected: int = 0
    timed_out: int = 0
    # Completed handlings (accept -> end of wrap-up, or -> requeue).
    handled: int = 0
    talk_time: float = 0.0
    hold_time: float = 0.0
    acw_time: float = 0.0
    answered: int = 0
    answered_within_sl: int = 0
    abandoned: int = 0
    # Only for rows grouped by agent: most channels active/held at once, and the average
    # number while at least one was (engaged time divided by busy time).
    concurrency_max: int | None = None
    concurrency_avg: float | None = None

    @property
    def handle_time(self) -> float:
        return self.talk_time + self.hold_time + self.acw_time

    @property
    def aht(self) -> float | None:
        """Average handle time: (talk + hold + after-contact work) / handled."""
        return self.handle_time / self.handled if self.handled else None

    @property
    def att(self) -> float | None:
        """Average talk time: talk only / handled."""
        return self.talk_time / self.handled if self.handled else None

    @property
    def service_level(self) -> float | None:
        """Percent answered within the threshold, of answered plus abandoned."""
        total = self.answered + self.abandoned
        return 100.0 * self.answered_within_sl / total if total else None

    @property
    def abandonment_rate(self) -> float | None:
        total = self.answered + self.abandoned
        return 100.0 * self.abandoned / total if total else None

    def to_json_dict(self) -> dict[str, object]:
        out: dict[str, object] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["media"] = None if self.media is None else self.media.value
        out["handle_time"] = self.handle_time
        out["aht"] = self.aht
        out["att"] = self.att
        out["service_level"] = self.service_level
        out["abandonment_rate"] = self.abandonment_rate
        return out


_Key = tuple[float, str | None, str | None, Media | None]
_ZERO = MetricsRow(interval_start=0.0)


class _Acc:
    def __init__(self, interval: float, group_by: Sequence[str]) -> None:
        self.interval = interval
        self.group_by = frozenset(group_by)
        self.rows: dict[_Key, MetricsRow] = {}

    def bucket(self, at: float) -> float:
        return math.floor(at / self.interval) * self.interval

    def key(self, at: float, queue: str | None, agent: str | None, media: Media) -> _Key:
        return (
            self.bucket(at),
            queue if "queue" in self.group_by else None,
            agent if "agent" in self.group_by else None,
            media if "media" in self.group_by else None,
        )

    def add(self, key: _Key, **delta: float) -> None:
        row = self.rows.get(key)
        if row is None:
            row = replace(_ZERO, interval_start=key[0], queue=key[1], agent=key[2], media=key[3])
        updates = {name: getattr(row, name) + value for name, value in delta.items()}
        self.rows[key] = replace(row, **updates)


def compute_metrics(
    sessions: Iterable[Session],
    *,
    interval: float = 900.0,
    group_by: Sequence[str] = GROUP_KEYS,
    service_levels: Mapping[str, float] | None = None,
) -> list[MetricsRow]:
    """Rows per interval and per the ``group_by`` keys (any of queue, agent, media).

    ``service_levels`` maps a queue id to its ``service_level_seconds`` (default 20 s).
    Rows are sorted by interval, then keys.
    """
    unknown = set(group_by) - set(GROUP_KEYS)
    if unknown:
        raise ValueError(f"cannot group by {sorted(unknown)}")
    if interval <= 0:
        raise ValueError("interval must be positive")
    acc = _Acc(interval, group_by)
    thresholds = service_levels or {}
    engaged: list[tuple[str, str | None, Media, float, float]] = []
    for session in sessions:
        for channel in session.channels:
            _channel_facts(acc, channel, thresholds, engaged)
    if "agent" in acc.group_by:
        _concurrency(acc, engaged)
    return sorted(
        acc.rows.values(),
        key=lambda r: (r.interval_start, r.queue or "", r.agent or "", r.media or ""),
    )


def _channel_facts(
    acc: _Acc,
    channel: Channel,
    thresholds: Mapping[str, float],
    engaged: list[tuple[str, str | None, Media, float, float]],
) -> None:
    media = channel.media
    waiting_since: float | None = None
    handling: dict[str, float] | None = None
    handler: tuple[str | None, str | None] = (None, None)  # (agent, queue at accept)
    previous = None
    for entry in channel.timeline:
        if previous is not None and handling is not None:
            spent = entry.at - previous.at
            if previous.state is ChannelState.ACTIVE:
                handling["talk_time"] += spent
            elif previous.state is ChannelState.HELD:
                handling["hold_time"] += spent
            elif previous.state is ChannelState.WRAP_UP:
                handling["acw_time"] += spent
            if previous.state in (ChannelState.ACTIVE, ChannelState.HELD) and handler[0]:
                engaged.append((handler[0], handler[1], media, previous.at, entry.at))
        event = entry.input
        if entry.state in (ChannelState.QUEUED, ChannelState.OFFERED) and waiting_since is None:
            waiting_since = entry.at
        if event is ChannelInput.OFFER:
            acc.add(acc.key(entry.at, entry.queue, entry.agent, media), offered=1)
        elif event is ChannelInput.REJECT:
            acc.add(acc.key(entry.at, entry.queue, entry.agent, media), rejected=1)
        elif event is ChannelInput.OFFER_TIMEOUT:
            acc.add(acc.key(entry.at, entry.queue, entry.agent, media), timed_out=1)
        elif event is ChannelInput.ACCEPT:
            key = acc.key(entry.at, entry.queue, entry.agent, media)
            wait = entry.at - (waiting_since if waiting_since is not None else entry.at)
            threshold = thresholds.get(entry.queue or "", _DEFAULT_SERVICE_LEVEL)
            acc.add(key, accepted=1, answered=1, answered_within_sl=int(wait <= threshold))
            waiting_since = None
            handling = {"talk_time": 0.0, "hold_time": 0.0, "acw_time": 0.0}
            handler = (entry.agent, entry.queue)
        elif (
            event is ChannelInput.END
            and previous is not None
            and previous.state
            in (
                ChannelState.QUEUED,
                ChannelState.OFFERED,
            )
        ):
            acc.add(acc.key(entry.at, entry.queue, entry.agent, media), abandoned=1)
            waiting_since = None
        if handling is not None and event in (ChannelInput.WRAP_UP_DONE, ChannelInput.REQUEUE):
            key = acc.key(entry.at, handler[1], handler[0], media)
            acc.add(key, handled=1, **handling)
            handling = None
            if event is ChannelInput.REQUEUE:
                waiting_since = entry.at
        previous = entry


def _concurrency(acc: _Acc, engaged: list[tuple[str, str | None, Media, float, float]]) -> None:
    # Clip each engaged segment to the intervals it spans, then sweep each row's segments.
    per_row: dict[_Key, list[tuple[float, float]]] = {}
    for agent, queue, media, start, end in engaged:
        if end <= start:
            continue
        bucket = acc.bucket(start)
        while bucket < end:
            lo, hi = max(start, bucket), min(end, bucket + acc.interval)
            if hi > lo:
                per_row.setdefault(acc.key(bucket, queue, agent, media), []).append((lo, hi))
            bucket += acc.interval
    for key, segments in per_row.items():
        points = sorted([(s, 1) for s, _ in segments] + [(e, -1) for _, e in segments])
        level = peak = 0
        busy = 0.0
        last = points[0][0]
        for at, step in points:
            if level > 0:
                busy += at - last
            level += step
            peak = max(peak, level)
            last = at
        total = sum(e - s for s, e in segments)
        row = acc.rows.get(key) or replace(
            _ZERO, interval_start=key[0], queue=key[1], agent=key[2], media=key[3]
        )
        acc.rows[key] = replace(
            row, concurrency_max=peak, concurrency_avg=total / busy if busy else None
        )


def to_csv(rows: Iterable[MetricsRow]) -> str:
    """The rows as CSV with a header line; derived ratios included, empty when undefined."""
    out = io.StringIO()
    writer: csv.DictWriter[str] | None = None
    for row in rows:
        data = row.to_json_dict()
        if writer is None:
            writer = csv.DictWriter(out, fieldnames=list(data), lineterminator="\n")
            writer.writeheader()
        writer.writerow({k: "" if v is None else v for k, v in data.items()})
    if writer is None:
        names = [f.name for f in fields(MetricsRow)]
        names += ["handle_time", "aht", "att", "service_level", "abandonment_rate"]
        out.write(",".join(names) + "\n")
    return out.getvalue()
