"""Development certificates: what is written, with which modes, and the pins."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import os
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from apiforge.errors import ConfigurationError
from apiforge.tls import certs
from apiforge.tls.certs import (
    DevCertificates,
    ensure_dev_certificates,
    spki_pin,
    write_dev_certificates,
    write_private_file,
)


def _chain(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def _independent_pin(public_key_der: bytes) -> str:
    return "sha256/" + base64.b64encode(hashlib.sha256(public_key_der).digest()).decode()


def _openssl_pin(path: Path, *, is_key: bool) -> str:
    # The recipe OkHttp and Android document, run by a separate implementation.
    if is_key:
        extract = ["openssl", "pkey", "-in", str(path), "-pubout", "-outform", "DER"]
    else:
        pem = subprocess.run(
            ["openssl", "x509", "-in", str(path), "-pubkey", "-noout"],
            check=True,
            capture_output=True,
        ).stdout
        extract = ["openssl", "pkey", "-pubin", "-outform", "DER"]
        return _independent_pin(
            subprocess.run(extract, input=pem, check=True, capture_output=True).stdout
        )
    return _independent_pin(subprocess.run(extract, check=True, capture_output=True).stdout)


@pytest.fixture
def dev(tmp_path: Path) -> DevCertificates:
    return write_dev_certificates(tmp_path / "certs")


def test_writes_the_four_files(dev: DevCertificates) -> None:
    directory = dev.ca_cert.parent
    assert sorted(p.name for p in directory.iterdir()) == [
        "backup-key.pem",
        "ca.pem",
        "server-key.pem",
        "server.pem",
    ]
    assert dev.server_cert == directory / "server.pem"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_private_keys_are_owner_only(dev: DevCertificates) -> None:
    for path in (dev.server_key, dev.backup_key):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_ca_key_is_never_written(dev: DevCertificates) -> None:
    ca = x509.load_pem_x509_certificate(dev.ca_cert.read_bytes())
    ca_pin = spki_pin(ca)
    for path in dev.ca_cert.parent.iterdir():
        if "PRIVATE KEY" in path.read_text():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            assert spki_pin(key) != ca_pin


def test_server_pem_is_the_full_chain_leaf_first(dev: DevCertificates) -> None:
    leaf, ca = _chain(dev.server_cert)
    assert ca == x509.load_pem_x509_certificate(dev.ca_cert.read_bytes())
    leaf.verify_directly_issued_by(ca)
    result = subprocess.run(
        ["openssl", "verify", "-CAfile", str(dev.ca_cert), str(dev.server_cert)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_ca_profile(dev: DevCertificates) -> None:
    ca = x509.load_pem_x509_certificate(dev.ca_cert.read_bytes())
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca is True
    assert constraints.value.path_length == 0
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    public_key = ca.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.curve.name == "secp256r1"
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert dt.timedelta(days=3640) <= lifetime <= dt.timedelta(days=3660)
    names = ca.extensions.get_extension_for_class(x509.NameConstraints)
    assert names.critical
    permitted = names.value.permitted_subtrees or []
    assert x509.DNSName("localhost") in permitted
    assert x509.IPAddress(ipaddress.ip_network("127.0.0.1/32")) in permitted
    assert x509.IPAddress(ipaddress.ip_network("::1/128")) in permitted


def test_server_profile(dev: DevCertificates) -> None:
    leaf = _chain(dev.server_cert)[0]
    public_key = leaf.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.curve.name == "secp256r1"
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= dt.timedelta(days=397)
    assert dev.not_after == leaf.not_valid_after_utc


def test_name_constraints_follow_the_hosts(tmp_path: Path) -> None:
    # The CA can vouch only for the hosts it was made for, so trusting ca.pem does not trust
    # whoever might later get hold of it to sign for other sites.
    made = write_dev_certificates(tmp_path, hosts=("example.test", "*.svc.test", "10.1.2.3"))
    ca = x509.load_pem_x509_certificate(made.ca_cert.read_bytes())
    permitted = ca.extensions.get_extension_for_class(x509.NameConstraints).value
    assert permitted.permitted_subtrees == [
        x509.DNSName("example.test"),
        x509.DNSName("svc.test"),
        x509.IPAddress(ipaddress.ip_network("10.1.2.3/32")),
    ]
    assert permitted.excluded_subtrees is None


def test_spki_pins_match_an_independent_computation(dev: DevCertificates) -> None:
    assert dev.server_pin == _openssl_pin(dev.server_key, is_key=True)
    assert dev.server_pin == _openssl_pin(dev.server_cert, is_key=False)
    assert dev.backup_pin == _openssl_pin(dev.backup_key, is_key=True)
    assert dev.server_pin != dev.backup_pin
    assert dev.pins == (dev.server_pin, dev.backup_pin)


def test_spki_pin_accepts_certificate_private_and_public_key(dev: DevCertificates) -> None:
    leaf = _chain(dev.server_cert)[0]
    key = serialization.load_pem_private_key(dev.server_key.read_bytes(), password=None)
    assert spki_pin(leaf) == spki_pin(key) == spki_pin(key.public_key()) == dev.server_pin
    digest = base64.b64decode(dev.server_pin.removeprefix("sha256/"))
    assert len(digest) == 32


def test_custom_hosts_with_wildcard(tmp_path: Path) -> None:
    made = write_dev_certificates(tmp_path, hosts=("API.Example.Test.", "*.svc.test", "10.0.0.1"))
    san = (
        _chain(made.server_cert)[0]
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value
    )
    assert san.get_values_for_type(x509.DNSName) == ["api.example.test", "*.svc.test"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.1")]


@pytest.mark.parametrize("hosts", [(), ("",), ("a.*.test",), ("*",)])
def test_invalid_hosts_are_refused(tmp_path: Path, hosts: tuple[str, ...]) -> None:
    with pytest.raises(ConfigurationError, match="hosts"):
        write_dev_certificates(tmp_path, hosts=hosts)
    assert not any(tmp_path.iterdir())


def test_ensure_reuses_existing_files(tmp_path: Path) -> None:
    first = ensure_dev_certificates(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    second = ensure_dev_certificates(tmp_path)
    assert second == first
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize("missing", ["ca.pem", "server.pem", "server-key.pem", "backup-key.pem"])
def test_ensure_recreates_when_a_file_is_missing(tmp_path: Path, missing: str) -> None:
    first = ensure_dev_certificates(tmp_path)
    (tmp_path / missing).unlink()
    second = ensure_dev_certificates(tmp_path)
    assert (tmp_path / missing).exists()
    assert second.server_pin != first.server_pin


def test_ensure_recreates_for_new_hosts_or_expiry(tmp_path: Path) -> None:
    first = ensure_dev_certificates(tmp_path)
    wider = ensure_dev_certificates(tmp_path, hosts=("localhost", "api.test"))
    assert wider.server_pin != first.server_pin
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=400)
    renewed = ensure_dev_certificates(tmp_path, hosts=("localhost", "api.test"), now=later)
    assert renewed.server_pin != wider.server_pin
    assert renewed.not_after > later


def test_ensure_recreates_when_key_does_not_match(tmp_path: Path) -> None:
    first = ensure_dev_certificates(tmp_path)
    write_private_file(first.server_key, first.backup_key.read_bytes())
    second = ensure_dev_certificates(tmp_path)
    assert spki_pin(_chain(second.server_cert)[0]) == second.server_pin


def test_write_private_file_replaces_loose_modes_and_symlinks(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("untouched")
    loose = tmp_path / "loose.pem"
    loose.write_text("old")
    loose.chmod(0o644)
    link = tmp_path / "link.pem"
    link.symlink_to(target)
    old_umask = os.umask(0)
    try:
        write_private_file(loose, b"secret")
        write_private_file(link, b"secret")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(loose.stat().st_mode) == 0o600
    assert loose.read_bytes() == b"secret"
    assert not link.is_symlink()
    assert stat.S_IMODE(link.stat().st_mode) == 0o600
    assert target.read_text() == "untouched"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "link.pem", "loose.pem"]


def test_public_surface() -> None:
    assert set(certs.__all__) == {
        "BACKUP_KEY_FILE",
        "CA_FILE",
        "DEFAULT_HOSTS",
        "SERVER_CERT_FILE",
        "SERVER_KEY_FILE",
        "DevCertificates",
        "ensure_dev_certificates",
        "spki_pin",
        "write_dev_certificates",
        "write_private_file",
    }
