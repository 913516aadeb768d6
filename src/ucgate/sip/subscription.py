"""The notifier side of SIP event subscriptions (RFC 6665 §4.2; RFC 3856 presence,
RFC 4235 dialog package), sans-IO.

:class:`SubscriptionTable` answers SUBSCRIBEs, builds the NOTIFYs the application sends,
and takes their final responses back. Two things are tracked per subscription:

* its lifecycle, driven by :data:`SUBSCRIPTION_TABLE` ``{(state, input): (action, next)}``
  (pending/active/terminated, RFC 6665 §4.1.3 / §4.2.1 / §4.2.2);
* its delivery: at most one NOTIFY in flight (a NOTIFY that overtakes another would
  roll the watcher's state back: §4.2.2 requires the previous NOTIFY to be answered
  first), and a throttle of ``notify_min_interval`` (RFC 3856 §6.10, RFC 6446): the
  first change after a quiet period goes out at once, later ones are coalesced into one
  NOTIFY sent when the interval ends. The application renders the body when it builds
  the NOTIFY, so a coalesced NOTIFY always carries the newest state.

The table never reads a clock: every call takes ``now`` and the caller re-arms one
timer at :meth:`SubscriptionTable.next_deadline`. Deadlines live in a heap with lazy
deletion (each entry carries the generation it was armed for) so 10,000 subscriptions
cost O(log n) per change. When the table wants a NOTIFY built it emits
:class:`NotifyDue`; the caller then calls :meth:`SubscriptionTable.build_notify`.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from ucgate.sip import fields
from ucgate.sip.dialog import Dialog, DialogId
from ucgate.sip.errors import LocalProtocolError, RemoteProtocolError
from ucgate.sip.event_header import (
    EventHeader,
    SubscriptionStateHeader,
    TerminationReason,
    event_of,
    format_allow_events,
)
from ucgate.sip.message import Request
from ucgate.sip.uri import SipUri, parse_uri

# Content types each package produces, in our order of preference (RFC 3856 §6.6 PIDF is
# mandatory for presence; RFC 4235 §3.4 dialog-info+xml for the dialog package).
DEFAULT_PACKAGES: Mapping[str, tuple[str, ...]] = {
    "presence": ("application/pidf+xml",),
    "dialog": ("application/dialog-info+xml",),
}

# A NOTIFY whose final response never arrives would block its subscription forever; the
# transaction layer answers within Timer F (64*T1 = 32 s by default), so this only guards
# against a caller that loses a result. It also bounds how long a terminated
# subscription waits for its final NOTIFY to be built.
DEFAULT_NOTIFY_TIMEOUT = 64.0


class SubscriptionState(enum.Enum):
    """RFC 6665 §4.1.3 states as the notifier keeps them."""

    PENDING = "pending"  # not yet authorized (we authorize before creating; kept for §4.2.1)
    ACTIVE = "active"
    TERMINATED = "terminated"  # the final NOTIFY is pending, in flight or answered


class SubscriptionInput(enum.Enum):
    REFRESH = "SUBSCRIBE with Expires > 0 in the dialog"
    UNSUBSCRIBE = "SUBSCRIBE with Expires: 0 in the dialog"
    EXPIRE = "expiry deadline passed"
    AUTHORIZE = "application authorized a pending watcher"
    TERMINATE = "application ended the subscription"
    NOTIFY_ACCEPTED = "2xx to our NOTIFY"
    NOTIFY_FAILED = "failure, timeout or transport error for our NOTIFY"


class SubscriptionAction(enum.Enum):
    RENEW = "new expiry, answer 200, notify (§4.2.1.2)"
    NOTIFY = "a NOTIFY with the current state is due"
    FINAL_NOTIFY = "a NOTIFY with Subscription-State: terminated is due"
    DELIVERED = "clear the in-flight NOTIFY; send a pending one, or remove after the final"
    REMOVE = "drop the subscription at once (§4.2.2)"
    NONE = "nothing to do"


_S, _I, _A = SubscriptionState, SubscriptionInput, SubscriptionAction

SUBSCRIPTION_TABLE: dict[
    tuple[SubscriptionState, SubscriptionInput], tuple[SubscriptionAction, SubscriptionState]
] = {
    (_S.PENDING, _I.REFRESH): (_A.RENEW, _S.PENDING),
    (_S.ACTIVE, _I.REFRESH): (_A.RENEW, _S.ACTIVE),
    # §4.2.1.2: Expires: 0 ends the subscription with one last NOTIFY.
    (_S.PENDING, _I.UNSUBSCRIBE): (_A.FINAL_NOTIFY, _S.TERMINATED),
    (_S.ACTIVE, _I.UNSUBSCRIBE): (_A.FINAL_NOTIFY, _S.TERMINATED),
    # §4.2.2: "reason=timeout" when the subscriber did not refresh in time.
    (_S.PENDING, _I.EXPIRE): (_A.FINAL_NOTIFY, _S.TERMINATED),
    (_S.ACTIVE, _I.EXPIRE): (_A.FINAL_NOTIFY, _S.TERMINATED),
    (_S.PENDING, _I.AUTHORIZE): (_A.NOTIFY, _S.ACTIVE),
    (_S.PENDING, _I.TERMINATE): (_A.FINAL_NOTIFY, _S.TERMINATED),
    (_S.ACTIVE, _I.TERMINATE): (_A.FINAL_NOTIFY, _S.TERMINATED),
    # Ending an already ending subscription is harmless (fan-out code may race with
    # expiry); the reason of the first termination stands.
    (_S.TERMINATED, _I.TERMINATE): (_A.NONE, _S.TERMINATED),
    (_S.PENDING, _I.NOTIFY_ACCEPTED): (_A.DELIVERED, _S.PENDING),
    (_S.ACTIVE, _I.NOTIFY_ACCEPTED): (_A.DELIVERED, _S.ACTIVE),
    (_S.TERMINATED, _I.NOTIFY_ACCEPTED): (_A.DELIVERED, _S.TERMINATED),
    # §4.2.2: 481 or a timeout means the subscriber has no such subscription (or is
    # gone); other failures are treated the same so dead watchers never pile up.
    (_S.PENDING, _I.NOTIFY_FAILED): (_A.REMOVE, _S.TERMINATED),
    (_S.ACTIVE, _I.NOTIFY_FAILED): (_A.REMOVE, _S.TERMINATED),
    (_S.TERMINATED, _I.NOTIFY_FAILED): (_A.REMOVE, _S.TERMINATED),
}
# Missing pairs: a REFRESH/UNSUBSCRIBE of a terminated subscription is answered 481
# (§4.2.1.2: it no longer exists); AUTHORIZE on a non-pending one and EXPIRE on a
# terminated one are misuse / cannot happen and raise LocalProtocolError.


@dataclass(frozen=True, slots=True)
class NotifyDue:
    """The subscription needs a NOTIFY now: call ``build_notify(sub_id, ...)``."""

    sub_id: str


@dataclass(frozen=True, slots=True)
class SubscriptionTerminated:
    """The subscription is gone from the table.

    ``reason`` is what its final NOTIFY said; None when it was dropped because a NOTIFY
    failed (``notify_status`` then holds the final status: 481, 408, 503...).
    """

    sub_id: str
    resource: str
    event: str
    watcher: str
    reason: TerminationReason | None
    notify_status: int | None = None


SubscriptionEvent = NotifyDue | SubscriptionTerminated


@dataclass(slots=True, eq=False)
class Subscription:
    """One watcher's subscription to one resource's event package."""

    id: str
    event: str
    event_id: str | None  # the Event id parameter, echoed in every NOTIFY (§8.2.3)
    resource: str
    watcher: str
    dialog: Dialog
    expires_at: float
    accept: str  # the content type every NOTIFY body of this subscription uses
    state: SubscriptionState = SubscriptionState.ACTIVE
    reason: TerminationReason | None = None
    # RFC 4235 §4.1: dialog-info "version" starts at 0 and grows by 1 per NOTIFY. This
    # is the value the *next* NOTIFY body must carry.
    version: int = 0
    notify_in_flight: bool = False
    pending_body: bool = False  # a change waits for the in-flight NOTIFY or the throttle
    final_sent: bool = False  # the terminated NOTIFY is built
    last_notify_at: float | None = None
    # Drop deadline: an in-flight NOTIFY's answer, or a terminated one's final NOTIFY.
    guard_at: float | None = None
    _due_signalled: bool = False
    _wake_at: float | None = None
    _generation: int = 0

    @property
    def event_header(self) -> str:
        return self.event if self.event_id is None else f"{self.event};id={self.event_id}"

    def remaining(self, now: float) -> int:
        """Seconds left, rounded up so an active subscription never says expires=0."""
        return max(0, math.ceil(self.expires_at - now))


@dataclass(frozen=True, slots=True)
class SubscribeOutcome:
    """How to answer a SUBSCRIBE.

    The caller sends ``make_response(req, status, reason, to_tag=to_tag,
    extra_headers=headers)`` plus its own Contact on a 2xx, then, when ``notify_now``,
    calls ``build_notify(subscription.id, ...)`` (RFC 6665 §4.2.1.1/§4.2.1.2: a NOTIFY
    follows every accepted SUBSCRIBE, refreshes and unsubscribes included).
    """

    status: int
    reason: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    subscription: Subscription | None = None
    to_tag: str | None = None
    notify_now: bool = False


def _accepted_type(accept_values: list[str], offered: tuple[str, ...]) -> str | None:
    """The first type we offer that the SUBSCRIBE's Accept admits (§4.1.3 / §8.2.2)."""
    if not accept_values:
        return offered[0]
    wanted = [v.split(";", 1)[0].strip().lower() for v in accept_values]
    for have in offered:
        kind = have.split("/", 1)[0]
        if any(w in (have, "*/*", f"{kind}/*") for w in wanted):
            return have
    return None


