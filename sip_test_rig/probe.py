"""Readiness probe: a bounded wait until a SIP server answers OPTIONS (RFC 3261 §11) over UDP."""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from collections.abc import Callable

from sip_test_rig.ports import LOOPBACK


def options_request(port: int, local_port: int) -> bytes:
    """An OPTIONS for ``sip:127.0.0.1:port``, sent from ``local_port``."""
    branch = "z9hG4bK" + uuid.uuid4().hex
    return (
        f"OPTIONS sip:{LOOPBACK}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {LOOPBACK}:{local_port};branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:probe@{LOOPBACK}>;tag={uuid.uuid4().hex[:8]}\r\n"
        f"To: <sip:{LOOPBACK}:{port}>\r\n"
        f"Call-ID: {uuid.uuid4().hex}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def wait_until_answers(
    port: int,
    proc: subprocess.Popen[bytes],
    *,
    timeout: float,
    log_tail: Callable[[], str] = lambda: "",
    tcp: bool = True,
) -> None:
    """Return once any final response to OPTIONS arrives over UDP (and TCP connects, if asked).

    Raises ``RuntimeError`` if ``proc`` exits first and ``TimeoutError`` after ``timeout``. Each
    attempt waits at most 0.2 s on the socket (the bounded wait) and then resends the probe.
    """
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        sock.settimeout(0.2)
        local_port = sock.getsockname()[1]
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{log_tail()}")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"server did not answer OPTIONS:\n{log_tail()}")
            sock.sendto(options_request(port, local_port), (LOOPBACK, port))
            try:
                data = sock.recv(65535)
            except (TimeoutError, ConnectionRefusedError):
                continue  # nothing bound yet, or no answer in 0.2 s: probe again
            # Any final response proves the SIP stack is up (a server may answer 405 or 404).
            if data.startswith(b"SIP/2.0 ") and not data.startswith(b"SIP/2.0 1"):
                break
    if tcp:
        with socket.create_connection((LOOPBACK, port), timeout=2.0):
            pass
