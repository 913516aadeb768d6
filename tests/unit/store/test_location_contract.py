"""The LocationStore contract, run against every backend.

"Two nodes" are two store objects over the same data: two Redis clients for the Redis
backend; the same object twice for the embedded backend, which serves a single node.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ucgate.store import (
    Binding,
    LocationStore,
    MemoryLocationStore,
    RedisLocationStore,
    StoreBackend,
    open_location_store,
)

T0 = 1_700_000_000.0
AOR = "sip:alice@example.test"

BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
]


def mk(
    contact: str = "sip:alice@192.0.2.1:5060",
    *,
    aor: str = AOR,
    expires_at: float = T0 + 3600,
    q: float = 1.0,
    cseq: int = 1,
    registered_at: float = T0,
    node_id: str = "n1",
) -> Binding:
    return Binding(
        aor=aor,
        contact=contact,
        expires_at=expires_at,
        call_id="c1@192.0.2.1",
        cseq=cseq,
        source="udp:192.0.2.1:5060",
        node_id=node_id,
        registered_at=registered_at,
        q=q,
    )


def put(*new: Binding) -> Callable[[list[Binding]], list[Binding]]:
    """What a registrar does for a REGISTER adding or refreshing contacts."""
    contacts = {b.contact for b in new}

    def fn(live: list[Binding]) -> list[Binding]:
        return [b for b in live if b.contact not in contacts] + list(new)

    return fn


def remove(*contacts: str) -> Callable[[list[Binding]], list[Binding]]:
    return lambda live: [b for b in live if b.contact not in contacts]


async def open_nodes(url: str | None, **redis_options: Any) -> tuple[LocationStore, LocationStore]:
    if url is None:
        store = MemoryLocationStore(node_id="n1")
        return store, store
    a = await RedisLocationStore.connect(url, node_id="n1", **redis_options)
    b = await RedisLocationStore.connect(url, node_id="n2", **redis_options)
    return a, b


@pytest.fixture(params=BACKENDS)
def backend_url(request: pytest.FixtureRequest) -> str | None:
    """None for the embedded backend, a clean Redis database's URL for the Redis one."""
    if request.param == "memory":
        return None
    url: str = request.getfixturevalue("redis_url")
    return url


@pytest.fixture
async def nodes(backend_url: str | None) -> AsyncIterator[tuple[LocationStore, LocationStore]]:
    # A small sweep batch makes the Redis sweep take several Lua calls in these tests.
    a, b = await open_nodes(backend_url, sweep_batch=8) if backend_url else await open_nodes(None)
    yield a, b
    await a.close()
    if b is not a:
        await b.close()


@pytest.fixture
def store(nodes: tuple[LocationStore, LocationStore]) -> LocationStore:
    return nodes[0]


async def test_add_refresh_remove(store: LocationStore) -> None:
    assert await store.lookup(AOR, T0) == []

    first = mk()
    assert await store.update(AOR, put(first), T0) == [first]
    assert await store.lookup(AOR, T0 + 1) == [first]

    refreshed = mk(expires_at=T0 + 7200, cseq=2, registered_at=T0 + 10)
    assert await store.update(AOR, put(refreshed), T0 + 10) == [refreshed]
    assert await store.lookup(AOR, T0 + 11) == [refreshed]
    assert await store.count() == 1

    assert await store.update(AOR, remove(first.contact), T0 + 20) == []
    assert await store.lookup(AOR, T0 + 21) == []
    assert await store.count() == 0
    assert await store.aors() == []
    assert await store.next_expiry() is None


async def test_contacts_come_highest_q_first(store: LocationStore) -> None:
    low = mk("sip:a@192.0.2.1", q=0.1)
    high = mk("sip:b@192.0.2.2", q=0.9)
    mid_old = mk("sip:c@192.0.2.3", q=0.5, registered_at=T0)
    mid_new = mk("sip:d@192.0.2.4", q=0.5, registered_at=T0 + 5)
    stored = await store.update(AOR, put(low, mid_old, high, mid_new), T0 + 5)
    assert stored == [high, mid_new, mid_old, low]
    assert await store.lookup(AOR, T0 + 6) == [high, mid_new, mid_old, low]
    seen: list[list[Binding]] = []

    def spy(live: list[Binding]) -> list[Binding]:
        seen.append(live)
        return live

    await store.update(AOR, spy, T0 + 7)
    assert seen[-1] == [high, mid_new, mid_old, low]


