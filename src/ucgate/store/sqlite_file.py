"""The SQLite file under every embedded journal (location, presence, calls, sessions).

Blocking on purpose: the stores call it from a worker thread (``asyncio.to_thread``) so a
commit never blocks the event loop; a ``threading.Lock`` serialises callers because a
cancelled flush leaves its thread running while the next one may start.

WAL with ``synchronous=NORMAL``: a commit survives a crash of the process (restart, OOM
kill); only an OS crash or power loss can drop the last commits. ``user_version`` holds the
schema version, so a file written by a newer ucgate is refused instead of misread.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


class SqliteFile:
    def __init__(self, path: Path, *, name: str, schema: Sequence[str], version: int = 1) -> None:
        self.path = path
        self._lock = threading.Lock()
        # isolation_level=None: BEGIN/COMMIT are ours, so a batch is one transaction.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        found = self._db.execute("PRAGMA user_version").fetchone()[0]
        if found not in (0, version):
            self._db.close()
            raise sqlite3.DatabaseError(
                f"{path}: {name} schema version {found}, this ucgate knows {version}"
            )
        for statement in schema:
            self._db.execute(statement)
        self._db.execute(f"PRAGMA user_version = {version}")

    @staticmethod
    def in_dir(data_dir: Path, filename: str) -> Path:
        data_dir.mkdir(parents=True, exist_ok=True)
        return data_dir / filename

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def transaction(self, steps: Callable[[sqlite3.Connection], object]) -> None:
        """Run ``steps`` in one transaction: all of it is committed or none."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                steps(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()
