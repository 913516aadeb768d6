"""SIP Digest authentication: the server that challenges and verifies, and the client that answers.

RFC 3261 §22 profiles HTTP Digest for SIP; RFC 7616 is the current Digest, and RFC 8760 adds
SHA-256 to SIP. Sans-IO: time is the ``now`` argument (wall-clock epoch seconds, because a
nonce issued by one node is checked by another), randomness is injected, nothing is logged
here. The caller turns an :class:`AuthResult` into a response:

* ``ok`` → go on;
* ``bad_request`` (MALFORMED, URI_MISMATCH) → 400, RFC 7616 §3.4 / §3.4.6;
* anything else → 401 (registrar/UAS, ``WWW-Authenticate``) or 407 (proxy,
  ``Proxy-Authenticate``) with :meth:`DigestAuthenticator.challenge`, passing
  ``stale=result.stale`` so a phone whose nonce merely aged retries silently (RFC 7616 §3.3).
  UNKNOWN_USER, BAD_RESPONSE and UNSUPPORTED_ALGORITHM (of an account) must be answered the
  same way, so nobody can probe which accounts exist; ``reason`` is for logs and metrics.

Nonces are self-validating, ``base64url(issued_ms ‖ random ‖ HMAC-SHA256(key, issued_ms ‖
random ‖ realm)[:16])``: any node holding ``secret_key`` verifies them, and a nonce costs no
memory until it is first used. From first use on, the highest ``nc`` seen is remembered per
nonce (bounded, in-memory, per node) so a captured request cannot be replayed.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ucgate.sip.auth_params import (
    MalformedAuthHeader,
    format_auth_header,
    parse_auth_header,
    parse_params,
    split_scheme,
)
from ucgate.sip.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "AuthFailure",
    "AuthResult",
    "DigestAlgorithm",
    "DigestAuthenticator",
    "DigestChallenge",
    "MalformedAuthHeader",
    "UnsupportedChallenge",
    "UserSecret",
    "build_authorization",
    "compute_response",
    "credentials_for_realm",
    "pick_challenge",
]


class DigestAlgorithm(enum.Enum):
    """Digest algorithms (RFC 7616 §3.2, §6.1; RFC 8760 §2.2 for SIP).

    The ``-sess`` variants are implemented (they only change HA1, RFC 7616 §3.4.2) but
    are not offered by default: SIP phones do not use them.
    """

    MD5 = "MD5"
    SHA256 = "SHA-256"
    MD5_SESS = "MD5-sess"
    SHA256_SESS = "SHA-256-sess"

    @classmethod
    def from_param(cls, value: str | None) -> DigestAlgorithm | None:
        """The algorithm a parameter names; absent means MD5 (RFC 7616 §3.4), unknown None."""
        if value is None:
            return cls.MD5
        return _ALGORITHMS_BY_NAME.get(value.lower())

    @property
    def is_session(self) -> bool:
        return self in (DigestAlgorithm.MD5_SESS, DigestAlgorithm.SHA256_SESS)

    @property
    def uses_sha256(self) -> bool:
        return self in (DigestAlgorithm.SHA256, DigestAlgorithm.SHA256_SESS)

    @property
    def hex_length(self) -> int:
        return 64 if self.uses_sha256 else 32

    def hash_hex(self, data: str) -> str:
        try:
            # A parser that kept undecodable bytes as surrogate escapes gets them back.
            raw = data.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            # Any other lone surrogate: hash *something* rather than raise on peer input.
            raw = data.encode("utf-8", "surrogatepass")
        if self.uses_sha256:
            return hashlib.sha256(raw).hexdigest()
        return hashlib.md5(raw).hexdigest()


_ALGORITHMS_BY_NAME = {a.value.lower(): a for a in DigestAlgorithm}


@dataclass(frozen=True, slots=True, repr=False)
class UserSecret:
    """What the server stores about an account: HA1 = H(username:realm:password), hex.

    An account may hold one or both; one holding only ``ha1_md5`` can only authenticate
    with MD5. The repr shows which hashes are present, never their value (HA1 is as good as
    the password for this realm).
    """

    ha1_md5: str | None = None
    ha1_sha256: str | None = None

    def __post_init__(self) -> None:
        for name, length in (("ha1_md5", 32), ("ha1_sha256", 64)):
            value = getattr(self, name)
            if value is None:
                continue
            if len(value) != length or any(c not in "0123456789abcdefABCDEF" for c in value):
                raise ValueError(f"{name} must be {length} hex digits")
            object.__setattr__(self, name, value.lower())
        if self.ha1_md5 is None and self.ha1_sha256 is None:
            raise ValueError("a UserSecret needs at least one HA1")

    @classmethod
    def from_password(cls, username: str, realm: str, password: str) -> UserSecret:
        a1 = f"{username}:{realm}:{password}"
        return cls(
            ha1_md5=DigestAlgorithm.MD5.hash_hex(a1),
            ha1_sha256=DigestAlgorithm.SHA256.hash_hex(a1),
        )

    def ha1_for(self, algorithm: DigestAlgorithm) -> str | None:
        return self.ha1_sha256 if algorithm.uses_sha256 else self.ha1_md5

    def __repr__(self) -> str:
        md5 = "<hidden>" if self.ha1_md5 is not None else "None"
        sha = "<hidden>" if self.ha1_sha256 is not None else "None"
        return f"UserSecret(ha1_md5={md5}, ha1_sha256={sha})"


def compute_response(
    algorithm: DigestAlgorithm,
    ha1: str,
    method: str,
    uri: str,
    nonce: str,
    nc: str | None,
    cnonce: str | None,
    qop: str | None,
) -> str:
    """The ``response`` value (RFC 7616 §3.4.1-3.4.3; RFC 2069 form when ``qop`` is None).

    ``nc`` is the 8-hex-digit string exactly as sent. Only ``qop=auth`` is supported:
    SIP bodies are rarely integrity-protected by Digest and nobody offers ``auth-int``.
    """
    if algorithm.is_session:
        if cnonce is None:
            raise LocalProtocolError("-sess algorithms need a cnonce")
        ha1 = algorithm.hash_hex(f"{ha1}:{nonce}:{cnonce}")
    ha2 = algorithm.hash_hex(f"{method}:{uri}")
    if qop is None:
        return algorithm.hash_hex(f"{ha1}:{nonce}:{ha2}")
    if qop.lower() != "auth":
        raise LocalProtocolError(f"unsupported qop {qop!r}")
    if nc is None or cnonce is None:
        raise LocalProtocolError("qop=auth needs nc and cnonce")
    return algorithm.hash_hex(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


class AuthFailure(enum.Enum):
    """Why a verify failed; for logs and metrics, never to choose between 401 responses."""

    MISSING = "missing"
    NOT_DIGEST = "not-digest"
    MALFORMED = "malformed"
    WRONG_REALM = "wrong-realm"
    BAD_NONCE = "bad-nonce"
    STALE_NONCE = "stale-nonce"
    REPLAY = "replay"
    BAD_RESPONSE = "bad-response"
    UNKNOWN_USER = "unknown-user"
    UNSUPPORTED_ALGORITHM = "unsupported-algorithm"
    URI_MISMATCH = "uri-mismatch"


_BAD_REQUEST = frozenset({AuthFailure.MALFORMED, AuthFailure.URI_MISMATCH})


@dataclass(frozen=True, slots=True)
class AuthResult:
    """Outcome of :meth:`DigestAuthenticator.verify`.

    ``username`` is set only when the response proved knowledge of the account's secret
    (``ok``, or ``stale`` which re-challenges). ``claimed_username`` is whatever the peer
    wrote, for logs and rate limiting only: never authorise on it.
    """

    ok: bool
    username: str | None = None
    stale: bool = False
    reason: AuthFailure | None = None
    claimed_username: str | None = None

    @property
    def bad_request(self) -> bool:
        """Answer 400 instead of re-challenging (RFC 7616 §3.4, §3.4.6)."""
        return self.reason in _BAD_REQUEST


def _fail(reason: AuthFailure, claimed: str | None = None) -> AuthResult:
    return AuthResult(ok=False, reason=reason, claimed_username=claimed)


_NONCE_RANDOM = 12
_NONCE_MAC = 16  # 128-bit truncated HMAC-SHA256: forging needs 2**128 tries.
_NONCE_RAW = 8 + _NONCE_RANDOM + _NONCE_MAC
_NONCE_TEXT = (_NONCE_RAW * 4) // 3  # 36 bytes → 48 base64url chars, no padding
_NC_MAX = 0xFFFFFFFF
_NO_QOP_USED = _NC_MAX + 1  # a no-qop nonce is single use: any nc compares <= this
_HEX = frozenset("0123456789abcdefABCDEF")


class DigestAuthenticator:
    """Issues Digest challenges for one realm and verifies credentials against them.

    Settings, each an interop or security choice:

    * ``nonce_ttl``: a nonce older than this is stale (re-challenge with ``stale=true``);
    * ``algorithms``: offered in this order, one challenge each; clients take the first
      they support (RFC 8760 §2.4), so SHA-256 first and MD5 for JsSIP/SIP.js/sipp;
    * ``max_tracked_nonces``: bound of the nc-replay memory (oldest first use evicted);
    * ``allow_no_qop``: accept RFC 2069 responses without qop/nc/cnonce. Off by default:
      without nc there is no replay counter, so such a nonce is accepted once only;
    * ``check_uri``: require the ``uri`` parameter to equal the Request-URI (RFC 7616
      §3.4.6). Turn off only behind a proxy that rewrites the Request-URI;
    * ``clock_skew``: how far in the future a nonce's issue time may be, for nodes whose
      clocks disagree a little.
    """

    def __init__(
        self,
        realm: str,
        *,
        secret_key: bytes,
        nonce_ttl: float = 300.0,
        algorithms: tuple[DigestAlgorithm, ...] = (DigestAlgorithm.SHA256, DigestAlgorithm.MD5),
        max_tracked_nonces: int = 200_000,
        random_bytes: Callable[[int], bytes] = os.urandom,
        allow_no_qop: bool = False,
        check_uri: bool = True,
        clock_skew: float = 30.0,
    ) -> None:
        if len(secret_key) < 16:
            raise LocalProtocolError("secret_key must be at least 16 bytes")
        if not algorithms or len(set(algorithms)) != len(algorithms):
            raise LocalProtocolError("algorithms must be non-empty and without duplicates")
        if nonce_ttl <= 0 or max_tracked_nonces < 1 or clock_skew < 0:
            raise LocalProtocolError("nonce_ttl, max_tracked_nonces and clock_skew out of range")
        self.realm = realm
        self.algorithms = algorithms
        self.nonce_ttl = nonce_ttl
        self.max_tracked_nonces = max_tracked_nonces
        self.allow_no_qop = allow_no_qop
        self.check_uri = check_uri
        self.clock_skew = clock_skew
        self._key = secret_key
        self._realm_bytes = realm.encode("utf-8")
        self._random_bytes = random_bytes
        # opaque must come back unchanged (RFC 7616 §3.3) but carries no security here: the
        # nonce already authenticates itself. It is not checked, as some UAs drop it.
        opaque_mac = hmac.new(secret_key, b"opaque\x00" + self._realm_bytes, hashlib.sha256)
        self._opaque = base64.urlsafe_b64encode(opaque_mac.digest()[:12]).decode("ascii")
        # Unknown users are hashed against this so their timing matches a wrong password.
        # Random per instance: a peer must not be able to compute a matching response.
        dummy = random_bytes(32)
        self._dummy = UserSecret(
            ha1_md5=hashlib.md5(dummy).hexdigest(), ha1_sha256=hashlib.sha256(dummy).hexdigest()
        )
        # nonce -> (issued_at, highest nc), in first-use order for eviction.
        self._tracked: OrderedDict[str, tuple[float, int]] = OrderedDict()
        # Nonces issued at or before this whose state was evicted early: a first use of one
        # of them cannot be told from a replay, so it is treated as stale (one extra
        # round-trip for the phone, never an accepted replay).
        self._evicted_until = float("-inf")

    # -- challenges -------------------------------------------------------------------

    def challenge(self, now: float, *, stale: bool = False) -> list[str]:
        """``WWW-Authenticate`` / ``Proxy-Authenticate`` values, preferred algorithm first.

        One fresh nonce is shared by all values (as in RFC 7616 §3.9.1): the client uses
        exactly one of them.
        """
        nonce = self._make_nonce(now)
        values: list[str] = []
        for algorithm in self.algorithms:
            params = [
                ("realm", self.realm, True),
                ("nonce", nonce, True),
                ("opaque", self._opaque, True),
                ("algorithm", algorithm.value, False),
                ("qop", "auth", True),  # qop-options is always quoted (RFC 7616 §3.3)
            ]
            if stale:
                params.append(("stale", "true", False))
            values.append(format_auth_header("Digest", params))
        return values

    def _make_nonce(self, now: float) -> str:
        issued_ms = round(now * 1000)
        if issued_ms < 0:
            raise LocalProtocolError("now must be wall-clock epoch seconds")
        rand = self._random_bytes(_NONCE_RANDOM)
        if len(rand) != _NONCE_RANDOM:
            raise LocalProtocolError("random_bytes returned the wrong length")
        body = issued_ms.to_bytes(8, "big") + rand
        mac = hmac.digest(self._key, body + self._realm_bytes, "sha256")
        return base64.urlsafe_b64encode(body + mac[:_NONCE_MAC]).decode("ascii")

    def _nonce_issued_at(self, nonce: str) -> float | None:
        """Issue time of a nonce we made for this realm, or None if forged or garbled."""
        if len(nonce) != _NONCE_TEXT:
            return None
        try:
            raw = base64.b64decode(nonce, altchars=b"-_", validate=True)
        except (ValueError, binascii.Error):
            return None
        body, mac = raw[: 8 + _NONCE_RANDOM], raw[8 + _NONCE_RANDOM :]
        expected = hmac.digest(self._key, body + self._realm_bytes, "sha256")
        if not hmac.compare_digest(expected[:_NONCE_MAC], mac):
            return None
        return int.from_bytes(body[:8], "big") / 1000.0

    # -- verification -----------------------------------------------------------------

    def verify(
        self,
        *,
        method: str,
        request_uri: str,
        authorization: str | None,
        lookup: Callable[[str], UserSecret | None],
        now: float,
    ) -> AuthResult:
        """Check one ``Authorization`` / ``Proxy-Authorization`` value for this request.

        Never raises on peer input. With several such headers (one per realm, RFC 3261
        §22.3) pass the one :func:`credentials_for_realm` picks.
        """
        if authorization is None or not authorization.strip():
            return _fail(AuthFailure.MISSING)
        try:
            scheme, rest = split_scheme(authorization)
            if scheme.lower() != "digest":
                # RFC 4475 §3.3.7: an unknown scheme is well-formed; the answer is a challenge.
                return _fail(AuthFailure.NOT_DIGEST)
            params = parse_params(rest)
        except MalformedAuthHeader:
            return _fail(AuthFailure.MALFORMED)
        return self._verify_params(params, method, request_uri, lookup, now)

    def _verify_params(
        self,
        params: dict[str, str],
        method: str,
        request_uri: str,
        lookup: Callable[[str], UserSecret | None],
        now: float,
    ) -> AuthResult:
        username = _username(params)
        if username is None:
            return _fail(AuthFailure.MALFORMED)
        realm = params.get("realm")
        nonce = params.get("nonce")
        uri = params.get("uri")
        response = params.get("response")
        if realm is None or nonce is None or uri is None or response is None:
            return _fail(AuthFailure.MALFORMED, username)
        if realm != self.realm:
            return _fail(AuthFailure.WRONG_REALM, username)
        algorithm = DigestAlgorithm.from_param(params.get("algorithm"))
        if algorithm is None or algorithm not in self.algorithms:
            return _fail(AuthFailure.UNSUPPORTED_ALGORITHM, username)

        qop = params.get("qop")
        nc = params.get("nc")
        cnonce = params.get("cnonce")
        if qop is None:
            # RFC 2069 form: cnonce and nc MUST NOT be sent without qop (RFC 2617 §3.2.2).
            if not self.allow_no_qop or nc is not None or cnonce is not None:
                return _fail(AuthFailure.MALFORMED, username)
            if algorithm.is_session:
                return _fail(AuthFailure.MALFORMED, username)
            nc_value = _NO_QOP_USED
        else:
            # We only ever offer qop="auth" (RFC 7616 §3.4: the client picks one offered).
            if qop.lower() != "auth" or nc is None or cnonce is None:
                return _fail(AuthFailure.MALFORMED, username)
            if len(nc) != 8 or not _HEX.issuperset(nc):
                return _fail(AuthFailure.MALFORMED, username)
            nc_value = int(nc, 16)
            if nc_value == 0:  # nc counts from 00000001 (RFC 7616 §3.4)
                return _fail(AuthFailure.MALFORMED, username)

        if self.check_uri and not _uri_matches(uri, request_uri):
            return _fail(AuthFailure.URI_MISMATCH, username)

        issued = self._nonce_issued_at(nonce)
        if issued is None or issued - now > self.clock_skew:
            return _fail(AuthFailure.BAD_NONCE, username)

        # From here on every path does the same hashing whether or not the account
        # exists, and the comparison is constant-time (no user enumeration by timing).
        secret = lookup(username)
        account_ha1 = secret.ha1_for(algorithm) if secret is not None else None
        ha1 = account_ha1 if account_ha1 is not None else self._dummy.ha1_for(algorithm)
        assert ha1 is not None  # the dummy holds both
        expected = compute_response(algorithm, ha1, method, uri, nonce, nc, cnonce, qop)
        matches = hmac.compare_digest(
            expected.encode("ascii"), response.lower().encode("utf-8", "surrogatepass")
        )
        if secret is None:
            return _fail(AuthFailure.UNKNOWN_USER, username)
        if account_ha1 is None:
            return _fail(AuthFailure.UNSUPPORTED_ALGORITHM, username)
        if not matches:
            return _fail(AuthFailure.BAD_RESPONSE, username)

        # The digest is right. A stale verdict is only given now, so that stale=true tells
        # the client its credentials were good (RFC 7616 §3.3).
        if now - issued > self.nonce_ttl:
            return self._stale(username)
        return self._count(nonce, issued, nc_value, username, now)

    def _stale(self, username: str) -> AuthResult:
        return AuthResult(
            ok=False,
            username=username,
            stale=True,
            reason=AuthFailure.STALE_NONCE,
            claimed_username=username,
        )

    def _count(
        self, nonce: str, issued: float, nc_value: int, username: str, now: float
    ) -> AuthResult:
        """Enforce a strictly increasing nc per nonce (RFC 7616 §3.4, §5.12)."""
        self._expire_front(now)
        seen = self._tracked.get(nonce)
        if seen is None:
            if issued <= self._evicted_until:
                return self._stale(username)
            self._tracked[nonce] = (issued, nc_value)
            self._evict(now)
        else:
            if nc_value <= seen[1]:
                return _fail(AuthFailure.REPLAY, username)
            self._tracked[nonce] = (issued, nc_value)
        return AuthResult(ok=True, username=username, claimed_username=username)

    # -- replay-state housekeeping ----------------------------------------------------

    @property
    def tracked_nonces(self) -> int:
        return len(self._tracked)

    def next_deadline(self) -> float | None:
        """When the oldest tracked nonce expires; a memory hint, correctness needs no timer."""
        for issued, _ in self._tracked.values():
            return issued + self.nonce_ttl
        return None

    def handle_timer(self, now: float) -> None:
        self._expire_front(now)

    def expire(self, now: float) -> int:
        """Drop the state of every expired nonce (a full sweep); returns how many."""
        dead = [n for n, (issued, _) in self._tracked.items() if now - issued > self.nonce_ttl]
        for nonce in dead:
            del self._tracked[nonce]
        if now - self._evicted_until > self.nonce_ttl:
            self._evicted_until = float("-inf")
        return len(dead)

    def _expire_front(self, now: float) -> None:
        # Entries are in first-use order, which is nearly issue order: popping expired ones
        # from the front is amortised O(1) and catches almost all; expire() sweeps the rest.
        tracked = self._tracked
        while tracked:
            nonce, (issued, _) = next(iter(tracked.items()))
            if now - issued <= self.nonce_ttl:
                break
            del tracked[nonce]

    def _evict(self, now: float) -> None:
        while len(self._tracked) > self.max_tracked_nonces:
            _, (issued, _) = self._tracked.popitem(last=False)
            if now - issued <= self.nonce_ttl:
                self._evicted_until = max(self._evicted_until, issued)


def _username(params: dict[str, str]) -> str | None:
    """The username, from ``username`` or RFC 7616 §3.4.4's ``username*`` (not both)."""
    if params.get("userhash", "false").lower() != "false":
        return None  # we never offer userhash (RFC 7616 §3.4.4), so a client may not use it
    plain = params.get("username")
    extended = params.get("username*")
    if plain is not None:
        return None if extended is not None else plain
    if extended is None:
        return None
    # RFC 8187 ext-value: charset'language'percent-encoded; only UTF-8 is meaningful.
    charset, quote1, rest = extended.partition("'")
    _language, quote2, encoded = rest.partition("'")
    if not quote1 or not quote2 or charset.lower() != "utf-8":
        return None
    try:
        return _percent_decode(encoded)
    except ValueError:
        return None


