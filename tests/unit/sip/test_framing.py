"""StreamFramer (RFC 3261 §18.3 framing, RFC 5626 §4.4.1 keep-alives)."""

from __future__ import annotations

import pytest

from ucgate.sip.errors import LocalProtocolError, RemoteProtocolError
from ucgate.sip.framing import StreamFramer


def msg(body: bytes = b"", cl_name: bytes = b"Content-Length") -> bytes:
    return (
        b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n"
        + cl_name + b": %d\r\n\r\n" % len(body) + body
    )


A, B, C = msg(b"hello"), msg(), msg(b"x" * 300, b"l")


def drain(framer: StreamFramer) -> list[bytes]:
    out = []
    while (m := framer.next_message()) is not None:
        out.append(m)
    return out


def test_whole() -> None:
    framer = StreamFramer()
    framer.feed(A)
    assert drain(framer) == [A]
    assert framer.buffered == 0


def test_several_in_one_chunk_with_keepalives() -> None:
    framer = StreamFramer()
    framer.feed(b"\r\n\r\n" + A + b"\r\n\r\n\r\n\r\n" + B + C + b"\r\n" + A)
    assert drain(framer) == [A, B, C, A]
    assert framer.take_pings() == 3
    assert framer.take_pings() == 0
    assert framer.pongs == 1


def test_byte_by_byte() -> None:
    stream = A + b"\r\n\r\n" + B + C
    framer = StreamFramer()
    out: list[bytes] = []
    for i in range(len(stream)):
        framer.feed(stream[i : i + 1])
        out += drain(framer)
    assert out == [A, B, C]
    assert framer.pings == 1


def test_every_split_point() -> None:
    stream = A + B + C
    for cut in range(len(stream) + 1):
        framer = StreamFramer()
        framer.feed(stream[:cut])
        got = drain(framer)
        framer.feed(stream[cut:])
        got += drain(framer)
        assert got == [A, B, C], cut


def test_partial_body_waits() -> None:
    framer = StreamFramer()
    framer.feed(A[:-2])
    assert framer.next_message() is None
    framer.feed(A[-2:])
    assert framer.next_message() == A


def test_missing_content_length_is_400_and_breaks_the_framer() -> None:
    framer = StreamFramer()
    framer.feed(b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n\r\n")
    with pytest.raises(RemoteProtocolError) as info:
        framer.next_message()
    assert info.value.status == 400
    with pytest.raises(LocalProtocolError):
        framer.next_message()
    with pytest.raises(LocalProtocolError):
        framer.feed(b"x")


@pytest.mark.parametrize(
    "head",
    [b"Content-Length: 1\r\nl: 2", b"Content-Length: -1", b"Content-Length: 1x"],
)
def test_bad_content_length(head: bytes) -> None:
    framer = StreamFramer()
    framer.feed(b"OPTIONS sip:a@b SIP/2.0\r\n" + head + b"\r\n\r\n")
    with pytest.raises(RemoteProtocolError) as info:
        framer.next_message()
    assert info.value.status == 400


def test_size_limits_drop() -> None:
    framer = StreamFramer(max_size=200)
    framer.feed(b"OPTIONS sip:a@b SIP/2.0\r\n" + b"X: y\r\n" * 50)
    with pytest.raises(RemoteProtocolError) as info:
        framer.next_message()
    assert info.value.status is None
    framer = StreamFramer(max_size=200)
    framer.feed(msg(b"z" * 500)[:120])
    with pytest.raises(RemoteProtocolError) as info:
        framer.next_message()
    assert info.value.status is None
