"""SDP parsing, serialisation and the offer/answer helpers (RFC 4566, RFC 3264)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ucgate.sip.errors import LocalProtocolError, RemoteProtocolError
from ucgate.sip.sdp import Attribute, SessionDescription, parse_sdp

PHONE_OFFER = (
    b"v=0\r\n"
    b"o=alice 2890844526 2890844526 IN IP4 192.0.2.10\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.10\r\n"
    b"t=0 0\r\n"
    b"a=tool:someSoftphone\r\n"
    b"m=audio 49170 RTP/AVP 0 8 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\n"
    b"a=ptime:20\r\n"
    b"a=x-unknown:kept\r\n"
    b"a=sendrecv\r\n"
)


def test_parse_phone_offer() -> None:
    sdp = parse_sdp(PHONE_OFFER)
    assert sdp.origin.version == 2890844526
    assert sdp.connection_address() == "192.0.2.10"
    assert sdp.media_ports() == (49170,)
    assert sdp.direction() == "sendrecv"
    assert not sdp.is_hold()
    assert sdp.has_telephone_event()
    names = [(c.payload_type, c.name, c.clock_rate, c.fmtp) for c in sdp.codecs()]
    # PT 8 has no rtpmap: the RFC 3551 static table names it.
    assert names == [
        ("0", "PCMU", 8000, None),
        ("8", "PCMA", 8000, None),
        ("101", "telephone-event", 8000, "0-16"),
    ]
    # Unknown attributes are kept, in order.
    assert [a.name for a in sdp.media[0].attributes] == [
        "rtpmap", "rtpmap", "fmtp", "ptime", "x-unknown", "sendrecv",
    ]


def test_round_trip_is_byte_exact_for_canonical_input() -> None:
    assert parse_sdp(PHONE_OFFER).to_bytes() == PHONE_OFFER


def test_lf_only_and_trailing_blank_lines_tolerated() -> None:
    lf = PHONE_OFFER.replace(b"\r\n", b"\n") + b"\n\n"
    assert parse_sdp(lf) == parse_sdp(PHONE_OFFER)


def test_missing_t_line_tolerated() -> None:
    body = PHONE_OFFER.replace(b"t=0 0\r\n", b"")
    assert parse_sdp(body).media_ports() == (49170,)


def test_out_of_order_lines_round_trip() -> None:
    body = (
        b"v=0\no=- 1 1 IN IP4 h\ns=x\nt=0 0\ni=info\n"
        b"m=audio 1 RTP/AVP 0\nb=AS:64\ni=m\nc=IN IP4 1.2.3.4\n"
    )
    first = parse_sdp(body)
    assert parse_sdp(first.to_bytes()) == first


@pytest.mark.parametrize(
    ("edit", "held"),
    [
        (lambda b: b.replace(b"a=sendrecv", b"a=sendonly"), True),
        (lambda b: b.replace(b"a=sendrecv", b"a=inactive"), True),
        (lambda b: b.replace(b"a=sendrecv", b"a=recvonly"), False),
        # RFC 2543 style hold, still recognised (RFC 3264 §8.4).
        (lambda b: b.replace(b"c=IN IP4 192.0.2.10", b"c=IN IP4 0.0.0.0"), True),
        # Session-level direction applies when the stream has none.
        (
            lambda b: b.replace(b"a=sendrecv\r\n", b"").replace(
                b"t=0 0\r\n", b"t=0 0\r\na=sendonly\r\n"
            ),
            True,
        ),
    ],
)
def test_is_hold(edit: object, held: bool) -> None:
    assert callable(edit)
    assert parse_sdp(edit(PHONE_OFFER)).is_hold() is held


def test_with_direction_hold_and_resume() -> None:
    sdp = parse_sdp(PHONE_OFFER)
    held = sdp.with_direction("sendonly").bump_version()
    assert held.is_hold() and held.direction() == "sendonly"
    assert held.origin.version == sdp.origin.version + 1
    again = parse_sdp(held.to_bytes())
    assert again == held
    resumed = again.with_direction("sendrecv")
    assert not resumed.is_hold()
    # Exactly one direction attribute remains, where the old one was.
    assert [a.name for a in resumed.media[0].attributes].count("sendrecv") == 1
    with pytest.raises(LocalProtocolError):
        sdp.with_direction("sideways")
    with pytest.raises(LocalProtocolError):
        sdp.with_direction("sendonly", media_index=3)


def test_with_direction_moves_session_level_direction_to_streams() -> None:
    body = (
        b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\na=sendonly\r\n"
        b"m=audio 4000 RTP/AVP 0\r\nm=video 4002 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
    )
    sdp = parse_sdp(body).with_direction("inactive", media_index=1)
    assert sdp.attributes == ()
    assert sdp.direction(0) == "sendonly"
    assert sdp.direction(1) == "inactive"


def test_anchor_rewrites() -> None:
    sdp = parse_sdp(PHONE_OFFER).with_connection("203.0.113.5").with_media_port(0, 30000)
    assert sdp.connection_address() == "203.0.113.5"
    assert sdp.origin.address == "203.0.113.5"
    assert sdp.media_ports() == (30000,)
    assert parse_sdp(sdp.to_bytes()) == sdp


def test_media_level_connection_wins() -> None:
    body = PHONE_OFFER.replace(b"a=ptime:20", b"c=IN IP4 198.51.100.7\r\na=ptime:20")
    assert parse_sdp(body).connection_address() == "198.51.100.7"


def test_no_telephone_event() -> None:
    body = PHONE_OFFER.replace(b" 101\r\n", b"\r\n")
    body = body.replace(b"a=rtpmap:101 telephone-event/8000\r\n", b"")
    assert not parse_sdp(body).has_telephone_event()


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"hello world",
        b"v=0\r\ns=-\r\n",
        b"v=1\r\no=- 1 1 IN IP4 h\r\ns=-\r\n",
        b"v=0\r\no=- 1 x IN IP4 h\r\ns=-\r\n",
        b"v=0\r\no=- 1 1 IN IP4\r\ns=-\r\n",
        b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nm=audio 99999 RTP/AVP 0\r\nc=IN IP4 1.2.3.4\r\n",
        b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nm=audio 4000 RTP/AVP\r\nc=IN IP4 1.2.3.4\r\n",
        # A stream with no connection address anywhere (RFC 4566 §5.7).
        b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nm=audio 4000 RTP/AVP 0\r\n",
        b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nc=IN IP4 1.2.3.4\r\n"
        b"m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU\r\n",
        b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=now\r\n",
        b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nX=1\r\n",
        b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\n\xff\xfe\r\n",
    ],
)
def test_garbage_is_488(body: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_sdp(body)
    assert info.value.status == 488


# ------------------------------------------------------------------ properties

_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.", min_size=1, max_size=8)
_value = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=12).map(
    str.strip
)


@st.composite
def descriptions(draw: st.DrawFn) -> bytes:
    lines = [
        "v=0",
        f"o={draw(_token)} {draw(st.integers(0, 10**9))} {draw(st.integers(0, 10**9))}"
        f" IN IP4 {draw(_token)}",
        f"s={draw(_value)}",
    ]
    session_c = draw(st.booleans())
    if session_c:
        lines.append(f"c=IN IP4 {draw(_token)}")
    lines.append("t=0 0")
    for _ in range(draw(st.integers(0, 3))):
        lines.append(f"a={draw(_token)}" + (f":{draw(_value)}" if draw(st.booleans()) else ""))
    for _ in range(draw(st.integers(0, 3))):
        pts = draw(st.lists(st.integers(0, 127), min_size=1, max_size=4))
        lines.append(f"m=audio {draw(st.integers(0, 65535))} RTP/AVP {' '.join(map(str, pts))}")
        if not session_c or draw(st.booleans()):
            lines.append(f"c=IN IP4 {draw(_token)}")
        for pt in pts:
            if draw(st.booleans()):
                lines.append(f"a=rtpmap:{pt} {draw(_token)}/{draw(st.integers(1, 96000))}")
        if draw(st.booleans()):
            direction = draw(st.sampled_from(["sendrecv", "sendonly", "recvonly", "inactive"]))
            lines.append(f"a={direction}")
    sep = draw(st.sampled_from(["\r\n", "\n"]))
    return (sep.join(lines) + sep).encode()


@given(descriptions())
@settings(max_examples=200)
def test_round_trip_property(body: bytes) -> None:
    sdp = parse_sdp(body)
    assert parse_sdp(sdp.to_bytes()) == sdp
    assert parse_sdp(sdp.with_direction("sendonly").to_bytes()).is_hold() == bool(
        [p for p in sdp.media_ports() if p != 0]
    )
    assert isinstance(sdp, SessionDescription)


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_garbage_never_raises_anything_else(body: bytes) -> None:
    try:
        sdp = parse_sdp(body)
    except RemoteProtocolError as exc:
        assert exc.status == 488
    else:
        assert parse_sdp(sdp.to_bytes()) == sdp


@given(descriptions(), st.data())
@settings(max_examples=200)
def test_mutated_valid_sdp_never_raises_anything_else(body: bytes, data: st.DataObject) -> None:
    pos = data.draw(st.integers(0, len(body)))
    junk = data.draw(st.binary(max_size=6))
    mutated = body[:pos] + junk + body[pos + len(junk):]
    try:
        sdp = parse_sdp(mutated)
        sdp.is_hold()
        sdp.has_telephone_event()
        for i in range(len(sdp.media)):
            sdp.codecs(i)
    except RemoteProtocolError as exc:
        assert exc.status == 488


def test_attribute_str() -> None:
    assert str(Attribute("sendonly")) == "sendonly"
    assert str(Attribute("rtpmap", "0 PCMU/8000")) == "rtpmap:0 PCMU/8000"
