"""Server-side Digest (RFC 3261 §22, RFC 7616, RFC 8760) and the small client side."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ucgate.sip.auth_params import parse_auth_header
from ucgate.sip.digest import (
    AuthFailure,
    AuthResult,
    DigestAlgorithm,
    DigestAuthenticator,
    DigestChallenge,
    UnsupportedChallenge,
    UserSecret,
    build_authorization,
    compute_response,
    credentials_for_realm,
    pick_challenge,
)
from ucgate.sip.errors import LocalProtocolError

REALM = "example.com"
KEY = b"0123456789abcdef0123456789abcdef"
T0 = 1_700_000_000.0
RURI = "sip:example.com"
ALICE = UserSecret.from_password("alice", REALM, "correct horse")
ACCOUNTS = {"alice": ALICE}
lookup = ACCOUNTS.get


def counter_random() -> Callable[[int], bytes]:
    """Deterministic stand-in for os.urandom: distinct bytes on every call."""
    counter = itertools.count(1)

    def random_bytes(n: int) -> bytes:
        return next(counter).to_bytes(n, "big")

    return random_bytes


def make_auth(**kwargs: object) -> DigestAuthenticator:
    kwargs.setdefault("secret_key", KEY)
    kwargs.setdefault("random_bytes", counter_random())
    return DigestAuthenticator(REALM, **kwargs)  # type: ignore[arg-type]


def answer(
    challenge_value: str,
    *,
    username: str = "alice",
    password: str = "correct horse",
    nc: int = 1,
    cnonce: str = "c1",
    method: str = "REGISTER",
    uri: str = RURI,
) -> str:
    return build_authorization(
        DigestChallenge.parse(challenge_value),
        method=method,
        uri=uri,
        username=username,
        cnonce=cnonce,
        nc=nc,
        password=password,
    )


def verify(
    auth: DigestAuthenticator,
    authorization: str | None,
    now: float = T0,
    *,
    method: str = "REGISTER",
    request_uri: str = RURI,
) -> AuthResult:
    return auth.verify(
        method=method, request_uri=request_uri, authorization=authorization, lookup=lookup, now=now
    )


def public_face(result: AuthResult) -> tuple[object, ...]:
    """Everything the caller may let show in its response."""
    return (result.ok, result.username, result.stale, result.bad_request)


def replace_param(header: str, name: str, new: str | None) -> str:
    """Rebuild ``header`` with one parameter changed (quoted) or dropped (None)."""
    parsed = parse_auth_header(header)
    parts = []
    for key, value in parsed.params.items():
        if key == name:
            if new is None:
                continue
            value = new
        parts.append(f'{key}="{value}"')
    return "Digest " + ", ".join(parts)


# -- known-answer vectors ----------------------------------------------------------------

MUFASA = UserSecret.from_password("Mufasa", "http-auth@example.org", "Circle of Life")
RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC7616_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"


@pytest.mark.parametrize(
    ("algorithm", "ha1", "expected"),
    [
        (DigestAlgorithm.MD5, MUFASA.ha1_md5, "8ca523f5e9506fed4657c9700eebdbec"),
        (
            DigestAlgorithm.SHA256,
            MUFASA.ha1_sha256,
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
        ),
    ],
)
def test_rfc7616_section_3_9_1_vectors(
    algorithm: DigestAlgorithm, ha1: str | None, expected: str
) -> None:
    assert ha1 is not None
    got = compute_response(
        algorithm, ha1, "GET", "/dir/index.html", RFC7616_NONCE, "00000001", RFC7616_CNONCE, "auth"
    )
    assert got == expected


def test_rfc2617_section_3_5_vector_and_no_qop_form() -> None:
    secret = UserSecret.from_password("Mufasa", "testrealm@host.com", "Circle Of Life")
    assert secret.ha1_md5 is not None
    nonce = "dcd98b7102dd2f0e8b11d0f600bfb0c093"
    args = (DigestAlgorithm.MD5, secret.ha1_md5, "GET", "/dir/index.html", nonce)
    assert compute_response(*args, "00000001", "0a4f113b", "auth") == (
        "6629fae49393a05397450978507c4ef1"
    )
    # RFC 2069 form (no qop) of the same request, as independent implementations compute it.
    assert compute_response(*args, None, None, None) == "670fd8c2df070c60b045671b8b24ff02"


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_build_authorization_reproduces_rfc7616_example(algorithm: str, expected: str) -> None:
    challenge = DigestChallenge.parse(
        f'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={algorithm}, '
        f'nonce="{RFC7616_NONCE}", opaque="{RFC7616_OPAQUE}"'
    )
    assert challenge.qop == ("auth", "auth-int")
    value = build_authorization(
        challenge,
        method="GET",
        uri="/dir/index.html",
        username="Mufasa",
        cnonce=RFC7616_CNONCE,
        password="Circle of Life",
    )
    params = parse_auth_header(value).params
    assert params["response"] == expected
    assert params["algorithm"] == algorithm
    assert (params["qop"], params["nc"], params["opaque"]) == ("auth", "00000001", RFC7616_OPAQUE)
    # RFC 7616 §3.4: algorithm, qop and nc are never quoted by a sender.
    assert f"algorithm={algorithm}," in value
    assert "qop=auth, nc=00000001," in value


# -- challenges --------------------------------------------------------------------------


def test_challenge_lists_sha256_then_md5_with_one_nonce() -> None:
    values = make_auth().challenge(T0)
    assert len(values) == 2
    first, second = (DigestChallenge.parse(v) for v in values)
    assert first.algorithm is DigestAlgorithm.SHA256
    assert second.algorithm is DigestAlgorithm.MD5
    assert first.nonce == second.nonce
    assert first.realm == REALM and first.qop == ("auth",) and first.opaque
    assert not first.stale
    assert 'qop="auth"' in values[0]
    assert "algorithm=SHA-256" in values[0]


def test_each_challenge_has_a_fresh_nonce() -> None:
    auth = make_auth()
    nonces = {DigestChallenge.parse(auth.challenge(T0)[0]).nonce for _ in range(50)}
    assert len(nonces) == 50


def test_stale_challenge() -> None:
    values = make_auth().challenge(T0, stale=True)
    assert all(DigestChallenge.parse(v).stale for v in values)
    assert all("stale=true" in v for v in values)


def test_pick_challenge_takes_the_first_supported() -> None:
    values = [
        'Digest realm="r", nonce="n", algorithm=SHA-512-256, qop="auth"',
        "NewAuth realm=r",
        'Digest realm="r", nonce="n", algorithm=SHA-256, qop="auth-int"',
        *make_auth().challenge(T0),
    ]
    picked = pick_challenge(values)
    assert picked is not None and picked.algorithm is DigestAlgorithm.SHA256
    assert picked.realm == REALM
    assert pick_challenge(values[:3]) is None


def test_challenge_parse_errors() -> None:
    with pytest.raises(UnsupportedChallenge):
        DigestChallenge.parse('Basic realm="r"')
    with pytest.raises(UnsupportedChallenge):
        DigestChallenge.parse('Digest realm="r", nonce="n", algorithm=SHA-512-256')
    with pytest.raises(Exception, match="realm or nonce"):
        DigestChallenge.parse('Digest realm="r"')


# -- successful authentication -----------------------------------------------------------


@pytest.mark.parametrize("index", [0, 1], ids=["SHA-256", "MD5"])
def test_success_for_both_algorithms(index: int) -> None:
    auth = make_auth()
    value = answer(auth.challenge(T0)[index])
    result = verify(auth, value, T0 + 1)
    assert result == AuthResult(ok=True, username="alice", claimed_username="alice")
    assert not result.bad_request


def test_md5_only_client_picks_md5() -> None:
    # JsSIP / SIP.js / sipp: they skip the SHA-256 challenge and answer the MD5 one.
    auth = make_auth()
    md5_only = [v for v in auth.challenge(T0) if "algorithm=MD5" in v]
    picked = pick_challenge(md5_only)
    assert picked is not None and picked.algorithm is DigestAlgorithm.MD5
    value = build_authorization(
        picked,
        method="INVITE",
        uri="sip:bob@example.com",
        username="alice",
        cnonce="x",
        password="correct horse",
    )
    result = verify(auth, value, T0, method="INVITE", request_uri="sip:bob@example.com")
    assert result.ok


def test_absent_algorithm_means_md5() -> None:
    auth = make_auth()
    value = replace_param(answer(auth.challenge(T0)[1]), "algorithm", None)
    assert "algorithm" not in parse_auth_header(value).params
    assert verify(auth, value).ok
    sha_only = make_auth(algorithms=(DigestAlgorithm.SHA256,))
    value = replace_param(answer(sha_only.challenge(T0)[0], nc=1), "algorithm", None)
    assert verify(sha_only, value).reason is AuthFailure.UNSUPPORTED_ALGORITHM


def test_algorithm_name_is_case_insensitive() -> None:
    auth = make_auth()
    value = answer(auth.challenge(T0)[1]).replace("algorithm=MD5", "algorithm=md5")
    assert verify(auth, value).ok


@pytest.mark.parametrize("algorithm", [DigestAlgorithm.MD5_SESS, DigestAlgorithm.SHA256_SESS])
def test_session_variants_when_configured(algorithm: DigestAlgorithm) -> None:
    auth = make_auth(algorithms=(algorithm,))
    (value,) = auth.challenge(T0)
    assert f"algorithm={algorithm.value}" in value
    assert verify(auth, answer(value)).ok
    assert not verify(auth, answer(value, password="nope", nc=2)).ok


def test_prehashed_secrets_work_like_passwords() -> None:
    auth = make_auth()
    stored = UserSecret(ha1_md5=ALICE.ha1_md5, ha1_sha256=ALICE.ha1_sha256)
    value = answer(auth.challenge(T0)[0])
    result = auth.verify(
        method="REGISTER",
        request_uri=RURI,
        authorization=value,
        lookup={"alice": stored}.get,
        now=T0,
    )
    assert result.ok


def test_utf8_and_escaped_usernames() -> None:
    name = 'Jäsøn "the \\ admin"'
    secret = UserSecret.from_password(name, REALM, "pw")
    auth = make_auth()
    value = answer(auth.challenge(T0)[0], username=name, password="pw")
    result = auth.verify(
        method="REGISTER",
        request_uri=RURI,
        authorization=value,
        lookup={name: secret}.get,
        now=T0,
    )
    assert result.ok and result.username == name


def test_extended_username_rfc7616_section_3_4_4() -> None:
    secret = UserSecret.from_password("Jäsøn", REALM, "pw")
    auth = make_auth()
    value = answer(auth.challenge(T0)[0], username="Jäsøn", password="pw")
    value = value.replace('username="Jäsøn"', "username*=UTF-8''J%C3%A4s%C3%B8n")
    result = auth.verify(
        method="REGISTER",
        request_uri=RURI,
        authorization=value,
        lookup={"Jäsøn": secret}.get,
        now=T0,
    )
    assert result.ok
    both = value.replace("username*=", 'username="Jäsøn", username*=')
    assert verify(auth, both).reason is AuthFailure.MALFORMED
    hashed = answer(auth.challenge(T0)[0]) + ", userhash=true"
    assert verify(auth, hashed).reason is AuthFailure.MALFORMED


def test_credentials_for_realm_picks_ours() -> None:
    auth = make_auth()
    ours = answer(auth.challenge(T0)[0])
    theirs = ours.replace(f'realm="{REALM}"', 'realm="other.example"')
    assert credentials_for_realm([theirs, "Digest garbage", ours], REALM) == ours
    assert credentials_for_realm([theirs], REALM) == theirs
    assert credentials_for_realm([], REALM) is None


# -- no user enumeration -----------------------------------------------------------------


def test_wrong_password_and_unknown_user_look_the_same() -> None:
    auth = make_auth()
    challenge = auth.challenge(T0)[0]
    wrong = verify(auth, answer(challenge, password="Tr0ub4dor&3"))
    unknown = verify(auth, answer(challenge, username="mallory", nc=2))
    assert wrong.reason is AuthFailure.BAD_RESPONSE
    assert unknown.reason is AuthFailure.UNKNOWN_USER
    assert public_face(wrong) == public_face(unknown) == (False, None, False, False)


def test_account_without_the_hash_looks_like_a_wrong_password() -> None:
    md5_only = {"alice": UserSecret(ha1_md5=ALICE.ha1_md5)}
    auth = make_auth()
    sha_value, md5_value = (answer(c) for c in auth.challenge(T0))

    def check(value: str) -> AuthResult:
        return auth.verify(
            method="REGISTER", request_uri=RURI, authorization=value, lookup=md5_only.get, now=T0
        )

    refused = check(sha_value)
    assert refused.reason is AuthFailure.UNSUPPORTED_ALGORITHM
    wrong = verify(auth, answer(auth.challenge(T0)[0], password="x"))
    assert public_face(refused) == public_face(wrong)
    assert check(md5_value).ok


def test_dummy_secret_never_authenticates_an_unknown_user() -> None:
    # Even a response that matched the internal dummy must not produce ok.
    auth = make_auth()
    value = answer(auth.challenge(T0)[0], username="ghost")
    result = auth.verify(
        method="REGISTER", request_uri=RURI, authorization=value, lookup=lambda _: None, now=T0
    )
    assert not result.ok and result.username is None


# -- nonce lifetime ----------------------------------------------------------------------


def test_nonce_valid_until_ttl_then_stale() -> None:
    auth = make_auth(nonce_ttl=300.0)
    challenge = auth.challenge(T0)[0]
    assert verify(auth, answer(challenge, nc=1), T0 + 300.0).ok
    stale = verify(auth, answer(challenge, nc=2), T0 + 300.5)
    assert stale.reason is AuthFailure.STALE_NONCE
    assert stale.stale and not stale.ok and stale.username == "alice"
    assert not stale.bad_request
    # The phone retries against the stale=true challenge without asking its user.
    fresh = auth.challenge(T0 + 300.5, stale=True)[0]
    assert verify(auth, answer(fresh), T0 + 301).ok


def test_stale_is_only_said_for_a_correct_digest() -> None:
    auth = make_auth()
    challenge = auth.challenge(T0)[0]
    late = T0 + 10_000
    assert verify(auth, answer(challenge, password="bad"), late).reason is AuthFailure.BAD_RESPONSE
    unknown = verify(auth, answer(challenge, username="nobody"), late)
    assert unknown.reason is AuthFailure.UNKNOWN_USER and not unknown.stale


def test_nonce_from_the_future_is_refused_beyond_clock_skew() -> None:
    auth = make_auth(clock_skew=30.0)
    challenge = auth.challenge(T0 + 100)[0]
    assert verify(auth, answer(challenge), T0).reason is AuthFailure.BAD_NONCE
    assert verify(auth, answer(challenge, nc=2), T0 + 75).ok


@pytest.mark.parametrize(
    "mutate",
    [
        lambda n: n[:-1] + ("A" if n[-1] != "A" else "B"),
        lambda n: ("A" if n[0] != "A" else "B") + n[1:],
        lambda n: n[:10] + ("x" if n[10] != "x" else "y") + n[11:],
        lambda n: n[:-4],
        lambda n: n + "AAAA",
        lambda n: n.replace(n[5], "é"),
        lambda n: "",
        lambda n: "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
    ],
)
def test_tampered_nonce_refused(mutate: Callable[[str], str]) -> None:
    auth = make_auth()
    challenge = DigestChallenge.parse(auth.challenge(T0)[0])
    forged = DigestChallenge(
        realm=challenge.realm,
        nonce=mutate(challenge.nonce),
        algorithm=challenge.algorithm,
        qop=challenge.qop,
        opaque=challenge.opaque,
    )
    value = build_authorization(
        forged, method="REGISTER", uri=RURI, username="alice", cnonce="c", password="correct horse"
    )
    result = verify(auth, value)
    assert result.reason is AuthFailure.BAD_NONCE
    assert not result.ok and not result.stale and not result.bad_request


def test_nonce_is_bound_to_realm_and_key() -> None:
    other_realm = DigestAuthenticator("other.example", secret_key=KEY)
    nonce = DigestChallenge.parse(other_realm.challenge(T0)[0]).nonce
    challenge = DigestChallenge(
        realm=REALM, nonce=nonce, algorithm=DigestAlgorithm.SHA256, qop=("auth",)
    )
    value = build_authorization(
        challenge,
        method="REGISTER",
        uri=RURI,
        username="alice",
        cnonce="c",
        password="correct horse",
    )
    assert verify(make_auth(), value).reason is AuthFailure.BAD_NONCE


def test_cross_instance_same_key() -> None:
    # Multi-node: node A challenges, the retry lands on node B sharing secret_key.
    node_a = make_auth()
    node_b = DigestAuthenticator(REALM, secret_key=KEY)
    value = answer(node_a.challenge(T0)[0])
    assert verify(node_b, value, T0 + 2).ok
    node_c = DigestAuthenticator(REALM, secret_key=b"another key, 16+ bytes")
    assert verify(node_c, value, T0 + 2).reason is AuthFailure.BAD_NONCE


# -- nc replay protection ----------------------------------------------------------------


def test_replayed_nc_refused_and_higher_nc_accepted() -> None:
    auth = make_auth()
    challenge = auth.challenge(T0)[0]
    first = answer(challenge, nc=1)
    assert verify(auth, first).ok
    replay = verify(auth, first, T0 + 1)
    assert replay.reason is AuthFailure.REPLAY and not replay.ok and not replay.stale
    assert verify(auth, answer(challenge, nc=2, cnonce="c2"), T0 + 2).ok
    assert verify(auth, answer(challenge, nc=2, cnonce="c3"), T0 + 3).reason is AuthFailure.REPLAY
    assert verify(auth, answer(challenge, nc=1, cnonce="c4"), T0 + 4).reason is AuthFailure.REPLAY
    assert verify(auth, answer(challenge, nc=7), T0 + 5).ok  # gaps are fine (lost requests)
    assert verify(auth, answer(challenge, nc=0xFFFFFFFF), T0 + 6).ok


def test_failed_attempts_do_not_burn_nc() -> None:
    auth = make_auth()
    challenge = auth.challenge(T0)[0]
    assert not verify(auth, answer(challenge, nc=5, password="guess")).ok
    assert verify(auth, answer(challenge, nc=1)).ok


def test_eviction_bound_holds_and_never_reopens_a_replay() -> None:
    auth = make_auth(max_tracked_nonces=50)
    early = auth.challenge(T0)[0]
    assert verify(auth, answer(early, nc=1)).ok
    for i in range(500):
        now = T0 + 1 + i * 0.1
        assert verify(auth, answer(auth.challenge(now)[0]), now).ok
        assert auth.tracked_nonces <= 50
    assert auth.tracked_nonces == 50
    # The early nonce's counter was evicted while the nonce is still valid: its reuse
    # cannot be told from a replay, so it gets stale (a silent retry), never ok.
    result = verify(auth, answer(early, nc=1), T0 + 60)
    assert result.stale and not result.ok
    # A nonce issued after the evictions is unaffected.
    assert verify(auth, answer(auth.challenge(T0 + 61)[0]), T0 + 61).ok


def test_state_dropped_once_nonces_expire() -> None:
    auth = make_auth(nonce_ttl=300.0)
    for i in range(20):
        assert verify(auth, answer(auth.challenge(T0 + i)[0]), T0 + i).ok
    assert auth.tracked_nonces == 20
    assert auth.next_deadline() == T0 + 300.0
    auth.handle_timer(T0 + 305.5)  # nonces issued at T0..T0+5 have expired
    assert auth.tracked_nonces == 14
    assert auth.expire(T0 + 400) == 14
    assert auth.tracked_nonces == 0 and auth.next_deadline() is None


def test_verify_cleans_expired_state_lazily() -> None:
    auth = make_auth(nonce_ttl=10.0)
    for i in range(5):
        assert verify(auth, answer(auth.challenge(T0)[0]), T0 + i).ok
    later = T0 + 100
    assert verify(auth, answer(auth.challenge(later)[0]), later).ok
    assert auth.tracked_nonces == 1


# -- refusals ----------------------------------------------------------------------------


def test_other_realm_refused() -> None:
    auth = make_auth()
    value = answer(auth.challenge(T0)[0]).replace(f'realm="{REALM}"', 'realm="evil.example"')
    result = verify(auth, value)
    assert result.reason is AuthFailure.WRONG_REALM and not result.bad_request


@pytest.mark.parametrize(
    "value",
    [
        "NoOneKnowsThisScheme opaque-data=here",  # RFC 4475 §3.3.7 regaut01
        "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==",
        'NewAuth realm="example.com"',
    ],
)
def test_non_digest_scheme(value: str) -> None:
    result = verify(make_auth(), value)
    assert result.reason is AuthFailure.NOT_DIGEST and not result.bad_request


@pytest.mark.parametrize("value", [None, "", "  "])
def test_missing(value: str | None) -> None:
    assert verify(make_auth(), value).reason is AuthFailure.MISSING


@pytest.mark.parametrize(
    "change",
    [
        lambda v: replace_param(v, "response", None),
        lambda v: replace_param(v, "nonce", None),
        lambda v: replace_param(v, "uri", None),
        lambda v: replace_param(v, "username", None),
        lambda v: replace_param(v, "realm", None),
        lambda v: replace_param(v, "nc", None),
        lambda v: replace_param(v, "cnonce", None),
        lambda v: replace_param(v, "qop", None),
        lambda v: replace_param(v, "qop", "auth-int"),
        lambda v: replace_param(v, "nc", "1"),
        lambda v: replace_param(v, "nc", "0000000g"),
        lambda v: replace_param(v, "nc", "00000000"),
        lambda v: v + ', nc="00000002"',
        lambda v: v[:-1],
        lambda v: v.replace(", ", " "),
        lambda v: "Digest",
    ],
)
def test_malformed_credentials(change: Callable[[str], str]) -> None:
    auth = make_auth()
    result = verify(auth, change(answer(auth.challenge(T0)[0])))
    assert result.reason is AuthFailure.MALFORMED
    assert result.bad_request and not result.ok


def test_response_in_upper_case_hex_is_accepted() -> None:
    auth = make_auth()
    value = answer(auth.challenge(T0)[0])
    response = parse_auth_header(value).params["response"]
    assert verify(auth, value.replace(response, response.upper())).ok


def test_garbage_response_is_a_bad_response() -> None:
    auth = make_auth()
    value = answer(auth.challenge(T0)[0])
    for junk in ["", "zz", "é" * 64, "0" * 64]:
        assert verify(auth, replace_param(value, "response", junk)).reason is (
            AuthFailure.BAD_RESPONSE
        )


def test_unknown_algorithm() -> None:
    auth = make_auth()
    value = answer(auth.challenge(T0)[0]).replace("algorithm=SHA-256", "algorithm=SHA-512-256")
    assert verify(auth, value).reason is AuthFailure.UNSUPPORTED_ALGORITHM


def test_no_qop_refused_by_default_and_single_use_when_allowed() -> None:
    challenge = DigestChallenge.parse(make_auth().challenge(T0)[1])
    strict = make_auth()
    rfc2069 = DigestChallenge(realm=REALM, nonce=challenge.nonce, algorithm=DigestAlgorithm.MD5)
    value = build_authorization(
        rfc2069,
        method="REGISTER",
        uri=RURI,
        username="alice",
        cnonce="unused",
        password="correct horse",
    )
    assert "qop" not in parse_auth_header(value).params
    assert verify(strict, value).reason is AuthFailure.MALFORMED
    lenient = make_auth(allow_no_qop=True)
    assert verify(lenient, value).ok
    # Without nc there is no counter: the nonce is good for one request only.
    assert verify(lenient, value, T0 + 1).reason is AuthFailure.REPLAY


def test_uri_must_match_the_request_uri() -> None:
    auth = make_auth()
    value = answer(auth.challenge(T0)[0], uri="sip:alice@example.com")
    result = verify(auth, value, request_uri="sip:bob@example.com")
    assert result.reason is AuthFailure.URI_MISMATCH and result.bad_request
    assert not verify(auth, value, request_uri="sip:Alice@example.com").ok
    # Scheme and host compare case-insensitively (RFC 3261 §19.1.4).
    assert verify(auth, value, request_uri="SIP:alice@EXAMPLE.com").ok
    lax = make_auth(check_uri=False)
    value = answer(lax.challenge(T0)[0], uri="sip:alice@example.com")
    assert verify(lax, value, request_uri="sip:rewritten@proxy.example").ok


# -- secrets stay secret -----------------------------------------------------------------


def test_user_secret_repr_hides_hashes() -> None:
    assert ALICE.ha1_md5 is not None and ALICE.ha1_sha256 is not None
    for text in (repr(ALICE), str(ALICE), f"{ALICE}"):
        assert ALICE.ha1_md5 not in text and ALICE.ha1_sha256 not in text
        assert "<hidden>" in text
    only_md5 = UserSecret(ha1_md5=ALICE.ha1_md5)
    assert repr(only_md5) == "UserSecret(ha1_md5=<hidden>, ha1_sha256=None)"


def test_user_secret_validation_does_not_echo() -> None:
    with pytest.raises(ValueError) as info:
        UserSecret(ha1_md5="not-a-hash-but-a-password")
    assert "not-a-hash" not in str(info.value)
    with pytest.raises(ValueError):
        UserSecret()
    assert UserSecret(ha1_md5="A" * 32).ha1_md5 == "a" * 32


def test_results_and_challenges_carry_no_secrets() -> None:
    auth = make_auth()
    value = answer(auth.challenge(T0)[0])
    for result in (verify(auth, value), verify(auth, answer(auth.challenge(T0)[0], password="x"))):
        text = repr(result)
        assert "correct horse" not in text
        assert ALICE.ha1_sha256 is not None and ALICE.ha1_sha256 not in text
    assert KEY.decode() not in "".join(auth.challenge(T0))


def test_constructor_misuse() -> None:
    with pytest.raises(LocalProtocolError):
        DigestAuthenticator(REALM, secret_key=b"short")
    with pytest.raises(LocalProtocolError):
        DigestAuthenticator(REALM, secret_key=KEY, algorithms=())
    with pytest.raises(LocalProtocolError):
        DigestAuthenticator(
            REALM, secret_key=KEY, algorithms=(DigestAlgorithm.MD5, DigestAlgorithm.MD5)
        )
    with pytest.raises(LocalProtocolError):
        make_auth().challenge(-1.0)


def test_build_authorization_misuse() -> None:
    challenge = DigestChallenge.parse(make_auth().challenge(T0)[0])
    with pytest.raises(LocalProtocolError):
        build_authorization(challenge, method="REGISTER", uri=RURI, username="a", cnonce="c")
    with pytest.raises(LocalProtocolError):
        build_authorization(
            challenge, method="REGISTER", uri=RURI, username="a", cnonce="c", nc=0, password="p"
        )
    with pytest.raises(LocalProtocolError):
        build_authorization(
            challenge,
            method="REGISTER",
            uri=RURI,
            username="a",
            cnonce="c",
            secret=UserSecret(ha1_md5=ALICE.ha1_md5),
        )
    auth_int_only = DigestChallenge(
        realm=REALM, nonce="n", algorithm=DigestAlgorithm.MD5, qop=("auth-int",)
    )
    with pytest.raises(UnsupportedChallenge):
        build_authorization(
            auth_int_only, method="REGISTER", uri=RURI, username="a", cnonce="c", password="p"
        )


# -- properties --------------------------------------------------------------------------

_text = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]))


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_arbitrary_authorization_never_raises_never_ok(value: str) -> None:
    result = verify(make_auth(), value)
    assert isinstance(result, AuthResult) and not result.ok


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1))
def test_lone_surrogates_from_a_lenient_decoder_never_raise(junk: str) -> None:
    auth = make_auth()
    value = answer(auth.challenge(T0)[0])
    value = replace_param(value, "cnonce", junk)
    assert not verify(auth, value, request_uri=RURI + junk).ok


@settings(max_examples=100, deadline=None)
@given(
    username=_text.filter(bool),
    password=_text,
    method=st.sampled_from(["REGISTER", "INVITE", "SUBSCRIBE", "MESSAGE", "PUBLISH"]),
    user_part=st.from_regex(r"[a-z0-9._~+-]{1,12}", fullmatch=True),
    index=st.sampled_from([0, 1]),
)
def test_client_and_server_agree(
    username: str, password: str, method: str, user_part: str, index: int
) -> None:
    secret = UserSecret.from_password(username, REALM, password)
    auth = make_auth()
    uri = f"sip:{user_part}@{REALM}"
    value = answer(
        auth.challenge(T0)[index], username=username, password=password, method=method, uri=uri
    )

    def check(header: str) -> AuthResult:
        return auth.verify(
            method=method,
            request_uri=uri,
            authorization=header,
            lookup={username: secret}.get,
            now=T0,
        )

    result = check(value)
    assert result.ok and result.username == username
    wrong = answer(
        auth.challenge(T0)[index],
        username=username,
        password=password + "x",
        method=method,
        uri=uri,
    )
    assert check(wrong).reason is AuthFailure.BAD_RESPONSE
