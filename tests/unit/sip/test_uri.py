"""RFC 3261 §19.1 URI parsing, serialisation and §19.1.4 comparison."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ucgate.sip.errors import RemoteProtocolError
from ucgate.sip.uri import AbsoluteUri, SipUri, parse_uri, uri_equal


def sip(text: str) -> SipUri:
    uri = parse_uri(text)
    assert isinstance(uri, SipUri)
    return uri


def test_full_sip_uri() -> None:
    uri = sip(
        "SIPS:Alice:secret@Atlanta.COM:5061;Transport=TCP;lr;maddr=239.255.255.1?Subject=x&h="
    )
    assert uri.scheme == "sips"
    assert (uri.user, uri.password, uri.host, uri.port) == ("Alice", "secret", "atlanta.com", 5061)
    assert uri.params == (("transport", "TCP"), ("lr", None), ("maddr", "239.255.255.1"))
    assert uri.transport == "tcp"
    assert uri.has_param("lr") and uri.param("lr") is None
    assert uri.headers == (("Subject", "x"), ("h", ""))
    assert uri.aor() == "sips:Alice@atlanta.com"


def test_ipv6_and_no_user() -> None:
    uri = sip("sip:[2001:DB8::1]:5070;transport=udp")
    assert (uri.user, uri.host, uri.port) == (None, "[2001:db8::1]", 5070)
    assert uri.aor() == "sip:[2001:db8::1]"
    assert str(uri) == "sip:[2001:db8::1]:5070;transport=udp"


def test_escapes_are_decoded_and_reencoded() -> None:
    uri = sip("sip:I%20have%20spaces@example.net")
    assert uri.user == "I have spaces"
    assert str(uri) == "sip:I%20have%20spaces@example.net"
    assert sip("sip:%75se%72@example.com").user == "user"
    assert sip("sip:null-%00-null@example.com").user == "null-\x00-null"


def test_absolute_uris() -> None:
    assert parse_uri("tel:+1-201-555-0123") == AbsoluteUri("tel", "+1-201-555-0123")
    assert parse_uri("URN:service:sos") == AbsoluteUri("urn", "service:sos")
    assert str(parse_uri("urn:service:sos")) == "urn:service:sos"


@pytest.mark.parametrize(
    "text",
    [
        "", "sip:", "sip:user@", "sip:@example.com", "sip:user@exa mple.com", " sip:a@b",
        "sip:a@b:99999", "sip:a@b:5x", "sip:a@b;;lr", "sip:a@b;=x", "sip:a@b;x=",
        "sip:a%2@b", "sip:a%zz@b", "sip:a@[::1", "sip:a@[zz::1]", "sip:a@256.1.1.1x!",
        "sip:a@-bad-.com", "<sip:a@b>", "sip:a@b?x", "sip:a@b\x00", "sip:é@b", "1sip:a",
        "sip:a@b:", "sip:a@[::1]x", "mailto:<x>",
    ],
)
def test_bad_syntax_is_400(text: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_uri(text)
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
        ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
        ("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;newparam=5"),
        ("sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
         "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com"),
        ("sip:alice@atlanta.com?subject=project%20x&priority=urgent",
         "sip:alice@atlanta.com?priority=urgent&subject=project%20x"),
    ],
)
def test_equal_examples_of_19_1_4(a: str, b: str) -> None:
    assert uri_equal(parse_uri(a), parse_uri(b))
    assert uri_equal(parse_uri(b), parse_uri(a))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),
        ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),
        ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
        ("sip:a@b;x=1", "sip:a@b;x=2"),
        ("sip:a@b", "sips:a@b"),
        ("sip:a@b", "tel:a"),
    ],
)
def test_unequal_examples_of_19_1_4(a: str, b: str) -> None:
    assert not uri_equal(parse_uri(a), parse_uri(b))


def test_helpers_replace_params() -> None:
    uri = sip("sip:a@b;transport=udp;lr")
    assert str(uri.with_params(transport="tcp", ob=None)) == "sip:a@b;lr;transport=tcp;ob"
    assert str(uri.without_params("lr")) == "sip:a@b;transport=udp"
    assert uri.replace(port=5080).port == 5080


_user = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=12
)
_host = st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9](\.[a-z]{2,5}){0,2}", fullmatch=True)


@given(user=_user, password=st.none() | _user, host=_host,
       port=st.none() | st.integers(0, 65535),
       params=st.lists(st.tuples(st.from_regex(r"[a-z][a-z0-9-]{0,6}", fullmatch=True),
                                 st.none() | st.from_regex(r"[A-Za-z0-9.]{1,6}", fullmatch=True)),
                       max_size=3, unique_by=lambda p: p[0]))
def test_round_trip(user: str, password: str | None, host: str, port: int | None,
                    params: list[tuple[str, str | None]]) -> None:
    uri = SipUri("sip", user, password, host, port, tuple(params))
    again = parse_uri(str(uri))
    assert again == uri
    assert uri_equal(again, uri)


@given(st.text(max_size=40))
def test_arbitrary_text_only_raises_protocol_error(text: str) -> None:
    try:
        parse_uri(text)
    except RemoteProtocolError as exc:
        assert exc.status == 400
