"""The asyncio glue around :class:`~ucgate.sip.endpoint.SipEndpoint`.

Everything protocol-shaped happens in the sans-IO core; this class only moves bytes
between the transport hub and the endpoint, keeps exactly one ``loop.call_at`` armed at
the core's next deadline, and hands transaction events to the application handler.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from ucgate.sip.endpoint import SipEndpoint
from ucgate.sip.message import Request, Response
from ucgate.sip.peer import Peer
from ucgate.sip.transaction.events import TransactionEvent
from ucgate.sip.transaction.key import TxKey

log = structlog.get_logger(__name__)

EventHandler = Callable[[TransactionEvent], None]


class SipRuntime:
    def __init__(self, endpoint: SipEndpoint, send: Callable[[bytes, Peer], None]) -> None:
        self.endpoint = endpoint
        self._send = send
        self._loop = asyncio.get_running_loop()
        self._handler: EventHandler | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._pumping = False
        self.received = 0

    def set_handler(self, handler: EventHandler) -> None:
        self._handler = handler

    def now(self) -> float:
        return self._loop.time()

    # -- inputs ----------------------------------------------------------------------------
    def on_data(self, data: bytes, peer: Peer) -> None:
        self.received += 1
        self.endpoint.receive_data(data, peer, self._loop.time())
        self.pump()

    def on_send_failed(self, peer: Peer) -> None:
        self.endpoint.transport_error(peer, self._loop.time())
        self.pump()

    def send_response(self, key: TxKey, response: Response) -> None:
        self.endpoint.transactions.send_response(key, response, self._loop.time())
        self.pump()

    def send_request(self, request: Request, peer: Peer, *, flush: bool = True) -> TxKey:
        """Start a client transaction. ``flush=False`` lets a fan-out queue many requests
        and :meth:`pump` once at the end (one drain, one timer re-arm, not one per NOTIFY)."""
        key = self.endpoint.transactions.send_request(request, peer, self._loop.time())
        if flush:
            self.pump()
        return key

    # -- the pump ----------------------------------------------------------------------------
    def pump(self) -> None:
        """Drain events and output until the core is quiet, then re-arm the timer.

        Re-entrant calls (a handler answering synchronously) just return: the outer loop
        picks up whatever they produced.
        """
        if self._pumping:
            return
        self._pumping = True
        try:
            while True:
                progressed = False
                while (event := self.endpoint.next_event()) is not None:
                    progressed = True
                    if self._handler is not None:
                        self._handler(event)
                for data, peer in self.endpoint.data_to_send():
                    progressed = True
                    self._send(data, peer)
                if not progressed:
                    break
        finally:
            self._pumping = False
        self._arm()

    def _arm(self) -> None:
        deadline = self.endpoint.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.endpoint.handle_timer(self._loop.time())
        self.pump()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
