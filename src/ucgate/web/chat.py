"""Chat messages of widget sessions, relayed between the customer's page and the agent's desk.

Per node and in memory: a message lives as long as ``history`` newer ones have not pushed
it out and its session is among the ``max_sessions`` most recently active. Subscribers are
bounded queues; one that falls ``max_pending`` messages behind gets ``None`` and is dropped
(it re-reads the history on reconnect), so a stuck browser never grows the node's memory.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

__all__ = ["ChatMessage", "ChatRelay"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    seq: int
    session_id: str
    # "customer" or "agent".
    sender: str
    # The agent id for agent messages; the customer's name if the widget gave one.
    name: str | None
    text: str
    at: float

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "type": "chat_message",
            "seq": self.seq,
            "session_id": self.session_id,
            "sender": self.sender,
            "name": self.name,
            "text": self.text,
            "at": self.at,
        }


_Queue = asyncio.Queue[ChatMessage | None]


class ChatRelay:
    def __init__(
        self, *, history: int = 200, max_sessions: int = 10000, max_pending: int = 256
    ) -> None:
        self._history = history
        self._max_sessions = max_sessions
        self._max_pending = max_pending
        self._logs: OrderedDict[str, deque[ChatMessage]] = OrderedDict()
        self._subscribers: dict[str, set[_Queue]] = {}
        self._seq = itertools.count(1)

    def post(
        self, session_id: str, sender: str, text: str, now: float, *, name: str | None = None
    ) -> ChatMessage:
        message = ChatMessage(next(self._seq), session_id, sender, name, text, now)
        log = self._logs.get(session_id)
        if log is None:
            log = self._logs[session_id] = deque(maxlen=self._history)
            while len(self._logs) > self._max_sessions:
                self._logs.popitem(last=False)
        self._logs.move_to_end(session_id)
        log.append(message)
        for queue in list(self._subscribers.get(session_id, ())):
            if queue.qsize() >= self._max_pending:
                self.unsubscribe(session_id, queue)
                queue.put_nowait(None)
            else:
                queue.put_nowait(message)
        return message

    def history(self, session_id: str) -> list[ChatMessage]:
        return list(self._logs.get(session_id, ()))

    def subscribe(self, session_id: str) -> _Queue:
        # One slot more than max_pending so the None that ends a lagging queue always fits.
        queue: _Queue = asyncio.Queue(maxsize=self._max_pending + 1)
        self._subscribers.setdefault(session_id, set()).add(queue)
        return queue

    def unsubscribe(self, session_id: str, queue: _Queue) -> None:
        subs = self._subscribers.get(session_id)
        if subs is not None:
            subs.discard(queue)
            if not subs:
                del self._subscribers[session_id]
