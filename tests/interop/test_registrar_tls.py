"""REGISTER over TLS (certificate from config) and SHA-256 digest end to end."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sip_test_rig.ports import free_port
from tests.support.raw_sip import RawSipClient
from tests.support.ucgate_process import Account, UcgateProcess

pytestmark = pytest.mark.interop

ALICE = Account("alice", "alice-Pa55word")


def make_cert(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ucgate test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def tls_gateway(tmp_path: Path) -> Iterator[tuple[UcgateProcess, ssl.SSLContext]]:
    cert, key = make_cert(tmp_path)
    node = UcgateProcess(tmp_path / "node", agents=[ALICE], tls=(free_port(), cert, key))
    node.start()
    ctx = ssl.create_default_context(cafile=str(cert))
    try:
        yield node, ctx
    finally:
        node.stop()


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_register_over_tls_with_each_digest_algorithm(
    tls_gateway: tuple[UcgateProcess, ssl.SSLContext], algorithm: str
) -> None:
    node, ctx = tls_gateway
    assert node.tls is not None
    client = RawSipClient("tls", node.tls[0], ssl_context=ctx)
    try:
        ok = client.register_with_auth(ALICE.id, ALICE.password, algorithm=algorithm)
        assert ok.status == 200, ok
        contacts = ok.headers.values("Contact")
        assert len(contacts) == 1 and "expires=300" in contacts[0]
        regs = node.registrations()["sip:alice@example.test"]
        assert regs[0]["source"].startswith("tls:127.0.0.1:")
    finally:
        client.close()


def test_wrong_password_and_unknown_user_get_the_same_answer(
    tls_gateway: tuple[UcgateProcess, ssl.SSLContext],
) -> None:
    node, _ = tls_gateway
    client = RawSipClient("udp", node.sip_port)
    try:
        wrong = client.register_with_auth(ALICE.id, "wrong", algorithm="SHA-256")
        ghost = client.register_with_auth("ghost", "whatever", algorithm="SHA-256")
    finally:
        client.close()
    assert wrong.status == ghost.status == 401
    assert wrong.reason == ghost.reason
    assert len(wrong.headers.get_all("WWW-Authenticate")) == 2
    assert "stale=true" not in " ".join(wrong.headers.get_all("WWW-Authenticate")).lower()


def test_too_brief_interval_and_query(
    tls_gateway: tuple[UcgateProcess, ssl.SSLContext],
) -> None:
    node, _ = tls_gateway
    client = RawSipClient("tcp", node.sip_port)
    try:
        brief = client.register_with_auth(ALICE.id, ALICE.password, algorithm="MD5", expires=10)
        assert brief.status == 423 and brief.headers.get("Min-Expires") == "60"
    finally:
        client.close()
