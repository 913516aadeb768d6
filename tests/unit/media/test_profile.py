"""Which legs need a media anchor."""

from __future__ import annotations

import pytest

from ucgate.media.anchor import MediaProfile
from ucgate.media.profile import needs_anchor, profile_of_sdp, profile_of_transport
from ucgate.sip.peer import TransportKind


def sdp(proto: str, kind: str = "audio") -> bytes:
    return (
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m={kind} 4000 {proto} 0\r\na=rtpmap:0 PCMU/8000\r\n"
    ).encode()


@pytest.mark.parametrize(
    ("proto", "profile"),
    [
        ("RTP/AVP", MediaProfile.RTP),
        ("UDP/TLS/RTP/SAVPF", MediaProfile.WEBRTC),
        ("udp/tls/rtp/savpf", MediaProfile.WEBRTC),
        ("RTP/SAVPF", MediaProfile.WEBRTC),
    ],
)
def test_profile_from_the_audio_stream(proto: str, profile: MediaProfile) -> None:
    assert profile_of_sdp(sdp(proto)) is profile


def test_no_audio_or_garbage_gives_no_profile() -> None:
    assert profile_of_sdp(sdp("RTP/AVP", kind="video")) is None
    assert profile_of_sdp(b"not sdp") is None


def test_websocket_devices_are_browsers() -> None:
    assert profile_of_transport(TransportKind.WS) is MediaProfile.WEBRTC
    assert profile_of_transport(TransportKind.WSS) is MediaProfile.WEBRTC
    for kind in (TransportKind.UDP, TransportKind.TCP, TransportKind.TLS):
        assert profile_of_transport(kind) is MediaProfile.RTP


def test_anchor_only_when_profiles_differ() -> None:
    assert needs_anchor(MediaProfile.WEBRTC, MediaProfile.RTP)
    assert needs_anchor(MediaProfile.RTP, MediaProfile.WEBRTC)
    assert not needs_anchor(MediaProfile.RTP, MediaProfile.RTP)
    assert not needs_anchor(None, MediaProfile.WEBRTC)  # offerless INVITE: pass through
