"""Where a message came from or goes to, as the transport-independent core sees it."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class TransportKind(enum.Enum):
    """SIP transports (RFC 3261 §18, RFC 7118 for WebSocket)."""

    UDP = "udp"
    TCP = "tcp"
    TLS = "tls"
    WS = "ws"
    WSS = "wss"

    @property
    def reliable(self) -> bool:
        # §17.1.1.2 / §17.1.2.2: retransmission timers run only over unreliable transports.
        return self is not TransportKind.UDP

    @property
    def via_token(self) -> str:
        return self.value.upper()


@dataclass(frozen=True, slots=True)
class Peer:
    """A remote transport address.

    ``flow`` names the connection a message arrived on for stream transports, so that
    responses and later requests to a registered contact reuse it (RFC 3261 §18.2.2,
    RFC 5626 §5.3). ``None`` means "any / open a new one".
    """

    kind: TransportKind
    host: str
    port: int
    flow: int | None = None

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.host}:{self.port}"