async def test_binding_dies_at_its_expiry_time(store: LocationStore) -> None:
    short = mk("sip:short@192.0.2.1", expires_at=T0 + 60)
    long = mk("sip:long@192.0.2.2", expires_at=T0 + 3600)
    await store.update(AOR, put(short, long), T0)

    # Same q, same registration time: ordered by contact text.
    assert await store.lookup(AOR, T0 + 59.999) == [long, short]
    # expires_at is the first instant the binding is gone (live means expires_at > now).
    assert await store.lookup(AOR, T0 + 60) == [long]
    assert [b.remaining(T0 + 59.5) for b in (short, long)] == [1, 3541]

    seen: list[list[Binding]] = []

    def spy(live: list[Binding]) -> list[Binding]:
        seen.append(live)
        return live

    await store.update(AOR, spy, T0 + 60)
    assert seen == [[long]]


async def test_expire_returns_each_removed_binding_once(store: LocationStore) -> None:
    a1 = mk("sip:a1@192.0.2.1", expires_at=T0 + 10)
    a2 = mk("sip:a2@192.0.2.1", expires_at=T0 + 30)
    b1 = mk("sip:b1@192.0.2.2", aor="sip:bob@example.test", expires_at=T0 + 10)
    await store.update(AOR, put(a1, a2), T0)
    await store.update(b1.aor, put(b1), T0)

    assert await store.expire(T0 + 9) == []
    gone = await store.expire(T0 + 10)
    assert sorted(gone, key=lambda b: b.contact) == [a1, b1]
    assert await store.expire(T0 + 10) == []
    assert await store.expire(T0 + 20) == []
    assert await store.count() == 1
    assert await store.aors() == [AOR]
    assert await store.lookup(AOR, T0 + 20) == [a2]


async def test_concurrent_sweeps_report_each_binding_once(
    nodes: tuple[LocationStore, LocationStore],
) -> None:
    a, b = nodes
    expected = []
    for i in range(20):
        aor = f"sip:user{i}@example.test"
        batch = [mk(f"sip:u{i}d{d}@192.0.2.9", aor=aor, expires_at=T0 + i + 1) for d in range(3)]
        await a.update(aor, put(*batch), T0)
        expected.extend(batch)

    swept = await asyncio.gather(a.expire(T0 + 100), b.expire(T0 + 100), a.expire(T0 + 100))
    every = [binding for part in swept for binding in part]
    assert len(every) == len(expected)
    assert set(every) == set(expected)
    assert await a.count() == 0
    assert await b.next_expiry() is None


async def test_concurrent_updates_from_two_nodes_lose_nothing(
    nodes: tuple[LocationStore, LocationStore],
) -> None:
    a, b = nodes
    jobs = []
    for i in range(40):
        for n, node in enumerate((a, b)):
            contact = f"sip:dev{i}-{n}@192.0.2.7"
            jobs.append(node.update(AOR, put(mk(contact, node_id=node.node_id)), T0))
    await asyncio.gather(*jobs)

    stored = await b.lookup(AOR, T0)
    assert len(stored) == len(jobs)
    assert await a.count() == len(jobs)


async def test_concurrent_read_modify_writes_from_two_nodes_serialise(
    nodes: tuple[LocationStore, LocationStore],
) -> None:
    # Each update derives its result from what it read (as the registrar's CSeq check does,
    # RFC 3261 §10.3 step 7): a lost update would leave the counter short.
    a, b = nodes
    await a.update(AOR, put(mk(cseq=0)), T0)

    def bump(live: list[Binding]) -> list[Binding]:
        (only,) = live
        return [mk(cseq=only.cseq + 1)]

    await asyncio.gather(*(node.update(AOR, bump, T0) for _ in range(30) for node in (a, b)))
    (final,) = await a.lookup(AOR, T0)
    assert final.cseq == 60


async def test_failing_update_function_changes_nothing(store: LocationStore) -> None:
    existing = mk()
    await store.update(AOR, put(existing), T0)

    class Boom(Exception):
        pass

    def fail(live: list[Binding]) -> list[Binding]:
        raise Boom("registrar refused")

    with pytest.raises(Boom, match="registrar refused"):
        await store.update(AOR, fail, T0 + 1)
    with pytest.raises(Boom):
        await store.update("sip:nobody@example.test", fail, T0 + 1)

    assert await store.lookup(AOR, T0 + 2) == [existing]
    assert await store.aors() == [AOR]
    assert await store.count() == 1


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param([mk(aor="sip:mallory@example.test")], id="other-aor"),
        pytest.param([mk(), mk(q=0.5)], id="duplicate-contact"),
        pytest.param([mk(expires_at=T0 + 1)], id="already-expired"),
        pytest.param([mk(q=1.5)], id="q-out-of-range"),
    ],
)
async def test_invalid_update_results_are_refused(store: LocationStore, bad: list[Binding]) -> None:
    existing = mk("sip:keep@192.0.2.3")
    await store.update(AOR, put(existing), T0)
    with pytest.raises(ValueError):
        await store.update(AOR, lambda live: bad, T0 + 1)
    assert await store.lookup(AOR, T0 + 1) == [existing]
    assert await store.count() == 1


