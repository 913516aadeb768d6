"""The configuration contract: TOML + UCGATE_* overrides -> UcgateConfig or ConfigError."""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from ucgate.config import (
    Agent,
    ConfigError,
    DigestAlgorithm,
    ListenAddress,
    LogFormat,
    Scope,
    StoreBackend,
    UcgateConfig,
    load_config,
    validate_config,
)
from ucgate.sip.peer import TransportKind

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "ucgate.example.toml"
SHIPPED = [EXAMPLE, REPO / "config" / "ucgate.toml", REPO / "docker" / "ucgate.compose.toml"]

MINIMAL = '[sip]\ndomain = "example.test"\n'
AGENT = '[[agents]]\nid = "alice"\npassword = "pw-alice-1"\n'


def write(tmp_path: Path, text: str, name: str = "ucgate.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={} if env is None else env)
    return list(info.value.problems)


def secret_values(data: Any) -> Iterator[str]:
    """Every value stored under a secret key anywhere in parsed TOML."""
    if isinstance(data, dict):
        for key, value in data.items():
            if key in ("password", "ha1_md5", "ha1_sha256", "key", "secret"):
                yield str(value)
            else:
                yield from secret_values(value)
    elif isinstance(data, list):
        for item in data:
            yield from secret_values(item)


# --- shipped files -------------------------------------------------------------------


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_configs_validate(path: Path) -> None:
    config = load_config(path, env={})
    assert config.sip.domain == "example.test"
    assert config.agents, "a shipped config without agents cannot be tried out"


def test_make_run_config_keeps_state_in_the_repository_var_dir() -> None:
    config = load_config(REPO / "config" / "ucgate.toml", env={})
    assert config.store.data_dir.resolve() == REPO / "var" / "ucgate"
    assert {a.id for a in config.agents} == {"alice", "bob"}
    assert [t.id for t in config.trunks] == ["pbx1"]
    assert any(Scope.ADMIN in k.scopes for k in config.api_keys)
    assert [str(x) for x in config.sip.listen] == ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]
    assert str(config.http.listen) == "127.0.0.1:8080"


def _all_models(model: type[BaseModel], seen: set[type[BaseModel]]) -> None:
    from ucgate.config import _model_in

    seen.add(model)
    for field in model.model_fields.values():
        inner = _model_in(field.annotation)
        if inner is not None and inner not in seen:
            _all_models(inner, seen)


def test_example_documents_every_key() -> None:
    """A key added to a model must be added to the reference file, with its comment."""
    text = EXAMPLE.read_text()
    models: set[type[BaseModel]] = set()
    _all_models(UcgateConfig, models)
    skip = {"ListenAddress", "SocketAddress"}  # written as strings, not as tables
    missing = [
        f"{model.__name__}.{name}"
        for model in models
        if model.__name__ not in skip
        for name in model.model_fields
        if not re.search(rf"^#? ?{name} = ", text, re.MULTILINE)
        and not re.search(rf"^\[\[?(?:[a-z_]+\.)?{name}\]\]?$", text, re.MULTILINE)
        and not re.search(rf"^#\s+{name}\s", text, re.MULTILINE)
    ]
    assert missing == []


def test_example_values_equal_the_defaults_it_states() -> None:
    example = load_config(EXAMPLE, env={})
    default = validate_config({"sip": {"domain": "example.test"}})
    for section in ("registrar", "http", "log"):
        assert getattr(example, section) == getattr(default, section), section
    for key in ("listen", "t1", "t2", "t4", "max_message_size", "max_forwards", "user_agent"):
        assert getattr(example.sip, key) == getattr(default.sip, key), key
    assert example.auth.nonce_ttl == default.auth.nonce_ttl
    assert example.auth.algorithms == default.auth.algorithms


# --- every validation error names its key --------------------------------------------

