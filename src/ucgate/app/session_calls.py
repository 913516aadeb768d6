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

import structlog

from ucgate.app.b2bua import CallManager, OriginateFailed
from ucgate.app.call_tracking import CallSnapshot, CallTracker
from ucgate.calls.records import CallEnded, CallEvent, HoldEnded, HoldStarted, WrapUpEnded
from ucgate.sessions.model import ChannelInput, SessionError
from ucgate.sessions.service import VOICE_ELEVATION_REQUESTED, SessionEvent, SessionService
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

    def start(self) -> None:
        self._consumer = asyncio.get_running_loop().create_task(self._consume())

    async def _consume(self) -> None:
        queue = self.sessions.events.subscribe()
        try:
            while (event := await queue.get()) is not None:
                if event.type == VOICE_ELEVATION_REQUESTED:
                    task = asyncio.get_running_loop().create_task(self._elevate(event))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        finally:
            self.sessions.events.unsubscribe(queue)

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
        if isinstance(event, HoldStarted):
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
