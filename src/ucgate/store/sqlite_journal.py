"""SQLite persistence of the memory location store, so a restart loses no binding.

One row per AOR: ``aor_bindings(aor TEXT PRIMARY KEY, bindings TEXT)`` where ``bindings`` is a
JSON array of :meth:`Binding.to_dict` objects without the ``a`` (AOR) field, which the row key
already holds. A row is rewritten whole when its AOR changed and deleted when it emptied: the
memory store batches changed AORs (write-behind) and hands them to :meth:`SqliteJournal.write`
in one transaction.

The journal is synchronous on purpose: the memory store calls it from a worker thread
(``asyncio.to_thread``) so the commit never blocks the event loop. A ``threading.Lock``
serialises writers, because a cancelled flush leaves its thread running while the next one may
start.

WAL with ``synchronous=NORMAL``: a commit survives a crash of the process (the case that
matters: restart, OOM kill); only an OS crash or power loss can drop the last commits, which the
registrar tolerates because phones re-REGISTER well within their expiry (RFC 3261 §10.2.4).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import structlog

from ucgate.store.location import Binding

log = structlog.get_logger(__name__)

FILENAME = "location.sqlite3"
_SCHEMA_VERSION = 1


class SqliteJournal:
    """A blocking SQLite file holding the bindings of every AOR."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        # isolation_level=None: we issue BEGIN/COMMIT ourselves so a batch is one transaction.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, _SCHEMA_VERSION):
            self._db.close()
            raise sqlite3.DatabaseError(
                f"{path}: location schema version {version}, this ucgate knows {_SCHEMA_VERSION}"
            )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS aor_bindings ("
            " aor TEXT PRIMARY KEY, bindings TEXT NOT NULL) WITHOUT ROWID"
        )
        self._db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    @classmethod
    def in_dir(cls, data_dir: Path) -> SqliteJournal:
        data_dir.mkdir(parents=True, exist_ok=True)
        return cls(data_dir / FILENAME)

    def load(self) -> dict[str, list[Binding]]:
        """Every stored binding, expired or not (the caller decides what is live).

        A row that does not parse is logged and skipped rather than failing the start-up:
        losing one AOR until its phones re-register beats losing the whole registrar.
        """
        out: dict[str, list[Binding]] = {}
        with self._lock:
            rows = self._db.execute("SELECT aor, bindings FROM aor_bindings").fetchall()
        for aor, text in rows:
            try:
                items = json.loads(text)
                if not isinstance(items, list):
                    raise ValueError("row is not a JSON array")
                out[aor] = [Binding.from_dict({**item, "a": aor}) for item in items]
            except (ValueError, TypeError) as exc:
                log.warning("location.journal_row_skipped", aor=aor, error=str(exc))
        return out

    def write(self, changes: Mapping[str, Sequence[Binding]]) -> None:
        """Replace the rows of the changed AORs (an empty sequence deletes the row)."""
        upserts: list[tuple[str, str]] = []
        deletes: list[tuple[str]] = []
        for aor, bindings in changes.items():
            if bindings:
                items = [_row_item(b) for b in bindings]
                upserts.append((aor, json.dumps(items, separators=(",", ":"), ensure_ascii=False)))
            else:
                deletes.append((aor,))
        with self._lock:
            self._db.execute("BEGIN")
            try:
                if deletes:
                    self._db.executemany("DELETE FROM aor_bindings WHERE aor = ?", deletes)
                if upserts:
                    self._db.executemany(
                        "INSERT INTO aor_bindings (aor, bindings) VALUES (?, ?)"
                        " ON CONFLICT(aor) DO UPDATE SET bindings = excluded.bindings",
                        upserts,
                    )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _row_item(binding: Binding) -> dict[str, object]:
    item = binding.to_dict()
    del item["a"]
    return item
