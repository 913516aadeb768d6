"""SDP session descriptions (RFC 4566) and the offer/answer facts a B2BUA reads (RFC 3264).

:func:`parse_sdp` turns a body into an immutable :class:`SessionDescription`;
:meth:`SessionDescription.to_bytes` writes it back so that parsing the output gives an
equal object. Everything a B2BUA changes (direction for hold, o= version, connection
address and ports when it anchors media) is a method returning a new description.

Strictness is aimed at the 488 decision (RFC 3261 §13.3.1.2: a UAS that cannot accept
the offer answers 488): a body without the mandatory v=/o=/s= lines, with lines that are
not ``<letter>=<value>``, with an m= line we cannot read or with a stream that has no
connection address at all is refused with ``RemoteProtocolError(status=488)``. Real
phones are tolerated: LF or CRLF line ends, blank trailing lines, unknown attributes
(kept, in order), a missing t= line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from ucgate.sip.errors import LocalProtocolError, RemoteProtocolError

NOT_ACCEPTABLE = 488

# RFC 3264 §5.1 / §6.1 stream directions; "sendrecv" is the default when none is given.
DIRECTIONS = frozenset({"sendrecv", "sendonly", "recvonly", "inactive"})

# Session-level lines other than v/o/s/c/a/m, in the order RFC 4566 §5 fixes: c= goes
# after i/u/e/p and before b/t; r= follows its t=; z/k come after the times.
_BEFORE_C = frozenset("iuep")
_AFTER_C = frozenset("btrzk")
_MEDIA_EXTRA = frozenset("ibk")

# RFC 3551 §6 static payload types a phone may offer without an rtpmap line.
STATIC_PAYLOAD_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("PCMU", 8000, 1),
    3: ("GSM", 8000, 1),
    4: ("G723", 8000, 1),
    8: ("PCMA", 8000, 1),
    9: ("G722", 8000, 1),
    18: ("G729", 8000, 1),
}

_TYPE_LINE = re.compile(r"^([a-z])=(.*)$")
_TOKEN = re.compile(r"^[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+$")


def _bad(reason: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"malformed SDP: {reason}", status=NOT_ACCEPTABLE)


@dataclass(frozen=True, slots=True)
class Attribute:
    """``a=name`` (property, ``value`` None) or ``a=name:value`` (RFC 4566 §5.13)."""

    name: str
    value: str | None = None

    def __str__(self) -> str:
        return self.name if self.value is None else f"{self.name}:{self.value}"


@dataclass(frozen=True, slots=True)
class Origin:
    """``o=<username> <sess-id> <sess-version> <nettype> <addrtype> <address>`` (§5.2)."""

    username: str
    session_id: str
    version: int
    nettype: str
    addrtype: str
    address: str

    def __str__(self) -> str:
        return (
            f"{self.username} {self.session_id} {self.version} "
            f"{self.nettype} {self.addrtype} {self.address}"
        )


@dataclass(frozen=True, slots=True)
class Connection:
    """``c=<nettype> <addrtype> <address>[/ttl[/n]]`` (§5.7); ``address`` keeps any /ttl."""

    nettype: str
    addrtype: str
    address: str

    @property
    def host(self) -> str:
        return self.address.split("/", 1)[0]

    def __str__(self) -> str:
        return f"{self.nettype} {self.addrtype} {self.address}"


@dataclass(frozen=True, slots=True)
class Codec:
    """One payload format of a stream, from its rtpmap/fmtp or the static table."""

    payload_type: str
    name: str
    clock_rate: int | None
    channels: int | None
    fmtp: str | None


@dataclass(frozen=True, slots=True)
class Media:
    """One ``m=`` section (§5.14) with its own lines."""

    kind: str
    port: int
    port_count: int | None
    proto: str
    formats: tuple[str, ...]
    connection: Connection | None = None
    extra: tuple[tuple[str, str], ...] = ()  # i=, b=, k= lines, in order
    attributes: tuple[Attribute, ...] = ()

    def attribute_values(self, name: str) -> list[str]:
        return [a.value or "" for a in self.attributes if a.name == name]

    def _lines(self) -> list[str]:
        port = str(self.port) if self.port_count is None else f"{self.port}/{self.port_count}"
        lines = [f"m={self.kind} {port} {self.proto} {' '.join(self.formats)}"]
        lines.extend(_with_connection(self.extra, self.connection, frozenset("i")))
        lines.extend(f"a={a}" for a in self.attributes)
        return lines


@dataclass(frozen=True, slots=True)
class SessionDescription:
    """A parsed SDP body. Immutable: the ``with_*`` methods return new descriptions."""

    origin: Origin
    session_name: str
    connection: Connection | None = None
    extra: tuple[tuple[str, str], ...] = ()  # i u e p b t r z k lines, in order
    attributes: tuple[Attribute, ...] = ()
    media: tuple[Media, ...] = ()
    version: int = 0

    # ------------------------------------------------------------------ output

    def to_bytes(self) -> bytes:
        lines = [f"v={self.version}", f"o={self.origin}", f"s={self.session_name}"]
        lines.extend(_with_connection(self.extra, self.connection, _BEFORE_C))
        lines.extend(f"a={a}" for a in self.attributes)
        for m in self.media:
            lines.extend(m._lines())
        return ("\r\n".join(lines) + "\r\n").encode("utf-8")

    # ------------------------------------------------------------------ queries

    def _media(self, index: int) -> Media:
        if not 0 <= index < len(self.media):
            raise LocalProtocolError(f"no media stream {index}")
        return self.media[index]

    def direction(self, media_index: int = 0) -> str:
        """Effective direction of a stream: its own attribute, else the session's, else
        sendrecv (RFC 3264 §5.1, RFC 4566 §6)."""
        for attr in self._media(media_index).attributes:
            if attr.name in DIRECTIONS:
                return attr.name
        for attr in self.attributes:
            if attr.name in DIRECTIONS:
                return attr.name
        return "sendrecv"

    def connection_address(self, media_index: int = 0) -> str | None:
        """Where a stream's media goes: its own c= else the session's (§5.7), no /ttl."""
        conn = self._media(media_index).connection if self.media else None
        conn = conn or self.connection
        return conn.host if conn is not None else None

    def is_hold(self) -> bool:
        """True when the sender puts its peer on hold: every active (port != 0) stream is
        sendonly or inactive (RFC 3264 §8.4), or uses the RFC 2543 style ``c=0.0.0.0``
        (RFC 3264 §8.4 still tells answerers to recognise it)."""
        active = [i for i, m in enumerate(self.media) if m.port != 0]
        if not active:
            return False
        return all(
            self.direction(i) in ("sendonly", "inactive")
            or self.connection_address(i) in ("0.0.0.0", "::")
            for i in active
        )

    def media_ports(self) -> tuple[int, ...]:
        return tuple(m.port for m in self.media)

    def codecs(self, media_index: int = 0) -> tuple[Codec, ...]:
        """The stream's formats in offer order (preference order, RFC 3264 §5.1)."""
        media = self._media(media_index)
        rtpmap: dict[str, tuple[str, int | None, int | None]] = {}
        fmtp: dict[str, str] = {}
        for value in media.attribute_values("rtpmap"):
            pt, name, rate, channels = _parse_rtpmap(value)
            rtpmap[pt] = (name, rate, channels)
        for value in media.attribute_values("fmtp"):
            pt, _, params = value.partition(" ")
            fmtp[pt] = params.strip()
        out: list[Codec] = []
        for pt in media.formats:
            if pt in rtpmap:
                name, rate, channels = rtpmap[pt]
            elif pt.isdigit() and int(pt) in STATIC_PAYLOAD_TYPES:
                name, rate, ch = STATIC_PAYLOAD_TYPES[int(pt)]
                channels = ch
            else:
                name, rate, channels = pt, None, None
            out.append(Codec(pt, name, rate, channels, fmtp.get(pt)))
        return tuple(out)

    def has_telephone_event(self, media_index: int | None = None) -> bool:
        """True when an audio stream offers RFC 4733 telephone-event (DTMF over RTP)."""
        indexes = range(len(self.media)) if media_index is None else (media_index,)
        return any(
            self._media(i).kind == "audio"
            and any(c.name.lower() == "telephone-event" for c in self.codecs(i))
            for i in indexes
        )

    # ------------------------------------------------------------------ rewrites

    def with_direction(self, direction: str, media_index: int | None = None) -> SessionDescription:
        """Set the direction of one stream (or all), e.g. "sendonly" to hold (§8.4).

        A session-level direction is dropped and every stream then carries its own, so
        the streams not named keep the direction they had.
        """
        if direction not in DIRECTIONS:
            raise LocalProtocolError(f"unknown direction {direction!r}")
        if media_index is not None:
            self._media(media_index)
        new_media = []
        for i, media in enumerate(self.media):
            wanted = direction if media_index in (None, i) else self.direction(i)
            new_media.append(replace(media, attributes=_set_direction(media.attributes, wanted)))
        session_attrs = tuple(a for a in self.attributes if a.name not in DIRECTIONS)
        return replace(self, attributes=session_attrs, media=tuple(new_media))

    def bump_version(self) -> SessionDescription:
        """o= version + 1: a changed description must carry a higher version (RFC 3264
        §8), which a B2BUA rewriting SDP has to do itself."""
        return replace(self, origin=replace(self.origin, version=self.origin.version + 1))

    def with_connection(self, address: str) -> SessionDescription:
        """Point every stream at ``address`` (media anchoring): session c= set, stream
        c= lines dropped; o= address follows."""
        addrtype = "IP6" if ":" in address else "IP4"
        conn = Connection("IN", addrtype, address)
        media = tuple(replace(m, connection=None) for m in self.media)
        origin = replace(self.origin, addrtype=addrtype, address=address)
        return replace(self, connection=conn, media=media, origin=origin)

    def with_media_port(self, media_index: int, port: int) -> SessionDescription:
        if not 0 <= port <= 65535:
            raise LocalProtocolError(f"bad port {port}")
        media = list(self.media)
        media[media_index] = replace(self._media(media_index), port=port)
        return replace(self, media=tuple(media))


