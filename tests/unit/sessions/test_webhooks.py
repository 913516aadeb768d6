"""Webhooks: signed requests reach a real aiohttp server; failures are retried with
backoff; the outbox (SQLite or real Redis) keeps undelivered events across a restart."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from ucgate.sessions.webhooks import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    RedisOutbox,
    SqliteOutbox,
    WebhookOutbox,
    WebhookSender,
    WebhookTarget,
    sign,
    verify_signature,
)

SECRET = "webhook-secret-0001"


@dataclass
class Receiver:
    """A real HTTP server answering with the scripted statuses (then 200)."""

    statuses: list[int] = field(default_factory=list)
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append((dict(request.headers), body))
        self.arrived.set()
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status)


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    server = TestServer(app)
    await server.start_server()
    try:
        yield rec, str(server.make_url("/hook"))
    finally:
        await server.close()


@pytest.fixture(params=["sqlite", "redis"])
async def outbox_factory(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    """A function opening the outbox again (same file / same Redis), as a restart does."""
    opened: list[WebhookOutbox] = []

    async def open_outbox() -> WebhookOutbox:
        box: WebhookOutbox
        if request.param == "sqlite":
            box = await SqliteOutbox.open(tmp_path)
        else:
            url = request.getfixturevalue("redis_url")
            box = RedisOutbox(Redis.from_url(url, decode_responses=True), timeout=2.0)
        opened.append(box)
        return box

    yield open_outbox
    for box in opened:
        await box.close()


def test_signature_roundtrip_and_replay_window() -> None:
    body = b'{"a":1}'
    sig = sign(SECRET, 1000, body)
    assert sig.startswith("sha256=") and len(sig) == 7 + 64
    assert verify_signature(SECRET, body, timestamp="1000", signature=sig, now=1100)
    assert not verify_signature(SECRET, body + b" ", timestamp="1000", signature=sig, now=1100)
    assert not verify_signature("other-secret-xx", body, timestamp="1000", signature=sig, now=1100)
    # The timestamp is inside the MAC: changing it breaks the signature...
    assert not verify_signature(SECRET, body, timestamp="1001", signature=sig, now=1100)
    # ...and an old request is refused even with a good MAC.
    assert not verify_signature(SECRET, body, timestamp="1000", signature=sig, now=2000)
    assert not verify_signature(SECRET, body, timestamp="x", signature=sig, now=1000)


async def test_delivery_is_signed_and_removed_from_outbox(
    receiver: tuple[Receiver, str], outbox_factory: Any
) -> None:
    rec, url = receiver
    clock = Clock()
    sender = WebhookSender(await outbox_factory(), [WebhookTarget(url, SECRET)], clock=clock)
    try:
        assert await sender.publish("offer_made", "ev-1", {"type": "offer_made", "n": 1}) == 1
        assert await sender.drain() == 1
    finally:
        await sender.close()
    headers, body = rec.received[0]
    assert json.loads(body) == {"type": "offer_made", "n": 1}
    assert headers[DELIVERY_HEADER] == "ev-1"
    assert verify_signature(
        SECRET,
        body,
        timestamp=headers[TIMESTAMP_HEADER],
        signature=headers[SIGNATURE_HEADER],
        now=clock.now,
    )
    assert await sender.outbox.items() == []


async def test_event_filter_per_target(receiver: tuple[Receiver, str], outbox_factory: Any) -> None:
    _, url = receiver
    targets = [WebhookTarget(url, SECRET, frozenset({"session_closed"}))]
    sender = WebhookSender(await outbox_factory(), targets)
    assert await sender.publish("offer_made", "ev-1", {}) == 0
    assert await sender.publish("session_closed", "ev-2", {}) == 1
    assert [i.event_id for i in await sender.outbox.items()] == ["ev-2"]


async def test_500_then_success_is_retried_with_backoff(
    receiver: tuple[Receiver, str], outbox_factory: Any
) -> None:
    rec, url = receiver
    rec.statuses = [500, 503]
    clock = Clock()
    sender = WebhookSender(
        await outbox_factory(), [WebhookTarget(url, SECRET)], clock=clock, base_delay=2.0
    )
    try:
        await sender.publish("offer_made", "ev-1", {"x": 1})
        assert await sender.drain() == 0
        [item] = await sender.outbox.items()
        assert item.attempts == 1 and item.next_at == clock.now + 2.0
        assert item.last_error == "HTTP 500"
        # Not due yet: nothing is sent.
        assert await sender.drain() == 0
        assert len(rec.received) == 1
        clock.now += 2.0
        assert await sender.drain() == 0
        [item] = await sender.outbox.items()
        assert item.attempts == 2 and item.next_at == clock.now + 4.0  # doubled
        clock.now += 4.0
        assert await sender.drain() == 1
    finally:
        await sender.close()
    assert len(rec.received) == 3
    # Every attempt carries the same idempotency key.
    assert {h[DELIVERY_HEADER] for h, _ in rec.received} == {"ev-1"}
    assert await sender.outbox.items() == []


async def test_gives_up_after_max_attempts_but_keeps_the_row(
    receiver: tuple[Receiver, str], outbox_factory: Any
) -> None:
    rec, url = receiver
    rec.statuses = [500, 500]
    clock = Clock()
    sender = WebhookSender(
        await outbox_factory(), [WebhookTarget(url, SECRET)], clock=clock, max_attempts=2
    )
    try:
        await sender.publish("offer_made", "ev-1", {})
        await sender.drain()
        clock.now += 10
        await sender.drain()
        clock.now += 1000
        assert await sender.drain() == 0
    finally:
        await sender.close()
    assert len(rec.received) == 2
    [item] = await sender.outbox.items()
    assert item.dead and item.attempts == 2
    assert await sender.outbox.next_due() is None


async def test_restart_keeps_undelivered_events(
    receiver: tuple[Receiver, str], outbox_factory: Any
) -> None:
    rec, url = receiver
    rec.statuses = [500]
    clock = Clock()
    first = WebhookSender(await outbox_factory(), [WebhookTarget(url, SECRET)], clock=clock)
    await first.publish("offer_made", "ev-1", {"k": "v"})
    await first.drain()  # fails with 500
    await first.publish("session_closed", "ev-2", {"k": "w"})  # never attempted
    await first.close()
    await first.outbox.close()

    clock.now += 3600
    second = WebhookSender(await outbox_factory(), [WebhookTarget(url, SECRET)], clock=clock)
    try:
        assert await second.drain() == 2
    finally:
        await second.close()
    assert sorted(h[DELIVERY_HEADER] for h, _ in rec.received) == ["ev-1", "ev-1", "ev-2"]
    assert await second.outbox.items() == []


async def test_unreachable_url_is_a_retry_not_a_crash(outbox_factory: Any) -> None:
    clock = Clock()
    # Port 9 (discard) on localhost is closed in the test environment: connection refused.
    sender = WebhookSender(
        await outbox_factory(),
        [WebhookTarget("http://127.0.0.1:9/hook", SECRET)],
        clock=clock,
        request_timeout=2.0,
    )
    try:
        await sender.publish("offer_made", "ev-1", {})
        assert await sender.drain() == 0
    finally:
        await sender.close()
    [item] = await sender.outbox.items()
    assert item.attempts == 1 and item.last_error is not None


async def test_run_delivers_after_publish(receiver: tuple[Receiver, str], tmp_path: Path) -> None:
    rec, url = receiver
    sender = WebhookSender(await SqliteOutbox.open(tmp_path), [WebhookTarget(url, SECRET)])
    task = asyncio.create_task(sender.run(idle=30.0))
    try:
        await sender.publish("offer_made", "ev-1", {})
        async with asyncio.timeout(5):
            await rec.arrived.wait()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await sender.close()
        await sender.outbox.close()
    assert rec.received[0][0][DELIVERY_HEADER] == "ev-1"