async def test_count_and_aors(store: LocationStore) -> None:
    for i, aor in enumerate(["sip:c@example.test", "sip:a@example.test", "sip:b@example.test"]):
        await store.update(aor, put(*(mk(f"sip:{d}@192.0.2.1", aor=aor) for d in range(i + 1))), T0)
    assert await store.count() == 6
    assert await store.aors() == ["sip:a@example.test", "sip:b@example.test", "sip:c@example.test"]


async def test_next_expiry_follows_refreshes_and_removals(store: LocationStore) -> None:
    assert await store.next_expiry() is None
    a = mk("sip:a@192.0.2.1", expires_at=T0 + 10)
    b = mk("sip:b@192.0.2.2", expires_at=T0 + 20)
    c = mk("sip:c@192.0.2.3", aor="sip:carol@example.test", expires_at=T0 + 30)
    await store.update(AOR, put(a, b), T0)
    await store.update(c.aor, put(c), T0)
    assert await store.next_expiry() == T0 + 10

    await store.update(AOR, put(mk(a.contact, expires_at=T0 + 40)), T0 + 1)
    assert await store.next_expiry() == T0 + 20

    await store.update(AOR, remove(b.contact), T0 + 2)
    assert await store.next_expiry() == T0 + 30

    assert await store.expire(T0 + 30) == [c]
    assert await store.next_expiry() == T0 + 40


async def test_expired_binding_waits_for_expire_even_after_an_update(
    store: LocationStore,
) -> None:
    old = mk("sip:old@192.0.2.1", expires_at=T0 + 10)
    await store.update(AOR, put(old), T0)
    new = mk("sip:new@192.0.2.2", expires_at=T0 + 100, registered_at=T0 + 20)
    # The registrar does not see the dead binding, yet it is still reported as gone once.
    assert await store.update(AOR, put(new), T0 + 20) == [new]
    assert await store.update(AOR, remove(new.contact), T0 + 21) == []
    assert await store.count() == 1
    assert await store.expire(T0 + 21) == [old]
    assert await store.count() == 0
    assert await store.aors() == []


async def test_reregistering_an_expired_contact_replaces_it(store: LocationStore) -> None:
    old = mk(expires_at=T0 + 10)
    await store.update(AOR, put(old), T0)
    again = mk(expires_at=T0 + 100, cseq=2, registered_at=T0 + 20)
    assert await store.update(AOR, put(again), T0 + 20) == [again]
    assert await store.count() == 1
    assert await store.expire(T0 + 50) == []
    assert await store.next_expiry() == T0 + 100


async def test_factory_opens_each_backend(backend_url: str | None) -> None:
    kind = StoreBackend.REDIS if backend_url else StoreBackend.MEMORY
    store = await open_location_store(kind.value, redis_url=backend_url, node_id="n9", now=T0)
    try:
        assert store.node_id == "n9"
        await store.update(AOR, put(mk()), T0)
        assert await store.lookup(AOR, T0) == [mk()]
        await store.flush()
    finally:
        await store.close()


def test_factory_refuses_redis_without_url() -> None:
    with pytest.raises(ValueError, match="redis_url"):
        asyncio.run(open_location_store("redis", node_id="n1"))
    assert StoreBackend("embedded") is StoreBackend.MEMORY


# --- Binding serialisation -------------------------------------------------------------------

_text = st.text(st.characters(codec="utf-8"), max_size=20)
_opt_text = st.none() | _text
_time = st.floats(min_value=0, max_value=4e9, allow_nan=False)

bindings = st.builds(
    Binding,
    aor=_text,
    contact=_text,
    expires_at=_time,
    call_id=_text,
    cseq=st.integers(0, 2**31 - 1),
    source=_text,
    node_id=_text,
    registered_at=_time,
    q=st.floats(0, 1),
    flow=_opt_text,
    instance_id=_opt_text,
    reg_id=st.none() | st.integers(1, 2**31 - 1),
    user_agent=_opt_text,
    path=st.lists(_text, max_size=3).map(tuple),
)


