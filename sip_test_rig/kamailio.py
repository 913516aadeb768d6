"""Run a real Kamailio registrar on free loopback ports: the known-good peer for the rig."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from string import Template
from types import TracebackType

from sip_test_rig.ports import LOOPBACK, free_port
from sip_test_rig.probe import wait_until_answers
from sip_test_rig.procs import children_of, kill_pids, stop_process

KAMAILIO = "/usr/sbin/kamailio"
DEFAULT_TEMPLATE = Path(__file__).with_name("kamailio_registrar.cfg.tmpl")
#: Registrar + presence server (presence, presence_xml, presence_dialoginfo), in memory.
PRESENCE_TEMPLATE = Path(__file__).with_name("kamailio_presence.cfg.tmpl")
#: Debian's db_text schema files (one file per table, first line = column types).
DEBIAN_DBTEXT = Path("/usr/share/kamailio/dbtext/kamailio")
#: The tables the presence modules open at start-up, even with subs_db_mode=0 / publ_cache=2.
PRESENCE_TABLES = ("presentity", "active_watchers", "watchers", "xcap")
PRESENCE_MODULE = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules/presence.so")


def render_config(
    template: Path,
    *,
    port: int,
    domain: str,
    dbdir: Path,
    children: int = 2,
    tcp_children: int = 2,
) -> str:
    """The Kamailio config text: ``template`` with its $placeholders filled."""
    return Template(template.read_text()).substitute(
        port=port,
        domain=domain,
        dbdir=str(dbdir),
        children=children,
        tcp_children=tcp_children,
    )


def write_users_dbtext(dbdir: Path, users: list[tuple[str, str]]) -> None:
    """A db_text database holding htable ``users``: user -> plaintext password.

    db_text rows are ``:``-separated; ``:``, ``\\`` and newlines in a value must be escaped, and
    we refuse the newline outright rather than trust the escaping.
    """
    dbdir.mkdir(parents=True, exist_ok=True)
    (dbdir / "version").write_text("table_name(string) table_version(int)\nhtable:2\n")

    def esc(value: str) -> str:
        if "\n" in value or "\r" in value:
            raise ValueError("newline in a user name or password")
        return value.replace("\\", "\\\\").replace(":", "\\:")

    rows = [
        "id(int,auto) key_name(string) key_type(int) value_type(int) key_value(string) expires(int)"
    ]
    # key_type 0: a plain key; value_type 0: a string value (htable module README, "dbtable").
    rows += [f"{i}:{esc(u)}:0:0:{esc(p)}:0" for i, (u, p) in enumerate(users, start=1)]
    (dbdir / "htable").write_text("\n".join(rows) + "\n")


def add_dbtext_tables(dbdir: Path, tables: Sequence[str], *, schema: Path = DEBIAN_DBTEXT) -> None:
    """Copy empty db_text ``tables`` from Debian's schema into ``dbdir`` and register them.

    Kamailio's db_text checks each table's version against the ``version`` table, so the rows
    for these tables are appended to it (call after ``write_users_dbtext``, which writes it).
    """
    dbdir.mkdir(parents=True, exist_ok=True)
    versions: dict[str, str] = {}
    for line in (schema / "version").read_text().splitlines()[1:]:
        fields = line.split(":")
        if len(fields) == 3:  # id:table_name:table_version
            versions[fields[1]] = fields[2]
    version_file = dbdir / "version"
    if not version_file.exists():
        version_file.write_text("table_name(string) table_version(int)\n")
    rows = []
    for table in tables:
        if table not in versions:
            raise ValueError(f"no db_text schema for table {table!r} in {schema}")
        # Only the header line: the tables start empty (all state stays in shared memory).
        header = (schema / table).read_text().splitlines()[0]
        (dbdir / table).write_text(header + "\n")
        rows.append(f"{table}:{versions[table]}\n")
    with open(version_file, "a", encoding="utf-8") as f:
        f.writelines(rows)


def has_presence_modules() -> bool:
    """True when Debian's kamailio-presence-modules package is installed."""
    return PRESENCE_MODULE.exists()


