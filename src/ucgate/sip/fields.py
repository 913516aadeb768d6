"""Structured header field values (RFC 3261 §20, §25.1; RFC 3581 rport).

Every parser here takes the text of one header value (folding already undone by
:mod:`ucgate.sip.parser`) and raises ``RemoteProtocolError(status=400)`` on bad syntax,
so the layer that called it can answer 400 (§8.2) or drop a response (§18.1.2).
The ``call_id``/``cseq``/``top_via``/``from_``/``to`` helpers read a whole message.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass, replace

from ucgate.sip.errors import RemoteProtocolError
from ucgate.sip.message import Request, Response, split_list
from ucgate.sip.uri import Param, SipUri, Uri, parse_host, parse_port, parse_uri

_TOKEN = r"A-Za-z0-9\-.!%*_+`'~"
TOKEN_RE = re.compile(f"[{_TOKEN}]+")
# gen-value = token / host / quoted-string (§25.1); host adds ':' and brackets (IPv6).
_GEN_VALUE_RE = re.compile(f"[{_TOKEN}:\\[\\]]+")
_DISPLAY_TOKENS_RE = re.compile(f"[{_TOKEN}]+(?:[ \\t]+[{_TOKEN}]+)*")
_WS_RUN_RE = re.compile(r"[ \t]+")
_VIA_RE = re.compile(
    f"([{_TOKEN}]+)[ \\t]*/[ \\t]*([{_TOKEN}]+)[ \\t]*/[ \\t]*([{_TOKEN}]+)[ \\t]+"
    r"(\[[0-9A-Fa-f:.]+\]|[^ \t;:\[\]]+)(?:[ \t]*:[ \t]*([^ \t;]*))?[ \t]*"
)
_CSEQ_RE = re.compile(f"[ \\t]*(\\d{{1,10}})[ \\t]+([{_TOKEN}]+)[ \\t]*")
_CALL_ID_RE = re.compile(r"[^\x00-\x20\x7f]+")

# §8.1.1.5: the CSeq sequence number MUST be less than 2**31.
MAX_CSEQ = 2**31 - 1
# delta-seconds and friends are 32-bit (§20.19, §25.1).
MAX_DELTA_SECONDS = 2**32 - 1


def _bad(reason: str) -> RemoteProtocolError:
    return RemoteProtocolError(reason, status=400)


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    """Split on ``sep`` except inside quoted strings (backslash escapes honoured)."""
    if '"' not in text:
        return text.split(sep)
    parts: list[str] = []
    start = 0
    i = 0
    n = len(text)
    in_quotes = False
    while i < n:
        ch = text[i]
        if in_quotes:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_quotes = False
        elif ch == '"':
            in_quotes = True
        elif ch == sep:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    if in_quotes:
        raise _bad("unterminated quoted string")
    parts.append(text[start:])
    return parts


def _is_quoted(value: str) -> bool:
    """True if ``value`` is exactly one well-formed quoted-string (§25.1)."""
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return False
    i = 1
    end = len(value) - 1
    while i < end:
        ch = value[i]
        if ch == "\\":
            if i + 1 >= end or value[i + 1] in "\r\n":
                return False
            i += 2
            continue
        if ch == '"':
            return False
        i += 1
    return True


def parse_params(text: str) -> tuple[Param, ...]:
    """``*( SEMI generic-param )``; ``text`` is empty or starts with ';'.

    Names are lower-cased; values keep quotes and case. An empty parameter (``;;``,
    RFC 4475 §3.1.2.1 badinv01) is a syntax error.
    """
    text = text.strip()
    if not text:
        return ()
    if text[0] != ";":
        raise _bad(f"junk before parameters: {text[:40]!r}")
    out: list[Param] = []
    for raw in _split_outside_quotes(text[1:], ";"):
        name, eq, value = raw.partition("=")
        name = name.strip()
        if not TOKEN_RE.fullmatch(name):
            raise _bad(f"bad parameter {raw.strip()[:40]!r}")
        if eq:
            value = value.strip()
            if not (_GEN_VALUE_RE.fullmatch(value) or _is_quoted(value)):
                raise _bad(f"bad value for parameter {name!r}")
            out.append((name.lower(), value))
        else:
            out.append((name.lower(), None))
    return tuple(out)


def _find_param(params: tuple[Param, ...], name: str) -> str | None:
    key = name.lower()
    for n, v in params:
        if n == key:
            return v
    return None


def _format_params(params: tuple[Param, ...]) -> str:
    return "".join(f";{n}" if v is None else f";{n}={v}" for n, v in params)


def parse_int_header(value: str, *, name: str = "header", maximum: int = MAX_DELTA_SECONDS) -> int:
    """A scalar header such as Max-Forwards or Expires: digits only, 0..maximum (§25.1)."""
    text = value.strip()
    # Ten digits bound the int() conversion: no 4300-digit DoS, and 2**32 fits.
    if not text.isascii() or not text.isdigit() or len(text) > 10:
        raise _bad(f"bad {name} value {text[:20]!r}")
    number = int(text)
    if number > maximum:
        raise _bad(f"{name} out of range: {number}")
    return number


# --- name-addr / addr-spec ---------------------------------------------------------------


def _unquote_display(quoted: str) -> str:
    inner = quoted[1:-1]
    if "\\" not in inner:
        return inner
    out: list[str] = []
    i = 0
    while i < len(inner):
        ch = inner[i]
        if ch == "\\" and i + 1 < len(inner):
            i += 1
            ch = inner[i]
        out.append(ch)
        i += 1
    return "".join(out)


def _quote_display(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True, slots=True)
class NameAddr:
    """``[display-name] <URI> *(;param)`` or a bare addr-spec (§20.10, §20.20, §20.39).

    ``display_name`` is unquoted and unescaped; None when absent.
    """

    display_name: str | None
    uri: Uri
    params: tuple[Param, ...] = ()

    def param(self, name: str) -> str | None:
        return _find_param(self.params, name)

    def has_param(self, name: str) -> bool:
        key = name.lower()
        return any(n == key for n, _ in self.params)

    @property
    def tag(self) -> str | None:
        return self.param("tag")

    def with_tag(self, tag: str) -> NameAddr:
        kept = tuple((n, v) for n, v in self.params if n != "tag")
        return replace(self, params=(*kept, ("tag", tag)))

    def __str__(self) -> str:
        # Always use <...>: a bare addr-spec with ';' or '?' would change meaning (§20.10).
        head = f"<{self.uri}>"
        if self.display_name is not None:
            head = f"{_quote_display(self.display_name)} {head}"
        return head + _format_params(self.params)


def _read_quoted(text: str) -> int:
    """Index just past the closing quote of the quoted-string starting at text[0]."""
    i = 1
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == '"':
            return i + 1
        i += 1
    raise _bad("unterminated quoted string in display name")


# Memoised: each layer (transaction, registrar, validation) reads the same header text;
# the result is frozen and errors are never cached, so sharing it is safe.
@functools.lru_cache(maxsize=8192)
def parse_name_addr(value: str) -> NameAddr:
    """Parse a From/To/Contact/Route-style value (one element, not a list)."""
    text = value.strip()
    if not text:
        raise _bad("empty name-addr")
    display: str | None = None
    if text[0] == '"':
        end = _read_quoted(text)
        display = _unquote_display(text[:end])
        text = text[end:].lstrip(" \t")
        if not text.startswith("<"):
            raise _bad("quoted display name not followed by <URI>")
    else:
        lt = text.find("<")
        if lt >= 0:
            raw_display = text[:lt].strip(" \t")
            if raw_display:
                # Unquoted display names are tokens separated by LWS (§25.1); commas and
                # other specials need quotes (RFC 4475 §3.1.2.15 baddn).
                if not _DISPLAY_TOKENS_RE.fullmatch(raw_display):
                    raise _bad("unquoted display name with non-token characters")
                display = _WS_RUN_RE.sub(" ", raw_display)
            text = text[lt:]
    if text.startswith("<"):
        gt = text.find(">")
        if gt < 0:
            raise _bad("unterminated <URI>")
        # LAQUOT/RAQUOT allow no space inside the brackets (RFC 4475 §3.1.2.14 badaspec).
        uri = parse_uri(text[1:gt])
        return NameAddr(display, uri, parse_params(text[gt + 1 :]))
    # Bare addr-spec: its ;params belong to the header, and it may not carry ',', '?'
    # or ';' of its own (§20.10; RFC 4475 §3.1.2.13 regbadct).
    uri_text, semi, rest = text.partition(";")
    uri_text = uri_text.rstrip(" \t")
    if "?" in uri_text or "," in uri_text:
        raise _bad("addr-spec with '?' or ',' must be enclosed in <>")
    return NameAddr(None, parse_uri(uri_text), parse_params(semi + rest))


class Star(enum.Enum):
    """``Contact: *`` (§10.2.2, remove all bindings)."""

    STAR = "*"


def parse_contact_list(value: str) -> list[NameAddr] | Star:
    """One Contact header field value: ``*`` or a comma-separated list of name-addrs."""
    if value.strip() == "*":
        return Star.STAR
    elements = split_list(value)
    if not elements:
        raise _bad("empty Contact")
    if any(e == "*" for e in elements):
        raise _bad("'*' mixed with other Contact values")
    return [parse_name_addr(e) for e in elements]


# --- Via ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Via:
    """One Via element (§20.42, §18.2.1; RFC 3581).

    ``transport`` is upper-cased; ``host`` lower-cased. ``rport`` is the numeric value
    when the peer (or we) filled it in, else None; ``has_rport`` is true whenever the
    parameter is present, valueless or not (a client asking for symmetric response
    routing, RFC 3581 §4).
    """

    transport: str
    host: str
    port: int | None = None
    params: tuple[Param, ...] = ()

    def param(self, name: str) -> str | None:
        return _find_param(self.params, name)

    def has_param(self, name: str) -> bool:
        key = name.lower()
        return any(n == key for n, _ in self.params)

    @property
    def branch(self) -> str | None:
        return self.param("branch")

    @property
    def received(self) -> str | None:
        return self.param("received")

    @property
    def has_rport(self) -> bool:
        return self.has_param("rport")

    @property
    def rport(self) -> int | None:
        value = self.param("rport")
        if value is None or not value.isdigit() or len(value) > 5:
            return None
        return int(value)

    @property
    def sent_by(self) -> str:
        """``host[:port]`` as matched by §17.2.3 rule 3."""
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def with_params(self, **params: str | None) -> Via:
        """A copy with ``params`` set, replacing same-named ones in place (received/rport)."""
        new = {k.lower(): v for k, v in params.items()}
        out: list[Param] = []
        for n, v in self.params:
            if n in new:
                out.append((n, new.pop(n)))
            else:
                out.append((n, v))
        out.extend(new.items())
        return replace(self, params=tuple(out))

    def __str__(self) -> str:
        port = "" if self.port is None else f":{self.port}"
        return f"SIP/2.0/{self.transport} {self.host}{port}{_format_params(self.params)}"


# Memoised: each layer (transaction, registrar, validation) reads the same header text;
# the result is frozen and errors are never cached, so sharing it is safe.
@functools.lru_cache(maxsize=8192)
def parse_via(value: str) -> Via:
    """One via-parm: ``SIP / 2.0 / transport sent-by *(;param)`` (LWS allowed, §25.1)."""
    m = _VIA_RE.match(value.strip())
    if m is None:
        raise _bad(f"bad Via {value.strip()[:60]!r}")
    name, version, transport, host_text, port_text = m.groups()
    if name.upper() != "SIP" or version != "2.0":
        raise _bad(f"unsupported Via protocol {name}/{version}")
    host = parse_host(host_text)
    port = parse_port(port_text) if port_text is not None else None
    params = parse_params(value.strip()[m.end() :])
    for key in ("branch", "received", "maddr", "ttl"):
        if _find_param(params, key) == "":
            raise _bad(f"empty Via {key}")
    return Via(transport.upper(), host, port, params)


# --- CSeq --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CSeq:
    seq: int
    method: str

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


def parse_cseq(value: str) -> CSeq:
    m = _CSEQ_RE.fullmatch(value)
    if m is None:
        raise _bad(f"bad CSeq {value.strip()[:40]!r}")
    seq = int(m.group(1))
    if seq > MAX_CSEQ:
        raise _bad(f"CSeq number {seq} not below 2**31")
    return CSeq(seq, m.group(2))


# --- whole-message helpers ---------------------------------------------------------------


def _single(msg: Request | Response, name: str) -> str:
    lines = msg.headers.get_all(name)
    if not lines:
        raise _bad(f"missing {name}")
    if len(lines) > 1:
        raise _bad(f"{name} present more than once")
    return lines[0]


def call_id(msg: Request | Response) -> str:
    value = _single(msg, "Call-ID").strip()
    if not _CALL_ID_RE.fullmatch(value):
        raise _bad("bad Call-ID")
    return value


def cseq(msg: Request | Response) -> CSeq:
    return parse_cseq(_single(msg, "CSeq"))


def vias(msg: Request | Response) -> list[Via]:
    values = msg.headers.values("Via")
    if not values:
        raise _bad("missing Via")
    return [parse_via(v) for v in values]


def top_via(msg: Request | Response) -> Via:
    for line in msg.headers.get_all("Via"):
        parts = split_list(line)
        if parts:
            return parse_via(parts[0])
    raise _bad("missing Via")


def from_(msg: Request | Response) -> NameAddr:
    return parse_name_addr(_single(msg, "From"))


def to(msg: Request | Response) -> NameAddr:
    return parse_name_addr(_single(msg, "To"))


def contacts(msg: Request | Response) -> list[NameAddr] | Star:
    """Every Contact of the message; ``*`` only when it is the sole value (§10.2.2)."""
    lines = msg.headers.get_all("Contact")
    if not lines:
        return []
    out: list[NameAddr] = []
    for line in lines:
        parsed = parse_contact_list(line)
        if isinstance(parsed, Star):
            if len(lines) > 1:
                raise _bad("'*' mixed with other Contact values")
            return parsed
        out.extend(parsed)
    return out


def sip_uri(uri: Uri) -> SipUri:
    """Narrow to a SIP URI or raise 416 (§8.2.2.1)."""
    if not isinstance(uri, SipUri):
        raise RemoteProtocolError(f"unsupported URI scheme {uri.scheme!r}", status=416)
    return uri
