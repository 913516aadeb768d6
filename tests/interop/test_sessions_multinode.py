"""Routing coordinated across real ucgate nodes sharing one real redis-server.

Only the lease holder routes; the others forward inputs to it and republish its offers on
their own /v1/events. Checked here with real processes and real HTTP/WebSocket clients:
sessions created at once through two (and three) nodes never push an agent past its
capacity and each is offered exactly once (every node's event stream shows every offer
once); killing the router (SIGKILL, by PID) hands routing to the survivor within a bounded
wait, the offers that were open survive (not made twice), and every waiting session is still
routed, oldest first; a call queued on a standby rings the agent the router chose; a Redis
stall longer than the lease demotes the router and routing resumes after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.interop.test_calls_raw import SDP, recv_request, recv_status, register
from tests.support.raw_sip import RawSipClient
from tests.support.redis_server import RedisServer
from tests.support.ucgate_process import Account, UcgateProcess

pytestmark = [pytest.mark.interop, pytest.mark.redis]

ALICE = Account("alice", "alice-Pa55word", capacity="{ voice = 1, chat = 2 }")
BOB = Account("bob", "bob-Pa55word", capacity="{ voice = 1, chat = 2 }")
CAPACITY = 2
LEASE_TTL = 1.0


def tail(lease_ttl: float = LEASE_TTL) -> str:
    # A long offer timeout: offers change hands only when the test says so.
    return f"""
[[queues]]
id = "support"
media = ["chat"]
offer_timeout = 300
[routing]
leader_lease_ttl = {lease_ttl}
"""


def node(tmp_path: Path, name: str, redis_url: str, agents: list[Account]) -> UcgateProcess:
    return UcgateProcess(
        tmp_path / name,
        agents=agents,
        backend="redis",
        redis_url=redis_url,
        persist=False,
        node_id=name,
        tail=tail(),
    )


@contextlib.contextmanager
def logs_on_failure(*nodes: UcgateProcess) -> Iterator[None]:
    try:
        yield
    except BaseException:
        for n in nodes:
            print(f"--- {n.node_id} log ---\n{n.log_text()}")
        raise


def is_promoted(entry: dict[str, object]) -> bool:
    return entry.get("event") == "sessions.leader_promoted"


class Events:
    """One node's /v1/events stream, collected; waits are bounded and wake on arrival."""

    def __init__(self, node: UcgateProcess) -> None:
        self.node = node
        self.items: list[dict[str, Any]] = []
        self._cond = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def __aenter__(self) -> Events:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._ready.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.node.api_key}"}
        url = f"http://127.0.0.1:{self.node.http_port}/v1/events"
        async with aiohttp.ClientSession(headers=headers) as http, http.ws_connect(url) as ws:
            self._ready.set()
            async for msg in ws:
                async with self._cond:
                    self.items.append(json.loads(msg.data))
                    self._cond.notify_all()

    def offers(self) -> list[dict[str, Any]]:
        return [e for e in self.items if e["type"] == "offer_made"]

    async def wait(self, pred: Callable[[list[dict[str, Any]]], bool], timeout: float) -> None:
        async with self._cond:
            await asyncio.wait_for(self._cond.wait_for(lambda: pred(self.items)), timeout)


