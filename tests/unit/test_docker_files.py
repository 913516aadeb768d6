"""docker/ files, checked without a container engine.

The compose environment and the image's default config go through the same
``load_config`` the server uses, so a renamed key breaks this test, not a deployment.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from ucgate.config import StoreBackend, load_config
from ucgate.sip.peer import TransportKind

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
NODES = ("ucgate-a", "ucgate-b")


def compose() -> dict[str, Any]:
    data = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with VAR unset, and ${VAR} must not occur bare."""
    assert not re.search(r"\$\{[A-Z_]+\}", value), f"{value!r} has no default"
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def node_env(service: dict[str, Any]) -> dict[str, str]:
    env = service["environment"]
    assert isinstance(env, dict), "environment as a mapping keeps values unsplit"
    return {str(k): interpolate(str(v)) for k, v in env.items()}


def mounted_config(service: dict[str, Any]) -> Path:
    for volume in service["volumes"]:
        source, target, *_ = volume.split(":")
        if target == "/etc/ucgate/ucgate.toml":
            return (DOCKER / source).resolve()
    raise AssertionError("no config mounted at /etc/ucgate/ucgate.toml")


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (DOCKER / "Dockerfile").read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def instructions(name: str) -> list[str]:
    return [rest for word, rest in dockerfile() if word == name]


@pytest.mark.parametrize("name", NODES)
def test_compose_node_environment_is_accepted_by_load_config(name: str) -> None:
    service = compose()["services"][name]
    env = node_env(service)
    assert all(key.startswith("UCGATE_") for key in env)
    config = load_config(mounted_config(service), env=env)
    assert config.node_id == name
    assert config.store.backend is StoreBackend.REDIS
    assert config.store.redis_url == "redis://redis:6379/0"
    assert not config.auth_secret_is_random


def test_compose_nodes_share_redis_and_nonce_secret_but_not_ports() -> None:
    services = compose()["services"]
    assert services["redis"]["image"].startswith("redis:7")
    envs = [node_env(services[name]) for name in NODES]
    assert envs[0]["UCGATE_AUTH__SECRET"] == envs[1]["UCGATE_AUTH__SECRET"]
    assert envs[0]["UCGATE_STORE__REDIS_URL"] == envs[1]["UCGATE_STORE__REDIS_URL"]
    assert envs[0]["UCGATE_NODE_ID"] != envs[1]["UCGATE_NODE_ID"]
    published = [services[name]["ports"] for name in NODES]
    assert not set(published[0]) & set(published[1])
    for name in NODES:
        assert "redis" in services[name]["depends_on"]


@pytest.mark.parametrize("name", NODES)
def test_compose_publishes_the_ports_each_node_listens_on(name: str) -> None:
    service = compose()["services"][name]
    config = load_config(mounted_config(service), env=node_env(service))
    # Same port inside and outside, so Via/Contact advertise a reachable address.
    expected = {f"{a.port}:{a.port}/{a.kind.value}" for a in config.sip.listen}
    expected.add(f"{config.http.listen.port}:{config.http.listen.port}")
    assert set(service["ports"]) == expected
    assert {a.kind for a in config.sip.listen} == {TransportKind.UDP, TransportKind.TCP}
    assert all(a.host == "0.0.0.0" for a in config.sip.listen)


@pytest.mark.parametrize("name", NODES)
def test_compose_builds_the_dockerfile(name: str) -> None:
    build = compose()["services"][name]["build"]
    context = (DOCKER / build["context"]).resolve()
    assert context == REPO
    assert (context / build["dockerfile"]).resolve() == DOCKER / "Dockerfile"


def test_dockerfile_shape() -> None:
    assert instructions("FROM") == ["python:3.11-slim-bookworm"]
    assert [json.loads(x) for x in instructions("ENTRYPOINT")] == [["ucgate"]]
    users = instructions("USER")
    assert users and users[-1] not in ("root", "0")
    exposed = {port for line in instructions("EXPOSE") for port in line.split()}
    assert {"5060/udp", "5060/tcp", "8080"} <= exposed
    assert any("pip install ." in line for line in instructions("RUN"))


def test_dockerfile_copies_files_that_exist() -> None:
    for line in instructions("COPY"):
        *sources, _ = shlex.split(line)
        for source in sources:
            assert (REPO / source).exists(), f"COPY source {source} is missing"


def test_dockerfile_default_command_config_validates() -> None:
    (cmd,) = [json.loads(x) for x in instructions("CMD")]
    assert cmd[:2] == ["serve", "--config"]
    target = cmd[2]
    copies = {shlex.split(line)[-1]: shlex.split(line)[0] for line in instructions("COPY")}
    assert target in copies, "the CMD's config file must be copied into the image"
    config = load_config(REPO / copies[target], env={})
    # A container must listen beyond its own loopback.
    assert all(a.host == "0.0.0.0" for a in config.sip.listen)
    assert config.http.listen.host == "0.0.0.0"
    assert config.store.data_dir == Path("/var/lib/ucgate")
    assert "/var/lib/ucgate" in " ".join(instructions("RUN"))
