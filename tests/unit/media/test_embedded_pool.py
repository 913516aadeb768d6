"""The worker pool's bookkeeping: placement, capacity (503), loss, restart, liveness."""

from __future__ import annotations

import math

import pytest

from ucgate.media.anchor import MediaError, MediaKey
from ucgate.media.embedded.pool import (
    MAX_CALLS_PER_WORKER,
    PingDue,
    Placement,
    PoolBook,
    WorkerUnresponsive,
)


def key(n: int) -> MediaKey:
    return MediaKey(f"call-{n}", "z9hG4bK")


def ready_pool(workers: int, per_worker: int, now: float = 0.0) -> PoolBook:
    book = PoolBook(max_workers=workers, calls_per_worker=per_worker)
    for _ in range(workers):
        book.worker_ready(book.new_worker(), now)
    return book


def test_first_call_spawns_a_worker_then_fills_it() -> None:
    book = PoolBook(max_workers=2, calls_per_worker=2)
    assert book.place(key(1)) == Placement(1, spawn=True)
    assert book.place(key(2)) == Placement(1, spawn=False)
    assert book.place(key(3)) == Placement(2, spawn=True)
    assert book.place(key(4)) == Placement(2, spawn=False)
    with pytest.raises(MediaError) as full:
        book.place(key(5))
    assert full.value.status == 503
    assert book.stats()["sessions"] == 4
    assert book.stats()["capacity"] == 4


def test_same_key_stays_on_its_worker() -> None:
    book = ready_pool(2, 2)
    first = book.place(key(1))
    assert book.place(key(1)) == first  # a re-offer does not take a second slot
    assert book.stats()["sessions"] == 1


def test_least_loaded_worker_is_chosen() -> None:
    book = ready_pool(3, 4)
    placed = [book.place(key(n)).worker for n in range(6)]
    assert placed == [1, 2, 3, 1, 2, 3]


def test_release_frees_a_slot() -> None:
    book = ready_pool(1, 1)
    book.place(key(1))
    with pytest.raises(MediaError):
        book.place(key(2))
    assert book.release(key(1)) == 1
    assert book.release(key(1)) is None  # idempotent
    assert book.place(key(2)).worker == 1


def test_lost_worker_reports_only_its_keys() -> None:
    book = ready_pool(2, 2)
    on = {n: book.place(key(n)).worker for n in range(4)}
    assert on == {0: 1, 1: 2, 2: 1, 3: 2}
    assert book.worker_lost(1) == [key(0), key(2)]
    assert book.worker_of(key(0)) is None
    assert book.worker_of(key(1)) == 2 and book.worker_of(key(3)) == 2
    assert book.worker_lost(1) == []  # reported once
    assert book.stats()["workers_lost"] == 1


def test_replacement_after_loss() -> None:
    book = ready_pool(1, 1)
    book.place(key(1))
    book.worker_lost(1)
    # The slot count is back; a new call gets a new worker with a new id.
    placement = book.place(key(2))
    assert placement == Placement(2, spawn=True)
    assert book.stats()["workers_spawned"] == 2


def test_new_worker_beyond_max_is_503() -> None:
    book = PoolBook(max_workers=1)
    book.new_worker()
    with pytest.raises(MediaError) as exc:
        book.new_worker()
    assert exc.value.status == 503


@pytest.mark.parametrize("per_worker", [0, MAX_CALLS_PER_WORKER + 1])
def test_calls_per_worker_is_bounded(per_worker: int) -> None:
    with pytest.raises(ValueError):
        PoolBook(calls_per_worker=per_worker)


def test_ping_cycle_and_unresponsive_worker() -> None:
    book = PoolBook(max_workers=2, ping_interval=2.0, ping_timeout=5.0)
    a, b = book.new_worker(), book.new_worker()
    assert book.next_deadline() == math.inf  # nothing to ping before "ready"
    book.worker_ready(a, 0.0)
    book.worker_ready(b, 1.0)
    assert book.next_deadline() == 2.0
    assert book.handle_timer(1.9) == []
    assert book.handle_timer(2.0) == [PingDue(a)]
    book.ping_sent(a, 2.0)
    assert book.next_deadline() == 3.0  # b's ping
    assert book.handle_timer(3.0) == [PingDue(b)]
    book.ping_sent(b, 3.0)
    book.pong(b, 3.1)
    assert book.next_deadline() == 5.1  # b's next ping
    assert book.handle_timer(5.1) == [PingDue(b)]
    book.ping_sent(b, 5.1)
    # a never answered: unresponsive once ping_timeout has passed since the ping.
    assert book.next_deadline() == 7.0
    assert book.handle_timer(6.9) == []
    assert book.handle_timer(7.0) == [WorkerUnresponsive(a)]
    book.worker_lost(a)
    assert book.next_deadline() == 10.1
