"""Two ucgate nodes sharing one real redis-server behave as one presence system."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from sip_test_rig.softphone_client import Softphone
from tests.interop.test_presence_sip import Watcher
from tests.support.ucgate_process import Account, UcgateProcess

pytestmark = [pytest.mark.interop, pytest.mark.redis]

ALICE = Account("alice", "alice-Pa55word")
BOB = Account("bob", "bob-Pa55word")


async def first_change(node: UcgateProcess, agent: str, ready: asyncio.Event) -> dict:
    """Open B's WebSocket stream and return the first change about ``agent``."""
    url = f"http://127.0.0.1:{node.http_port}/v1/presence/stream"
    headers = {"Authorization": f"Bearer {node.api_key}"}
    async with aiohttp.ClientSession() as http, http.ws_connect(url, headers=headers) as ws:
        snapshot = json.loads((await ws.receive(timeout=10)).data)
        assert snapshot["type"] == "snapshot"
        ready.set()
        while True:
            msg = json.loads((await ws.receive(timeout=20)).data)
            if msg.get("type") == "change" and msg["agent"] == agent:
                return msg


def test_phone_on_node_a_watcher_and_app_on_node_b(tmp_path: Path, redis_url: str) -> None:
    common = dict(agents=[ALICE, BOB], backend="redis", redis_url=redis_url, persist=False)
    a = UcgateProcess(tmp_path / "a", node_id="node-a", **common)  # type: ignore[arg-type]
    b = UcgateProcess(tmp_path / "b", node_id="node-b", **common)  # type: ignore[arg-type]
    a.start()
    try:
        b.start()
        watcher = Watcher(b, BOB)
        try:
            assert watcher.subscribe("alice").status == 200
            assert b"<basic>closed</basic>" in watcher.wait_notify(lambda n: True).body

            async def scenario() -> dict:
                ready = asyncio.Event()
                task = asyncio.create_task(first_change(b, "alice", ready))
                await asyncio.wait_for(ready.wait(), 10)
                with Softphone() as phone:
                    phone.register(
                        server=f"127.0.0.1:{a.sip_port}",
                        transport="udp",
                        user=ALICE.id,
                        password=ALICE.password,
                        domain="example.test",
                    )
                    ev = await asyncio.to_thread(
                        phone.wait_event,
                        lambda e: e.get("event") == "reg_state" and e["code"] == 200,
                        15,
                    )
                    assert ev["active"]
                    change = await asyncio.wait_for(task, 20)
                    # The SIP watcher on B hears about a device that registered on A.
                    await asyncio.to_thread(
                        watcher.wait_notify, lambda n: b"<basic>open</basic>" in n.body
                    )
                    phone.unregister()
                return change

            change = asyncio.run(scenario())
            assert change["document"]["voice"] == "available"
            assert change["document"]["devices"], change
            watcher.wait_notify(
                lambda n: b"<basic>closed</basic>" in n.body and n is not watcher.notifies[0]
            )
        finally:
            watcher.close()
    finally:
        a.stop()
        b.stop()
