"""Binding rules of RFC 3261 §10.3 and RFC 5626 §6, with time stepped by hand."""

from __future__ import annotations

import pytest

from ucgate.registrar.rules import (
    WILDCARD,
    RegisterContext,
    RegisterRejected,
    RegistrarPolicy,
    apply_register,
    contact_header_values,
    parse_contacts,
)
from ucgate.sip.errors import RemoteProtocolError
from ucgate.sip.message import Headers, Request

POLICY = RegistrarPolicy(min_expires=60, max_expires=3600, default_expires=1800, max_contacts=3)
AOR = "sip:alice@example.test"


def register(*contacts: str, expires: str | None = None) -> Request:
    headers = Headers(
        [
            ("Via", "SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK1"),
            ("From", f"<{AOR}>;tag=1"),
            ("To", f"<{AOR}>"),
            ("Call-ID", "c1"),
            ("CSeq", "1 REGISTER"),
        ]
    )
    for c in contacts:
        headers.add("Contact", c)
    if expires is not None:
        headers.add("Expires", expires)
    return Request("REGISTER", "sip:example.test", headers)


def ctx(call_id: str = "c1", cseq: int = 1, source: str = "udp:127.0.0.1:5062") -> RegisterContext:
    return RegisterContext(
        aor=AOR,
        call_id=call_id,
        cseq=cseq,
        source=source,
        flow=None,
        node_id="n1",
        user_agent="test",
        path=(),
    )


def test_add_uses_contact_param_then_header_then_default() -> None:
    req = register(
        "<sip:alice@10.0.0.1:5062>;expires=120",
        "<sip:alice@10.0.0.2:5062>",
        expires="300",
    )
    contacts = parse_contacts(req, POLICY)
    assert not isinstance(contacts, str)
    assert [c.expires for c in contacts] == [120, 300]
    only_default = parse_contacts(register("<sip:alice@10.0.0.3>"), POLICY)
    assert not isinstance(only_default, str)
    assert only_default[0].expires == 1800


def test_too_brief_is_423_with_min_expires_and_long_is_clamped() -> None:
    with pytest.raises(RegisterRejected) as err:
        parse_contacts(register("<sip:alice@10.0.0.1>", expires="30"), POLICY)
    assert err.value.status == 423
    assert ("Min-Expires", "60") in err.value.headers
    contacts = parse_contacts(register("<sip:alice@10.0.0.1>", expires="999999"), POLICY)
    assert not isinstance(contacts, str)
    assert contacts[0].expires == 3600


def test_refresh_keeps_one_binding_and_moves_expiry() -> None:
    contacts = parse_contacts(register("<sip:alice@10.0.0.1:5062>", expires="300"), POLICY)
    first = apply_register([], contacts, ctx(cseq=1), POLICY, now=1000.0)
    assert len(first) == 1 and first[0].expires_at == 1300.0
    again = apply_register(first, contacts, ctx(cseq=2), POLICY, now=1200.0)
    assert len(again) == 1 and again[0].expires_at == 1500.0
    assert again[0].registered_at == 1000.0  # first registration time survives refreshes


def test_uri_comparison_not_string_comparison_decides_identity() -> None:
    a = parse_contacts(register("<sip:alice@HOST.example:5062;transport=udp>"), POLICY)
    b = parse_contacts(register("<sip:alice@host.example:5062;Transport=UDP>"), POLICY)
    one = apply_register([], a, ctx(cseq=1), POLICY, now=0.0)
    two = apply_register(one, b, ctx(cseq=2), POLICY, now=1.0)
    assert len(two) == 1


def test_out_of_order_cseq_with_same_call_id_is_refused() -> None:
    contacts = parse_contacts(register("<sip:alice@10.0.0.1>"), POLICY)
    current = apply_register([], contacts, ctx(cseq=5), POLICY, now=0.0)
    with pytest.raises(RegisterRejected) as err:
        apply_register(current, contacts, ctx(cseq=5), POLICY, now=1.0)
    assert err.value.status == 500
    # A different Call-ID (the phone rebooted) may use any CSeq.
    assert len(apply_register(current, contacts, ctx(call_id="c2", cseq=1), POLICY, now=1.0)) == 1