class Kamailio:
    """A Kamailio process in a temporary directory; ``start()`` returns once it answers OPTIONS.

    Every process is stopped by PID in ``stop()``: the main process gets SIGTERM (it takes its
    workers down), and any worker still alive afterwards gets SIGKILL.
    """

    def __init__(
        self,
        users: list[tuple[str, str]],
        *,
        domain: str = "example.test",
        children: int = 2,
        tcp_children: int = 2,
        shm_mb: int = 64,
        pkg_mb: int = 8,
        template: Path | None = None,
        start_timeout: float = 15.0,
        presence: bool = False,
        extra_tables: Sequence[str] = (),
    ) -> None:
        """``presence=True`` runs ``PRESENCE_TEMPLATE`` (unless ``template`` names another) and
        creates the db_text tables the presence modules need; ``extra_tables`` adds more."""
        self.users = users
        self.presence = presence
        self.extra_tables = tuple(extra_tables)
        self.domain = domain
        self.children = children
        self.tcp_children = tcp_children
        self.shm_mb = shm_mb
        self.pkg_mb = pkg_mb
        if template is None:
            template = PRESENCE_TEMPLATE if presence else DEFAULT_TEMPLATE
        self.template = template
        self.start_timeout = start_timeout
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.workers: list[int] = []
        self._tmp: Path | None = None

    @property
    def target(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def log_path(self) -> Path:
        assert self._tmp is not None
        return self._tmp / "kamailio.log"

    def pids(self) -> list[int]:
        """The main process and its workers (for CPU / memory accounting)."""
        if self.proc is None:
            return []
        return [self.proc.pid, *children_of(self.proc.pid)]

    def start(self) -> Kamailio:
        self._tmp = Path(tempfile.mkdtemp(prefix="ucgate-kamailio-"))
        self.port = free_port()
        cfg = self._tmp / "kamailio.cfg"
        write_users_dbtext(self._tmp / "db", self.users)
        tables = (*(PRESENCE_TABLES if self.presence else ()), *self.extra_tables)
        if tables:
            add_dbtext_tables(self._tmp / "db", tables)
        cfg.write_text(
            render_config(
                self.template,
                port=self.port,
                domain=self.domain,
                dbdir=self._tmp / "db",
                children=self.children,
                tcp_children=self.tcp_children,
            )
        )
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed right after Popen dups it
        try:
            self.proc = subprocess.Popen(
                [
                    KAMAILIO,
                    "-f",
                    str(cfg),
                    "-DD",
                    "-E",
                    "-m",
                    str(self.shm_mb),
                    "-M",
                    str(self.pkg_mb),
                    "-P",
                    str(self._tmp / "kamailio.pid"),
                    "-Y",
                    str(self._tmp),
                    "-w",
                    str(self._tmp),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._tmp,
            )
        finally:
            log.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.workers = children_of(self.proc.pid)
        return self

    def _wait_ready(self) -> None:
        assert self.proc is not None
        wait_until_answers(self.port, self.proc, timeout=self.start_timeout, log_tail=self.log_tail)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            workers = self.workers or children_of(self.proc.pid)
            stop_process(self.proc, timeout=5.0)
            kill_pids([pid for pid in workers if _alive(pid)])
            self.proc = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> Kamailio:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _alive(pid: int) -> bool:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat", encoding="ascii") as f:
        # A zombie has already exited; only its parent's wait() is missing.
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    return False


def users_range(count: int, *, prefix: str = "u", width: int = 5) -> list[tuple[str, str]]:
    """``count`` users ``u00001``… with distinct passwords derived from the name."""
    return [(f"{prefix}{i:0{width}d}", f"pw-{i:0{width}d}-x") for i in range(1, count + 1)]


__all__ = [
    "DEFAULT_TEMPLATE",
    "PRESENCE_TABLES",
    "PRESENCE_TEMPLATE",
    "Kamailio",
    "add_dbtext_tables",
    "has_presence_modules",
    "render_config",
    "users_range",
    "write_users_dbtext",
]
