"""RFC 4733 telephone-event decoding."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from ucgate.media.rfc4733 import DtmfReceiver, telephone_event_types


def packet(
    pt: int, ts: int, event: int, *, end: bool = False, ssrc: int = 7, seq: int = 1
) -> bytes:
    header = struct.pack("!BBHII", 0x80, pt, seq, ts, ssrc)
    return header + struct.pack("!BBH", event, 0x80 if end else 0, 160)


def test_one_press_is_reported_once_despite_repeats_and_triple_end() -> None:
    rx = DtmfReceiver(frozenset({101}))
    presses = [
        rx.feed(packet(101, 1000, 5)),
        rx.feed(packet(101, 1000, 5, seq=2)),
        *(rx.feed(packet(101, 1000, 5, end=True, seq=n)) for n in (3, 4, 5)),
        rx.feed(packet(101, 2000, 11)),
    ]
    assert [p for p in presses if p] == ["5", "#"]


def test_audio_and_other_payloads_are_ignored() -> None:
    rx = DtmfReceiver(frozenset({101}))
    assert rx.feed(packet(0, 1000, 5)) is None  # PCMU
    assert rx.feed(packet(101, 1000, 99)) is None  # not a DTMF event
    assert rx.feed(b"\x00" * 16) is None  # not RTP v2
    assert rx.feed(b"\x80") is None


def test_csrc_and_extension_are_skipped() -> None:
    rx = DtmfReceiver(frozenset({96}))
    header = struct.pack("!BBHII", 0x80 | 0x10 | 1, 96, 1, 5, 9) + b"CSRC"
    ext = struct.pack("!HH", 0xBEDE, 1) + b"\x00" * 4
    assert rx.feed(header + ext + struct.pack("!BBH", 9, 0, 80)) == "9"


@given(st.binary(max_size=64))
def test_never_raises(data: bytes) -> None:
    DtmfReceiver(frozenset({101})).feed(data)


def test_telephone_event_types() -> None:
    assert telephone_event_types(["0 PCMU/8000", "101 telephone-event/8000"]) == {
        101: "101 telephone-event/8000"
    }
    assert telephone_event_types(["x telephone-event/8000", "8 PCMA/8000"]) == {}
