"""Verification keys: strict JWK parsing, key sets, and the JWKS client.

A :class:`VerificationKey` has exactly one algorithm. It is fixed when the key is loaded (from
the JWK's ``alg``, its curve, or the operator's configuration) and never taken from a token, so
an RSA public key can never be used as an HMAC secret (the RS256/HS256 confusion of RFC 8725
section 2.1) and an EC key never verifies anything but ES256.

:class:`JwksClient` fetches an identity provider's JSON Web Key Set (RFC 7517 section 5) through
the project's one outbound client factory and keeps it current:

- keys are cached for ``max_age`` seconds, then revalidated in the background while the cached
  set keeps serving (stale-while-revalidate);
- when the provider is down, the cached set keeps serving for ``stale_if_error`` more seconds
  (RFC 5861 semantics), after which tokens are refused with :class:`JwksUnavailable`;
- a token naming an unknown ``kid`` triggers a refetch (the provider may have rotated), shared by
  every concurrent caller (single flight) and at most once per ``min_refetch_interval``, so a
  flood of forged ``kid`` values costs the provider at most one request per interval;
- a key that disappears from the set calls the removal listeners (the verified-token cache
  flushes, so tokens signed by a withdrawn key stop being accepted at once).

Exceptions::

    ValueError
    └── InvalidJwk            a JWK or key set is malformed or unsafe (skipped or refused)
    ApiForgeError
    └── StoreError
        └── JwksUnavailable   no usable key set: the provider is unreachable and the cache is
                              empty or too old (the layer answers 503, not 401)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

import httpx
import orjson
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from apiforge.errors import StoreError
from apiforge.integrations.http_client import EgressError, HttpClientFactory
from apiforge.secrets import Secret

__all__ = [
    "SUPPORTED_ALGORITHMS",
    "Algorithm",
    "InvalidJwk",
    "JwksClient",
    "JwksUnavailable",
    "KeySet",
    "VerificationKey",
    "b64url_decode",
    "hmac_key",
    "load_json_object",
    "load_pem_key",
    "parse_jwk",
    "parse_jwk_set",
]

Algorithm = Literal["ES256", "EdDSA", "RS256", "PS256", "HS256"]
SUPPORTED_ALGORITHMS: Final[frozenset[str]] = frozenset(get_args(Algorithm))
MIN_RSA_BITS: Final = 2048
MIN_HMAC_BYTES: Final = 32
MAX_JWKS_BYTES: Final = 64 * 1024

_log = logging.getLogger("apiforge.identity.jwks")

# Order of the P-256 group: ECDSA r and s must lie in [1, n-1]. r = s = 0 verifies every message
# in implementations that skip this check (CVE-2022-21449, "psychic signatures").
_P256_N: Final = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_ECDSA_SHA256: Final = ec.ECDSA(hashes.SHA256())
_PKCS1: Final = padding.PKCS1v15()
# RFC 7518 section 3.5: PS256 uses MGF1 with SHA-256 and a salt as long as the hash (32 bytes).
_PSS: Final = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
_SHA256: Final = hashes.SHA256()

_B64URL_RE: Final = re.compile(r"[A-Za-z0-9_-]*", re.ASCII)
# The last character of unpadded base64url may only carry zero bits past the data; any other
# character decodes to the same bytes, so accepting it makes one token have several spellings.
_PAD: Final = ("", "", "==", "=")
_CANONICAL_TAIL: Final = {2: frozenset("AQgw"), 3: frozenset("AEIMQUYcgkosw048")}


class InvalidJwk(ValueError):
    """A JWK or key set is malformed or unsafe."""


class JwksUnavailable(StoreError):
    """No usable key set: the provider cannot be reached and no cached set is young enough."""


def b64url_decode(text: str, *, charset_checked: bool = False) -> bytes:
    """Decode unpadded base64url strictly (RFC 7515 section 2 and appendix C).

    Args:
        text: the encoded text, attacker-controlled.
        charset_checked: the caller already matched ``[A-Za-z0-9_-]*`` (saves a regex).

    Raises:
        ValueError: padding, characters outside the alphabet, an impossible length, or
            non-zero trailing bits (a second spelling of the same bytes).
    """
    remainder = len(text) % 4
    if remainder == 1 or (not charset_checked and not _B64URL_RE.fullmatch(text)):
        raise ValueError("not base64url")
    if remainder and text[-1] not in _CANONICAL_TAIL[remainder]:
        raise ValueError("non-canonical base64url")
    # binascii directly: the base64 module's wrappers cost more than the decoding itself.
    return binascii.a2b_base64(text.replace("-", "+").replace("_", "/") + _PAD[remainder])


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        # Parsers disagree on duplicates (first wins, last wins): one reading is checked and
        # another acted on. RFC 7515 section 5.2 and RFC 7519 section 7.2 let us refuse them.
        raise ValueError("duplicate member")
    return result


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def load_json_object(raw: bytes) -> dict[str, Any]:
    """Parse strict UTF-8 JSON that must be an object with no duplicate member names.

    ``NaN`` and ``Infinity`` are refused; nesting deep enough to exhaust the stack is reported
    as ``ValueError``, never ``RecursionError``.

    Raises:
        ValueError: not UTF-8, not JSON, not an object, or a duplicate member name (the message
            is ``"duplicate member"`` for the latter).
    """
    # Fast path: issuers emit compact JSON. If orjson's re-serialization reproduces the input
    # byte for byte, the input had no duplicate member (a duplicate would have been dropped,
    # so the bytes would differ). Anything else takes the strict, slower path below.
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    else:
        if type(value) is dict and orjson.dumps(value) == raw:
            return value
    try:
        value = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_object_without_duplicates,
            parse_constant=_refuse_constant,
        )
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


Verifier = Callable[[bytes, bytes], bool]


@dataclass(frozen=True, slots=True, eq=False)
class VerificationKey:
    """A public key (or HMAC secret) pinned to exactly one algorithm.

    Attributes:
        alg: the only algorithm this key verifies; a token whose ``alg`` differs is refused
            before the key is touched.
        kid: the key id a token names to select it, or ``None``.
        thumbprint: identity of the key material (RFC 7638 for public keys); used to notice a
            key removed from, or replaced in, a key set.
    """

    alg: Algorithm
    kid: str | None
    thumbprint: str
    _verify: Verifier = field(repr=False)

    def verify(self, signing_input: bytes, signature: bytes) -> bool:
        """Check ``signature`` over ``signing_input``; ``False`` for any failure."""
        return self._verify(signing_input, signature)


def _es256(key: ec.EllipticCurvePublicKey) -> Verifier:
    def verify(signing_input: bytes, signature: bytes) -> bool:
        # JWS carries ECDSA as raw r || s, 32 bytes each (RFC 7518 section 3.4), not DER.
        if len(signature) != 64:
            return False
        r = int.from_bytes(signature[:32], "big")
        s = int.from_bytes(signature[32:], "big")
        if not (0 < r < _P256_N and 0 < s < _P256_N):
            return False
        try:
            key.verify(encode_dss_signature(r, s), signing_input, _ECDSA_SHA256)
        except InvalidSignature:
            return False
        return True

    return verify


def _eddsa(key: ed25519.Ed25519PublicKey) -> Verifier:
    def verify(signing_input: bytes, signature: bytes) -> bool:
        if len(signature) != 64:
            return False
        try:
            key.verify(signature, signing_input)
        except InvalidSignature:
            return False
        return True

    return verify


def _rsa(key: rsa.RSAPublicKey, pad: padding.AsymmetricPadding) -> Verifier:
    size = (key.key_size + 7) // 8

    def verify(signing_input: bytes, signature: bytes) -> bool:
        if len(signature) != size:
            return False
        try:
            key.verify(signature, signing_input, pad, _SHA256)
        except InvalidSignature:
            return False
        return True

    return verify


def _hs256(secret: bytes) -> Verifier:
    def verify(signing_input: bytes, signature: bytes) -> bool:
        expected = hmac.new(secret, signing_input, hashlib.sha256).digest()
        return hmac.compare_digest(expected, signature)

    return verify


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _thumbprint(members: dict[str, str]) -> str:
    # RFC 7638: SHA-256 of the required members, sorted, without whitespace.
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":")).encode()
    return _b64(hashlib.sha256(canonical).digest())


def _int_bytes(number: int) -> bytes:
    return number.to_bytes((number.bit_length() + 7) // 8 or 1, "big")


def _from_public_key(public: object, alg: Algorithm | None, kid: str | None) -> VerificationKey:
    """Pin a ``cryptography`` public key to its one algorithm."""
    if isinstance(public, ec.EllipticCurvePublicKey):
        if not isinstance(public.curve, ec.SECP256R1):
            raise InvalidJwk("only P-256 EC keys are supported (ES256)")
        if alg not in (None, "ES256"):
            raise InvalidJwk(f"an EC P-256 key verifies ES256 only, not {alg}")
        numbers = public.public_numbers()
        thumb = _thumbprint(
            {
                "crv": "P-256",
                "kty": "EC",
                "x": _b64(numbers.x.to_bytes(32, "big")),
                "y": _b64(numbers.y.to_bytes(32, "big")),
            }
        )
        return VerificationKey("ES256", kid, thumb, _es256(public))
    if isinstance(public, ed25519.Ed25519PublicKey):
        if alg not in (None, "EdDSA"):
            raise InvalidJwk(f"an Ed25519 key verifies EdDSA only, not {alg}")
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        thumb = _thumbprint({"crv": "Ed25519", "kty": "OKP", "x": _b64(raw)})
        return VerificationKey("EdDSA", kid, thumb, _eddsa(public))
    if isinstance(public, rsa.RSAPublicKey):
        if alg not in ("RS256", "PS256"):
            raise InvalidJwk("an RSA key must be pinned to RS256 or PS256")
        if public.key_size < MIN_RSA_BITS:
            raise InvalidJwk(f"RSA keys below {MIN_RSA_BITS} bits are refused")
        rsa_numbers = public.public_numbers()
        thumb = _thumbprint(
            {
                "e": _b64(_int_bytes(rsa_numbers.e)),
                "kty": "RSA",
                "n": _b64(_int_bytes(rsa_numbers.n)),
            }
        )
        return VerificationKey(alg, kid, thumb, _rsa(public, _PKCS1 if alg == "RS256" else _PSS))
    raise InvalidJwk("unsupported key type")


def _member(jwk: Mapping[str, object], name: str) -> str:
    value = jwk.get(name)
    if not isinstance(value, str):
        raise InvalidJwk(f"JWK member {name!r} must be a string")
    return value


def _coordinate(jwk: Mapping[str, object], name: str, length: int) -> bytes:
    try:
        data = b64url_decode(_member(jwk, name))
    except ValueError:
        raise InvalidJwk(f"JWK member {name!r} is not base64url") from None
    if len(data) != length:
        # RFC 7518 section 6.2.1.2: coordinates are the full size of the field, zero-padded.
        raise InvalidJwk(f"JWK member {name!r} must be {length} bytes")
    return data


_PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


def parse_jwk(jwk: Mapping[str, object]) -> VerificationKey:
    """Parse one public JWK strictly into a key pinned to one algorithm.

    Args:
        jwk: the decoded JWK object (from a provider or a file: untrusted until parsed).

    Rules: ``kty`` is ``EC`` (``crv`` P-256), ``OKP`` (``crv`` Ed25519) or ``RSA`` (at least
    2048 bits, odd exponent >= 3); ``use``, if present, is ``sig``; ``key_ops``, if present,
    includes ``verify``; ``alg``, if present, is supported and matches the key type and then pins
    the key. An RSA key without ``alg`` is pinned to RS256 (PS256 must be stated). Symmetric
    (``oct``) keys and keys carrying private members are refused: HMAC secrets never travel in
    a key set.

    Raises:
        InvalidJwk: the JWK breaks any rule above.
    """
    if not isinstance(jwk, Mapping):
        raise InvalidJwk("a JWK must be a JSON object")
    if _PRIVATE_MEMBERS & jwk.keys():
        raise InvalidJwk("JWK carries private or symmetric key material")
    kty = _member(jwk, "kty")
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise InvalidJwk("JWK 'kid' must be a string")
    if "use" in jwk and jwk["use"] != "sig":
        raise InvalidJwk("JWK 'use' must be 'sig'")
    if "key_ops" in jwk:
        ops = jwk["key_ops"]
        if not isinstance(ops, list) or "verify" not in ops:
            raise InvalidJwk("JWK 'key_ops' must include 'verify'")
    alg_value = jwk.get("alg")
    if alg_value is not None and alg_value not in SUPPORTED_ALGORITHMS:
        raise InvalidJwk(f"JWK 'alg' {alg_value!r} is not supported")
    alg: Algorithm | None = alg_value  # type: ignore[assignment]
    if alg == "HS256":
        raise InvalidJwk("HS256 keys are not accepted from a key set")
    try:
        if kty == "EC":
            if _member(jwk, "crv") != "P-256":
                raise InvalidJwk("EC keys must use crv P-256")
            x = int.from_bytes(_coordinate(jwk, "x", 32), "big")
            y = int.from_bytes(_coordinate(jwk, "y", 32), "big")
            # public_key() checks the point lies on the curve (invalid-curve attacks).
            public: object = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
        elif kty == "OKP":
            if _member(jwk, "crv") != "Ed25519":
                raise InvalidJwk("OKP keys must use crv Ed25519")
            public = ed25519.Ed25519PublicKey.from_public_bytes(_coordinate(jwk, "x", 32))
        elif kty == "RSA":
            try:
                n_bytes = b64url_decode(_member(jwk, "n"))
                e_bytes = b64url_decode(_member(jwk, "e"))
            except ValueError:
                raise InvalidJwk("RSA 'n'/'e' are not base64url") from None
            if not n_bytes or not e_bytes or n_bytes[0] == 0 or e_bytes[0] == 0:
                # RFC 7518 section 6.3.1.1: no leading zero octets.
                raise InvalidJwk("RSA 'n'/'e' must be minimal big-endian integers")
            e = int.from_bytes(e_bytes, "big")
            if e < 3 or e % 2 == 0:
                raise InvalidJwk("RSA exponent must be odd and at least 3")
            public = rsa.RSAPublicNumbers(e, int.from_bytes(n_bytes, "big")).public_key()
            alg = alg or "RS256"
        else:
            raise InvalidJwk(f"JWK kty {kty!r} is not supported")
    except (ValueError, UnsupportedAlgorithm) as exc:
        if isinstance(exc, InvalidJwk):
            raise
        raise InvalidJwk("JWK key material is invalid") from None
    return _from_public_key(public, alg, kid)


def load_pem_key(pem: bytes, *, alg: Algorithm | None, kid: str | None = None) -> VerificationKey:
    """Load a PEM public key (SubjectPublicKeyInfo) pinned to one algorithm.

    Args:
        pem: the PEM text. Private keys are refused: a verifier needs only the public half.
        alg: the algorithm; derived from the key type for EC (ES256) and Ed25519 (EdDSA),
            required for RSA (RS256 or PS256).
        kid: the key id tokens name, if any.

    Raises:
        InvalidJwk: not a PEM public key, or a key type and algorithm that do not match.
    """
    if b"PRIVATE KEY" in pem:
        raise InvalidJwk("a private key was given where a public key is expected")
    try:
        public = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidJwk("not a PEM public key") from None
    return _from_public_key(public, alg, kid)


def hmac_key(secret: Secret, *, kid: str | None = None) -> VerificationKey:
    """An HS256 key from a shared secret of at least 32 bytes (RFC 7518 section 3.2).

    Raises:
        InvalidJwk: the secret is shorter than 32 bytes (brute-forceable offline from one
            token).
    """
    raw = secret.reveal().encode("utf-8")
    if len(raw) < MIN_HMAC_BYTES:
        raise InvalidJwk(f"HS256 secrets must be at least {MIN_HMAC_BYTES} bytes")
    # The thumbprint of a secret must not be a hash of it (offline guessing): name it by kid.
    return VerificationKey("HS256", kid, f"oct:{kid or ''}", _hs256(raw))


class KeySet:
    """An immutable set of verification keys, indexed for selection by ``(kid, alg)``."""

    __slots__ = ("_by_kid", "_keys", "thumbprints")

    def __init__(self, keys: Iterable[VerificationKey]) -> None:
        self._keys: tuple[VerificationKey, ...] = tuple(keys)
        by_kid: dict[str | None, list[VerificationKey]] = {}
        for key in self._keys:
            by_kid.setdefault(key.kid, []).append(key)
        self._by_kid = {kid: tuple(group) for kid, group in by_kid.items()}
        self.thumbprints: frozenset[str] = frozenset(k.thumbprint for k in self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Any:
        return iter(self._keys)

    def has_kid(self, kid: str) -> bool:
        """Whether any key carries this ``kid`` (whatever its algorithm)."""
        return kid in self._by_kid

    def candidates(self, kid: str | None, alg: str) -> tuple[VerificationKey, ...]:
        """Keys that may verify a token with this header ``kid`` and ``alg``.

        With a ``kid``, the keys with that id and algorithm; without one, every key of the
        algorithm (the caller accepts the token only if exactly one matches).
        """
        if kid is not None:
            return tuple(k for k in self._by_kid.get(kid, ()) if k.alg == alg)
        return tuple(k for k in self._keys if k.alg == alg)


def parse_jwk_set(raw: bytes) -> KeySet:
    """Parse a JWKS document; keys that break a rule are skipped and logged.

    Skipping (rather than refusing the whole set) lets a provider publish key types we do not
    use (encryption keys, new algorithms) without locking out every token.

    Raises:
        InvalidJwk: not a JSON object with a ``keys`` array, or no usable key at all.
    """
    try:
        document = load_json_object(raw)
    except ValueError:
        raise InvalidJwk("key set is not a JSON object") from None
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise InvalidJwk("key set has no 'keys' array")
    keys: list[VerificationKey] = []
    for entry in entries:
        try:
            keys.append(parse_jwk(entry))
        except InvalidJwk as exc:
            _log.warning("JWK skipped", extra={"reason": str(exc)})
    if not keys:
        raise InvalidJwk("key set holds no usable signing key")
    return KeySet(keys)


RemovalListener = Callable[[frozenset[str]], None]


class JwksClient:
    """Fetches and caches one provider's JSON Web Key Set.

    Args:
        url: the JWKS URL (``https://``; checked again by the factory's egress rules).
        http: the outbound client factory; every fetch goes through it.
        min_refetch_interval: seconds between two fetches triggered by unknown ``kid`` values
            or failures. It bounds what forged ``kid`` values can cost the provider, and how
            long a genuinely new key may wait to be picked up right after such a fetch.
        max_age: seconds a fetched set is fresh; after that it is revalidated in the background
            while it keeps serving.
        stale_if_error: seconds past ``max_age`` a set keeps serving while the provider cannot
            be reached. After that, tokens are refused (:class:`JwksUnavailable`), because
            withdrawn keys could otherwise be trusted forever.
        max_bytes: the largest key set accepted.

    Times are seconds on the ``now`` clock callers pass (``time.time()`` by default).
    """

    def __init__(
        self,
        url: str,
        *,
        http: HttpClientFactory,
        min_refetch_interval: float = 30.0,
        max_age: float = 300.0,
        stale_if_error: float = 3600.0,
        max_bytes: int = MAX_JWKS_BYTES,
    ) -> None:
        if min_refetch_interval <= 0 or max_age <= 0 or stale_if_error < 0:
            raise ValueError("JWKS intervals must be positive")
        self.url = url
        self._http = http
        self._min_refetch = min_refetch_interval
        self._max_age = max_age
        self._stale_if_error = stale_if_error
        self._max_bytes = max_bytes
        self._keys: KeySet | None = None
        self._fetched_at = float("-inf")
        self._last_attempt = float("-inf")
        self._inflight: asyncio.Task[KeySet] | None = None
        self._client: httpx.AsyncClient | None = None
        self._listeners: list[RemovalListener] = []
        self.fetch_count = 0
        """Fetch attempts so far (for metrics and tests)."""

    @property
    def keys(self) -> KeySet | None:
        """The cached set, if any (no fetch)."""
        return self._keys

    def add_removal_listener(self, listener: RemovalListener) -> None:
        """Call ``listener(removed_thumbprints)`` whenever a fetch drops or replaces keys."""
        self._listeners.append(listener)

    async def aclose(self) -> None:
        """Cancel a background refresh and close the HTTP client."""
        task, self._inflight = self._inflight, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def cached_candidates(
        self, kid: str | None, alg: str, *, now: float | None = None
    ) -> tuple[VerificationKey, ...]:
        """Candidates from the cached set only, for synchronous callers (never fetches).

        Raises:
            JwksUnavailable: nothing cached, or the cached set is past ``stale_if_error``.
        """
        now = time.time() if now is None else now
        keys = self._keys
        if keys is None or now - self._fetched_at > self._max_age + self._stale_if_error:
            raise JwksUnavailable("no usable cached key set")
        return keys.candidates(kid, alg)

    async def candidates(
        self, kid: str | None, alg: str, *, now: float | None = None
    ) -> tuple[VerificationKey, ...]:
        """Keys that may verify a token with this ``kid`` and ``alg``, fetching as needed.

        An unknown ``kid`` triggers at most one shared refetch per ``min_refetch_interval``.

        Raises:
            JwksUnavailable: no key set can be had.
        """
        now = time.time() if now is None else now
        keys = await self._usable(now)
        found = keys.candidates(kid, alg)
        if found or (kid is not None and keys.has_kid(kid)):
            return found
        # Unknown kid: the provider may have rotated. Join a fetch in flight, or start one if
        # the last attempt is old enough; otherwise answer from what we have.
        if self._inflight is None and now - self._last_attempt < self._min_refetch:
            return found
        try:
            keys = await self._refresh(now)
        except JwksUnavailable:
            return found
        return keys.candidates(kid, alg)

    async def refresh(self, *, now: float | None = None) -> KeySet:
        """Fetch now (joining a fetch in flight), regardless of the refetch interval."""
        return await self._refresh(time.time() if now is None else now)

    async def _usable(self, now: float) -> KeySet:
        keys = self._keys
        age = now - self._fetched_at
        if keys is not None and age <= self._max_age:
            return keys
        may_fetch = self._inflight is not None or now - self._last_attempt >= self._min_refetch
        if keys is not None and age <= self._max_age + self._stale_if_error:
            if may_fetch and self._inflight is None:
                # Stale while revalidate: serve the cached set, refresh in the background.
                self._start(now)
            return keys
        if not may_fetch:
            raise JwksUnavailable("key set unavailable; next fetch attempt is throttled")
        return await self._refresh(now)

    def _start(self, now: float) -> asyncio.Task[KeySet]:
        task = asyncio.get_running_loop().create_task(self._fetch(now), name="apiforge-jwks")
        self._inflight = task

        def done(finished: asyncio.Task[KeySet]) -> None:
            if self._inflight is finished:
                self._inflight = None
            if not finished.cancelled():
                finished.exception()  # retrieved, so a failed background fetch is not reported

        task.add_done_callback(done)
        return task

    async def _refresh(self, now: float) -> KeySet:
        task = self._inflight or self._start(now)
        # shield: one caller giving up (its request was cancelled) must not cancel the fetch
        # every other caller is waiting on.
        return await asyncio.shield(task)

    async def _fetch(self, now: float) -> KeySet:
        self._last_attempt = now
        self.fetch_count += 1
        if self._client is None:
            self._client = self._http.client()
        try:
            status, _, body = await self._http.fetch(
                self._client,
                self.url,
                headers={"accept": "application/jwk-set+json, application/json"},
                max_bytes=self._max_bytes,
            )
            if status != 200:
                raise InvalidJwk(f"JWKS answered HTTP {status}")
            keys = parse_jwk_set(body)
        except (httpx.HTTPError, EgressError, InvalidJwk) as exc:
            _log.warning("JWKS fetch failed", extra={"url": self.url, "error": str(exc)})
            raise JwksUnavailable("JWKS fetch failed") from exc
        previous, self._keys, self._fetched_at = self._keys, keys, now
        if previous is not None:
            removed = previous.thumbprints - keys.thumbprints
            if removed:
                _log.info("JWKS keys removed", extra={"url": self.url, "count": len(removed)})
                for listener in self._listeners:
                    listener(removed)
        return keys
