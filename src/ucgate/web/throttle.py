"""Failed-login throttling: a bounded count of recent failures per key, explicit time.

Agent passwords are SIP digest passwords, often short and typed on phones; the login
route must not let anyone try them at HTTP speed. After ``limit`` failures within
``window`` seconds for the same agent id *or* the same client address, further attempts
for that key are refused (429, RFC 6585 §4) until the oldest failure leaves the window.
The SIP side has its own answer (digest nonces, RFC 7616), this only guards HTTP.
"""

from __future__ import annotations

from collections import deque


class LoginThrottle:
    def __init__(self, *, limit: int = 5, window: float = 60.0, max_keys: int = 10_000) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def retry_after(self, keys: tuple[str, ...], now: float) -> float | None:
        """Seconds until one of ``keys`` may try again; None when none is blocked."""
        waits = [
            times[0] + self.window - now
            for key in keys
            if len(times := self._recent(key, now)) >= self.limit
        ]
        return max(waits) if waits else None

    def failed(self, keys: tuple[str, ...], now: float) -> None:
        if len(self._failures) >= self.max_keys:
            # Bounded memory under a spray of distinct ids: forget the oldest keys.
            for key in list(self._failures)[: self.max_keys // 10]:
                del self._failures[key]
        for key in keys:
            self._recent(key, now)
            self._failures.setdefault(key, deque()).append(now)

    def succeeded(self, keys: tuple[str, ...]) -> None:
        for key in keys:
            self._failures.pop(key, None)
