"""Failed-login throttle, time stepped by hand."""

from __future__ import annotations

from ucgate.web.throttle import LoginThrottle

KEYS = ("agent:alice", "addr:192.0.2.7")


def test_blocks_after_the_limit_until_the_window_passes() -> None:
    t = LoginThrottle(limit=3, window=60.0)
    for now in (0.0, 1.0, 2.0):
        assert t.retry_after(KEYS, now) is None
        t.failed(KEYS, now)
    assert t.retry_after(KEYS, 3.0) == 57.0
    assert t.retry_after(KEYS, 60.5) is None  # the first failure left the window


def test_either_key_blocks_and_success_clears() -> None:
    t = LoginThrottle(limit=2, window=10.0)
    t.failed(("agent:alice", "addr:a"), 0.0)
    t.failed(("agent:alice", "addr:b"), 1.0)
    # Alice is blocked from any address; address a is not blocked for bob.
    assert t.retry_after(("agent:alice", "addr:c"), 2.0) is not None
    assert t.retry_after(("agent:bob", "addr:a"), 2.0) is None
    t.succeeded(("agent:alice",))
    assert t.retry_after(("agent:alice", "addr:c"), 2.0) is None


def test_memory_stays_bounded_under_a_spray_of_ids() -> None:
    t = LoginThrottle(limit=3, window=60.0, max_keys=100)
    for i in range(1000):
        t.failed((f"agent:{i}",), float(i) / 100)
    assert len(t._failures) <= 100