def _percent_decode(text: str) -> str:
    out = bytearray()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "%":
            pair = text[i + 1 : i + 3]
            if len(pair) != 2 or not _HEX.issuperset(pair):
                raise ValueError("bad percent-encoding")
            out.append(int(pair, 16))
            i += 3
        else:
            out.extend(ch.encode("utf-8"))
            i += 1
    return out.decode("utf-8")


def _uri_matches(digest_uri: str, request_uri: str) -> bool:
    """RFC 7616 §3.4.6 / RFC 3261 §22.4: the ``uri`` parameter names the Request-URI.

    Plain string equality first, as phones copy the Request-URI verbatim. Failing that,
    the parts RFC 3261 §19.1.4 makes case-insensitive (scheme, host) are folded; user part,
    parameters and escapes must match as written (no full §19.1.4 URI equivalence).
    """
    if digest_uri == request_uri:
        return True
    return _normalise_uri(digest_uri) == _normalise_uri(request_uri)


def _normalise_uri(uri: str) -> str:
    uri = uri.strip()
    scheme, colon, rest = uri.partition(":")
    if not colon:
        return uri
    scheme = scheme.lower()
    if scheme not in ("sip", "sips"):
        return f"{scheme}:{rest}"
    at = rest.rfind("@")
    user, hostpart = (rest[: at + 1], rest[at + 1 :]) if at >= 0 else ("", rest)
    cut = len(hostpart)
    for sep in ";?":
        idx = hostpart.find(sep)
        if idx >= 0:
            cut = min(cut, idx)
    return f"{scheme}:{user}{hostpart[:cut].lower()}{hostpart[cut:]}"


