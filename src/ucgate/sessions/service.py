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
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from ucgate.presence.model import Channel as PresenceChannel
from ucgate.presence.model import Interaction, InteractionState
from ucgate.presence.service import PresenceService
from ucgate.presence.store import PresenceChange
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
from ucgate.sessions.store import PinTaken, SessionStore, UnknownSession
from ucgate.sessions.webhooks import WebhookSender

__all__ = ["AgentProfile", "EventBus", "SessionEvent", "SessionService"]

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

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Feed every agent to the engine and requeue channels that were waiting."""
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
                    self.engine.enqueue(session.id, ch.id, queue, media, now)
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
            self.engine.enqueue(
                session.id, ch.id, target, media, now, preferred_agent=session.agent
            )
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
            with contextlib.suppress(RoutingError):
                self.engine.accept(session_id, channel_id, agent, now)
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
                self.engine.cancel(session_id, channel_id, now)
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
        if agent in self._agents:
            self.engine.agent_changed(await self._agent_state(agent), now)

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
            self.engine.agent_changed(await self._agent_state(change.agent), now)
            await self._pump(now)

    async def _pump(self, now: float) -> None:
        """Apply every routing event to the store, then re-arm the one timer."""
        while (event := self.engine.next_event()) is not None:
            try:
                await self._apply_routing_event(event, now)
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
            session = await self.store.update(
                sid,
                lambda s: s.apply(
                    cid,
                    ChannelInput.OFFER,
                    now,
                    event.agent,
                    detail="sticky" if event.sticky else "",
                ),
            )
            await self._emit(
                OFFER_MADE,
                session,
                now,
                channel_id=cid,
                agent=event.agent,
                data={"expires_at": event.expires_at, "sticky": event.sticky},
            )
            await self._presence_update(event.agent, session.channel(cid), now)
            await self._agent_touched(event.agent, now)
        elif isinstance(event, OfferTimedOut):
            session = await self.store.update(
                sid, lambda s: s.apply(cid, ChannelInput.OFFER_TIMEOUT, now, event.agent)
            )
            await self._emit(OFFER_TIMED_OUT, session, now, channel_id=cid, agent=event.agent)
            await self._presence_update(event.agent, session.channel(cid), now)
            await self._agent_touched(event.agent, now)
        elif isinstance(event, ChannelOverflowed):
            session = await self.store.update(
                sid, lambda s: s.apply(cid, ChannelInput.REQUEUE, now, queue=event.to_queue)
            )
            await self._emit(
                CHANNEL_OVERFLOWED,
                session,
                now,
                channel_id=cid,
                data={"from_queue": event.from_queue, "to_queue": event.to_queue},
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
    ) -> None:
        event = SessionEvent(
            id=uuid.uuid4().hex,
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
