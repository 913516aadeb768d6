"""The routing engine: which agent is offered which waiting channel, and when.

Sans-IO like the SIP core: no clock, no store. Inputs are method calls carrying ``now``;
outputs are events drained with :meth:`RoutingEngine.next_event`; the one timer the adapter
keeps is :meth:`RoutingEngine.next_deadline` / :meth:`RoutingEngine.handle_timer`.

The rule set (docs/sessions.md has the long form):

* Eligible agents for a channel of media M in queue Q: routable; a registered device if M is
  voice; free capacity for M counting open offers; every skill Q requires; and the
  interrupt matrix allows M on top of each other media the agent is busy with.
* Among eligible agents: highest sum of proficiency over Q's skills, then longest idle
  (smallest ``idle_since``), then agent id (so the result never depends on dict order).
* Waiting channels are served by queue priority, then channel priority (higher first),
  then first come, first served.
* An offer unanswered after Q's ``offer_timeout`` goes to the next agent, never back to one
  who rejected it or let it time out while it stays in that queue.
* A channel still waiting ``overflow_after`` seconds after entering Q moves to Q's
  ``overflow`` queue (an open offer is let run to its end first).
* Sticky: a ``preferred_agent`` (the one already handling the session) is offered first,
  skills aside; if that agent cannot take the media now, or rejects, the queue takes over.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ucgate.sessions.model import AgentState, Media

__all__ = [
    "DEFAULT_INTERRUPT",
    "ChannelOverflowed",
    "InterruptMatrix",
    "NoAgentAvailable",
    "OfferMade",
    "OfferTimedOut",
    "PreferredAgentUnavailable",
    "QueueSpec",
    "RoutingEngine",
    "RoutingError",
    "RoutingEvent",
    "eligible",
    "skill_score",
]


class RoutingError(Exception):
    """Misuse of the engine (unknown queue, answering an offer that is not open)."""

    def __init__(self, message: str, *, field: str, status: int = 409) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


@dataclass(frozen=True, slots=True)
class InterruptMatrix:
    """Which media may be offered ON TOP of interactions in progress on other media.

    ``allowed[new]`` is the set of media an agent may be busy with and still be offered
    ``new``. Same-media work never blocks (capacity alone limits it). A media absent from
    the table may not be offered on top of anything else: exclusive is the safe default.
    """

    allowed: Mapping[Media, frozenset[Media]]

    @classmethod
    def from_config(cls, table: Mapping[str, Iterable[str]]) -> InterruptMatrix:
        return cls(
            MappingProxyType({Media(k): frozenset(Media(v) for v in vs) for k, vs in table.items()})
        )

    def allows(self, new: Media, busy_with: Iterable[Media]) -> bool:
        permitted = self.allowed.get(new, frozenset())
        return all(m is new or m in permitted for m in busy_with)


# Voice may ring an agent who is chatting or answering email (a phone call is the urgent
# medium, and chats/emails tolerate a pause); chats and emails are not offered to an agent
# who is on a call, nor to each other's agents. See docs/sessions.md.
DEFAULT_INTERRUPT = InterruptMatrix(
    MappingProxyType(
        {
            Media.VOICE: frozenset({Media.CHAT, Media.EMAIL}),
            Media.CHAT: frozenset(),
            Media.EMAIL: frozenset(),
        }
    )
)


@dataclass(frozen=True, slots=True)
class QueueSpec:
    id: str
    media: frozenset[Media]
    skills: tuple[str, ...] = ()
    # Higher first: an agent who can serve two queues takes the higher-priority one's work.
    priority: int = 0
    offer_timeout: float = 20.0
    overflow: str | None = None
    # Seconds a channel waits in this queue before it moves to ``overflow``.
    overflow_after: float = 120.0
    service_level_seconds: float = 20.0


@dataclass(frozen=True, slots=True)
class OfferMade:
    session_id: str
    channel_id: str
    queue: str
    agent: str
    media: Media
    expires_at: float
    # True when this offer went to the session's preferred (sticky) agent.
    sticky: bool = False


@dataclass(frozen=True, slots=True)
class OfferTimedOut:
    session_id: str
    channel_id: str
    queue: str
    agent: str
    at: float


@dataclass(frozen=True, slots=True)
class ChannelOverflowed:
    session_id: str
    channel_id: str
    from_queue: str
    to_queue: str
    at: float


@dataclass(frozen=True, slots=True)
class NoAgentAvailable:
    """A channel was queued and no agent can take it now; it waits."""

    session_id: str
    channel_id: str
    queue: str
    at: float


@dataclass(frozen=True, slots=True)
class PreferredAgentUnavailable:
    """The sticky agent could not take the channel; it falls back to the queue."""

    session_id: str
    channel_id: str
    agent: str
    queue: str
    at: float


RoutingEvent = (
    OfferMade | OfferTimedOut | ChannelOverflowed | NoAgentAvailable | PreferredAgentUnavailable
)


def skill_score(agent: AgentState, required: Iterable[str]) -> int | None:
    """Sum of the agent's proficiency over ``required``; None if a skill is missing."""
    total = 0
    for skill in required:
        level = agent.skills.get(skill, 0)
        if level <= 0:
            return None
        total += level
    return total


