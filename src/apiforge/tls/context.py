"""The server's TLS context: safe protocol settings, load-time checks, reload without restart.

``build_server_context`` returns an ``ssl.SSLContext`` that speaks TLS 1.3 only, or, when the
operator allows it, TLS 1.2 with ECDHE key exchange and AEAD ciphers and nothing older. Before
any certificate is handed to OpenSSL it is checked, so a broken deployment fails at start with a
message that names the file and the fix instead of failing every handshake later:

- the private key belongs to the first certificate (public keys compared);
- every certificate in the chain file is signed by the one after it (leaf first);
- no certificate has expired or is not yet valid; one expiring within 30 days is a warning;
- the leaf's subjectAltName covers ``server_name`` when one is given (wildcard-aware);
- a chain that is only a leaf, not self-signed, is a warning (see ``load_report``).

The checked bytes are the bytes loaded: each file is read once, checked, and handed to OpenSSL
from memory, so a file that changes between the check and the load cannot slip through.

``CertificateReloader`` watches the files and loads a new, checked pair into the same context:
handshakes after the swap present the new certificate, connections already open keep theirs,
and a bad pair is refused while the old one stays in service. ``apply_to_uvicorn`` makes uvicorn
serve this context instead of building its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import logging
import os
import ssl
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from apiforge.errors import ConfigurationError
from apiforge.tls.certs import write_private_file

if TYPE_CHECKING:
    import uvicorn

__all__ = [
    "EXPIRY_WARNING",
    "TLS12_CIPHERS",
    "CertificateReloader",
    "TlsSettings",
    "apply_to_uvicorn",
    "build_server_context",
    "load_report",
    "names_cover",
]

logger = logging.getLogger("apiforge.tls")

_T = TypeVar("_T")
_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Forward secrecy (ECDHE) and authenticated encryption (GCM, ChaCha20-Poly1305) only: no RSA key
# transport, no finite-field DHE, no CBC (Lucky13 and padding-oracle families), no SHA-1 MACs.
# This string governs TLS 1.2 only; every TLS 1.3 suite already meets the bar (RFC 8446).
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
# Long enough for a renewal to go through a change window and a failed first attempt.
EXPIRY_WARNING = dt.timedelta(days=30)
_MIN_RSA_BITS = 2048

_VERSIONS: dict[str, ssl.TLSVersion] = {
    "1.3": ssl.TLSVersion.TLSv1_3,
    "1.2": ssl.TLSVersion.TLSv1_2,
}
_FIX_VERSION = 'fix: set tls.min_version to "1.3" (the default) or "1.2"'


def _normalize_version(value: object) -> str:
    text = str(value).strip().lower().removeprefix("tlsv").removeprefix("tls").strip()
    if text in _VERSIONS:
        return text
    if text in {"1", "1.0", "1.1"} or text.startswith("ssl"):
        raise ConfigurationError(
            f"tls.min_version: {value!r} is below TLS 1.2; TLS 1.0 and 1.1 are deprecated "
            f"(RFC 8996) and SSL is broken, so this server never offers them; {_FIX_VERSION}"
        )
    raise ConfigurationError(f"tls.min_version: {value!r} is not a TLS version; {_FIX_VERSION}")


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """Where the certificate and key are, and what the server accepts.

    Attributes:
        certfile: PEM chain the server presents: the leaf first, then each intermediate. Clients
            verify the whole path, so a missing intermediate fails for every client that has not
            cached it.
        keyfile: PEM private key of the leaf, unencrypted, readable by the server user only.
            Whoever reads it can impersonate the server.
        min_version: oldest protocol accepted: ``"1.3"`` (default) or ``"1.2"`` for old clients.
            ``"1.2"`` still admits only ECDHE with AEAD ciphers. Anything older is refused.
        server_name: the name clients connect to; when set, the certificate must cover it, so a
            certificate for the wrong host fails at start rather than in every client.
    """

    certfile: Path
    keyfile: Path
    min_version: str = "1.3"
    server_name: str | None = None

    def __post_init__(self) -> None:
        # Frozen, so normalize through object.__setattr__: str paths and a YAML float 1.2 are
        # accepted at the door and every later reader sees one canonical form.
        object.__setattr__(self, "certfile", Path(self.certfile))
        object.__setattr__(self, "keyfile", Path(self.keyfile))
        object.__setattr__(self, "min_version", _normalize_version(self.min_version))
        if self.server_name is not None and not self.server_name.strip():
            raise ConfigurationError(
                "tls.server_name: an empty name matches nothing; fix: give the host name "
                "clients connect to, or leave it unset"
            )


@dataclass(frozen=True, slots=True)
class _Material:
    """One checked certificate/key pair, exactly as read from disk."""

    cert_pem: bytes
    key_pem: bytes
    leaf: x509.Certificate
    key_family: str
    warnings: tuple[str, ...]


def _read(path: Path, key: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(
            f"{key} {str(path)!r}: cannot be read ({exc.strerror or exc}); fix: point {key} at "
            "an existing PEM file readable by the server's user"
        ) from None


def _describe(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def _key_family(public_key: PublicKeyTypes) -> str:
    # OpenSSL keeps one certificate slot per key family; which family a key is in decides
    # whether loading it replaces the certificate in service or sits beside it.
    if isinstance(public_key, rsa.RSAPublicKey):
        return "RSA"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return "EC"
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(public_key, ed448.Ed448PublicKey):
        return "Ed448"
    return type(public_key).__name__


def _spki(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _load_chain(cert_pem: bytes, path: Path) -> list[x509.Certificate]:
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise ConfigurationError(
            f"tls.certfile {str(path)!r}: holds no PEM certificate (-----BEGIN CERTIFICATE-----); "
            "fix: point tls.certfile at the PEM chain, leaf first, then the intermediates"
        ) from None
    return chain


def _load_key(key_pem: bytes, path: Path) -> PublicKeyTypes:
    try:
        private_key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise ConfigurationError(
            f"tls.keyfile {str(path)!r}: the key is encrypted and the server cannot prompt for a "
            "passphrase; fix: store it decrypted with mode 0600 "
            "(openssl pkey -in KEY -out server-key.pem)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigurationError(
            f"tls.keyfile {str(path)!r}: holds no readable PEM private key; fix: point "
            "tls.keyfile at the PEM private key of the certificate's first entry"
        ) from None
    public_key = private_key.public_key()
    if isinstance(public_key, dsa.DSAPublicKey):
        raise ConfigurationError(
            f"tls.keyfile {str(path)!r}: DSA keys cannot be used with TLS 1.3; fix: issue the "
            "certificate on an ECDSA P-256 or RSA 2048+ key"
        )
    if isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size < _MIN_RSA_BITS:
        raise ConfigurationError(
            f"tls.keyfile {str(path)!r}: RSA key of {public_key.key_size} bits is too weak; fix: "
            f"issue the certificate on an ECDSA P-256 or RSA {_MIN_RSA_BITS}+ key"
        )
    return public_key


def _check_chain(chain: list[x509.Certificate], path: Path, warnings: list[str]) -> None:
    for index in range(1, len(chain)):
        child, parent = chain[index - 1], chain[index]
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            raise ConfigurationError(
                f"tls.certfile {str(path)!r}: certificate #{index} ({_describe(child)}) is not "
                f"issued by certificate #{index + 1} ({_describe(parent)}); fix: order the file "
                "leaf first, then each issuer in turn, and drop certificates of other chains"
            ) from None
    if len(chain) == 1:
        leaf = chain[0]
        try:
            leaf.verify_directly_issued_by(leaf)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            # Issued by a CA but sent alone: clients that have not cached the intermediate fail
            # verification. A warning, not an error: some CAs issue straight from a root that
            # clients already hold, and a private CA may ship its root to every client.
            warnings.append(
                f"tls.certfile {str(path)!r}: holds only the leaf certificate "
                f"({_describe(leaf)}); clients without the intermediate CA will fail to verify "
                "it; fix: append the intermediates after the leaf (the CA's full-chain file)"
            )


def _check_dates(
    chain: list[x509.Certificate], path: Path, now: dt.datetime, warnings: list[str]
) -> None:
    for index, cert in enumerate(chain, start=1):
        where = f"tls.certfile {str(path)!r}: certificate #{index} ({_describe(cert)})"
        not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
        if now < not_before:
            raise ConfigurationError(
                f"{where} is not valid before {not_before.isoformat()}; fix: check the server "
                "clock (NTP) or wait for the certificate's start date"
            )
        if now >= not_after:
            raise ConfigurationError(
                f"{where} expired on {not_after.isoformat()}; fix: renew it and replace the file "
                "(the running server picks up the new pair without a restart)"
            )
        if not_after - now <= EXPIRY_WARNING:
            days = (not_after - now).days
            warnings.append(
                f"{where} expires on {not_after.isoformat()} (in {days} days); fix: renew it "
                "now and replace the file"
            )


def _san_names(leaf: x509.Certificate) -> tuple[list[str], list[_IPAddress]] | None:
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    dns = [name.lower().rstrip(".") for name in san.get_values_for_type(x509.DNSName)]
    addresses = [
        address
        for address in san.get_values_for_type(x509.IPAddress)
        if isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address)
    ]
    return dns, addresses


def _dns_matches(pattern: str, name: str) -> bool:
    if pattern == name:
        return True
    # RFC 6125 section 6.4.3: a wildcard is the whole leftmost label and stands for exactly one
    # label, so *.example.com covers api.example.com but neither example.com nor a.b.example.com.
    if not pattern.startswith("*.") or "*" in pattern[2:]:
        return False
    suffix = pattern[1:]
    label = name[: -len(suffix)] if name.endswith(suffix) else ""
    return bool(label) and "." not in label


def names_cover(leaf: x509.Certificate, server_name: str) -> bool:
    """Whether the certificate's subjectAltName covers ``server_name``.

    Only the SAN counts, as in every current client (RFC 6125): a name that appears only in the
    subject's CN is not covered. IP addresses match IP entries exactly; DNS names match case-
    insensitively, with a wildcard standing for one whole leftmost label.

    Args:
        leaf: the server certificate.
        server_name: the host name or IP address clients connect to.
    """
    names = _san_names(leaf)
    if names is None:
        return False
    dns, addresses = names
    try:
        address = ipaddress.ip_address(server_name.strip().strip("[]"))
    except ValueError:
        wanted = server_name.strip().lower().rstrip(".")
        try:
            # Certificates carry internationalized names in their ASCII (A-label) form.
            wanted = wanted.encode("idna").decode("ascii")
        except UnicodeError:
            return False
        return any(_dns_matches(pattern, wanted) for pattern in dns)
    return address in addresses


def _inspect(settings: TlsSettings, now: dt.datetime | None) -> _Material:
    cert_pem = _read(settings.certfile, "tls.certfile")
    key_pem = _read(settings.keyfile, "tls.keyfile")
    moment = now or dt.datetime.now(dt.UTC)
    warnings: list[str] = []

    chain = _load_chain(cert_pem, settings.certfile)
    public_key = _load_key(key_pem, settings.keyfile)
    leaf = chain[0]
    if _spki(leaf.public_key()) != _spki(public_key):
        raise ConfigurationError(
            f"tls.keyfile {str(settings.keyfile)!r} is not the key of the first certificate in "
            f"tls.certfile {str(settings.certfile)!r} ({_describe(leaf)}); fix: pair the "
            "certificate with the key it was issued for, and put the leaf first in the chain"
        )
    _check_chain(chain, settings.certfile, warnings)
    _check_dates(chain, settings.certfile, moment, warnings)

    names = _san_names(leaf)
    if names is None:
        warnings.append(
            f"tls.certfile {str(settings.certfile)!r}: the certificate has no subjectAltName, so "
            "clients accept it for no name; fix: reissue it with the server's names as SAN entries"
        )
    if settings.server_name is not None and not names_cover(leaf, settings.server_name):
        present = [*names[0], *map(str, names[1])] if names else []
        raise ConfigurationError(
            f"tls.certfile {str(settings.certfile)!r}: the certificate names {present} do not "
            f"cover tls.server_name {settings.server_name!r}; fix: use a certificate issued for "
            "that name, or set tls.server_name to the name clients really connect to"
        )

    if os.name == "posix":
        mode = stat.S_IMODE(os.stat(settings.keyfile).st_mode)
        if mode & 0o077:
            warnings.append(
                f"tls.keyfile {str(settings.keyfile)!r}: mode {mode:04o} lets other users read "
                "the private key; fix: chmod 600 the file"
            )
    return _Material(cert_pem, key_pem, leaf, _key_family(public_key), tuple(warnings))


def _new_context(min_version: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[min_version]
    context.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    context.set_ciphers(TLS12_CIPHERS)
    # No compression (CRIME), no renegotiation (client-initiated renegotiation is a cheap CPU
    # attack and has had splicing bugs), and our cipher order rather than the client's.
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.options |= ssl.OP_NO_RENEGOTIATION
    return context


def _no_passphrase() -> bytes:
    # Checked keys are never encrypted; this only keeps OpenSSL from ever prompting on a TTY.
    return b""


@contextlib.contextmanager
def _staged(material: _Material) -> Iterator[tuple[str, str]]:
    """Paths OpenSSL can open that hold exactly the checked bytes."""
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None and os.path.isdir("/proc/self/fd"):
        # Anonymous memory files: the key is never written to disk a second time.
        fds: list[int] = []
        try:
            for data in (material.cert_pem, material.key_pem):
                fd = memfd_create("apiforge-tls", os.MFD_CLOEXEC)
                fds.append(fd)
                with os.fdopen(fd, "wb", closefd=False) as handle:
                    handle.write(data)
            yield f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}"
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="apiforge-tls-") as directory:
        cert_path, key_path = Path(directory) / "cert.pem", Path(directory) / "key.pem"
        write_private_file(cert_path, material.cert_pem)
        write_private_file(key_path, material.key_pem)
        yield str(cert_path), str(key_path)


def _load_into(context: ssl.SSLContext, material: _Material) -> None:
    with _staged(material) as (cert_path, key_path):
        context.load_cert_chain(cert_path, key_path, password=_no_passphrase)


def load_report(settings: TlsSettings, *, now: dt.datetime | None = None) -> list[str]:
    """Check the certificate and key files and return the warnings.

    Args:
        settings: the files and the name to check.
        now: the time to check validity at; defaults to the clock.

    Returns:
        Human-readable warnings, each naming the file and the fix: a chain that is only a
        non-self-signed leaf, a certificate expiring within 30 days, a key readable by others,
        no subjectAltName. Empty when all is well.

    Raises:
        ConfigurationError: a file is unreadable or malformed, the key does not match, the chain
            is out of order, a certificate has expired or is not yet valid, or the names do not
            cover ``settings.server_name``.
    """
    return list(_inspect(settings, now).warnings)


def build_server_context(
    settings: TlsSettings, *, now: dt.datetime | None = None
) -> ssl.SSLContext:
    """Build the server ``SSLContext`` after checking the certificate and key.

    Args:
        settings: the files, the oldest protocol version allowed and the name to check.
        now: the time to check validity at; defaults to the clock.

    Returns:
        A context for ``PROTOCOL_TLS_SERVER``: TLS 1.3 only by default, or TLS 1.2+ with ECDHE
        and AEAD ciphers only; no compression, no renegotiation, server cipher preference.

    Raises:
        ConfigurationError: as ``load_report``. Warnings are not raised: get them from
            ``load_report``.
    """
    material = _inspect(settings, now)
    context = _new_context(settings.min_version)
    _load_into(context, material)
    return context


_FileSignature = tuple[int, int, int, int] | None


def _signature(path: Path) -> _FileSignature:
    try:
        # stat follows symlinks, so a Kubernetes secret volume, which swaps a "..data" symlink,
        # shows up as a change of inode.
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size, info.st_ino, info.st_dev)


class CertificateReloader:
    """Reload a renewed certificate into a running server's context, without a restart.

    Every ``interval`` seconds the certificate and key files are stat'ed; when their (mtime,
    size, inode) change, the pair is checked as at start and loaded into the same
    ``SSLContext``. New handshakes then present the new certificate; open connections keep
    theirs. A pair that fails a check is refused and logged on ``apiforge.tls``, and the
    certificate in service stays. A renewal tool that writes the certificate and the key one
    after the other is refused at the half-way point and accepted once the key lands, since
    that is a second change.

    The reloader must run on the event loop that serves the context: OpenSSL contexts are not
    safe to modify while another thread starts handshakes on them.

    A new key of another algorithm family (EC to RSA) is refused too: OpenSSL keeps one
    certificate per family, so the old certificate would stay in service beside the new one.
    Restart the server for that change.

    Args:
        context: the context the server listens with (from ``build_server_context``).
        settings: the files to watch and the checks to apply; the same as the context's.
        interval: seconds between two polls of the files.
        on_reload: called after a new pair is in service, with its warnings.
        on_error: called with the error when a changed pair is refused.
    """

    def __init__(
        self,
        context: ssl.SSLContext,
        settings: TlsSettings,
        interval: float = 1.0,
        *,
        on_reload: Callable[[list[str]], None] | None = None,
        on_error: Callable[[ConfigurationError], None] | None = None,
    ) -> None:
        if not interval > 0:
            raise ConfigurationError(
                f"tls.reload_interval: {interval!r} must be a positive number of seconds; "
                "fix: use 1 or more"
            )
        self._context = context
        self._settings = settings
        self._interval = interval
        self._on_reload = on_reload
        self._on_error = on_error
        self._signature = self._stat()
        # The pair in service, kept to restore it if OpenSSL refuses a new one half-way (a
        # failed load can leave the new certificate in place without its key).
        self._current = _inspect(settings, None)
        self._task: asyncio.Task[None] | None = None

    def _stat(self) -> tuple[_FileSignature, _FileSignature]:
        return _signature(self._settings.certfile), _signature(self._settings.keyfile)

    @property
    def running(self) -> bool:
        """Whether the polling task is alive."""
        return self._task is not None and not self._task.done()

    def check(self, *, now: dt.datetime | None = None) -> bool:
        """Poll once: reload the pair if the files changed and the new pair passes the checks.

        Args:
            now: the time to check validity at; defaults to the clock.

        Returns:
            True when a new pair went into service.
        """
        signature = self._stat()
        if signature == self._signature:
            return False
        # Record before reading: a write that lands after this point is a new change.
        self._signature = signature
        try:
            material = _inspect(self._settings, now)
            if material.cert_pem == self._current.cert_pem and (
                material.key_pem == self._current.key_pem
            ):
                return False
            if material.key_family != self._current.key_family:
                raise ConfigurationError(
                    f"tls.keyfile {str(self._settings.keyfile)!r}: the key changed from "
                    f"{self._current.key_family} to {material.key_family}; a running server "
                    "cannot retire the old key in place; fix: restart the server to switch "
                    "key algorithms"
                )
            self._swap(material)
        except ConfigurationError as exc:
            logger.error("TLS certificate reload refused, the previous one stays: %s", exc)
            self._notify(self._on_error, exc)
            return False
        logger.info(
            "TLS certificate reloaded: %s, serial %x, valid until %s",
            _describe(material.leaf),
            material.leaf.serial_number,
            material.leaf.not_valid_after_utc.isoformat(),
        )
        for warning in material.warnings:
            logger.warning("%s", warning)
        self._notify(self._on_reload, list(material.warnings))
        return True

    def _swap(self, material: _Material) -> None:
        try:
            _load_into(self._context, material)
        except (ssl.SSLError, OSError) as exc:
            _load_into(self._context, self._current)
            raise ConfigurationError(
                f"tls.certfile {str(self._settings.certfile)!r}: OpenSSL refused the new pair "
                f"({exc}); fix: check the certificate and key with openssl x509 / openssl pkey"
            ) from None
        self._current = material

    @staticmethod
    def _notify(callback: Callable[[_T], None] | None, value: _T) -> None:
        if callback is None:
            return
        try:
            callback(value)
        except Exception:
            # A failing observer must not stop certificate rotation.
            logger.exception("TLS reload callback failed")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                self.check()
            except Exception:
                # Never let an unexpected error end the task: rotation would stop in silence.
                logger.exception("TLS certificate check failed")

    def start(self) -> None:
        """Start polling on the running event loop (the server's).

        Raises:
            RuntimeError: no event loop is running, or the reloader is already running.
        """
        if self.running:
            raise RuntimeError("the certificate reloader is already running")
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name="apiforge-tls-reloader")

    async def stop(self) -> None:
        """Stop polling; the certificate in service stays."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def __aenter__(self) -> CertificateReloader:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()


def apply_to_uvicorn(config: uvicorn.Config, context: ssl.SSLContext) -> None:
    """Make a uvicorn server listen with ``context`` instead of a context of its own.

    Installs ``context`` as uvicorn's ``ssl_context_factory``, so ``Config.load()`` uses it,
    ``config.is_ssl`` is true and every request scope has ``scheme == "https"``. The ALPN
    protocols of uvicorn's HTTP implementation are set on the context at load, as uvicorn does
    for its own. If the config is already loaded, ``config.ssl`` is replaced as well.

    Args:
        config: a single-process uvicorn config. Any ``ssl_certfile``/``ssl_keyfile`` on it are
            ignored in favour of the context.
        context: from ``build_server_context``; keep the reference for ``CertificateReloader``.

    Raises:
        ConfigurationError: the config runs workers or the reloader (an ``SSLContext`` cannot be
            sent to child processes), or this uvicorn has no ``ssl_context_factory``.
    """
    if config.use_subprocess:
        raise ConfigurationError(
            "server.workers / server.reload: a TLS context cannot be shared with uvicorn's "
            "child processes; fix: run one process per instance and scale out with more "
            "instances behind a load balancer"
        )
    if not hasattr(config, "ssl_context_factory"):
        raise ConfigurationError(
            "uvicorn: this version cannot take an SSL context (Config.ssl_context_factory); "
            "fix: install the uvicorn version pinned by apiforge"
        )

    def factory(loaded: uvicorn.Config, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        alpn: list[str] | None = getattr(
            getattr(loaded, "http_protocol_class", None), "alpn_protocols", None
        )
        if alpn:
            context.set_alpn_protocols(list(alpn))
        return context

    config.ssl_context_factory = factory
    if config.loaded:
        config.ssl = context
