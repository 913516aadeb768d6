"""DTMF events in RTP (RFC 4733), decoded sans-IO: datagrams in, key presses out.

Used where ucgate itself answers a call to collect digits (the session-PIN DID). Only the
``telephone-event`` payload is read; audio packets are ignored, nothing is sent back.

RFC 4733 §2.5.1: a sender repeats an event's packets (same RTP timestamp, growing
duration) for as long as the key is held and sends the final "end" packet three times,
so one key press is one (SSRC, timestamp) pair, reported once, on its first packet.
"""

from __future__ import annotations

import struct

# RFC 4733 §3.2 table 3: events 0-15.
_EVENTS = "0123456789*#ABCD"
_RTP_HEADER = struct.Struct("!BBHII")


class DtmfReceiver:
    def __init__(self, payload_types: frozenset[int]) -> None:
        self.payload_types = payload_types
        self._seen: set[tuple[int, int]] = set()

    def feed(self, datagram: bytes) -> str | None:
        """The key a new press starts with this packet, else None (audio, repeats, junk)."""
        if len(datagram) < _RTP_HEADER.size + 4:
            return None
        first, second, _seq, timestamp, ssrc = _RTP_HEADER.unpack_from(datagram)
        if first >> 6 != 2 or (second & 0x7F) not in self.payload_types:
            return None  # not RTP version 2 (RFC 3550 §5.1), or not telephone-event
        offset = _RTP_HEADER.size + 4 * (first & 0x0F)  # CSRC list
        if first & 0x10:  # header extension (RFC 3550 §5.3.1)
            if len(datagram) < offset + 4:
                return None
            (words,) = struct.unpack_from("!H", datagram, offset + 2)
            offset += 4 + 4 * words
        if len(datagram) < offset + 4:
            return None
        event = datagram[offset]
        if event >= len(_EVENTS):
            return None
        key = (ssrc, timestamp)
        if key in self._seen:
            return None
        if len(self._seen) > 1000:  # a caller cannot make us hoard memory
            self._seen.clear()
        self._seen.add(key)
        return _EVENTS[event]


def telephone_event_types(rtpmaps: list[str]) -> dict[int, str]:
    """``{payload type: rtpmap}`` of the telephone-event formats among ``a=rtpmap`` values."""
    found: dict[int, str] = {}
    for value in rtpmaps:
        pt, _, encoding = value.partition(" ")
        if encoding.lower().startswith("telephone-event/") and pt.isdigit():
            found[int(pt)] = value
    return found
