"""ucgate's configuration contract: one TOML file, overridden by ``UCGATE_*`` variables.

Every setting that changes protocol behaviour lives here with its RFC reference, so
interop quirks are named settings rather than constants buried in the core.
``config/ucgate.example.toml`` documents each key; a test keeps the two in step.

Errors are collected into one :class:`ConfigError` whose lines each start with the dotted
path of the offending key (``sip.listen[1]: unknown transport 'sctp'``). Messages never
echo a value, so a mistyped password cannot leak through an error report.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import json
import os
import re
import secrets
import socket
import ssl
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from difflib import get_close_matches
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ucgate import __version__
from ucgate.sip.peer import TransportKind
from ucgate.web.config import WebConfig

__all__ = [
    "ENV_PREFIX",
    "Agent",
    "ApiKey",
    "AuthConfig",
    "CallsConfig",
    "ConfigError",
    "DialRule",
    "Did",
    "DidTargetKind",
    "DigestAlgorithm",
    "FieldError",
    "HttpConfig",
    "ListenAddress",
    "LogConfig",
    "LogFormat",
    "LogLevel",
    "QueueConfig",
    "RegistrarConfig",
    "RoutingConfig",
    "Scope",
    "SipConfig",
    "SocketAddress",
    "StoreBackend",
    "StoreConfig",
    "Trunk",
    "UcgateConfig",
    "load_config",
    "validate_config",
]

ENV_PREFIX = "UCGATE_"
# `UCGATE_SIP__DOMAIN` -> ("sip", "domain"): the pydantic-settings convention, done by hand
# because the source is an explicit mapping and errors must name the variable.
_ENV_NESTING = "__"
# "[::1]:8080" is an address, not a JSON list.
_BRACKETED_IPV6 = re.compile(r"^\[[0-9A-Fa-f:.]+\](:\d+)?$")

_MODEL_CONFIG = ConfigDict(extra="forbid", frozen=True)


class ConfigError(Exception):
    """The configuration is unusable; each problem is one line naming its key."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        super().__init__("\n".join(self.problems))


class FieldError(ValueError):
    """A validator's complaint about a key below the model that raised it.

    Cross-field checks run at model level, where pydantic would blame the whole model;
    carrying the relative path lets the message blame the key that must change.
    """

    def __init__(self, path: tuple[str | int, ...], why: str) -> None:
        super().__init__(why)
        self.path = path
        self.why = why


class DigestAlgorithm(enum.StrEnum):
    """Digest algorithms a challenge may offer (RFC 7616 §3.2, RFC 8760 §2.2 for SIP).

    The ``-sess`` variants start from the same H(username:realm:password) as their base
    algorithm (RFC 7616 §3.4.2), so a stored HA1 serves both.
    """

    SHA_256 = "SHA-256"
    MD5 = "MD5"
    SHA_256_SESS = "SHA-256-sess"
    MD5_SESS = "MD5-sess"

    @property
    def hash_name(self) -> str:
        """The hashlib name of the underlying hash function."""
        return "md5" if self in (DigestAlgorithm.MD5, DigestAlgorithm.MD5_SESS) else "sha256"


class Scope(enum.StrEnum):
    """What an HTTP API key may do."""

    PRESENCE_READ = "presence:read"
    PRESENCE_WRITE = "presence:write"
    # Read call records (GET /v1/calls); they name callers, so not part of presence:read.
    CALLS_READ = "calls:read"
    # Omnichannel sessions (/v1/sessions, /v1/events) and their metrics (/v1/metrics,
    # /v1/reports); metrics name agents but no customers, hence their own scope.
    SESSIONS_READ = "sessions:read"
    SESSIONS_WRITE = "sessions:write"
    METRICS_READ = "metrics:read"
    ADMIN = "admin"


class StoreBackend(enum.StrEnum):
    MEMORY = "memory"
    REDIS = "redis"


class LogFormat(enum.StrEnum):
    CONSOLE = "console"
    JSON = "json"


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


# RFC 1123 §2.1 host names; SIP hosts (RFC 3261 §25.1 `hostname`) are the same shape.
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)
# RFC 3261 §25.1: user = 1*( unreserved / escaped / user-unreserved ).
_SIP_USER = re.compile(r"^(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/]|%[0-9A-Fa-f]{2})+$")
_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HEX = re.compile(r"^[0-9a-fA-F]+$")
# Lower bounds against guessable keys: the nonce HMAC key and HTTP API keys.
_MIN_SECRET_LENGTH = 16
_MIN_API_KEY_LENGTH = 12


def _check_host(host: str) -> str:
    """Return ``host`` as an IP literal (IPv6 unbracketed) or a host name, or raise."""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if ":" in host:
        raise ValueError("is not a valid IPv6 address")
    if not _HOSTNAME.match(host):
        raise ValueError("is not a valid host name or IP address")
    return host


def _split_host_port(text: str) -> tuple[str, int]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("unterminated '[' in IPv6 address")
        host, rest = text[: end + 1], text[end + 1 :]
        if not rest.startswith(":"):
            raise ValueError("missing ':port' after the address")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError("missing ':port'")
        if ":" in host:
            raise ValueError("an IPv6 address must be in brackets, e.g. [::1]:5060")
    if not port_text.isdigit():
        raise ValueError("port must be a number")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port {port} is out of range 0-65535")
    return host, port


def _format_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    """Anchor a relative path at the config file's directory, not the process's cwd."""
    value = value.expanduser()
    base = info.context.get("base_dir") if isinstance(info.context, dict) else None
    if isinstance(base, Path) and not value.is_absolute():
        # normpath, not resolve(): "../var" reads better in logs, and symlinks stay.
        return Path(os.path.normpath(base / value))
    return value


