"""What a call's legs mean for the rest of the product: call records and presence.

The B2BUA posts call-record events (``ucgate.calls.records``) with a snapshot of who is
on the call; one consumer task applies them in order to the record store and turns them
into presence interactions (ringing → on_call → held → wrap_up → gone), so BLF keys, the
presence API and the records all tell the same story.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from ucgate.calls.record_store import CallRecordStore
from ucgate.calls.records import (
    CallAnswered,
    CallEnded,
    CallEvent,
    CallOffered,
    HoldEnded,
    HoldStarted,
    LegAdded,
    WrapUpEnded,
)
from ucgate.presence.model import Channel, Interaction, InteractionState
from ucgate.presence.service import PresenceService
from ucgate.store.location import StoreUnavailable

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class AgentOnCall:
    """An agent's side of a call, as BLF (RFC 4235) shows it on colleagues' keys."""

    agent: str
    remote: str
    direction: str  # "inbound" (the agent is called) | "outbound"
    dialog: tuple[str, str, str] | None = None


@dataclass(frozen=True, slots=True)
class CallSnapshot:
    call_id: str
    agents: tuple[AgentOnCall, ...]
    answered: bool
    # Agents whose part of the call ends with this event (a transferor).
    left: tuple[str, ...] = ()


class CallTracker:
    def __init__(
        self,
        records: CallRecordStore,
        presence: PresenceService | None,
        *,
        wrap_up: float,
    ) -> None:
        self.records = records
        self.presence = presence
        self.wrap_up = wrap_up
        self._queue: asyncio.Queue[tuple[CallSnapshot, CallEvent]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._wrap_timers: dict[str, asyncio.TimerHandle] = {}
        # Called after each applied event, in order (e.g. the sessions glue).
        self.listeners: list[Callable[[CallSnapshot, CallEvent], Awaitable[None]]] = []

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def post(self, snapshot: CallSnapshot, event: CallEvent) -> None:
        self._queue.put_nowait((snapshot, event))

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait until every posted event is applied (shutdown, tests)."""
        await asyncio.wait_for(self._queue.join(), timeout)

    async def _run(self) -> None:
        while True:
            snapshot, event = await self._queue.get()
            try:
                await self._apply(snapshot, event)
                for listener in self.listeners:
                    await listener(snapshot, event)
                # One line per applied event: operators follow a call, tests wait on it.
                log.info("call.tracked", call=snapshot.call_id, event_type=event.TYPE)
            except StoreUnavailable:
                log.warning("call.record_store_unavailable", call=snapshot.call_id)
            except Exception:  # a bad event must not stop the tracking of every other call
                log.exception("call.tracking_failed", call=snapshot.call_id, event=event.TYPE)
            finally:
                self._queue.task_done()

    async def _apply(self, snap: CallSnapshot, event: CallEvent) -> None:
        await self.records.append(snap.call_id, event)
        if self.presence is None:
            return
        for agent in snap.left:
            # A transferor has left the call (blind transfer): its interaction ends.
            await self.presence.end_interaction(agent, snap.call_id)
        state: InteractionState | None = None
        if isinstance(event, CallOffered | LegAdded):
            state = InteractionState.RINGING
        elif isinstance(event, CallAnswered | HoldEnded):
            state = InteractionState.ACTIVE
        elif isinstance(event, HoldStarted):
            state = InteractionState.HELD
        elif isinstance(event, CallEnded):
            if snap.answered and self.wrap_up > 0:
                state = InteractionState.WRAP_UP
                self._schedule_wrap_up(snap)
            else:
                for who in snap.agents:
                    await self.presence.end_interaction(who.agent, snap.call_id)
                return
        if state is None:
            return
        for who in snap.agents:
            await self.presence.upsert_interaction(
                who.agent,
                Interaction(
                    id=snap.call_id,
                    channel=Channel.VOICE,
                    state=state,
                    since=event.at,
                    remote=who.remote,
                    direction=who.direction,
                    call_id=who.dialog[0] if who.dialog else None,
                    local_tag=who.dialog[1] if who.dialog else None,
                    remote_tag=who.dialog[2] if who.dialog else None,
                ),
            )

    def _schedule_wrap_up(self, snap: CallSnapshot) -> None:
        # After-call work: presence shows wrap_up for calls.wrap_up seconds, then the
        # interaction is gone and the record gets its wrap_up_ended (handle time = talk +
        # hold + after-call work).
        def done() -> None:
            self._wrap_timers.pop(snap.call_id, None)
            self.post(snap, WrapUpEnded(at=time.time()))
            if self.presence is not None:
                for who in snap.agents:
                    self._spawn_end(who.agent, snap.call_id)

        handle = asyncio.get_running_loop().call_later(self.wrap_up, done)
        self._wrap_timers[snap.call_id] = handle

    def _spawn_end(self, agent: str, call_id: str) -> None:
        assert self.presence is not None
        task = asyncio.get_running_loop().create_task(self.presence.end_interaction(agent, call_id))
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def close(self) -> None:
        for handle in self._wrap_timers.values():
            handle.cancel()
        self._wrap_timers.clear()
        if self._task is not None:
            try:
                await self.drain()
            except TimeoutError:
                log.warning("call.tracking_drain_timeout")
            self._task.cancel()
