"""SDP of the embedded anchor's plain-RTP side."""

from __future__ import annotations

import pytest

from ucgate.media.anchor import MediaError
from ucgate.media.embedded.rtp_sdp import (
    build_rtp_sdp,
    intersect_direction,
    parse_rtp_sdp,
    reverse_direction,
)

PHONE = (
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 18 8 0 96\r\na=rtpmap:18 G729/8000\r\n"
    b"a=rtpmap:96 telephone-event/8000\r\na=fmtp:96 0-15\r\na=sendonly\r\n"
)


def test_parse_keeps_g711_in_peer_order_and_telephone_event() -> None:
    params = parse_rtp_sdp(PHONE)
    assert params.address == "192.0.2.10" and params.port == 4000
    assert params.codecs == ((8, "PCMA"), (0, "PCMU"))
    assert params.codec == (8, "PCMA")
    assert params.telephone_event == 96
    assert params.direction == "sendonly"


def test_rfc2543_hold_address_means_we_must_not_send() -> None:
    body = PHONE.replace(b"c=IN IP4 192.0.2.10", b"c=IN IP4 0.0.0.0").replace(
        b"a=sendonly", b"a=sendrecv"
    )
    assert parse_rtp_sdp(body).direction == "sendonly"


@pytest.mark.parametrize(
    "body",
    [
        b"garbage",
        PHONE.replace(b"RTP/AVP 18 8 0 96", b"RTP/AVP 18 96"),
        PHONE.replace(b"m=audio 4000", b"m=audio 0"),
    ],
)
def test_nothing_to_bridge_is_488(body: bytes) -> None:
    with pytest.raises(MediaError) as exc:
        parse_rtp_sdp(body)
    assert exc.value.status == 488


def test_build_round_trips() -> None:
    body = build_rtp_sdp(
        address="127.0.0.1",
        port=5004,
        session_id=7,
        version=3,
        direction="recvonly",
        codecs=((0, "PCMU"), (8, "PCMA")),
        telephone_event=101,
    )
    params = parse_rtp_sdp(body)
    assert params.codecs == ((0, "PCMU"), (8, "PCMA"))
    assert params.telephone_event == 101
    assert params.direction == "recvonly"
    assert (params.address, params.port) == ("127.0.0.1", 5004)
    assert b"o=ucgate 7 3 IN IP4 127.0.0.1" in body


def test_directions() -> None:
    assert reverse_direction("sendonly") == "recvonly"
    assert reverse_direction("inactive") == "inactive"
    assert intersect_direction("sendrecv", "recvonly") == "recvonly"
    assert intersect_direction("sendonly", "recvonly") == "inactive"
    assert intersect_direction("sendrecv", "sendrecv") == "sendrecv"
