"""Event State Compositor side of PUBLISH (RFC 3903 §6), sans-IO.

:class:`PublicationTable` keeps every piece of published event state as raw bytes with
its content type and entity-tag; composing it into a presence document is the
application's job (it parses the PIDF). The four operations of RFC 3903 §4 Table 1 are
inputs of :data:`PUBLICATION_TABLE`; an operation that names an entity-tag we do not
hold has no entry and is answered 412 (§6 step 3).
"""

from __future__ import annotations

import enum
import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ucgate.sip import fields
from ucgate.sip.errors import LocalProtocolError, RemoteProtocolError
from ucgate.sip.event_header import event_of, format_allow_events
from ucgate.sip.message import Request

# RFC 3903 §6 step 5 / RFC 3856 §6.6: the presence package's mandatory body format.
DEFAULT_CONTENT_TYPES: dict[str, tuple[str, ...]] = {"presence": ("application/pidf+xml",)}


class PublicationState(enum.Enum):
    ABSENT = "no such entity-tag"
    PUBLISHED = "published"


class PublishOperation(enum.Enum):
    """RFC 3903 §4 Table 1, plus the soft-state expiry of §6 step 4."""

    INITIAL = "initial"  # body, no SIP-If-Match
    REFRESH = "refresh"  # SIP-If-Match, no body, Expires > 0
    MODIFY = "modify"  # SIP-If-Match and body
    REMOVE = "remove"  # SIP-If-Match, Expires: 0
    EXPIRE = "expire"  # nobody refreshed it in time


class PublicationAction(enum.Enum):
    CREATE = "store new state under a new entity-tag"
    EXTEND = "new entity-tag and expiry, same state"
    REPLACE = "new entity-tag, expiry and state"
    DELETE = "drop the state"


_PS, _PO, _PA = PublicationState, PublishOperation, PublicationAction

PUBLICATION_TABLE: dict[
    tuple[PublicationState, PublishOperation], tuple[PublicationAction, PublicationState]
] = {
    (_PS.ABSENT, _PO.INITIAL): (_PA.CREATE, _PS.PUBLISHED),
    (_PS.PUBLISHED, _PO.REFRESH): (_PA.EXTEND, _PS.PUBLISHED),
    (_PS.PUBLISHED, _PO.MODIFY): (_PA.REPLACE, _PS.PUBLISHED),
    (_PS.PUBLISHED, _PO.REMOVE): (_PA.DELETE, _PS.ABSENT),
    (_PS.PUBLISHED, _PO.EXPIRE): (_PA.DELETE, _PS.ABSENT),
}


@dataclass(slots=True, eq=False)
class Publication:
    """One entity-tagged piece of event state (RFC 3903 §2: one per publisher's EPA)."""

    etag: str
    resource: str
    event: str
    publisher: str
    body: bytes
    content_type: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class PublicationChange:
    """What the application merges into the resource's document after a 2xx.

    For a removal ``body`` is the state that was removed and ``etag`` is None.
    """

    operation: PublishOperation
    resource: str
    event: str
    publisher: str
    etag: str | None
    old_etag: str | None
    body: bytes
    content_type: str
    expires_at: float
    removed: bool


@dataclass(frozen=True, slots=True)
class PublishOutcome:
    """How to answer a PUBLISH: ``make_response(req, status, reason,
    extra_headers=headers)``; ``change`` is set only for a 2xx that did something."""

    status: int
    reason: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    change: PublicationChange | None = None


@dataclass(frozen=True, slots=True)
class PublicationExpired:
    """Published state timed out without a refresh (RFC 3903 §6 step 4, soft state)."""

    resource: str
    event: str
    publisher: str
    etag: str
    body: bytes
    content_type: str


