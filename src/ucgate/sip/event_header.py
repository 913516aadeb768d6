"""Event, Subscription-State and Allow-Events header fields (RFC 6665 §8.2, §8.4).

Parsers take one header value and raise ``RemoteProtocolError(status=400)`` on bad syntax
(like :mod:`ucgate.sip.fields`); the values they return format themselves back with
``str()`` so the notifier builds NOTIFYs from the same types the subscriber side parses.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ucgate.sip.errors import RemoteProtocolError
from ucgate.sip.fields import parse_int_header, parse_params
from ucgate.sip.message import Request, Response, split_list
from ucgate.sip.uri import Param

# RFC 6665 §8.4: event-type = event-package *( "." event-template ), each a token-nodot.
_TOKEN_NODOT = r"[A-Za-z0-9\-!%*_+`'~]+"
_EVENT_TYPE_RE = re.compile(f"{_TOKEN_NODOT}(?:\\.{_TOKEN_NODOT})*")


def _bad(reason: str) -> RemoteProtocolError:
    return RemoteProtocolError(reason, status=400)


def _format_params(params: tuple[Param, ...]) -> str:
    return "".join(f";{n}" if v is None else f";{n}={v}" for n, v in params)


def _find(params: tuple[Param, ...], name: str) -> str | None:
    for n, v in params:
        if n == name:
            return v
    return None


@dataclass(frozen=True, slots=True)
class EventHeader:
    """``Event: package[.template] *(;param)``.

    ``package`` keeps its case: RFC 6665 §8.2.1 compares event-type tokens
    case-sensitively. Parameter names are lower-cased (they are compared insensitively).
    """

    package: str
    params: tuple[Param, ...] = ()

    @property
    def id(self) -> str | None:
        # §8.2.3 / §4.5.2: the id parameter tells subscriptions in one dialog apart; a
        # refresh matches on event type *and* id.
        return _find(self.params, "id")

    def __str__(self) -> str:
        return self.package + _format_params(self.params)


def parse_event(value: str) -> EventHeader:
    text = value.strip()
    package, semi, rest = text.partition(";")
    package = package.strip()
    if not _EVENT_TYPE_RE.fullmatch(package):
        raise _bad(f"bad Event type {package[:40]!r}")
    return EventHeader(package, parse_params(semi + rest))


def event_of(msg: Request | Response) -> EventHeader | None:
    """The message's single Event header, None when absent (§8.2.1: at most one value)."""
    values = msg.headers.values("Event")
    if not values:
        return None
    if len(values) > 1:
        raise _bad("more than one Event value")
    return parse_event(values[0])


class SubState(enum.Enum):
    """substate-value of Subscription-State (§8.4); extensions are kept as text."""

    ACTIVE = "active"
    PENDING = "pending"
    TERMINATED = "terminated"


class TerminationReason(enum.Enum):
    """event-reason-value (§8.4) with the meaning §4.1.3 gives the subscriber."""

    DEACTIVATED = "deactivated"  # retry at once
    PROBATION = "probation"  # retry later (Retry-After)
    REJECTED = "rejected"  # do not retry
    TIMEOUT = "timeout"  # not refreshed in time (also: unsubscribed, fetched)
    GIVEUP = "giveup"  # authorization took too long
    NORESOURCE = "noresource"  # the resource is gone
    INVARIANT = "invariant"  # the state will never change


@dataclass(frozen=True, slots=True)
class SubscriptionStateHeader:
    """``Subscription-State: substate *(;reason|;expires|;retry-after|;ext)``.

    ``state`` is lower-cased text so unknown extension states survive a round trip;
    ``reason`` likewise (compare with ``TerminationReason.X.value``).
    """

    state: str
    reason: str | None = None
    expires: int | None = None
    retry_after: int | None = None
    params: tuple[Param, ...] = ()

    @classmethod
    def active(cls, expires: int) -> SubscriptionStateHeader:
        return cls(SubState.ACTIVE.value, expires=expires)

    @classmethod
    def pending(cls, expires: int) -> SubscriptionStateHeader:
        return cls(SubState.PENDING.value, expires=expires)

    @classmethod
    def terminated(
        cls, reason: TerminationReason, retry_after: int | None = None
    ) -> SubscriptionStateHeader:
        return cls(SubState.TERMINATED.value, reason=reason.value, retry_after=retry_after)

    def __str__(self) -> str:
        out = [self.state]
        if self.reason is not None:
            out.append(f";reason={self.reason}")
        if self.expires is not None:
            out.append(f";expires={self.expires}")
        if self.retry_after is not None:
            out.append(f";retry-after={self.retry_after}")
        out.append(_format_params(self.params))
        return "".join(out)


def parse_subscription_state(value: str) -> SubscriptionStateHeader:
    text = value.strip()
    state, semi, rest = text.partition(";")
    state = state.strip()
    if not _EVENT_TYPE_RE.fullmatch(state) or "." in state:
        raise _bad(f"bad Subscription-State {state[:40]!r}")
    reason: str | None = None
    expires: int | None = None
    retry_after: int | None = None
    extra: list[Param] = []
    for name, param in parse_params(semi + rest):
        if name == "reason" and param is not None:
            reason = param.lower()
        elif name == "expires" and param is not None:
            expires = parse_int_header(param, name="expires")
        elif name == "retry-after" and param is not None:
            retry_after = parse_int_header(param, name="retry-after")
        else:
            extra.append((name, param))
    return SubscriptionStateHeader(state.lower(), reason, expires, retry_after, tuple(extra))


def format_allow_events(packages: Iterable[str]) -> str:
    return ", ".join(packages)


def parse_allow_events(values: Iterable[str]) -> tuple[str, ...]:
    """Every event type listed by Allow-Events field lines (§8.2.2)."""
    out: list[str] = []
    for line in values:
        for item in split_list(line):
            token = item.strip()
            if not _EVENT_TYPE_RE.fullmatch(token):
                raise _bad(f"bad Allow-Events entry {token[:40]!r}")
            out.append(token)
    return tuple(out)
