"""SIP transaction timer values (RFC 3261 §17, Table 4; RFC 6026 §8.4/§8.7) and deadlines.

Timers are never sleeps: a transaction records the absolute time each running timer
expires (``Deadlines``) and the layer asks for the earliest one. Every duration is derived
from the three base values T1, T2 and T4 unless a deployment overrides it, which is why the
derived timers default to ``None`` and are read through properties.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Generic, TypeVar


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """Base and derived SIP timer durations, in seconds."""

    # RFC 3261 §17.1.1.1: RTT estimate; the initial retransmit interval of Timers A, E, G.
    t1: float = 0.5
    # RFC 3261 §17.1.2.2: cap of the non-INVITE (E) and INVITE-response (G) back-off.
    t2: float = 4.0
    # RFC 3261 §17.1.2.2: longest time a message stays in the network (Timers I and K).
    t4: float = 5.0
    # RFC 3261 §17.1.1.2: INVITE client transaction timeout; None means 64*T1.
    timer_b: float | None = None
    # RFC 3261 §17.1.2.2: non-INVITE client transaction timeout; None means 64*T1.
    timer_f: float | None = None
    # RFC 3261 §17.1.1.2: wait for response retransmissions, "at least 32 seconds" on UDP.
    timer_d_udp: float = 32.0
    # RFC 3261 §16.6 item 11 is a proxy timer; the INVITE client transaction borrows it as
    # a guard so a far end that rings forever does not pin a transaction: when it fires in
    # Proceeding the layer CANCELs (as §16.6 asks of a proxy). None disables the guard.
    timer_c: float | None = 180.0
    # RFC 6026 §8.7: INVITE server waits in Accepted for 2xx retransmissions; None = 64*T1.
    timer_l: float | None = None
    # RFC 6026 §8.4: INVITE client waits in Accepted for more 2xx; None means 64*T1.
    timer_m: float | None = None

    def __post_init__(self) -> None:
        if not 0 < self.t1 <= self.t2:
            raise ValueError("need 0 < T1 <= T2 (RFC 3261 §17.1.2.2)")

    @property
    def b(self) -> float:
        return 64 * self.t1 if self.timer_b is None else self.timer_b

    @property
    def f(self) -> float:
        return 64 * self.t1 if self.timer_f is None else self.timer_f

    @property
    def h(self) -> float:
        # RFC 3261 §17.2.1: Timer H is 64*T1 (wait for the ACK to a non-2xx final).
        return 64 * self.t1

    @property
    def j_udp(self) -> float:
        # RFC 3261 §17.2.2: Timer J is 64*T1 on unreliable transports.
        return 64 * self.t1

    @property
    def l(self) -> float:  # noqa: E743 - the RFC names the timer "L"
        return 64 * self.t1 if self.timer_l is None else self.timer_l

    @property
    def m(self) -> float:
        return 64 * self.t1 if self.timer_m is None else self.timer_m

    @property
    def cancel_guard(self) -> float:
        # RFC 3261 §9.1: with no final response 64*T1 after the CANCEL, the client
        # transaction of the original request is considered cancelled and destroyed.
        return 64 * self.t1


T = TypeVar("T", bound=enum.Enum)


class Deadlines(Generic[T]):
    """The running timers of one transaction, as absolute expiry times."""

    __slots__ = ("_at",)

    def __init__(self) -> None:
        self._at: dict[T, float] = {}

    def arm(self, timer: T, at: float) -> None:
        self._at[timer] = at

    def stop(self, *timers: T) -> None:
        for timer in timers:
            self._at.pop(timer, None)

    def clear(self) -> None:
        self._at.clear()

    def running(self, timer: T) -> bool:
        return timer in self._at

    def next(self) -> float | None:
        return min(self._at.values(), default=None)

    def pop_due(self, now: float) -> T | None:
        """Remove and return the earliest timer due at ``now`` (ties: arming order)."""
        due: T | None = None
        due_at = now
        for timer, at in self._at.items():
            if at <= due_at and (due is None or at < due_at):
                due, due_at = timer, at
        if due is not None:
            del self._at[due]
        return due
