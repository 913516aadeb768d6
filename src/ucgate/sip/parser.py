"""Bytes to :class:`Request`/:class:`Response` (RFC 3261 §7, §18.3, §25; RFC 4475).

``parse_message`` handles one datagram or one message already framed by
:class:`ucgate.sip.framing.StreamFramer`. It checks only what it needs to build the
model (start line, header-field syntax, Content-Length); ``validate_request`` /
``validate_response`` then check the mandatory headers and their values, so that a
request that is broken *inside* a header still produces a model the endpoint can answer
400 to (§8.2, §16.3).

Failure modes, chosen so that the caller never needs ``except Exception``:

* not a SIP message at all, or any broken response: ``RemoteProtocolError(status=None)``
  (drop; nobody to answer, §18.1.2);
* a broken request: :class:`MalformedRequest` carrying the status (400, 505) and, when
  the header block could be read, a best-effort ``partial`` request for a stateless reply.
"""

from __future__ import annotations

import re

from ucgate.sip import fields
from ucgate.sip.errors import RemoteProtocolError
from ucgate.sip.message import Headers, Request, Response
from ucgate.sip.uri import SipUri, parse_uri

DEFAULT_MAX_SIZE = 65535  # largest UDP payload; also our stream cap (§18.1.1)
DEFAULT_MAX_HEADERS = 256
DEFAULT_MAX_LINE = 8192

_TOKEN_RE = fields.TOKEN_RE
_HEAD_END_RE = re.compile(rb"\r?\n\r?\n")
_VERSION_RE = re.compile(r"SIP/\d{1,3}\.\d{1,3}", re.IGNORECASE)
_STATUS_RE = re.compile(r"[1-6]\d\d")
# TEXT-UTF8 plus HTAB; controls other than HTAB are not legal in header values (§25.1).
_CTL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# ...except as a quoted-pair inside a quoted-string (RFC 4475 §3.1.1.2 intmeth: NUL, BEL).
_QUOTED_PAIR_RE = re.compile(r"\\[\x00-\x09\x0b\x0c\x0e-\x7f]")

# Headers that may appear at most once (§20; RFC 4475 §3.3.8 multi01, §3.3.9 mcl01).
SINGLE_VALUED = (
    "To",
    "From",
    "Call-ID",
    "CSeq",
    "Max-Forwards",
    "Content-Length",
    "Content-Type",
    "Expires",
    "Min-Expires",
    "Date",
    "Content-Disposition",
    "MIME-Version",
    "Reply-To",
    "Subject",
    "Timestamp",
    "RSeq",
    "RAck",
    "Event",
    "Refer-To",
    "Session-Expires",
    "Min-SE",
)
_SINGLE_KEYS = {name.lower(): name for name in SINGLE_VALUED}


class MalformedRequest(RemoteProtocolError):
    """A request we must refuse; ``partial`` is what could be read of it (or None)."""

    def __init__(self, reason: str, status: int | None = 400, partial: Request | None = None):
        super().__init__(reason, status)
        self.partial = partial


def _drop(reason: str) -> RemoteProtocolError:
    return RemoteProtocolError(reason, status=None)


def _parse_headers(
    lines: list[str], max_headers: int, max_line: int
) -> tuple[list[tuple[str, str]], str | None]:
    """Header lines to (name, value) pairs, unfolding LWS (§7.3.1).

    Returns the first syntax error instead of raising so the caller can still build a
    partial request from the lines that were good.
    """
    items: list[tuple[str, str]] = []
    error: str | None = None
    for line in lines:
        if len(line) > max_line:
            return items, "header line too long"
        if line[:1] in (" ", "\t"):
            # Continuation: replace the CRLF and leading whitespace with one SP.
            if not items:
                error = error or "continuation line before any header"
                continue
            name, value = items[-1]
            more = line.strip(" \t")
            items[-1] = (name, f"{value} {more}" if value else more)
            continue
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        if not colon or not _TOKEN_RE.fullmatch(name):
            error = error or f"bad header line {line[:40]!r}"
            continue
        items.append((name, value.strip(" \t")))
        if len(items) > max_headers:
            return items, "too many header fields"
    for _, value in items:
        if _CTL_RE.search(value) and _CTL_RE.search(_QUOTED_PAIR_RE.sub("", value)):
            error = error or "control character in header value"
            break
    return items, error


