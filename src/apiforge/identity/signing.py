"""The issuer's signing keys: an ES256 keyring in one file, rotated without a restart.

The keyring is a JSON file (mode 0600, replaced atomically on every change)::

    {"format": "apiforge-signing-keyring/1",
     "keys": [{"kid": "<RFC 7638 thumbprint>", "alg": "ES256", "created": 1750000000,
               "retired": null, "private_key": "-----BEGIN PRIVATE KEY-----\\n..."}, ...]}

Exactly one key is *current* (``retired`` is ``null``); it signs every new token. Rotation
(:meth:`SigningKeyring.rotate`, ``apiforge keys rotate-signing``) retires the current key and
adds a new one. A retired key stays *published* (in :meth:`~SigningKeyring.jwks` and
:meth:`~SigningKeyring.key_set`) for ``keep_for`` seconds, the longest an access token signed
just before the rotation can still be accepted (its lifetime plus the verifier's leeway); it is
dropped from the file at the first rotation after that.

Every process holding a :class:`SigningKeyring` calls :meth:`~SigningKeyring.reload_if_changed`
(one ``stat``) before it signs or serves keys, so a rotation done by the command line in another
process is picked up at once. A process that has not reloaded yet keeps signing with the retired
key, which is still published: nothing it issues is refused.

Verification of our own tokens goes through the same code as any external issuer:
:func:`keyring_jwks_client` gives a :class:`~apiforge.identity.jwks.JwksClient` whose "fetch"
reads the local keyring instead of the network, for a
:class:`~apiforge.identity.tokens.TrustedIssuer` with ``jwks_url``.

The private keys are kept unencrypted in the file, like the TLS keys: the file mode is the
protection, and a keyring readable by group or others is refused at load.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
import orjson
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from apiforge.errors import ConfigurationError
from apiforge.identity.jwks import JwksClient, KeySet, VerificationKey, parse_jwk
from apiforge.integrations.http_client import HttpClientFactory
from apiforge.tls.certs import write_private_file

__all__ = [
    "DEFAULT_KEEP_FOR",
    "KEYRING_FORMAT",
    "KeyringTransport",
    "SigningKey",
    "SigningKeyring",
    "keyring_jwks_client",
]

KEYRING_FORMAT: Final = "apiforge-signing-keyring/1"
DEFAULT_KEEP_FOR: Final = 900 + 60
"""The longest access-token lifetime (15 minutes) plus the verifier's largest leeway (60 s)."""

