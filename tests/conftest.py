"""Fixtures shared by every test suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.media_backends import BACKENDS, MediaUnderTest
from tests.support.redis_server import RedisServer, RedisServerError


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server for the whole session; yields its URL (redis://127.0.0.1:P/0).

    Fails (never skips) when redis-server is missing: `make test` installs it.
    """
    try:
        server = RedisServer.start(tmp_path_factory.mktemp("redis"))
    except RedisServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """The session server's URL with an empty database for this test."""
    with redis.Redis.from_url(redis_server, socket_timeout=5) as client:
        client.flushdb()
    yield redis_server


@pytest.fixture(params=BACKENDS)
def media(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MediaUnderTest]:
    """A media backend, for real: a test that takes it runs once per backend."""
    backend = MediaUnderTest.start(request.param, tmp_path)
    try:
        yield backend
    finally:
        backend.stop()
