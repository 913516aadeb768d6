"""The presence change stream: WebSocket and SSE, resume, slow consumers, shutdown, scale.

Every wait is bounded (``asyncio.timeout``) and waits on a message or a hub count, never
on a sleep.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import WSCloseCode, WSMsgType
from aiohttp.test_utils import TestClient, TestServer

from ucgate.http.api import STREAM_HUB_KEY, build_app
from ucgate.http.auth import ApiKeys, Principal
from ucgate.http.presence_api import End, Feed, StreamHub, StreamSettings
from ucgate.http.schemas import ChangeEvent, SnapshotEvent
from ucgate.presence.model import status_table
from ucgate.presence.service import PresenceService
from ucgate.presence.store_memory import MemoryPresenceStore
from ucgate.store.memory import MemoryLocationStore

AGENTS = {"alice": {"voice": 1, "chat": 3}, "bob": {"voice": 1}, "carol": {"chat": 2}}
STATUSES = status_table()
READER = "reader-key-000001"
WRITER = "writer-key-000001"
HEADERS = {"Authorization": f"Bearer {READER}"}
BOUND = 10.0  # seconds any single wait may take before the test fails


class Env:
    def __init__(
        self, service: PresenceService, client: TestClient[Any, Any], hub: StreamHub
    ) -> None:
        self.service = service
        self.client = client
        self.hub = hub

    async def set(self, agent: str, status: str, note: str | None = None) -> int:
        doc = await self.service.set_manual(agent, status, note=note, set_by="test")
        return doc.version


async def _env(
    *,
    settings: StreamSettings | None = None,
    change_log_size: int = 10_000,
    max_pending: int = 1000,
) -> AsyncIterator[Env]:
    store = MemoryPresenceStore(change_log_size=change_log_size, max_pending=max_pending)
    service = PresenceService(store, agents=AGENTS, statuses=STATUSES)
    await service.start()
    keys = ApiKeys(
        [
            (READER, Principal(frozenset({"presence:read"}))),
            (WRITER, Principal(frozenset({"presence:write"}))),
        ]
    )
    app = build_app(
        MemoryLocationStore(node_id="n"),
        keys,
        presence=service,
        statuses=STATUSES,
        stream_settings=settings or StreamSettings(keepalive=30.0),
    )
    try:
        async with TestClient(TestServer(app)) as client:
            yield Env(service, client, app[STREAM_HUB_KEY])
    finally:
        await service.close()
        await store.close()


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    async for e in _env():
        yield e


async def recv(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    async with asyncio.timeout(BOUND):
        message = await ws.receive()
    assert message.type is WSMsgType.TEXT, message
    data: dict[str, Any] = json.loads(message.data)
    return data


# --- WebSocket -------------------------------------------------------------------------


async def test_ws_snapshot_then_changes_in_order(env: Env) -> None:
    async with env.client.ws_connect("/v1/presence/stream", headers=HEADERS) as ws:
        snapshot = SnapshotEvent.model_validate(await recv(ws))
        assert snapshot.resumed is None
        assert [d.agent for d in snapshot.agents] == ["alice", "bob", "carol"]
        assert snapshot.version == await env.service.current_version()
        v1 = await env.set("alice", "away", "back at 3")
        v2 = await env.set("bob", "break")
        first = ChangeEvent.model_validate(await recv(ws))
        second = ChangeEvent.model_validate(await recv(ws))
    assert (first.version, first.agent, first.document.manual.note) == (v1, "alice", "back at 3")
    assert (second.version, second.agent, second.document.status) == (v2, "bob", "break")
    assert snapshot.version < v1 < v2


async def test_ws_resume_sends_only_later_changes(env: Env) -> None:
    base = await env.service.current_version()
    versions = [await env.set("alice", s) for s in ("away", "busy", "dnd")]
    async with env.client.ws_connect(
        f"/v1/presence/stream?since={versions[0]}", headers=HEADERS
    ) as ws:
        got = [await recv(ws) for _ in range(2)]
        assert [m["type"] for m in got] == ["change", "change"]
        assert [m["version"] for m in got] == versions[1:]
        assert got[-1]["document"]["manual"]["status"] == "dnd"
        live = await env.set("carol", "away")
        assert (await recv(ws))["version"] == live
    assert base < versions[0]


async def test_ws_resume_at_current_version_sends_nothing_until_a_change(env: Env) -> None:
    now = await env.service.current_version()
    async with env.client.ws_connect(f"/v1/presence/stream?since={now}", headers=HEADERS) as ws:
        version = await env.set("bob", "away")
        message = await recv(ws)
    assert (message["type"], message["version"]) == ("change", version)


async def test_ws_since_too_old_gets_a_snapshot_marked_not_resumed() -> None:
    async for env in _env(change_log_size=2):
        for status in ("away", "busy", "dnd", "break"):
            await env.set("alice", status)
        async with env.client.ws_connect("/v1/presence/stream?since=1", headers=HEADERS) as ws:
            snapshot = SnapshotEvent.model_validate(await recv(ws))
        assert snapshot.resumed is False
        assert snapshot.version == await env.service.current_version()
        alice = next(d for d in snapshot.agents if d.agent == "alice")
        assert alice.manual.status == "break"


async def test_ws_since_from_the_future_gets_a_snapshot(env: Env) -> None:
    future = await env.service.current_version() + 1000
    async with env.client.ws_connect(f"/v1/presence/stream?since={future}", headers=HEADERS) as ws:
        message = await recv(ws)
    assert (message["type"], message["resumed"]) == ("snapshot", False)


@pytest.mark.parametrize("since", ["-1", "abc", "1.5"])
async def test_bad_since_is_422_before_upgrade(env: Env, since: str) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await env.client.ws_connect(f"/v1/presence/stream?since={since}", headers=HEADERS)
    assert info.value.status == 422
    response = await env.client.get(f"/v1/presence/stream?since={since}", headers=HEADERS)
    assert response.status == 422
    assert (await response.json())["error"]["field"] == "since"


async def test_ws_accepts_access_token_query(env: Env) -> None:
    async with env.client.ws_connect(f"/v1/presence/stream?access_token={READER}") as ws:
        assert (await recv(ws))["type"] == "snapshot"


@pytest.mark.parametrize(("query", "status"), [("", 401), (f"?access_token={WRITER}", 403)])
async def test_ws_refused_without_read_scope(env: Env, query: str, status: int) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await env.client.ws_connect(f"/v1/presence/stream{query}")
    assert info.value.status == status


async def test_change_during_opening_is_neither_lost_nor_repeated(env: Env) -> None:
    """Subscribe, change, snapshot: the change is in the snapshot and filtered from the
    subscription; the next change passes."""
    subscription = env.service.subscribe()
    raced = await env.set("alice", "away")
    feed = Feed()
    opening = await feed.open(env.service, env.hub, None)
    snapshot = json.loads(opening[0].data)
    assert next(d for d in snapshot["agents"] if d["agent"] == "alice")["version"] == raced
    async with asyncio.timeout(BOUND):
        assert not feed.admit(await anext(subscription))
        later = await env.set("bob", "away")
        change = await anext(subscription)
    assert change.version == later and feed.admit(change)
    assert feed.last == later
    subscription.close()


async def test_floor_filters_only_the_agent_it_belongs_to(env: Env) -> None:
    """A change of another agent above the snapshot version passes even though it is below
    a newer document of some other agent."""
    subscription = env.service.subscribe()
    v_bob = await env.set("bob", "away")
    v_alice = await env.set("alice", "away")
    feed = Feed()
    feed.last = v_bob - 1  # as if the version was read before bob's change landed
    feed._floors = {"alice": v_alice, "bob": v_bob - 1}
    feed._max_floor = v_alice
    async with asyncio.timeout(BOUND):
        bob_change = await anext(subscription)
        alice_change = await anext(subscription)
    assert feed.admit(bob_change)  # bob's snapshot document was older
    assert not feed.admit(alice_change)  # alice's was already this one
    subscription.close()


async def test_slow_websocket_consumer_is_closed_with_resume_point() -> None:
    """More changes than the subscription may buffer, before the stream task runs: the
    store drops the subscription and the client gets 1013 naming the version to resume
    from; resuming from it delivers the rest."""
    async for env in _env(max_pending=3):
        async with env.client.ws_connect("/v1/presence/stream", headers=HEADERS) as ws:
            snapshot = await recv(ws)
            # set_manual on the memory store never yields, so all eight land at once.
            versions = [
                await env.set("alice" if i % 2 else "bob", "away" if i % 4 < 2 else "busy")
                for i in range(8)
            ]
            async with asyncio.timeout(BOUND):
                message = await ws.receive()
            assert message.type is WSMsgType.CLOSE
            assert ws.close_code == WSCloseCode.TRY_AGAIN_LATER
            reason = message.extra
            assert reason == f"slow consumer; resume with since={snapshot['version']}"
        async with asyncio.timeout(BOUND):
            await env.hub.wait_until(lambda h: h.ended[End.LAGGED] == 1)
        async with env.client.ws_connect(
            f"/v1/presence/stream?since={snapshot['version']}", headers=HEADERS
        ) as ws:
            resumed = [await recv(ws) for _ in versions]
        assert [m["version"] for m in resumed] == versions


async def test_client_that_stops_reading_is_dropped_after_send_timeout() -> None:
    """A raw client with a tiny receive buffer never reads: sends block, the server drops
    the socket after send_timeout, and memory stays bounded meanwhile."""
    settings = StreamSettings(keepalive=30.0, send_timeout=0.3, ws_writer_limit=1024)
    async for env in _env(settings=settings, max_pending=100_000):
        server = env.client.server
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_connect(sock, (server.host, server.port))
            key = base64.b64encode(os.urandom(16)).decode()
            handshake = (
                "GET /v1/presence/stream HTTP/1.1\r\n"
                f"Host: {server.host}:{server.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Authorization: Bearer {READER}\r\n\r\n"
            )
            await loop.sock_sendall(sock, handshake.encode())
            async with asyncio.timeout(BOUND):
                await env.hub.wait_until(lambda h: h.open_streams == 1)
                note = "n" * 200
                # Big changes until the kernel and aiohttp buffers are full and a send
                # blocks; each batch yields to let the stream task write.
                for i in range(20_000):
                    await env.set("alice", "away" if i % 2 else "busy", note)
                    if i % 50 == 0:
                        await asyncio.sleep(0)  # a yield to the stream task, not a wait
                    if env.hub.open_streams == 0:
                        break
                await env.hub.wait_until(lambda h: h.ended[End.SEND_TIMEOUT] == 1)
        finally:
            sock.close()


async def test_server_shutdown_closes_websockets_with_1001_and_ends_sse() -> None:
    store = MemoryPresenceStore()
    service = PresenceService(store, agents=AGENTS, statuses=STATUSES)
    await service.start()
    keys = ApiKeys([(READER, frozenset({"presence:read"}))])
    app = build_app(MemoryLocationStore(node_id="n"), keys, presence=service, statuses=STATUSES)
    server = TestServer(app)
    await server.start_server()
    try:
        async with aiohttp.ClientSession(headers=HEADERS) as session:
            ws = await session.ws_connect(server.make_url("/v1/presence/stream"))
            sse = await session.get(server.make_url("/v1/presence/stream"))
            async with asyncio.timeout(BOUND):
                assert (await ws.receive()).type is WSMsgType.TEXT
                await sse.content.readuntil(b"event: snapshot")
                closing = asyncio.ensure_future(server.close())
                message = await ws.receive()
                rest = await sse.content.read()
                await closing
            assert message.type is WSMsgType.CLOSE
            assert ws.close_code == WSCloseCode.GOING_AWAY
            assert sse.content.at_eof()
            assert b"event: change" not in rest
            await ws.close()
            sse.close()
    finally:
        await server.close()
        await service.close()
        await store.close()


# --- Server-Sent Events ----------------------------------------------------------------


class SseReader:
    """Parses an event stream into (id, event, data) tuples and comment lines."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.retry: int | None = None
        self.comments: list[str] = []

    async def next_event(self) -> tuple[int, str, dict[str, Any]]:
        async with asyncio.timeout(BOUND):
            while True:
                block = (await self.response.content.readuntil(b"\n\n")).decode()
                fields: dict[str, str] = {}
                for line in block.strip("\n").split("\n"):
                    if line.startswith(":"):
                        self.comments.append(line)
                        continue
                    name, _, value = line.partition(": ")
                    fields[name] = value
                if "retry" in fields:
                    self.retry = int(fields["retry"])
                if "data" in fields:
                    return int(fields["id"]), fields["event"], json.loads(fields["data"])

    async def next_comment(self) -> str:
        async with asyncio.timeout(BOUND):
            while not self.comments:
                block = (await self.response.content.readuntil(b"\n\n")).decode()
                self.comments.extend(x for x in block.split("\n") if x.startswith(":"))
        return self.comments.pop(0)


