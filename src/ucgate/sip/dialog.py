"""SIP dialogs (RFC 3261 §12): the state two user agents share, and in-dialog requests.

A :class:`Dialog` is plain data plus the three §12 procedures a usage needs: create it
(UAS side from the dialog-creating request, §12.1.1; UAC side from the response,
§12.1.2), build a request inside it (§12.2.1.1) and accept one from the peer
(§12.2.2). It sends nothing; the transaction layer adds the Via and carries the
request, and :func:`next_hop` tells the caller where that request goes first.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ucgate.sip import fields
from ucgate.sip.errors import LocalProtocolError, RemoteProtocolError
from ucgate.sip.fields import NameAddr
from ucgate.sip.message import Headers, Request, Response
from ucgate.sip.uri import SipUri, parse_uri

# Requests whose Contact replaces the remote target (§12.2, RFC 6665 §4.1.2 / §4.2.1.2
# make SUBSCRIBE and NOTIFY target refresh requests, RFC 3311 UPDATE, RFC 3515 REFER).
TARGET_REFRESH_METHODS = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"})

# §20.16 Max-Forwards: "SHOULD be 70".
MAX_FORWARDS = 70

DialogId = tuple[str, str, str | None]


def _single_contact(msg: Request | Response, what: str) -> str:
    """The one Contact URI a dialog-creating message must carry (§12.1.1, §12.1.2)."""
    found = fields.contacts(msg)
    if isinstance(found, fields.Star) or len(found) != 1:
        # RFC 6665 §4.1.1 / §3.1.1: SUBSCRIBE and NOTIFY carry exactly one Contact.
        raise RemoteProtocolError(f"{what} needs exactly one Contact", status=400)
    return str(found[0].uri)


def _strip_tag(addr: NameAddr) -> NameAddr:
    if addr.tag is None:
        return addr
    return NameAddr(addr.display_name, addr.uri, tuple(p for p in addr.params if p[0] != "tag"))


def _route_uris(values: Iterable[str]) -> tuple[str, ...]:
    # §12.1.1: "the list of URIs in the Record-Route header field ... preserving all URI
    # parameters"; header parameters of the Record-Route value are not part of the URI.
    return tuple(str(fields.parse_name_addr(v).uri) for v in values)


def _is_loose(route_uri: str) -> bool:
    uri = parse_uri(route_uri)
    return isinstance(uri, SipUri) and uri.has_param("lr")


def _as_request_uri(route_uri: str) -> str:
    # §12.2.1.1 strict routing: the first route becomes the Request-URI "stripped of any
    # parameters that are not allowed in a Request-URI" (§19.1.1 table: method, headers).
    uri = parse_uri(route_uri)
    if not isinstance(uri, SipUri):
        return route_uri
    return str(uri.without_params("method").replace(headers=()))


@dataclass(slots=True)
class Dialog:
    """One dialog as seen from our side (§12: local/remote tag, URIs, target, route set).

    ``local_seq`` 0 means "empty" (§12.1.1 for a UAS); the first request we build uses 1.
    ``remote_tag`` is None only for an RFC 2543 peer that sent no From tag (§12.1.1).
    """

    call_id: str
    local_tag: str
    remote_tag: str | None
    local_uri: NameAddr
    remote_uri: NameAddr
    remote_target: str
    route_set: tuple[str, ...] = ()
    local_seq: int = 0
    remote_seq: int | None = None
    secure: bool = False
    # Rendered Request-URI, Route/To/From values and the inputs they came from: a
    # notifier fans one change out to many dialogs, and these never change between
    # target refreshes, so each NOTIFY reuses them instead of re-serialising URIs.
    _rendered: tuple[tuple[object, ...], str, tuple[str, ...], str, str] | None = field(
        default=None, repr=False, compare=False
    )

    @classmethod
    def from_request(cls, req: Request, local_tag: str, *, over_tls: bool = False) -> Dialog:
        """UAS side (§12.1.1), created when we answer ``req`` with a 2xx carrying
        ``local_tag`` in its To."""
        if not local_tag:
            raise LocalProtocolError("a dialog needs a non-empty local tag")
        target = _single_contact(req, req.method)
        remote = fields.from_(req)
        request_uri = parse_uri(req.uri)
        return cls(
            call_id=fields.call_id(req),
            local_tag=local_tag,
            remote_tag=remote.tag,
            local_uri=_strip_tag(fields.to(req)),
            remote_uri=_strip_tag(remote),
            remote_target=target,
            route_set=_route_uris(req.headers.values("Record-Route")),
            remote_seq=fields.cseq(req).seq,
            # §12.1.1: secure iff the request came over TLS with a SIPS Request-URI.
            secure=over_tls and request_uri.scheme.lower() == "sips",
        )

    @classmethod
    def from_response(cls, req: Request, resp: Response) -> Dialog:
        """UAC side (§12.1.2) from our request and a 2xx/101-199 that carries a To tag."""
        remote = fields.to(resp)
        local = fields.from_(req)
        if remote.tag is None:
            raise RemoteProtocolError("dialog-creating response without a To tag", status=None)
        if local.tag is None:
            raise LocalProtocolError("our request had no From tag")
        return cls(
            call_id=fields.call_id(req),
            local_tag=local.tag,
            remote_tag=remote.tag,
            local_uri=_strip_tag(local),
            remote_uri=_strip_tag(remote),
            remote_target=_single_contact(resp, "response"),
            # §12.1.2: the response's Record-Route in *reverse* order.
            route_set=tuple(reversed(_route_uris(resp.headers.values("Record-Route")))),
            local_seq=fields.cseq(req).seq,
            secure=parse_uri(req.uri).scheme.lower() == "sips",
        )

    @property
    def id(self) -> DialogId:
        """(Call-ID, local tag, remote tag), §12: what identifies the dialog here."""
        return (self.call_id, self.local_tag, self.remote_tag)

    def matches(self, req: Request) -> bool:
        """True when ``req`` (from the peer) belongs to this dialog (§12.2.2)."""
        try:
            return (
                fields.call_id(req) == self.call_id
                and fields.to(req).tag == self.local_tag
                and fields.from_(req).tag == self.remote_tag
            )
        except RemoteProtocolError:
            return False

    def create_request(
        self,
        method: str,
        *,
        body: bytes = b"",
        content_type: str | None = None,
        extra_headers: Iterable[tuple[str, str]] = (),
    ) -> Request:
        """A new in-dialog request (§12.2.1.1), without Via (the transaction layer adds it)
        and without Contact (the caller knows which of our addresses the peer reaches)."""
        if method in ("ACK", "CANCEL"):
            # ACK reuses the INVITE's CSeq number (§13.2.2.4) and CANCEL copies its request
            # (§9.1): neither is a new request of the dialog.
            raise LocalProtocolError(f"{method} is not built by Dialog.create_request")
        if body and content_type is None:
            raise LocalProtocolError("a body needs a Content-Type (§7.4.1)")
        if self.local_seq >= fields.MAX_CSEQ:
            raise LocalProtocolError("local CSeq exhausted (§8.1.1.5: below 2**31)")
        self.local_seq += 1

        request_uri, routes, to_value, from_value = self._render()
        headers = Headers()
        for route in routes:
            headers.add("Route", route)
        headers.add("To", to_value)
        headers.add("From", from_value)
        headers.add("Call-ID", self.call_id)
        headers.add("CSeq", f"{self.local_seq} {method}")
        headers.add("Max-Forwards", str(MAX_FORWARDS))
        for name, value in extra_headers:
            headers.add(name, value)
        if content_type is not None:
            headers.add("Content-Type", content_type)
        return Request(method, request_uri, headers, body)

    def _render(self) -> tuple[str, tuple[str, ...], str, str]:
        cached = self._rendered
        if cached is not None:
            t, r, lu, lt, ru, rt = cached[0]
            if (
                t is self.remote_target
                and r is self.route_set
                and lu is self.local_uri
                and lt is self.local_tag
                and ru is self.remote_uri
                and rt is self.remote_tag
            ):
                return cached[1], cached[2], cached[3], cached[4]
        inputs = (
            self.remote_target,
            self.route_set,
            self.local_uri,
            self.local_tag,
            self.remote_uri,
            self.remote_tag,
        )
        request_uri = self.remote_target
        routes = list(self.route_set)
        if routes and not _is_loose(routes[0]):
            # Strict-routing next hop (RFC 2543 proxy): it gets the Request-URI and the
            # remote target travels as the last Route (§12.2.1.1).
            request_uri = _as_request_uri(routes[0])
            routes = [*routes[1:], self.remote_target]
        remote = self.remote_uri
        if self.remote_tag is not None:
            remote = remote.with_tag(self.remote_tag)
        rendered = (
            request_uri,
            tuple(f"<{route}>" for route in routes),
            str(remote),
            str(self.local_uri.with_tag(self.local_tag)),
        )
        self._rendered = (inputs, *rendered)
        return rendered

    def check_in_dialog_request(self, req: Request) -> None:
        """Accept a request from the peer inside this dialog (§12.2.2).

        Raises ``RemoteProtocolError(500)`` when its CSeq is lower than the last one seen
        (out of order), 400 when a target refresh carries a bad Contact. The dialog is
        changed only when every check passed.
        """
        seq = fields.cseq(req).seq
        if self.remote_seq is not None and seq < self.remote_seq:
            raise RemoteProtocolError(
                f"CSeq {seq} below {self.remote_seq}: out of order", status=500
            )
        new_target: str | None = None
        if req.method in TARGET_REFRESH_METHODS and "Contact" in req.headers:
            new_target = _single_contact(req, req.method)
        self.remote_seq = seq
        if new_target is not None:
            self.remote_target = new_target


def next_hop(dialog: Dialog) -> str:
    """The URI an in-dialog request goes to first: the first route, or the remote target.

    With loose routing that is the first Route; with strict routing it is the
    Request-URI, which is that same first route (§12.2.1.1, §8.1.2).
    """
    if dialog.route_set:
        return dialog.route_set[0]
    return dialog.remote_target


def create_ack(
    dialog: Dialog,
    cseq_number: int,
    *,
    body: bytes = b"",
    content_type: str | None = None,
    extra_headers: Iterable[tuple[str, str]] = (),
) -> Request:
    """The ACK for a 2xx to our INVITE with CSeq ``cseq_number`` (§13.2.2.4): built like
    any in-dialog request (route set, remote target) but with the INVITE's CSeq number
    and without consuming a local sequence number. No Via: the transaction layer adds a
    fresh branch, the ACK for a 2xx being a transaction of its own (§17.1.1.3)."""
    if body and content_type is None:
        raise LocalProtocolError("a body needs a Content-Type (§7.4.1)")
    request_uri, routes, to_value, from_value = dialog._render()
    headers = Headers()
    for route in routes:
        headers.add("Route", route)
    headers.add("To", to_value)
    headers.add("From", from_value)
    headers.add("Call-ID", dialog.call_id)
    headers.add("CSeq", f"{cseq_number} ACK")
    headers.add("Max-Forwards", str(MAX_FORWARDS))
    for name, value in extra_headers:
        headers.add(name, value)
    if content_type is not None:
        headers.add("Content-Type", content_type)
    return Request("ACK", request_uri, headers, body)
