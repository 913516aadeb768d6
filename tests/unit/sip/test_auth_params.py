"""The auth-param grammar (RFC 3261 §25.1, RFC 7616 §3.3-3.4, RFC 7235 §2.1)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ucgate.sip.auth_params import (
    AuthHeader,
    MalformedAuthHeader,
    format_auth_header,
    is_token,
    parse_auth_header,
    parse_params,
    quote,
    split_scheme,
)
from ucgate.sip.errors import RemoteProtocolError

# RFC 7616 §3.9.1, as printed (folded over several lines).
RFC7616_AUTHORIZATION = (
    'Digest username="Mufasa",\r\n'
    '       realm="http-auth@example.org",\r\n'
    '       uri="/dir/index.html",\r\n'
    "       algorithm=MD5,\r\n"
    '       nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",\r\n'
    "       nc=00000001,\r\n"
    '       cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",\r\n'
    "       qop=auth,\r\n"
    '       response="8ca523f5e9506fed4657c9700eebdbec",\r\n'
    '       opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
)


def test_rfc7616_example_with_folding() -> None:
    header = parse_auth_header(RFC7616_AUTHORIZATION)
    assert header.is_digest
    assert header.params == {
        "username": "Mufasa",
        "realm": "http-auth@example.org",
        "uri": "/dir/index.html",
        "algorithm": "MD5",
        "nonce": "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
        "nc": "00000001",
        "cnonce": "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        "qop": "auth",
        "response": "8ca523f5e9506fed4657c9700eebdbec",
        "opaque": "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS",
    }


def test_names_and_scheme_are_case_insensitive_values_are_not() -> None:
    header = parse_auth_header('dIgEsT UserName="Bob", REALM=Atlanta.com')
    assert header.is_digest
    assert header.scheme == "dIgEsT"
    assert header.params == {"username": "Bob", "realm": "Atlanta.com"}


def test_whitespace_around_equals_and_commas() -> None:
    header = parse_auth_header('Digest  realm \t= "a" ,\tnonce= b , qop ="auth"  ')
    assert header.params == {"realm": "a", "nonce": "b", "qop": "auth"}


def test_token_and_quoted_forms_are_equivalent() -> None:
    assert parse_params("qop=auth, nc=00000001") == parse_params('qop="auth", nc="00000001"')


def test_quoted_pair_escapes() -> None:
    header = parse_auth_header(r'Digest username="a\"b\\c\d", realm="x,y=z"')
    assert header.params == {"username": 'a"b\\cd', "realm": "x,y=z"}


def test_utf8_in_quoted_string() -> None:
    assert parse_params('username="Jäsøn Doe"') == {"username": "Jäsøn Doe"}


def test_empty_list_elements_are_skipped() -> None:
    assert parse_params(' , realm="a",, ,nonce="b" ,') == {"realm": "a", "nonce": "b"}


def test_unknown_scheme_rfc4475_regaut01() -> None:
    # RFC 4475 §3.3.7: well-formed, just a scheme we do not speak.
    scheme, rest = split_scheme("NoOneKnowsThisScheme opaque-data=here")
    assert (scheme, rest) == ("NoOneKnowsThisScheme", "opaque-data=here")
    header = parse_auth_header("NoOneKnowsThisScheme opaque-data=here")
    assert not header.is_digest
    assert header.params == {"opaque-data": "here"}


def test_scheme_alone_splits_but_has_no_params() -> None:
    assert split_scheme("Digest") == ("Digest", "")
    with pytest.raises(MalformedAuthHeader):
        parse_auth_header("Digest")


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "Digest ",
        'Digest realm="unterminated',
        "Digest realm",
        "Digest =x",
        "Digest realm=",
        "Digest a=b c=d",
        'Digest a="x"y',
        'Digest a="x" "y"',
        "Digest a=\x00",
        'Digest a="x\ry"',
        'Digest a="x\ny"',
        "Digest a=é",
        'Digest a="x\\\ny"',
        'Digest a="1", a="2"',
        'Digest A="1", a="1"',
        '"Digest" a=b',
        "Digest, a=b",
        'Digestrealm="a"',
        "Digest a=b;c=d",
    ],
)
def test_malformed_values(value: str) -> None:
    with pytest.raises(MalformedAuthHeader) as info:
        parse_auth_header(value)
    assert info.value.status == 400
    assert isinstance(info.value, RemoteProtocolError)


def test_error_messages_do_not_echo_values() -> None:
    with pytest.raises(MalformedAuthHeader) as info:
        parse_auth_header('Digest response="s3cr3tdigest" junk')
    assert "s3cr3tdigest" not in str(info.value)


def test_quote_escapes_and_refuses_crlf() -> None:
    assert quote('a"b\\c') == r'"a\"b\\c"'
    assert quote("a\tb") == '"a\tb"'
    assert quote("a\x01b") == '"a\\\x01b"'
    with pytest.raises(ValueError):
        quote("a\r\nVia: x")


def test_format_auth_header() -> None:
    value = format_auth_header(
        "Digest", [("realm", 'ex"ample', True), ("algorithm", "SHA-256", False)]
    )
    assert value == r'Digest realm="ex\"ample", algorithm=SHA-256'
    with pytest.raises(ValueError):
        format_auth_header("Digest", [("qop", "auth, auth-int", False)])


def test_is_token() -> None:
    assert is_token("SHA-256")
    assert not is_token("a b")
    assert not is_token("")


_names = st.from_regex(r"[A-Za-z][A-Za-z0-9\-_]{0,10}", fullmatch=True)
_values = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]))


@given(st.dictionaries(_names.map(str.lower), _values, min_size=1, max_size=8))
def test_format_then_parse_round_trips(params: dict[str, str]) -> None:
    value = format_auth_header("Digest", [(n, v, True) for n, v in params.items()])
    assert parse_auth_header(value) == AuthHeader("Digest", params)


@given(st.text())
def test_arbitrary_text_raises_only_the_documented_error(value: str) -> None:
    try:
        header = parse_auth_header(value)
    except MalformedAuthHeader:
        return
    assert header.params


@given(st.text(alphabet='Digest ram=",\\\t\r\n\x00aé'))
def test_grammar_alphabet_raises_only_the_documented_error(value: str) -> None:
    # The same property over an alphabet dense in the grammar's own characters, which
    # reaches the quoting and folding branches far more often than arbitrary text.
    with contextlib.suppress(MalformedAuthHeader):
        parse_auth_header(value)