_log = logging.getLogger("apiforge.identity.signing")
_ECDSA_SHA256: Final = ec.ECDSA(hashes.SHA256())
_HEADER_KEYS: Final = ("alg", "typ", "kid")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _public_members(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    # RFC 7518 section 6.2.1.2: coordinates are the full 32 bytes, zero-padded.
    return {
        "crv": "P-256",
        "kty": "EC",
        "x": _b64(numbers.x.to_bytes(32, "big")),
        "y": _b64(numbers.y.to_bytes(32, "big")),
    }


def _thumbprint(members: Mapping[str, str]) -> str:
    # RFC 7638 section 3: the required members, sorted, no whitespace, SHA-256, base64url.
    canonical = json.dumps(dict(members), sort_keys=True, separators=(",", ":")).encode()
    return _b64(hashlib.sha256(canonical).digest())


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One ES256 key of the keyring.

    Attributes:
        kid: the RFC 7638 thumbprint of the public key; tokens name it in their header.
        created: when the key was made (seconds since the epoch).
        retired: when it stopped signing, or ``None`` for the current key.
        private_key: the P-256 private key; never in ``repr``.
    """

    kid: str
    created: int
    retired: int | None
    private_key: ec.EllipticCurvePrivateKey = field(repr=False, compare=False)

    @classmethod
    def generate(cls, now: float) -> SigningKey:
        """A fresh current key."""
        private = ec.generate_private_key(ec.SECP256R1())
        return cls(_thumbprint(_public_members(private)), int(now), None, private)

    def public_jwk(self) -> dict[str, str]:
        """The public JWK, as published in the JWKS (no private member, ever)."""
        return {**_public_members(self.private_key), "use": "sig", "alg": "ES256",
                "kid": self.kid}

    def published_at(self, now: float, keep_for: float) -> bool:
        """Whether the key is still in the JWKS at ``now``."""
        return self.retired is None or now - self.retired < keep_for


def _encode_key(key: SigningKey) -> dict[str, Any]:
    pem = key.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return {"kid": key.kid, "alg": "ES256", "created": key.created, "retired": key.retired,
            "private_key": pem.decode("ascii")}


def _decode_key(entry: object, where: str) -> SigningKey:
    if not isinstance(entry, dict):
        raise ConfigurationError(f"{where}: every key must be a JSON object")
    kid, created, retired, pem = (entry.get(k) for k in ("kid", "created", "retired",
                                                         "private_key"))
    if entry.get("alg") != "ES256" or not isinstance(kid, str) or not isinstance(pem, str):
        raise ConfigurationError(f"{where}: a key lacks 'kid', 'private_key' or alg ES256")
    if isinstance(created, bool) or not isinstance(created, int):
        raise ConfigurationError(f"{where}: key {kid}: 'created' must be an integer")
    if retired is not None and (isinstance(retired, bool) or not isinstance(retired, int)):
        raise ConfigurationError(f"{where}: key {kid}: 'retired' must be an integer or null")
    try:
        private = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
    except (ValueError, TypeError, UnicodeEncodeError):
        raise ConfigurationError(f"{where}: key {kid}: 'private_key' is not a PEM key") from None
    if not isinstance(private, ec.EllipticCurvePrivateKey) or not isinstance(
        private.curve, ec.SECP256R1
    ):
        raise ConfigurationError(f"{where}: key {kid}: only P-256 keys sign ES256")
    if _thumbprint(_public_members(private)) != kid:
        # The kid is derived, never chosen: a mismatch means the file was edited by hand.
        raise ConfigurationError(f"{where}: key {kid}: 'kid' is not the key's thumbprint")
    return SigningKey(kid, created, retired, private)


def _file_identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialize read-modify-write of the keyring between processes (two rotations at once)."""
    lock = path.with_name(f".{path.name}.lock")
    fd = os.open(lock, os.O_CREAT | os.O_RDWR | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


class SigningKeyring:
    """The issuer's ES256 keys, read from (and rotated in) one JSON file.

    Build it with :meth:`load_or_create` or :meth:`load`; change it with :meth:`rotate`.

    Args:
        path: the keyring file.
        keys: the keys, current first.
        keep_for: seconds a retired key stays published: at least the access-token lifetime
            plus the verifiers' leeway, or tokens signed just before a rotation are refused
            before they expire.
        identity: the file's ``stat`` identity when read, for :meth:`reload_if_changed`.
        clock: seconds since the epoch, for what is published "now".

    Raises:
        ConfigurationError: ``keep_for`` is not positive, or ``keys`` has no single current key.
    """

    def __init__(
        self,
        path: Path,
        keys: tuple[SigningKey, ...],
        *,
        keep_for: float = DEFAULT_KEEP_FOR,
        identity: tuple[int, int, int, int] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if keep_for <= 0:
            raise ConfigurationError("signing keyring: keep_for must be positive seconds")
        self.path = path
        self.keep_for = keep_for
        self._clock = clock
        self._identity = identity
        self._set_keys(keys)

    def _set_keys(self, keys: tuple[SigningKey, ...]) -> None:
        current = [k for k in keys if k.retired is None]
        if len(current) != 1:
            raise ConfigurationError(
                f"signing keyring {self.path}: exactly one key must be current (retired null)"
            )
        self._current = current[0]
        self._keys = (current[0], *sorted((k for k in keys if k.retired is not None),
                                          key=lambda k: -(k.retired or 0)))
        self._key_set: tuple[frozenset[str], KeySet] | None = None

    # -- files --------------------------------------------------------------------------------

    @classmethod
    def _read(cls, path: Path) -> tuple[tuple[SigningKey, ...], tuple[int, int, int, int]]:
        where = f"signing keyring {path}"
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise ConfigurationError(f"{where}: cannot be read ({exc.strerror})") from None
        with os.fdopen(fd, "rb") as handle:
            st = os.fstat(handle.fileno())
            if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise ConfigurationError(
                    f"{where}: readable by group or others; run `chmod 600 {path}`"
                )
            raw = handle.read()
        try:
            document = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ConfigurationError(f"{where}: not JSON") from None
        if not isinstance(document, dict) or document.get("format") != KEYRING_FORMAT:
            raise ConfigurationError(f"{where}: not an APIForge signing keyring")
        entries = document.get("keys")
        if not isinstance(entries, list):
            raise ConfigurationError(f"{where}: no 'keys' array")
        return tuple(_decode_key(e, where) for e in entries), _file_identity(st)

    @staticmethod
    def _write(path: Path, keys: tuple[SigningKey, ...]) -> tuple[int, int, int, int]:
        document = {"format": KEYRING_FORMAT, "keys": [_encode_key(k) for k in keys]}
        write_private_file(path, json.dumps(document, indent=2).encode("ascii") + b"\n")
        return _file_identity(os.stat(path))

    @classmethod
    def load(cls, path: str | Path, *, keep_for: float = DEFAULT_KEEP_FOR) -> SigningKeyring:
        """Read an existing keyring.

        Raises:
            FileNotFoundError: there is no file at ``path``.
            ConfigurationError: the file is unreadable, malformed, edited by hand (a ``kid``
                that is not its key's thumbprint), or readable by group or others.
        """
        path = Path(path)
        keys, identity = cls._read(path)
        return cls(path, keys, keep_for=keep_for, identity=identity)

    @classmethod
    def load_or_create(
        cls, path: str | Path, *, keep_for: float = DEFAULT_KEEP_FOR, now: float | None = None
    ) -> SigningKeyring:
        """Read the keyring, creating it with one fresh key if there is no file yet.

        Several processes starting at once create one keyring, not several (file lock).

        Raises:
            ConfigurationError: as :meth:`load`.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path):
            try:
                return cls.load(path, keep_for=keep_for)
            except FileNotFoundError:
                pass
            keys = (SigningKey.generate(time.time() if now is None else now),)
            identity = cls._write(path, keys)
        _log.info("signing keyring created", extra={"kid": keys[0].kid})
        return cls(path, keys, keep_for=keep_for, identity=identity)

    @classmethod
    def rotate(
        cls, path: str | Path, *, now: float | None = None, keep_for: float = DEFAULT_KEEP_FOR
    ) -> SigningKeyring:
        """Retire the current key, add a new current key, drop keys retired too long ago.

        Args:
            path: an existing keyring file; replaced atomically.
            now: the time of the rotation (seconds since the epoch); the clock by default.
            keep_for: keys retired at least this many seconds before ``now`` are removed.

        Returns:
            The rotated keyring (other processes pick it up in :meth:`reload_if_changed`).

        Raises:
            FileNotFoundError: no keyring at ``path``.
            ConfigurationError: as :meth:`load`.
        """
        path = Path(path)
        at = time.time() if now is None else now
        with _locked(path):
            old, _ = cls._read(path)
            kept = tuple(
                SigningKey(k.kid, k.created, int(at), k.private_key) if k.retired is None else k
                for k in old
                if k.published_at(at, keep_for)
            )
            keys = (SigningKey.generate(at), *kept)
            identity = cls._write(path, keys)
        _log.info("signing key rotated", extra={"kid": keys[0].kid,
                                                "published": [k.kid for k in kept]})
        return cls(path, keys, keep_for=keep_for, identity=identity)

    def reload_if_changed(self) -> bool:
        """Re-read the file if it was replaced since it was read (one ``stat``).

        Returns:
            Whether new keys were loaded. A file that cannot be read or parsed is logged once
            and the keys in memory stay in use: they are still ours, so signing with them is
            safe, and a broken rotation must not stop token issuing.
        """
        try:
            identity = _file_identity(os.stat(self.path))
        except OSError:
            return False
        if identity == self._identity:
            return False
        self._identity = identity
        try:
            keys, identity = self._read(self.path)
            self._set_keys(keys)
        except (OSError, ConfigurationError):
            _log.exception("signing keyring changed but cannot be used; keeping the old keys")
            return False
        self._identity = identity
        return True

    # -- use ----------------------------------------------------------------------------------

    @property
    def current(self) -> SigningKey:
        """The key that signs."""
        return self._current

    @property
    def keys(self) -> tuple[SigningKey, ...]:
        """Every key in the file, current first, then retired newest first."""
        return self._keys

    def published(self, now: float | None = None) -> tuple[SigningKey, ...]:
        """The keys whose public half is published at ``now``: current first."""
        at = self._clock() if now is None else now
        return tuple(k for k in self._keys if k.published_at(at, self.keep_for))

    def sign(self, claims: Mapping[str, Any], *, typ: str = "at+jwt") -> str:
        """A compact JWS (RFC 7515) of ``claims`` signed with the current key.

        Args:
            claims: the JWT claims; serialized as compact JSON (orjson), in the order given.
            typ: the header ``typ``: ``at+jwt`` for access tokens (RFC 9068 section 2.1).

        Returns:
            ``header.claims.signature`` in unpadded base64url; the header is
            ``{"alg":"ES256","typ":typ,"kid":kid}``.
        """
        key = self._current
        header = orjson.dumps(dict(zip(_HEADER_KEYS, ("ES256", typ, key.kid), strict=True)))
        signing_input = f"{_b64(header)}.{_b64(orjson.dumps(dict(claims)))}"
        der = key.private_key.sign(signing_input.encode("ascii"), _ECDSA_SHA256)
        r, s = decode_dss_signature(der)
        # RFC 7518 section 3.4: JWS carries ECDSA as raw r || s, 32 bytes each, not DER.
        return f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def jwks(self, now: float | None = None) -> dict[str, list[dict[str, str]]]:
        """The JSON Web Key Set to serve at ``/.well-known/jwks.json``: public keys only."""
        return {"keys": [k.public_jwk() for k in self.published(now)]}

    def key_set(self, now: float | None = None) -> KeySet:
        """The published keys as verification keys, parsed by the same code as any issuer's."""
        published = self.published(now)
        kids = frozenset(k.kid for k in published)
        cached = self._key_set
        if cached is not None and cached[0] == kids:
            return cached[1]
        keys: list[VerificationKey] = [parse_jwk(k.public_jwk()) for k in published]
        built = KeySet(keys)
        self._key_set = (kids, built)
        return built


class KeyringTransport(httpx.AsyncBaseTransport):
    """An HTTP transport that answers every GET with the keyring's JWKS, read locally.

    It lets a :class:`~apiforge.identity.jwks.JwksClient` (and so the
    :class:`~apiforge.identity.tokens.TokenVerifier`) treat our own issuer exactly like an
    external one, with caching, refetch on unknown ``kid`` and cache flush on removed keys, and
    no network. The keyring is reloaded from its file before each answer.
    """

    def __init__(self, keyring: SigningKeyring, *, clock: Callable[[], float] = time.time) -> None:
        self._keyring = keyring
        self._clock = clock

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._keyring.reload_if_changed()
        body = orjson.dumps(self._keyring.jwks(self._clock()))
        return httpx.Response(
            200, headers={"content-type": "application/jwk-set+json"}, content=body,
            request=request,
        )


def keyring_jwks_client(
    keyring: SigningKeyring,
    url: str,
    *,
    max_age: float = 5.0,
    min_refetch_interval: float = 1.0,
    clock: Callable[[], float] = time.time,
) -> JwksClient:
    """A JWKS client for our own issuer that reads ``keyring`` instead of fetching ``url``.

    Pair it with ``TrustedIssuer(issuer, audience, algorithms=("ES256",), jwks_url=url)`` and
    ``TokenVerifier([...], jwks=client)``.

    Args:
        keyring: the issuer's keyring (shared with the token service in this process).
        url: the issuer's JWKS URL (``https://``); a label here, nothing is fetched.
        max_age: seconds between re-reads of the keyring: a dropped key stops verifying (and
            the verified-token cache is flushed) within this long.
        min_refetch_interval: seconds between re-reads caused by an unknown ``kid``: a key
            rotated in by another process is accepted within this long.
        clock: seconds since the epoch: which retired keys are still published.
    """
    http = HttpClientFactory(transport=KeyringTransport(keyring, clock=clock))
    return JwksClient(
        url, http=http, min_refetch_interval=min_refetch_interval, max_age=max_age,
        stale_if_error=max_age,
    )
