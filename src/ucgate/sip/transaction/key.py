"""Transaction identity: which transaction a message belongs to (RFC 3261 §17.1.3, §17.2.3).

A key is never "method + CSeq": RFC 3261 elements are told apart by the Via branch, which
starts with the magic cookie ``z9hG4bK`` (§8.1.1.7). Requests from RFC 2543 elements carry
no such branch, so their server key falls back to the fields §17.2.3 lists (Request-URI,
To tag, From tag, Call-ID, CSeq number, top Via), the case RFC 4475 §3.4 ("inv2543")
exercises.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from ucgate.sip.errors import RemoteProtocolError
from ucgate.sip.fields import Via, call_id, cseq, from_, to, top_via
from ucgate.sip.message import Request, Response

MAGIC_COOKIE = "z9hG4bK"

# RFC 3261 §18.2.1 / RFC 3581 §4: parameters the receiving transport adds to the top Via;
# they must not change which transaction a retransmission belongs to.
_TRANSPORT_PARAMS = frozenset({"received", "rport"})


class Side(enum.Enum):
    """Client and server keys never collide, even when a UA sends a request to itself."""

    CLIENT = "client"
    SERVER = "server"


@dataclass(frozen=True, slots=True)
class TxKey:
    """Identity of one transaction.

    ``method`` is the method that created the transaction (an ACK is looked up under
    INVITE, §17.2.3). ``legacy`` holds the RFC 2543 matching fields when ``branch`` lacks
    the magic cookie; it is empty otherwise.
    """

    side: Side
    method: str
    branch: str
    sent_by: str = ""
    legacy: tuple[str, ...] = ()

    @property
    def rfc2543(self) -> bool:
        return bool(self.legacy)

    def with_method(self, method: str) -> TxKey:
        return replace(self, method=method)


def default_port(transport: str) -> int:
    """RFC 3261 §18.2.2 / §19.1.2: 5061 for TLS (and WSS), 5060 otherwise."""
    return 5061 if transport.upper() in ("TLS", "WSS") else 5060


def sent_by(via: Via) -> str:
    """Normalised ``host:port`` of a Via, the default port filled in (§18.2.2)."""
    port = via.port if via.port is not None else default_port(via.transport)
    return f"{via.host.lower()}:{port}"


def _legacy_via(via: Via) -> str:
    params = sorted(
        (name.lower(), value or "")
        for name, value in via.params
        if name.lower() not in _TRANSPORT_PARAMS
    )
    return f"{via.transport.upper()} {sent_by(via)} {params}"


def server_key(request: Request, *, to_tag: str | None = None, via: Via | None = None) -> TxKey:
    """Key of the server transaction ``request`` belongs to (§17.2.3).

    ``to_tag`` overrides the request's To tag in the RFC 2543 fallback: an INVITE server
    transaction registers the key its ACK will carry (tag of the response it sent).
    ``via`` is the already parsed top Via, when the caller has it.
    Raises RemoteProtocolError (400) when Via, CSeq, From, To or Call-ID are unreadable.
    """
    if via is None:
        via = top_via(request)
    method = "INVITE" if request.method == "ACK" else request.method
    branch = via.branch or ""
    if branch.startswith(MAGIC_COOKIE):
        return TxKey(Side.SERVER, method, branch, sent_by(via))
    seq = cseq(request)
    legacy = (
        request.uri.strip(),
        (to(request).tag or "") if to_tag is None else to_tag,
        from_(request).tag or "",
        call_id(request),
        str(seq.seq),
        _legacy_via(via),
    )
    return TxKey(Side.SERVER, method, branch, sent_by(via), legacy)


def client_key(message: Request | Response, *, via: Via | None = None) -> TxKey:
    """Key of the client transaction: top Via branch and CSeq method (§17.1.3)."""
    if via is None:
        via = top_via(message)
    if not via.branch:
        raise RemoteProtocolError("top Via has no branch", None)
    method = message.method if isinstance(message, Request) else cseq(message).method
    return TxKey(Side.CLIENT, method, via.branch)
