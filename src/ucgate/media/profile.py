"""Which media profile a leg speaks, and whether a leg pair needs an anchor.

Pure functions over SDP and transport kinds; the B2BUA asks them once per fork.
"""

from __future__ import annotations

from ucgate.media.anchor import MediaProfile
from ucgate.sip.errors import RemoteProtocolError
from ucgate.sip.peer import TransportKind
from ucgate.sip.sdp import parse_sdp

# RFC 5764 §8 / RFC 8827 §6.5: browsers only do DTLS-SRTP with the secure AVPF profile,
# over UDP or (TCP/)TLS; "RTP/SAVPF" alone is SDES-keyed and still not what a browser
# accepts, but it is not plain RTP either, so it is treated as WebRTC-side too.
_WEBRTC_PROTOS = ("UDP/TLS/RTP/SAVPF", "UDP/TLS/RTP/SAVP", "TCP/TLS/RTP/SAVPF", "RTP/SAVPF")


def profile_of_sdp(body: bytes) -> MediaProfile | None:
    """The profile of the first audio stream of ``body``; None when there is no audio
    stream to judge by (an SDP-less INVITE, or a body we cannot parse)."""
    try:
        sdp = parse_sdp(body)
    except RemoteProtocolError:
        return None
    for media in sdp.media:
        if media.kind == "audio":
            proto = media.proto.upper()
            return MediaProfile.WEBRTC if proto in _WEBRTC_PROTOS else MediaProfile.RTP
    return None


def profile_of_transport(kind: TransportKind) -> MediaProfile:
    """What a device reached over ``kind`` is expected to speak.

    RFC 7118 WebSocket clients are browsers (JsSIP, SIP.js) and browsers only do WebRTC
    media; everything else (UDP, TCP, TLS) is a phone, a PBX or a trunk doing RTP/AVP.
    """
    if kind in (TransportKind.WS, TransportKind.WSS):
        return MediaProfile.WEBRTC
    return MediaProfile.RTP


def needs_anchor(offer_profile: MediaProfile | None, target: MediaProfile) -> bool:
    """True when the offerer's media cannot reach the target directly."""
    return offer_profile is not None and offer_profile is not target