class PublicationTable:
    """Every publication this node holds, keyed by entity-tag."""

    def __init__(
        self,
        *,
        min_expires: int,
        max_expires: int,
        default_expires: int = 3600,
        etag_factory: Callable[[], str],
        content_types: dict[str, tuple[str, ...]] | None = None,
    ) -> None:
        if not 0 < min_expires <= default_expires <= max_expires:
            raise LocalProtocolError("need 0 < min_expires <= default_expires <= max_expires")
        self.min_expires = min_expires
        self.max_expires = max_expires
        self.default_expires = default_expires
        self._etag_factory = etag_factory
        self._content_types = dict(content_types or DEFAULT_CONTENT_TYPES)
        self._allow_events = format_allow_events(self._content_types)
        self._pubs: dict[str, Publication] = {}
        self._by_resource: dict[tuple[str, str], dict[str, None]] = {}
        # (expires_at, etag); an entry is live while that etag exists with that expiry.
        self._heap: list[tuple[float, str]] = []
        self._events: deque[PublicationExpired] = deque()

    # ------------------------------------------------------------------ lookups

    def __len__(self) -> int:
        return len(self._pubs)

    def get(self, etag: str) -> Publication | None:
        return self._pubs.get(etag)

    def publications_for(self, resource: str, event: str = "presence") -> list[Publication]:
        return [self._pubs[e] for e in self._by_resource.get((resource, event), {})]

    def next_event(self) -> PublicationExpired | None:
        return self._events.popleft() if self._events else None

    # ------------------------------------------------------------------ PUBLISH

    def on_publish(
        self, req: Request, *, publisher: str, resource: str, now: float
    ) -> PublishOutcome:
        """Process an (already authorized, §6 step 1) PUBLISH for ``resource``."""
        if req.method != "PUBLISH":
            raise LocalProtocolError(f"on_publish given a {req.method}")
        try:
            return self._on_publish(req, publisher, resource, now)
        except RemoteProtocolError as exc:
            return PublishOutcome(exc.status or 400, exc.reason)

    def _on_publish(
        self, req: Request, publisher: str, resource: str, now: float
    ) -> PublishOutcome:
        # §6 step 2: an event package we do not compose is 489 with Allow-Events.
        event = event_of(req)
        if event is None or event.package not in self._content_types:
            return PublishOutcome(489, headers=(("Allow-Events", self._allow_events),))
        if_match = req.headers.values("SIP-If-Match")
        if len(if_match) > 1:
            raise RemoteProtocolError("more than one SIP-If-Match", status=400)
        etag = if_match[0].strip() if if_match else None
        body = req.body
        expires_text = req.headers.get("Expires")
        requested = (
            self.default_expires
            if expires_text is None
            else fields.parse_int_header(expires_text, name="Expires")
        )

        # §6 step 3: the entity-tag must name state we hold for this resource and event.
        current: Publication | None = None
        if etag is not None:
            current = self._pubs.get(etag)
            if current is not None and current.expires_at <= now:
                self._expire(current)  # expired, even if handle_timer has not run yet
                current = None
            if current is None or (current.resource, current.event) != (
                resource,
                event.package,
            ):
                return PublishOutcome(412)
            if current.publisher != publisher:
                return PublishOutcome(403, "Entity-tag belongs to another publisher")
        elif not body:
            # An initial publication without state makes no sense (§6 step 3).
            return PublishOutcome(400, "Initial PUBLISH without a body")

        # §6 step 4: Expires.
        if 0 < requested < self.min_expires:
            return PublishOutcome(423, headers=(("Min-Expires", str(self.min_expires)),))
        granted = min(requested, self.max_expires)
        if granted == 0 and current is None:
            # "Removing" state that was never stored: nothing to keep, nothing to merge.
            return PublishOutcome(200, headers=(("Expires", "0"),))

        content_type = ""
        if body:
            # §6 step 5: the body must be a format the package defines (RFC 3261 §21.4.13).
            content_type = (req.headers.get("Content-Type") or "").split(";", 1)[0].strip()
            if content_type.lower() not in self._content_types[event.package]:
                return PublishOutcome(
                    415, headers=(("Accept", ", ".join(self._content_types[event.package])),)
                )

        if current is None:
            operation = _PO.INITIAL
        elif granted == 0:
            operation = _PO.REMOVE
        elif body:
            operation = _PO.MODIFY
        else:
            operation = _PO.REFRESH
        state = _PS.ABSENT if current is None else _PS.PUBLISHED
        action, _ = PUBLICATION_TABLE[(state, operation)]

        if action is _PA.DELETE:
            assert current is not None
            self._drop(current)
            change = PublicationChange(
                operation,
                resource,
                event.package,
                publisher,
                None,
                current.etag,
                current.body,
                current.content_type,
                now,
                removed=True,
            )
            # §6: a 2xx carries SIP-ETag and Expires; for a removal the tag names what
            # was removed (it can no longer be used: a later SIP-If-Match gets 412).
            return PublishOutcome(
                200, headers=(("SIP-ETag", current.etag), ("Expires", "0")), change=change
            )

        # §6 step 6: every successful refresh/modify/initial gets a *new* entity-tag,
        # so a stale SIP-If-Match from a lost response is detected (412).
        new_etag = self._etag_factory()
        if new_etag in self._pubs:
            raise LocalProtocolError("etag_factory returned an entity-tag in use")
        expires_at = now + granted
        old_etag: str | None = None
        if current is not None:
            old_etag = current.etag
            self._drop(current)
            if action is _PA.EXTEND:
                body, content_type = current.body, current.content_type
        pub = Publication(
            new_etag, resource, event.package, publisher, body, content_type, expires_at
        )
        self._pubs[new_etag] = pub
        self._by_resource.setdefault((resource, event.package), {})[new_etag] = None
        heapq.heappush(self._heap, (expires_at, new_etag))
        if len(self._heap) > 4 * len(self._pubs) + 1024:
            # Each modify leaves a stale heap entry behind; rebuild before they dominate.
            self._heap = [(p.expires_at, p.etag) for p in self._pubs.values()]
            heapq.heapify(self._heap)
        change = PublicationChange(
            operation,
            resource,
            event.package,
            publisher,
            new_etag,
            old_etag,
            body,
            content_type,
            expires_at,
            removed=False,
        )
        return PublishOutcome(
            200, headers=(("SIP-ETag", new_etag), ("Expires", str(granted))), change=change
        )

    # ------------------------------------------------------------------ timers

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap:
            at, etag = heap[0]
            pub = self._pubs.get(etag)
            if pub is not None and pub.expires_at == at:
                return at
            heapq.heappop(heap)
        return None

    def handle_timer(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            at, etag = heapq.heappop(heap)
            pub = self._pubs.get(etag)
            if pub is not None and pub.expires_at == at:
                self._expire(pub)

    # ------------------------------------------------------------------ internals

    def _expire(self, pub: Publication) -> None:
        action, _ = PUBLICATION_TABLE[(_PS.PUBLISHED, _PO.EXPIRE)]
        assert action is _PA.DELETE
        self._drop(pub)
        self._events.append(
            PublicationExpired(
                pub.resource, pub.event, pub.publisher, pub.etag, pub.body, pub.content_type
            )
        )

    def _drop(self, pub: Publication) -> None:
        del self._pubs[pub.etag]
        key = (pub.resource, pub.event)
        etags = self._by_resource[key]
        del etags[pub.etag]
        if not etags:
            del self._by_resource[key]


__all__ = [
    "PUBLICATION_TABLE",
    "Publication",
    "PublicationChange",
    "PublicationExpired",
    "PublicationState",
    "PublicationTable",
    "PublishOperation",
    "PublishOutcome",
]
