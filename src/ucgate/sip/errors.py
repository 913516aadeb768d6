"""Errors of the SIP core.

Peer faults carry the SIP status the layer that catches them must answer with
(RFC 3261 §8.2, §16.3); misuse by our own code raises :class:`LocalProtocolError` at once.
"""

from __future__ import annotations


class SipError(Exception):
    """Base of every error the SIP core raises on purpose."""


class RemoteProtocolError(SipError):
    """The peer sent something we must refuse.

    ``status`` is the final response to send when a response is possible (a request
    whose Via/Call-ID/CSeq/From/To could be read); ``None`` means the message is too
    broken to answer and must be dropped (RFC 3261 §18.3 / RFC 4475 §3.1.2).
    """

    def __init__(self, reason: str, status: int | None = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class LocalProtocolError(SipError):
    """Our own code asked the core to do something the protocol forbids."""