CASES: list[tuple[str, str, str, str]] = [
    # (id, toml appended to MINIMAL or replacing it, expected key path, expected reason)
    (
        "unknown transport",
        '[sip]\ndomain = "example.test"\nlisten = ["udp:127.0.0.1:5060", "sctp:127.0.0.1:5060"]\n',
        "sip.listen[1]",
        "unknown transport 'sctp'",
    ),
    (
        "bare ipv6",
        '[sip]\ndomain = "example.test"\nlisten = ["udp:::1:5060"]\n',
        "sip.listen[0]",
        "brackets",
    ),
    (
        "no port",
        '[sip]\ndomain = "example.test"\nlisten = ["udp:127.0.0.1"]\n',
        "sip.listen[0]",
        "port",
    ),
    (
        "port range",
        '[sip]\ndomain = "example.test"\nlisten = ["tcp:127.0.0.1:70000"]\n',
        "sip.listen[0]",
        "out of range",
    ),
    (
        "bad host",
        '[sip]\ndomain = "example.test"\nlisten = ["udp:exa_mple:5060"]\n',
        "sip.listen[0].host",
        "host name",
    ),
    (
        "duplicate listener",
        '[sip]\ndomain = "example.test"\n'
        'listen = ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060", "udp:127.0.0.1:5060"]\n',
        "sip.listen[2]",
        "duplicates listen[0]",
    ),
    ("no listener", '[sip]\ndomain = "example.test"\nlisten = []\n', "sip.listen", "at least one"),
    ("no domain", "[sip]\nt1 = 0.5\n", "sip.domain", "required"),
    ("no sip section", "[log]\nlevel = 'info'\n", "sip", "required"),
    ("bad domain", '[sip]\ndomain = "exa mple.test"\n', "sip.domain", "host name"),
    ("t1 zero", MINIMAL + "t1 = 0\n", "sip.t1", "greater than 0"),
    ("t2 below t1", MINIMAL + "t1 = 2.0\nt2 = 1.0\n", "sip.t2", "t1"),
    ("message size", MINIMAL + "max_message_size = 100\n", "sip.max_message_size", "1300"),
    (
        "user agent crlf",
        MINIMAL + 'user_agent = "x\\r\\nVia: evil"\n',
        "sip.user_agent",
        "control characters",
    ),
    (
        "tls without cert",
        '[sip]\ndomain = "example.test"\nlisten = ["udp:0.0.0.0:5060", "tls:0.0.0.0:5061"]\n',
        "sip.tls_cert",
        "listen[1]",
    ),
    (
        "tls unreadable",
        '[sip]\ndomain = "example.test"\nlisten = ["wss:0.0.0.0:8443"]\n'
        'tls_cert = "missing.pem"\ntls_key = "missing.key"\n',
        "sip.tls_cert",
        "cannot read",
    ),
    (
        "max below min",
        MINIMAL + "[registrar]\nmin_expires = 120\nmax_expires = 60\ndefault_expires = 60\n",
        "registrar.max_expires",
        "min_expires",
    ),
    (
        "default outside",
        MINIMAL + "[registrar]\ndefault_expires = 30\n",
        "registrar.default_expires",
        "between min_expires (60) and max_expires (3600)",
    ),
    ("short secret", MINIMAL + '[auth]\nsecret = "short"\n', "auth.secret", "16"),
    (
        "unknown algorithm",
        MINIMAL + '[auth]\nalgorithms = ["SHA-256", "SHA-1"]\n',
        "auth.algorithms[1]",
        "MD5",
    ),
    (
        "duplicate algorithm",
        MINIMAL + '[auth]\nalgorithms = ["MD5", "MD5"]\n',
        "auth.algorithms",
        "twice",
    ),
    ("no algorithm", MINIMAL + "[auth]\nalgorithms = []\n", "auth.algorithms", "at least one"),
    ("http no port", MINIMAL + '[http]\nlisten = "localhost"\n', "http.listen", "port"),
    (
        "store typo",
        MINIMAL + '[store]\nbakend = "redis"\n',
        "store",
        "unknown key 'bakend' (did you mean 'backend'?)",
    ),
    (
        "redis without url",
        MINIMAL + '[store]\nbackend = "redis"\n',
        "store.redis_url",
        "required when backend = 'redis'",
    ),
    (
        "redis url scheme",
        MINIMAL + '[store]\nbackend = "redis"\nredis_url = "http://h/0"\n',
        "store.redis_url",
        "redis://",
    ),
    ("unknown backend", MINIMAL + '[store]\nbackend = "etcd"\n', "store.backend", "memory"),
    ("log level", MINIMAL + '[log]\nlevel = "loud"\n', "log.level", "debug"),
    ("log format", MINIMAL + '[log]\nformat = "xml"\n', "log.format", "json"),
    (
        "no credential",
        MINIMAL + '[[agents]]\nid = "alice"\n',
        "agents[0].password",
        "exactly one of password, ha1_md5, ha1_sha256",
    ),
    (
        "two credentials",
        MINIMAL + '[[agents]]\nid = "alice"\npassword = "p"\nha1_sha256 = "' + "a" * 64 + '"\n',
        "agents[0].password",
        "found: password, ha1_sha256",
    ),
    (
        "empty password",
        MINIMAL + '[[agents]]\nid = "alice"\npassword = ""\n',
        "agents[0].password",
        "empty",
    ),
    (
        "ha1 length",
        MINIMAL + '[[agents]]\nid = "alice"\nha1_md5 = "abc"\n',
        "agents[0].ha1_md5",
        "32 hexadecimal digits",
    ),
    (
        "ha1 not hex",
        MINIMAL + '[[trunks]]\nid = "pbx"\nha1_sha256 = "' + "g" * 64 + '"\n',
        "trunks[0].ha1_sha256",
        "64 hexadecimal digits",
    ),
    (
        "bad user part",
        MINIMAL + '[[agents]]\nid = "al ice"\npassword = "p"\n',
        "agents[0].id",
        "user part",
    ),
    ("agent without id", MINIMAL + '[[agents]]\npassword = "p"\n', "agents[0].id", "required"),
    ("duplicate agent", MINIMAL + AGENT + AGENT, "agents[1].id", "agents[0]"),
    (
        "trunk clashes with agent",
        MINIMAL + AGENT + '[[trunks]]\nid = "alice"\npassword = "p"\n',
        "trunks[0].id",
        "agents[0]",
    ),
    (
        "ha1 not offered",
        MINIMAL + '[auth]\nalgorithms = ["SHA-256"]\n'
        '[[agents]]\nid = "alice"\nha1_md5 = "' + "0" * 32 + '"\n',
        "agents[0].ha1_md5",
        "offers no MD5",
    ),
    (
        "display name newline",
        MINIMAL + '[[agents]]\nid = "a"\npassword = "p"\ndisplay_name = "A\\nB"\n',
        "agents[0].display_name",
        "control characters",
    ),
    (
        "agent typo",
        MINIMAL + '[[agents]]\nid = "a"\npasword = "p"\n',
        "agents[0]",
        "unknown key 'pasword' (did you mean 'password'?)",
    ),
    (
        "unknown scope",
        MINIMAL + '[[api_keys]]\nkey = "0123456789abcdef"\nscopes = ["root"]\n',
        "api_keys[0].scopes[0]",
        "presence:read",
    ),
    (
        "no scope",
        MINIMAL + '[[api_keys]]\nkey = "0123456789abcdef"\nscopes = []\n',
        "api_keys[0].scopes",
        "at least one",
    ),
    (
        "short api key",
        MINIMAL + '[[api_keys]]\nkey = "k"\nscopes = ["admin"]\n',
        "api_keys[0].key",
        "12",
    ),
    (
        "duplicate api key",
        MINIMAL + '[[api_keys]]\nkey = "0123456789abcdef"\nscopes = ["admin"]\n'
        '[[api_keys]]\nkey = "0123456789abcdef"\nscopes = ["presence:read"]\n',
        "api_keys[1].key",
        "api_keys[0]",
    ),
    ("bad node id", 'node_id = "node a"\n' + MINIMAL, "node_id", "A-Z"),
    (
        "unknown top-level key",
        'nodeid = "a"\n' + MINIMAL,
        "top level",
        "unknown key 'nodeid' (did you mean 'node_id'?)",
    ),
    (
        "unknown section",
        MINIMAL + "[mediaa]\nrtp = 1\n",
        "top level",
        "unknown key 'mediaa' (did you mean 'media'?)",
    ),
    (
        "wrong type",
        MINIMAL + '[registrar]\nmin_expires = "soon"\n',
        "registrar.min_expires",
        "integer",
    ),
]


