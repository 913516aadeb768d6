"""The auth-param grammar of Authorization / WWW-Authenticate and their proxy twins.

RFC 3261 §25.1 (``credentials``, ``challenge``) and RFC 7616 §3.3-3.4: a scheme token,
then a comma-separated list of ``name = ( token / quoted-string )``. This module only turns
text into ``(scheme, {name: value})`` and back; what the values mean is
:mod:`ucgate.sip.digest`'s business.

These header fields are *not* comma lists in the §7.3.1 sense (commas separate parameters,
not values), so callers must read them with ``Headers.get_all``, never ``Headers.values``.

Leniency, each on purpose:

* values may be a token or a quoted-string for every parameter: RFC 7235 §2.1 asks
  recipients to accept both, and phones differ (``qop=auth`` vs ``qop="auth"``);
* token characters are the union of SIP's (RFC 3261 §25.1) and HTTP's (RFC 7230 §3.2.6);
* empty list elements (``a=1,,b=2``) are skipped, as RFC 7230 §7 asks of recipients;
* line folding (CRLF followed by SP/HTAB) counts as one space, RFC 3261 §7.3.1.

Anything else that does not fit the grammar raises :class:`MalformedAuthHeader` (status 400:
RFC 7616 §3.4 says an improper or missing directive is answered with 400 Bad Request).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ucgate.sip.errors import RemoteProtocolError

_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~#$&^|]+"
# qdtext: LWS / %x21 / %x23-5B / %x5D-7E / UTF8-NONASCII; quoted-pair: "\" %x00-09 / %x0B-0C /
# %x0E-7F (RFC 3261 §25.1). Python str already holds decoded UTF-8, so "non-ASCII" is >= 0x80.
_QDTEXT = r'[^"\\\x00-\x08\x0a-\x1f\x7f]'
_QUOTED_PAIR = r"\\[\x00-\x09\x0b\x0c\x0e-\x7f]"
# Unrolled-loop form of DQUOTE *(qdtext / quoted-pair) DQUOTE: runs of qdtext are matched
# by one class repetition instead of one alternation per character.
_QUOTED = rf'"{_QDTEXT}*(?:{_QUOTED_PAIR}{_QDTEXT}*)*"'
_PARAM = rf"{_TOKEN}[ \t]*=[ \t]*(?:{_TOKEN}|{_QUOTED})[ \t]*"
# The whole list in one pattern: [SEP] param *(1*SEP param) [SEP], where SEP is a comma
# with optional whitespace. Tokens hold no comma, space, '=' or '"', so it cannot backtrack
# badly. Validating in one C-level pass, then collecting with findall, keeps verify() fast.
_LIST_RE = re.compile(rf"[ \t]*(?:,[ \t]*)*{_PARAM}(?:(?:,[ \t]*)+{_PARAM})*(?:,[ \t]*)*")
_ITEM_RE = re.compile(
    rf'({_TOKEN})[ \t]*=[ \t]*(?:({_TOKEN})|"([^"\\]*(?:\\.[^"\\]*)*)")', re.DOTALL
)
_SCHEME_RE = re.compile(rf"[ \t]*({_TOKEN})(?:[ \t]+|\Z)")
_FOLD_RE = re.compile(r"\r?\n[ \t]+")
_UNESCAPE_RE = re.compile(r"\\(.)", re.DOTALL)
_TOKEN_RE = re.compile(_TOKEN)
_NEEDS_ESCAPE_RE = re.compile(r'["\\\x00-\x08\x0b\x0c\x0e-\x1f\x7f]')


class MalformedAuthHeader(RemoteProtocolError):
    """An Authorization-family header that does not fit the grammar (answer 400).

    The message names the problem and where, never the value: these headers carry
    credentials, and errors end up in logs.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason, status=400)


