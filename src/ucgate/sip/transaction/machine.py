"""What every RFC 3261 §17 transaction machine shares: its timers drive its own table.

Each machine keeps its running timers as deadlines (:class:`Deadlines`); a due timer is
just another input to the machine's transition table, fed until the machine reaches its
terminal state or no timer is due.
"""

from __future__ import annotations

import enum
from typing import ClassVar, Generic, TypeVar

from ucgate.sip.transaction.timers import Deadlines

S = TypeVar("S", bound=enum.Enum)
I = TypeVar("I", bound=enum.Enum)  # noqa: E741 - the input alphabet, as in the RFC's diagrams


class TimedMachine(Generic[S, I]):
    """Base of the four transactions: ``state``, ``_timers`` and ``_fire`` come from them."""

    TERMINAL: ClassVar[enum.Enum]
    state: S
    _timers: Deadlines[I]

    def _fire(self, timer: I, now: float) -> None:
        """Feed a due timer to the machine's table (each machine's own ``_input``)."""
        raise NotImplementedError

    def handle_timer(self, now: float) -> None:
        while self.state is not self.TERMINAL:
            timer = self._timers.pop_due(now)
            if timer is None:
                return
            self._fire(timer, now)

    def next_deadline(self) -> float | None:
        return self._timers.next()

    @property
    def terminated(self) -> bool:
        return self.state is self.TERMINAL