@pytest.mark.parametrize(("text", "path", "why"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_error_names_its_key(tmp_path: Path, text: str, path: str, why: str) -> None:
    found = problems(tmp_path, text)
    assert len(found) == 1, found
    assert found[0].startswith(f"{path}: "), found
    assert why in found[0], found


def test_all_errors_reported_at_once(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        '[sip]\ndomain = "example.test"\nlisten = ["sctp:1.2.3.4:5"]\n'
        '[store]\nbakend = "x"\n[log]\nlevel = "loud"\n',
    )
    assert [p.split(":")[0] for p in found] == ["sip.listen[0]", "store", "log.level"]


def test_file_problems_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read"):
        load_config(tmp_path / "absent.toml", env={})
    with pytest.raises(ConfigError, match=r"not valid TOML.*line 2"):
        load_config(write(tmp_path, '[sip]\ndomain = "unterminated\n'), env={})


def test_tls_pair_is_checked_for_real(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path, "a")
    _, other_key = _self_signed(tmp_path, "b")
    listen = '[sip]\ndomain = "example.test"\nlisten = ["tls:127.0.0.1:5061", "wss:[::1]:8443"]\n'
    config = load_config(
        write(tmp_path, listen + f'tls_cert = "{cert.name}"\ntls_key = "{key.name}"\n'), env={}
    )
    assert config.sip.tls_cert == tmp_path / cert.name  # relative to the file
    assert [x.secure for x in config.sip.listen] == [True, True]
    found = problems(tmp_path, listen + f'tls_cert = "{cert}"\ntls_key = "{other_key}"\n')
    assert len(found) == 1 and found[0].startswith("sip.tls_key: "), found


def _self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "example.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


# --- secrets -------------------------------------------------------------------------


def test_secrets_never_in_repr_str_or_json() -> None:
    data = tomllib.loads(EXAMPLE.read_text())
    values = list(secret_values(data))
    assert len(values) >= 6
    config = load_config(EXAMPLE, env={})
    rendered = [repr(config), str(config), config.model_dump_json(), repr(config.agents[0])]
    for value in values:
        for text in rendered:
            assert value not in text
    # ...but they are there for the code that needs them.
    assert config.agents[0].password is not None
    assert config.agents[0].password.get_secret_value() == "alice-example-password"


@given(
    secret=st.text(
        alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1
    ).map(lambda s: "#" + s)
)
def test_errors_never_echo_a_secret(secret: str) -> None:
    quoted = json.dumps(secret, ensure_ascii=False)  # also a valid TOML basic string
    url = json.dumps("http://u:" + secret + "@h", ensure_ascii=False)
    text = (
        MINIMAL
        + f"[auth]\nsecret = {quoted}\nalgorithms = [{quoted}]\n"
        + f"[store]\nbackend = 'redis'\nredis_url = {url}\n"
        + f"[[agents]]\nid = 'a'\npassword = {quoted}\nha1_md5 = {quoted}\n"
        + f"[[agents]]\nid = {quoted}\npassword = {quoted}\n"
        + f"[[api_keys]]\nkey = {quoted}\nscopes = [{quoted}]\n"
    )
    with pytest.raises(ConfigError) as info:
        validate_config(tomllib.loads(text))
    assert secret not in str(info.value)


def test_hypothesis_secret_alphabet_cannot_hide_in_messages() -> None:
    # The property above relies on '#' appearing in no message; keep it so.
    with pytest.raises(ConfigError) as info:
        validate_config(tomllib.loads(MINIMAL + "[[agents]]\nid = 'a'\n[store]\nx = 1\n"))
    assert "#" not in str(info.value)


# --- environment overrides -------------------------------------------------------------


def test_env_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'node_id = "file"\n' + MINIMAL + "[registrar]\nmin_expires = 60\n")
    config = load_config(
        path,
        env={
            "UCGATE_NODE_ID": "node-b",
            "UCGATE_SIP__DOMAIN": "other.test",
            "UCGATE_SIP__LISTEN": '["udp:127.0.0.1:5070", "ws:[::1]:8088"]',
            "UCGATE_SIP__T1": "0.25",
            "UCGATE_REGISTRAR__MIN_EXPIRES": "30",
            "UCGATE_STORE__BACKEND": "redis",
            "UCGATE_STORE__REDIS_URL": "redis://127.0.0.1:6390/2",
            "UCGATE_HTTP__LISTEN": "[::1]:9090",
            "UCGATE_AUTH__SECRET": "s" * 32,
            "UCGATE_LOG__FORMAT": "JSON",
            "HOME": "/ignored",
            "UCGATEWAY": "ignored: no underscore after the prefix",
        },
    )
    assert config.node_id == "node-b" and not config.node_id_is_default
    assert config.sip.domain == "other.test"
    assert config.sip.listen == (
        ListenAddress(kind=TransportKind.UDP, host="127.0.0.1", port=5070),
        ListenAddress(kind=TransportKind.WS, host="::1", port=8088),
    )
    assert str(config.sip.listen[1]) == "ws:[::1]:8088"
    assert config.sip.t1 == 0.25
    assert config.registrar.min_expires == 30
    assert config.store.backend is StoreBackend.REDIS
    assert config.store.redis_url == "redis://127.0.0.1:6390/2"
    assert (config.http.listen.host, config.http.listen.port) == ("::1", 9090)
    assert config.auth.secret.get_secret_value() == "s" * 32
    assert not config.auth_secret_is_random
    assert config.log.format is LogFormat.JSON


def test_env_can_supply_whole_tables(tmp_path: Path) -> None:
    agents = [{"id": "zoe", "password": "pw-zoe-1", "display_name": "Zoe"}]
    config = load_config(
        write(tmp_path, MINIMAL + AGENT), env={"UCGATE_AGENTS": json.dumps(agents)}
    )
    assert [a.id for a in config.agents] == ["zoe"]


def test_env_defaults_to_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UCGATE_SIP__DOMAIN", "from-environ.test")
    assert load_config(write(tmp_path, MINIMAL)).sip.domain == "from-environ.test"
    assert load_config(write(tmp_path, MINIMAL), env={}).sip.domain == "example.test"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"UCGATE_NODE_ID__X": "x"}, "node_id: Input should be a valid string"),
        (
            {"UCGATE_SIP__DOMIAN": "x.test"},
            "sip: unknown key 'domian' (did you mean 'domain'?) (set by UCGATE_SIP__DOMIAN)",
        ),
        ({"UCGATE_SIP__LISTEN": '["sctp:1.2.3.4:5"]'}, "sip.listen[0]: unknown transport 'sctp'"),
        ({"UCGATE_SIP__LISTEN": '["udp:1.2.3.4:5"'}, "UCGATE_SIP__LISTEN: not valid JSON"),
        ({"UCGATE_REGISTRAR__MIN_EXPIRES": "soon"}, "(set by UCGATE_REGISTRAR__MIN_EXPIRES)"),
        ({"UCGATE_SIP": "x"}, "sip: Input should be a valid dictionary"),
        ({"UCGATE_SIP____DOMAIN": "x"}, "UCGATE_SIP____DOMAIN: expected UCGATE_<SECTION>__<KEY>"),
        ({"UCGATE_STORE__BACKEND": "redis"}, "store.redis_url: required"),
    ],
)
def test_env_errors_name_the_variable_or_key(
    tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    found = problems(tmp_path, MINIMAL, env=env)
    assert any(expected in p for p in found), found


def test_env_cannot_descend_into_a_value(tmp_path: Path) -> None:
    found = problems(tmp_path, 'node_id = "a"\n' + MINIMAL, env={"UCGATE_NODE_ID__X": "x"})
    assert found == ["UCGATE_NODE_ID__X: node_id is not a section"]


# --- values and defaults ---------------------------------------------------------------


def test_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL), env={})
    assert config.node_id_is_default and re.fullmatch(r".+-\d+", config.node_id)
    assert [str(x) for x in config.sip.listen] == ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]
    assert (config.sip.t1, config.sip.t2, config.sip.t4) == (0.5, 4.0, 5.0)
    assert config.sip.max_message_size == 65535
    assert config.sip.user_agent.startswith("ucgate/")
    assert (config.registrar.min_expires, config.registrar.max_expires) == (60, 3600)
    assert config.registrar.default_expires == 3600
    assert config.registrar.max_contacts_per_aor == 10
    assert config.auth.nonce_ttl == 300
    assert config.auth.algorithms == (DigestAlgorithm.MD5, DigestAlgorithm.SHA_256)
    assert config.auth_secret_is_random
    assert len(config.auth.secret.get_secret_value()) >= 16
    assert str(config.http.listen) == "127.0.0.1:8080"
    assert config.store.backend is StoreBackend.MEMORY
    # Relative to the config file's directory, not to the working directory.
    assert config.store.data_dir == tmp_path.resolve() / "var" / "ucgate"
    assert config.agents == config.trunks == config.api_keys == ()