class SubscriptionTable:
    """Every subscription this node serves as notifier."""

    def __init__(
        self,
        *,
        min_expires: int,
        max_expires: int,
        default_expires: int,
        notify_min_interval: float,
        tag_factory: Callable[[], str],
        packages: Mapping[str, tuple[str, ...]] = DEFAULT_PACKAGES,
        notify_timeout: float = DEFAULT_NOTIFY_TIMEOUT,
    ) -> None:
        if not 0 < min_expires <= default_expires <= max_expires:
            raise LocalProtocolError("need 0 < min_expires <= default_expires <= max_expires")
        if notify_min_interval < 0 or notify_timeout <= 0:
            raise LocalProtocolError("bad notify_min_interval / notify_timeout")
        self.min_expires = min_expires
        self.max_expires = max_expires
        self.default_expires = default_expires
        self.notify_min_interval = notify_min_interval
        self.notify_timeout = notify_timeout
        self._tag_factory = tag_factory
        self._packages = dict(packages)
        self._allow_events = format_allow_events(self._packages)
        self._subs: dict[str, Subscription] = {}
        self._by_dialog: dict[DialogId, Subscription] = {}
        # resource -> ordered set of sub ids (dict keys keep insertion order).
        self._by_resource: dict[str, dict[str, None]] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._events: deque[SubscriptionEvent] = deque()
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------ lookups

    def __len__(self) -> int:
        return len(self._subs)

    def get(self, sub_id: str) -> Subscription | None:
        return self._subs.get(sub_id)

    def find_by_dialog(
        self, call_id: str, local_tag: str, remote_tag: str | None
    ) -> Subscription | None:
        return self._by_dialog.get((call_id, local_tag, remote_tag))

    def subscriptions_for(self, resource: str, event: str | None = None) -> list[Subscription]:
        """Subscriptions that still receive state changes (not terminated)."""
        ids = self._by_resource.get(resource, {})
        out: list[Subscription] = []
        for sub_id in ids:
            sub = self._subs[sub_id]
            if sub.state is not SubscriptionState.TERMINATED and (
                event is None or sub.event == event
            ):
                out.append(sub)
        return out

    def next_event(self) -> SubscriptionEvent | None:
        return self._events.popleft() if self._events else None

    # ------------------------------------------------------------------ SUBSCRIBE

    def on_subscribe(
        self,
        req: Request,
        *,
        watcher: str,
        now: float,
        resource: str | None = None,
        authorized: bool = True,
        over_tls: bool = False,
    ) -> SubscribeOutcome:
        """Decide the answer to an (already authenticated) SUBSCRIBE, RFC 6665 §4.2.1.

        ``resource`` defaults to the Request-URI's address of record. Peer faults come
        back as an outcome with their status; nothing is raised for them.
        """
        if req.method != "SUBSCRIBE":
            raise LocalProtocolError(f"on_subscribe given a {req.method}")
        try:
            return self._on_subscribe(req, watcher, now, resource, authorized, over_tls)
        except RemoteProtocolError as exc:
            return SubscribeOutcome(exc.status or 400, exc.reason)

    def _on_subscribe(
        self,
        req: Request,
        watcher: str,
        now: float,
        resource: str | None,
        authorized: bool,
        over_tls: bool,
    ) -> SubscribeOutcome:
        event = event_of(req)
        if event is None or event.package not in self._packages:
            # §4.2.1 / §8.3.2: 489 lists what we do support.
            return SubscribeOutcome(489, headers=(("Allow-Events", self._allow_events),))
        expires_text = req.headers.get("Expires")
        requested = (
            self.default_expires
            if expires_text is None
            else fields.parse_int_header(expires_text, name="Expires")
        )
        if 0 < requested < self.min_expires:
            # §4.2.1.1 / RFC 3261 §21.4.17: too short (0 is a fetch or an unsubscribe).
            return SubscribeOutcome(423, headers=(("Min-Expires", str(self.min_expires)),))
        granted = min(requested, self.max_expires)
        to_tag = fields.to(req).tag
        if to_tag is not None:
            return self._in_dialog(req, event, watcher, granted, now, to_tag)
        return self._initial(req, event, watcher, granted, now, resource, authorized, over_tls)

    def _initial(
        self,
        req: Request,
        event: EventHeader,
        watcher: str,
        granted: int,
        now: float,
        resource: str | None,
        authorized: bool,
        over_tls: bool,
    ) -> SubscribeOutcome:
        accept = _accepted_type(req.headers.values("Accept"), self._packages[event.package])
        if accept is None:
            # §4.2.1.1 / RFC 3261 §21.4.7: none of our body types is acceptable.
            return SubscribeOutcome(
                406, headers=(("Accept", ", ".join(self._packages[event.package])),)
            )
        if resource is None:
            uri = parse_uri(req.uri)
            resource = uri.aor() if isinstance(uri, SipUri) else str(uri)
        tag = self._tag_factory()
        dialog = Dialog.from_request(req, tag, over_tls=over_tls)
        if dialog.id in self._by_dialog:
            raise LocalProtocolError("tag_factory returned a tag already in use")
        sub = Subscription(
            id=f"sub-{next(self._ids)}",
            event=event.package,
            event_id=event.id,
            resource=resource,
            watcher=watcher,
            dialog=dialog,
            expires_at=now + granted,
            accept=accept,
            state=SubscriptionState.ACTIVE if authorized else SubscriptionState.PENDING,
        )
        self._subs[sub.id] = sub
        self._by_dialog[dialog.id] = sub
        self._by_resource.setdefault(resource, {})[sub.id] = None
        sub.pending_body = True  # the §4.2.1.1 initial NOTIFY
        if granted == 0:
            # §4.2.1.1 fetch: one NOTIFY with the state, already terminated.
            sub.state = SubscriptionState.TERMINATED
            sub.reason = TerminationReason.TIMEOUT
            sub.guard_at = now + self.notify_timeout
        self._reschedule(sub)
        return SubscribeOutcome(
            200,
            headers=(("Expires", str(granted)),),
            subscription=sub,
            to_tag=tag,
            notify_now=True,
        )

    def _in_dialog(
        self,
        req: Request,
        event: EventHeader,
        watcher: str,
        granted: int,
        now: float,
        to_tag: str,
    ) -> SubscribeOutcome:
        sub = self._by_dialog.get((fields.call_id(req), to_tag, fields.from_(req).tag))
        if sub is None or sub.event != event.package or sub.event_id != event.id:
            # §4.2.1.2: a refresh for a subscription we do not have.
            return SubscribeOutcome(481)
        if sub.watcher != watcher:
            return SubscribeOutcome(403, "Not the subscription's watcher")
        self._expire_if_due(sub, now)
        action_input = _I.UNSUBSCRIBE if granted == 0 else _I.REFRESH
        if (sub.state, action_input) not in SUBSCRIPTION_TABLE:
            return SubscribeOutcome(481)
        sub.dialog.check_in_dialog_request(req)
        if granted:
            sub.expires_at = now + granted
        self._apply(sub, action_input, now, signal=False)
        return SubscribeOutcome(
            200,
            headers=(("Expires", str(granted)),),
            subscription=sub,
            to_tag=to_tag,
            notify_now=True,
        )

    # ------------------------------------------------------------------ application inputs

    def authorize(self, sub_id: str, now: float) -> None:
        """A pending watcher was approved: it gets an active NOTIFY (§4.2.1.1)."""
        self._apply(self._require(sub_id), _I.AUTHORIZE, now, signal=True)

    def terminate(self, sub_id: str, reason: TerminationReason, now: float) -> None:
        """End a subscription from our side (resource gone, authorization revoked...)."""
        sub = self._subs.get(sub_id)
        if sub is None:
            return
        if sub.state is not SubscriptionState.TERMINATED:
            sub.reason = reason
        self._apply(sub, _I.TERMINATE, now, signal=True)

    # ------------------------------------------------------------------ NOTIFY

    def want_notify(self, sub_id: str, now: float) -> bool:
        """Record a state change; True when :meth:`build_notify` would build a NOTIFY now.

        Lets the caller skip rendering a body that would be thrown away. When False the
        change is remembered and a :class:`NotifyDue` follows when sending is allowed.
        """
        sub = self._subs.get(sub_id)
        if sub is None:
            return False
        # Expired but not yet noticed by handle_timer: the NOTIFY built now is the final
        # one, so no NotifyDue is queued for it.
        self._expire_if_due(sub, now, signal=False)
        if sub.state is SubscriptionState.TERMINATED and sub.final_sent:
            return False
        if sub.notify_in_flight or self._throttled(sub, now):
            sub.pending_body = True
            self._reschedule(sub)
            return False
        return True

    def build_notify(
        self,
        sub_id: str,
        *,
        body: bytes,
        content_type: str,
        now: float,
        extra_headers: Iterable[tuple[str, str]] = (),
    ) -> Request | None:
        """The next NOTIFY of ``sub_id`` (§4.2.2), or None when none may go out now.

        None when a NOTIFY is in flight or the throttle holds (the change is remembered
        and :class:`NotifyDue` follows), or when the subscription is gone or its final
        NOTIFY was already built. The caller adds Contact (``extra_headers`` or after).
        """
        if not self.want_notify(sub_id, now):
            return None
        sub = self._subs[sub_id]
        if sub.state is SubscriptionState.TERMINATED:
            assert sub.reason is not None
            state = str(SubscriptionStateHeader.terminated(sub.reason))
            sub.final_sent = True
        else:
            # The hot path of every fan-out: format directly (same text as
            # SubscriptionStateHeader.active/pending would give).
            state = f"{sub.state.value};expires={sub.remaining(now)}"
        request = sub.dialog.create_request(
            "NOTIFY",
            body=body,
            content_type=content_type if body else None,
            extra_headers=(
                ("Event", sub.event_header),
                ("Subscription-State", state),
                *extra_headers,
            ),
        )
        sub.version += 1
        sub.notify_in_flight = True
        sub.pending_body = False
        sub._due_signalled = False
        sub.last_notify_at = now
        sub.guard_at = now + self.notify_timeout
        self._reschedule(sub)
        return request

    def on_notify_result(self, sub_id: str, status: int, now: float) -> None:
        """The final status of the last NOTIFY (the synthetic 408/503 of the transaction
        layer included). Provisional statuses and late results are ignored."""
        sub = self._subs.get(sub_id)
        if sub is None or not sub.notify_in_flight or status < 200:
            return
        sub.notify_in_flight = False
        sub.guard_at = None
        if 200 <= status < 300:
            self._apply(sub, _I.NOTIFY_ACCEPTED, now, signal=True)
        else:
            self._apply(sub, _I.NOTIFY_FAILED, now, signal=True, status=status)

    # ------------------------------------------------------------------ timers

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap:
            at, generation, sub_id = heap[0]
            sub = self._subs.get(sub_id)
            if sub is not None and sub._generation == generation:
                return at
            heapq.heappop(heap)
        return None

    def handle_timer(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, generation, sub_id = heapq.heappop(heap)
            sub = self._subs.get(sub_id)
            if sub is None or sub._generation != generation:
                continue
            sub._wake_at = None
            self._wake(sub, now)
            if sub.id in self._subs:
                self._reschedule(sub)

    def _wake(self, sub: Subscription, now: float) -> None:
        if sub.guard_at is not None and now >= sub.guard_at:
            if sub.notify_in_flight:
                # No answer ever came: count it as the timeout §4.2.2 talks about.
                self.on_notify_result(sub.id, 408, now)
            else:
                # Terminated, but nobody built the final NOTIFY: give up on it.
                self._remove(sub, sub.reason, None)
            return
        if self._expire_if_due(sub, now):
            return
        if (
            sub.pending_body
            and not sub.notify_in_flight
            and not sub._due_signalled
            and not self._throttled(sub, now)
        ):
            self._signal(sub)

    # ------------------------------------------------------------------ internals

    def _require(self, sub_id: str) -> Subscription:
        sub = self._subs.get(sub_id)
        if sub is None:
            raise LocalProtocolError(f"no subscription {sub_id!r}")
        return sub

    def _throttled(self, sub: Subscription, now: float) -> bool:
        # The final NOTIFY is never held back: it is the last one anyway.
        return (
            sub.state is not SubscriptionState.TERMINATED
            and sub.last_notify_at is not None
            and now < sub.last_notify_at + self.notify_min_interval
        )

    def _expire_if_due(self, sub: Subscription, now: float, *, signal: bool = True) -> bool:
        if sub.state is not SubscriptionState.TERMINATED and now >= sub.expires_at:
            sub.reason = TerminationReason.TIMEOUT
            self._apply(sub, _I.EXPIRE, now, signal=signal)
            return True
        return False

    def _signal(self, sub: Subscription) -> None:
        sub._due_signalled = True
        self._events.append(NotifyDue(sub.id))

    def _apply(
        self,
        sub: Subscription,
        what: SubscriptionInput,
        now: float,
        *,
        signal: bool,
        status: int | None = None,
    ) -> None:
        """Run one table transition. ``signal`` False when the caller will build the
        NOTIFY itself (SubscribeOutcome.notify_now), so no NotifyDue is queued."""
        try:
            action, next_state = SUBSCRIPTION_TABLE[(sub.state, what)]
        except KeyError:
            raise LocalProtocolError(f"{what.name} in state {sub.state.name}") from None
        sub.state = next_state
        if action is _A.REMOVE:
            self._remove(sub, None, status)
            return
        if action is _A.DELIVERED:
            if sub.state is SubscriptionState.TERMINATED:
                if sub.final_sent:
                    self._remove(sub, sub.reason, None)
                    return
                # It ended while an earlier NOTIFY was in flight: the final one is due
                # now, and must be built within the guard time.
                sub.guard_at = now + self.notify_timeout
            # A change (or the final NOTIFY) waited for this answer.
            if sub.pending_body and not self._throttled(sub, now):
                self._signal(sub)
        elif action in (_A.RENEW, _A.NOTIFY, _A.FINAL_NOTIFY):
            if action is _A.FINAL_NOTIFY:
                if sub.reason is None:
                    sub.reason = TerminationReason.TIMEOUT
                if not sub.notify_in_flight:
                    sub.guard_at = now + self.notify_timeout
            sub.pending_body = True
            if signal and not sub.notify_in_flight and not self._throttled(sub, now):
                self._signal(sub)
        self._reschedule(sub)

    def _remove(
        self, sub: Subscription, reason: TerminationReason | None, status: int | None
    ) -> None:
        del self._subs[sub.id]
        del self._by_dialog[sub.dialog.id]
        ids = self._by_resource[sub.resource]
        del ids[sub.id]
        if not ids:
            del self._by_resource[sub.resource]
        sub.state = SubscriptionState.TERMINATED
        sub._generation += 1
        self._events.append(
            SubscriptionTerminated(sub.id, sub.resource, sub.event, sub.watcher, reason, status)
        )

    def _reschedule(self, sub: Subscription) -> None:
        if sub.id not in self._subs:
            return
        times: list[float] = []
        if sub.state is not SubscriptionState.TERMINATED:
            times.append(sub.expires_at)
        if sub.guard_at is not None:
            times.append(sub.guard_at)
        if (
            sub.pending_body
            and not sub.notify_in_flight
            and not sub._due_signalled
            and sub.last_notify_at is not None
            and sub.state is not SubscriptionState.TERMINATED
        ):
            times.append(sub.last_notify_at + self.notify_min_interval)
        wake = min(times, default=None)
        if wake == sub._wake_at:
            return
        sub._generation += 1
        sub._wake_at = wake
        if wake is not None:
            heapq.heappush(self._heap, (wake, sub._generation, sub.id))
            if len(self._heap) > 4 * len(self._subs) + 1024:
                self._compact()

    def _compact(self) -> None:
        # Stale entries are skipped lazily; rebuild when they outnumber live ones so a
        # busy presentity's NOTIFY churn cannot grow the heap without bound.
        self._heap = [
            (s._wake_at, s._generation, s.id) for s in self._subs.values() if s._wake_at is not None
        ]
        heapq.heapify(self._heap)


__all__ = [
    "DEFAULT_PACKAGES",
    "SUBSCRIPTION_TABLE",
    "NotifyDue",
    "SubscribeOutcome",
    "Subscription",
    "SubscriptionAction",
    "SubscriptionEvent",
    "SubscriptionInput",
    "SubscriptionState",
    "SubscriptionTable",
    "SubscriptionTerminated",
    "TerminationReason",
]
