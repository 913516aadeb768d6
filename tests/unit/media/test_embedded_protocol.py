"""Framing of the media worker control protocol: whole, byte by byte, batched, broken."""

from __future__ import annotations

import struct

import pytest

from ucgate.media.embedded.protocol import (
    MAX_FRAME,
    Event,
    EventKind,
    FrameDecoder,
    Op,
    ProtocolError,
    Reply,
    Request,
    encode,
)

MESSAGES = [
    Request(1, Op.OFFER, {"call_id": "c", "branch": "b", "sdp": "v=0\r\n", "toward": "rtp"}),
    Reply(1, True, {"sdp": "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"}),
    Reply(2, False, status=488, reason="no G.711 codec"),
    Event(EventKind.DTMF, {"call_id": "c", "branch": "b", "digit": "#"}),
    Event(EventKind.READY, {"pid": 42}),
    Request(3, Op.PING),
]


def test_round_trip_each_message_whole() -> None:
    for message in MESSAGES:
        assert FrameDecoder().feed(encode(message)) == [message]


def test_byte_by_byte_and_batched() -> None:
    stream = b"".join(encode(m) for m in MESSAGES)
    decoder = FrameDecoder()
    out = []
    for i in range(len(stream)):
        out += decoder.feed(stream[i : i + 1])
    assert out == MESSAGES
    assert decoder.buffered == 0
    assert FrameDecoder().feed(stream) == MESSAGES


def test_partial_frame_waits_for_more() -> None:
    frame = encode(MESSAGES[0])
    decoder = FrameDecoder()
    assert decoder.feed(frame[:-1]) == []
    assert decoder.buffered == len(frame) - 1
    assert decoder.feed(frame[-1:]) == [MESSAGES[0]]


def test_unicode_survives() -> None:
    message = Reply(9, False, status=500, reason="échec ☎")
    assert FrameDecoder().feed(encode(message)) == [message]


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[1, 2]",
        b'{"id": "1", "op": "ping"}',
        b'{"id": true, "op": "ping"}',
        b'{"id": 1, "op": "dance"}',
        b'{"event": "party"}',
        b'{"id": 1, "ok": false}',
        b'{"id": 1}',
    ],
)
def test_malformed_messages_raise_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(struct.pack("!I", len(payload)) + payload)


def test_oversized_frame_poisons_the_stream() -> None:
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError):
        decoder.feed(struct.pack("!I", MAX_FRAME + 1))
    # No way to find the next boundary after a bad length: the stream stays broken.
    with pytest.raises(ProtocolError):
        decoder.feed(encode(MESSAGES[-1]))


def test_encode_refuses_oversized_message() -> None:
    with pytest.raises(ProtocolError):
        encode(Request(1, Op.OFFER, {"sdp": "x" * (MAX_FRAME + 1)}))
