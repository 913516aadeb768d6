"""Property tests: the parser and framer only ever fail with RemoteProtocolError."""

from __future__ import annotations

import pathlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ucgate.sip.errors import RemoteProtocolError
from ucgate.sip.framing import StreamFramer
from ucgate.sip.message import Headers, Request
from ucgate.sip.parser import parse_message, validate_request, validate_response
from ucgate.sip.uas_checks import check_request

TORTURE = pathlib.Path(__file__).parent / "torture"
SEEDS = [p.read_bytes() for p in sorted(TORTURE.glob("*.dat"))]
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CHECKS = {
    "allowed_methods": frozenset({"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER"}),
    "supported_extensions": frozenset({"path"}),
    "accepted_content_types": frozenset({"application/sdp"}),
}


def full_pipeline(data: bytes) -> None:
    """Everything a UDP transport would do with a datagram; only protocol errors escape."""
    try:
        msg = parse_message(data)
        if isinstance(msg, Request):
            check_request(msg, **CHECKS)  # type: ignore[arg-type]
            validate_request(msg)
        else:
            validate_response(msg)
    except RemoteProtocolError:
        pass


@FAST
@given(st.binary(max_size=400))
def test_arbitrary_bytes(data: bytes) -> None:
    full_pipeline(data)


@FAST
@given(st.binary(max_size=200))
def test_arbitrary_bytes_after_a_start_line(data: bytes) -> None:
    full_pipeline(b"INVITE sip:a@b SIP/2.0\r\n" + data)
    full_pipeline(b"SIP/2.0 200 OK\r\n" + data)


_NASTY = st.sampled_from([b"\r", b"\n", b" ", b"\x00", b":", b";", b",", b"<", b">", b'"',
                          b"\\", b"%", b"@", b"\r\n", b"\r\n\r\n", b"\xff", b"\t"])


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.integers(0, 3))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == 0 and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == 1:
            data[pos:pos] = draw(_NASTY)
        elif kind == 2:
            del data[pos : pos + draw(st.integers(1, 20))]
        else:
            data = data[:pos]
    return bytes(data)


@FAST
@given(mutated())
def test_mutated_torture_messages(data: bytes) -> None:
    full_pipeline(data)


_token = st.from_regex(r"[A-Za-z][A-Za-z0-9\-.!%*_+`'~]{0,10}", fullmatch=True)
_value = st.from_regex(r"[A-Za-z0-9][ -~]{0,30}[A-Za-z0-9]", fullmatch=True)
_hname = st.from_regex(r"X-[A-Za-z0-9\-]{1,12}", fullmatch=True)


@FAST
@given(method=_token.map(str.upper), user=st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True),
       headers=st.lists(st.tuples(_hname, _value), max_size=8), body=st.binary(max_size=64))
def test_round_trip(method: str, user: str, headers: list[tuple[str, str]], body: bytes) -> None:
    req = Request(method, f"sip:{user}@example.com", Headers(headers), body)
    again = parse_message(req.to_bytes())
    assert isinstance(again, Request)
    assert (again.method, again.uri, again.body) == (req.method, req.uri, req.body)
    assert [(n, v) for n, v in again.headers if n != "Content-Length"] == list(req.headers)


VALID_STREAM = (
    b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nl: 3\r\n\r\nabc"
    b"\r\n\r\n"
    b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"
    b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 5\r\n\r\nhello"
)


@FAST
@given(st.lists(st.integers(0, len(VALID_STREAM)), max_size=6))
def test_framer_split_anywhere(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    framer = StreamFramer()
    out: list[bytes] = []
    prev = 0
    for cut in [*points, len(VALID_STREAM)]:
        framer.feed(VALID_STREAM[prev:cut])
        prev = cut
        while (m := framer.next_message()) is not None:
            out.append(m)
    assert len(out) == 3
    assert out[0].endswith(b"abc") and out[2].endswith(b"hello")
    assert framer.pings == 1


@FAST
@given(st.binary(max_size=300), st.integers(1, 50))
def test_framer_arbitrary_bytes(data: bytes, chunk: int) -> None:
    framer = StreamFramer(max_size=256)
    try:
        for i in range(0, len(data), chunk):
            framer.feed(data[i : i + chunk])
            while (m := framer.next_message()) is not None:
                full_pipeline(m)
    except RemoteProtocolError:
        pass