def test_expires_zero_removes_only_that_contact() -> None:
    both = parse_contacts(register("<sip:alice@10.0.0.1>", "<sip:alice@10.0.0.2>"), POLICY)
    current = apply_register([], both, ctx(cseq=1), POLICY, now=0.0)
    remove = parse_contacts(register("<sip:alice@10.0.0.1>;expires=0"), POLICY)
    left = apply_register(current, remove, ctx(cseq=2), POLICY, now=1.0)
    assert [b.contact for b in left] == ["sip:alice@10.0.0.2"]


def test_wildcard_needs_expires_zero_and_removes_all() -> None:
    with pytest.raises(RemoteProtocolError) as err:
        parse_contacts(register("*"), POLICY)
    assert err.value.status == 400
    with pytest.raises(RemoteProtocolError):
        parse_contacts(register("*", "<sip:alice@10.0.0.1>", expires="0"), POLICY)
    star = parse_contacts(register("*", expires="0"), POLICY)
    assert star == WILDCARD
    both = parse_contacts(register("<sip:alice@10.0.0.1>", "<sip:alice@10.0.0.2>"), POLICY)
    current = apply_register([], both, ctx(cseq=1), POLICY, now=0.0)
    assert apply_register(current, star, ctx(cseq=2), POLICY, now=1.0) == []
    with pytest.raises(RegisterRejected):
        apply_register(current, star, ctx(cseq=1), POLICY, now=1.0)


def test_instance_id_replaces_the_old_contact_of_the_same_device() -> None:
    inst = '"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'
    old = parse_contacts(
        register(f"<sip:alice@10.0.0.1:5062>;+sip.instance={inst};reg-id=1"), POLICY
    )
    current = apply_register([], old, ctx(cseq=1), POLICY, now=0.0)
    new = parse_contacts(
        register(f"<sip:alice@10.0.0.1:6000>;+sip.instance={inst};reg-id=1"), POLICY
    )
    after = apply_register(current, new, ctx(call_id="c2", cseq=1), POLICY, now=5.0)
    assert [b.contact for b in after] == ["sip:alice@10.0.0.1:6000"]
    assert after[0].instance_id == "<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"


def test_max_contacts_and_q_ordering() -> None:
    cs = parse_contacts(
        register("<sip:a@10.0.0.1>;q=0.1", "<sip:a@10.0.0.2>;q=0.9", "<sip:a@10.0.0.3>"), POLICY
    )
    current = apply_register([], cs, ctx(cseq=1), POLICY, now=0.0)
    assert [b.q for b in current] == [1.0, 0.9, 0.1]
    more = parse_contacts(register("<sip:a@10.0.0.4>"), POLICY)
    with pytest.raises(RegisterRejected) as err:
        apply_register(current, more, ctx(cseq=2), POLICY, now=1.0)
    assert err.value.status == 403


def test_bad_q_and_bad_expires_are_400() -> None:
    for bad in ("<sip:a@10.0.0.1>;q=2", "<sip:a@10.0.0.1>;q=x", "<sip:a@10.0.0.1>;expires=-1"):
        with pytest.raises(RemoteProtocolError) as err:
            parse_contacts(register(bad), POLICY)
        assert err.value.status == 400


def test_200_contact_values_carry_remaining_expiry() -> None:
    cs = parse_contacts(register("<sip:alice@10.0.0.1>;q=0.5", expires="300"), POLICY)
    current = apply_register([], cs, ctx(cseq=1), POLICY, now=100.0)
    assert contact_header_values(current, now=250.0) == ["<sip:alice@10.0.0.1>;expires=150;q=0.5"]