def _content_length(headers: Headers) -> int | None:
    value = headers.get("Content-Length")
    if value is None:
        return None
    return fields.parse_int_header(value, name="Content-Length")


def parse_message(
    data: bytes,
    *,
    max_size: int = DEFAULT_MAX_SIZE,
    max_headers: int = DEFAULT_MAX_HEADERS,
    max_line: int = DEFAULT_MAX_LINE,
) -> Request | Response:
    """Parse one whole SIP message (a datagram, or one framed stream message)."""
    if len(data) > max_size:
        raise _drop(f"message larger than {max_size} bytes")
    # Leading CRLFs are keep-alives or stray line ends; §7.5 says to ignore them.
    data = data.lstrip(b"\r\n")
    if not data:
        raise _drop("empty message")
    m = _HEAD_END_RE.search(data)
    if m is None:
        head_bytes, body = data, b""
        terminated = False
    else:
        head_bytes, body = data[: m.start()], data[m.end() :]
        terminated = True
    nl = head_bytes.find(b"\n")
    start_bytes = head_bytes if nl < 0 else head_bytes[:nl]
    start_bytes = start_bytes.removesuffix(b"\r")
    try:
        start = start_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise _drop("start line is not UTF-8") from None
    if start[:4].upper() == "SIP/":
        return _parse_response(start, head_bytes, nl, body, terminated, max_headers, max_line)
    return _parse_request(start, head_bytes, nl, body, terminated, max_headers, max_line)


def _split_head(head_bytes: bytes, nl: int) -> list[str]:
    if nl < 0:
        return []
    text = head_bytes[nl + 1 :].decode("utf-8")
    return [line.removesuffix("\r") for line in text.split("\n")]


def _parse_response(
    start: str,
    head_bytes: bytes,
    nl: int,
    body: bytes,
    terminated: bool,
    max_headers: int,
    max_line: int,
) -> Response:
    parts = start.split(" ", 2)
    # Responses are never answered: anything wrong means drop (§18.1.2, RFC 4475 §3.1.2.19).
    if len(parts) < 2 or parts[0] != "SIP/2.0":
        raise _drop(f"bad status line {start[:60]!r}")
    if not _STATUS_RE.fullmatch(parts[1]):
        raise _drop(f"bad status code {parts[1][:20]!r}")
    reason = parts[2] if len(parts) == 3 else ""  # RFC 4475 §3.1.1.13 noreason
    if _CTL_RE.search(reason):
        raise _drop("control character in reason phrase")
    if not terminated:
        raise _drop("header block not terminated by an empty line")
    try:
        lines = _split_head(head_bytes, nl)
    except UnicodeDecodeError:
        raise _drop("header block is not UTF-8") from None
    items, error = _parse_headers(lines, max_headers, max_line)
    if error is not None:
        raise _drop(error)
    headers = Headers(items)
    try:
        body = _apply_content_length(headers, body)
    except RemoteProtocolError as exc:
        raise _drop(exc.reason) from None
    return Response(int(parts[1]), reason, headers, body)


def _apply_content_length(headers: Headers, body: bytes) -> bytes:
    length = _content_length(headers)
    if length is None:
        return body  # datagram without Content-Length: the body is the rest (§18.3)
    if length > len(body):
        raise RemoteProtocolError("Content-Length larger than the message", 400)
    # Extra octets after the body on a datagram are ignored (RFC 4475 §3.1.1.8 dblreq).
    return body[:length]


