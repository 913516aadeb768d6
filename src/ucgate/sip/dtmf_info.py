"""DTMF digits carried in SIP INFO bodies (RFC 6086 INFO).

Two formats are in the field: ``application/dtmf-relay`` (``Signal=5`` and
``Duration=160`` lines; Cisco's, the de facto standard that pjsip, Asterisk and
FreeSWITCH send) and ``application/dtmf`` (the bare digit). Neither has an RFC of its
own; both carry one key press per INFO. RFC 4733 events in the RTP stream are the
media-path alternative and are not seen here.
"""

from __future__ import annotations

# The sixteen DTMF events (RFC 4733 §3.2 table 3): 0-9, *, #, A-D.
DIGITS = frozenset("0123456789*#ABCD")


def dtmf_digit(content_type: str | None, body: bytes) -> str | None:
    """The key an INFO body carries, or None when it carries none we understand."""
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    try:
        text = body.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    value: str | None = None
    if kind == "application/dtmf-relay":
        for line in text.splitlines():
            name, sep, rest = line.partition("=")
            if sep and name.strip().lower() == "signal":
                value = rest.strip()
                break
    elif kind == "application/dtmf":
        value = text
    if value is None:
        return None
    # Some senders use the RFC 4733 event numbers 10/11 for * and #.
    value = {"10": "*", "11": "#"}.get(value, value).upper()
    return value if value in DIGITS else None