def _with_connection(
    extra: tuple[tuple[str, str], ...], conn: Connection | None, before: frozenset[str]
) -> list[str]:
    """The extra lines in their stored order with c= placed before the first line that
    RFC 4566 §5 puts after it; keeping the stored order is what makes parse(to_bytes(x))
    equal x even for a peer that wrote its lines in another order."""
    out: list[str] = []
    placed = conn is None
    for kind, value in extra:
        if not placed and kind not in before:
            out.append(f"c={conn}")
            placed = True
        out.append(f"{kind}={value}")
    if not placed:
        out.append(f"c={conn}")
    return out


def _set_direction(attrs: tuple[Attribute, ...], direction: str) -> tuple[Attribute, ...]:
    out: list[Attribute] = []
    placed = False
    for attr in attrs:
        if attr.name in DIRECTIONS:
            if not placed:
                out.append(Attribute(direction))
                placed = True
            continue
        out.append(attr)
    if not placed:
        out.append(Attribute(direction))
    return tuple(out)


def _parse_rtpmap(value: str) -> tuple[str, str, int | None, int | None]:
    # RFC 4566 §6: a=rtpmap:<payload type> <encoding name>/<clock rate>[/<parameters>]
    pt, _, rest = value.partition(" ")
    parts = rest.strip().split("/")
    if not pt.isdigit() or len(parts) < 2 or not parts[0] or len(parts) > 3:
        raise _bad(f"rtpmap {value!r}")
    try:
        rate = int(parts[1])
        channels = int(parts[2]) if len(parts) == 3 else None
    except ValueError:
        raise _bad(f"rtpmap {value!r}") from None
    return pt, parts[0], rate, channels


