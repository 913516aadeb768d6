"""A minimal blocking SIP client over UDP/TCP/TLS for interop tests of edge cases.

It uses ucgate's own parser and digest client only to *read* answers and to *answer*
challenges; what it sends is written out by hand so the test controls every byte.
"""

from __future__ import annotations

import secrets
import socket
import ssl
import struct

from ucgate.sip.digest import DigestChallenge, build_authorization
from ucgate.sip.framing import StreamFramer
from ucgate.sip.message import Request, Response
from ucgate.sip.parser import parse_message


class RawSipClient:
    def __init__(
        self,
        kind: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        local_port: int = 0,
    ) -> None:
        """``local_port`` pins the source port: a REGISTER sent from the port another
        process (a sipp UAS) will listen on makes that process the registered device, since
        the B2BUA sends to the binding's source address (RFC 3261 §18.2.2 / RFC 5626)."""
        self.kind = kind
        self.target = ("127.0.0.1", port)
        if kind == "udp":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind(("127.0.0.1", local_port))
        else:
            if local_port:
                # SO_REUSEADDR: the port's earlier connections (another process's) may still
                # sit in TIME_WAIT; they do not share our 4-tuple, so binding is safe.
                raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                raw.settimeout(5)
                raw.bind(("127.0.0.1", local_port))
                raw.connect(self.target)
            else:
                raw = socket.create_connection(self.target, timeout=5)
            self.sock = (
                ssl_context.wrap_socket(raw, server_hostname="127.0.0.1")
                if kind == "tls" and ssl_context is not None
                else raw
            )
        self.sock.settimeout(5)
        self.local_port = self.sock.getsockname()[1]
        self.framer = StreamFramer()
        self.call_id = secrets.token_hex(8)
        self.cseq = 0

    def close(self, *, reset: bool = False) -> None:
        """``reset`` closes a TCP connection with RST (SO_LINGER 0): no TIME_WAIT is left
        on the local port, so another process can listen on it at once."""
        if reset and self.kind != "udp":
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def send(self, data: bytes) -> None:
        if self.kind == "udp":
            self.sock.sendto(data, self.target)
        else:
            self.sock.sendall(data)

    def recv_any(self) -> Request | Response:
        if self.kind == "udp":
            data, _ = self.sock.recvfrom(65535)
            return parse_message(data)
        while (whole := self.framer.next_message()) is None:
            chunk = self.sock.recv(65535)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.framer.feed(chunk)
        return parse_message(whole)

    def recv(self) -> Response:
        msg = self.recv_any()
        assert isinstance(msg, Response), msg
        return msg

    def respond(
        self,
        req: Request,
        status: int,
        reason: str = "OK",
        *,
        to_tag: str | None = None,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> None:
        """Answer a request from the server statelessly (§8.2.6)."""
        lines = [f"SIP/2.0 {status} {reason}"]
        for name in ("Via", "From", "To", "Call-ID", "CSeq"):
            for value in req.headers.get_all(name):
                if name == "To" and "tag=" not in value:
                    value += ";tag=" + (to_tag or secrets.token_hex(4))
                lines.append(f"{name}: {value}")
        lines += [f"{n}: {v}" for n, v in headers or []]
        lines.append(f"Content-Length: {len(body)}")
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    def request(
        self,
        method: str,
        uri: str,
        headers: list[tuple[str, str]],
        *,
        body: bytes = b"",
        branch: str | None = None,
    ) -> str:
        """Send a request (a fresh Via branch unless ``branch`` is given: a CANCEL reuses
        its INVITE's, §9.1); ``headers`` supply the rest. Returns the branch."""
        branch = branch or f"z9hG4bK{secrets.token_hex(6)}"
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/{self.kind.upper()} 127.0.0.1:{self.local_port};rport;branch={branch}",
            "Max-Forwards: 70",
            *(f"{n}: {v}" for n, v in headers),
            f"Content-Length: {len(body)}",
        ]
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        return branch

    def authorize(
        self,
        challenge: Response,
        *,
        method: str,
        uri: str,
        user: str,
        password: str,
        nc: int = 1,
    ) -> str:
        """An Authorization value answering the first MD5 challenge of a 401 (reusing a
        nonce needs a higher ``nc`` each time, or the server sees a replay)."""
        values = challenge.headers.get_all("WWW-Authenticate")
        chosen = next(c for c in map(DigestChallenge.parse, values) if c.algorithm.value == "MD5")
        return build_authorization(
            chosen,
            method=method,
            uri=uri,
            username=user,
            cnonce=secrets.token_hex(8),
            password=password,
            nc=nc,
        )

    def register(
        self,
        user: str,
        *,
        expires: int = 300,
        authorization: str | None = None,
        domain: str = "example.test",
        contact: str | None = None,
    ) -> Response:
        self.cseq += 1
        via_kind = self.kind.upper()
        contact = contact or f"<sip:{user}@127.0.0.1:{self.local_port};transport={self.kind}>"
        lines = [
            f"REGISTER sip:{domain} SIP/2.0",
            f"Via: SIP/2.0/{via_kind} 127.0.0.1:{self.local_port};rport;"
            f"branch=z9hG4bK{secrets.token_hex(6)}",
            "Max-Forwards: 70",
            f"From: <sip:{user}@{domain}>;tag={secrets.token_hex(4)}",
            f"To: <sip:{user}@{domain}>",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} REGISTER",
            f"Contact: {contact}",
            f"Expires: {expires}",
        ]
        if authorization is not None:
            lines.append(f"Authorization: {authorization}")
        self.send(("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode())
        return self.recv()

    def register_with_auth(
        self, user: str, password: str, *, algorithm: str, expires: int = 300
    ) -> Response:
        challenge_resp = self.register(user, expires=expires)
        assert challenge_resp.status == 401, challenge_resp
        challenges = [
            DigestChallenge.parse(v) for v in challenge_resp.headers.get_all("WWW-Authenticate")
        ]
        chosen = next(c for c in challenges if c.algorithm.value == algorithm)
        auth = build_authorization(
            chosen,
            method="REGISTER",
            uri="sip:example.test",
            username=user,
            cnonce=secrets.token_hex(8),
            password=password,
        )
        return self.register(user, expires=expires, authorization=auth)
