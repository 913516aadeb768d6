"""SIP message model (RFC 3261 §7): requests, responses and their header fields.

Only the model and serialisation live here; :mod:`ucgate.sip.parser` turns bytes into
these objects. Header names are stored in their canonical long form (compact forms
expanded, RFC 3261 §7.3.3) so lookups never depend on how a peer spelled a name.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ucgate.sip.errors import LocalProtocolError

# RFC 3261 §7.3.3 and later registrations (RFC 3515 r, RFC 3891 none, RFC 4028 x, RFC 3265 o/u,
# RFC 3841 j/d, RFC 3892 b, RFC 4474 y/n).
COMPACT_FORMS: dict[str, str] = {
    "i": "Call-ID",
    "m": "Contact",
    "e": "Content-Encoding",
    "l": "Content-Length",
    "c": "Content-Type",
    "f": "From",
    "s": "Subject",
    "k": "Supported",
    "t": "To",
    "v": "Via",
    "r": "Refer-To",
    "b": "Referred-By",
    "o": "Event",
    "u": "Allow-Events",
    "x": "Session-Expires",
    "a": "Accept-Contact",
    "j": "Reject-Contact",
    "d": "Request-Disposition",
    "y": "Identity",
    "n": "Identity-Info",
}

# Canonical spelling for well-known headers, keyed by lower-case name; other names keep
# the spelling of their first appearance.
_CANONICAL: dict[str, str] = {
    name.lower(): name
    for name in (
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Alert-Info",
        "Allow",
        "Allow-Events",
        "Authentication-Info",
        "Authorization",
        "Call-ID",
        "Call-Info",
        "Contact",
        "Content-Disposition",
        "Content-Encoding",
        "Content-Language",
        "Content-Length",
        "Content-Type",
        "CSeq",
        "Date",
        "Error-Info",
        "Event",
        "Expires",
        "From",
        "In-Reply-To",
        "Max-Forwards",
        "Min-Expires",
        "MIME-Version",
        "Organization",
        "Path",
        "Priority",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Require",
        "Record-Route",
        "Refer-To",
        "Referred-By",
        "Reply-To",
        "Require",
        "Retry-After",
        "Route",
        "RSeq",
        "RAck",
        "Server",
        "Session-Expires",
        "SIP-ETag",
        "SIP-If-Match",
        "Subject",
        "Subscription-State",
        "Supported",
        "Timestamp",
        "To",
        "Unsupported",
        "User-Agent",
        "Via",
        "Warning",
        "WWW-Authenticate",
        "Min-SE",
        "Replaces",
        "Identity",
        "Identity-Info",
        "Accept-Contact",
        "Reject-Contact",
        "Request-Disposition",
    )
}


@functools.lru_cache(maxsize=2048)
def canonical_name(name: str) -> str:
    """Return the canonical long form of a header name (compact forms expanded).

    Memoised: a node sees a few dozen distinct spellings, millions of times.
    """
    low = name.strip().lower()
    if len(low) == 1 and low in COMPACT_FORMS:
        return COMPACT_FORMS[low]
    return _CANONICAL.get(low, name.strip())


@functools.lru_cache(maxsize=2048)
def _key(name: str) -> str:
    return canonical_name(name).lower()


class Headers:
    """Ordered multi-map of header fields, case-insensitive by name.

    Each entry is one header *field line* as received (or added). ``values()`` splits
    comma-separated list headers (Via, Contact, Route…, RFC 3261 §7.3.1) into elements.
    Entries keep their lower-case key beside them so lookups compare without re-folding.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str, str]] = [
            (canonical_name(n), v, _key(n)) for n, v in items
        ]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return ((n, v) for n, v, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = _key(name)
        return any(k == key for _, _, k in self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self.items() == other.items()

    def __repr__(self) -> str:
        return f"Headers({self.items()!r})"

    def items(self) -> list[tuple[str, str]]:
        return [(n, v) for n, v, _ in self._items]

    def keys(self) -> list[str]:
        """Lower-case canonical name of every field line, in order."""
        return [k for _, _, k in self._items]

    def copy(self) -> Headers:
        new = Headers()
        new._items = list(self._items)
        return new

    def get(self, name: str, default: str | None = None) -> str | None:
        """First field value of ``name``, or ``default``."""
        key = _key(name)
        for _, v, k in self._items:
            if k == key:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        """Every field line of ``name`` in order, not comma-split."""
        key = _key(name)
        return [v for _, v, k in self._items if k == key]

    def values(self, name: str) -> list[str]:
        """Every list element of ``name``: field lines split on top-level commas."""
        out: list[str] = []
        for line in self.get_all(name):
            out.extend(split_list(line))
        return out

    def add(self, name: str, value: str) -> None:
        self._items.append((canonical_name(name), value, _key(name)))

    def prepend(self, name: str, value: str) -> None:
        """Insert before every other field (a proxy's own Via goes on top, §16.6)."""
        self._items.insert(0, (canonical_name(name), value, _key(name)))

    def set(self, name: str, value: str) -> None:
        """Replace every field of ``name`` with one, keeping the first one's position."""
        cname = canonical_name(name)
        key = _key(name)
        out: list[tuple[str, str, str]] = []
        placed = False
        for n, v, k in self._items:
            if k == key:
                if not placed:
                    out.append((cname, value, key))
                    placed = True
            else:
                out.append((n, v, k))
        if not placed:
            out.append((cname, value, key))
        self._items = out

    def remove(self, name: str) -> None:
        key = _key(name)
        self._items = [item for item in self._items if item[2] != key]

    def remove_first_value(self, name: str) -> str | None:
        """Pop the topmost list element of ``name`` (the top Via, §18.1.2)."""
        key = _key(name)
        for i, (n, v, k) in enumerate(self._items):
            if k == key:
                parts = split_list(v)
                if len(parts) <= 1:
                    del self._items[i]
                else:
                    self._items[i] = (n, ", ".join(parts[1:]), k)
                return parts[0] if parts else None
        return None


def split_list(value: str) -> list[str]:
    """Split a header value on commas that are not inside quotes or <...> (RFC 3261 §7.3.1)."""
    # Fast paths: most values have no comma at all, or no quote/angle bracket that could
    # hide one; only the rest needs the character scan below.
    if "," not in value:
        stripped = value.strip()
        return [stripped] if stripped else []
    if '"' not in value and "<" not in value:
        return [p for p in (part.strip() for part in value.split(",")) if p]
    parts: list[str] = []
    buf: list[str] = []
    in_quotes = False
    in_angle = False
    escaped = False
    for ch in value:
        if escaped:
            buf.append(ch)
            escaped = False
            continue
        if in_quotes:
            if ch == "\\":
                escaped = True
            elif ch == '"':
                in_quotes = False
            buf.append(ch)
            continue
        if ch == '"':
            in_quotes = True
        elif ch == "<":
            in_angle = True
        elif ch == ">":
            in_angle = False
        elif ch == "," and not in_angle:
            part = "".join(buf).strip()
            if part:
                parts.append(part)
            buf = []
            continue
        buf.append(ch)
    part = "".join(buf).strip()
    if part:
        parts.append(part)
    return parts


def _serialize_headers(headers: Headers, body: bytes) -> list[str]:
    lines = [f"{n}: {v}" for n, v, k in headers._items if k != "content-length"]
    # Content-Length is always written from the body we actually send (§18.3 requires it
    # on stream transports; writing it everywhere is harmless and avoids framing bugs).
    lines.append(f"Content-Length: {len(body)}")
    return lines


@dataclass(slots=True)
class Request:
    """A SIP request. ``uri`` is kept as text; :mod:`ucgate.sip.uri` parses it on demand."""

    method: str
    uri: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = "SIP/2.0"

    def __post_init__(self) -> None:
        # str.split() with no argument splits on any whitespace: one part means none.
        if not self.method or len(self.method.split()) != 1 or self.method.strip() != self.method:
            raise LocalProtocolError(f"bad method {self.method!r}")

    def to_bytes(self) -> bytes:
        head = [
            f"{self.method} {self.uri} {self.version}",
            *_serialize_headers(self.headers, self.body),
        ]
        return ("\r\n".join(head) + "\r\n\r\n").encode("utf-8") + self.body


@dataclass(slots=True)
class Response:
    """A SIP response."""

    status: int
    reason: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = "SIP/2.0"

    def __post_init__(self) -> None:
        if not 100 <= self.status <= 699:
            raise LocalProtocolError(f"bad status {self.status}")

    def to_bytes(self) -> bytes:
        head = [
            f"{self.version} {self.status} {self.reason}",
            *_serialize_headers(self.headers, self.body),
        ]
        return ("\r\n".join(head) + "\r\n\r\n").encode("utf-8") + self.body


Message = Request | Response
