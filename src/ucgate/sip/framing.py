"""Message framing on stream transports (RFC 3261 §18.3; RFC 5626 §4.4.1 keep-alives).

On TCP/TLS the only message boundary is the empty line plus Content-Length octets of
body, so the framer finds exactly that and nothing more; parsing is the parser's job.
Any framing error leaves the stream position unknown, so the connection must be closed:
the framer refuses further use after it raised.
"""

from __future__ import annotations

import re

from ucgate.sip.errors import LocalProtocolError, RemoteProtocolError

_HEAD_END = b"\r\n\r\n"
# Content-Length or its compact form 'l' at the start of a header line (§7.3.3).
_CONTENT_LENGTH_RE = re.compile(rb"\n(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)


class StreamFramer:
    """Cut a byte stream into whole SIP messages.

    ``feed()`` bytes as they arrive, then call ``next_message()`` until it returns None.
    A double CRLF between messages is a keep-alive ping (RFC 5626 §4.4.1): it is counted
    in ``pings`` and the transport answers each with a single CRLF (``take_pings()``). A
    lone CRLF between messages is a pong and is counted in ``pongs``.
    """

    def __init__(self, max_size: int = 65535) -> None:
        self._buf = bytearray()
        self._max_size = max_size
        self._scan_from = 0  # where to resume the search for the end of the header block
        self._broken = False
        self.pings = 0
        self.pongs = 0

    def feed(self, data: bytes) -> None:
        if self._broken:
            raise LocalProtocolError("framer used after a framing error; close the connection")
        self._buf += data

    def take_pings(self) -> int:
        """Pings seen since the last call: the number of CRLF pongs to send back."""
        count, self.pings = self.pings, 0
        return count

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def _fail(self, reason: str, status: int | None) -> RemoteProtocolError:
        self._broken = True
        return RemoteProtocolError(reason, status)

    def _skip_keepalives(self) -> None:
        buf = self._buf
        while buf[:2] == b"\r\n":
            if buf[:4] == _HEAD_END:
                self.pings += 1
                del buf[:4]
            elif len(buf) < 4 and bytes(buf) in (b"\r\n", b"\r\n\r"):
                return  # maybe the first half of a ping: wait for more bytes
            else:
                self.pongs += 1
                del buf[:2]
            self._scan_from = 0

    def next_message(self) -> bytes | None:
        """One whole message (header block plus body), or None when more data is needed."""
        if self._broken:
            raise LocalProtocolError("framer used after a framing error; close the connection")
        self._skip_keepalives()
        buf = self._buf
        if buf[:2] == b"\r\n":
            return None
        end = buf.find(_HEAD_END, max(0, self._scan_from - 3))
        if end < 0:
            self._scan_from = len(buf)
            if len(buf) > self._max_size:
                raise self._fail("header block larger than the size limit", None)
            return None
        head_len = end + 4
        lengths = {m.group(1).strip() for m in _CONTENT_LENGTH_RE.finditer(buf, 0, end + 2)}
        if not lengths:
            # §18.3: on a stream Content-Length is mandatory; without it there is no frame.
            raise self._fail("missing Content-Length on a stream transport", 400)
        if len(lengths) > 1:
            raise self._fail("conflicting Content-Length values", 400)
        raw = lengths.pop()
        if not raw.isdigit() or len(raw) > 10:
            raise self._fail("bad Content-Length", 400)
        total = head_len + int(raw)
        if total > self._max_size:
            raise self._fail("message larger than the size limit", None)
        if len(buf) < total:
            self._scan_from = end  # header block found; only the body is missing
            return None
        message = bytes(buf[:total])
        del buf[:total]
        self._scan_from = 0
        return message
