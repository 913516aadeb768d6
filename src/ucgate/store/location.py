"""The location service (RFC 3261 §10.3): the bindings a registrar keeps per address-of-record.

This module holds only the model and the port every backend implements:

- :class:`Binding`, one registered contact of one AOR, with its compact JSON form;
- :class:`LocationStore`, the async port (async because the shared backend is Redis);
- the errors a store raises: :class:`StoreUnavailable` (the registrar answers 500/503,
  RFC 3261 §21.5.4 / §21.5.3) and its subclass :class:`StoreConflict`.

Clock: ``now`` and ``expires_at`` are Unix time (``time.time()``). Bindings outlive the
process (SQLite journal) and are shared between nodes (Redis), so a per-process monotonic
clock would not mean the same thing after a restart or on another node.

Identity: a binding is identified inside its AOR by the Contact URI text. The registrar
compares URIs per RFC 3261 §19.1.4 (and RFC 5626 instance-id/reg-id) *before* handing a list
to :meth:`LocationStore.update`; the store only enforces that the result holds each contact
text once, so both backends agree on what "the same binding" is.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

_T = TypeVar("_T")

UpdateFn = Callable[[list["Binding"]], list["Binding"]]
"""A pure function from the live bindings of one AOR to the bindings to store instead."""


class StoreError(Exception):
    """Base of every error a location store raises on purpose."""


class StoreUnavailable(StoreError):
    """The backend cannot be reached or did not answer within the bounded timeout.

    The registrar turns it into a 500 or a 503 with Retry-After (RFC 3261 §21.5.4); it must
    never wait on the store without a bound.
    """


class StoreConflict(StoreUnavailable):
    """An optimistic update lost its race more times than the retry bound allows.

    A subclass of :class:`StoreUnavailable` because the caller's answer is the same (503,
    retry later) and a registrar that handles one must handle both.
    """


# Compact JSON field names. They are part of the on-disk (SQLite) and shared (Redis) format:
# never rename one, only add new ones. Optional fields are omitted when None/empty/default.
_F_AOR = "a"
_F_CONTACT = "c"
_F_EXPIRES_AT = "e"
_F_Q = "q"
_F_CALL_ID = "ci"
_F_CSEQ = "cs"
_F_SOURCE = "s"
_F_FLOW = "f"
_F_NODE = "n"
_F_INSTANCE = "i"
_F_REG_ID = "r"
_F_USER_AGENT = "ua"
_F_PATH = "p"
_F_REGISTERED_AT = "t"


@dataclass(frozen=True, slots=True)
class Binding:
    """One contact registered for one address-of-record (RFC 3261 §10.3 step 7)."""

    aor: str
    contact: str
    expires_at: float
    call_id: str
    cseq: int
    source: str
    node_id: str
    registered_at: float
    q: float = 1.0
    flow: str | None = None
    instance_id: str | None = None
    reg_id: int | None = None
    user_agent: str | None = None
    path: tuple[str, ...] = ()

    def remaining(self, now: float) -> int:
        """Whole seconds left, as the ``expires`` Contact parameter of a 200 OK (§10.3 step 8).

        Rounded up so a binding that is still live never advertises 0 (0 means "removed"),
        with a small tolerance so ``now + 3600`` read back a moment later still says 3600.
        """
        left = self.expires_at - now
        if left <= 0:
            return 0
        return max(1, math.ceil(left - 1e-3))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            _F_AOR: self.aor,
            _F_CONTACT: self.contact,
            _F_EXPIRES_AT: self.expires_at,
            _F_CALL_ID: self.call_id,
            _F_CSEQ: self.cseq,
            _F_SOURCE: self.source,
            _F_NODE: self.node_id,
            _F_REGISTERED_AT: self.registered_at,
        }
        if self.q != 1.0:
            out[_F_Q] = self.q
        if self.flow is not None:
            out[_F_FLOW] = self.flow
        if self.instance_id is not None:
            out[_F_INSTANCE] = self.instance_id
        if self.reg_id is not None:
            out[_F_REG_ID] = self.reg_id
        if self.user_agent is not None:
            out[_F_USER_AGENT] = self.user_agent
        if self.path:
            out[_F_PATH] = list(self.path)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Binding:
        """Rebuild a binding; raise ValueError on anything that is not our own format."""
        try:
            path = data.get(_F_PATH, [])
            if not isinstance(path, list):
                raise ValueError("path is not a list")
            return cls(
                aor=_req(data, _F_AOR, str),
                contact=_req(data, _F_CONTACT, str),
                expires_at=_num(data[_F_EXPIRES_AT]),
                call_id=_req(data, _F_CALL_ID, str),
                cseq=_req(data, _F_CSEQ, int),
                source=_req(data, _F_SOURCE, str),
                node_id=_req(data, _F_NODE, str),
                registered_at=_num(data[_F_REGISTERED_AT]),
                q=_num(data.get(_F_Q, 1.0)),
                flow=_opt(data, _F_FLOW, str),
                instance_id=_opt(data, _F_INSTANCE, str),
                reg_id=_opt(data, _F_REG_ID, int),
                user_agent=_opt(data, _F_USER_AGENT, str),
                path=tuple(_check(p, str) for p in path),
            )
        except KeyError as exc:
            raise ValueError(f"binding field {exc} missing") from exc

    def to_json(self) -> str:
        # Compact separators and raw UTF-8: every byte counts at ~1 KB per binding overall.
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> Binding:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("binding JSON is not an object")
        return cls.from_dict(data)


def _check(value: object, kind: type[_T]) -> _T:
    # bool is an int subclass; a JSON true where a CSeq belongs is corruption, not 1.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"expected {kind.__name__}, got {type(value).__name__}")
    return value


def _req(data: dict[str, Any], key: str, kind: type[_T]) -> _T:
    return _check(data[key], kind)


def _opt(data: dict[str, Any], key: str, kind: type[_T]) -> _T | None:
    value = data.get(key)
    return None if value is None else _check(value, kind)


def _num(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {type(value).__name__}")
    return float(value)


def sort_bindings(bindings: Iterable[Binding]) -> list[Binding]:
    """Highest q first (RFC 3261 §16.6 / RFC 3841 try order), then the newest registration,
    then the contact text so that equal bindings always come out in the same order."""
    return sorted(bindings, key=lambda b: (-b.q, -b.registered_at, b.contact))


def check_update_result(aor: str, result: list[Binding], now: float) -> None:
    """Reject a list an update function must never produce (a bug in the caller).

    Raised before anything is written, so a bad result changes nothing.
    """
    seen: set[str] = set()
    for binding in result:
        if binding.aor != aor:
            raise ValueError(f"binding for {binding.aor!r} stored under {aor!r}")
        if binding.contact in seen:
            raise ValueError(f"contact {binding.contact!r} appears twice")
        seen.add(binding.contact)
        if binding.expires_at <= now:
            # Expires: 0 means "remove" (§10.3 step 7): the caller must leave it out instead.
            raise ValueError(f"contact {binding.contact!r} already expired")
        if not 0.0 <= binding.q <= 1.0:
            raise ValueError(f"q={binding.q} outside 0..1 (RFC 3261 §20.10)")


class LocationStore(Protocol):
    """Bindings per AOR. Implemented by the memory and the Redis backends."""

    node_id: str

    async def lookup(self, aor: str, now: float) -> list[Binding]:
        """The live bindings (``expires_at > now``) of ``aor``, highest q first."""
        ...

    async def update(self, aor: str, fn: UpdateFn, now: float) -> list[Binding]:
        """Atomically replace the live bindings of ``aor`` by ``fn(live)``; return them sorted.

        ``fn`` may run more than once (optimistic retries), so it must be pure. If it raises,
        nothing changes and the exception propagates. An empty result removes every live
        binding. Bindings past their expiry that :meth:`expire` has not collected yet are not
        shown to ``fn`` and stay in place (unless ``fn`` registers the same contact again) so
        that :meth:`expire` still reports them exactly once.
        """
        ...

    async def expire(self, now: float) -> list[Binding]:
        """Remove and return every binding with ``expires_at <= now``.

        Each removed binding is returned by exactly one caller, even when several nodes
        sweep at once, so "device gone" is announced once.
        """
        ...

    async def next_expiry(self) -> float | None:
        """The earliest ``expires_at`` still stored, to arm one timer instead of polling."""
        ...

    async def count(self) -> int:
        """Stored bindings, including expired ones :meth:`expire` has not collected yet."""
        ...

    async def aors(self) -> list[str]:
        """Every AOR with at least one stored binding, sorted (admin/diagnostics: O(n))."""
        ...

    async def flush(self) -> None:
        """Persist pending writes (no-op for backends that write through)."""
        ...

    async def close(self) -> None:
        """Flush and release the backend."""
        ...