@given(bindings)
def test_binding_json_round_trips(binding: Binding) -> None:
    assert Binding.from_json(binding.to_json()) == binding
    assert Binding.from_json(binding.to_json().encode()) == binding


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        '{"a":"x"}',
        '{"a":1,"c":"x","e":1,"ci":"i","cs":1,"s":"s","n":"n","t":1}',
        '{"a":"x","c":"x","e":1,"ci":"i","cs":true,"s":"s","n":"n","t":1}',
    ],
)
def test_binding_json_refuses_foreign_data(text: str) -> None:
    with pytest.raises(ValueError):
        Binding.from_json(text)


def test_typical_binding_serialises_small() -> None:
    typical = Binding(
        aor="sip:agent-1042@cc.example.com",
        contact="sip:agent-1042@203.0.113.45:52114;transport=tcp;ob",
        expires_at=1_718_000_000.123456,
        call_id="a84b4c76e66710@pc33.example.com",
        cseq=314159,
        source="tcp:203.0.113.45:52114",
        node_id="ucgate-a",
        registered_at=1_717_996_400.123456,
        flow="tcp-7",
        instance_id='"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"',
        reg_id=1,
        user_agent="Yealink SIP-T54W 96.86.0.70",
    )
    assert len(typical.to_json().encode()) <= 400
    assert Binding.from_json(typical.to_json()) == typical


# --- Model-based: random operation sequences against a plain-dict model ----------------------

_AORS = ["sip:x@example.test", "sip:y@example.test"]
_CONTACTS = ["sip:1@192.0.2.1", "sip:2@192.0.2.2", "sip:3@192.0.2.3"]

operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("put"),
            st.sampled_from(_AORS),
            st.sampled_from(_CONTACTS),
            st.integers(1, 20),
            st.sampled_from([0.1, 0.5, 1.0]),
        ),
        st.tuples(st.just("remove"), st.sampled_from(_AORS), st.sampled_from(_CONTACTS)),
        st.tuples(st.just("advance"), st.integers(0, 10)),
        st.tuples(st.just("expire")),
    ),
    max_size=30,
)


@pytest.fixture
def flush_redis(backend_url: str | None) -> Iterator[Callable[[], None]]:
    def flush() -> None:
        if backend_url is not None:
            with redis.Redis.from_url(backend_url, socket_timeout=5) as client:
                client.flushdb()

    yield flush


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=operations)
def test_store_matches_model(
    backend_url: str | None, flush_redis: Callable[[], None], ops: list[tuple[Any, ...]]
) -> None:
    flush_redis()
    asyncio.run(_run_against_model(backend_url, ops))


async def _run_against_model(url: str | None, ops: list[tuple[Any, ...]]) -> None:
    a, b = await open_nodes(url, sweep_batch=2) if url else await open_nodes(None)
    try:
        model: dict[tuple[str, str], Binding] = {}
        now = T0
        for step, op in enumerate(ops):
            node = (a, b)[step % 2]
            if op[0] == "put":
                _, aor, contact, ttl, q = op
                new = mk(contact, aor=aor, expires_at=now + ttl, q=q, registered_at=now)
                await node.update(aor, put(new), now)
                model[aor, contact] = new
            elif op[0] == "remove":
                _, aor, contact = op
                await node.update(aor, remove(contact), now)
                if (aor, contact) in model and model[aor, contact].expires_at > now:
                    del model[aor, contact]
            elif op[0] == "advance":
                now += op[1]
            else:
                due = {k for k, v in model.items() if v.expires_at <= now}
                gone = await node.expire(now)
                assert {(g.aor, g.contact) for g in gone} == due
                assert len(gone) == len(due)
                for key in due:
                    del model[key]

            for aor in _AORS:
                live = [v for (m_aor, _), v in model.items() if m_aor == aor and v.expires_at > now]
                assert await node.lookup(aor, now) == sorted(
                    live, key=lambda v: (-v.q, -v.registered_at, v.contact)
                )
            assert await node.count() == len(model)
            assert await node.aors() == sorted({aor for aor, _ in model})
            expected_next = min((v.expires_at for v in model.values()), default=None)
            assert await node.next_expiry() == expected_next
    finally:
        await a.close()
        if b is not a:
            await b.close()