def _parse_int(text: str, what: str, maximum: int) -> int:
    if not text.isascii() or not text.isdigit() or int(text) > maximum:
        raise _bad(f"{what} {text!r}")
    return int(text)


def _parse_origin(value: str) -> Origin:
    parts = value.split(" ")
    if len(parts) != 6 or not all(parts):
        raise _bad(f"o= line {value!r}")
    user, sid, version, nettype, addrtype, address = parts
    seq = _parse_int(version, "o= version", 2**64 - 1)
    return Origin(user, sid, seq, nettype, addrtype, address)


def _parse_connection(value: str) -> Connection:
    parts = value.split(" ")
    if len(parts) != 3 or not all(parts):
        raise _bad(f"c= line {value!r}")
    return Connection(*parts)


def _parse_media_line(value: str) -> Media:
    parts = value.split(" ")
    if len(parts) < 4 or not all(parts):
        raise _bad(f"m= line {value!r}")
    kind, port_text, proto, *formats = parts
    if not _TOKEN.match(kind) or not _TOKEN.match(proto.replace("/", "-")):
        raise _bad(f"m= line {value!r}")
    port_part, slash, count_part = port_text.partition("/")
    port = _parse_int(port_part, "m= port", 65535)
    count = _parse_int(count_part, "m= port count", 65535) if slash else None
    return Media(kind, port, count, proto, tuple(formats))


