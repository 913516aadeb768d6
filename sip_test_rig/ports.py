"""Free loopback ports picked at run time, so parallel runs and other tests never collide."""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"
_MAX_ATTEMPTS = 50


def free_port() -> int:
    """A port number currently free on 127.0.0.1 for both UDP and TCP.

    SIP servers listen on the same port for both transports (RFC 3261 §18), so the port must be
    free for both. The check is racy by nature (the port is released before the server binds it);
    callers detect a failed bind from the server's exit and may retry.
    """
    for _ in range(_MAX_ATTEMPTS):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((LOOPBACK, 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((LOOPBACK, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both UDP and TCP on 127.0.0.1")
