"""Profile ucgate's REGISTER path in-process (no sockets): where does the CPU go?

Builds a real node from a generated config, replaces the transport's send with a
collector, and feeds N authenticated REGISTER exchanges (REGISTER → 401 → REGISTER with
Authorization → 200) straight into the SIP runtime, under cProfile. Prints µs per
exchange and the top functions. A tool for optimisation, not a benchmark against Kamailio
(that is run.py).

    .venv/bin/python bench/register/profile_inprocess.py --users 2000
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import secrets
import tempfile
import time

from ucgate.app.server import start_node
from ucgate.config import validate_config
from ucgate.logs import configure_logging
from ucgate.sip.digest import DigestChallenge, build_authorization
from ucgate.sip.message import Response
from ucgate.sip.parser import parse_message
from ucgate.sip.peer import Peer, TransportKind


def register_bytes(user: str, port: int, cseq: int, call_id: str, auth: str | None) -> bytes:
    lines = [
        "REGISTER sip:example.test SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};rport;branch=z9hG4bK{secrets.token_hex(8)}",
        "Max-Forwards: 70",
        f"From: <sip:{user}@example.test>;tag={secrets.token_hex(4)}",
        f"To: <sip:{user}@example.test>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        f"Contact: <sip:{user}@127.0.0.1:{port}>",
        "Expires: 3600",
        "User-Agent: profile",
    ]
    if auth:
        lines.append(f"Authorization: {auth}")
    return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()


async def main(users: int, profile: bool, sort: str = "tottime") -> None:
    configure_logging("console", "warning")
    cfg = validate_config(
        {
            "sip": {"domain": "example.test", "listen": ["udp:127.0.0.1:0"]},
            "http": {"listen": "127.0.0.1:0"},
            "store": {"backend": "memory", "data_dir": tempfile.mkdtemp(prefix="ucgate-prof-")},
            "log": {"level": "warning"},
            "agents": [{"id": f"u{i:05d}", "password": f"pw{i}"} for i in range(users)],
        }
    )
    node = await start_node(cfg)
    sent: list[bytes] = []
    node.hub.send = lambda data, peer: sent.append(data)  # type: ignore[method-assign]
    runtime = node.runtime

    async def one(i: int) -> None:
        user = f"u{i:05d}"
        port = 20000 + i % 30000
        peer = Peer(TransportKind.UDP, "127.0.0.1", port)
        call_id = secrets.token_hex(8)
        sent.clear()
        runtime.on_data(register_bytes(user, port, 1, call_id, None), peer)
        await asyncio.sleep(0)
        challenge = parse_message(sent[-1])
        assert isinstance(challenge, Response) and challenge.status == 401, sent[-1][:80]
        ch = DigestChallenge.parse(challenge.headers.get_all("WWW-Authenticate")[0])
        auth = build_authorization(
            ch,
            method="REGISTER",
            uri="sip:example.test",
            username=user,
            cnonce=secrets.token_hex(4),
            password=f"pw{i}",
        )
        sent.clear()
        runtime.on_data(register_bytes(user, port, 2, call_id, auth), peer)
        for _ in range(10):
            await asyncio.sleep(0)
            if sent:
                break
        ok = parse_message(sent[-1])
        assert isinstance(ok, Response) and ok.status == 200, sent[-1][:200]

    for i in range(min(200, users)):  # warm-up
        await one(i)
    prof = cProfile.Profile() if profile else None
    t0 = time.process_time()
    if prof:
        prof.enable()
    for i in range(users):
        await one(i)
    if prof:
        prof.disable()
    cpu = time.process_time() - t0
    print(
        f"{users} authenticated REGISTER exchanges: {cpu / users * 1e6:.0f} µs CPU each "
        f"(client-side work included; profile={'on' if profile else 'off'})"
    )
    await node.close()
    if prof:
        pstats.Stats(prof).sort_stats(sort).print_stats(40)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--sort", default="tottime")
    args = ap.parse_args()
    asyncio.run(main(args.users, not args.no_profile, args.sort))
