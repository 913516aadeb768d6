"""UAS request checks (RFC 3261 §8.2.1-8.2.3, §16.3 items 1-3) and response building.

``check_request`` answers the question "may this request go up to the transaction user?"
with either None or the exact response to send. ``make_response`` implements §8.2.6.2
and is shared by every layer that answers a request (transactions, registrar, B2BUA).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from ucgate.sip import fields
from ucgate.sip.errors import RemoteProtocolError
from ucgate.sip.message import Headers, Request, Response, split_list
from ucgate.sip.parser import validate_request
from ucgate.sip.uri import parse_uri

REASON_PHRASES: dict[int, str] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    199: "Early Dialog Terminated",
    200: "OK",
    202: "Accepted",
    204: "No Notification",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    412: "Conditional Request Failed",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    417: "Unknown Resource-Priority",
    420: "Bad Extension",
    421: "Extension Required",
    422: "Session Interval Too Small",
    423: "Interval Too Brief",
    424: "Bad Location Information",
    428: "Use Identity Header",
    429: "Provide Referrer Identity",
    430: "Flow Failed",
    433: "Anonymity Disallowed",
    436: "Bad Identity-Info",
    437: "Unsupported Certificate",
    438: "Invalid Identity Header",
    439: "First Hop Lacks Outbound Support",
    440: "Max-Breadth Exceeded",
    469: "Bad Info Package",
    470: "Consent Needed",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    489: "Bad Event",
    491: "Request Pending",
    493: "Undecipherable",
    494: "Security Agreement Required",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    555: "Push Notification Service Not Supported",
    580: "Precondition Failure",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
    607: "Unwanted",
    608: "Rejected",
}

# Methods with an RFC behind them; anything else is "unknown" and gets 501 (§8.2.1).
KNOWN_METHODS = frozenset(
    {
        "INVITE",
        "ACK",
        "BYE",
        "CANCEL",
        "OPTIONS",
        "REGISTER",
        "SUBSCRIBE",
        "NOTIFY",
        "PUBLISH",
        "REFER",
        "INFO",
        "UPDATE",
        "MESSAGE",
        "PRACK",
    }
)

# Requests whose answer would carry a session description, so an Accept header that
# excludes every type we produce means 406 (§8.2.3, RFC 4475 §3.3.15 sdp01).
_BODY_ANSWERING_METHODS = frozenset({"INVITE", "OPTIONS", "UPDATE"})

_HEADERS_COPIED = ("Via", "From", "Call-ID", "CSeq")


def reason_phrase(status: int) -> str:
    if status in REASON_PHRASES:
        return REASON_PHRASES[status]
    return REASON_PHRASES.get(status // 100 * 100, "Unknown")


def stateless_to_tag(req: Request) -> str:
    """A To tag that is the same for every retransmission of ``req`` (§8.2.7)."""
    h = hashlib.sha1(usedforsecurity=False)
    for name in ("Via", "Call-ID", "CSeq", "From"):
        h.update((req.headers.get(name) or "").encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def make_response(
    req: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    extra_headers: Iterable[tuple[str, str]] = (),
) -> Response:
    """Build a response to ``req`` following §8.2.6.2.

    Via, From, Call-ID and CSeq are copied verbatim (all Via fields, in order); To is
    copied and, for any status above 100 when the request had no To tag, gets
    ``to_tag`` or, when None, the deterministic :func:`stateless_to_tag`. Works on
    partial requests from :class:`ucgate.sip.parser.MalformedRequest` too: whatever is
    missing is simply not copied.
    """
    headers = Headers()
    for name in ("Via", "From"):
        for value in req.headers.get_all(name):
            headers.add(name, value)
    to_lines = req.headers.get_all("To")
    if to_lines:
        to_value = to_lines[0]
        if status > 100:
            try:
                has_tag = fields.parse_name_addr(to_value).tag is not None
            except RemoteProtocolError:
                has_tag = True  # unparsable: echo it untouched rather than make it worse
            if not has_tag:
                to_value = f"{to_value};tag={to_tag or stateless_to_tag(req)}"
        headers.add("To", to_value)
    for name in ("Call-ID", "CSeq"):
        for value in req.headers.get_all(name)[:1]:
            headers.add(name, value)
    if status == 100:
        # §8.2.6.1: a 100 echoes the request's Timestamp.
        for value in req.headers.get_all("Timestamp")[:1]:
            headers.add("Timestamp", value)
    for name, value in extra_headers:
        headers.add(name, value)
    return Response(status, reason or reason_phrase(status), headers)


def _media_type(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


def _accepts(accept_values: list[str], offered: frozenset[str]) -> bool:
    for entry in accept_values:
        wanted = _media_type(entry)
        if wanted == "*/*":
            return True
        kind, _, sub = wanted.partition("/")
        for have in offered:
            have_kind, _, have_sub = have.partition("/")
            if kind == have_kind and (sub in ("*", have_sub)):
                return True
    return False


def check_request(
    req: Request,
    *,
    allowed_methods: frozenset[str],
    supported_extensions: frozenset[str],
    accepted_content_types: frozenset[str],
    is_proxying: bool = False,
    uri_schemes: frozenset[str] = frozenset({"sip", "sips", "tel"}),
) -> Response | None:
    """Return the response that refuses ``req``, or None when it may proceed.

    ``tel:`` Request-URIs pass by default: gateways and SIP trunks send them and the
    routing layer, not this one, decides what they mean (RFC 3966). ACK is never
    answered (§17.1.1.3): a bad ACK raises ``RemoteProtocolError(status=None)``.
    """
    try:
        validate_request(req)
    except RemoteProtocolError as exc:
        if req.method == "ACK":
            raise RemoteProtocolError(exc.reason, status=None) from None
        return make_response(req, exc.status or 400, extra_headers=[("Warning", _warning(exc))])
    if req.method == "ACK":
        return None
    allow = ", ".join(sorted(allowed_methods))
    # §8.2.1: known-but-not-allowed is 405 with Allow; unknown is 501.
    if req.method not in allowed_methods:
        status = 405 if req.method in KNOWN_METHODS else 501
        return make_response(req, status, extra_headers=[("Allow", allow)])
    # §8.2.2.1: Request-URI scheme.
    uri = parse_uri(req.uri)
    if uri.scheme not in uri_schemes:
        return make_response(req, 416)
    # §16.3 item 3: a request to forward with Max-Forwards 0 gets 483.
    if is_proxying:
        max_forwards = req.headers.get("Max-Forwards")
        if max_forwards is not None and int(max_forwards.strip()) == 0:
            return make_response(req, 483)
    # §8.2.2.3: unknown Require gets 420 (never for CANCEL). Proxy-Require is for proxies
    # only (§16.3 item 4); a UAS ignores it.
    if req.method != "CANCEL":
        names = ["Require", "Proxy-Require"] if is_proxying else ["Require"]
        supported = {e.lower() for e in supported_extensions}
        unsupported: list[str] = []
        for name in names:
            for tag in req.headers.values(name):
                if tag.lower() not in supported and tag not in unsupported:
                    unsupported.append(tag)
        if unsupported:
            return make_response(req, 420, extra_headers=[("Unsupported", ", ".join(unsupported))])
    accepted = frozenset(t.lower() for t in accepted_content_types)
    # §8.2.3: content we cannot process gets 415 with what we do accept.
    if req.body:
        ctype = req.headers.get("Content-Type")
        if ctype is None:
            return make_response(req, 400, "Missing Content-Type")  # §7.4.1
        if _media_type(ctype) not in accepted:
            return make_response(req, 415, extra_headers=[("Accept", ", ".join(sorted(accepted)))])
        encodings = [e.lower() for e in req.headers.values("Content-Encoding")]
        if any(e != "identity" for e in encodings):
            return make_response(req, 415, extra_headers=[("Accept-Encoding", "identity")])
    # An empty Accept formally means "no body" (§20.1); we do not refuse on it because
    # answers without a body are still possible.
    accept_lines = [v for line in req.headers.get_all("Accept") for v in split_list(line)]
    if (
        req.method in _BODY_ANSWERING_METHODS
        and accept_lines
        and not _accepts(accept_lines, accepted)
    ):
        return make_response(req, 406, extra_headers=[("Accept", ", ".join(sorted(accepted)))])
    return None


def _warning(exc: RemoteProtocolError) -> str:
    # §20.43: 399 is the miscellaneous warning; the text helps peers debug their stack.
    text = exc.reason.replace("\\", "").replace('"', "'")[:120]
    return f'399 ucgate "{text}"'
