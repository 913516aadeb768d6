"""The SIP transaction layer (RFC 3261 §17, RFC 6026), sans-IO.

The glue feeds :class:`TransactionLayer` parsed messages and the time, and drains the
events and messages it produces; see :mod:`ucgate.sip.transaction.layer`.
"""

from ucgate.sip.transaction.events import (
    AckReceived,
    CancelReceived,
    RequestReceived,
    ResponseReceived,
    StrayResponseReceived,
    TransactionEvent,
    TransactionTerminated,
    TransactionTimedOut,
    TransportErrorOccurred,
)
from ucgate.sip.transaction.key import MAGIC_COOKIE, Side, TxKey, client_key, server_key
from ucgate.sip.transaction.layer import TransactionLayer, random_branch
from ucgate.sip.transaction.timers import TimerConfig

__all__ = [
    "MAGIC_COOKIE",
    "AckReceived",
    "CancelReceived",
    "RequestReceived",
    "ResponseReceived",
    "Side",
    "StrayResponseReceived",
    "TimerConfig",
    "TransactionEvent",
    "TransactionLayer",
    "TransactionTerminated",
    "TransactionTimedOut",
    "TransportErrorOccurred",
    "TxKey",
    "client_key",
    "random_branch",
    "server_key",
]
