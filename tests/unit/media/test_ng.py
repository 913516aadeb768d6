"""rtpengine ng protocol codec and command builder (sans-IO)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ucgate.media import ng
from ucgate.media.anchor import MediaError, MediaProfile

values = st.recursive(
    st.binary(max_size=20) | st.integers(min_value=-(2**40), max_value=2**40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.binary(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(values)
def test_bencode_round_trip(value: object) -> None:
    assert ng.bdecode(ng.bencode(value)) == value


def test_decode_accepts_unsorted_keys_as_rtpengine_sends_them() -> None:
    cookie, reply = ng.decode(b"abc d6:result2:ok3:sdp3:v=0e")
    assert cookie == "abc"
    assert reply == {"result": "ok", "sdp": "v=0"}
    # rtpengine puts "sdp" before "result" in some replies; BitTorrent decoders refuse that.
    assert ng.decode(b"x d3:sdp3:v=06:result2:oke")[1]["result"] == "ok"


@pytest.mark.parametrize(
    "datagram",
    [b"", b"nocookie", b"c i1e", b"c d3:sdpe", b"c d3:sdp99:short", b"c d1:ai1ee junk", b"c x"],
)
def test_decode_rejects_garbage(datagram: bytes) -> None:
    with pytest.raises(ng.NgProtocolError):
        ng.decode(datagram)


def test_deep_nesting_is_refused_not_a_recursion_error() -> None:
    with pytest.raises(ng.NgProtocolError):
        ng.decode(b"c " + b"l" * 100 + b"e" * 100)


def test_encode_is_cookie_space_dictionary() -> None:
    assert ng.encode("k1", {"command": "ping"}) == b"k1 d7:command4:pinge"


def test_offer_toward_webrtc_asks_for_ice_dtls_srtp_and_mux() -> None:
    cmd = ng.offer(ng.Tags("c/b0", "a", None), b"v=0", MediaProfile.WEBRTC)
    assert cmd["command"] == "offer" and "to-tag" not in cmd
    assert cmd["transport-protocol"] == "UDP/TLS/RTP/SAVPF"
    assert cmd["ICE"] == "force" and cmd["rtcp-mux"] == ["require"]
    assert "DTLS" not in cmd  # DTLS=off on one side would switch it off on both


def test_reoffer_and_answer_name_both_tags() -> None:
    re = ng.offer(ng.Tags("c/b0", "b", "a"), b"v=0", MediaProfile.RTP)
    assert (re["from-tag"], re["to-tag"]) == ("b", "a")
    assert re["ICE"] == "remove" and re["transport-protocol"] == "RTP/AVP"
    ans = ng.answer(ng.Tags("c/b0", "a", "b"), b"v=0", MediaProfile.WEBRTC)
    assert (ans["command"], ans["from-tag"], ans["to-tag"]) == ("answer", "a", "b")


@pytest.mark.parametrize(
    ("reply", "status"),
    [
        ({"result": "error", "error-reason": "load limit exceeded"}, 503),
        ({"result": "error", "error-reason": "No usable codec"}, 488),
        ({"result": "error", "error-reason": "Unknown call-id"}, 500),
        ({}, 500),
    ],
)
def test_errors_carry_their_sip_status(reply: dict[str, object], status: int) -> None:
    with pytest.raises(MediaError) as caught:
        ng.result_sdp(reply)
    assert caught.value.status == status


def test_result_sdp_returns_bytes() -> None:
    assert ng.result_sdp({"result": "ok", "sdp": "v=0\r\n"}) == b"v=0\r\n"