def eligible(
    agent: AgentState,
    media: Media,
    matrix: InterruptMatrix,
    *,
    pending: Mapping[Media, int] | None = None,
) -> bool:
    """Whether ``agent`` may be offered one more ``media`` channel, skills aside.

    ``pending`` are open offers the caller knows of that ``agent.load`` may not show yet;
    they replace ``agent.offered``.
    """
    if not agent.routable:
        return False
    if media is Media.VOICE and not agent.devices:
        return False
    extra = pending or {}
    load = {
        m: max(0, agent.load.get(m, 0) - agent.offered.get(m, 0)) + extra.get(m, 0)
        for m in set(agent.load) | set(extra)
    }
    if load.get(media, 0) + 1 > agent.capacity.get(media, 0):
        return False
    return matrix.allows(media, (m for m, n in load.items() if n > 0))


@dataclass(slots=True)
class _Waiting:
    session_id: str
    channel_id: str
    queue: str
    media: Media
    priority: int
    seq: int
    entered_queue_at: float
    preferred_agent: str | None
    excluded: set[str] = field(default_factory=set)
    # The open offer, if any: (agent, expires_at, sticky).
    offer: tuple[str, float, bool] | None = None
    announced_no_agent: bool = False


class RoutingEngine:
    def __init__(
        self, queues: Iterable[QueueSpec], interrupt: InterruptMatrix = DEFAULT_INTERRUPT
    ) -> None:
        self._queues: dict[str, QueueSpec] = {q.id: q for q in queues}
        for q in self._queues.values():
            if q.overflow is not None and q.overflow not in self._queues:
                raise RoutingError(f"no queue {q.overflow!r}", field=f"{q.id}.overflow")
        self._matrix = interrupt
        self._agents: dict[str, AgentState] = {}
        self._waiting: dict[tuple[str, str], _Waiting] = {}
        self._seq = itertools.count()
        self._events: deque[RoutingEvent] = deque()
        # Lazy-deletion heap of (deadline, seq, key); stale entries are skipped.
        self._timers: list[tuple[float, int, tuple[str, str]]] = []

    # --- inputs ------------------------------------------------------------------------

    def agent_changed(self, agent: AgentState, now: float) -> None:
        """The agent's capacity, load, status or devices changed; may make offers."""
        self._agents[agent.id] = agent
        self._dispatch(now)

    def agent_removed(self, agent_id: str, now: float) -> None:
        self._agents.pop(agent_id, None)
        self._dispatch(now)

    def enqueue(
        self,
        session_id: str,
        channel_id: str,
        queue: str,
        media: Media,
        now: float,
        priority: int = 0,
        preferred_agent: str | None = None,
    ) -> None:
        spec = self._queue(queue)
        if media not in spec.media:
            raise RoutingError(f"queue {queue!r} does not take {media.value}", field="media")
        key = (session_id, channel_id)
        if key in self._waiting:
            raise RoutingError(f"channel {channel_id!r} is already queued", field="channel_id")
        item = _Waiting(
            session_id,
            channel_id,
            queue,
            media,
            priority,
            next(self._seq),
            now,
            preferred_agent,
        )
        self._waiting[key] = item
        self._arm_overflow(item)
        if preferred_agent is not None:
            agent = self._agents.get(preferred_agent)
            if agent is not None and eligible(
                agent, media, self._matrix, pending=self._pending(agent.id)
            ):
                self._offer(item, agent.id, now, sticky=True)
                return
            item.excluded.add(preferred_agent)
            self._events.append(
                PreferredAgentUnavailable(session_id, channel_id, preferred_agent, queue, now)
            )
        self._dispatch(now)
        if item.offer is None and key in self._waiting:
            item.announced_no_agent = True
            self._events.append(NoAgentAvailable(session_id, channel_id, queue, now))

    def accept(self, session_id: str, channel_id: str, agent: str, now: float) -> None:
        """The agent took the offer; the channel leaves routing."""
        item = self._offered_to(session_id, channel_id, agent)
        # The caller reports the agent's new load through agent_changed.
        del self._waiting[(item.session_id, item.channel_id)]

    def reject(self, session_id: str, channel_id: str, agent: str, now: float) -> None:
        """The agent declined (or the call leg failed): offer the next agent."""
        item = self._offered_to(session_id, channel_id, agent)
        item.offer = None
        item.excluded.add(agent)
        self._after_offer_closed(item, now)

    def cancel(self, session_id: str, channel_id: str, now: float) -> None:
        """The channel ended while waiting (abandoned); any open offer is withdrawn."""
        if self._waiting.pop((session_id, channel_id), None) is not None:
            self._dispatch(now)

    def restore(
        self,
        session_id: str,
        channel_id: str,
        queue: str,
        media: Media,
        now: float,
        *,
        entered_queue_at: float,
        excluded: Iterable[str] = (),
        offer: tuple[str, float, bool] | None = None,
    ) -> None:
        """Take over a channel another engine was routing (a new leader rebuilding from
        the store): waiting in ``queue`` since ``entered_queue_at``, never to be offered to
        ``excluded`` again, and with ``offer`` = (agent, expires_at, sticky) still open if
        one was. An open offer is kept, not made again (no second offer, no event); a
        channel without one is offered by the next dispatch (:meth:`dispatch`)."""
        spec = self._queue(queue)
        if media not in spec.media:
            raise RoutingError(f"queue {queue!r} does not take {media.value}", field="media")
        key = (session_id, channel_id)
        if key in self._waiting:
            raise RoutingError(f"channel {channel_id!r} is already queued", field="channel_id")
        item = _Waiting(
            session_id, channel_id, queue, media, 0, next(self._seq), entered_queue_at, None
        )
        item.excluded.update(excluded)
        self._waiting[key] = item
        if offer is not None:
            item.offer = offer
            heapq.heappush(self._timers, (offer[1], next(self._seq), key))
        else:
            # A channel that waited long before the takeover overflows at the next timer.
            self._arm_overflow(item)

    def dispatch(self, now: float) -> None:
        """Offer what can be offered now (after :meth:`restore`, which does not)."""
        self._dispatch(now)

    def reset(self) -> None:
        """Forget every agent, channel, timer and undrained event (this node stopped
        routing: another leads, and will rebuild from the store when it is its turn)."""
        self._agents.clear()
        self._waiting.clear()
        self._timers.clear()
        self._events.clear()

    def queue_spec(self, queue: str) -> QueueSpec | None:
        return self._queues.get(queue)

    def is_waiting(self, session_id: str, channel_id: str) -> bool:
        return (session_id, channel_id) in self._waiting

    def offer_of(self, session_id: str, channel_id: str) -> str | None:
        """The agent the channel is offered to right now, if any."""
        item = self._waiting.get((session_id, channel_id))
        return None if item is None or item.offer is None else item.offer[0]

    # --- timers ------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        while self._timers:
            deadline, _, key = self._timers[0]
            if self._timer_live(deadline, key):
                return deadline
            heapq.heappop(self._timers)
        return None

    def handle_timer(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            deadline, _, key = heapq.heappop(self._timers)
            if not self._timer_live(deadline, key):
                continue
            item = self._waiting[key]
            if item.offer is not None and item.offer[1] == deadline:
                agent = item.offer[0]
                item.offer = None
                item.excluded.add(agent)
                self._events.append(
                    OfferTimedOut(item.session_id, item.channel_id, item.queue, agent, now)
                )
                self._after_offer_closed(item, now)
            elif item.offer is None:
                self._overflow(item, now)
        self._dispatch(now)

    # --- outputs -----------------------------------------------------------------------

    def next_event(self) -> RoutingEvent | None:
        return self._events.popleft() if self._events else None

    def waiting(self, queue: str | None = None) -> list[tuple[str, str]]:
        """(session_id, channel_id) of waiting channels, in service order."""
        items = sorted(self._waiting.values(), key=self._order)
        return [(i.session_id, i.channel_id) for i in items if queue in (None, i.queue)]

    def open_offers(self, agent: str) -> list[tuple[str, str]]:
        return [
            (i.session_id, i.channel_id)
            for i in self._waiting.values()
            if i.offer is not None and i.offer[0] == agent
        ]

    # --- internals ---------------------------------------------------------------------

    def _queue(self, queue: str) -> QueueSpec:
        spec = self._queues.get(queue)
        if spec is None:
            raise RoutingError(f"no queue {queue!r}", field="queue", status=404)
        return spec

    def _order(self, item: _Waiting) -> tuple[int, int, int]:
        return (-self._queues[item.queue].priority, -item.priority, item.seq)

    def _offered_to(self, session_id: str, channel_id: str, agent: str) -> _Waiting:
        item = self._waiting.get((session_id, channel_id))
        if item is None or item.offer is None or item.offer[0] != agent:
            raise RoutingError(
                f"no open offer of {channel_id!r} to {agent!r}", field="channel_id", status=409
            )
        return item

    def _pending(self, agent: str) -> dict[Media, int]:
        return self._pending_all().get(agent, {})

    def _timer_live(self, deadline: float, key: tuple[str, str]) -> bool:
        item = self._waiting.get(key)
        if item is None:
            return False
        if item.offer is not None:
            return item.offer[1] == deadline
        return self._overflow_deadline(item) == deadline

    def _overflow_deadline(self, item: _Waiting) -> float | None:
        spec = self._queues[item.queue]
        if spec.overflow is None:
            return None
        return item.entered_queue_at + spec.overflow_after

    def _arm_overflow(self, item: _Waiting) -> None:
        deadline = self._overflow_deadline(item)
        if deadline is not None:
            heapq.heappush(
                self._timers, (deadline, next(self._seq), (item.session_id, item.channel_id))
            )

    def _after_offer_closed(self, item: _Waiting, now: float) -> None:
        deadline = self._overflow_deadline(item)
        if deadline is not None and deadline <= now:
            self._overflow(item, now)
        else:
            self._arm_overflow(item)
        self._dispatch(now)

    def _overflow(self, item: _Waiting, now: float) -> None:
        spec = self._queues[item.queue]
        assert spec.overflow is not None
        target = self._queues[spec.overflow]
        old = item.queue
        item.queue = target.id
        item.entered_queue_at = now
        # A new queue is a fresh start: agents there may not have seen it yet.
        item.excluded.clear()
        item.announced_no_agent = False
        if item.media not in target.media:
            # Config validation refuses this; keep waiting here rather than lose the channel.
            item.queue = old
        else:
            self._events.append(
                ChannelOverflowed(item.session_id, item.channel_id, old, target.id, now)
            )
        self._arm_overflow(item)

    def _offer(self, item: _Waiting, agent: str, now: float, *, sticky: bool = False) -> None:
        expires = now + self._queues[item.queue].offer_timeout
        item.offer = (agent, expires, sticky)
        heapq.heappush(self._timers, (expires, next(self._seq), (item.session_id, item.channel_id)))
        self._events.append(
            OfferMade(
                item.session_id, item.channel_id, item.queue, agent, item.media, expires, sticky
            )
        )

    def _dispatch(self, now: float) -> None:
        """Offer every waiting channel that some agent can take, in service order.

        Cost is O(waiting + agents x queue/media groups) rather than O(waiting x agents):
        each group's candidates are ranked once per dispatch. That is exact, because within
        one dispatch agents' states do not change and their open offers only grow, so an
        agent that cannot take a group's channel at the start never can later in it.
        """
        pending = self._pending_all()
        ranked: dict[tuple[str, Media], list[tuple[tuple[int, float, str], str]]] = {}
        for item in sorted(self._waiting.values(), key=self._order):
            if item.offer is not None:
                continue
            group = (item.queue, item.media)
            candidates = ranked.get(group)
            if candidates is None:
                candidates = ranked[group] = self._rank(item.queue, item.media, pending)
            best = self._best_agent(item, candidates, pending)
            if best is None:
                continue
            self._offer(item, best, now)
            counts = pending.setdefault(best, {})
            counts[item.media] = counts.get(item.media, 0) + 1

    def _pending_all(self) -> dict[str, dict[Media, int]]:
        """Open offers per agent and media, in one pass over the waiting channels."""
        counts: dict[str, dict[Media, int]] = {a: {} for a in self._agents}
        for item in self._waiting.values():
            if item.offer is not None:
                per = counts.setdefault(item.offer[0], {})
                per[item.media] = per.get(item.media, 0) + 1
        return counts

    def _rank(
        self, queue: str, media: Media, pending: dict[str, dict[Media, int]]
    ) -> list[tuple[tuple[int, float, str], str]]:
        """Agents who can take ``media`` from ``queue`` now, best first: proficiency over
        the queue's skills, then longest idle (then id, for a stable order)."""
        spec = self._queues[queue]
        out: list[tuple[tuple[int, float, str], str]] = []
        for agent in self._agents.values():
            score = skill_score(agent, spec.skills)
            if score is None or not eligible(agent, media, self._matrix, pending=pending[agent.id]):
                continue
            out.append(((-score, agent.idle_since, agent.id), agent.id))
        out.sort()
        return out

    def _best_agent(
        self,
        item: _Waiting,
        candidates: list[tuple[tuple[int, float, str], str]],
        pending: dict[str, dict[Media, int]],
    ) -> str | None:
        index = 0
        while index < len(candidates):
            agent_id = candidates[index][1]
            agent = self._agents[agent_id]
            if not eligible(agent, item.media, self._matrix, pending=pending[agent_id]):
                # Full now (offers made earlier in this dispatch): full for the rest of it.
                del candidates[index]
                continue
            if agent_id not in item.excluded:
                return agent_id
            index += 1
        return None
