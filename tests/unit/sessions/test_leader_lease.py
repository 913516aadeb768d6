"""The routing lease's bookkeeping with the clock stepped by hand: acquisition, renewal,
expiry, loss, resignation; and a model check that two nodes never believe they lead at
once, whatever the request delays."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ucgate.sessions.leader import Demoted, Lease, LeaseAction, LeaseEvent, Promoted

TTL = 3.0  # renew every 1.0, retry every 0.5, margin 0.3


def events(lease: Lease) -> list[LeaseEvent]:
    out = []
    while (e := lease.next_event()) is not None:
        out.append(e)
    return out


def acquire(lease: Lease, at: float, token: str = "n1:1", rtt: float = 0.0) -> None:
    assert lease.due(at) is LeaseAction.ACQUIRE
    lease.acquired(token, at, at + rtt)


def test_standby_asks_at_once_and_leads_until_ttl_minus_margin_from_the_send() -> None:
    lease = Lease(TTL)
    assert not lease.leading(0.0)
    acquire(lease, 10.0, rtt=0.2)
    assert events(lease) == [Promoted("n1:1", 10.2)]
    assert lease.token == "n1:1"
    # The belief is measured from when the request left, not when the answer came.
    assert lease.leading(12.69) and not lease.leading(12.7)
    assert lease.next_deadline() == pytest.approx(11.0)  # renew after a third of the TTL
    assert lease.due(10.9) is None


def test_renewals_keep_the_lead() -> None:
    lease = Lease(TTL)
    acquire(lease, 0.0)
    events(lease)
    now = 0.0
    for _ in range(10):
        now = lease.next_deadline()
        assert lease.due(now) is LeaseAction.RENEW
        assert lease.due(now) is None  # one request in flight at a time
        lease.renewed(True, now, now + 0.05)
        assert lease.leading(now + TTL - 0.31)
    assert now == pytest.approx(10.0)
    assert events(lease) == []


def test_renewals_unanswered_demote_when_the_belief_runs_out() -> None:
    lease = Lease(TTL)
    acquire(lease, 0.0)
    events(lease)
    now = 1.0
    while lease.leading(now):
        action = lease.due(now)
        if action is not None:
            assert action is LeaseAction.RENEW
            lease.failed(now, now + 0.1)  # Redis did not answer
        now = lease.next_deadline()
    # Last successful start of the lease: 0.0 → the belief ends at 3.0 - 0.3.
    assert now == pytest.approx(2.7)
    lease.due(now)
    assert events(lease) == [Demoted("n1:1", 2.7, "lease expired before it was renewed")]
    assert lease.token is None
    # Back to standby: it asks for the lease again (another node may have it by now).
    assert lease.due(lease.next_deadline()) is LeaseAction.ACQUIRE


def test_renewal_refused_means_the_lease_is_lost_at_once() -> None:
    lease = Lease(TTL)
    acquire(lease, 0.0)
    events(lease)
    assert lease.due(1.0) is LeaseAction.RENEW
    lease.renewed(False, 1.0, 1.01)  # the key holds someone else's token (or nothing)
    assert not lease.leading(1.01)
    assert events(lease) == [Demoted("n1:1", 1.01, "lease lost")]


def test_refused_acquisition_retries_every_sixth_of_the_ttl() -> None:
    lease = Lease(TTL)
    sent = []
    now = 0.0
    while now < 2.0:
        if lease.due(now) is LeaseAction.ACQUIRE:
            sent.append(now)
            lease.acquired(None, now, now)
        now = lease.next_deadline()
    assert sent == pytest.approx([0.0, 0.5, 1.0, 1.5])
    assert events(lease) == []


def test_resign_demotes_and_stops_asking() -> None:
    lease = Lease(TTL)
    acquire(lease, 0.0)
    events(lease)
    assert lease.resign(0.5) == "n1:1"
    assert events(lease) == [Demoted("n1:1", 0.5, "resigned")]
    assert lease.due(1000.0) is None
    assert Lease(TTL).resign(0.0) is None


def test_a_reply_nobody_asked_for_is_a_bug() -> None:
    lease = Lease(TTL)
    with pytest.raises(RuntimeError):
        lease.acquired("n1:1", 0.0, 0.0)
    assert lease.due(0.0) is LeaseAction.ACQUIRE
    with pytest.raises(RuntimeError):
        lease.renewed(True, 0.0, 0.0)


def test_settings_must_leave_time_to_renew() -> None:
    with pytest.raises(ValueError):
        Lease(3.0, renew_every=2.8)
    with pytest.raises(ValueError):
        Lease(3.0, retry_every=0.0)


@settings(max_examples=200, deadline=None)
@given(
    delays=st.lists(st.floats(0.0, 4.0), min_size=40, max_size=40),
    outages=st.lists(
        st.tuples(st.sampled_from("ab"), st.floats(0.0, 30.0), st.floats(0.0, 5.0)), max_size=3
    ),
)
def test_two_nodes_never_lead_at_once(
    delays: list[float], outages: list[tuple[str, float, float]]
) -> None:
    """Two leases against a model of the Redis key (SET NX PX at the moment the request
    *arrives*, PEXPIRE only by the holder), each node's requests delayed (up to longer than
    the TTL) or cut off at random: at no instant do both nodes believe they lead."""
    key: tuple[str, float] | None = None  # (token, expires_at)
    epoch = 0
    leases = {"a": Lease(TTL), "b": Lease(TTL)}
    delay_iter = iter(delays * 20)

    def down(node: str, t: float) -> bool:
        return any(n == node and start <= t < start + length for n, start, length in outages)

    # (arrival, reply_at, node, action, sent_at)
    flying: list[tuple[float, float, str, LeaseAction, float]] = []
    now = 0.0
    checks = 0
    while now < 40.0:
        for name, lease in leases.items():
            action = lease.due(now)
            if action is not None:
                d = next(delay_iter, 0.1)
                flying.append((now + d / 2, now + d, name, action, now))
        # Deliver, in arrival order, what has arrived by now.
        flying.sort()
        still = []
        for arrival, reply_at, name, action, sent_at in flying:
            if reply_at > now:
                still.append((arrival, reply_at, name, action, sent_at))
                continue
            lease = leases[name]
            if down(name, arrival):
                lease.failed(sent_at, reply_at)
                continue
            if key is not None and key[1] <= arrival:
                key = None
            if action is LeaseAction.ACQUIRE:
                if key is None:
                    epoch += 1
                    key = (f"{name}:{epoch}", arrival + TTL)
                    lease.acquired(key[0], sent_at, reply_at)
                else:
                    lease.acquired(None, sent_at, reply_at)
            else:
                ok = key is not None and key[0] == lease.token
                if ok:
                    assert key is not None
                    key = (key[0], arrival + TTL)
                lease.renewed(ok, sent_at, reply_at)
        flying = still
        for lease in leases.values():
            events(lease)
        assert not (leases["a"].leading(now) and leases["b"].leading(now)), now
        checks += 1
        now = round(now + 0.05, 6)
    assert checks > 0


def test_abandon_demotes_but_stays_a_standby() -> None:
    lease = Lease(TTL)
    acquire(lease, 0.0)
    events(lease)
    assert lease.abandon(0.2, "rebuild failed") == "n1:1"
    assert events(lease) == [Demoted("n1:1", 0.2, "rebuild failed")]
    assert lease.due(lease.next_deadline()) is LeaseAction.ACQUIRE
    assert lease.next_deadline() == pytest.approx(0.7)