def _parse_attribute(value: str) -> Attribute:
    name, colon, rest = value.partition(":")
    if not _TOKEN.match(name):
        raise _bad(f"attribute {value!r}")
    attr = Attribute(name, rest if colon else None)
    if name == "rtpmap":
        _parse_rtpmap(rest)
    return attr


def parse_sdp(body: bytes) -> SessionDescription:
    """Parse an SDP body; refuse it with ``RemoteProtocolError(status=488)``."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad("not UTF-8") from None
    raw_lines = text.replace("\r\n", "\n").split("\n")
    while raw_lines and raw_lines[-1].strip() == "":
        raw_lines.pop()
    lines: list[tuple[str, str]] = []
    for raw in raw_lines:
        match = _TYPE_LINE.match(raw)
        if match is None or "\r" in raw or "\x00" in raw:
            raise _bad(f"line {raw[:40]!r}")
        lines.append((match.group(1), match.group(2)))
    if len(lines) < 3 or [t for t, _ in lines[:3]] != ["v", "o", "s"]:
        raise _bad("must start with v=, o=, s= (RFC 4566 §5)")
    version = _parse_int(lines[0][1], "v=", 0)
    origin = _parse_origin(lines[1][1])
    session_name = lines[2][1]

    connection: Connection | None = None
    extra: list[tuple[str, str]] = []
    attributes: list[Attribute] = []
    media: list[Media] = []
    current: Media | None = None
    m_extra: list[tuple[str, str]] = []
    m_attrs: list[Attribute] = []

    def close_media() -> None:
        if current is not None:
            media.append(replace(current, extra=tuple(m_extra), attributes=tuple(m_attrs)))

    for kind, value in lines[3:]:
        if kind == "m":
            close_media()
            current, m_extra, m_attrs = _parse_media_line(value), [], []
        elif kind == "a":
            (m_attrs if current is not None else attributes).append(_parse_attribute(value))
        elif kind == "c":
            conn = _parse_connection(value)
            if current is None:
                if connection is not None:
                    raise _bad("two session-level c= lines")
                connection = conn
            else:
                if current.connection is not None:
                    # RFC 4566 §5.7 allows several c= per stream only for multicast;
                    # a B2BUA relaying unicast calls does not support that.
                    raise _bad("several c= lines in one stream")
                current = replace(current, connection=conn)
        elif current is not None:
            if kind not in _MEDIA_EXTRA:
                raise _bad(f"{kind}= line inside a media section")
            m_extra.append((kind, value))
        else:
            if kind not in _BEFORE_C and kind not in _AFTER_C:
                raise _bad(f"unexpected {kind}= line")
            if kind == "t":
                _parse_times(value)
            extra.append((kind, value))
    close_media()
    for m in media:
        if m.connection is None and connection is None:
            raise _bad("a stream without a connection address (RFC 4566 §5.7)")
    return SessionDescription(
        origin=origin,
        session_name=session_name,
        connection=connection,
        extra=tuple(extra),
        attributes=tuple(attributes),
        media=tuple(media),
        version=version,
    )


def _parse_times(value: str) -> None:
    parts = value.split(" ")
    if len(parts) != 2:
        raise _bad(f"t= line {value!r}")
    for part in parts:
        _parse_int(part, "t= time", 2**64 - 1)