async def test_sse_snapshot_and_changes_with_ids(env: Env) -> None:
    response = await env.client.get("/v1/presence/stream", headers=HEADERS)
    assert response.status == 200
    assert response.content_type == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    reader = SseReader(response)
    event_id, event, data = await reader.next_event()
    assert reader.retry == 3000
    assert (event, data["type"], event_id) == ("snapshot", "snapshot", data["version"])
    version = await env.set("carol", "away")
    event_id, event, data = await reader.next_event()
    ChangeEvent.model_validate(data)
    assert (event_id, event, data["agent"]) == (version, "change", "carol")
    response.close()


async def test_sse_resumes_from_last_event_id(env: Env) -> None:
    first = await env.set("alice", "away")
    second = await env.set("bob", "away")
    # EventSource reconnects to its original URL (with the stale ?since) plus the header.
    response = await env.client.get(
        "/v1/presence/stream?since=0", headers={**HEADERS, "Last-Event-ID": str(first)}
    )
    reader = SseReader(response)
    event_id, event, data = await reader.next_event()
    assert (event_id, event, data["agent"]) == (second, "change", "bob")
    response.close()


async def test_sse_accepts_access_token_and_since(env: Env) -> None:
    version = await env.set("alice", "busy")
    response = await env.client.get(
        f"/v1/presence/stream?since={version - 1}&access_token={READER}"
    )
    event_id, _, data = await SseReader(response).next_event()
    assert (event_id, data["document"]["manual"]["status"]) == (version, "busy")
    response.close()


