"""Bytes of Python heap per registered binding in the embedded (memory) store.

Registers N distinct AORs through the real registrar rules and store (no sockets) and
reports the tracemalloc delta per binding. Run: .venv/bin/python bench/register/binding_memory.py
"""

from __future__ import annotations

import asyncio
import time
import tracemalloc

from ucgate.registrar.rules import RegisterContext, RegistrarPolicy, apply_register, parse_contacts
from ucgate.sip.fields import parse_name_addr
from ucgate.sip.message import Headers, Request
from ucgate.sip.uri import parse_uri
from ucgate.store.memory import MemoryLocationStore


async def main(n: int) -> None:
    store = await MemoryLocationStore.open(node_id="bench", data_dir=None, now=time.time())
    policy = RegistrarPolicy()
    reqs = []
    for i in range(n):
        aor = f"sip:u{i:05d}@example.test"
        h = Headers(
            [
                ("Contact", f"<sip:u{i:05d}@127.0.0.1:{20000 + i % 40000};transport=udp>"),
                ("Expires", "3600"),
            ]
        )
        reqs.append((aor, Request("REGISTER", "sip:example.test", h)))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    now = time.time()
    for i, (aor, req) in enumerate(reqs):
        contacts = parse_contacts(req, policy)
        ctx = RegisterContext(
            aor=aor,
            call_id=f"{i:016x}@10.0.0.1",
            cseq=1,
            source=f"udp:127.0.0.1:{20000 + i % 40000}",
            flow=None,
            node_id="bench",
            user_agent="Yealink SIP-T46U 108.86.0.45",
            path=(),
        )
        await store.update(
            aor, lambda cur, c=contacts, x=ctx: apply_register(cur, c, x, policy, now), now
        )
    # The parsers' memo caches are bounded (not per binding): empty them before measuring.
    parse_uri.cache_clear()
    parse_name_addr.cache_clear()
    after = tracemalloc.get_traced_memory()[0]
    print(
        f"{n} bindings: {(after - before) / n:.0f} bytes of Python heap per binding "
        f"(store={await store.count()})"
    )


if __name__ == "__main__":
    asyncio.run(main(10_000))