def test_data_dir_relative_to_the_file_absolute_kept(tmp_path: Path) -> None:
    sub = tmp_path / "etc"
    sub.mkdir()
    rel = load_config(write(sub, MINIMAL + '[store]\ndata_dir = "../state"\n'), env={})
    assert rel.store.data_dir.resolve() == tmp_path.resolve() / "state"
    absolute = load_config(write(sub, MINIMAL + '[store]\ndata_dir = "/srv/u"\n'), env={})
    assert absolute.store.data_dir == Path("/srv/u")


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL), env={})
    with pytest.raises(ValidationError):
        config.sip.t1 = 1.0  # type: ignore[misc]


def test_ha1_from_password_and_stored() -> None:
    # RFC 2617 §3.5's example credentials; their MD5 HA1 is widely published.
    mufasa = Agent.model_validate({"id": "Mufasa", "password": "Circle Of Life"})
    assert mufasa.ha1(DigestAlgorithm.MD5, "testrealm@host.com") == (
        "939e7578ed9e3c518a452acee763bce9"
    )
    assert (
        mufasa.ha1(DigestAlgorithm.SHA_256_SESS, "r")
        == hashlib.sha256(b"Mufasa:r:Circle Of Life").hexdigest()
    )
    stored = validate_config(
        {
            "sip": {"domain": "example.test"},
            "agents": [{"id": "c", "ha1_md5": "0502547BEC87B80B25A4A36EDF475360"}],
        }
    ).agents[0]
    assert stored.ha1(DigestAlgorithm.MD5_SESS, "ignored") == "0502547bec87b80b25a4a36edf475360"
    assert stored.ha1(DigestAlgorithm.SHA_256, "example.test") is None
    assert stored.stored_hash == "md5" and mufasa.stored_hash is None


