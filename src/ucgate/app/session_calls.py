"""Sessions meet calls: a chat elevated to voice rings the same agent, and a call that
belongs to a session moves its voice channel through the lifecycle.

The sessions service decides *who* (the session's agent) and asks for the call with a
``voice_elevation_requested`` event; the B2BUA places it (agent first, then the
customer, RFC 3725); call-record events come back through the call tracker and become
channel inputs (answered → active, hold, end → wrap-up, wrap-up over → ended). The chat
channel is never touched: the customer keeps chatting while they talk.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

import structlog

from ucgate.app.b2bua import SESSION_QUEUE, CallManager, OriginateFailed
from ucgate.app.call_tracking import CallSnapshot, CallTracker
from ucgate.calls.records import (
    CallAnswered,
    CallEnded,
    CallEvent,
    HoldEnded,
    HoldStarted,
    WrapUpEnded,
)
from ucgate.sessions.model import ChannelInput, Customer, Media, SessionError
from ucgate.sessions.service import (
    OFFER_MADE,
    OFFER_TIMED_OUT,
    VOICE_ELEVATION_REQUESTED,
    SessionEvent,
    SessionService,
)
from ucgate.store.location import StoreUnavailable

log = structlog.get_logger(__name__)


class SessionCallGlue:
    def __init__(self, sessions: SessionService, calls: CallManager, tracker: CallTracker) -> None:
        self.sessions = sessions
        self.calls = calls
        # call id → (session id, channel id, agent)
        self._links: dict[str, tuple[str, str, str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._consumer: asyncio.Task[None] | None = None
        tracker.listeners.append(self._on_call_event)
        calls.queue_router = self

    def start(self) -> None:
        self._consumer = asyncio.get_running_loop().create_task(self._consume())

    async def _consume(self) -> None:
        queue = self.sessions.events.subscribe()
        try:
            while (event := await queue.get()) is not None:
                if event.type == VOICE_ELEVATION_REQUESTED:
                    self._spawn(self._elevate(event))
                elif event.type in (OFFER_MADE, OFFER_TIMED_OUT):
                    self._spawn(self._offer_event(event))
        finally:
            self.sessions.events.unsubscribe(queue)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- queued inbound calls (the B2BUA's QueueRouter) --------------------------------
    async def call_queued(
        self, call_id: str, queue: str, caller: str | None, headers: dict[str, str]
    ) -> None:
        """A call reached a queue: it joins the customer's open session (sticky voice: the
        X-UCGate-Session header of a click-to-call widget, else the caller ID) or opens a
        new session; either way the routing engine offers its voice channel."""
        try:
            session = await self.sessions.find_for_call(
                session_id=headers.get("X-UCGate-Session"), caller=caller
            )
            if session is not None:
                session = await self.sessions.add_channel(
                    session.id, Media.VOICE, queue=queue or None, external_ref=call_id
                )
                log.info("session.call_joined", session=session.id, agent=session.agent)
            elif queue == SESSION_QUEUE:
                # A widget guest whose session is closed: nothing to join (RFC 3261
                # §21.4.5: 404, the "session" it names does not exist any more).
                log.info("session.guest_call_refused")
                self.calls.refuse_queued(call_id, 404)
                return
            else:
                context: dict[str, object] = {}
                if "User-to-User" in headers:  # RFC 7433: what an IVR collected
                    context["user_to_user"] = headers["User-to-User"]
                if "X-UCGate-Context" in headers:
                    context["ivr"] = headers["X-UCGate-Context"]
                session = await self.sessions.create_session(
                    Customer(id=caller or call_id, phone=caller),
                    Media.VOICE,
                    queue,
                    context,
                    external_ref=call_id,
                )
        except (SessionError, StoreUnavailable) as exc:
            log.warning("session.call_not_queued", why=str(exc))
            return
        channel = next(ch for ch in session.channels if ch.external_ref == call_id)
        self._links[call_id] = (session.id, channel.id, "")
        if channel.agent is not None and channel.state.value == "offered":
            # Routed synchronously (an agent was free): ring now.
            await self._ring(call_id, session.id, channel.id, channel.agent)

    async def session_for_pin(self, pin: str) -> str | None:
        """A caller typed ``pin`` at a "pin:" DID: the open session it names."""
        try:
            session = await self.sessions.find_for_call(pin=pin)
        except StoreUnavailable:
            return None
        return None if session is None else session.id

    async def _offer_event(self, event: SessionEvent) -> None:
        cid = event.channel_id
        if cid is None or event.agent is None:
            return
        channel = event.session.channel(cid)
        call_id = channel.external_ref
        if channel.media is not Media.VOICE or call_id is None or call_id not in self._links:
            return
        if event.type == OFFER_MADE:
            if self._links[call_id][2] != event.agent:
                await self._ring(call_id, event.session.id, cid, event.agent)
        else:
            self._links[call_id] = (event.session.id, cid, "")
            self.calls.stop_ringing(call_id)

    async def _ring(self, call_id: str, sid: str, cid: str, agent: str) -> None:
        self._links[call_id] = (sid, cid, agent)
        if not await self.calls.ring_agent(call_id, agent):
            await self.agent_declined(call_id, agent, 480)

    async def agent_declined(self, call_id: str, agent: str, status: int) -> None:
        link = self._links.get(call_id)
        if link is None:
            return
        sid, cid, _ = link
        self._links[call_id] = (sid, cid, "")
        log.info("session.agent_declined", agent=agent, status=status)
        await self._channel(sid, cid, ChannelInput.REJECT, agent)

    async def _channel(self, sid: str, cid: str, inp: ChannelInput, agent: str | None) -> None:
        try:
            await self.sessions.channel_event(sid, cid, inp, agent=agent)
        except (SessionError, StoreUnavailable) as exc:
            # A channel the API already moved on (closed session, forced end) is not an
            # error of the call: note it and carry on.
            log.info("session.channel_event_skipped", session=sid, input=inp.value, why=str(exc))

    async def _elevate(self, event: SessionEvent) -> None:
        sid, cid, agent = event.session.id, event.channel_id, event.agent
        to = str(event.data.get("to", ""))
        if cid is None or agent is None:
            return
        with structlog.contextvars.bound_contextvars(session_id=sid):
            try:
                call_id, connected = await self.calls.originate(agent=agent, to=to, session_id=sid)
            except OriginateFailed as exc:
                log.info("session.elevation_failed", status=exc.status, reason=exc.reason)
                await self._channel(sid, cid, ChannelInput.END, None)
                return
            self._links[call_id] = (sid, cid, agent)
            try:
                await connected
            except OriginateFailed as exc:
                log.info("session.elevation_failed", status=exc.status, reason=exc.reason)
                self._links.pop(call_id, None)
                await self._channel(sid, cid, ChannelInput.END, None)
                return
            log.info("session.elevated", call=call_id)
            await self._channel(sid, cid, ChannelInput.ACCEPT, agent)

    async def _on_call_event(self, snap: CallSnapshot, event: CallEvent) -> None:
        link = self._links.get(snap.call_id)
        if link is None:
            return
        sid, cid, agent = link
        if isinstance(event, CallAnswered) and agent and not event.leg_id.startswith("a"):
            # A queued call answered by the agent it rang (elevations accept on connect).
            await self._channel(sid, cid, ChannelInput.ACCEPT, agent)
        elif isinstance(event, CallEnded) and not snap.answered:
            # The caller gave up (or nobody could answer): abandoned in the queue.
            self._links.pop(snap.call_id, None)
            await self._channel(sid, cid, ChannelInput.END, None)
        elif isinstance(event, HoldStarted):
            await self._channel(sid, cid, ChannelInput.HOLD, agent)
        elif isinstance(event, HoldEnded):
            await self._channel(sid, cid, ChannelInput.RESUME, agent)
        elif isinstance(event, CallEnded) and snap.answered:
            await self._channel(sid, cid, ChannelInput.END, agent)
        elif isinstance(event, WrapUpEnded):
            self._links.pop(snap.call_id, None)
            await self._channel(sid, cid, ChannelInput.WRAP_UP_DONE, agent)

    async def close(self) -> None:
        if self._consumer is not None:
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._consumer
        for task in list(self._tasks):
            task.cancel()