def credentials_for_realm(values: Sequence[str], realm: str) -> str | None:
    """Pick the credentials meant for ``realm`` among several (RFC 3261 §22.3).

    Falls back to the first value, so :meth:`DigestAuthenticator.verify` reports why it
    does not fit (wrong realm, other scheme, malformed); None when there is none.
    """
    for value in values:
        try:
            header = parse_auth_header(value)
        except MalformedAuthHeader:
            continue
        if header.is_digest and header.params.get("realm") == realm:
            return value
    return values[0] if values else None


# -- client side (ucgate answering a trunk's or PBX's challenge) --------------------------


class UnsupportedChallenge(RemoteProtocolError):
    """A well-formed challenge we cannot answer (other scheme, algorithm or qop)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, status=None)


@dataclass(frozen=True, slots=True)
class DigestChallenge:
    """A parsed ``WWW-Authenticate`` / ``Proxy-Authenticate`` Digest challenge."""

    realm: str
    nonce: str
    algorithm: DigestAlgorithm
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False

    @classmethod
    def parse(cls, value: str) -> DigestChallenge:
        """Raise :class:`MalformedAuthHeader` or :class:`UnsupportedChallenge` if unusable."""
        header = parse_auth_header(value)
        if not header.is_digest:
            raise UnsupportedChallenge(f"auth scheme {header.scheme!r} is not Digest")
        params = header.params
        realm = params.get("realm")
        nonce = params.get("nonce")
        if realm is None or nonce is None:
            raise MalformedAuthHeader("challenge lacks realm or nonce")
        algorithm = DigestAlgorithm.from_param(params.get("algorithm"))
        if algorithm is None:
            raise UnsupportedChallenge("challenge uses an unknown algorithm")
        qop_options = params.get("qop")
        qop = tuple(q.strip().lower() for q in (qop_options or "").split(",") if q.strip())
        return cls(
            realm=realm,
            nonce=nonce,
            algorithm=algorithm,
            qop=qop,
            opaque=params.get("opaque"),
            stale=params.get("stale", "false").lower() == "true",
        )


def pick_challenge(values: Iterable[str]) -> DigestChallenge | None:
    """The first challenge we can answer: servers list their preference first (RFC 8760 §2.4)."""
    for value in values:
        try:
            challenge = DigestChallenge.parse(value)
        except RemoteProtocolError:
            continue
        if "auth" in challenge.qop or (not challenge.qop and not challenge.algorithm.is_session):
            return challenge
    return None


def build_authorization(
    challenge: DigestChallenge,
    *,
    method: str,
    uri: str,
    username: str,
    cnonce: str,
    nc: int = 1,
    password: str | None = None,
    secret: UserSecret | None = None,
) -> str:
    """An ``Authorization`` / ``Proxy-Authorization`` value answering ``challenge``.

    Give ``password`` or a ``secret`` holding the HA1 of the challenge's realm. ``cnonce``
    comes from the caller (sans-IO: it owns randomness), as does ``nc``, which it must
    increase for each request reusing the same nonce (RFC 7616 §3.4).
    """
    algorithm = challenge.algorithm
    if password is not None:
        secret = UserSecret.from_password(username, challenge.realm, password)
    if secret is None:
        raise LocalProtocolError("build_authorization needs a password or a secret")
    ha1 = secret.ha1_for(algorithm)
    if ha1 is None:
        raise LocalProtocolError(f"no HA1 for {algorithm.value}")
    if not 1 <= nc <= _NC_MAX:
        raise LocalProtocolError("nc must fit 8 hex digits and start at 1")
    if "auth" in challenge.qop:
        qop: str | None = "auth"
        nc_text: str | None = f"{nc:08x}"
        cnonce_value: str | None = cnonce
    elif not challenge.qop and not algorithm.is_session:
        qop = nc_text = cnonce_value = None  # RFC 2069 server
    else:
        raise UnsupportedChallenge("challenge offers no qop we support")
    response = compute_response(
        algorithm, ha1, method, uri, challenge.nonce, nc_text, cnonce_value, qop
    )
    params: list[tuple[str, str, bool]] = [
        ("username", username, True),
        ("realm", challenge.realm, True),
        ("nonce", challenge.nonce, True),
        ("uri", uri, True),
        ("response", response, True),
        ("algorithm", algorithm.value, False),
    ]
    if qop is not None and nc_text is not None and cnonce_value is not None:
        params += [("qop", qop, False), ("nc", nc_text, False), ("cnonce", cnonce_value, True)]
    if challenge.opaque is not None:
        params.append(("opaque", challenge.opaque, True))
    return format_auth_header("Digest", params)
