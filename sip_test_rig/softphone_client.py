"""Drive ``sip_test_rig.softphone`` from tests: spawn it, send commands, wait on its events.

    with Softphone() as phone:
        phone.register(server="127.0.0.1:5060", user="alice", password="...",
                       domain="example.test")
        event = phone.wait_reg_state(code=200, timeout=5)

Every wait is bounded (a ``threading.Condition`` wait with a deadline, never a sleep). ``stop()``
sends ``quit``, then SIGTERM / SIGKILL the process by its PID if it does not exit in time.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from sip_test_rig.procs import stop_process

Event = dict[str, Any]
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


class SoftphoneError(Exception):
    """The softphone rejected a command, died, or did not answer in time."""


class Softphone:
    """One pjsua2 softphone subprocess (at most 4 calls each: see PJSUA2_NOTES.md)."""

    def __init__(
        self,
        *,
        python: str = sys.executable,
        log_level: int = 3,
        msg_log: bool = False,
        start_timeout: float = 15.0,
        max_lifetime: float = 900.0,
        tone: int | None = None,
        watch: tuple[int, ...] | None = None,
        codecs: tuple[str, ...] = (),
    ) -> None:
        """``tone``: Hz this phone plays into every call (``media.DEFAULT_TONES[0]`` if None);
        ``watch``: Hz its detector looks for; ``codecs``: pjsua codec ids offered, in order
        (PCMU/8000/1 only if empty)."""
        self.tone = tone
        self.watch = watch
        self.codecs = codecs
        self.python = python
        self.log_level = log_level
        self.msg_log = msg_log
        self.start_timeout = start_timeout
        self.max_lifetime = max_lifetime
        self.proc: subprocess.Popen[bytes] | None = None
        self.udp_port = 0
        self.tcp_port = 0
        #: Every event and reply received, in order (for assertion messages).
        self.history: list[Event] = []
        self._pending: collections.deque[Event] = collections.deque()
        self._cond = threading.Condition()
        self._eof = False
        self._reader: threading.Thread | None = None
        self._ids = itertools.count(1)
        self._log: IO[bytes] | None = None
        self._log_path: Path | None = None

    # -- lifetime -------------------------------------------------------------------------

    def start(self) -> Softphone:
        fd, name = tempfile.mkstemp(prefix="ucgate-softphone-", suffix=".log")
        os.close(fd)
        self._log_path = Path(name)
        self._log = open(self._log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p
        )
        args = [
            self.python,
            "-m",
            "sip_test_rig.softphone",
            "--json-control",
            "--log-level",
            str(self.log_level),
            "--max-lifetime",
            str(self.max_lifetime),
        ]
        if self.msg_log:
            args.append("--msg-log")
        if self.tone is not None:
            args += ["--tone", str(self.tone)]
        if self.watch is not None:
            args += ["--watch", ",".join(str(f) for f in self.watch)]
        for codec in self.codecs:
            args += ["--codec", codec]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=env
        )
        self._reader = threading.Thread(
            target=self._read_stdout, name="softphone-reader", daemon=True
        )
        self._reader.start()
        try:
            ready = self.wait_event(lambda e: e.get("event") == "ready", self.start_timeout)
        except BaseException:
            self.stop()
            raise
        self.udp_port = int(ready["udp_port"])
        self.tcp_port = int(ready["tcp_port"])
        return self

    def stop(self, timeout: float = 5.0) -> None:
        proc = self.proc
        if proc is None:
            return
        try:
            if proc.poll() is None and proc.stdin is not None:
                try:
                    proc.stdin.write(b'{"cmd":"quit"}\n')
                    proc.stdin.flush()
                    proc.stdin.close()
                except OSError:
                    pass  # already gone: stop_process below still reaps it
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=timeout)
            stop_process(proc, timeout=timeout)
        finally:
            if self._reader is not None:
                self._reader.join(timeout=timeout)
            if proc.stdout is not None:
                proc.stdout.close()
            if self._log is not None:
                self._log.close()
            self.proc = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise SoftphoneError("not started")
        return self.proc.pid

    def log_text(self) -> str:
        """The softphone's pjsua2 log (stderr), for assertion messages."""
        if self._log_path is None:
            return ""
        return self._log_path.read_text(errors="replace")

    def __enter__(self) -> Softphone:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self._log_path is not None and exc_type is None:
            self._log_path.unlink(missing_ok=True)

    # -- events ---------------------------------------------------------------------------

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:  # ends at EOF, when the process exits
            try:
                event = json.loads(raw)
            except ValueError:
                event = {"event": "garbage", "line": raw.decode(errors="replace")}
            with self._cond:
                self.history.append(event)
                self._pending.append(event)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait_event(self, predicate: Callable[[Event], bool], timeout: float) -> Event:
        """Remove and return the first unconsumed event matching ``predicate``.

        Raises ``SoftphoneError`` after ``timeout`` seconds or when the process has exited and
        no matching event is left.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self._pending:
                    if predicate(event):
                        self._pending.remove(event)
                        return event
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    why = "softphone exited" if self._eof else f"no event within {timeout}s"
                    raise SoftphoneError(f"{why}; history={self.history[-10:]}")
                self._cond.wait(remaining)

    def wait_reg_state(
        self,
        *,
        code: int | None = None,
        active: bool | None = None,
        account: str | None = None,
        timeout: float = 10.0,
    ) -> Event:
        """Wait for a ``reg_state`` event with the given fields (None = any)."""

        def match(e: Event) -> bool:
            return (
                e.get("event") == "reg_state"
                and (code is None or e.get("code") == code)
                and (active is None or e.get("active") == active)
                and (account is None or e.get("account") == account)
            )

        return self.wait_event(match, timeout)

    # -- commands -------------------------------------------------------------------------

    def request(self, cmd: str, timeout: float = 5.0, **fields: Any) -> Event:
        """Send one command and return its reply; raise ``SoftphoneError`` if not ``ok``."""
        if self.proc is None or self.proc.stdin is None:
            raise SoftphoneError("not started")
        ident = next(self._ids)
        line = json.dumps({"cmd": cmd, "id": ident, **fields}) + "\n"
        try:
            self.proc.stdin.write(line.encode())
            self.proc.stdin.flush()
        except OSError as exc:
            raise SoftphoneError(f"softphone stdin closed: {exc}") from exc
        reply = self.wait_event(lambda e: e.get("reply") == cmd and e.get("id") == ident, timeout)
        if not reply.get("ok"):
            raise SoftphoneError(f"{cmd} failed: {reply.get('error')}")
        return reply

    def register(
        self,
        *,
        server: str,
        user: str,
        password: str,
        domain: str,
        transport: str = "udp",
        expires: int = 300,
        **extra: Any,
    ) -> str:
        """Start registering; returns the account key. Wait with ``wait_reg_state``."""
        reply = self.request(
            "register",
            server=server,
            user=user,
            password=password,
            domain=domain,
            transport=transport,
            expires=expires,
            **extra,
        )
        return str(reply["account"])

    def unregister(self, account: str | None = None) -> str:
        reply = (
            self.request("unregister")
            if account is None
            else self.request("unregister", account=account)
        )
        return str(reply["account"])

    def info(self) -> Event:
        return self.request("info")

    # -- presence -------------------------------------------------------------------------

    def subscribe_buddy(self, uri: str, account: str | None = None) -> Event:
        """SUBSCRIBE to ``uri``'s presence; wait for it with ``wait_buddy_state``.

        The account must have been registered with ``proxy=True`` unless ``uri`` names the
        server by address.
        """
        return self.request("subscribe_buddy", uri=uri, **_account(account))

    def unsubscribe_buddy(self, uri: str, account: str | None = None) -> Event:
        return self.request("unsubscribe_buddy", uri=uri, **_account(account))

    def buddy_info(self, uri: str, account: str | None = None) -> Event:
        """The buddy's current state, in the fields of a ``buddy_state`` event."""
        return self.request("buddy_info", uri=uri, **_account(account))

    def publish_presence(
        self,
        *,
        status: str = "online",
        activity: str = "unknown",
        note: str = "",
        account: str | None = None,
    ) -> Event:
        """PUBLISH ``status`` (online/offline) with an RPID ``activity`` (unknown/away/busy)."""
        return self.request(
            "publish_presence", status=status, activity=activity, note=note, **_account(account)
        )

    def unpublish(self, account: str | None = None) -> Event:
        return self.request("unpublish", **_account(account))

    def wait_buddy_state(
        self,
        *,
        uri: str | None = None,
        status: str | None = None,
        activity: str | None = None,
        note: str | None = None,
        sub_state: str | None = None,
        timeout: float = 10.0,
    ) -> Event:
        """Wait for a ``buddy_state`` event with the given fields (None = any).

        A buddy reports several intermediate states (sub_state SENT, ACCEPTED, ACTIVE; status
        unknown before the first NOTIFY) before the one wanted; those stay pending, in order,
        for later waits (``history`` keeps them all).
        """

        def match(e: Event) -> bool:
            return (
                e.get("event") == "buddy_state"
                and (uri is None or e.get("uri") == uri)
                and (status is None or e.get("status") == status)
                and (activity is None or e.get("activity") == activity)
                and (note is None or e.get("note") == note)
                and (sub_state is None or e.get("sub_state") == sub_state)
            )

        return self.wait_event(match, timeout)

    # -- calls ----------------------------------------------------------------------------

    def local_account(self, user: str, **extra: Any) -> tuple[str, str]:
        """A non-registering account; returns (account key, contact URI to call it directly).

        ``extra``: ``auto_answer`` (status code or None), ``answer_delay_ms``, ``tone``,
        ``domain``, ``proxy``, ``password``.
        """
        reply = self.request("account", user=user, **extra)
        return str(reply["account"]), str(reply["contact"])

    def make_call(
        self, uri: str, *, account: str | None = None, headers: dict[str, str] | None = None
    ) -> int:
        """INVITE ``uri``; returns the call id used by every other call command and event."""
        fields: dict[str, Any] = {"uri": uri, **_account(account)}
        if headers:
            fields["headers"] = headers
        return int(self.request("make_call", **fields)["call"])

    def answer(self, call: int, code: int = 200) -> Event:
        return self.request("answer", call=call, code=code)

    def hangup(self, call: int, code: int = 0) -> Event:
        return self.request("hangup", call=call, code=code)

    def hold(self, call: int) -> Event:
        return self.request("hold", call=call)

    def resume(self, call: int) -> Event:
        return self.request("resume", call=call)

    def transfer(self, call: int, to: str) -> Event:
        return self.request("transfer", call=call, to=to)

    def transfer_attended(self, call: int, target_call: int) -> Event:
        return self.request("transfer_attended", call=call, target_call=target_call)

    def dial_dtmf(self, call: int, digits: str, method: str = "rfc4733") -> Event:
        return self.request("dial_dtmf", call=call, digits=digits, method=method)

    def audio_report(self, call: int) -> Event:
        return self.request("audio_report", call=call)

    def reset_audio(self, call: int) -> Event:
        return self.request("reset_audio", call=call)

    def wait_call_event(
        self, kind: str, call: int | None = None, timeout: float = 10.0, **fields: Any
    ) -> Event:
        """Wait for an event named ``kind`` for ``call`` (None = any) whose fields match."""

        def match(e: Event) -> bool:
            return (
                e.get("event") == kind
                and (call is None or e.get("call") == call)
                and all(e.get(k) == v for k, v in fields.items())
            )

        return self.wait_event(match, timeout)

    def wait_call_state(self, call: int | None, state: str, timeout: float = 10.0) -> Event:
        """Wait for ``call`` to reach ``state``; a premature ``disconnected`` fails at once."""

        def match(e: Event) -> bool:
            return (
                e.get("event") == "call_state"
                and (call is None or e.get("call") == call)
                and (e.get("state") == state or e.get("state") == "disconnected")
            )

        event = self.wait_event(match, timeout)
        if event["state"] != state:
            raise SoftphoneError(f"call {call} ended waiting for {state!r}: {event}")
        return event

    def wait_incoming(self, timeout: float = 10.0) -> Event:
        return self.wait_call_event("incoming_call", None, timeout)

    def wait_tone(self, call: int, freq: int, timeout: float = 5.0) -> Event:
        """Wait until ``call``'s detector has heard ``freq`` for its minimum duration."""
        return self.wait_call_event("tone_detected", call, timeout, freq=freq)

    def wait_frames(self, call: int, frames: int, timeout: float = 5.0) -> Event:
        """Poll ``audio_report`` until the detector has seen ``frames`` frames since the last
        reset (bounded): the observation window for asserting that a tone is *absent*."""
        deadline = time.monotonic() + timeout
        while True:
            report = self.audio_report(call)
            if int(report["frames"]) >= frames:
                return report
            if time.monotonic() >= deadline:
                raise SoftphoneError(f"only {report['frames']} frames within {timeout}s")
            # Waiting on our own reader thread for *any* event paces the poll without a sleep.
            with self._cond:
                self._cond.wait(0.02)


def _account(account: str | None) -> dict[str, Any]:
    # dict[str, Any], not dict[str, str]: it is splatted next to request()'s float timeout.
    return {} if account is None else {"account": account}
