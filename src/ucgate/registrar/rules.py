"""Binding rules of a registrar (RFC 3261 §10.3 steps 6-8, RFC 5626 §6), as pure functions.

The service hands :func:`apply_register` the AOR's live bindings and gets the new list
back, or a :class:`RegisterRejected` carrying the status to answer. No I/O happens here:
the location store runs this function inside its atomic read-modify-write, so the same
rules hold on one node and on many sharing Redis.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ucgate.sip.errors import RemoteProtocolError
from ucgate.sip.fields import NameAddr, parse_name_addr
from ucgate.sip.message import Request
from ucgate.sip.uri import SipUri, parse_uri, uri_equal
from ucgate.store.location import Binding


class RegisterRejected(RemoteProtocolError):
    """A REGISTER the rules refuse; ``headers`` are added to the error response."""

    def __init__(self, reason: str, status: int, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(reason, status)
        self.headers = headers


@dataclass(frozen=True, slots=True)
class RegistrarPolicy:
    """Operator limits (config ``[registrar]``)."""

    min_expires: int = 60
    max_expires: int = 3600
    default_expires: int = 3600
    max_contacts: int = 10


@dataclass(frozen=True, slots=True)
class ContactRequest:
    """One Contact of a REGISTER with its effective expiry already decided."""

    uri: str
    expires: int
    q: float
    instance_id: str | None
    reg_id: int | None


@dataclass(frozen=True, slots=True)
class RegisterContext:
    """What the rules need besides the Contacts: identity of the request and its origin."""

    aor: str
    call_id: str
    cseq: int
    source: str
    flow: str | None
    node_id: str
    user_agent: str | None
    path: tuple[str, ...]


WILDCARD = "*"


def _parse_expires(text: str, what: str) -> int:
    text = text.strip()
    if not text.isdigit():
        raise RemoteProtocolError(f"{what} is not a number of seconds", 400)
    # §20.19: values above 2**32-1 are clamped; we clamp later to max_expires anyway.
    return min(int(text), 2**32 - 1)


def _parse_q(value: str | None) -> float:
    if value is None:
        return 1.0
    try:
        q = float(value)
    except ValueError:
        raise RemoteProtocolError("Contact q-value is not a number", 400) from None
    if not 0.0 <= q <= 1.0:  # §20.10: qvalue is 0 to 1
        raise RemoteProtocolError("Contact q-value out of range", 400)
    return q


def parse_contacts(req: Request, policy: RegistrarPolicy) -> list[ContactRequest] | str:
    """Read the Contacts of a REGISTER; returns WILDCARD for ``Contact: *``.

    An empty list means a query (§10.3 step 6: no Contact, just list the bindings).
    """
    values = req.headers.values("Contact")
    header_expires: int | None = None
    raw_expires = req.headers.get("Expires")
    if raw_expires is not None:
        header_expires = _parse_expires(raw_expires, "Expires")
    if any(v.strip() == WILDCARD for v in values):
        # §10.2.2: "*" only alone and only with Expires: 0.
        if len(values) != 1 or header_expires != 0:
            raise RemoteProtocolError("Contact: * needs Expires: 0 and no other Contact", 400)
        return WILDCARD
    out: list[ContactRequest] = []
    for value in values:
        na: NameAddr = parse_name_addr(value)
        if not isinstance(na.uri, SipUri):
            # We only route to SIP contacts; tel:/mailto: bindings are useless to a B2BUA.
            raise RemoteProtocolError("Contact must be a sip: or sips: URI", 400)
        exp_param = na.param("expires")
        if exp_param is not None:
            expires = _parse_expires(exp_param, "Contact expires")
        elif header_expires is not None:
            expires = header_expires
        else:
            expires = policy.default_expires
        if 0 < expires < policy.min_expires:
            # §10.3 step 7: 423 with Min-Expires.
            raise RegisterRejected(
                "Interval Too Brief", 423, (("Min-Expires", str(policy.min_expires)),)
            )
        expires = min(expires, policy.max_expires)
        instance = na.param("+sip.instance")
        reg_id_raw = na.param("reg-id")
        reg_id: int | None = None
        if reg_id_raw is not None:
            if not reg_id_raw.isdigit():
                raise RemoteProtocolError("reg-id is not a number", 400)
            reg_id = int(reg_id_raw)
        out.append(
            ContactRequest(
                uri=str(na.uri),
                expires=expires,
                q=_parse_q(na.param("q")),
                instance_id=instance.strip('"') if instance else None,
                reg_id=reg_id,
            )
        )
    return out


def _same_contact(binding: Binding, contact: ContactRequest) -> bool:
    # RFC 5626 §6: a binding with the same instance-id and reg-id is the same flow of the
    # same device even if its Contact URI changed (new port after a reboot or NAT rebind);
    # replacing it, rather than adding a second row, is what keeps stale devices from
    # ringing. Without instance-id the §10.3 step 7 URI comparison decides.
    if contact.instance_id is not None and binding.instance_id == contact.instance_id:
        return binding.reg_id == contact.reg_id
    try:
        return uri_equal(parse_uri(binding.contact), parse_uri(contact.uri))
    except RemoteProtocolError:
        return binding.contact == contact.uri


def _check_order(binding: Binding, ctx: RegisterContext) -> None:
    # §10.3 steps 6/7: same Call-ID with a CSeq not higher than the stored one is an
    # out-of-order (or replayed) request; it must not change anything.
    if binding.call_id == ctx.call_id and ctx.cseq <= binding.cseq:
        raise RegisterRejected("Out of order REGISTER", 500, (("Retry-After", "1"),))


def apply_register(
    current: list[Binding],
    contacts: list[ContactRequest] | str,
    ctx: RegisterContext,
    policy: RegistrarPolicy,
    now: float,
) -> list[Binding]:
    """Return the AOR's bindings after this REGISTER (§10.3 steps 6-8)."""
    if contacts == WILDCARD:
        for b in current:
            _check_order(b, ctx)
        return []
    assert not isinstance(contacts, str)
    result = list(current)
    for contact in contacts:
        match = next((b for b in result if _same_contact(b, contact)), None)
        if match is not None:
            _check_order(match, ctx)
            result.remove(match)
            if contact.expires == 0:
                continue
            result.append(
                replace(
                    match,
                    contact=contact.uri,
                    expires_at=now + contact.expires,
                    q=contact.q,
                    call_id=ctx.call_id,
                    cseq=ctx.cseq,
                    source=ctx.source,
                    flow=ctx.flow,
                    node_id=ctx.node_id,
                    instance_id=contact.instance_id,
                    reg_id=contact.reg_id,
                    user_agent=ctx.user_agent,
                    path=ctx.path,
                )
            )
        elif contact.expires > 0:
            result.append(
                Binding(
                    aor=ctx.aor,
                    contact=contact.uri,
                    expires_at=now + contact.expires,
                    q=contact.q,
                    call_id=ctx.call_id,
                    cseq=ctx.cseq,
                    source=ctx.source,
                    flow=ctx.flow,
                    node_id=ctx.node_id,
                    instance_id=contact.instance_id,
                    reg_id=contact.reg_id,
                    user_agent=ctx.user_agent,
                    path=ctx.path,
                    registered_at=now,
                )
            )
    if len(result) > policy.max_contacts:
        # A misconfigured phone re-registering from ever-new ports must not grow an AOR
        # without bound; Kamailio answers 503 here, we say why with 403.
        raise RegisterRejected("Too many contacts for this address", 403)
    result.sort(key=lambda b: -b.q)
    return result


def contact_header_values(bindings: list[Binding], now: float) -> list[str]:
    """Contact values for the 200 OK: every current binding with its remaining expiry."""
    out = []
    for b in bindings:
        remaining = max(0, int(b.expires_at - now + 0.5))
        value = f"<{b.contact}>;expires={remaining}"
        if b.q != 1.0:
            value += f";q={b.q:g}"
        if b.instance_id is not None:
            value += f';+sip.instance="{b.instance_id}"'
        if b.reg_id is not None:
            value += f";reg-id={b.reg_id}"
        out.append(value)
    return out
