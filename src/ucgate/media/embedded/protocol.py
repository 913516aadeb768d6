"""The control protocol between ucgate and a media worker, sans-IO.

Each message is one JSON object in a frame: a 4-byte big-endian length, then that many
bytes of UTF-8 JSON. Frames travel over the worker's stdin (ucgate → worker) and stdout
(worker → ucgate); nothing else is ever written to the worker's stdout (the worker
moves fd 1 onto stderr at start, so a stray ``print`` from a library cannot corrupt it).

Three kinds of message, each a frozen dataclass here:

* :class:`Request` (ucgate → worker): ``{"id": 7, "op": "offer", "args": {...}}``;
* :class:`Reply` (worker → ucgate): ``{"id": 7, "ok": true, "result": {...}}`` or
  ``{"id": 7, "ok": false, "status": 488, "reason": "..."}`` (a SIP status, like
  :class:`~ucgate.media.anchor.MediaError`);
* :class:`Event` (worker → ucgate, unsolicited): ``{"event": "dtmf", "data": {...}}``,
  ``{"event": "ready", ...}`` once the worker accepts requests.

Bytes in, messages out: :class:`FrameDecoder` buffers partial frames and never touches a
pipe, so framing is unit-tested byte by byte.
"""

from __future__ import annotations

import enum
import json
import struct
from dataclasses import dataclass, field
from typing import Any

_LENGTH = struct.Struct("!I")
#: An SDP body is a few kB; anything near this is a corrupt stream, not a message.
MAX_FRAME = 1 << 20


class ProtocolError(Exception):
    """The peer broke the framing or sent a message that is not one of ours."""


class Op(enum.Enum):
    OFFER = "offer"
    ANSWER = "answer"
    DELETE = "delete"
    PING = "ping"
    STATS = "stats"
    SHUTDOWN = "shutdown"
    # Send one key toward the RTP peer as RFC 4733 telephone-event packets.
    DTMF = "dtmf"


class EventKind(enum.Enum):
    READY = "ready"
    DTMF = "dtmf"


@dataclass(frozen=True, slots=True)
class Request:
    id: int
    op: Op
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reply:
    id: int
    ok: bool
    result: dict[str, Any] = field(default_factory=dict)
    status: int = 0
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Event:
    kind: EventKind
    data: dict[str, Any] = field(default_factory=dict)


Message = Request | Reply | Event


def _to_obj(message: Message) -> dict[str, Any]:
    if isinstance(message, Request):
        return {"id": message.id, "op": message.op.value, "args": message.args}
    if isinstance(message, Reply):
        if message.ok:
            return {"id": message.id, "ok": True, "result": message.result}
        return {"id": message.id, "ok": False, "status": message.status, "reason": message.reason}
    return {"event": message.kind.value, "data": message.data}


def _from_obj(obj: object) -> Message:
    if not isinstance(obj, dict):
        raise ProtocolError("a message must be a JSON object")
    try:
        if "event" in obj:
            return Event(EventKind(obj["event"]), dict(obj.get("data") or {}))
        ident = obj["id"]
        if not isinstance(ident, int) or isinstance(ident, bool):
            raise ProtocolError("id must be an integer")
        if "op" in obj:
            return Request(ident, Op(obj["op"]), dict(obj.get("args") or {}))
        if obj["ok"] is True:
            return Reply(ident, True, dict(obj.get("result") or {}))
        return Reply(ident, False, status=int(obj["status"]), reason=str(obj["reason"]))
    except (KeyError, ValueError, TypeError) as exc:
        raise ProtocolError(f"malformed message: {exc}") from exc


def encode(message: Message) -> bytes:
    """One framed message."""
    payload = json.dumps(_to_obj(message), separators=(",", ":")).encode()
    if len(payload) > MAX_FRAME:
        raise ProtocolError(f"message of {len(payload)} bytes exceeds {MAX_FRAME}")
    return _LENGTH.pack(len(payload)) + payload


class FrameDecoder:
    """Bytes in, messages out. A :class:`ProtocolError` poisons the stream for good:
    after a bad length there is no way to find the next frame boundary."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._broken: ProtocolError | None = None

    def feed(self, data: bytes) -> list[Message]:
        if self._broken is not None:
            raise self._broken
        self._buffer += data
        out: list[Message] = []
        try:
            while len(self._buffer) >= _LENGTH.size:
                (length,) = _LENGTH.unpack_from(self._buffer)
                if length > MAX_FRAME:
                    raise ProtocolError(f"frame of {length} bytes exceeds {MAX_FRAME}")
                end = _LENGTH.size + length
                if len(self._buffer) < end:
                    break  # need more data
                payload = bytes(self._buffer[_LENGTH.size : end])
                del self._buffer[:end]
                try:
                    obj = json.loads(payload)
                except ValueError as exc:
                    raise ProtocolError(f"frame is not JSON: {exc}") from exc
                out.append(_from_obj(obj))
        except ProtocolError as exc:
            self._broken = exc
            raise
        return out

    @property
    def buffered(self) -> int:
        return len(self._buffer)
