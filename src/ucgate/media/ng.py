"""rtpengine's ng control protocol, sans-IO: commands in, datagrams out, replies parsed.

The ng protocol (rtpengine ``docs/ng_control_protocol.md``) is one UDP datagram per
message: ``<cookie> <bencoded dictionary>``. The reply repeats the cookie; rtpengine
caches replies per cookie, so a lost datagram is retried with the *same* cookie and
the command is never applied twice. Nothing here touches a socket or a clock.

The flag sets below are the ones Kamailio's rtpengine module users pass for a
WebRTC ↔ SIP gateway: the side toward a browser gets ICE, DTLS-SRTP with the
``UDP/TLS/RTP/SAVPF`` profile and rtcp-mux (RFC 8834 §5); the side toward a trunk gets
plain ``RTP/AVP`` with ICE and crypto removed; G.711 is transcoded in so that a trunk
always finds PCMU/PCMA and a browser always finds something it can decode.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ucgate.media.anchor import MediaError, MediaProfile

Command = dict[str, Any]


class NgProtocolError(Exception):
    """A datagram that is not an ng reply."""


def _to_bytes(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes | int):
        return value
    if isinstance(value, list | tuple):
        return [_to_bytes(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k).encode("utf-8"): _to_bytes(v) for k, v in value.items()}
    raise TypeError(f"cannot bencode {type(value).__name__}")


def _to_text(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    if isinstance(value, list):
        return [_to_text(v) for v in value]
    if isinstance(value, dict):
        return {k.decode("utf-8", "replace"): _to_text(v) for k, v in value.items()}
    return value


# Bencoding (BEP 3) is written out here rather than taken from a library: the maintained
# ones (fastbencode, bencode.py) insist on keys in sorted order, as BitTorrent requires,
# and rtpengine's replies do not sort theirs. Decoding is strict everywhere else.


def bencode(value: Any) -> bytes:
    out: list[bytes] = []
    _encode(value, out)
    return b"".join(out)


def _encode(value: Any, out: list[bytes]) -> None:
    if isinstance(value, bytes):
        out += (str(len(value)).encode(), b":", value)
    elif isinstance(value, bool):
        raise TypeError("bencode has no booleans")
    elif isinstance(value, int):
        out += (b"i", str(value).encode(), b"e")
    elif isinstance(value, list):
        out.append(b"l")
        for item in value:
            _encode(item, out)
        out.append(b"e")
    elif isinstance(value, dict):
        out.append(b"d")
        for k in sorted(value):
            _encode(k, out)
            _encode(value[k], out)
        out.append(b"e")
    else:
        raise TypeError(f"cannot bencode {type(value).__name__}")


def bdecode(data: bytes) -> Any:
    value, end = _decode(data, 0, 0)
    if end != len(data):
        raise NgProtocolError("trailing data after the dictionary")
    return value


_MAX_DEPTH = 32


def _decode(data: bytes, i: int, depth: int) -> tuple[Any, int]:
    if depth > _MAX_DEPTH or i >= len(data):
        raise NgProtocolError("truncated or too deep")
    lead = data[i : i + 1]
    if lead == b"i":
        end = data.index(b"e", i)
        return int(data[i + 1 : end]), end + 1
    if lead == b"l":
        items: list[Any] = []
        i += 1
        while data[i : i + 1] != b"e":
            item, i = _decode(data, i, depth + 1)
            items.append(item)
        return items, i + 1
    if lead == b"d":
        result: dict[bytes, Any] = {}
        i += 1
        while data[i : i + 1] != b"e":
            key, i = _decode(data, i, depth + 1)
            if not isinstance(key, bytes):
                raise NgProtocolError("dictionary key is not a string")
            result[key], i = _decode(data, i, depth + 1)
        return result, i + 1
    if lead.isdigit():
        colon = data.index(b":", i)
        start = colon + 1
        end = start + int(data[i:colon])
        if end > len(data):
            raise NgProtocolError("string runs past the end")
        return data[start:end], end
    raise NgProtocolError(f"unexpected byte {lead!r} at {i}")


def new_cookie() -> str:
    return secrets.token_hex(8)


def encode(cookie: str, command: Mapping[str, Any]) -> bytes:
    """One request datagram."""
    body: bytes = bencode(_to_bytes(command))
    return cookie.encode("ascii") + b" " + body


def decode(datagram: bytes) -> tuple[str, dict[str, Any]]:
    """``(cookie, reply)`` of a reply datagram; :class:`NgProtocolError` if it is not one."""
    cookie, sep, body = datagram.partition(b" ")
    if not sep or not cookie:
        raise NgProtocolError("no cookie")
    try:
        reply = bdecode(body)
    except (ValueError, IndexError) as exc:  # index() misses, int() of junk
        raise NgProtocolError(f"bad bencode: {exc}") from exc
    if not isinstance(reply, dict):
        raise NgProtocolError("reply is not a dictionary")
    text = _to_text(reply)
    assert isinstance(text, dict)
    return cookie.decode("ascii", "replace"), text


def result_sdp(reply: Mapping[str, Any]) -> bytes:
    """The rewritten SDP of an ``offer``/``answer`` reply, or the error as a MediaError."""
    check(reply)
    sdp = reply.get("sdp")
    if isinstance(sdp, str):
        return sdp.encode("utf-8")
    if isinstance(sdp, bytes):
        return sdp
    raise MediaError(500, "rtpengine reply has no SDP")


def check(reply: Mapping[str, Any]) -> None:
    result = reply.get("result")
    if result in ("ok", "pong"):
        return
    reason = str(reply.get("error-reason") or reply.get("warning") or result or "no result")
    # rtpengine refuses new calls with "load limit exceeded" when over its caps:
    # that is capacity (503, RFC 3261 §21.5.4); anything else is a media failure.
    status = 503 if "limit" in reason.lower() else 488 if "codec" in reason.lower() else 500
    raise MediaError(status, f"rtpengine: {reason}")


def _toward(profile: MediaProfile) -> Command:
    """Flags that make the SDP rtpengine returns right for a leg speaking ``profile``.

    No ``DTLS`` flag on either side: ``DTLS=off`` in the answer toward a trunk also
    switches DTLS off on the browser's side of the same call (then SRTP has no keys);
    the transport-protocol alone decides where DTLS-SRTP runs.
    """
    if profile is MediaProfile.WEBRTC:
        return {
            "transport-protocol": "UDP/TLS/RTP/SAVPF",
            "ICE": "force",
            "SDES": ["off"],
            "rtcp-mux": ["require"],
            "flags": ["trust-address", "generate-mid"],
            "replace": ["origin", "session-connection"],
            # Every browser decodes G.711 (RFC 7874 §3); transcoding it in means a
            # trunk's PCMA-only offer still finds a codec.
            "codec": {"transcode": ["PCMU", "PCMA"]},
        }
    return {
        "transport-protocol": "RTP/AVP",
        "ICE": "remove",
        "rtcp-mux": ["demux"],
        "flags": ["trust-address", "strip-extmap"],
        "replace": ["origin", "session-connection"],
        # A browser may offer Opus first; trunks want G.711 (the usual PSTN codec).
        "codec": {"transcode": ["PCMU", "PCMA"], "mask": ["opus"]},
    }


@dataclass(frozen=True, slots=True)
class Tags:
    """rtpengine's view of one anchored session: call-id and the two party tags."""

    call_id: str
    from_tag: str
    to_tag: str | None


def offer(tags: Tags, sdp: bytes, toward: MediaProfile) -> Command:
    command: Command = {
        "command": "offer",
        "call-id": tags.call_id,
        "from-tag": tags.from_tag,
        "sdp": sdp,
        **_toward(toward),
    }
    if tags.to_tag is not None:
        command["to-tag"] = tags.to_tag
    return command


def answer(tags: Tags, sdp: bytes, toward: MediaProfile) -> Command:
    assert tags.to_tag is not None
    return {
        "command": "answer",
        "call-id": tags.call_id,
        "from-tag": tags.from_tag,
        "to-tag": tags.to_tag,
        "sdp": sdp,
        **_toward(toward),
    }


def delete(call_id: str) -> Command:
    return {"command": "delete", "call-id": call_id}


def ping() -> Command:
    return {"command": "ping"}
