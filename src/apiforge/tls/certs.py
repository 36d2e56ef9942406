"""Development certificates and SPKI pins.

``write_dev_certificates`` makes what a developer needs to run the service over HTTPS on their
own machine, with nothing borrowed from a public CA::

    DIR/ca.pem              dev CA certificate: trust it in the client (never the key: see below)
    DIR/server.pem          server certificate followed by the CA: the full chain the server sends
    DIR/server-key.pem      server private key, mode 0600
    DIR/backup-key.pem      spare key pair, mode 0600, for the second certificate pin

The CA's private key is never written: it signs the one server certificate and is dropped, and
the CA carries name constraints for the requested hosts only. A developer who trusts ``ca.pem``
in a browser or a keychain therefore does not trust anyone who later reads the directory to sign
a certificate for some other site. The cost is that a new server certificate means a new CA;
for a development certificate that is the right trade.

``spki_pin`` computes the pin that mobile clients ship (OkHttp ``CertificatePinner``, Android
``network_security_config``, TrustKit, HPKP): the SHA-256 of the DER SubjectPublicKeyInfo,
base64-encoded. A pin names a key, not a certificate, so renewing a certificate on the same key
keeps every installed app working; the backup key is what the next certificate is issued on
when the live key must be replaced.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import ipaddress
import os
import secrets
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from apiforge.errors import ConfigurationError

__all__ = [
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
]

DEFAULT_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
CA_FILE = "ca.pem"
SERVER_CERT_FILE = "server.pem"
SERVER_KEY_FILE = "server-key.pem"
BACKUP_KEY_FILE = "backup-key.pem"

# Ten years for the dev CA so a developer trusts it once. The leaf stays within the 397 days
# that browsers and the CA/Browser Forum accept for a server certificate, so the dev setup
# behaves like production instead of teaching clients to accept what a browser would refuse.
_CA_LIFETIME = dt.timedelta(days=3650)
_SERVER_LIFETIME = dt.timedelta(days=397)
# Start a little in the past: a client whose clock runs a few minutes behind must not see a
# "not yet valid" certificate right after the server made it.
_BACKDATE = dt.timedelta(minutes=5)

PinSource = x509.Certificate | PrivateKeyTypes | PublicKeyTypes

# Read from the union rather than named one by one: naming some of these classes (finite-field
# DH) raises a deprecation warning in current cryptography releases.
_PRIVATE_KEY_CLASSES: tuple[type, ...] = typing.get_args(PrivateKeyTypes)


@dataclass(frozen=True, slots=True)
class DevCertificates:
    """Where the development certificates are, and the pins of the two keys.

    Attributes:
        ca_cert: the dev CA certificate; the only file a client needs to trust.
        server_cert: the full chain the server presents (leaf, then CA).
        server_key: the live server private key (0600); whoever reads it can impersonate the
            server.
        backup_key: the spare private key (0600) whose pin clients ship alongside the live one;
            keep a copy offline so a lost or leaked live key never strands installed clients.
        server_pin: ``sha256/BASE64`` SPKI pin of the live key.
        backup_pin: ``sha256/BASE64`` SPKI pin of the backup key.
        not_after: when the server certificate expires (UTC).
    """

    ca_cert: Path
    server_cert: Path
    server_key: Path
    backup_key: Path
    server_pin: str
    backup_pin: str
    not_after: dt.datetime

    @property
    def pins(self) -> tuple[str, str]:
        """Both pins, live first: what a pinning client ships."""
        return (self.server_pin, self.backup_pin)


def spki_pin(cert_or_key: PinSource) -> str:
    """The SPKI pin of a certificate or key, as ``sha256/BASE64``.

    The hash covers the DER SubjectPublicKeyInfo (algorithm and public key), the value HPKP
    (RFC 7469) and OkHttp pin, so a pin stays valid across certificate renewals on the same key.
    Strip the ``sha256/`` prefix where a tool wants the bare base64 (Android
    ``<pin digest="SHA-256">``, TrustKit).

    Args:
        cert_or_key: a certificate, a public key or a private key (its public half is pinned).

    Returns:
        ``"sha256/"`` followed by the standard base64 of the SHA-256 digest.
    """
    if isinstance(cert_or_key, x509.Certificate):
        public_key: PublicKeyTypes = cert_or_key.public_key()
    elif isinstance(cert_or_key, _PRIVATE_KEY_CLASSES):
        public_key = typing.cast("PrivateKeyTypes", cert_or_key).public_key()
    else:
        public_key = typing.cast("PublicKeyTypes", cert_or_key)
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256/" + base64.b64encode(hashlib.sha256(der).digest()).decode("ascii")


def write_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that it is never readable by anyone but the owner.

    The bytes go to a fresh file created with ``O_EXCL`` and mode 0600 in the same directory,
    then replace ``path`` atomically. Opening ``path`` itself with ``O_TRUNC`` would keep the
    mode of an existing file (0644 stays 0644) and follow a symlink planted there, and a reader
    could see a half-written key; a new inode renamed over the old one has none of these
    problems, and a server that watches the file sees one complete change.

    Args:
        path: destination; an existing file or symlink there is replaced, not written through.
        data: the secret bytes (a PEM private key).
    """
    temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(temp, flags, 0o600)
    try:
        # The umask can only remove bits; fchmod makes 0600 exact whatever umask is in force.
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb", closefd=False) as handle:
            handle.write(data)
            handle.flush()
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
    os.close(fd)
    os.replace(temp, path)


