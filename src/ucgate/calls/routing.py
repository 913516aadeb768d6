"""Who is calling and where the call goes: pure decisions the B2BUA asks before any leg.

Nothing here does I/O or looks at a clock; inputs are the configuration and what the
B2BUA learnt from the request (source address, digest identity, Request-URI user part).

Who is calling (:func:`classify_caller`), in this order:

======================  ==============================  =========================  =========
digest identity         source IP in a trunk's          From user is an agent id   caller
                        ``allowed_ips``
======================  ==============================  =========================  =========
an agent id             any                             any                        AGENT
a trunk id              any                             any                        TRUNK
another account         any                             any                        UNKNOWN
none                    yes                             no                         TRUNK
none                    yes                             yes                        UNKNOWN
none                    no                              any                        UNKNOWN
======================  ==============================  =========================  =========

A digest identity wins over the address: it is the stronger proof. A request from a
trunk's address that claims to come from an agent is challenged rather than taken as the
trunk, so agents' phones sharing the PBX's host (NAT, the same test machine) can still
authenticate and dial out, while the PBX itself never claims agent ids. Overlapping
``allowed_ips`` go to the most specific network, then to the first trunk in config order.

Where it goes (:func:`route_call`):

=========  ==============================================  ============================
caller     dialled user part                               route
=========  ==============================================  ============================
UNKNOWN    any, no digest identity                         CHALLENGE (401)
UNKNOWN    any, with a digest identity (e.g. a wallboard)  REFUSED 403
TRUNK      one of our DIDs                                 the DID's agent or queue
TRUNK      anything else (an agent id, an outside number)  REFUSED 404
AGENT      another agent's id                              AGENT (agent to agent)
AGENT      its own id                                      REFUSED 403
AGENT      one of our DIDs                                 the DID's agent or queue
AGENT      a number a dial rule matches                    TRUNK (longest prefix)
AGENT      anything else                                   REFUSED 404
=========  ==============================================  ============================

Toll fraud. Only authenticated agents ever reach a trunk: a trunk call can only ring a
DID, so nothing arriving from a PBX (or from an address spoofing it) is relayed back out
("hairpin") or rings an agent the site did not publish as a DID. An agent dialling a
number no rule covers gets 404 rather than a guess.

Numbers are compared after removing RFC 3966 §5.1.1 visual separators (``-``, ``.``,
``(``, ``)``) and percent-decoding (RFC 3261 §19.1.4). A DID configured as ``+15550100``
also matches ``15550100``: PBXs often strip the ``+``. Dial rules match only as written,
so ``+1`` never matches ``1...`` (a national number is not an E.164 number).
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from urllib.parse import unquote

from ucgate.config import DialRule, Did, DidTargetKind, Trunk

__all__ = [
    "Caller",
    "CallerKind",
    "Route",
    "RouteKind",
    "agent_target",
    "classify_caller",
    "no_answer_status",
    "normalize_number",
    "route_call",
    "route_inbound",
    "route_outbound",
]

_VISUAL_SEPARATORS = re.compile(r"[-.()]")
_NUMBER = re.compile(r"^\+?[0-9]+$")


class CallerKind(enum.StrEnum):
    AGENT = "agent"
    TRUNK = "trunk"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Caller:
    kind: CallerKind
    # The agent or trunk id; for UNKNOWN the digest identity if there was one.
    id: str | None = None
    # TRUNK recognised by source address rather than digest.
    by_ip: bool = False

    @property
    def authenticated(self) -> bool:
        """Whether the B2BUA already holds a verified identity (digest or IP)."""
        return self.kind is not CallerKind.UNKNOWN or self.id is not None


class RouteKind(enum.StrEnum):
    AGENT = "agent"
    QUEUE = "queue"
    # Answered by ucgate for a session PIN, then queued to that session (id: the queue).
    PIN = "pin"
    TRUNK = "trunk"
    # Send a digest challenge (RFC 3261 §22.3: 401 from a UAS, which the B2BUA's a-leg is).
    CHALLENGE = "challenge"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class Route:
    kind: RouteKind
    # Agent, queue or trunk id.
    id: str | None = None
    # For CHALLENGE and REFUSED: the final response to send.
    status: int | None = None
    # Why, for logs and the call record (never a secret).
    reason: str = ""

    @classmethod
    def refused(cls, status: int, reason: str) -> Route:
        return cls(RouteKind.REFUSED, status=status, reason=reason)


def normalize_number(text: str) -> str | None:
    """``text`` as "+"/digits without visual separators, or None if it is no number."""
    cleaned = _VISUAL_SEPARATORS.sub("", unquote(text)).strip()
    return cleaned if _NUMBER.match(cleaned) else None


def agent_target(uri_user: str, agents: Collection[str]) -> str | None:
    """The agent id ``uri_user`` names, or None.

    User parts are compared case-sensitively after percent-decoding (RFC 3261 §19.1.4).
    """
    user = unquote(uri_user)
    return user if user in agents else None


def route_inbound(request_uri_user: str, *, dids: Sequence[Did], agents: Collection[str]) -> Route:
    """Where a call to ``request_uri_user`` (a DID) goes: AGENT, QUEUE or REFUSED 404.

    An agent DID whose agent is no longer configured is refused too (404): config
    validation prevents it, but a router built from stale data must not guess.
    """
    number = normalize_number(request_uri_user)
    if number is None:
        return Route.refused(404, "not a number")
    did = _find_did(number, dids)
    if did is None:
        return Route.refused(404, "no such DID")
    if did.target_kind is DidTargetKind.QUEUE:
        return Route(RouteKind.QUEUE, did.target_id, reason=f"did {did.number}")
    if did.target_kind is DidTargetKind.PIN:
        return Route(RouteKind.PIN, did.target_id, reason=f"did {did.number}")
    if did.target_id not in agents:
        return Route.refused(404, "DID target is not an agent")
    return Route(RouteKind.AGENT, did.target_id, reason=f"did {did.number}")


def _find_did(number: str, dids: Sequence[Did]) -> Did | None:
    plus = number if number.startswith("+") else "+" + number
    fallback: Did | None = None
    for did in dids:
        if did.number == number:
            return did
        if did.number == plus:
            fallback = did
    return fallback


def route_outbound(number: str, *, dial_rules: Sequence[DialRule]) -> str | None:
    """The trunk id of the longest dial-rule prefix ``number`` starts with, or None."""
    normalized = normalize_number(number)
    if normalized is None:
        return None
    best: DialRule | None = None
    for rule in dial_rules:
        if normalized.startswith(rule.prefix) and (
            best is None or len(rule.prefix) > len(best.prefix)
        ):
            best = rule
    return None if best is None else best.trunk


def classify_caller(
    source_ip: str,
    authenticated_user: str | None,
    trunks: Sequence[Trunk],
    agents: Collection[str],
    *,
    claimed_user: str | None = None,
) -> Caller:
    """Who sent the request (see the table in the module docstring).

    ``authenticated_user`` is the digest username the B2BUA verified (None when the
    request carried no valid credentials); ``claimed_user`` is the From user part.
    """
    if authenticated_user is not None:
        if authenticated_user in agents:
            return Caller(CallerKind.AGENT, authenticated_user)
        if any(t.id == authenticated_user for t in trunks):
            return Caller(CallerKind.TRUNK, authenticated_user)
        return Caller(CallerKind.UNKNOWN, authenticated_user)
    if claimed_user is not None and unquote(claimed_user) in agents:
        return Caller(CallerKind.UNKNOWN)
    trunk = _trunk_by_ip(source_ip, trunks)
    if trunk is not None:
        return Caller(CallerKind.TRUNK, trunk, by_ip=True)
    return Caller(CallerKind.UNKNOWN)


def _trunk_by_ip(source_ip: str, trunks: Sequence[Trunk]) -> str | None:
    try:
        address = ipaddress.ip_address(source_ip.strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d.
        address = address.ipv4_mapped
    best: tuple[int, str] | None = None
    for trunk in trunks:
        for text in trunk.allowed_ips:
            network = ipaddress.ip_network(text)
            inside = address.version == network.version and address in network
            if inside and (best is None or network.prefixlen > best[0]):
                best = (network.prefixlen, trunk.id)
    return None if best is None else best[1]


def route_call(
    caller: Caller,
    dialled_user: str,
    *,
    dids: Sequence[Did],
    dial_rules: Sequence[DialRule],
    agents: Collection[str],
) -> Route:
    """The whole decision for a new INVITE (see the table in the module docstring)."""
    if caller.kind is CallerKind.UNKNOWN:
        if caller.id is None:
            return Route(RouteKind.CHALLENGE, status=401, reason="caller not authenticated")
        return Route.refused(403, "account may not place calls")
    if caller.kind is CallerKind.TRUNK:
        # Only DIDs: never an agent by AOR, never back out through a trunk.
        return route_inbound(dialled_user, dids=dids, agents=agents)
    callee = agent_target(dialled_user, agents)
    if callee is not None:
        if callee == caller.id:
            return Route.refused(403, "calling oneself")
        return Route(RouteKind.AGENT, callee, reason="agent to agent")
    number = normalize_number(dialled_user)
    if number is None:
        return Route.refused(404, "no such user")
    inside = route_inbound(number, dids=dids, agents=agents)
    if inside.kind is not RouteKind.REFUSED:
        if inside.kind is RouteKind.AGENT and inside.id == caller.id:
            return Route.refused(403, "calling oneself")
        return inside
    trunk = route_outbound(number, dial_rules=dial_rules)
    if trunk is None:
        return Route.refused(404, "no dial rule")
    return Route(RouteKind.TRUNK, trunk, reason="dial rule")


def no_answer_status(*, any_device_rang: bool) -> int:
    """Final response for a call that hit ``calls.ring_timeout`` unanswered.

    480 Temporarily Unavailable when a device was alerting (RFC 3261 §21.4.18: the
    callee's end system was contacted but is not answering); 408 Request Timeout when no
    device sent any provisional response (§21.4.9).
    """
    return 480 if any_device_rang else 408
