"""The ``embedded`` media-anchor backend: a supervised pool of media worker processes.

Asyncio glue around :class:`~ucgate.media.embedded.pool.PoolBook` (placement, capacity,
liveness) and :mod:`~ucgate.media.embedded.protocol` (framing). Each worker is
``python -m ucgate.media.embedded.worker``; ucgate owns its stdin/stdout pipes, its
stderr is ucgate's (the worker logs there with the media key bound).

Supervision: a worker whose stdout closes (crash, kill) or that misses a ping deadline is
killed (by its PID), reaped, and its sessions, only those, are reported to ``on_lost`` so
the B2BUA can end those calls; the pool keeps ``min_workers`` running by spawning a
replacement, and spawns more on demand up to ``max_workers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from ucgate.media.anchor import LostCallback, MediaError, MediaKey, MediaProfile, Side
from ucgate.media.embedded import protocol
from ucgate.media.embedded.pool import (
    DEFAULT_CALLS_PER_WORKER,
    PingDue,
    PoolBook,
    WorkerUnresponsive,
)
from ucgate.media.embedded.protocol import Event, EventKind, Op, Reply, Request

log = structlog.get_logger("ucgate.media.embedded")

DtmfCallback = Callable[[MediaKey, str], None]

#: An offer/answer waits this long for its worker: ICE gathering on host candidates and
#: a DTLS certificate take well under a second; more means the worker is stuck.
REQUEST_TIMEOUT = 10.0
#: A new worker imports aiortc and PyAV (~1 s on this class of machine) before "ready".
START_TIMEOUT = 20.0
#: How long a worker gets to exit after "shutdown" before it is killed.
STOP_TIMEOUT = 3.0


@dataclass(eq=False)
class _WorkerProc:
    id: int
    process: asyncio.subprocess.Process | None = None
    ready: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    pending: dict[int, asyncio.Future[Reply]] = field(default_factory=dict)
    reader: asyncio.Task[None] | None = None
    next_request_id: int = 1
    closing: bool = False

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid


class EmbeddedAnchor:
    name = "embedded"

    def __init__(
        self,
        *,
        max_workers: int = 4,
        calls_per_worker: int = DEFAULT_CALLS_PER_WORKER,
        min_workers: int = 1,
        bind_host: str = "127.0.0.1",
        python: str = sys.executable,
        ping_interval: float = 2.0,
        ping_timeout: float = 5.0,
        log_format: str = "json",
        log_level: str = "info",
        on_dtmf: DtmfCallback | None = None,
    ) -> None:
        self.book = PoolBook(
            max_workers=max_workers,
            calls_per_worker=calls_per_worker,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
        )
        self.min_workers = min(min_workers, max_workers)
        self.bind_host = bind_host
        self.python = python
        self.log_format = log_format
        self.log_level = log_level
        self.on_dtmf = on_dtmf
        self._on_lost: LostCallback | None = None
        self._procs: dict[int, _WorkerProc] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle
    async def start(self, on_lost: LostCallback) -> None:
        self._on_lost = on_lost
        self._closed = False
        starting = [self._spawn(self.book.new_worker()) for _ in range(self.min_workers)]
        try:
            await asyncio.gather(
                *(asyncio.wait_for(asyncio.shield(p.ready), START_TIMEOUT) for p in starting)
            )
        except (OSError, TimeoutError, MediaError) as exc:
            await self.close()
            raise MediaError(503, f"media workers failed to start: {exc}") from exc
        self._rearm()

    async def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await asyncio.gather(*(self._stop(p) for p in list(self._procs.values())))

    def worker_pids(self) -> dict[int, int]:
        """``{worker id: pid}`` of the running workers (tests, benchmarks)."""
        return {wid: p.pid for wid, p in self._procs.items() if p.pid is not None}

    def worker_pid_of(self, key: MediaKey) -> int | None:
        wid = self.book.worker_of(key)
        proc = self._procs.get(wid) if wid is not None else None
        return None if proc is None else proc.pid

    def _spawn(self, wid: int) -> _WorkerProc:
        proc = _WorkerProc(wid)
        self._procs[wid] = proc
        proc.reader = asyncio.get_running_loop().create_task(self._run(proc))
        return proc

    async def _run(self, proc: _WorkerProc) -> None:
        """Spawn, read replies and events until the pipe closes, then reap."""
        try:
            proc.process = await asyncio.create_subprocess_exec(
                self.python,
                "-m",
                "ucgate.media.embedded.worker",
                "--bind-host",
                self.bind_host,
                "--max-sessions",
                str(self.book.calls_per_worker),
                "--log-format",
                self.log_format,
                "--log-level",
                self.log_level,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            assert proc.process.stdout is not None
            log.info("media.worker_spawned", worker=proc.id, pid=proc.pid)
            decoder = protocol.FrameDecoder()
            while data := await proc.process.stdout.read(65536):
                for message in decoder.feed(data):
                    self._dispatch(proc, message)
            reason = "media worker exited"
        except protocol.ProtocolError as exc:
            reason = f"media worker broke the protocol: {exc}"
        except OSError as exc:
            reason = f"media worker could not start: {exc}"
        except asyncio.CancelledError:
            reason = "media worker stopped"
        await self._reap(proc, reason)

    def _dispatch(self, proc: _WorkerProc, message: protocol.Message) -> None:
        if isinstance(message, Reply):
            future = proc.pending.pop(message.id, None)
            if future is not None and not future.done():
                future.set_result(message)
        elif isinstance(message, Event):
            if message.kind is EventKind.READY:
                self.book.worker_ready(proc.id, asyncio.get_running_loop().time())
                if not proc.ready.done():
                    proc.ready.set_result(None)
                self._rearm()
            elif message.kind is EventKind.DTMF and self.on_dtmf is not None:
                key = MediaKey(str(message.data["call_id"]), str(message.data["branch"]))
                self.on_dtmf(key, str(message.data["digit"]))

    async def _reap(self, proc: _WorkerProc, reason: str) -> None:
        process = proc.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        if process is not None:
            await process.wait()
        self._procs.pop(proc.id, None)
        error = MediaError(503, reason)
        if not proc.ready.done():
            proc.ready.set_exception(error)
            proc.ready.exception()  # retrieved: callers that wait see it, nobody else warns
        for future in proc.pending.values():
            if not future.done():
                future.set_exception(error)
        proc.pending.clear()
        keys = self.book.worker_lost(proc.id)
        if proc.closing or self._closed:
            return
        log.warning(
            "media.worker_lost",
            worker=proc.id,
            pid=proc.pid,
            returncode=None if process is None else process.returncode,
            reason=reason,
            sessions=len(keys),
        )
        if keys and self._on_lost is not None:
            self._on_lost(keys, reason)
        while len(self.book.workers) < self.min_workers:
            self._spawn(self.book.new_worker())

    async def _stop(self, proc: _WorkerProc) -> None:
        proc.closing = True
        process = proc.process
        if process is not None and process.returncode is None and process.stdin is not None:
            with contextlib.suppress(MediaError, TimeoutError):
                await asyncio.wait_for(self._request(proc, Op.SHUTDOWN, {}), STOP_TIMEOUT)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
        if proc.reader is not None:
            if process is None or process.returncode is None:
                proc.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await proc.reader

    # ------------------------------------------------------------------ supervision
    def _rearm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.book.next_deadline()
        if not self._closed and deadline != math.inf:
            self._timer = asyncio.get_running_loop().call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        for action in self.book.handle_timer(loop.time()):
            proc = self._procs.get(action.worker)
            if proc is None:
                continue
            if isinstance(action, PingDue):
                self.book.ping_sent(proc.id, loop.time())
                task = loop.create_task(self._ping(proc))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif isinstance(action, WorkerUnresponsive):
                log.warning("media.worker_unresponsive", worker=proc.id, pid=proc.pid)
                if proc.process is not None and proc.process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.process.kill()  # the reader sees EOF and reaps
        self._rearm()

    async def _ping(self, proc: _WorkerProc) -> None:
        with contextlib.suppress(MediaError):
            await self._request(proc, Op.PING, {})
            self.book.pong(proc.id, asyncio.get_running_loop().time())
            self._rearm()

    # ------------------------------------------------------------------ requests
    async def _request(self, proc: _WorkerProc, op: Op, args: dict[str, Any]) -> dict[str, Any]:
        process = proc.process
        if process is None or process.stdin is None or process.returncode is not None:
            raise MediaError(503, "media worker not running")
        request_id = proc.next_request_id
        proc.next_request_id += 1
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        proc.pending[request_id] = future
        try:
            process.stdin.write(protocol.encode(Request(request_id, op, args)))
            await process.stdin.drain()
            reply = await asyncio.wait_for(future, REQUEST_TIMEOUT)
        except (ConnectionError, BrokenPipeError) as exc:
            raise MediaError(503, f"media worker pipe closed: {exc}") from exc
        except TimeoutError as exc:
            raise MediaError(503, f"media worker did not answer {op.value}") from exc
        finally:
            proc.pending.pop(request_id, None)
        if not reply.ok:
            raise MediaError(reply.status or 500, reply.reason)
        return reply.result

    async def _worker_for(self, key: MediaKey) -> _WorkerProc:
        if self._closed or self._on_lost is None:
            raise MediaError(503, "embedded media backend not started")
        placement = self.book.place(key)
        proc = self._procs.get(placement.worker)
        if proc is None:
            proc = self._spawn(placement.worker)
        try:
            await asyncio.wait_for(asyncio.shield(proc.ready), START_TIMEOUT)
        except TimeoutError as exc:
            self.book.release(key)
            raise MediaError(503, "media worker did not start") from exc
        except MediaError:
            self.book.release(key)
            raise
        return proc

    async def _sdp_op(
        self, op: Op, key: MediaKey, side: Side, sdp: bytes, toward: MediaProfile
    ) -> bytes:
        new = self.book.worker_of(key) is None
        proc = await self._worker_for(key)
        args = {
            "call_id": key.call_id,
            "branch": key.branch,
            "side": side,
            "sdp": sdp.decode("utf-8", "replace"),
            "toward": toward.value,
        }
        try:
            result = await self._request(proc, op, args)
        except MediaError:
            if new:
                await self.delete(key)
            raise
        return str(result["sdp"]).encode()

    async def offer(self, key: MediaKey, side: Side, sdp: bytes, toward: MediaProfile) -> bytes:
        return await self._sdp_op(Op.OFFER, key, side, sdp, toward)

    async def answer(self, key: MediaKey, side: Side, sdp: bytes, toward: MediaProfile) -> bytes:
        if self.book.worker_of(key) is None:
            raise MediaError(500, "answer for an unknown media session")
        return await self._sdp_op(Op.ANSWER, key, side, sdp, toward)

    async def send_dtmf(self, key: MediaKey, digit: str) -> bool:
        """Send a key to the RTP side as RFC 4733; False when that side cannot take it."""
        wid = self.book.worker_of(key)
        proc = self._procs.get(wid) if wid is not None else None
        if proc is None:
            return False
        args = {"call_id": key.call_id, "branch": key.branch, "digit": digit}
        try:
            result = await self._request(proc, Op.DTMF, args)
        except MediaError:
            return False
        return bool(result.get("sent"))

    async def delete(self, key: MediaKey) -> None:
        wid = self.book.release(key)
        proc = self._procs.get(wid) if wid is not None else None
        if proc is None:
            return
        try:
            await self._request(proc, Op.DELETE, {"call_id": key.call_id, "branch": key.branch})
        except MediaError as exc:
            log.warning("media.delete_failed", media_key=key.label, error=exc.reason)

    async def worker_stats(self) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        for wid, proc in list(self._procs.items()):
            with contextlib.suppress(MediaError):
                out[wid] = await self._request(proc, Op.STATS, {})
        return out

    def stats(self) -> dict[str, object]:
        return {"backend": self.name, **self.book.stats()}
