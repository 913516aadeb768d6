"""Application stores. The location service (registrar bindings) lives here.

Use :func:`open_location_store` and program against :class:`LocationStore`; the backends are
:mod:`ucgate.store.memory` (embedded, journalled to SQLite) and
:mod:`ucgate.store.redis_location` (shared between nodes).
"""

from __future__ import annotations

import enum
import time
from pathlib import Path

from ucgate.store.location import (
    Binding,
    LocationStore,
    StoreConflict,
    StoreError,
    StoreUnavailable,
    UpdateFn,
    sort_bindings,
)
from ucgate.store.memory import MemoryLocationStore
from ucgate.store.redis_location import RedisLocationStore

__all__ = [
    "Binding",
    "LocationStore",
    "MemoryLocationStore",
    "RedisLocationStore",
    "StoreBackend",
    "StoreConflict",
    "StoreError",
    "StoreUnavailable",
    "UpdateFn",
    "open_location_store",
    "sort_bindings",
]


class StoreBackend(enum.Enum):
    MEMORY = "memory"
    REDIS = "redis"

    @classmethod
    def _missing_(cls, value: object) -> StoreBackend | None:
        # "embedded" is the name the deployment docs use for the default backend.
        return cls.MEMORY if value == "embedded" else None


async def open_location_store(
    backend: StoreBackend | str,
    *,
    redis_url: str | None = None,
    data_dir: Path | None = None,
    node_id: str,
    now: float | None = None,
    timeout: float = 1.0,
) -> LocationStore:
    """Open the configured location store.

    ``memory``/``embedded``: bindings in this process, journalled to
    ``data_dir/location.sqlite3`` (no persistence when ``data_dir`` is None); run
    :meth:`MemoryLocationStore.run_flusher` as a task or call ``flush()`` periodically.
    ``redis``: shared through ``redis_url``; every call bounded by ``timeout`` seconds.
    ``now`` (Unix time, default the wall clock) decides which journalled bindings are stale.
    Raises :class:`StoreUnavailable` if the backend cannot be opened.
    """
    kind = StoreBackend(backend)
    if kind is StoreBackend.REDIS:
        if redis_url is None:
            raise ValueError("the redis location store needs redis_url")
        return await RedisLocationStore.connect(redis_url, node_id=node_id, timeout=timeout)
    return await MemoryLocationStore.open(
        node_id=node_id, data_dir=data_dir, now=time.time() if now is None else now
    )
