"""SDP for the plain-RTP side of an embedded anchor, sans-IO.

The worker terminates the RTP/AVP leg itself (RFC 3550 packets, G.711 payloads, RFC 3551
profile), so it writes its own offers and answers here and reads the peer's: where to
send (c=/m= port), which G.711 law, whether RFC 4733 telephone-event is on, and the
direction attribute (RFC 3264 §5.1, §6.1; hold is §8.4).
"""

from __future__ import annotations

from dataclasses import dataclass

from ucgate.media.anchor import MediaError
from ucgate.sip.errors import RemoteProtocolError
from ucgate.sip.sdp import DIRECTIONS, parse_sdp

#: G.711 only: what every trunk and desk phone speaks (RFC 3551 §4.5.14, static PTs).
G711 = {"PCMU": 0, "PCMA": 8}
#: Our dynamic payload type for telephone-event when we write the offer (RFC 4733 §7.1.1).
TELEPHONE_EVENT_PT = 101


@dataclass(frozen=True, slots=True)
class RtpParams:
    """What the RTP peer's SDP says about its single audio stream."""

    address: str
    port: int
    codecs: tuple[tuple[int, str], ...]  # G.711 (pt, name) in the peer's preference order
    telephone_event: int | None
    direction: str

    @property
    def codec(self) -> tuple[int, str]:
        return self.codecs[0]


def reverse_direction(direction: str) -> str:
    """The answerer's view of an offered direction (RFC 3264 §6.1)."""
    return {"sendonly": "recvonly", "recvonly": "sendonly"}.get(direction, direction)


def sends(direction: str) -> bool:
    return direction in ("sendrecv", "sendonly")


def receives(direction: str) -> bool:
    return direction in ("sendrecv", "recvonly")


def make_direction(send: bool, recv: bool) -> str:
    if send and recv:
        return "sendrecv"
    return "sendonly" if send else "recvonly" if recv else "inactive"


def intersect_direction(ours: str, allowed: str) -> str:
    """``ours`` restricted to what ``allowed`` permits (an answer may only narrow the
    offer, RFC 3264 §6.1)."""
    return make_direction(sends(ours) and sends(allowed), receives(ours) and receives(allowed))


def parse_rtp_sdp(body: bytes) -> RtpParams:
    """The peer's audio stream; :class:`MediaError` 488 when there is nothing we can
    bridge (RFC 3261 §21.4.26 Not Acceptable Here)."""
    try:
        sdp = parse_sdp(body)
    except RemoteProtocolError as exc:
        raise MediaError(488, f"unparsable SDP: {exc}") from exc
    for index, media in enumerate(sdp.media):
        if media.kind != "audio" or media.port == 0:
            continue
        codecs: list[tuple[int, str]] = []
        event: int | None = None
        for codec in sdp.codecs(index):
            name = codec.name.upper()
            if not codec.payload_type.isdigit():
                continue
            pt = int(codec.payload_type)
            if name in G711 and (codec.clock_rate or 8000) == 8000:
                codecs.append((pt, name))
            elif name == "TELEPHONE-EVENT" and codec.clock_rate == 8000 and event is None:
                event = pt
        if not codecs:
            raise MediaError(488, "no G.711 codec on the RTP side")
        address = sdp.connection_address(index)
        if address is None:
            raise MediaError(488, "no connection address for the RTP stream")
        direction = sdp.direction(index)
        if address in ("0.0.0.0", "::"):
            direction = intersect_direction(direction, "sendonly")  # RFC 2543 hold
        return RtpParams(address, media.port, tuple(codecs), event, direction)
    raise MediaError(488, "no active audio stream")


def build_rtp_sdp(
    *,
    address: str,
    port: int,
    session_id: int,
    version: int,
    direction: str,
    codecs: tuple[tuple[int, str], ...],
    telephone_event: int | None,
) -> bytes:
    """Our RTP/AVP description (an offer lists several codecs, an answer one)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}")
    formats = [str(pt) for pt, _ in codecs]
    if telephone_event is not None:
        formats.append(str(telephone_event))
    lines = [
        "v=0",
        f"o=ucgate {session_id} {version} IN IP4 {address}",
        "s=ucgate",
        f"c=IN IP4 {address}",
        "t=0 0",
        f"m=audio {port} RTP/AVP {' '.join(formats)}",
    ]
    lines += [f"a=rtpmap:{pt} {name}/8000" for pt, name in codecs]
    if telephone_event is not None:
        lines += [
            f"a=rtpmap:{telephone_event} telephone-event/8000",
            f"a=fmtp:{telephone_event} 0-16",
        ]
    lines += ["a=ptime:20", f"a={direction}"]
    return ("\r\n".join(lines) + "\r\n").encode()
