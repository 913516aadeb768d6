"""SQLite persistence of the memory location store, so a restart loses no binding.

One row per AOR: ``aor_bindings(aor TEXT PRIMARY KEY, bindings TEXT)`` where ``bindings`` is a
JSON array of :meth:`Binding.to_dict` objects without the ``a`` (AOR) field, which the row key
already holds. A row is rewritten whole when its AOR changed and deleted when it emptied: the
memory store batches changed AORs (write-behind) and hands them to :meth:`SqliteJournal.write`
in one transaction.

The file itself (blocking, thread-safe, WAL) is :class:`ucgate.store.sqlite_file.SqliteFile`.
Losing the last commits to an OS crash is tolerable here: phones re-REGISTER well within
their expiry (RFC 3261 §10.2.4).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path

import structlog

from ucgate.store.location import Binding
from ucgate.store.sqlite_file import SqliteFile

log = structlog.get_logger(__name__)

FILENAME = "location.sqlite3"
_SCHEMA_VERSION = 1


class SqliteJournal:
    """A blocking SQLite file holding the bindings of every AOR."""

    def __init__(self, path: Path) -> None:
        self._file = SqliteFile(
            path,
            name="location",
            version=_SCHEMA_VERSION,
            schema=[
                "CREATE TABLE IF NOT EXISTS aor_bindings ("
                " aor TEXT PRIMARY KEY, bindings TEXT NOT NULL) WITHOUT ROWID"
            ],
        )
        self.path = path

    @classmethod
    def in_dir(cls, data_dir: Path) -> SqliteJournal:
        return cls(SqliteFile.in_dir(data_dir, FILENAME))

    def load(self) -> dict[str, list[Binding]]:
        """Every stored binding, expired or not (the caller decides what is live).

        A row that does not parse is logged and skipped rather than failing the start-up:
        losing one AOR until its phones re-register beats losing the whole registrar.
        """
        out: dict[str, list[Binding]] = {}
        for aor, text in self._file.query("SELECT aor, bindings FROM aor_bindings"):
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

        def steps(db: sqlite3.Connection) -> None:
            if deletes:
                db.executemany("DELETE FROM aor_bindings WHERE aor = ?", deletes)
            if upserts:
                db.executemany(
                    "INSERT INTO aor_bindings (aor, bindings) VALUES (?, ?)"
                    " ON CONFLICT(aor) DO UPDATE SET bindings = excluded.bindings",
                    upserts,
                )

        self._file.transaction(steps)

    def close(self) -> None:
        self._file.close()


def _row_item(binding: Binding) -> dict[str, object]:
    item = binding.to_dict()
    del item["a"]
    return item