def _parse_request(
    start: str,
    head_bytes: bytes,
    nl: int,
    body: bytes,
    terminated: bool,
    max_headers: int,
    max_line: int,
) -> Request:
    words = start.split()
    if (
        len(words) < 3
        or not words[-1].upper().startswith("SIP/")
        or not _TOKEN_RE.fullmatch(words[0])
    ):
        # Not recognisable as a request line: there is no one to answer.
        raise _drop(f"not a SIP message: {start[:60]!r}")
    method, uri_text, version = words[0], words[1], words[-1]
    problem: tuple[str, int] | None = None
    # §7.1 / §25.1: Request-Line = Method SP Request-URI SP SIP-Version CRLF with exactly
    # one SP each (RFC 4475 §3.1.2.7-3.1.2.10: ltgtruri, lwsruri, lwsstart, trws).
    if start.split(" ") != [method, uri_text, version] or len(words) != 3:
        problem = ("malformed Request-Line", 400)
    elif not _VERSION_RE.fullmatch(version):
        problem = (f"bad SIP version {version[:20]!r}", 400)
    elif version.upper() != "SIP/2.0":
        problem = (f"unsupported SIP version {version[:20]!r}", 505)  # §21.5.7
    else:
        try:
            parse_uri(uri_text)
        except RemoteProtocolError as exc:
            problem = (f"bad Request-URI: {exc.reason}", 400)
    if not terminated:
        problem = problem or ("header block not terminated by an empty line", 400)
    try:
        lines = _split_head(head_bytes, nl)
    except UnicodeDecodeError:
        raise MalformedRequest("header block is not UTF-8", 400) from None
    items, error = _parse_headers(lines, max_headers, max_line)
    headers = Headers(items)
    if error is not None and problem is None:
        problem = (error, 400)
    try:
        body = _apply_content_length(headers, body)
    except RemoteProtocolError as exc:
        problem = problem or (exc.reason, 400)
    partial = Request(method, uri_text, headers, body)
    if problem is not None:
        raise MalformedRequest(problem[0], problem[1], partial)
    return partial


# --- semantic validation -----------------------------------------------------------------


def _check_common(msg: Request | Response) -> fields.CSeq:
    seen: set[str] = set()
    for key in msg.headers.keys():  # noqa: SIM118 - Headers iterates (name, value) pairs
        if key in _SINGLE_KEYS:
            if key in seen:
                raise RemoteProtocolError(f"{_SINGLE_KEYS[key]} present more than once", 400)
            seen.add(key)
    fields.vias(msg)
    fields.from_(msg)
    fields.to(msg)
    fields.call_id(msg)
    seq = fields.cseq(msg)
    length = msg.headers.get("Content-Length")
    if length is not None and fields.parse_int_header(length, name="Content-Length") != len(
        msg.body
    ):
        raise RemoteProtocolError("Content-Length does not match the body", 400)
    fields.contacts(msg)
    return seq


def validate_request(req: Request) -> None:
    """Mandatory headers and value syntax of a request (§8.1.1, §8.2; RFC 4475 §3.1.2).

    Raises ``RemoteProtocolError(status=400)``.
    """
    seq = _check_common(req)
    if seq.method != req.method:
        # §8.1.1.5 / RFC 4475 §3.1.2.17-18: CSeq method must equal the request method.
        raise RemoteProtocolError("CSeq method does not match the request method", 400)
    max_forwards = req.headers.get("Max-Forwards")
    if max_forwards is not None:
        fields.parse_int_header(max_forwards, name="Max-Forwards", maximum=255)
    expires = req.headers.get("Expires")
    if expires is not None:
        fields.parse_int_header(expires, name="Expires")
    uri = parse_uri(req.uri)
    if isinstance(uri, SipUri) and uri.headers:
        # §19.1.1 table: headers are not allowed in a Request-URI (RFC 4475 §3.1.2.11).
        raise RemoteProtocolError("header component in Request-URI", 400)
    date = req.headers.get("Date")
    if date is not None and not date.rstrip().endswith("GMT"):
        # SIP-date is rfc1123-date, always in GMT (§20.17; RFC 4475 §3.1.2.12 baddate).
        raise RemoteProtocolError("Date not in GMT", 400)


def validate_response(resp: Response) -> None:
    """Same checks for a response; any failure means drop (status None, §18.1.2)."""
    try:
        _check_common(resp)
    except RemoteProtocolError as exc:
        raise _drop(exc.reason) from None
