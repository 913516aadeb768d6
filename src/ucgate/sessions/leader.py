"""Which node routes: a lease one node of a site holds at a time (sans-IO).

In multi-node mode every node shares the sessions in Redis, but only one may run the
routing engine: two engines would each see an agent's last free slot and offer it twice.
The node that holds the lease routes; the others forward their routing inputs to it
(:mod:`ucgate.sessions.coordination`).

The lease is a Redis key ``SET NX PX ttl`` whose value is a *token* ``<node>:<epoch>``,
the epoch drawn from a counter that only grows. This module decides *when* to ask for or
renew it and *whether this node may believe it leads*; the adapter does the I/O and
reports back, so every interleaving of replies, failures and expiry is tested with the
clock stepped by hand.

Safety: a holder believes it leads until ``sent_at + ttl - margin``, where ``sent_at`` is
when the ACQUIRE/RENEW that (re)started the lease *left* this node. Redis started its TTL
after receiving it, so the key outlives the belief by at least ``margin`` plus the request's
transit time (on clocks running at the same rate). A process that is paused (GC, SIGSTOP,
a slow disk) can still act on an old belief when it wakes; that is what the fencing token is
for: every routing write checks, in the same Redis transaction, that the lease still holds
this node's token, so a stale leader's write is refused rather than applied.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from enum import StrEnum

from ucgate.sessions.model import SessionError

__all__ = ["Demoted", "Lease", "LeaseAction", "LeaseEvent", "NotLeader", "Promoted"]


class NotLeader(SessionError):
    """A routing write was fenced off: the lease no longer holds this node's token."""

    def __init__(self, token: str, holder: str | None) -> None:
        super().__init__(
            f"routing write refused: lease is {holder!r}, not {token!r}", field="lease", status=503
        )
        self.token = token
        self.holder = holder


class LeaseAction(StrEnum):
    ACQUIRE = "acquire"
    RENEW = "renew"


@dataclass(frozen=True, slots=True)
class Promoted:
    """This node now holds the lease: rebuild routing state from the store, then route."""

    token: str
    at: float


@dataclass(frozen=True, slots=True)
class Demoted:
    """This node no longer routes: forget the engine's state at once."""

    token: str
    at: float
    reason: str


LeaseEvent = Promoted | Demoted


class Lease:
    """Lease bookkeeping for one node.

    ``ttl``: the key's time to live. ``renew_every``: how often the holder extends it
    (default ttl/3: two renewals can fail before it lapses). ``retry_every``: how often a
    standby tries to take it (default ttl/6; failover takes at most ttl + retry_every after
    the holder's last renewal). ``margin``: how much earlier than the key the holder's
    belief ends (default ttl/10).
    """

    def __init__(
        self,
        ttl: float,
        *,
        renew_every: float | None = None,
        retry_every: float | None = None,
        margin: float | None = None,
    ) -> None:
        self.ttl = ttl
        self.renew_every = ttl / 3 if renew_every is None else renew_every
        self.retry_every = ttl / 6 if retry_every is None else retry_every
        self.margin = ttl / 10 if margin is None else margin
        if not 0 < self.renew_every < ttl - self.margin:
            raise ValueError("renew_every must be positive and leave the lease time to renew")
        if self.retry_every <= 0 or self.margin < 0:
            raise ValueError("retry_every must be positive and margin not negative")
        self.token: str | None = None
        self._valid_until = -math.inf
        # Act at once when started: a standby asks straight away.
        self._next = -math.inf
        self._in_flight: tuple[LeaseAction, float] | None = None
        self._events: deque[LeaseEvent] = deque()

    # --- queries -----------------------------------------------------------------------

    def leading(self, now: float) -> bool:
        return self.token is not None and now < self._valid_until

    def next_deadline(self) -> float:
        """When to call :meth:`due` next (the next request, or the belief's end)."""
        if self.token is not None:
            return min(self._next, self._valid_until)
        return self._next

    def next_event(self) -> LeaseEvent | None:
        return self._events.popleft() if self._events else None

    # --- timer -------------------------------------------------------------------------

    def due(self, now: float) -> LeaseAction | None:
        """The request to send now, if any; the caller reports its outcome with
        :meth:`acquired`, :meth:`renewed` or :meth:`failed`, passing back ``now``."""
        self._expire(now)
        if self._in_flight is not None or now < self._next:
            return None
        action = LeaseAction.RENEW if self.token is not None else LeaseAction.ACQUIRE
        self._in_flight = (action, now)
        return action

    # --- replies -----------------------------------------------------------------------

    def acquired(self, token: str | None, sent_at: float, now: float) -> None:
        """The ACQUIRE sent at ``sent_at`` was answered: ``token`` is ours, or None if
        another node holds the lease."""
        self._reply(LeaseAction.ACQUIRE, sent_at)
        if token is None:
            self._next = now + self.retry_every
            return
        self.token = token
        self._valid_until = sent_at + self.ttl - self.margin
        self._next = sent_at + self.renew_every
        self._events.append(Promoted(token, now))
        self._expire(now)

    def renewed(self, ok: bool, sent_at: float, now: float) -> None:
        """The RENEW sent at ``sent_at`` was answered: ``ok`` False means the key no
        longer holds our token (it lapsed and someone else, or nobody, has it)."""
        self._reply(LeaseAction.RENEW, sent_at)
        if self.token is None:
            return
        if not ok:
            self._demote(now, "lease lost")
            return
        self._valid_until = max(self._valid_until, sent_at + self.ttl - self.margin)
        self._next = sent_at + self.renew_every
        self._expire(now)

    def failed(self, sent_at: float, now: float) -> None:
        """The request got no answer (Redis down, timeout). The belief stands until it
        runs out; ask again soon."""
        action = self._in_flight[0] if self._in_flight is not None else LeaseAction.ACQUIRE
        self._reply(action, sent_at)
        self._next = now + min(self.retry_every, self.renew_every)
        self._expire(now)

    def abandon(self, now: float, reason: str) -> str | None:
        """Give the lease up but stay a standby (this node took it and could not use
        it, e.g. the rebuild failed); returns the token to release, if any."""
        token = self.token
        if token is not None:
            self._demote(now, reason)
        return token

    def resign(self, now: float) -> str | None:
        """Stop leading (clean shutdown); returns the token to release, if any."""
        token = self.token
        if token is not None:
            self._demote(now, "resigned")
        self._next = math.inf
        return token

    # --- internals ---------------------------------------------------------------------

    def _reply(self, action: LeaseAction, sent_at: float) -> None:
        if self._in_flight != (action, sent_at):
            raise RuntimeError(f"no {action.value} sent at {sent_at} is in flight")
        self._in_flight = None

    def _expire(self, now: float) -> None:
        if self.token is not None and now >= self._valid_until:
            self._demote(now, "lease expired before it was renewed")

    def _demote(self, now: float, reason: str) -> None:
        assert self.token is not None
        self._events.append(Demoted(self.token, now, reason))
        self.token = None
        self._valid_until = -math.inf
        self._next = now + self.retry_every
