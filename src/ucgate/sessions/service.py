"""The sessions service: the asyncio glue around the sans-IO routing engine.

It owns the :class:`~ucgate.sessions.routing.RoutingEngine` (one ``loop.call_at`` timer,
re-armed after every input), writes every step to the :class:`SessionStore`, tells
presence about chat/email/... work (voice is reported by the B2BUA, which sees the legs),
and publishes :class:`SessionEvent` objects to in-process subscribers (the ``/v1/events``
WebSocket) and to webhooks.

One truth for capacity: an agent's load is counted from the open sessions' channels
(:meth:`AgentState.load_from_channels`) and, per media, never below what presence shows
as used (so a call the B2BUA reports outside any session still occupies the voice slot).
Presence also decides ``routable`` (the manual status) and ``devices``.

Every engine input and the handling of the events it produces run under one lock, so
the engine's view and the store never interleave two inputs. Offers that were open when a
node stopped are requeued when it starts again (the engine's offer timers are not
persisted; the channel is not lost).

Multi-node (a :class:`RoutingCoordinator`): every node writes the store for the requests it
serves, but only the lease holder feeds its engine. The others forward "look at session S /
agent A again" to it (:mod:`ucgate.sessions.coordination`); it reconciles its engine with
the store (:meth:`SessionService.routing_inputs`), and its routing writes are fenced by the
lease token and announced to the other nodes, which publish them on their own event bus
(:meth:`SessionService.remote_outcome`). A node that takes the lead rebuilds the engine from
the store (:meth:`SessionService.take_lead`): open offers are restored with their deadlines,
not made again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from ucgate.presence.model import Channel as PresenceChannel
from ucgate.presence.model import Interaction, InteractionState
from ucgate.presence.service import PresenceService
from ucgate.presence.store import PresenceChange
from ucgate.sessions.leader import NotLeader
from ucgate.sessions.model import (
    AgentState,
    Channel,
    ChannelInput,
    ChannelState,
    Customer,
    Media,
    Session,
    SessionError,
    generate_pin,
)
from ucgate.sessions.routing import (
    ChannelOverflowed,
    OfferMade,
    OfferTimedOut,
    RoutingEngine,
    RoutingError,
    RoutingEvent,
)
from ucgate.sessions.store import (
    PinTaken,
    SessionStore,
    UnknownSession,
    UpdateFn,
    session_from_json,
    session_to_json,
)
from ucgate.sessions.webhooks import WebhookSender
from ucgate.store.location import StoreUnavailable

__all__ = ["AgentProfile", "EventBus", "RoutingCoordinator", "SessionEvent", "SessionService"]

log = structlog.get_logger(__name__)

# Event types (the ``type`` of a SessionEvent, the webhook ``events`` filter values).
SESSION_CREATED = "session_created"
OFFER_MADE = "offer_made"
OFFER_TIMED_OUT = "offer_timed_out"
OFFER_REJECTED = "offer_rejected"
AGENT_ASSIGNED = "agent_assigned"
CHANNEL_ADDED = "channel_added"
CHANNEL_CHANGED = "channel_changed"
CHANNEL_WAITING = "channel_waiting"
CHANNEL_OVERFLOWED = "channel_overflowed"
VOICE_ELEVATION_REQUESTED = "voice_elevation_requested"
SESSION_CLOSED = "session_closed"

_MEDIA = frozenset(m.value for m in Media)

_PRESENCE_STATE = {
    ChannelState.OFFERED: InteractionState.RINGING,
    ChannelState.ACTIVE: InteractionState.ACTIVE,
    ChannelState.HELD: InteractionState.HELD,
    ChannelState.WRAP_UP: InteractionState.WRAP_UP,
}


class RoutingCoordinator(Protocol):
    """Multi-node routing (:class:`ucgate.sessions.coordination.RedisRoutingCoordinator`)."""

    node_id: str

    def leading(self) -> bool: ...

    async def forward(self, *, session_id: str | None = None, agent: str | None = None) -> None: ...

    async def routing_update(
        self, session_id: str, fn: UpdateFn, entry: Callable[[Session], Mapping[str, str]]
    ) -> Session: ...

    async def start(self, host: Any) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class AgentProfile:
    """What config says about an agent (``agents[].capacity`` / ``skills``)."""

    capacity: Mapping[str, int]
    skills: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """One thing that happened to a session; ``id`` is the webhook idempotency key."""

    id: str
    seq: int
    type: str
    at: float
    session: Session
    agent: str | None = None
    channel_id: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "seq": self.seq,
            "type": self.type,
            "at": self.at,
            "session_id": self.session.id,
            "agent": self.agent,
            "channel_id": self.channel_id,
            **dict(self.data),
            # The whole session, context included: the agent sees what self-service
            # collected and the customer never repeats themselves.
            "session": self.session.to_json_dict(),
        }


class EventBus:
    """Fan-out to in-process subscribers, each a bounded queue.

    A subscriber whose queue is full is dropped (its queue gets ``None``) rather than
    slowing routing down; the WebSocket then closes and the client re-reads the sessions.
    """

    def __init__(self, max_pending: int = 1000) -> None:
        self._subscribers: set[asyncio.Queue[SessionEvent | None]] = set()
        self._max = max_pending

    def subscribe(self) -> asyncio.Queue[SessionEvent | None]:
        queue: asyncio.Queue[SessionEvent | None] = asyncio.Queue(self._max + 1)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[SessionEvent | None]) -> None:
        self._subscribers.discard(queue)

    def publish(self, event: SessionEvent) -> None:
        for queue in list(self._subscribers):
            if queue.qsize() >= self._max:
                self._subscribers.discard(queue)
                queue.put_nowait(None)
            else:
                queue.put_nowait(event)

    def close(self) -> None:
        for queue in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
        self._subscribers.clear()


class SessionService:
    def __init__(
        self,
        store: SessionStore,
        engine: RoutingEngine,
        *,
        agents: Mapping[str, AgentProfile],
        presence: PresenceService | None = None,
        webhooks: WebhookSender | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        pin_digits: int = 6,
        coordinator: RoutingCoordinator | None = None,
    ) -> None:
        self.store = store
        self.engine = engine
        self.events = EventBus()
        self._agents = dict(agents)
        self._presence = presence
        self._webhooks = webhooks
        self._clock = clock
        # A PIN lets a caller join a session: unpredictable unless a test seeds it.
        self._rng = rng or random.SystemRandom()
        self._pin_digits = pin_digits
        self._lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_task: asyncio.Task[None] | None = None
        self._seq = itertools.count(1)
        self._idle_since: dict[str, float] = {}
        self._closed = False
        self._coordinator = coordinator
        # Multi-node: whether this node's engine is the site's (set under the lock by
        # take_lead, cleared by give_up_lead or a fenced-off write).
        self._routing = coordinator is None

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Feed every agent to the engine and requeue channels that were waiting.

        Multi-node: nothing is fed here; the coordinator calls :meth:`take_lead` when (if)
        this node gets the lease."""
        if self._coordinator is not None:
            if self._presence is not None:
                self._presence.add_listener(self._on_presence)
            await self._coordinator.start(self)
            return
        now = self._clock()
        async with self._lock:
            for agent in self._agents:
                self._idle_since.setdefault(agent, now)
                self.engine.agent_changed(await self._agent_state(agent), now)
            cursor: str | None = None
            while True:
                page = await self.store.list(open_only=True, limit=1000, cursor=cursor)
                for session in reversed(page.sessions):
                    for ch in session.channels:
                        await self._requeue_after_restart(session, ch, now)
                cursor = page.next_cursor
                if cursor is None:
                    break
            await self._pump(now)
        if self._presence is not None:
            self._presence.add_listener(self._on_presence)

    async def _requeue_after_restart(self, session: Session, ch: Channel, now: float) -> None:
        if ch.state is ChannelState.OFFERED:
            session = await self.store.update(
                session.id,
                lambda s: s.apply(ch.id, ChannelInput.REQUEUE, now, detail="node restarted"),
            )
            ch = session.channel(ch.id)
        if ch.state is ChannelState.QUEUED and ch.queue is not None:
            with contextlib.suppress(RoutingError):
                self.engine.enqueue(session.id, ch.id, ch.queue, ch.media, now)

    async def stop(self) -> None:
        """Stop the timer and end the event streams (the store is the caller's)."""
        if self._coordinator is not None:
            await self._coordinator.close()
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._timer_task is not None:
            self._timer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer_task
        self.events.close()

    # --- queries -----------------------------------------------------------------------

    async def get(self, session_id: str) -> Session:
        session = await self.store.get(session_id)
        if session is None:
            raise UnknownSession(session_id)
        return session

    async def find_for_call(
        self,
        *,
        session_id: str | None = None,
        pin: str | None = None,
        caller: str | None = None,
    ) -> Session | None:
        """Sticky voice: the open session a call belongs to, by X-UCGate-Session header,
        DTMF PIN or caller ID, in that order of trust."""
        if session_id:
            session = await self.store.get(session_id)
            if session is not None and not session.closed:
                return session
        if pin:
            session = await self.store.find_open_by_pin(pin)
            if session is not None:
                return session
        if caller:
            return await self.store.find_open_by_phone(caller)
        return None

    async def self_service_report(
        self, *, since: float | None = None, until: float | None = None
    ) -> dict[str, int]:
        """Where customers give up: the last self-service step of closed sessions that
        never reached an agent, with counts."""
        counts: Counter[str] = Counter()
        cursor: str | None = None
        while True:
            page = await self.store.list(
                open_only=False, since=since, until=until, limit=1000, cursor=cursor
            )
            for s in page.sessions:
                if s.closed and s.agent is None and s.last_self_service_step:
                    counts[s.last_self_service_step] += 1
            cursor = page.next_cursor
            if cursor is None:
                break
        return dict(counts.most_common())

    # --- commands ----------------------------------------------------------------------

    async def create_session(
        self,
        customer: Customer,
        media: Media,
        queue: str,
        context: Mapping[str, Any] | None = None,
        *,
        external_ref: str | None = None,
        self_service_step: str | None = None,
    ) -> Session:
        """A new session with one channel queued in ``queue``; routed at once if an agent
        is free (the returned session then shows the offer)."""
        now = self._clock()
        for _ in range(10):
            session = Session(
                id=uuid.uuid4().hex,
                customer=customer,
                queue=queue,
                created_at=now,
                context=dict(context or {}),
                pin=generate_pin(self._rng, (), self._pin_digits),
                last_self_service_step=self_service_step,
            ).add_channel(media, now, external_ref)
            try:
                async with self._lock:
                    self._check_queue(queue, media)
                    await self.store.create(session)
                    await self._emit(SESSION_CREATED, session, now)
                    ch = session.channels[0]
                    if self._routes_here():
                        self.engine.enqueue(session.id, ch.id, queue, media, now)
                    else:
                        await self._forward(session_id=session.id)
                    await self._pump(now)
                return await self.get(session.id)
            except PinTaken:
                continue
        raise SessionError("no free PIN", field="pin", status=503)

    async def add_channel(
        self,
        session_id: str,
        media: Media,
        *,
        to: str | None = None,
        queue: str | None = None,
        external_ref: str | None = None,
    ) -> Session:
        """Add a channel to an open session.

        Voice with ``to`` is an elevation: the session's agent is offered the voice
        channel at once (their phone will ring) and ``voice_elevation_requested`` asks the
        call glue to call the agent, then ``to``, and bridge them; it reports the legs
        through :meth:`channel_event`. Any other channel is routed, the session's agent
        first (sticky), then ``queue`` (default: the session's queue).
        """
        now = self._clock()
        async with self._lock:
            current = await self.get(session_id)
            if media is Media.VOICE and to is not None:
                agent = current.agent
                if agent is None:
                    raise SessionError(
                        "the session has no agent to elevate to voice", field="agent"
                    )
                session = await self.store.update(
                    session_id, lambda s: s.add_channel(media, now, external_ref)
                )
                ch = session.channels[-1]
                session = await self.store.update(
                    session_id,
                    lambda s: s.apply(ch.id, ChannelInput.OFFER, now, agent, detail="elevation"),
                )
                await self._emit(CHANNEL_ADDED, session, now, channel_id=ch.id, agent=agent)
                await self._emit(
                    VOICE_ELEVATION_REQUESTED,
                    session,
                    now,
                    channel_id=ch.id,
                    agent=agent,
                    data={"to": to},
                )
                await self._agent_touched(agent, now)
                await self._pump(now)
                return session
            target = queue if queue is not None else current.queue
            if target is None:
                raise SessionError("no queue for the channel", field="queue", status=422)
            self._check_queue(target, media)
            session = await self.store.update(
                session_id, lambda s: s.add_channel(media, now, external_ref, queue=target)
            )
            ch = session.channels[-1]
            await self._emit(CHANNEL_ADDED, session, now, channel_id=ch.id)
            if self._routes_here():
                self.engine.enqueue(
                    session.id, ch.id, target, media, now, preferred_agent=session.agent
                )
            else:
                await self._forward(session_id=session.id)
            await self._pump(now)
        return await self.get(session_id)

    async def accept(self, session_id: str, channel_id: str, agent: str) -> Session:
        now = self._clock()
        async with self._lock:
            before = await self.get(session_id)
            ch = before.channel(channel_id)
            if ch.state is not ChannelState.OFFERED or ch.agent != agent:
                raise SessionError(f"channel {channel_id} is not offered to {agent}", field="agent")
            session = await self.store.update(
                session_id, lambda s: s.apply(channel_id, ChannelInput.ACCEPT, now, agent)
            )
            if self._routes_here():
                with contextlib.suppress(RoutingError):
                    self.engine.accept(session_id, channel_id, agent, now)
            else:
                await self._forward(session_id=session_id)
            await self._after_change(before, session, channel_id, now)
            await self._pump(now)
            return session

    async def reject(self, session_id: str, channel_id: str, agent: str) -> Session:
        now = self._clock()
        async with self._lock:
            before = await self.get(session_id)
            ch = before.channel(channel_id)
            if ch.state is not ChannelState.OFFERED or ch.agent != agent:
                raise SessionError(f"channel {channel_id} is not offered to {agent}", field="agent")
            session = await self.store.update(
                session_id, lambda s: s.apply(channel_id, ChannelInput.REJECT, now, agent)
            )
            await self._emit(OFFER_REJECTED, session, now, channel_id=channel_id, agent=agent)
            await self._after_change(before, session, channel_id, now, emit=False)
            if not self._routes_here():
                await self._forward(session_id=session_id)
                return await self.get(session_id)
            try:
                self.engine.reject(session_id, channel_id, agent, now)
            except RoutingError:
                # An offer the engine does not hold (elevation, or made before a
                # restart): route it now, never to the agent who said no.
                if ch.queue is not None:
                    self.engine.enqueue(session_id, channel_id, ch.queue, ch.media, now)
            await self._pump(now)
            return await self.get(session_id)

    async def channel_event(
        self,
        session_id: str,
        channel_id: str,
        event: ChannelInput,
        *,
        agent: str | None = None,
        detail: str = "",
    ) -> Session:
        """A lifecycle step reported from outside (hold, resume, end, wrap-up done; the
        B2BUA's offer/accept for voice legs)."""
        if event is ChannelInput.ACCEPT and agent is not None:
            return await self.accept(session_id, channel_id, agent)
        if event is ChannelInput.REJECT and agent is not None:
            return await self.reject(session_id, channel_id, agent)
        now = self._clock()
        async with self._lock:
            before = await self.get(session_id)
            was = before.channel(channel_id).state
            session = await self.store.update(
                session_id,
                lambda s: s.apply(channel_id, event, now, agent, detail=detail),
            )
            if was in (ChannelState.QUEUED, ChannelState.OFFERED) and event in (
                ChannelInput.END,
                ChannelInput.ACCEPT,
            ):
                if self._routes_here():
                    self.engine.cancel(session_id, channel_id, now)
                else:
                    await self._forward(session_id=session_id)
            await self._after_change(before, session, channel_id, now)
            await self._pump(now)
            return session

    async def close(
        self, session_id: str, *, force: bool = False, self_service_step: str | None = None
    ) -> Session:
        now = self._clock()
        async with self._lock:
            before = await self.get(session_id)

            def fn(s: Session) -> Session:
                if self_service_step is not None:
                    s = s.with_self_service_step(self_service_step)
                return s.close(now, force=force)

            session = await self.store.update(session_id, fn)
            if not self._routes_here():
                await self._forward(session_id=session_id)
            for ch in before.channels:
                if ch.state in (ChannelState.QUEUED, ChannelState.OFFERED):
                    self.engine.cancel(session_id, ch.id, now)
            for ch in before.channels:
                await self._after_change(before, session, ch.id, now, emit=False)
            await self._emit(SESSION_CLOSED, session, now, agent=session.agent)
            await self._pump(now)
            return session

    # --- internals ---------------------------------------------------------------------

    def _check_queue(self, queue: str, media: Media) -> None:
        # RoutingEngine.enqueue raises the same errors, but only after the store write;
        # checking first keeps a refused request from leaving a session behind.
        spec = self.engine._queues.get(queue)
        if spec is None:
            raise SessionError(f"no queue {queue!r}", field="queue", status=422)
        if media not in spec.media:
            raise SessionError(
                f"queue {queue!r} does not take {media.value}", field="media", status=422
            )

    async def _after_change(
        self, before: Session, after: Session, channel_id: str, now: float, *, emit: bool = True
    ) -> None:
        old = before.channel(channel_id)
        new = after.channel(channel_id)
        if emit and old.state is not new.state:
            await self._emit(CHANNEL_CHANGED, after, now, channel_id=channel_id, agent=new.agent)
        if after.agent is not None and after.agent != before.agent:
            await self._emit(AGENT_ASSIGNED, after, now, agent=after.agent)
        if after.closed and not before.closed:
            await self._emit(SESSION_CLOSED, after, now, agent=after.agent)
        for agent in {old.agent, new.agent} - {None}:
            assert agent is not None
            if new.state is ChannelState.ENDED:
                self._idle_since[agent] = now
            await self._presence_update(agent, new, now)
            await self._agent_touched(agent, now)

    async def _presence_update(self, agent: str, ch: Channel, now: float) -> None:
        # Voice legs are reported to presence by the B2BUA, which knows the dialog ids.
        if self._presence is None or ch.media is Media.VOICE:
            return
        if not self._presence.is_agent(agent):
            return
        state = _PRESENCE_STATE.get(ch.state)
        if state is None or ch.agent != agent:
            await self._presence.end_interaction(agent, ch.id)
        else:
            await self._presence.upsert_interaction(
                agent,
                Interaction(
                    id=ch.id, channel=PresenceChannel(ch.media.value), state=state, since=now
                ),
            )

    async def _agent_touched(self, agent: str, now: float) -> None:
        if agent not in self._agents:
            return
        if self._routes_here():
            self.engine.agent_changed(await self._agent_state(agent), now)
        else:
            await self._forward(agent=agent)

    async def _agent_state(self, agent: str) -> AgentState:
        profile = self._agents[agent]
        channels: list[Channel] = []
        cursor: str | None = None
        while True:
            page = await self.store.list(open_only=True, agent=agent, limit=1000, cursor=cursor)
            for s in page.sessions:
                channels.extend(s.channels)
            cursor = page.next_cursor
            if cursor is None:
                break
        load = AgentState.load_from_channels(channels, agent)
        offered = AgentState.offered_from_channels(channels, agent)
        routable, devices = True, True
        if self._presence is not None and self._presence.is_agent(agent):
            doc = await self._presence.get(agent)
            if doc is not None:
                routable = doc.routable
                devices = bool(doc.devices)
                for cl in doc.channels:
                    media = Media(cl.channel.value)
                    load[media] = max(load.get(media, 0), cl.used)
        return AgentState(
            id=agent,
            capacity={Media(k): v for k, v in profile.capacity.items() if k in _MEDIA},
            skills=dict(profile.skills),
            load=load,
            idle_since=self._idle_since.get(agent, 0.0),
            routable=routable,
            devices=devices,
            offered=offered,
        )

    async def _on_presence(self, change: PresenceChange) -> None:
        if change.agent not in self._agents or self._closed:
            return
        now = self._clock()
        async with self._lock:
            # Multi-node: every node hears every presence change (the presence store
            # fans them out); only the router acts on them, nobody forwards them.
            if not self._routes_here():
                return
            self.engine.agent_changed(await self._agent_state(change.agent), now)
            await self._pump(now)

    async def _pump(self, now: float) -> None:
        """Apply every routing event to the store, then re-arm the one timer."""
        while (event := self.engine.next_event()) is not None:
            try:
                await self._apply_routing_event(event, now)
            except NotLeader as exc:
                # A stale router (paused past its lease): nothing was written.
                log.warning("sessions.routing_fenced_off", error=str(exc))
                await self._stop_routing("fenced off", extra=(event.session_id,))
                return
            except SessionError as exc:
                # The channel changed under the engine (ended meanwhile): drop its item.
                log.warning("sessions.routing_event_refused", event=repr(event), error=str(exc))
                self.engine.cancel(event.session_id, event.channel_id, now)
        self._arm_timer()

    async def _apply_routing_event(
        self,
        event: RoutingEvent,
        now: float,
    ) -> None:
        sid, cid = event.session_id, event.channel_id
        if isinstance(event, OfferMade):
            data: dict[str, Any] = {"expires_at": event.expires_at, "sticky": event.sticky}
            session, event_id = await self._routing_write(
                sid,
                lambda s: s.apply(
                    cid,
                    ChannelInput.OFFER,
                    now,
                    event.agent,
                    detail="sticky" if event.sticky else "",
                ),
                OFFER_MADE,
                now,
                cid,
                event.agent,
                data,
            )
            await self._emit(
                OFFER_MADE,
                session,
                now,
                channel_id=cid,
                agent=event.agent,
                data=data,
                event_id=event_id,
            )
            await self._presence_update(event.agent, session.channel(cid), now)
            await self._agent_touched(event.agent, now)
        elif isinstance(event, OfferTimedOut):
            session, event_id = await self._routing_write(
                sid,
                lambda s: s.apply(cid, ChannelInput.OFFER_TIMEOUT, now, event.agent),
                OFFER_TIMED_OUT,
                now,
                cid,
                event.agent,
                {},
            )
            await self._emit(
                OFFER_TIMED_OUT,
                session,
                now,
                channel_id=cid,
                agent=event.agent,
                event_id=event_id,
            )
            await self._presence_update(event.agent, session.channel(cid), now)
            await self._agent_touched(event.agent, now)
        elif isinstance(event, ChannelOverflowed):
            moved = {"from_queue": event.from_queue, "to_queue": event.to_queue}
            session, event_id = await self._routing_write(
                sid,
                lambda s: s.apply(cid, ChannelInput.REQUEUE, now, queue=event.to_queue),
                CHANNEL_OVERFLOWED,
                now,
                cid,
                None,
                moved,
            )
            await self._emit(
                CHANNEL_OVERFLOWED,
                session,
                now,
                channel_id=cid,
                data=moved,
                event_id=event_id,
            )
        else:
            session = await self.get(sid)
            await self._emit(
                CHANNEL_WAITING, session, now, channel_id=cid, data={"queue": event.queue}
            )

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.engine.next_deadline()
        if deadline is None or self._closed:
            return
        loop = asyncio.get_running_loop()
        # Deadlines are wall-clock (the clock the engine was fed); call_at wants the
        # loop's monotonic time.
        delay = max(0.0, deadline - self._clock())
        self._timer = loop.call_at(loop.time() + delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_task = asyncio.get_running_loop().create_task(self.handle_timer())

    async def handle_timer(self) -> None:
        """Fire due engine deadlines (also callable by tests with a stepped clock)."""
        now = self._clock()
        async with self._lock:
            if not self._routing:
                return
            self.engine.handle_timer(now)
            await self._pump(now)

    async def _emit(
        self,
        type_: str,
        session: Session,
        now: float,
        *,
        channel_id: str | None = None,
        agent: str | None = None,
        data: Mapping[str, Any] | None = None,
        event_id: str | None = None,
    ) -> None:
        event = SessionEvent(
            id=event_id or uuid.uuid4().hex,
            seq=next(self._seq),
            type=type_,
            at=now,
            session=session,
            agent=agent,
            channel_id=channel_id,
            data=dict(data or {}),
        )
        self.events.publish(event)
        if self._webhooks is not None:
            await self._webhooks.publish(type_, event.id, event.to_json_dict())

    # --- multi-node routing (driven by the coordinator) --------------------------------

    def _routes_here(self) -> bool:
        """Whether this node feeds its own engine (single node, or the lease holder)."""
        if self._coordinator is None:
            return True
        return self._routing and self._coordinator.leading()

    async def _forward(self, *, session_id: str | None = None, agent: str | None = None) -> None:
        assert self._coordinator is not None
        try:
            await self._coordinator.forward(session_id=session_id, agent=agent)
        except StoreUnavailable as exc:
            # The store write stands; the next router's rebuild (or a later input about
            # the same session) routes it.
            log.warning("sessions.forward_failed", session=session_id, agent=agent, error=str(exc))

    async def _routing_write(
        self,
        session_id: str,
        fn: UpdateFn,
        type_: str,
        now: float,
        channel_id: str,
        agent: str | None,
        data: Mapping[str, Any],
    ) -> tuple[Session, str]:
        """A write the engine decided: fenced and announced to the other nodes when
        routing is coordinated. The event id is shared, so every node's copy of the event
        (and the webhook) carries the same idempotency key."""
        event_id = uuid.uuid4().hex
        if self._coordinator is None:
            return await self.store.update(session_id, fn), event_id

        def entry(session: Session) -> dict[str, str]:
            return {
                "id": event_id,
                "type": type_,
                "at": repr(now),
                "channel": channel_id,
                "agent": agent or "",
                "data": json.dumps(dict(data), separators=(",", ":")),
                "session": session_to_json(session),
            }

        return await self._coordinator.routing_update(session_id, fn, entry), event_id

    async def take_lead(self, token: str) -> None:
        """This node got the lease: rebuild the engine from the store and route.

        Every agent is fed with its load counted from the store; every queued or offered
        channel is put back as it stands: an open offer keeps its agent and deadline (so
        nothing is offered twice), agents who rejected or let an offer lapse in the current
        queue stay excluded, a channel never offered is routed as when it arrived (its
        session's agent first)."""
        now = self._clock()
        async with self._lock:
            self.engine.reset()
            for agent in self._agents:
                self._idle_since.setdefault(agent, now)
                self.engine.agent_changed(await self._agent_state(agent), now)
            pending: list[tuple[float, Session, Channel]] = []
            cursor: str | None = None
            while True:
                page = await self.store.list(open_only=True, limit=1000, cursor=cursor)
                for session in page.sessions:
                    for ch in session.channels:
                        if ch.state in (ChannelState.QUEUED, ChannelState.OFFERED):
                            pending.append((ch.created_at, session, ch))
                cursor = page.next_cursor
                if cursor is None:
                    break
            # Open offers first: they hold capacity, and enqueue() dispatches at once, so a
            # queued channel put back before them could be offered to an agent they fill.
            # Then first come, first served survives the takeover: oldest channels first.
            pending.sort(
                key=lambda p: (p[2].state is not ChannelState.OFFERED, p[0], p[1].id, p[2].id)
            )
            for _, session, ch in pending:
                self._take_over(session, ch, now)
            self._routing = True
            self.engine.dispatch(now)
            await self._pump(now)
            log.info(
                "sessions.routing_taken_over",
                lease=token,
                channels=len(pending),
                waiting=len(self.engine.waiting()),
            )

    async def give_up_lead(self, reason: str) -> None:
        async with self._lock:
            await self._stop_routing(reason)

    async def _stop_routing(self, reason: str, extra: Sequence[str] = ()) -> None:
        """Stop routing (under the lock): the engine's state is forgotten, and every
        session it held is handed to the next router, which may have rebuilt before one of
        them reached the store."""
        if not self._routing:
            return
        self._routing = False
        held = list(dict.fromkeys([*extra, *(sid for sid, _ in self.engine.waiting())]))
        self.engine.reset()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        log.warning("sessions.routing_stopped", reason=reason, handed_over=len(held))
        for sid in held:
            await self._forward(session_id=sid)

    async def routing_inputs(self, sessions: Sequence[str], agents: Sequence[str]) -> None:
        """Inputs other nodes forwarded: make the engine agree with the store about these
        sessions and agents, then route. Idempotent: an input read twice finds the engine
        already agreeing and changes nothing."""
        now = self._clock()
        async with self._lock:
            if not self._routing:
                return
            found: list[Session] = []
            touched = set(agents)
            for sid in sessions:
                session = await self.store.get(sid)
                if session is None:
                    continue
                found.append(session)
                for ch in session.channels:
                    touched.update(e.agent for e in ch.timeline[-2:] if e.agent)
                    if ch.state is ChannelState.ENDED and ch.agent is not None:
                        at = ch.timeline[-1].at
                        self._idle_since[ch.agent] = max(self._idle_since.get(ch.agent, 0), at)
            # Agents first: their load as the store has it now, before any offer is
            # closed or dispatched against a stale view.
            for agent in sorted(touched):
                if agent in self._agents:
                    self.engine.agent_changed(await self._agent_state(agent), now)
            for session in found:
                self._reconcile(session, now)
            self.engine.dispatch(now)
            await self._pump(now)

    def _reconcile(self, session: Session, now: float) -> None:
        for ch in session.channels:
            sid, cid = session.id, ch.id
            offered_to = self.engine.offer_of(sid, cid)
            waiting = self.engine.is_waiting(sid, cid)
            if ch.state is ChannelState.QUEUED:
                if offered_to is not None:
                    last = ch.timeline[-1]
                    if last.input is ChannelInput.REJECT and last.agent == offered_to:
                        self.engine.reject(sid, cid, offered_to, now)
                        continue
                    self.engine.cancel(sid, cid, now)
                    waiting = False
                if not waiting:
                    self._take_over(session, ch, now)
            elif ch.state is ChannelState.OFFERED:
                if waiting and offered_to != ch.agent:
                    self.engine.cancel(sid, cid, now)
                    waiting = False
                if not waiting:
                    self._take_over(session, ch, now)
            elif waiting:
                if ch.state is ChannelState.ACTIVE and offered_to == ch.agent:
                    assert offered_to is not None
                    self.engine.accept(sid, cid, offered_to, now)
                else:
                    self.engine.cancel(sid, cid, now)

    def _take_over(self, session: Session, ch: Channel, now: float) -> None:
        """Put a queued or offered channel into the engine as the store shows it."""
        spec = None if ch.queue is None else self.engine.queue_spec(ch.queue)
        if spec is None or ch.media not in spec.media:
            log.warning("sessions.channel_not_routable", session=session.id, channel=ch.id)
            return
        entries = ch.timeline
        if (
            ch.state is ChannelState.QUEUED
            and session.agent is not None
            and not any(e.input is ChannelInput.OFFER for e in entries)
        ):
            # Never offered, and the session has an agent: sticky, as on arrival. (Others
            # are restored without a dispatch each; the caller dispatches once.)
            with contextlib.suppress(RoutingError):
                self.engine.enqueue(
                    session.id, ch.id, spec.id, ch.media, now, preferred_agent=session.agent
                )
            return
        # The current stint in this queue: since the channel entered it.
        entered, queue, excluded = entries[0].at, entries[0].queue, set[str]()
        for e in entries:
            if e.queue != queue:
                entered, queue = e.at, e.queue
                excluded.clear()
            if e.input in (ChannelInput.REJECT, ChannelInput.OFFER_TIMEOUT) and e.agent:
                excluded.add(e.agent)
        offer: tuple[str, float, bool] | None = None
        if ch.state is ChannelState.OFFERED:
            last = entries[-1]
            if last.input is not ChannelInput.OFFER or ch.agent is None:
                return
            if last.detail == "elevation":
                return  # placed by the session's agent, not by routing
            offer = (ch.agent, last.at + spec.offer_timeout, last.detail == "sticky")
        with contextlib.suppress(RoutingError):
            self.engine.restore(
                session.id,
                ch.id,
                spec.id,
                ch.media,
                now,
                entered_queue_at=entered,
                excluded=excluded,
                offer=offer,
            )

    def remote_outcome(self, fields: Mapping[str, str]) -> None:
        """What another node's router wrote (an offer, a timeout, an overflow), published
        on this node's bus: its /v1/events clients and its call glue (which rings the agent
        for a call held here) hear of it. Webhooks were sent by the router."""
        try:
            session = session_from_json(fields["session"])
            data = json.loads(fields.get("data") or "{}")
            event = SessionEvent(
                id=fields.get("id") or uuid.uuid4().hex,
                seq=next(self._seq),
                type=fields["type"],
                at=float(fields.get("at", "0")),
                session=session,
                agent=fields.get("agent") or None,
                channel_id=fields.get("channel") or None,
                data=data if isinstance(data, dict) else {},
            )
        except (KeyError, ValueError) as exc:
            log.warning("sessions.remote_outcome_skipped", error=str(exc))
            return
        self.events.publish(event)