def _write_public_file(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    temp.write_bytes(data)
    os.replace(temp, path)


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _permitted_subtree(host: str) -> x509.GeneralName:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        # A DNS constraint "example.com" permits the name and every name under it, which is
        # exactly the reach of a "*.example.com" SAN.
        return x509.DNSName(host.removeprefix("*."))
    return x509.IPAddress(ipaddress.ip_network(address))


def _check_hosts(hosts: Sequence[str]) -> tuple[str, ...]:
    cleaned = tuple(dict.fromkeys(h.strip().lower().rstrip(".") for h in hosts))
    if not cleaned or any(not h for h in cleaned):
        raise ConfigurationError(
            f"tls dev certificate hosts: {list(hosts)!r} must name at least one host and no "
            "empty names; fix: pass host names or IP addresses such as localhost, 127.0.0.1"
        )
    for host in cleaned:
        if "*" in host.removeprefix("*.") or host == "*.":
            raise ConfigurationError(
                f"tls dev certificate hosts: {host!r} is not a valid name; fix: a wildcard may "
                "only be the whole leftmost label, as in *.example.test"
            )
    return cleaned


def write_dev_certificates(
    directory: Path,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    *,
    now: dt.datetime | None = None,
) -> DevCertificates:
    """Create a dev CA, a server certificate for ``hosts``, its key and a backup key.

    Every file is replaced. Keys are ECDSA P-256 (small, fast handshakes, accepted everywhere);
    private keys are written with mode 0600 from the first byte. The CA is limited to ``hosts``
    by a critical name-constraints extension and its key is discarded.

    Args:
        directory: where to write; created with mode 0700 when missing. Keep it out of any
            directory that is served or committed.
        hosts: DNS names (``*.name`` allowed) and IP addresses the certificate is valid for; a
            client checks the name it connected to against exactly these.
        now: the issuing time (tests back-date certificates with it); defaults to the clock.

    Returns:
        The paths and the SPKI pins of the live and backup keys.

    Raises:
        ConfigurationError: ``hosts`` is empty or holds an invalid name.
    """
    names = _check_hosts(hosts)
    issued = (now or dt.datetime.now(dt.UTC)) - _BACKDATE
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    server_key = ec.generate_private_key(ec.SECP256R1())
    backup_key = ec.generate_private_key(ec.SECP256R1())

    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "APIForge development"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"APIForge dev CA {secrets.token_hex(4)}"),
        ]
    )
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(issued)
        .not_valid_after(issued + _CA_LIFETIME)
        # pathlen 0: the CA may sign server certificates but no further CA under it.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.NameConstraints(
                permitted_subtrees=[_permitted_subtree(h) for h in names],
                excluded_subtrees=None,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(issued)
        .not_valid_after(issued + _SERVER_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        # Clients match names against the SAN only (RFC 6125); the CN above is for humans.
        .add_extension(
            x509.SubjectAlternativeName([_general_name(h) for h in names]), critical=False
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    del ca_key  # never written anywhere: see the module docstring

    pem = serialization.Encoding.PEM
    key_format = serialization.PrivateFormat.PKCS8
    no_password = serialization.NoEncryption()
    paths = _paths(directory)
    # Keys first: a watcher that sees the new chain finds its key already in place.
    write_private_file(paths[2], server_key.private_bytes(pem, key_format, no_password))
    write_private_file(paths[3], backup_key.private_bytes(pem, key_format, no_password))
    _write_public_file(paths[1], server_cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    _write_public_file(paths[0], ca_cert.public_bytes(pem))
    return DevCertificates(
        ca_cert=paths[0],
        server_cert=paths[1],
        server_key=paths[2],
        backup_key=paths[3],
        server_pin=spki_pin(server_key),
        backup_pin=spki_pin(backup_key),
        not_after=server_cert.not_valid_after_utc,
    )


def _paths(directory: Path) -> tuple[Path, Path, Path, Path]:
    return (
        directory / CA_FILE,
        directory / SERVER_CERT_FILE,
        directory / SERVER_KEY_FILE,
        directory / BACKUP_KEY_FILE,
    )


def _existing(directory: Path, names: Sequence[str], now: dt.datetime) -> DevCertificates | None:
    ca_path, cert_path, key_path, backup_path = _paths(directory)
    try:
        chain = x509.load_pem_x509_certificates(cert_path.read_bytes())
        x509.load_pem_x509_certificate(ca_path.read_bytes())
        server_key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        backup_key = serialization.load_pem_private_key(backup_path.read_bytes(), password=None)
        san = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, x509.ExtensionNotFound):
        return None
    leaf = chain[0]
    if spki_pin(leaf) != spki_pin(server_key) or leaf.not_valid_after_utc <= now:
        return None
    present = {str(n).lower() for n in san.get_values_for_type(x509.DNSName)}
    present |= {str(a) for a in san.get_values_for_type(x509.IPAddress)}
    wanted = {str(ipaddress.ip_address(h)) if _is_ip(h) else h for h in names}
    if not wanted <= present:
        return None
    return DevCertificates(
        ca_cert=ca_path,
        server_cert=cert_path,
        server_key=key_path,
        backup_key=backup_path,
        server_pin=spki_pin(server_key),
        backup_pin=spki_pin(backup_key),
        not_after=leaf.not_valid_after_utc,
    )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def ensure_dev_certificates(
    directory: Path,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    *,
    now: dt.datetime | None = None,
) -> DevCertificates:
    """Reuse the development certificates in ``directory``, creating them only when needed.

    The files are reused, unchanged, when all four exist, parse, the key matches the
    certificate, the certificate has not expired and it names every host in ``hosts``.
    Otherwise all four are written afresh (a new CA and new pins: clients must trust the new
    ``ca.pem``), because a server certificate is only ever issued together with its CA.

    Args:
        directory: the certificate directory (see ``write_dev_certificates``).
        hosts: names the certificate must cover.
        now: the current time for the expiry check; defaults to the clock.

    Returns:
        The paths and pins, the same whether the files were reused or written.
    """
    names = _check_hosts(hosts)
    current = now or dt.datetime.now(dt.UTC)
    found = _existing(Path(directory), names, current)
    if found is not None:
        return found
    return write_dev_certificates(directory, names, now=now)
