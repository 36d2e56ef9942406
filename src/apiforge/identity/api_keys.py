"""API keys: format, parsing, storage digests, verification, rotation and revocation.

A key reads ``afk_<env>_<id>_<secret><crc>``::

    afk_live_4Bf0kQm2ZrT9_Yx3...30 base62 characters...Qw81Zc
    │   │    │            │                              └ CRC32 of everything before it, 6 base62
    │   │    │            └ 30 base62 characters from the OS CSPRNG (about 178 bits)
    │   │    └ 12 base62 characters: the public lookup id
    │   └ environment label (``live``, ``test``, ``dev``)
    └ fixed prefix, so scanners and people recognize the key

The checksum lets a secret scanner (or :func:`parse_key`) reject a string that merely looks like
a key without any database, and lets :func:`parse_key` drop typos and garbage in microseconds
before any cryptography runs. It is not a secret and protects nothing on its own.

The server stores only ``HMAC-SHA-256(pepper, secret)`` (see :class:`KeyHasher`). Verification
(:meth:`ApiKeyService.verify`) reads an in-process :class:`KeyCache` and performs no store I/O:
unknown ids are refused without a query, so random keys cannot be used to load the database.

Exceptions::

    InvalidApiKey          every verification failure; ``reason`` is for internal logs only
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import hmac
import math
import re
import secrets as _random
import string
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from hashlib import blake2b
from typing import TYPE_CHECKING, Final, Literal

from apiforge.errors import ApiForgeError, ConfigurationError
from apiforge.secrets import Secret

if TYPE_CHECKING:
    from apiforge.stores.protocols import ApiKeyStore, StateStore

__all__ = [
    "API_KEY_TOPIC",
    "ApiKeyRecord",
    "ApiKeyService",
    "Application",
    "InvalidApiKey",
    "InvalidKeyReason",
    "KeyCache",
    "KeyHasher",
    "KeyStatus",
    "ParsedKey",
    "generate_key",
    "parse_key",
]

BASE62: Final = string.digits + string.ascii_uppercase + string.ascii_lowercase
PREFIX: Final = "afk_"
VERIFIED_MEMO_SIZE: Final = 10_000
ID_LENGTH: Final = 12
SECRET_LENGTH: Final = 30
CRC_LENGTH: Final = 6
MIN_PEPPER_BYTES: Final = 32
API_KEY_TOPIC: Final = "api_key"
"""Change-feed topic under which key ids are published when a key changes."""

_ENV_RE: Final = re.compile(r"[a-z][a-z0-9]{1,7}", re.ASCII)
_KEY_RE: Final = re.compile(
    rf"afk_([a-z][a-z0-9]{{1,7}})_([0-9A-Za-z]{{{ID_LENGTH}}})_"
    rf"([0-9A-Za-z]{{{SECRET_LENGTH}}})([0-9A-Za-z]{{{CRC_LENGTH}}})",
    re.ASCII,
)
# Bounds of a well-formed key: the length test refuses oversized input before the regex runs.
_MIN_LENGTH: Final = len(PREFIX) + 2 + 1 + ID_LENGTH + 1 + SECRET_LENGTH + CRC_LENGTH
_MAX_LENGTH: Final = _MIN_LENGTH + 6
# RFC 6749 section 3.3 scope-token: printable ASCII except space, '"' and '\'.
_SCOPE_RE: Final = re.compile(r"[\x21\x23-\x5B\x5D-\x7E]+", re.ASCII)

KeyStatus = Literal["active", "revoked"]
InvalidKeyReason = Literal[
    "malformed",
    "bad_checksum",
    "unknown_id",
    "wrong_secret",
    "expired",
    "revoked",
    "rotated_out",
]


class InvalidApiKey(ApiForgeError):
    """An API key was refused. The one exception every verification failure raises.

    Args:
        reason: why, for the internal security log only. The client is told nothing more than
            "invalid credentials": telling an attacker *which* check failed (unknown id versus
            wrong secret, revoked versus expired) helps them enumerate keys.
        key_id: the key's public id, once the key passed its structural checks; ``None`` for
            malformed input, which is attacker-chosen text and must not reach the logs.
    """

    def __init__(self, reason: InvalidKeyReason, key_id: str | None = None) -> None:
        self.reason: InvalidKeyReason = reason
        self.key_id = key_id
        super().__init__("invalid API key")


def _base62(number: int, width: int) -> str:
    digits = []
    while number:
        number, rest = divmod(number, 62)
        digits.append(BASE62[rest])
    return "".join(reversed(digits)).rjust(width, "0")


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), CRC_LENGTH)


def _random_base62(length: int) -> str:
    return "".join(_random.choice(BASE62) for _ in range(length))


@dataclass(frozen=True, slots=True)
class ParsedKey:
    """A key that passed the structural checks: prefix, charset, lengths and checksum.

    Attributes:
        env: the environment label.
        key_id: the public lookup id; safe to log.
        secret: the secret part; shown only through ``secret.reveal()``.
    """

    env: str
    key_id: str
    secret: Secret


def generate_key(env: str) -> tuple[Secret, ParsedKey]:
    """Create a new random key.

    Args:
        env: a short lowercase label (2 to 8 characters, ``[a-z][a-z0-9]*``), e.g. ``live``. It
            is visible in the key so a test key pasted into production is recognized at a glance.

    Returns:
        The full plaintext key (shown once to its owner, never stored) and its parsed parts.

    Raises:
        ValueError: the label is not a valid environment label.
    """
    if not _ENV_RE.fullmatch(env):
        raise ValueError("env must be 2-8 lowercase letters or digits, starting with a letter")
    key_id = _random_base62(ID_LENGTH)
    secret = _random_base62(SECRET_LENGTH)
    body = f"{PREFIX}{env}_{key_id}_{secret}"
    return Secret(body + _checksum(body)), ParsedKey(env, key_id, Secret(secret))


def parse_key(text: str | Secret) -> ParsedKey:
    """Split a presented key into its parts, refusing anything that is not a well-formed key.

    The checks run cheapest first (length, prefix, one anchored regex, CRC32), so garbage and
    oversized input cost microseconds and never reach the hasher or the cache.

    Args:
        text: the key as presented by a client (untrusted).

    Raises:
        InvalidApiKey: ``malformed`` (wrong shape) or ``bad_checksum`` (right shape, wrong CRC).
    """
    raw = text.reveal() if isinstance(text, Secret) else text
    if not isinstance(raw, str) or not _MIN_LENGTH <= len(raw) <= _MAX_LENGTH:
        raise InvalidApiKey("malformed")
    if not raw.startswith(PREFIX):
        raise InvalidApiKey("malformed")
    match = _KEY_RE.fullmatch(raw)
    if match is None:
        raise InvalidApiKey("malformed")
    env, key_id, secret, crc = match.groups()
    if _checksum(raw[:-CRC_LENGTH]) != crc:
        raise InvalidApiKey("bad_checksum")
    return ParsedKey(env, key_id, Secret(secret))


class KeyHasher:
    """Keyed digests of key secrets: ``HMAC-SHA-256(pepper, secret)``.

    A key secret carries about 178 random bits, so it cannot be guessed offline and needs no slow
    password hash; a slow hash would cost milliseconds on every request. The pepper is a server
    secret kept outside the database, so a stolen copy of the table yields digests that cannot
    even be checked against candidate keys.

    Args:
        peppers: one or more server secrets of at least 32 bytes each. The first hashes new
            digests; all are tried when verifying, so a pepper can be rotated by putting a new one
            first and removing the old one once no stored digest depends on it.

    Raises:
        ConfigurationError: no pepper, or a pepper shorter than 32 bytes.
    """

    __slots__ = ("_keys",)

    def __init__(self, peppers: Sequence[Secret]) -> None:
        if not peppers:
            raise ConfigurationError(
                "identity.api_keys.peppers: at least one pepper is required; "
                "generate one with `python -c 'import secrets; print(secrets.token_urlsafe(48))'`"
            )
        keys = []
        for index, pepper in enumerate(peppers):
            key = pepper.reveal().encode()
            if len(key) < MIN_PEPPER_BYTES:
                raise ConfigurationError(
                    f"identity.api_keys.peppers[{index}]: a pepper must be at least "
                    f"{MIN_PEPPER_BYTES} bytes; generate a longer one"
                )
            keys.append(key)
        self._keys: Final = tuple(keys)

    def __repr__(self) -> str:
        return f"KeyHasher(peppers={len(self._keys)})"

    def digest(self, secret: Secret) -> bytes:
        """Return the digest to store for ``secret``, under the current (first) pepper."""
        return hmac.digest(self._keys[0], secret.reveal().encode(), hashlib.sha256)

    def match(self, secret: Secret, digest: bytes) -> int | None:
        """Return the index of the pepper under which ``secret`` gives ``digest``, else ``None``.

        Every pepper is tried and every comparison is constant-time, so timing does not reveal
        how close a guess came.
        """
        found: int | None = None
        message = secret.reveal().encode()
        for index, key in enumerate(self._keys):
            if hmac.compare_digest(hmac.digest(key, message, hashlib.sha256), digest):
                found = index if found is None else found
        return found

    def verify(self, secret: Secret, digest: bytes) -> bool:
        """Whether ``secret`` matches ``digest`` under any configured pepper."""
        return self.match(secret, digest) is not None


@dataclass(frozen=True, slots=True)
class Application:
    """A client application that owns API keys.

    Attributes:
        application_id: stable public id.
        name: a display name chosen by the operator.
        owner_account_id: the account responsible for the application, if any.
        created_at: creation time (UTC).
    """

    application_id: str
    name: str
    owner_account_id: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """What the server keeps about one key. It never holds the key itself.

    Attributes:
        key_id: the public lookup id (also visible inside the key).
        env: the environment label of the key.
        application_id: the application the key authenticates.
        digest: ``HMAC-SHA-256(pepper, secret)``; left out of ``repr``.
        scopes: what the key may do; checked by the authorization layer.
        status: ``active`` or ``revoked``; a revoked key is refused at once, on every instance.
        created_at: creation time (UTC).
        expires_at: the key is refused from this instant on; ``None`` for no expiry.
        last_used_at: last successful verification, as flushed in batches (may lag).
        revoked_at: when the key was revoked.
        replaced_by: the key id that replaced this one by rotation.
        rotated_at: when it was rotated.
        overlap_until: after rotation, the old key stays valid until this instant so clients
            can switch without an outage; from then on it is refused as ``rotated_out``.
    """

    key_id: str
    env: str
    application_id: str
    digest: bytes = field(repr=False)
    scopes: frozenset[str]
    status: KeyStatus
    created_at: datetime
    expires_at: datetime | None = None
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None
    replaced_by: str | None = None
    rotated_at: datetime | None = None
    overlap_until: datetime | None = None
    usable_until: float = field(init=False, repr=False, compare=False)
    """The first instant (POSIX seconds) the key is refused for its expiry or the end of its
    rotation overlap; infinity when neither applies. Lets a request compare one float."""

    def __post_init__(self) -> None:
        ends = [moment.timestamp() for moment in (self.expires_at, self.overlap_until)
                if moment is not None]
        object.__setattr__(self, "usable_until", min(ends, default=math.inf))


class KeyCache:
    """The in-process map of key id to record that :meth:`ApiKeyService.verify` reads.

    Filled from the record store at start-up and updated entry by entry from the change feed
    (:class:`~apiforge.identity.CacheRefresher`). Reads and single-entry writes are plain dict
    operations, atomic under the interpreter lock.
    """

    __slots__ = ("_records",)

    def __init__(self) -> None:
        self._records: dict[str, ApiKeyRecord] = {}

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key_id: str) -> ApiKeyRecord | None:
        """The cached record, or ``None``."""
        return self._records.get(key_id)

    def put(self, record: ApiKeyRecord) -> None:
        """Add or replace one record."""
        self._records[record.key_id] = record

    def discard(self, key_id: str) -> None:
        """Forget one record (it was deleted from the store)."""
        self._records.pop(key_id, None)

    def replace_all(self, records: Iterable[ApiKeyRecord]) -> None:
        """Swap in a complete new content in one assignment."""
        self._records = {record.key_id: record for record in records}


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _check_scopes(scopes: Iterable[str]) -> frozenset[str]:
    result = frozenset(scopes)
    for scope in result:
        if not _SCOPE_RE.fullmatch(scope):
            raise ValueError("a scope is a non-empty RFC 6749 scope-token (no spaces or quotes)")
    return result


class ApiKeyService:
    """Issue, verify, rotate and revoke API keys.

    Args:
        store: where records live (SQLite or PostgreSQL in production). Only the management
            methods and :meth:`flush_last_used` touch it.
        state: the shared state store; every change is published on its change feed so other
            processes refresh their caches (see :class:`~apiforge.identity.CacheRefresher`).
        hasher: the peppered hasher.
        cache: the in-process cache; a fresh one by default.

    Call :meth:`load` once at start-up (after taking a change-feed cursor) before verifying.
    """

    topic: Final = API_KEY_TOPIC

    def __init__(
        self,
        store: ApiKeyStore,
        state: StateStore,
        hasher: KeyHasher,
        cache: KeyCache | None = None,
    ) -> None:
        self._store = store
        self._state = state
        self._hasher = hasher
        self.cache: Final = cache if cache is not None else KeyCache()
        self._last_used: dict[str, float] = {}  # key id -> POSIX seconds
        self._rehash: dict[str, tuple[bytes, bytes]] = {}
        # BLAKE2b of keys that passed the full check -> (key id, digest checked against).
        self._verified: dict[bytes, tuple[str, bytes]] = {}

    # -- the request path: no I/O ------------------------------------------------------------

    def verify(self, text: str | Secret, now: datetime | None = None) -> ApiKeyRecord:
        """Check a presented key against the in-process cache.

        No store is queried: a key unknown to the cache is refused, so a flood of random keys
        costs a parse and a dict lookup each. A key that passed the full check is remembered
        by its BLAKE2b digest (never in clear), so its next requests skip the parse and the HMAC as
        long as the key's record keeps the digest it was checked against; its state (revoked,
        rotated, expired) is checked on every request.

        Args:
            text: the key as presented by the client (untrusted).
            now: the current time (UTC); for tests.

        Returns:
            The key's record, for the authorization layer (scopes, application).

        Raises:
            InvalidApiKey: with reason ``malformed``, ``bad_checksum``, ``unknown_id``,
                ``wrong_secret``, ``revoked``, ``rotated_out`` or ``expired``.
        """
        raw = text.reveal() if isinstance(text, Secret) else text
        fingerprint = blake2b(raw.encode("utf-8", "surrogatepass")).digest()
        seen = self._verified.get(fingerprint)
        if seen is not None:
            record = self.cache.get(seen[0])
            # These exact bytes passed the full check against this exact digest; if the record
            # still holds it, only its state (revoked, expired, rotated) can have changed.
            if record is not None and record.digest == seen[1]:
                return self._check_state(record, now)
        parsed = parse_key(raw)
        record = self.cache.get(parsed.key_id)
        if record is None or record.env != parsed.env:
            raise InvalidApiKey("unknown_id", parsed.key_id)
        pepper = self._hasher.match(parsed.secret, record.digest)
        if pepper is None:
            raise InvalidApiKey("wrong_secret", parsed.key_id)
        self._check_state(record, now)
        if pepper:
            # Digest made under an older pepper: upgrade it at the next flush, off this path,
            # so the old pepper can be retired once every used key has been seen.
            self._rehash[record.key_id] = (record.digest, self._hasher.digest(parsed.secret))
        if len(self._verified) >= VERIFIED_MEMO_SIZE:
            self._verified.clear()  # bounded: a flood of distinct valid keys cannot grow it
        self._verified[fingerprint] = (record.key_id, record.digest)
        return record

    def _check_state(self, record: ApiKeyRecord, now: datetime | None) -> ApiKeyRecord:
        # State is checked only after the secret: only the key's holder learns (through the
        # internal log) whether the key was revoked or expired.
        if now is None:
            stamp = time.time()
            if record.status != "revoked" and stamp < record.usable_until:
                self._last_used[record.key_id] = stamp  # the usual case: one comparison
                return record
            now = datetime.fromtimestamp(stamp, UTC)
        if record.status == "revoked":
            raise InvalidApiKey("revoked", record.key_id)
        if record.overlap_until is not None and now >= record.overlap_until:
            raise InvalidApiKey("rotated_out", record.key_id)
        if record.expires_at is not None and now >= record.expires_at:
            raise InvalidApiKey("expired", record.key_id)
        self._last_used[record.key_id] = now.timestamp()
        return record

    # -- start-up, refresh and background work -----------------------------------------------

    async def load(self) -> int:
        """Fill the cache from the record store (in a worker thread); returns the key count."""
        records = await asyncio.to_thread(self._store.list_keys)
        self.cache.replace_all(records)
        return len(records)

    def fetch(self, ids: Iterable[str]) -> dict[str, ApiKeyRecord | None]:
        """Read the current records of ``ids`` from the store (blocking; run it off the loop)."""
        return {key_id: self._store.get_key(key_id) for key_id in set(ids)}

    def apply(self, records: dict[str, ApiKeyRecord | None]) -> None:
        """Put fetched records into the cache; ``None`` removes the entry."""
        for key_id, record in records.items():
            if record is None:
                self.cache.discard(key_id)
            else:
                self.cache.put(record)

    async def refresh(self, ids: Iterable[str]) -> None:
        """Re-read ``ids`` from the store in a worker thread and update the cache."""
        self.apply(await asyncio.to_thread(self.fetch, builtins.list(ids)))

    def flush_last_used(self) -> int:
        """Write the buffered last-used times (and pepper upgrades) to the store in one batch.

        Blocking: call it from a background task through a thread, never per request.

        Returns:
            The number of keys whose last-used time was written.
        """
        # Swap the buffers first: verify() keeps filling fresh dicts while this one is written.
        used, self._last_used = self._last_used, {}
        rehash, self._rehash = self._rehash, {}
        if used:
            self._store.record_last_used(
                {key_id: datetime.fromtimestamp(stamp, UTC) for key_id, stamp in used.items()})
        for key_id, (old, new) in rehash.items():
            self._store.replace_digest(key_id, old, new)
        return len(used)

    # -- management (CLI, console, start-up) ------------------------------------------------

    async def create(
        self,
        application_id: str,
        scopes: Iterable[str],
        env: str,
        expires_at: datetime | None = None,
        now: datetime | None = None,
    ) -> tuple[Secret, ApiKeyRecord]:
        """Issue a new key for an application.

        Args:
            application_id: the owner; must exist in the application store.
            scopes: RFC 6749 scope tokens the key grants.
            env: the environment label put into the key.
            expires_at: when the key stops working; ``None`` for never.
            now: creation time; for tests.

        Returns:
            The plaintext key (give it to the caller once; it cannot be recovered) and the record.
        """
        now = now or _utcnow()
        if expires_at is not None and expires_at <= now:
            raise ValueError("expires_at must be in the future")
        plaintext, parsed = generate_key(env)
        record = ApiKeyRecord(
            key_id=parsed.key_id,
            env=env,
            application_id=application_id,
            digest=self._hasher.digest(parsed.secret),
            scopes=_check_scopes(scopes),
            status="active",
            created_at=now,
            expires_at=expires_at,
        )
        self._store.add_key(record)
        self.cache.put(record)
        await self._state.publish_change(self.topic, record.key_id)
        return plaintext, record

    async def rotate(
        self, key_id: str, overlap: timedelta, now: datetime | None = None
    ) -> tuple[Secret, ApiKeyRecord]:
        """Replace a key with a new one; the old one keeps working for ``overlap``.

        The new key keeps the application, scopes and environment; if the old key had an expiry,
        the new one gets the same lifetime counted from now.

        Args:
            key_id: the key to replace; it must be active and not already rotated.
            overlap: how long the old key stays valid (zero ends it at once).
            now: rotation time; for tests.

        Raises:
            LookupError: no such key.
            ValueError: the key is revoked or already rotated, or ``overlap`` is negative.
        """
        if overlap < timedelta(0):
            raise ValueError("overlap must not be negative")
        now = now or _utcnow()
        old = self._require(key_id)
        if old.status != "active" or old.replaced_by is not None:
            raise ValueError("only an active key that was not rotated yet can be rotated")
        expires_at = None
        if old.expires_at is not None:
            expires_at = now + (old.expires_at - old.created_at)
        plaintext, new = await self.create(old.application_id, old.scopes, old.env, expires_at, now)
        updated = replace(old, replaced_by=new.key_id, rotated_at=now, overlap_until=now + overlap)
        self._store.update_key(updated)
        self.cache.put(updated)
        await self._state.publish_change(self.topic, key_id)
        return plaintext, new

    async def revoke(self, key_id: str, now: datetime | None = None) -> ApiKeyRecord:
        """Revoke a key now, on every instance (within one change-feed poll).

        Raises:
            LookupError: no such key.
        """
        now = now or _utcnow()
        record = self._require(key_id)
        if record.status != "revoked":
            record = replace(record, status="revoked", revoked_at=now)
            self._store.update_key(record)
        self.cache.put(record)
        await self._state.publish_change(self.topic, key_id)
        return record

    def list(self) -> builtins.list[ApiKeyRecord]:
        """Every key record, from the store (not the cache), ordered by creation time."""
        return sorted(self._store.list_keys(), key=lambda r: (r.created_at, r.key_id))

    def _require(self, key_id: str) -> ApiKeyRecord:
        # Management reads the store, not the cache, so it acts on the current record.
        record = self._store.get_key(key_id)
        if record is None:
            raise LookupError("no such API key")
        return record