def test_example_ha1_values_match_their_passwords() -> None:
    config = load_config(EXAMPLE, env={})
    by_id = {a.id: a for a in config.agents}
    assert (
        by_id["carol"].ha1(DigestAlgorithm.MD5, "example.test")
        == hashlib.md5(b"carol:example.test:carol-example-password").hexdigest()
    )


hosts = st.one_of(
    st.ip_addresses().map(str),
    st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9](\.[a-z][a-z0-9]{0,5}){0,2}", fullmatch=True),
)


@given(kind=st.sampled_from(TransportKind), host=hosts, port=st.integers(0, 65535))
def test_listen_address_round_trips(kind: TransportKind, host: str, port: int) -> None:
    address = ListenAddress(kind=kind, host=host, port=port)
    assert ListenAddress.model_validate(str(address)) == address
    if not address.secure:  # tls/wss would need a certificate
        config = validate_config({"sip": {"domain": "example.test", "listen": [str(address)]}})
        assert config.sip.listen == (address,)


def test_load_config_matches_validate_config(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    loaded = load_config(write(tmp_path, text), env={})
    direct = validate_config(tomllib.loads(text), base_dir=tmp_path.resolve())
    assert loaded.model_dump(exclude={"auth"}) == direct.model_dump(exclude={"auth"})