@dataclass(frozen=True, slots=True)
class AuthHeader:
    """One parsed credentials or challenge value.

    ``params`` is keyed by lower-case parameter name (names are case-insensitive,
    RFC 7235 §2.1); values are unquoted and unescaped.
    """

    scheme: str
    params: Mapping[str, str]

    @property
    def is_digest(self) -> bool:
        # Scheme names are case-insensitive tokens (RFC 7235 §2.1, RFC 3261 §25.1).
        return self.scheme.lower() == "digest"


def split_scheme(value: str) -> tuple[str, str]:
    """Split ``"Scheme rest"`` into the scheme token and the unparsed rest.

    Cheap on purpose: a server first decides whether the scheme is one it speaks before
    parsing parameters whose grammar may be scheme-specific (Basic's token68, or RFC 4475
    §3.3.7's ``NoOneKnowsThisScheme opaque-data=here``).
    """
    text = _unfold(value)
    m = _SCHEME_RE.match(text)
    if m is None:
        raise MalformedAuthHeader("missing or invalid auth-scheme")
    return m.group(1), text[m.end() :]


def parse_params(text: str) -> dict[str, str]:
    """Parse a comma-separated auth-param list into ``{lower-case name: value}``."""
    text = _unfold(text)
    if _LIST_RE.fullmatch(text) is None:
        # Covers an empty list too: RFC 3261 §25.1 wants at least one auth-param.
        raise MalformedAuthHeader("auth-param list does not fit the RFC 7616 §3.4 grammar")
    params: dict[str, str] = {}
    items = _ITEM_RE.findall(text)
    for name, token, quoted in items:
        if token:
            value = token
        elif "\\" in quoted:
            value = _UNESCAPE_RE.sub(r"\1", quoted)
        else:
            value = quoted
        params[name.lower()] = value
    if len(params) != len(items):
        # RFC 7235 §2.1: each parameter name MUST only occur once; two different values
        # would make the digest ambiguous.
        raise MalformedAuthHeader("duplicate auth-param")
    return params


def parse_auth_header(value: str) -> AuthHeader:
    """Parse a whole value: scheme plus auth-params (at least one, RFC 3261 §25.1)."""
    scheme, rest = split_scheme(value)
    return AuthHeader(scheme, parse_params(rest))


def quote(value: str) -> str:
    """Render ``value`` as a quoted-string (RFC 3261 §25.1).

    ``"`` and ``\\`` are escaped, and so are control characters other than HTAB, which
    qdtext does not allow but quoted-pair does; the result parses back to ``value``.
    """
    if any(c in "\r\n" for c in value):
        # Would let a value inject header lines; nothing legitimate needs it.
        raise ValueError("CR/LF cannot appear in a quoted-string")
    return '"' + _NEEDS_ESCAPE_RE.sub(lambda m: "\\" + m.group(0), value) + '"'


def is_token(value: str) -> bool:
    return _TOKEN_RE.fullmatch(value) is not None


def format_auth_header(scheme: str, params: Iterable[tuple[str, str, bool]]) -> str:
    """Render ``scheme name=value, …``; each param is ``(name, value, quoted)``.

    RFC 7616 §3.4: ``algorithm``, ``qop`` (in credentials) and ``nc`` MUST NOT be quoted
    by a sender, while realm, nonce, uri, response, cnonce and opaque are always quoted;
    the caller says which, since it differs between challenge and credentials.
    """
    parts: list[str] = []
    for name, value, quoted in params:
        if quoted:
            parts.append(f"{name}={quote(value)}")
        elif is_token(value):
            parts.append(f"{name}={value}")
        else:
            raise ValueError(f"value of {name!r} is not a token")
    return f"{scheme} " + ", ".join(parts)


def _unfold(text: str) -> str:
    # RFC 3261 §7.3.1: a CRLF followed by whitespace is equivalent to one SP. Any other CR
    # or LF is not allowed in a header value and then fails the grammar below.
    if "\n" in text:
        return _FOLD_RE.sub(" ", text)
    return text