class Api:
    def __init__(self, http: aiohttp.ClientSession, node: UcgateProcess) -> None:
        self.http = http
        self.base = f"http://127.0.0.1:{node.http_port}"
        self.headers = {"Authorization": f"Bearer {node.api_key}"}

    async def call(self, method: str, path: str, body: object = None) -> Any:
        async with self.http.request(
            method, self.base + path, json=body, headers=self.headers
        ) as resp:
            data = await resp.json()
            assert resp.status in (200, 201), (resp.status, data)
            return data

    async def create(self, customer: str) -> dict[str, Any]:
        body = {"customer": {"id": customer}, "media": "chat", "queue": "support"}
        result: dict[str, Any] = await self.call("POST", "/v1/sessions", body)
        return result

    async def accept(self, sid: str, cid: str, agent: str) -> None:
        await self.call("POST", f"/v1/sessions/{sid}/channels/{cid}/accept", {"agent": agent})

    async def close(self, sid: str) -> None:
        await self.call("POST", f"/v1/sessions/{sid}/close", {"force": True})

    async def open_sessions(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = (await self.call("GET", "/v1/sessions?limit=1000"))["sessions"]
        return out


def load_per_agent(sessions: list[dict[str, Any]]) -> Counter[str]:
    """Chats occupying each agent's capacity (offered or active), from the store."""
    load: Counter[str] = Counter()
    for s in sessions:
        for ch in s["channels"]:
            if ch["state"] in ("offered", "active", "held", "wrap_up") and ch["agent"]:
                load[ch["agent"]] += 1
    return load


def offers_in_timeline(session: dict[str, Any]) -> int:
    return sum(1 for e in session["channels"][0]["timeline"] if e.get("input") == "offer")


@pytest.mark.parametrize("count", [2, 3])
def test_concurrent_sessions_through_several_nodes_respect_capacity(
    tmp_path: Path, redis_url: str, count: int
) -> None:
    nodes = [node(tmp_path, f"node-{i}", redis_url, [ALICE, BOB]) for i in range(count)]
    try:
        nodes[0].start()
        nodes[0].wait_log(is_promoted, 10)  # the first node routes; the others stand by
        for n in nodes[1:]:
            n.start()
        # A device makes an agent routable (presence R7); each registers on its own node.
        devices = [register(nodes[0], ALICE), register(nodes[-1], BOB)]
        try:
            with logs_on_failure(*nodes):
                asyncio.run(concurrent_scenario(nodes))
        finally:
            for dev in devices:
                dev.close()
        # Only the first node ever routed.
        for n in nodes[1:]:
            assert not any(is_promoted(e) for e in n.lines), n.log_text()
    finally:
        for n in nodes:
            n.stop()


async def concurrent_scenario(nodes: list[UcgateProcess]) -> None:
    total = 20
    slots = 2 * CAPACITY
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(aiohttp.ClientSession())
        streams = [await stack.enter_async_context(Events(n)) for n in nodes]
        apis = [Api(http, n) for n in nodes]

        def api(i: int) -> Api:
            return apis[i % len(apis)]

        created = await asyncio.gather(*(api(i).create(f"c{i}") for i in range(total)))
        ids = {s["id"] for s in created}
        assert len(ids) == total
        routed: set[str] = set()
        while len(routed) < total:
            expect = min(total, len(routed) + slots)
            # Every node hears every offer: the router's own, the others' copies from
            # the outcomes stream.
            for ev in streams:
                await ev.wait(lambda items, n=expect: _offered(items) >= n, 15)
            sessions = [s for s in await apis[-1].open_sessions() if s["id"] in ids]
            load = load_per_agent(sessions)
            assert all(n <= CAPACITY for n in load.values()), load
            offered = [
                (s["id"], s["channels"][0])
                for s in sessions
                if s["channels"][0]["state"] == "offered"
            ]
            assert len(offered) == min(slots, total - len(routed)), (load, offered)
            # Answer and finish them through every node in turn: capacity frees, the
            # router hears it (directly or forwarded) and offers the next ones.
            for i, (sid, ch) in enumerate(offered):
                await api(i).accept(sid, ch["id"], ch["agent"])
            load = load_per_agent(await apis[0].open_sessions())
            assert all(n <= CAPACITY for n in load.values()), load
            for i, (sid, _) in enumerate(offered):
                await api(i + 1).close(sid)
                routed.add(sid)
        # Every session offered exactly once, as each node's stream shows.
        for ev in streams:
            per_session = Counter(e["session_id"] for e in ev.offers())
            assert set(per_session) == ids and set(per_session.values()) == {1}, per_session
        for sid in ids:
            session = await apis[0].call("GET", f"/v1/sessions/{sid}")
            assert offers_in_timeline(session) == 1, session


def _offered(items: list[dict[str, Any]]) -> int:
    return len({e["session_id"] for e in items if e["type"] == "offer_made"})


def test_router_killed_survivor_takes_over_and_nothing_waiting_is_lost(
    tmp_path: Path, redis_url: str
) -> None:
    # One agent, 2 chats at a time: most sessions wait, which is what failover must keep.
    alice = Account("alice", ALICE.password, capacity="{ voice = 1, chat = 2 }")
    a = node(tmp_path, "node-a", redis_url, [alice])
    b = node(tmp_path, "node-b", redis_url, [alice])
    a.start()
    try:
        a.wait_log(is_promoted, 10)
        b.start()
        device = register(a, alice)  # registered through the node that will die
        try:
            with logs_on_failure(a, b):
                took = asyncio.run(failover_scenario(a, b))
        finally:
            device.close()
        print(f"failover: router SIGKILLed -> survivor promoted in {took * 1000:.0f} ms")
        # Bounded: the lease TTL plus one standby retry (ttl/6) plus the rebuild, with
        # slack for a loaded 2-core CI machine.
        assert took < LEASE_TTL + LEASE_TTL / 6 + 2.0
    finally:
        a.stop()
        b.stop()


async def failover_scenario(a: UcgateProcess, b: UcgateProcess) -> float:
    async with aiohttp.ClientSession() as http:
        api_b = Api(http, b)
        async with Events(b) as ev_b:
            # Created through the standby: forwarded to a, which offers 2 and queues 4.
            before = [await api_b.create(f"before-{i}") for i in range(6)]
            await ev_b.wait(lambda items: _offered(items) >= 2, 15)
            sessions = {s["id"]: s for s in await api_b.open_sessions()}
            offered = [s for s in before if sessions[s["id"]]["channels"][0]["state"] == "offered"]
            waiting = [s for s in before if sessions[s["id"]]["channels"][0]["state"] == "queued"]
            # First come, first served through the forwarding.
            assert [s["id"] for s in offered] == [s["id"] for s in before[:2]]
            assert len(waiting) == 4

            assert a.proc is not None
            killed_at = time.monotonic()
            os.kill(a.proc.pid, signal.SIGKILL)
            a.proc.wait(timeout=10)
            await asyncio.to_thread(b.wait_log, is_promoted, 10)
            took = time.monotonic() - killed_at
            taken = b.wait_log(lambda e: e.get("event") == "sessions.routing_taken_over", 10)
            assert taken["channels"] == 6, taken  # 2 open offers + 4 waiting rebuilt

            # Sessions created after the kill, through the survivor, are routed too.
            after = [await api_b.create(f"after-{i}") for i in range(2)]
            order = [s["id"] for s in before[2:] + after]
            # Free alice's slots one by one: the waiting sessions are offered oldest first,
            # and the two that were offered before the kill are never offered again.
            pending = [s["id"] for s in offered]
            served: list[str] = []
            while pending:
                sid = pending.pop(0)
                session = await api_b.call("GET", f"/v1/sessions/{sid}")
                ch = session["channels"][0]
                assert ch["state"] == "offered" and ch["agent"] == "alice", session
                await api_b.accept(sid, ch["id"], "alice")
                await api_b.close(sid)
                served.append(sid)
                if len(served) + len(pending) < len(before) + len(after):
                    nxt = order[len(served) - 1]
                    await ev_b.wait(
                        lambda items, n=nxt: any(
                            e["type"] == "offer_made" and e["session_id"] == n for e in items
                        ),
                        15,
                    )
                    pending.append(nxt)
            assert served == [s["id"] for s in before + after]
            per_session = Counter(e["session_id"] for e in ev_b.offers())
            assert set(per_session.values()) == {1}, per_session
            for sid in served:
                assert offers_in_timeline(await api_b.call("GET", f"/v1/sessions/{sid}")) == 1
            assert await api_b.open_sessions() == []
        return took


PBX = Account("pbx1", "pbx1-Pa55word", allowed_ips=("127.0.0.1",))
VOICE_TAIL = f"""
[[dids]]
number = "+15550300"
target = "queue:support"
[[queues]]
id = "support"
media = ["voice", "chat"]
offer_timeout = 300
[routing]
leader_lease_ttl = {LEASE_TTL}
"""


def test_call_queued_on_the_standby_rings_the_agent_the_router_chose(
    tmp_path: Path, redis_url: str
) -> None:
    """A trunk call lands on the standby: its session is routed by the other node, and the
    standby (which holds the call) learns of the offer from the outcomes stream and rings
    the agent's phone; the phone's decline goes back through the standby to the router."""
    common: dict[str, Any] = dict(
        agents=[ALICE], trunks=[PBX], backend="redis", redis_url=redis_url, persist=False
    )
    a = UcgateProcess(tmp_path / "a", node_id="node-a", tail=VOICE_TAIL, **common)
    b = UcgateProcess(tmp_path / "b", node_id="node-b", tail=VOICE_TAIL, **common)
    a.start()
    try:
        a.wait_log(is_promoted, 10)
        b.start()
        phone = register(a, ALICE)  # registered through the router
        trunk = RawSipClient("udp", b.sip_port)  # the call arrives at the standby
        try:
            with logs_on_failure(a, b):
                asyncio.run(call_scenario(b, trunk, phone))
        finally:
            phone.close()
            trunk.close()
        assert not any(is_promoted(e) for e in b.lines)  # b never routed
    finally:
        a.stop()
        b.stop()


async def call_scenario(b: UcgateProcess, trunk: RawSipClient, phone: RawSipClient) -> None:
    async with Events(b) as ev_b:
        trunk.request(
            "INVITE",
            "sip:+15550300@example.test",
            [
                ("From", "<sip:+15554445555@pbx.example>;tag=t1"),
                ("To", "<sip:+15550300@example.test>"),
                ("Call-ID", secrets.token_hex(6)),
                ("CSeq", "1 INVITE"),
                ("Contact", f"<sip:pbx@127.0.0.1:{trunk.local_port}>"),
                ("Content-Type", "application/sdp"),
            ],
            body=SDP,
        )
        assert (await asyncio.to_thread(recv_status, trunk, 180)).status == 180
        await ev_b.wait(lambda items: any(e["type"] == "offer_made" for e in items), 15)
        offer = next(e for e in ev_b.items if e["type"] == "offer_made")
        assert offer["agent"] == "alice" and offer["session"]["channels"][0]["media"] == "voice"
        # b rings alice's phone (b holds the call; the offer came from a).
        inv = await asyncio.to_thread(recv_request, phone, "INVITE")
        # A phone answers where the request came from (its Via: node b); this test client
        # sends to the server it registered with (a), so point it at b for the answer.
        phone.target = ("127.0.0.1", b.sip_port)
        phone.respond(inv, 486, "Busy Here", to_tag="x")
        # The decline is a reject on b, forwarded: the router requeues the channel and,
        # alice excluded, nobody else can take it: it waits.
        sid = offer["session_id"]
        await ev_b.wait(
            lambda items: any(
                e["type"] == "offer_rejected" and e["session_id"] == sid for e in items
            ),
            15,
        )


def test_redis_stall_longer_than_the_lease_then_routing_resumes(tmp_path: Path) -> None:
    """Redis stops answering (SIGSTOP) for longer than the lease: the router demotes itself
    (its belief runs out, renewals get no answer); once Redis is back a node takes the
    lease again, rebuilds, and routing goes on, the open offer kept, nothing offered twice."""
    server = RedisServer.start(tmp_path / "redis")
    alice = Account("alice", ALICE.password, capacity="{ voice = 1, chat = 2 }")
    a = node(tmp_path, "node-a", server.url, [alice])
    b = node(tmp_path, "node-b", server.url, [alice])
    try:
        a.start()
        a.wait_log(is_promoted, 10)
        b.start()
        phone = register(b, alice)
        try:
            with logs_on_failure(a, b):
                asyncio.run(stall_scenario(a, b, server))
        finally:
            phone.close()
    finally:
        a.stop()
        b.stop()
        server.stop()


async def stall_scenario(a: UcgateProcess, b: UcgateProcess, server: RedisServer) -> None:
    async with aiohttp.ClientSession() as http, Events(b) as ev_b:
        api_b = Api(http, b)
        first = await api_b.create("before-stall")
        await ev_b.wait(lambda items: _offered(items) >= 1, 15)
        server.pause()
        try:
            await asyncio.to_thread(
                a.wait_log, lambda e: e.get("event") == "sessions.leader_demoted", 10
            )
        finally:
            server.resume()
        second = await api_b.create("after-stall")
        await ev_b.wait(
            lambda items: any(
                e["type"] == "offer_made" and e["session_id"] == second["id"] for e in items
            ),
            15,
        )
        # The second offer was a fenced write, so the lease was taken again (a new epoch)
        # after the stall, by a or by b. (Epoch 3 happens: an ACQUIRE sent during the stall
        # timed out at the node but ran when Redis woke up; nobody held that epoch's token,
        # so it lapsed unused after one TTL and the next ACQUIRE took the following one.)
        async with aioredis.Redis.from_url(server.url, decode_responses=True) as r:
            holder = await r.get("ucgate:sessions:leader")
        assert holder is not None and int(holder.rsplit(":", 1)[1]) >= 2, holder
        for sid in (first["id"], second["id"]):
            session = await api_b.call("GET", f"/v1/sessions/{sid}")
            assert session["channels"][0]["state"] == "offered", session
            assert offers_in_timeline(session) == 1, session
        assert Counter(e["session_id"] for e in ev_b.offers()) == {
            first["id"]: 1,
            second["id"]: 1,
        }