async def test_sse_bad_last_event_id_is_422(env: Env) -> None:
    response = await env.client.get(
        "/v1/presence/stream", headers={**HEADERS, "Last-Event-ID": "x1"}
    )
    assert response.status == 422
    assert (await response.json())["error"]["field"] == "Last-Event-ID"


async def test_sse_sends_keepalive_comments_when_idle() -> None:
    async for env in _env(settings=StreamSettings(keepalive=0.05, retry_ms=1500)):
        response = await env.client.get("/v1/presence/stream", headers=HEADERS)
        reader = SseReader(response)
        await reader.next_event()
        assert reader.retry == 1500
        assert await reader.next_comment() == ": keep-alive"
        # Still live after the keep-alive.
        version = await env.set("alice", "away")
        assert (await reader.next_event())[0] == version
        response.close()


async def test_sse_client_leaving_releases_its_subscription(env: Env) -> None:
    response = await env.client.get("/v1/presence/stream", headers=HEADERS)
    await SseReader(response).next_event()
    assert env.hub.open_streams == 1
    response.close()
    # The server notices a vanished SSE client at a write (a change or a keep-alive), so
    # make changes until a write fails.
    async with asyncio.timeout(BOUND):
        flip = False
        while env.hub.open_streams:
            flip = not flip
            await env.set("alice", "away" if flip else "busy")
            await asyncio.sleep(0)  # a yield so the stream task can write, not a wait
    assert env.hub.ended[End.CLIENT_GONE] == 1


# --- scale -----------------------------------------------------------------------------


async def test_thousand_websocket_clients_all_get_the_change(env: Env) -> None:
    clients = 1000
    connector = aiohttp.TCPConnector(limit=0)
    url = env.client.server.make_url("/v1/presence/stream")
    async with aiohttp.ClientSession(connector=connector, headers=HEADERS) as session:
        sockets: list[aiohttp.ClientWebSocketResponse] = []
        try:
            async with asyncio.timeout(60):
                for start in range(0, clients, 100):
                    batch = await asyncio.gather(
                        *(session.ws_connect(url) for _ in range(start, start + 100))
                    )
                    sockets.extend(batch)
                snapshots = await asyncio.gather(*(recv(ws) for ws in sockets))
                assert {m["type"] for m in snapshots} == {"snapshot"}
                assert env.hub.open_streams == clients
                version = await env.set("alice", "away", "everyone sees this")
                changes = await asyncio.gather(*(recv(ws) for ws in sockets))
            assert {(m["type"], m["version"]) for m in changes} == {("change", version)}
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    async with asyncio.timeout(BOUND):
        await env.hub.wait_until(lambda h: h.open_streams == 0)