def _check_printable(value: str) -> str:
    if _CONTROL.search(value):
        # A CR/LF here would inject header lines into every message we build.
        raise ValueError("must not contain control characters")
    return value


class SocketAddress(BaseModel):
    """``host:port`` (IPv6 as ``[::1]:8080``)."""

    model_config = _MODEL_CONFIG

    host: str
    port: int = Field(ge=0, le=65535)

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: object) -> object:
        if isinstance(value, str):
            host, port = _split_host_port(value.strip())
            return {"host": host, "port": port}
        return value

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return _check_host(value)

    def __str__(self) -> str:
        return _format_host_port(self.host, self.port)


class ListenAddress(BaseModel):
    """A SIP listener, written ``scheme:host:port`` (``udp:[::1]:5060``).

    Port 0 asks the OS for a free port (handy in tests); the server must then advertise
    the port it actually bound.
    """

    model_config = _MODEL_CONFIG

    kind: TransportKind
    host: str
    port: int = Field(ge=0, le=65535)

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        scheme, sep, rest = value.strip().partition(":")
        if not sep:
            raise ValueError("expected scheme:host:port, e.g. 'udp:127.0.0.1:5060'")
        try:
            kind = TransportKind(scheme.lower())
        except ValueError:
            known = ", ".join(k.value for k in TransportKind)
            raise ValueError(f"unknown transport {scheme!r} (known: {known})") from None
        host, port = _split_host_port(rest)
        return {"kind": kind, "host": host, "port": port}

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return _check_host(value)

    @property
    def secure(self) -> bool:
        """Whether this listener needs a certificate (RFC 3261 §26.2, RFC 7118 §5)."""
        return self.kind in (TransportKind.TLS, TransportKind.WSS)

    def __str__(self) -> str:
        return f"{self.kind.value}:{_format_host_port(self.host, self.port)}"


def _default_listen() -> tuple[ListenAddress, ...]:
    return (
        ListenAddress(kind=TransportKind.UDP, host="127.0.0.1", port=5060),
        ListenAddress(kind=TransportKind.TCP, host="127.0.0.1", port=5060),
    )


