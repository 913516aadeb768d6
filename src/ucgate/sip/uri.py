"""SIP and other URIs (RFC 3261 §19.1, §25.1; RFC 3986 for absoluteURI).

``parse_uri`` validates the whole grammar once and hands back an immutable value; every
other layer (registrar keys, routing, dialog matching) works on that value instead of
re-parsing text. User and password are kept *unescaped* (RFC 4475 §3.1.1.3/§3.1.1.4:
``%00`` in a user part is legal and means a NUL), while parameter and header values keep
the spelling the peer sent so that re-serialising a URI never changes it.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass, replace
from urllib.parse import quote, unquote

from ucgate.sip.errors import RemoteProtocolError

Param = tuple[str, str | None]

# RFC 3261 §25.1 character classes. Each regex checks the *set* of characters only; a
# separate search validates %HH escapes, which keeps matching linear and allocation-free.
_UNRESERVED = "A-Za-z0-9\\-_.!~*'()"
_USER_RE = re.compile(f"[{_UNRESERVED}%&=+$,;?/]+")
_PASSWORD_RE = re.compile(f"[{_UNRESERVED}%&=+$,]*")
_PARAMCHAR_RE = re.compile(f"[{_UNRESERVED}%\\[\\]/:&+$]+")
_HNV_RE = re.compile(f"[{_UNRESERVED}%\\[\\]/?:+$]*")
_BAD_ESCAPE_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
# hostname = *( domainlabel "." ) toplabel [ "." ] (§25.1). Underscores are tolerated
# because real DNS names (SRV-derived, container hosts) carry them.
_HOSTNAME_RE = re.compile(
    r"(?:[A-Za-z0-9_](?:[A-Za-z0-9_\-]*[A-Za-z0-9_])?\.)*"
    r"[A-Za-z0-9_](?:[A-Za-z0-9_\-]*[A-Za-z0-9_])?\.?"
)
_IPV4_RE = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}")
_DIGITS_RE = re.compile(r"\d{1,5}")
# Anything at or below SP, DEL, or non-ASCII: never legal unescaped in a URI (§19.1.1).
_ILLEGAL_RE = re.compile(r"[\x00-\x20\x7f-\U0010ffff]")
# absoluteURI characters (RFC 3261 §25.1 uric / RFC 3986), checked loosely: no LWS, no
# controls, no angle brackets or quotes that would break a name-addr.
_ABS_REST_RE = re.compile(r"[^\x00-\x20\x7f<>\"]+")

# Characters that need no escaping when we serialise (user-unreserved / password sets).
_USER_SAFE = "-_.!~*'()&=+$,;?/"
_PASSWORD_SAFE = "-_.!~*'()&=+$,"

# §19.1.4: these parameters must match whenever either URI carries them.
_STRICT_PARAMS = ("user", "ttl", "method", "maddr", "transport")


def _bad(reason: str) -> RemoteProtocolError:
    return RemoteProtocolError(reason, status=400)


def _check_escapes(text: str, what: str) -> None:
    if "%" in text and _BAD_ESCAPE_RE.search(text):
        raise _bad(f"bad %-escape in {what}")


def _unescape(text: str) -> str:
    # surrogateescape keeps non-UTF-8 escapes (%FF) reversible in __str__.
    return unquote(text, encoding="utf-8", errors="surrogateescape") if "%" in text else text


def _escape(text: str, safe: str) -> str:
    return quote(text, safe=safe, encoding="utf-8", errors="surrogateescape")


def parse_host(text: str) -> str:
    """Validate a host (hostname, IPv4address or IPv6reference) and lower-case it."""
    if not text:
        raise _bad("empty host")
    if text[0] == "[":
        if text[-1] != "]":
            raise _bad("unterminated IPv6 reference")
        try:
            ipaddress.IPv6Address(text[1:-1])
        except ValueError:
            raise _bad(f"bad IPv6 reference {text!r}") from None
        return text.lower()
    if _IPV4_RE.fullmatch(text):
        if any(int(part) > 255 for part in text.split(".")):
            raise _bad(f"bad IPv4 address {text!r}")
        return text
    if not _HOSTNAME_RE.fullmatch(text):
        raise _bad(f"bad host {text!r}")
    return text.lower()


def parse_port(text: str) -> int:
    if not _DIGITS_RE.fullmatch(text):
        raise _bad(f"bad port {text!r}")
    port = int(text)
    if port > 65535:
        raise _bad(f"port out of range {port}")
    return port


def _format_params(params: tuple[Param, ...]) -> str:
    return "".join(f";{n}" if v is None else f";{n}={v}" for n, v in params)


@dataclass(frozen=True, slots=True)
class SipUri:
    """A ``sip:`` or ``sips:`` URI (RFC 3261 §19.1.1).

    ``user``/``password`` are unescaped; ``host`` is lower-cased (IPv6 keeps its
    brackets); parameter names are lower-cased, parameter and header values are kept as
    received (still escaped).
    """

    scheme: str
    user: str | None
    password: str | None
    host: str
    port: int | None = None
    params: tuple[Param, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()

    def param(self, name: str) -> str | None:
        """Value of parameter ``name`` (None when absent or valueless)."""
        key = name.lower()
        for n, v in self.params:
            if n == key:
                return v
        return None

    def has_param(self, name: str) -> bool:
        key = name.lower()
        return any(n == key for n, _ in self.params)

    def header(self, name: str) -> str | None:
        """Unescaped value of URI header ``name`` (§19.1.1 ``?hname=hvalue``)."""
        key = name.lower()
        for n, v in self.headers:
            if n.lower() == key:
                return _unescape(v)
        return None

    @property
    def transport(self) -> str | None:
        value = self.param("transport")
        return value.lower() if value else None

    def with_params(self, **params: str | None) -> SipUri:
        """A copy with ``params`` set (replacing same-named ones, appended otherwise)."""
        new = {k.lower(): v for k, v in params.items()}
        kept = tuple((n, v) for n, v in self.params if n not in new)
        return replace(self, params=kept + tuple(new.items()))

    def without_params(self, *names: str) -> SipUri:
        drop = {n.lower() for n in names}
        return replace(self, params=tuple((n, v) for n, v in self.params if n not in drop))

    def replace(self, **changes: object) -> SipUri:
        return replace(self, **changes)  # type: ignore[arg-type]

    def aor(self) -> str:
        """Address-of-record form ``scheme:user@host`` used as the registrar key (§10.3)."""
        if self.user is None:
            return f"{self.scheme}:{self.host}"
        return f"{self.scheme}:{_escape(self.user, _USER_SAFE)}@{self.host}"

    def __str__(self) -> str:
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(_escape(self.user, _USER_SAFE))
            if self.password is not None:
                out += [":", _escape(self.password, _PASSWORD_SAFE)]
            out.append("@")
        out.append(self.host)
        if self.port is not None:
            out += [":", str(self.port)]
        out.append(_format_params(self.params))
        if self.headers:
            out += ["?", "&".join(f"{n}={v}" for n, v in self.headers)]
        return "".join(out)


@dataclass(frozen=True, slots=True)
class AbsoluteUri:
    """Any other scheme (tel:, urn:, unknown; RFC 4475 §3.3.2-3.3.4), kept opaque."""

    scheme: str
    rest: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.rest}"


Uri = SipUri | AbsoluteUri


def _parse_sip(scheme: str, rest: str) -> SipUri:
    user: str | None = None
    password: str | None = None
    # '@' never appears unescaped in user, host or params, so the first one ends userinfo.
    at = rest.find("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        raw_user, colon, raw_pw = userinfo.partition(":")
        if not raw_user or not _USER_RE.fullmatch(raw_user):
            raise _bad("bad user part")
        _check_escapes(raw_user, "user")
        user = _unescape(raw_user)
        if colon:
            if not _PASSWORD_RE.fullmatch(raw_pw):
                raise _bad("bad password")
            _check_escapes(raw_pw, "password")
            password = _unescape(raw_pw)
    hostpart, qmark, raw_headers = rest.partition("?")
    hostport, *raw_params = hostpart.split(";")
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise _bad("unterminated IPv6 reference")
        host_text, port_text = hostport[: end + 1], hostport[end + 1 :]
        if port_text and port_text[0] != ":":
            raise _bad("junk after IPv6 reference")
        port_text = port_text[1:] if port_text else ""
        has_port = bool(hostport[end + 1 :])
    else:
        host_text, sep, port_text = hostport.partition(":")
        has_port = bool(sep)
    host = parse_host(host_text)
    port = parse_port(port_text) if has_port else None
    params: list[Param] = []
    for raw in raw_params:
        name, eq, value = raw.partition("=")
        if not name or not _PARAMCHAR_RE.fullmatch(name):
            raise _bad(f"bad uri parameter {raw!r}")
        if eq and (not value or not _PARAMCHAR_RE.fullmatch(value)):
            raise _bad(f"bad uri parameter value {raw!r}")
        _check_escapes(raw, "uri parameter")
        params.append((name.lower(), value if eq else None))
    headers: list[tuple[str, str]] = []
    if qmark:
        for raw in raw_headers.split("&"):
            name, eq, value = raw.partition("=")
            if not name or not eq or not _HNV_RE.fullmatch(name) or not _HNV_RE.fullmatch(value):
                raise _bad(f"bad uri header {raw!r}")
            _check_escapes(raw, "uri header")
            headers.append((name, value))
    return SipUri(scheme, user, password, host, port, tuple(params), tuple(headers))


# Memoised: each layer (transaction, registrar, validation) reads the same header text;
# the result is frozen and errors are never cached, so sharing it is safe.
@functools.lru_cache(maxsize=8192)
def parse_uri(text: str) -> Uri:
    """Parse a Request-URI or a name-addr/addr-spec URI; 400 on any syntax error."""
    if not text or _ILLEGAL_RE.search(text):
        raise _bad("empty URI or illegal character in URI")
    scheme, colon, rest = text.partition(":")
    if not colon or not _SCHEME_RE.fullmatch(scheme) or not rest:
        raise _bad(f"not a URI: {text[:80]!r}")
    low = scheme.lower()
    if low in ("sip", "sips"):
        return _parse_sip(low, rest)
    if not _ABS_REST_RE.fullmatch(rest):
        raise _bad("bad absoluteURI")
    return AbsoluteUri(low, rest)


def _param_map(uri: SipUri) -> dict[str, str | None]:
    return {n: (None if v is None else _unescape(v).lower()) for n, v in uri.params}


def uri_equal(a: Uri, b: Uri) -> bool:
    """URI equivalence of RFC 3261 §19.1.4 (for SIP) / exact match (other schemes)."""
    if isinstance(a, AbsoluteUri) or isinstance(b, AbsoluteUri):
        if not (isinstance(a, AbsoluteUri) and isinstance(b, AbsoluteUri)):
            return False
        return a.scheme == b.scheme and a.rest == b.rest
    # Userinfo is case-sensitive, host case-insensitive (already lower-cased), and an
    # omitted port is NOT equal to an explicit 5060 (§19.1.4 bullet 5).
    if (a.scheme, a.user, a.password, a.host, a.port) != (
        b.scheme,
        b.user,
        b.password,
        b.host,
        b.port,
    ):
        return False
    pa, pb = _param_map(a), _param_map(b)
    for name in _STRICT_PARAMS:
        if (name in pa or name in pb) and pa.get(name, "") != pb.get(name, ""):
            return False
    for name in pa.keys() & pb.keys():
        if pa[name] != pb[name]:
            return False
    # Header components are never ignored: both sets must be identical.
    ha = {(n.lower(), _unescape(v)) for n, v in a.headers}
    hb = {(n.lower(), _unescape(v)) for n, v in b.headers}
    return ha == hb