class SipConfig(BaseModel):
    model_config = _MODEL_CONFIG

    # SIP domain of every AOR (sip:alice@<domain>) and the digest realm (RFC 3261 §22.1).
    domain: str
    listen: tuple[ListenAddress, ...] = Field(default_factory=_default_listen)
    # Host written into Via sent-by, Record-Route and Contact when the listener's own
    # address is a wildcard or sits behind NAT (RFC 3261 §18.2.1, §20.42).
    advertised_host: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # RFC 3261 §17.1.1.1: T1 RTT estimate, T2 cap on non-INVITE retransmit interval,
    # T4 how long the network may hold a message.
    t1: float = Field(default=0.5, gt=0, le=60)
    t2: float = Field(default=4.0, gt=0, le=600)
    t4: float = Field(default=5.0, gt=0, le=600)
    # Larger messages are refused with 513 (RFC 3261 §21.5.14); 65535 fits any UDP datagram.
    max_message_size: int = Field(default=65535, ge=1300, le=16 * 1024 * 1024)
    # Max-Forwards on requests we originate (RFC 3261 §8.1.1.6 recommends 70).
    max_forwards: int = Field(default=70, ge=1, le=255)
    # User-Agent / Server header value (RFC 3261 §20.41, §20.35).
    user_agent: str = Field(default=f"ucgate/{__version__}", min_length=1, max_length=256)

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        # The domain is the digest realm too, and realms are compared case-sensitively
        # (RFC 7616 §3.4.2), so it is checked but never rewritten.
        _check_host(value)
        return value

    @field_validator("advertised_host")
    @classmethod
    def _advertised_host(cls, value: str | None) -> str | None:
        return None if value is None else _check_host(value)

    @field_validator("listen")
    @classmethod
    def _unique_listeners(cls, value: tuple[ListenAddress, ...]) -> tuple[ListenAddress, ...]:
        if not value:
            raise ValueError("must list at least one listener")
        seen: dict[tuple[TransportKind, str, int], int] = {}
        for index, listener in enumerate(value):
            key = (listener.kind, listener.host, listener.port)
            if key in seen and listener.port != 0:
                raise FieldError((index,), f"duplicates listen[{seen[key]}] ({listener})")
            seen.setdefault(key, index)
        return value

    @field_validator("tls_cert", "tls_key")
    @classmethod
    def _anchor(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else _resolve_path(value, info)

    @field_validator("t2")
    @classmethod
    def _t2_not_below_t1(cls, value: float, info: ValidationInfo) -> float:
        t1 = info.data.get("t1")
        if isinstance(t1, float) and value < t1:
            # §17.1.2.2 doubles the interval from T1 up to T2; a cap below the start
            # would make no sense.
            raise ValueError(f"must be >= t1 ({t1})")
        return value

    @field_validator("user_agent")
    @classmethod
    def _user_agent(cls, value: str) -> str:
        return _check_printable(value)

    @model_validator(mode="after")
    def _tls_material(self) -> SipConfig:
        secure = [(i, str(lst)) for i, lst in enumerate(self.listen) if lst.secure]
        if not secure:
            return self
        index, text = secure[0]
        for name, path in (("tls_cert", self.tls_cert), ("tls_key", self.tls_key)):
            if path is None:
                raise FieldError((name,), f"required because listen[{index}] is {text!r}")
            try:
                path.open("rb").close()
            except OSError as exc:
                raise FieldError((name,), f"cannot read {path} ({exc.strerror})") from None
        assert self.tls_cert is not None and self.tls_key is not None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            # An encrypted key would make OpenSSL prompt on the terminal; the empty
            # password callback turns that into an error instead.
            context.load_cert_chain(self.tls_cert, self.tls_key, password=lambda: b"")
        except ssl.SSLError as exc:
            raise FieldError(
                ("tls_key",),
                f"tls_cert and tls_key are not a usable PEM certificate/key pair ({exc.reason})",
            ) from None
        return self


class RegistrarConfig(BaseModel):
    model_config = _MODEL_CONFIG

    # RFC 3261 §10.3 step 7: shorter requested expirations get 423 with Min-Expires.
    min_expires: int = Field(default=60, ge=1, le=2**32 - 1)
    # Longer requested expirations are shortened to this (§10.3 step 7).
    max_expires: int = Field(default=3600, ge=1, le=2**32 - 1)
    # Used when the REGISTER carries neither Expires nor an expires param (§10.2.1.1).
    default_expires: int = Field(default=3600, ge=1, le=2**32 - 1)
    max_contacts_per_aor: int = Field(default=10, ge=1, le=1000)

    @field_validator("max_expires")
    @classmethod
    def _max_not_below_min(cls, value: int, info: ValidationInfo) -> int:
        low = info.data.get("min_expires")
        if isinstance(low, int) and value < low:
            raise ValueError(f"must be >= min_expires ({low})")
        return value

    @field_validator("default_expires")
    @classmethod
    def _default_between(cls, value: int, info: ValidationInfo) -> int:
        low, high = info.data.get("min_expires"), info.data.get("max_expires")
        if isinstance(low, int) and isinstance(high, int) and not low <= value <= high:
            raise ValueError(f"must lie between min_expires ({low}) and max_expires ({high})")
        return value


def _random_secret() -> SecretStr:
    return SecretStr(secrets.token_urlsafe(32))


class AuthConfig(BaseModel):
    model_config = _MODEL_CONFIG

    # How long a nonce is accepted; after it the challenge says stale=true (RFC 7616 §3.3).
    nonce_ttl: int = Field(default=300, ge=5, le=86400)
    # HMAC key that signs nonces so any node of a site can verify them. Random per
    # process by default, which only suits a single node.
    secret: SecretStr = Field(default_factory=_random_secret)
    # Offered in this order of preference, one challenge each (RFC 7616 §3.7, RFC 8760 §2.4).
    # The -sess variants are accepted but phones rarely implement them.
    # MD5 on top by default: sipp 3.6 reads only the topmost challenge and aborts on anything
    # but MD5, while RFC 8760 clients still get SHA-256 offered and sites whose phones all
    # do SHA-256 put it first. Requests over WebSocket get MD5 alone (see
    # websocket_md5_only): JsSIP keeps the *last* challenge, SIP.js the first.
    algorithms: tuple[DigestAlgorithm, ...] = (DigestAlgorithm.MD5, DigestAlgorithm.SHA_256)
    # Challenge requests that arrive over WebSocket (RFC 7118) with MD5 only, when MD5 is
    # in `algorithms`: browser SIP stacks do nothing else and cannot pick among several.
    websocket_md5_only: bool = True

    @field_validator("secret")
    @classmethod
    def _secret_length(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < _MIN_SECRET_LENGTH:
            raise ValueError(f"must be at least {_MIN_SECRET_LENGTH} characters long")
        return value

    @field_validator("algorithms")
    @classmethod
    def _unique_algorithms(cls, value: tuple[DigestAlgorithm, ...]) -> tuple[DigestAlgorithm, ...]:
        if not value:
            raise ValueError("must list at least one algorithm")
        if len(set(value)) != len(value):
            raise ValueError("lists an algorithm twice")
        return value


class HttpConfig(BaseModel):
    model_config = _MODEL_CONFIG

    listen: SocketAddress = Field(
        default_factory=lambda: SocketAddress(host="127.0.0.1", port=8080)
    )


class StoreConfig(BaseModel):
    model_config = _MODEL_CONFIG

    backend: StoreBackend = StoreBackend.MEMORY
    redis_url: str | None = None
    data_dir: Path = Field(default=Path("var/ucgate"), validate_default=True)

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is None:
            return None
        # The URL may carry a password, so the message never repeats it.
        if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("data_dir")
    @classmethod
    def _anchor(cls, value: Path, info: ValidationInfo) -> Path:
        return _resolve_path(value, info)

    @model_validator(mode="after")
    def _redis_needs_url(self) -> StoreConfig:
        if self.backend is StoreBackend.REDIS and self.redis_url is None:
            raise FieldError(("redis_url",), "required when backend = 'redis'")
        return self


class LogConfig(BaseModel):
    model_config = _MODEL_CONFIG

    format: LogFormat = LogFormat.CONSOLE
    level: LogLevel = LogLevel.INFO

    @field_validator("format", "level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class _Credentials(BaseModel):
    """A digest identity: the user ``id`` under the realm ``sip.domain``.

    Exactly one of the clear password or a precomputed HA1 (RFC 7616 §3.4.2:
    H(username:realm:password)) is given, so a site can avoid keeping clear passwords.
    """

    model_config = _MODEL_CONFIG

    id: str = Field(min_length=1, max_length=128)
    password: SecretStr | None = None
    ha1_md5: SecretStr | None = None
    ha1_sha256: SecretStr | None = None

    @field_validator("id")
    @classmethod
    def _user_part(cls, value: str) -> str:
        if not _SIP_USER.match(value):
            raise ValueError("must be a valid SIP user part (RFC 3261 §25.1 'user')")
        return value

    @field_validator("password")
    @classmethod
    def _password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            raise ValueError("must not be empty")
        return value

    @field_validator("ha1_md5", "ha1_sha256")
    @classmethod
    def _ha1_hex(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is None:
            return None
        digits = 32 if info.field_name == "ha1_md5" else 64
        text = value.get_secret_value()
        if len(text) != digits or not _HEX.match(text):
            raise ValueError(f"must be {digits} hexadecimal digits")
        return SecretStr(text.lower())

    @model_validator(mode="after")
    def _exactly_one_credential(self) -> _Credentials:
        given = [n for n in ("password", "ha1_md5", "ha1_sha256") if getattr(self, n) is not None]
        if len(given) != 1:
            found = ", ".join(given) if given else "none"
            raise FieldError(
                ("password",),
                f"exactly one of password, ha1_md5, ha1_sha256 is required (found: {found})",
            )
        return self

    def ha1(self, algorithm: DigestAlgorithm, realm: str) -> str | None:
        """H(username:realm:password) as lowercase hex, or None if it cannot be known.

        A stored HA1 answers only its own hash function; a clear password answers any
        (RFC 7616 §3.4.2). For ``-sess`` algorithms this is the value before the
        nonce/cnonce step.
        """
        stored = {"md5": self.ha1_md5, "sha256": self.ha1_sha256}[algorithm.hash_name]
        if stored is not None:
            return stored.get_secret_value()
        if self.password is None:
            return None
        data = f"{self.id}:{realm}:{self.password.get_secret_value()}".encode()
        return hashlib.new(algorithm.hash_name, data).hexdigest()

    @property
    def stored_hash(self) -> str | None:
        """hashlib name of the function a stored HA1 was made with; None for a password."""
        if self.ha1_md5 is not None:
            return "md5"
        if self.ha1_sha256 is not None:
            return "sha256"
        return None


_CHANNELS = ("voice", "chat", "email", "sms", "video", "social")
_SKILL = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_MIN_PROFICIENCY = 1
_MAX_PROFICIENCY = 10


def _default_capacity() -> dict[str, int]:
    return {"voice": 1, "chat": 3, "email": 5}


class Agent(_Credentials):
    """A contact-center agent; registers as ``sip:<id>@<sip.domain>``."""

    display_name: str | None = Field(default=None, max_length=128)
    # Concurrent interactions per channel the agent can hold (issue 5 routes by it; presence
    # shows used/free). Channels not listed have capacity 0.
    capacity: dict[str, int] = Field(default_factory=_default_capacity)

    @field_validator("capacity")
    @classmethod
    def _capacity(cls, value: dict[str, int]) -> dict[str, int]:
        for channel, slots in value.items():
            if channel not in _CHANNELS:
                raise ValueError(f"unknown channel {channel!r} (known: {', '.join(_CHANNELS)})")
            if not 0 <= slots <= 100:
                raise ValueError(f"{channel}: capacity must be between 0 and 100")
        return value

    # Skill name -> proficiency 1 (novice) .. 10 (expert); queues list required skills and
    # routing prefers the highest proficiency sum (docs/sessions.md).
    skills: dict[str, int] = Field(default_factory=dict)

    @field_validator("skills")
    @classmethod
    def _skills(cls, value: dict[str, int]) -> dict[str, int]:
        for skill, level in value.items():
            if not _SKILL.match(skill):
                raise FieldError((skill,), "skill names are 1-64 of a-z 0-9 _ - starting a-z")
            if not _MIN_PROFICIENCY <= level <= _MAX_PROFICIENCY:
                raise FieldError(
                    (skill,),
                    f"proficiency must be between {_MIN_PROFICIENCY} and {_MAX_PROFICIENCY}",
                )
        return value

    @field_validator("display_name")
    @classmethod
    def _display_name(cls, value: str | None) -> str | None:
        return None if value is None else _check_printable(value)


class Trunk(_Credentials):
    """A PBX that registers as ``sip:<id>@<sip.domain>`` and exchanges calls with us."""

    # Sources whose requests count as this trunk without a digest challenge (IP
    # authentication, common with PBXs that cannot answer one). IPs or CIDRs, kept in
    # network form ("10.0.0.0/24", "127.0.0.1/32"). Empty: digest only.
    allowed_ips: tuple[str, ...] = ()

    @field_validator("allowed_ips")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        out: list[str] = []
        for index, text in enumerate(value):
            try:
                # strict=True: "10.0.0.1/24" has host bits set and is most likely a typo
                # for either the host or the network; refuse rather than guess.
                network = ipaddress.ip_network(text.strip(), strict=True)
            except ValueError:
                raise FieldError((index,), "is not an IP address or CIDR network") from None
            if str(network) in out:
                raise FieldError((index,), f"duplicates allowed_ips[{out.index(str(network))}]")
            out.append(str(network))
        return tuple(out)


class DidTargetKind(enum.StrEnum):
    AGENT = "agent"
    QUEUE = "queue"
    # "pin:<queue>": ucgate answers and asks for the PIN of the caller's open session
    # (sent as DTMF); the call then joins that session and rings its agent.
    PIN = "pin"


# "E.164-ish": an optional "+" and 1-15 digits (ITU-T E.164 §6 caps numbers at 15 digits);
# short internal numbers without "+" are allowed too.
_DID_NUMBER = re.compile(r"^\+?[0-9]{1,15}$")
_DIAL_PREFIX = re.compile(r"^\+?[0-9]{0,15}$")
_TARGET_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class Did(BaseModel):
    """A dialled number a trunk may call (the Request-URI user part), and where it goes."""

    model_config = _MODEL_CONFIG

    number: str
    # "agent:<agent id>" rings every registered device of that agent;
    # "queue:<queue id>" hands the call to a queue;
    # "pin:<queue id>" answers, collects a session PIN by DTMF, then joins that session.
    target: str

    @field_validator("number")
    @classmethod
    def _number(cls, value: str) -> str:
        if not _DID_NUMBER.match(value):
            raise ValueError("must be an optional '+' followed by 1-15 digits, e.g. '+15550100'")
        return value

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        kind, sep, ident = value.partition(":")
        if not sep or kind not in {k.value for k in DidTargetKind} or not ident:
            raise ValueError("must be 'agent:<id>', 'queue:<id>' or 'pin:<queue id>'")
        if kind in (DidTargetKind.QUEUE, DidTargetKind.PIN) and not _TARGET_ID.match(ident):
            raise ValueError("queue id must be 1-128 of A-Z a-z 0-9 . _ -")
        return value

    @property
    def target_kind(self) -> DidTargetKind:
        return DidTargetKind(self.target.partition(":")[0])

    @property
    def target_id(self) -> str:
        return self.target.partition(":")[2]


class DialRule(BaseModel):
    """Numbers starting with ``prefix`` leave through ``trunk``; the longest prefix wins."""

    model_config = _MODEL_CONFIG

    # "+" and digits; "+" alone matches every E.164 number. There is deliberately no
    # match-everything empty prefix: a catch-all must at least say "+".
    prefix: str = Field(min_length=1)
    trunk: str

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not _DIAL_PREFIX.match(value):
            raise ValueError("must be an optional '+' followed by up to 15 digits, e.g. '+1'")
        return value


class Application(_Credentials):
    """A non-agent SIP account allowed to watch presence (a wallboard, a CRM connector)."""


class CustomStatus(BaseModel):
    """A site-specific manual status, e.g. "lunch" or "training"."""

    model_config = _MODEL_CONFIG

    name: str = Field(min_length=1, max_length=32, pattern=r"^[a-z][a-z0-9_-]*$")
    # Whether routing may offer work to an agent in this status.
    routable: bool = False
    label: str | None = Field(default=None, max_length=64)


_BUILTIN_STATUSES = ("available", "away", "busy", "dnd", "break", "offline")


class PresenceConfig(BaseModel):
    model_config = _MODEL_CONFIG

    # Manual statuses besides the built-in available, away, busy, dnd, break, offline.
    custom_statuses: tuple[CustomStatus, ...] = ()
    # RFC 3856 §6.10 throttle: at most one NOTIFY per watcher per this many seconds; a
    # burst of changes inside the interval is coalesced into one NOTIFY with the latest
    # state. RFC 3856 suggests 5 s; BLF keys must show ringing at once, so the default is
    # 1 s and the first change after a quiet period is always sent immediately.
    notify_min_interval: float = Field(default=1.0, ge=0.0, le=60.0)
    # SUBSCRIBE expiry bounds (RFC 6665 §4.2.1.1: 423 below the minimum).
    subscribe_min_expires: int = Field(default=60, ge=1, le=86400)
    subscribe_max_expires: int = Field(default=3600, ge=1, le=86400)
    subscribe_default_expires: int = Field(default=3600, ge=1, le=86400)
    # PUBLISH expiry bounds (RFC 3903 §6 step 5: 423 below the minimum).
    publish_min_expires: int = Field(default=60, ge=1, le=86400)
    publish_max_expires: int = Field(default=3600, ge=1, le=86400)
    # How many past changes are kept so a client can resume with ?since=<version>.
    change_log_size: int = Field(default=10000, ge=100, le=1_000_000)

    @field_validator("custom_statuses")
    @classmethod
    def _custom_unique(cls, value: tuple[CustomStatus, ...]) -> tuple[CustomStatus, ...]:
        seen: set[str] = set()
        for item in value:
            if item.name in _BUILTIN_STATUSES:
                raise ValueError(f"{item.name!r} is a built-in status")
            if item.name in seen:
                raise ValueError(f"{item.name!r} is listed twice")
            seen.add(item.name)
        return value


def _check_channels(value: tuple[str, ...]) -> tuple[str, ...]:
    for index, channel in enumerate(value):
        if channel not in _CHANNELS:
            raise FieldError(
                (index,), f"unknown channel {channel!r} (known: {', '.join(_CHANNELS)})"
            )
        if channel in value[:index]:
            raise FieldError((index,), f"{channel!r} is listed twice")
    return value


class QueueConfig(BaseModel):
    """A routing queue (issue 5): which media it takes, which skills it needs, and timings."""

    model_config = _MODEL_CONFIG

    id: str
    # Channels this queue routes ("voice", "chat", "email", "sms", "video", "social").
    media: tuple[str, ...] = Field(min_length=1)
    # Skills an agent must ALL have (proficiency >= 1) to be offered this queue's work.
    skills: tuple[str, ...] = ()
    # Higher is served first when an agent could take work from several queues.
    priority: int = Field(default=0, ge=-100, le=100)
    # Seconds an offer may stay unanswered before the next agent is offered.
    offer_timeout: float = Field(default=20.0, gt=0, le=600)
    # Another queue's id a channel moves to after waiting overflow_after seconds; or none.
    overflow: str | None = None
    overflow_after: float = Field(default=120.0, gt=0, le=86400)
    # Service level threshold: answered within this many seconds of entering the queue.
    service_level_seconds: float = Field(default=20.0, gt=0, le=3600)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _TARGET_ID.match(value):
            raise ValueError("must be 1-128 of A-Z a-z 0-9 . _ -")
        return value

    @field_validator("media")
    @classmethod
    def _media(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _check_channels(value)

    @field_validator("skills")
    @classmethod
    def _skills(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for index, skill in enumerate(value):
            if not _SKILL.match(skill):
                raise FieldError((index,), "skill names are 1-64 of a-z 0-9 _ - starting a-z")
        return value


def _default_interrupt() -> dict[str, tuple[str, ...]]:
    # Voice may ring an agent busy with chats or emails; nothing else interrupts.
    return {"voice": ("chat", "email"), "chat": (), "email": ()}


class RoutingConfig(BaseModel):
    model_config = _MODEL_CONFIG

    # interrupt[X] lists the media an agent may be busy with and still be offered X.
    # Same-media work never blocks (capacity does); a channel absent here is exclusive.
    interrupt: dict[str, tuple[str, ...]] = Field(default_factory=_default_interrupt)
    # Multi-node (store backend "redis"): one node routes at a time, the holder of a Redis
    # lease of this many seconds (renewed every third of it). A standby takes over at most
    # about this long after the router dies; shorter means faster failover but more Redis
    # traffic and a router that loses the lease on a shorter Redis stall.
    leader_lease_ttl: float = Field(default=3.0, ge=0.5, le=60.0)

    @field_validator("interrupt")
    @classmethod
    def _interrupt(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        for channel, over in value.items():
            if channel not in _CHANNELS:
                raise FieldError(
                    (channel,), f"unknown channel {channel!r} (known: {', '.join(_CHANNELS)})"
                )
            try:
                _check_channels(over)
            except FieldError as exc:
                raise FieldError((channel, *exc.path), exc.why) from None
        return value


class CallsConfig(BaseModel):
    model_config = _MODEL_CONFIG

    # Seconds an offered call may ring unanswered. Then every callee leg is CANCELled and
    # the caller gets 480 Temporarily Unavailable if some device rang (RFC 3261
    # §21.4.18), or 408 Request Timeout if no device answered at all (§21.4.9).
    ring_timeout: int = Field(default=30, ge=1, le=600)
    # After-call work: seconds an agent shows "wrap_up" in presence after a call ends.
    wrap_up: int = Field(default=30, ge=0, le=3600)
    # RFC 4028 session timer: Session-Expires we ask for; a call whose refresh does not
    # arrive in time is ended (BYE), so a vanished phone does not keep a call alive.
    session_expires: int = Field(default=1800, ge=90, le=86400)
    # RFC 4028 §5: the smallest Session-Expires we accept (422 below it); never below 90.
    min_se: int = Field(default=90, ge=90, le=86400)
    # "pin:" DIDs: seconds a caller has to type a session PIN before being hung up.
    pin_timeout: int = Field(default=30, ge=5, le=300)

    @model_validator(mode="after")
    def _se_not_below_min(self) -> CallsConfig:
        if self.session_expires < self.min_se:
            raise FieldError(("session_expires",), f"must be >= min_se ({self.min_se})")
        return self


class MediaBackend(enum.Enum):
    # SDP always passes through: no anchoring, so a browser cannot talk to a trunk.
    NONE = "none"
    # aiortc (WebRTC side) + plain RTP in media worker processes ucgate runs (default).
    EMBEDDED = "embedded"
    # An rtpengine daemon (Debian rtpengine-daemon) driven over its ng protocol.
    RTPENGINE = "rtpengine"


class EmbeddedMediaConfig(BaseModel):
    """The embedded media backend: worker processes ucgate starts and supervises, each
    terminating WebRTC with aiortc and plain RTP/G.711 itself (docs/media.md)."""

    model_config = _MODEL_CONFIG

    # Most worker processes at once; a call that finds every worker full gets 503.
    max_workers: int = Field(default=4, ge=1, le=64)
    # Bridged calls per worker (each worker is one Python process: one core at most).
    calls_per_worker: int = Field(default=4, ge=1, le=16)
    # Workers kept running while idle (0: the first anchored call starts one, ~1 s).
    min_workers: int = Field(default=0, ge=0, le=64)
    # Address the workers put in SDP and ICE candidates, where browsers and trunks send
    # media. Default: sip.advertised_host, else the first SIP listen address (a wildcard
    # listen address becomes 127.0.0.1, which only suits a single machine).
    bind_host: str | None = None
    # Supervision: a worker that does not answer a ping within ping_timeout is killed and
    # only its own calls are ended (BYE both legs).
    ping_interval: float = Field(default=2.0, gt=0.05, le=60.0)
    ping_timeout: float = Field(default=5.0, gt=0.1, le=120.0)


class MediaConfig(BaseModel):
    """Media anchoring for leg pairs that cannot exchange media directly (a browser's
    WebRTC and a trunk's plain RTP); every other call keeps SDP pass-through."""

    model_config = _MODEL_CONFIG

    backend: MediaBackend = MediaBackend.EMBEDDED
    embedded: EmbeddedMediaConfig = Field(default_factory=EmbeddedMediaConfig)
    # rtpengine backend: the ng control address (its --listen-ng).
    rtpengine: SocketAddress = Field(
        default_factory=lambda: SocketAddress(host="127.0.0.1", port=2223)
    )


class ApiKey(BaseModel):
    model_config = _MODEL_CONFIG

    key: SecretStr
    scopes: tuple[Scope, ...]
    # Shown in logs instead of the key.
    name: str | None = Field(default=None, max_length=64)
    # The agent this key belongs to: it may set that agent's own status with
    # presence:read alone (supervisors need presence:write for others).
    agent: str | None = None

    @field_validator("key")
    @classmethod
    def _key_length(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < _MIN_API_KEY_LENGTH:
            raise ValueError(f"must be at least {_MIN_API_KEY_LENGTH} characters long")
        return value

    @field_validator("scopes")
    @classmethod
    def _some_scope(cls, value: tuple[Scope, ...]) -> tuple[Scope, ...]:
        # Min-length constraints would also fire when an item was invalid; this runs
        # only on a list whose items all passed.
        if not value:
            raise ValueError("must list at least one scope")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return None if value is None else _check_printable(value)


class Webhook(BaseModel):
    """An HTTP endpoint that receives session events (HMAC-signed, retried, persisted)."""

    model_config = _MODEL_CONFIG

    url: str = Field(pattern=r"^https?://[^\s]+$", max_length=2048)
    # Key of the HMAC-SHA256 in X-UCGate-Signature; the receiver checks it.
    secret: SecretStr
    # Event types to send (e.g. "offer_made", "channel_changed"); empty: every type.
    events: tuple[str, ...] = ()

    @field_validator("secret")
    @classmethod
    def _secret_length(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < _MIN_API_KEY_LENGTH:
            raise ValueError(f"must be at least {_MIN_API_KEY_LENGTH} characters long")
        return value


def _default_node_id() -> str:
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname().split(".")[0]) or "ucgate"
    return f"{host[:50]}-{os.getpid()}"


class UcgateConfig(BaseModel):
    """The whole configuration of one ucgate node."""

    model_config = _MODEL_CONFIG

    # Names this node in the shared store and in logs; unique within a site.
    node_id: str = Field(default_factory=_default_node_id)
    sip: SipConfig
    registrar: RegistrarConfig = Field(default_factory=RegistrarConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    presence: PresenceConfig = Field(default_factory=PresenceConfig)
    agents: tuple[Agent, ...] = ()
    trunks: tuple[Trunk, ...] = ()
    applications: tuple[Application, ...] = ()
    api_keys: tuple[ApiKey, ...] = ()
    dids: tuple[Did, ...] = ()
    dial_rules: tuple[DialRule, ...] = ()
    calls: CallsConfig = Field(default_factory=CallsConfig)
    media: MediaConfig = Field(default_factory=MediaConfig)
    queues: tuple[QueueConfig, ...] = ()
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    webhooks: tuple[Webhook, ...] = ()
    # Browser pages, agent login tokens and the public chat widget (ucgate.web.config).
    web: WebConfig = Field(default_factory=WebConfig)

    @model_validator(mode="before")
    @classmethod
    def _validate_absent_sections(cls, value: object) -> object:
        # An absent section must still be validated with the caller's context, so that
        # e.g. the default store.data_dir is anchored at the config file's directory.
        if isinstance(value, Mapping):
            value = dict(value)
            for section in (
                "registrar",
                "auth",
                "http",
                "store",
                "log",
                "presence",
                "calls",
                "routing",
            ):
                value.setdefault(section, {})
        return value

    @field_validator("node_id")
    @classmethod
    def _node_id(cls, value: str) -> str:
        if not _NODE_ID.match(value):
            raise ValueError("must be 1-64 of A-Z a-z 0-9 . _ - starting with a letter or digit")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> UcgateConfig:
        # Agents and trunks share one namespace: both are users of the one realm, so an
        # agent and a trunk with the same id would be the same AOR.
        owners: dict[str, tuple[str | int, ...]] = {}
        sections: tuple[tuple[str, tuple[_Credentials, ...]], ...] = (
            ("agents", self.agents),
            ("trunks", self.trunks),
            ("applications", self.applications),
        )
        for section, entries in sections:
            for index, entry in enumerate(entries):
                here: tuple[str | int, ...] = (section, index)
                first = owners.setdefault(entry.id, here)
                if first != here:
                    raise FieldError(
                        (*here, "id"), f"{entry.id!r} is already used by {_dotted(first)}"
                    )
                stored = entry.stored_hash
                if stored is not None and all(a.hash_name != stored for a in self.auth.algorithms):
                    field = f"ha1_{stored}"
                    raise FieldError(
                        (*here, field),
                        f"auth.algorithms offers no {'MD5' if stored == 'md5' else 'SHA-256'}"
                        " algorithm, so this user could never authenticate",
                    )
        agent_ids = {a.id for a in self.agents}
        for index, api_key in enumerate(self.api_keys):
            if api_key.agent is not None and api_key.agent not in agent_ids:
                raise FieldError(("api_keys", index, "agent"), f"no agent {api_key.agent!r}")
        keys: dict[str, int] = {}
        for index, api_key in enumerate(self.api_keys):
            first_index = keys.setdefault(api_key.key.get_secret_value(), index)
            if first_index != index:
                raise FieldError(("api_keys", index, "key"), f"same key as api_keys[{first_index}]")
        self._check_call_routing(agent_ids)
        self._check_queues()
        return self

    def _check_queues(self) -> None:
        by_id: dict[str, int] = {}
        for index, queue in enumerate(self.queues):
            first = by_id.setdefault(queue.id, index)
            if first != index:
                raise FieldError(("queues", index, "id"), f"same id as queues[{first}]")
        for index, queue in enumerate(self.queues):
            if queue.overflow is None:
                continue
            target = by_id.get(queue.overflow)
            if target is None:
                raise FieldError(("queues", index, "overflow"), f"no queue {queue.overflow!r}")
            if target == index:
                raise FieldError(("queues", index, "overflow"), "a queue cannot overflow to itself")
            missing = [m for m in queue.media if m not in self.queues[target].media]
            if missing:
                raise FieldError(
                    ("queues", index, "overflow"),
                    f"queue {queue.overflow!r} does not take {', '.join(missing)}",
                )

    def _check_call_routing(self, agent_ids: set[str]) -> None:
        numbers: dict[str, int] = {}
        for index, did in enumerate(self.dids):
            first = numbers.setdefault(did.number, index)
            if first != index:
                raise FieldError(("dids", index, "number"), f"same number as dids[{first}]")
            if did.target_kind is DidTargetKind.AGENT and did.target_id not in agent_ids:
                raise FieldError(("dids", index, "target"), f"no agent {did.target_id!r}")
            if did.target_kind is DidTargetKind.PIN and did.target_id not in {
                q.id for q in self.queues
            }:
                raise FieldError(("dids", index, "target"), f"no queue {did.target_id!r}")
        trunk_ids = {t.id for t in self.trunks}
        prefixes: dict[str, int] = {}
        for index, rule in enumerate(self.dial_rules):
            first = prefixes.setdefault(rule.prefix, index)
            if first != index:
                raise FieldError(
                    ("dial_rules", index, "prefix"), f"same prefix as dial_rules[{first}]"
                )
            if rule.trunk not in trunk_ids:
                raise FieldError(("dial_rules", index, "trunk"), f"no trunk {rule.trunk!r}")

    @property
    def node_id_is_default(self) -> bool:
        return "node_id" not in self.model_fields_set

    @property
    def auth_secret_is_random(self) -> bool:
        """True when nodes cannot verify each other's nonces (no auth.secret given)."""
        return "secret" not in self.auth.model_fields_set


# --- loading -------------------------------------------------------------------------


def load_config(path: Path, env: Mapping[str, str] | None = None) -> UcgateConfig:
    """Read ``path`` (TOML), apply ``UCGATE_*`` overrides from ``env``, validate.

    ``env`` defaults to ``os.environ``. Relative paths in the file (``store.data_dir``,
    ``sip.tls_cert``, ``sip.tls_key``) are taken relative to the file's directory.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror})"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 (TOML files must be)"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    origins = _apply_env(data, environ)
    return validate_config(data, base_dir=path.resolve().parent, origins=origins)


def validate_config(
    data: Mapping[str, Any],
    *,
    base_dir: Path | None = None,
    origins: Mapping[tuple[str, ...], str] | None = None,
) -> UcgateConfig:
    """Validate already-parsed settings; raise :class:`ConfigError` listing every problem.

    ``origins`` maps a key path to the environment variable that set it, so that an
    error on an overridden key says where the value came from.
    """
    context = {"base_dir": base_dir} if base_dir is not None else {}
    try:
        return UcgateConfig.model_validate(dict(data), context=context)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origins or {})) from None


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[tuple[str, ...], str]:
    origins: dict[tuple[str, ...], str] = {}
    problems: list[str] = []
    for name in sorted(env):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        parts = tuple(name[len(ENV_PREFIX) :].lower().split(_ENV_NESTING))
        if not all(parts):
            problems.append(f"{name}: expected UCGATE_<SECTION>__<KEY>, e.g. UCGATE_SIP__DOMAIN")
            continue
        raw = env[name]
        value: Any = raw
        if raw.lstrip().startswith(("[", "{")) and not _BRACKETED_IPV6.match(raw):
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                problems.append(f"{name}: not valid JSON ({exc.msg} at column {exc.colno})")
                continue
        target = data
        for depth, part in enumerate(parts[:-1]):
            child = target.setdefault(part, {})
            if not isinstance(child, dict):
                problems.append(f"{name}: {'.'.join(parts[: depth + 1])} is not a section")
                break
            target = child
        else:
            target[parts[-1]] = value
            origins[parts] = name
    if problems:
        raise ConfigError(problems)
    return origins


def _dotted(loc: Sequence[str | int]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model class inside an annotation such as ``tuple[Agent, ...]`` or ``X | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is not None:
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _fields_at(loc: Sequence[str | int]) -> list[str]:
    model: type[BaseModel] | None = UcgateConfig
    for part in loc:
        if model is None:
            return []
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        model = None if field is None else _model_in(field.annotation)
    return list(model.model_fields) if model is not None else []


def _describe(exc: ValidationError, origins: Mapping[tuple[str, ...], str]) -> list[str]:
    problems: list[str] = []
    for error in exc.errors(include_url=False):
        loc: tuple[str | int, ...] = tuple(error["loc"])
        origin = next(
            (var for path, var in origins.items() if tuple(loc[: len(path)]) == path), None
        )
        message = error["msg"]
        cause = error.get("ctx", {}).get("error")
        if error["type"] == "extra_forbidden":
            parent, key = loc[:-1], str(loc[-1])
            message = f"unknown key {key!r}"
            close = get_close_matches(key, _fields_at(parent), n=1)
            if close:
                message += f" (did you mean {close[0]!r}?)"
            loc = parent
        elif error["type"] == "missing":
            message = "required"
        elif isinstance(cause, FieldError):
            loc, message = (*loc, *cause.path), cause.why
        elif isinstance(cause, ValueError):
            message = str(cause)
        if origin is not None:
            message += f" (set by {origin})"
        where = _dotted(loc)
        problems.append(f"{where}: {message}" if where else f"top level: {message}")
    return problems
