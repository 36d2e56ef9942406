"""JWT verification (RFC 7519, RFC 7515), following the JWT best current practice (RFC 8725).

A token is checked in order of cost, so a forged token cannot buy expensive work:

1. size (at most ``max_token_bytes``), three base64url parts, alphabet: one regular expression;
2. the header: strict base64url, strict JSON (no duplicate members), ``alg`` supported and never
   ``none`` in any casing; ``jwk``/``jku``/``x5u``/``x5c`` refused (keys come from our
   configuration, never from the token, RFC 8725 section 3.10); any ``crit`` refused (we
   implement no extension, RFC 7515 section 4.1.11); ``typ``, if present, ``JWT`` or ``at+jwt``;
3. the claims: the same strict JSON; ``iss`` picks the trusted issuer (unknown issuers stop
   here); the issuer must allow ``alg``; ``sub``, ``exp`` and ``iat`` are required; dates are JSON
   numbers (not strings, not booleans, finite); ``exp``, ``nbf`` and ``iat`` are checked against
   ``now`` with the issuer's leeway; ``aud`` (string or array) must name the expected audience
   (cross-service token reuse, RFC 8725 section 3.9);
4. the key: chosen by ``kid`` among the issuer's keys *of that algorithm*, each key pinned to one
   algorithm (so an RSA public key is never used as an HMAC secret); a token without ``kid`` is
   accepted only when exactly one key of its algorithm exists;
5. the signature, with ``cryptography``; ECDSA's ``r`` and ``s`` must be in ``[1, n-1]``.

Every refusal raises :class:`InvalidToken`; its ``reason`` is for internal logs only (the client
is told nothing more than RFC 6750's ``invalid_token``). A reason computed before the signature
check describes an unverified token: it says what the token claimed, not who sent it.

Successful verifications go to an optional :class:`~apiforge.identity.token_cache.
VerifiedTokenCache`; see that module for why a hit can skip the signature.

Exceptions::

    ApiForgeError
    ├── InvalidToken               every refusal of a token; ``reason`` for internal logs
    └── StoreError
        └── JwksUnavailable        no key set can be had (the layer answers 503, not 401)
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal

from apiforge.errors import ApiForgeError, ConfigurationError
from apiforge.identity.jwks import (
    SUPPORTED_ALGORITHMS,
    Algorithm,
    InvalidJwk,
    JwksClient,
    JwksUnavailable,
    KeySet,
    VerificationKey,
    b64url_decode,
    hmac_key,
    load_json_object,
    load_pem_key,
    parse_jwk_set,
)
from apiforge.identity.token_cache import VerifiedTokenCache, token_digest
from apiforge.secrets import Secret

__all__ = [
    "MAX_LEEWAY",
    "MAX_TOKEN_BYTES",
    "InvalidToken",
    "TokenRefusal",
    "TokenVerifier",
    "TrustedIssuer",
    "VerifiedToken",
    "verify_cli_lines",
]

MAX_TOKEN_BYTES: Final = 16 * 1024
MAX_LEEWAY: Final = 60.0

TokenRefusal = Literal[
    "malformed",
    "too_large",
    "duplicate_member",
    "alg_not_allowed",
    "key_in_header",
    "unknown_crit",
    "bad_typ",
    "unknown_kid",
    "ambiguous_key",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "issued_in_future",
    "missing_claim",
    "bad_claim_type",
    "wrong_issuer",
    "wrong_audience",
]

# Three base64url parts; the signature may be empty so that a stripped signature is reported as
# a bad signature rather than as noise. Matching the alphabet here means every part is ASCII.
_JWS_RE: Final = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]*)", re.ASCII)
# RFC 8725 section 3.10: a key named or carried by the token lets the attacker choose the key.
_KEY_HEADERS: Final = frozenset({"jwk", "jku", "x5u", "x5c"})
# RFC 7515 section 4.1.9 (media types compare case-insensitively, "application/" optional) and
# RFC 9068 section 2.1 for access tokens.
_TYPES: Final = frozenset({"jwt", "application/jwt", "at+jwt", "application/at+jwt"})


class InvalidToken(ApiForgeError):
    """A token was refused. The one exception every verification failure raises.

    Args:
        reason: which check failed, for the internal security log only. Telling a client which
            check failed helps it probe the verifier; the client gets ``invalid_token``.
    """

    def __init__(self, reason: TokenRefusal) -> None:
        self.reason: TokenRefusal = reason
        super().__init__(f"invalid token: {reason}")


def _audiences(value: str | Sequence[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


@dataclass(frozen=True, slots=True)
class TrustedIssuer:
    """One token issuer this service trusts, and how its tokens are verified.

    Exactly one key source is given: ``pem_file``, ``jwks_file``, ``jwks_url`` or
    ``hmac_secret``.

    Attributes:
        issuer: the exact ``iss`` value. Tokens naming any other issuer are refused before any
            signature work.
        audience: the ``aud`` value(s) that mean "this service"; a token must name one of them,
            so a token minted for another service cannot be replayed here.
        algorithms: the algorithms accepted from this issuer (ES256, EdDSA, RS256, PS256,
            HS256). ``none`` is refused in any casing; HS256 only with ``hmac_secret`` and
            never together with public-key sources (no algorithm confusion by configuration).
        pem_file: a PEM public key file (one key).
        pem_algorithm: the PEM key's algorithm; needed for RSA (RS256 or PS256).
        jwks_file: a local JWKS file (several keys, for rotation).
        jwks_url: the provider's JWKS URL, fetched by a :class:`JwksClient`.
        hmac_secret: a shared secret of at least 32 bytes, for HS256.
        key_id: the ``kid`` of a PEM key or of the HMAC secret, if tokens carry one.
        leeway: seconds of clock skew tolerated on ``exp``, ``nbf`` and ``iat`` (at most 60:
            every second of leeway is a second a stolen expired token still works).
        max_token_bytes: the largest token accepted (at most 16 KiB).
        key_set: keys given directly (the built-in provider's keyring); replaced at run time
            with :meth:`TokenVerifier.replace_keys` when the keyring rotates.

    Raises:
        ConfigurationError: any rule above is broken; the message names the field and the fix.
    """

    issuer: str
    audience: str | tuple[str, ...]
    algorithms: tuple[Algorithm, ...] = ("ES256",)
    pem_file: str | None = None
    pem_algorithm: Algorithm | None = None
    jwks_file: str | None = None
    jwks_url: str | None = None
    hmac_secret: Secret | None = field(default=None, repr=False)
    key_id: str | None = None
    leeway: float = 30.0
    max_token_bytes: int = MAX_TOKEN_BYTES
    key_set: KeySet | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        where = f"trusted issuer {self.issuer!r}"
        if not isinstance(self.issuer, str) or not self.issuer:
            raise ConfigurationError("trusted issuer: 'issuer' must be a non-empty string")
        audiences = _audiences(self.audience)
        if not audiences or not all(isinstance(a, str) and a for a in audiences):
            raise ConfigurationError(f"{where}: 'audience' must name at least one audience")
        object.__setattr__(self, "audience", audiences if len(audiences) > 1 else audiences[0])
        algorithms = tuple(self.algorithms)
        object.__setattr__(self, "algorithms", algorithms)
        if not algorithms:
            raise ConfigurationError(f"{where}: 'algorithms' must not be empty")
        for alg in algorithms:
            if isinstance(alg, str) and alg.lower() == "none":
                raise ConfigurationError(
                    f"{where}: algorithm 'none' accepts unsigned tokens; remove it"
                )
            if alg not in SUPPORTED_ALGORITHMS:
                raise ConfigurationError(
                    f"{where}: algorithm {alg!r} is not supported; use one of "
                    f"{', '.join(sorted(SUPPORTED_ALGORITHMS))}"
                )
        sources = [s for s in (self.pem_file, self.jwks_file, self.jwks_url, self.hmac_secret,
                               self.key_set) if s is not None and s != ""]
        if len(sources) != 1:
            raise ConfigurationError(
                f"{where}: give exactly one of pem_file, jwks_file, jwks_url, hmac_secret"
            )
        if self.hmac_secret is not None:
            if len(self.hmac_secret.reveal().encode("utf-8")) < 32:
                raise ConfigurationError(
                    f"{where}: hmac_secret must be at least 32 bytes; generate one with "
                    "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`"
                )
            if algorithms != ("HS256",):
                raise ConfigurationError(f"{where}: an hmac_secret verifies HS256 only")
        elif "HS256" in algorithms:
            raise ConfigurationError(
                f"{where}: HS256 needs hmac_secret; with public keys it invites key confusion"
            )
        if not 0 <= self.leeway <= MAX_LEEWAY:
            raise ConfigurationError(f"{where}: leeway must be between 0 and {MAX_LEEWAY:g} s")
        if not 0 < self.max_token_bytes <= MAX_TOKEN_BYTES:
            raise ConfigurationError(
                f"{where}: max_token_bytes must be between 1 and {MAX_TOKEN_BYTES}"
            )
        if self.jwks_url is not None and not self.jwks_url.startswith(("https://", "http://")):
            raise ConfigurationError(f"{where}: jwks_url must be an https:// URL")

    def load_keys(self) -> KeySet | None:
        """Read the static keys (PEM, JWKS file or HMAC secret); ``None`` for ``jwks_url``.

        Raises:
            ConfigurationError: a file is unreadable or holds no key usable with
                ``algorithms``.
        """
        where = f"trusted issuer {self.issuer!r}"
        try:
            if self.key_set is not None:
                keys = self.key_set
            elif self.hmac_secret is not None:
                keys = KeySet([hmac_key(self.hmac_secret, kid=self.key_id)])
            elif self.pem_file is not None:
                pem = Path(self.pem_file).read_bytes()
                alg = self.pem_algorithm
                if alg is None:
                    rsa_algs = [a for a in self.algorithms if a in ("RS256", "PS256")]
                    alg = rsa_algs[0] if len(rsa_algs) == 1 else None
                keys = KeySet([load_pem_key(pem, alg=alg, kid=self.key_id)])
            elif self.jwks_file is not None:
                keys = parse_jwk_set(Path(self.jwks_file).read_bytes())
            else:
                return None
        except OSError as exc:
            raise ConfigurationError(f"{where}: cannot read key file ({exc.strerror})") from None
        except InvalidJwk as exc:
            raise ConfigurationError(f"{where}: {exc}") from None
        unusable = [k.alg for k in keys if k.alg not in self.algorithms]
        if unusable:
            raise ConfigurationError(
                f"{where}: a key is for {unusable[0]}, which 'algorithms' does not list"
            )
        return keys


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """A token that passed every check.

    Attributes:
        claims: every claim, read-only.
        subject: ``sub``: who the token is about.
        issuer: ``iss``: a trusted issuer.
        audience: ``aud`` as a tuple.
        exp: expiry (seconds since the epoch).
        iat: issue time.
        nbf: not-before, if given.
        jti: the token id, if given (the key for revocation).
        scopes: from the ``scope`` string (space-separated, RFC 8693 / RFC 9068) and the ``scp``
            array, merged.
        digest: BLAKE2b digest of the complete token text (``token_digest``: the cache
            key; safe to log, unlike the token).
        kid: the key id used, if the token named one.
        alg: the algorithm that verified it.
    """

    claims: Mapping[str, Any]
    subject: str
    issuer: str
    audience: tuple[str, ...]
    exp: float
    iat: float
    nbf: float | None
    jti: str | None
    scopes: frozenset[str]
    digest: bytes
    kid: str | None
    alg: str


def _refuse(reason: TokenRefusal) -> InvalidToken:
    return InvalidToken(reason)


def _decode_part(text: str) -> dict[str, Any]:
    try:
        return load_json_object(b64url_decode(text, charset_checked=True))
    except ValueError as exc:
        if str(exc) == "duplicate member":
            raise _refuse("duplicate_member") from None
        raise _refuse("malformed") from None


def _numeric_date(claims: Mapping[str, Any], name: str, *, required: bool) -> float | None:
    value = claims.get(name)
    if value is None:
        if required or name in claims:
            raise _refuse("missing_claim" if name not in claims else "bad_claim_type")
        return None
    # RFC 7519 section 2: NumericDate is a JSON number. ``True`` is an int in Python and
    # "1700000000" is a string: both are refused, never coerced.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _refuse("bad_claim_type")
    number = float(value)
    if not math.isfinite(number):
        raise _refuse("bad_claim_type")
    return number


def _required_date(claims: Mapping[str, Any], name: str) -> float:
    value = _numeric_date(claims, name, required=True)
    if value is None:  # unreachable: required dates raise when absent
        raise _refuse("missing_claim")
    return value


@dataclass(frozen=True, slots=True)
class _Issuer:
    config: TrustedIssuer
    audiences: frozenset[str]
    static: KeySet | None
    jwks: JwksClient | None


@dataclass(slots=True)
class _Checked:
    """A token past every check but the signature."""

    issuer: _Issuer
    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes
    digest: bytes
    alg: str
    kid: str | None
    audience: tuple[str, ...]
    exp: float
    iat: float
    nbf: float | None


class TokenVerifier:
    """Verifies JWTs from a fixed set of trusted issuers.

    Args:
        issuers: the trusted issuers; their static keys are loaded here, once.
        jwks: the JWKS client(s) for issuers configured with ``jwks_url``, matched by URL.
        cache: a verified-token cache owned by this verifier; it is flushed whenever a JWKS
            client reports a removed key.

    Raises:
        ConfigurationError: duplicate issuers, a ``jwks_url`` without a matching client, or a
            key file that cannot be used.
    """

    def __init__(
        self,
        issuers: Sequence[TrustedIssuer],
        *,
        jwks: JwksClient | Sequence[JwksClient] | None = None,
        cache: VerifiedTokenCache | None = None,
    ) -> None:
        clients = (
            {}
            if jwks is None
            else {c.url: c for c in ([jwks] if isinstance(jwks, JwksClient) else jwks)}
        )
        self._issuers: dict[str, _Issuer] = {}
        for config in issuers:
            if config.issuer in self._issuers:
                raise ConfigurationError(f"trusted issuer {config.issuer!r} is listed twice")
            client = None
            if config.jwks_url is not None:
                client = clients.get(config.jwks_url)
                if client is None:
                    raise ConfigurationError(
                        f"trusted issuer {config.issuer!r}: no JWKS client for {config.jwks_url}"
                    )
            self._issuers[config.issuer] = _Issuer(
                config, frozenset(_audiences(config.audience)), config.load_keys(), client
            )
        if not self._issuers:
            raise ConfigurationError("token verification needs at least one trusted issuer")
        self._max_bytes = max(i.config.max_token_bytes for i in self._issuers.values())
        self._cache = cache
        if cache is not None:
            for client in clients.values():
                client.add_removal_listener(cache.flush)
        self.signature_checks = 0
        """Signatures verified so far (cache hits do not count)."""

    async def verify(
        self, token: str, *, now: float | None = None, audience: str | None = None
    ) -> VerifiedToken:
        """Verify a token, fetching JWKS keys if needed.

        Args:
            token: the compact JWS from the ``Authorization: Bearer`` header; attacker-controlled.
            now: the current time in seconds since the epoch (``time.time()`` by default).
            audience: the route's audience; when given, the token's ``aud`` must include it
                (instead of any of the issuer's audiences).

        Raises:
            InvalidToken: any check failed.
            JwksUnavailable: the issuer's keys cannot be had (a 503, not a 401).
        """
        now = _now(now)
        checked = self._check(token, now, audience)
        if isinstance(checked, VerifiedToken):
            return checked
        jwks = checked.issuer.jwks
        if jwks is not None:
            keys = await jwks.candidates(checked.kid, checked.alg, now=now)
            if not keys and checked.kid is not None:
                cached = jwks.keys
                if cached is not None and cached.has_kid(checked.kid):
                    raise _refuse("alg_not_allowed")
        else:
            keys = self._static_candidates(checked)
        return self._finish(checked, keys, now)

    def verify_cached(
        self, token: str, *, now: float | None = None, audience: str | None = None
    ) -> VerifiedToken | None:
        """The token if it is in the verified-token cache and still valid; ``None`` otherwise.

        The synchronous fast path of :meth:`verify` for a token seen before: no coroutine, no
        signature. ``None`` means "verify it fully"; a cached token that is no longer valid
        here (expired, wrong audience for this route) raises ``InvalidToken`` as ``verify``
        would.
        """
        if self._cache is None or not isinstance(token, str) or not token.isascii():
            return None
        if len(token) > self._max_bytes:
            return None  # verify() refuses it with its own reason
        now = _now(now)
        hit = self._cache.get(token_digest(token), now=now)
        if hit is not None:
            self._recheck(hit, now, audience)
        return hit

    def replace_keys(self, issuer: str, keys: KeySet) -> None:
        """Swap the static keys of ``issuer`` (its keyring rotated).

        Tokens verified under a key that is gone must not be served from the cache any more,
        so the cache is flushed whenever a key disappears.

        Raises:
            ConfigurationError: ``issuer`` is not trusted or has no static keys, or a new key
                is for an algorithm the issuer does not accept.
        """
        known = self._issuers.get(issuer)
        if known is None or known.static is None:
            raise ConfigurationError(f"trusted issuer {issuer!r} has no static keys to replace")
        unusable = [k.alg for k in keys if k.alg not in known.config.algorithms]
        if unusable:
            raise ConfigurationError(
                f"trusted issuer {issuer!r}: a key is for {unusable[0]}, not an accepted algorithm"
            )
        kept = {k.thumbprint for k in keys}
        removed = any(k.thumbprint not in kept for k in known.static)
        self._issuers[issuer] = _Issuer(known.config, known.audiences, keys, known.jwks)
        if removed and self._cache is not None:
            self._cache.flush()

    def verify_sync(
        self, token: str, *, now: float | None = None, audience: str | None = None
    ) -> VerifiedToken:
        """Verify a token with local keys only (CLI, tests, synchronous code).

        Issuers with a ``jwks_url`` are served from their client's cached set; nothing is
        fetched. Arguments and exceptions as :meth:`verify`.
        """
        now = _now(now)
        checked = self._check(token, now, audience)
        if isinstance(checked, VerifiedToken):
            return checked
        jwks = checked.issuer.jwks
        if jwks is not None:
            keys = jwks.cached_candidates(checked.kid, checked.alg, now=now)
        else:
            keys = self._static_candidates(checked)
        return self._finish(checked, keys, now)

    def _static_candidates(self, checked: _Checked) -> tuple[VerificationKey, ...]:
        static = checked.issuer.static
        if static is None:  # unreachable: load_keys() returns keys for every non-URL issuer
            raise _refuse("unknown_kid")
        keys = static.candidates(checked.kid, checked.alg)
        if not keys and checked.kid is not None and static.has_kid(checked.kid):
            raise _refuse("alg_not_allowed")
        return keys

    def _check(
        self, token: str, now: float, route_audience: str | None
    ) -> _Checked | VerifiedToken:
        if not isinstance(token, str) or len(token) > self._max_bytes:
            raise _refuse("too_large" if isinstance(token, str) else "malformed")
        if not token.isascii():  # O(1) in CPython; a JWS is ASCII by construction
            raise _refuse("malformed")
        digest = token_digest(token)
        if self._cache is not None:
            hit = self._cache.get(digest, now=now)
            if hit is not None:
                self._recheck(hit, now, route_audience)
                return hit
        match = _JWS_RE.fullmatch(token)
        if match is None:
            raise _refuse("malformed")
        header_b64, claims_b64, signature_b64 = match.groups()

        header = _decode_part(header_b64)
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise _refuse("malformed")
        if alg not in SUPPORTED_ALGORITHMS:
            # Includes "none", "None", "NONE", "nOnE": unsigned tokens are never accepted.
            raise _refuse("alg_not_allowed")
        if _KEY_HEADERS & header.keys():
            raise _refuse("key_in_header")
        if "crit" in header:
            raise _refuse("unknown_crit")
        if "zip" in header:
            raise _refuse("malformed")  # compression exists for JWE only (RFC 7516)
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in _TYPES):
            raise _refuse("bad_typ")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _refuse("malformed")

        claims = _decode_part(claims_b64)
        iss = claims.get("iss")
        if iss is None:
            raise _refuse("missing_claim")
        if not isinstance(iss, str):
            raise _refuse("bad_claim_type")
        issuer = self._issuers.get(iss)
        if issuer is None:
            raise _refuse("wrong_issuer")
        config = issuer.config
        if len(token) > config.max_token_bytes:
            raise _refuse("too_large")
        if alg not in config.algorithms:
            raise _refuse("alg_not_allowed")

        sub = claims.get("sub")
        if sub is None:
            raise _refuse("missing_claim")
        if not isinstance(sub, str) or not sub:
            raise _refuse("bad_claim_type")
        exp = _required_date(claims, "exp")
        iat = _required_date(claims, "iat")
        nbf = _numeric_date(claims, "nbf", required=False)
        for name in ("jti", "scope"):
            if name in claims and not isinstance(claims[name], str):
                raise _refuse("bad_claim_type")
        scp = claims.get("scp")
        if scp is not None and not (isinstance(scp, list) and all(isinstance(s, str) for s in scp)):
            raise _refuse("bad_claim_type")
        aud = claims.get("aud")
        if aud is None:
            raise _refuse("missing_claim")
        if isinstance(aud, str):
            audience: tuple[str, ...] = (aud,)
        elif isinstance(aud, list) and aud and all(isinstance(a, str) for a in aud):
            audience = tuple(aud)
        else:
            raise _refuse("bad_claim_type")

        leeway = config.leeway
        _check_times(exp, nbf, now, leeway)
        if iat > now + leeway:
            raise _refuse("issued_in_future")
        _check_audience(audience, issuer.audiences, route_audience)

        try:
            signature = b64url_decode(signature_b64, charset_checked=True)
        except ValueError:
            raise _refuse("malformed") from None
        return _Checked(
            issuer=issuer,
            header=header,
            claims=claims,
            signing_input=f"{header_b64}.{claims_b64}".encode("ascii"),
            signature=signature,
            digest=digest,
            alg=alg,
            kid=kid,
            audience=audience,
            exp=exp,
            iat=iat,
            nbf=nbf,
        )

    def _recheck(self, hit: VerifiedToken, now: float, route_audience: str | None) -> None:
        # Everything that depends on time or on the route is checked again on a hit.
        issuer = self._issuers[hit.issuer]
        _check_times(hit.exp, hit.nbf, now, issuer.config.leeway)
        _check_audience(hit.audience, issuer.audiences, route_audience)

    def _finish(
        self, checked: _Checked, keys: tuple[VerificationKey, ...], now: float
    ) -> VerifiedToken:
        if not keys:
            raise _refuse("unknown_kid")
        if len(keys) > 1:
            # Without a kid (or with a kid shared by several keys) we would have to try keys in
            # turn, which multiplies the cost of a forged token; refuse instead.
            raise _refuse("ambiguous_key")
        self.signature_checks += 1
        if not keys[0].verify(checked.signing_input, checked.signature):
            raise _refuse("bad_signature")
        claims = checked.claims
        scopes = set(claims.get("scope", "").split())
        scopes.update(claims.get("scp", ()))
        verified = VerifiedToken(
            claims=MappingProxyType(claims),
            subject=claims["sub"],
            issuer=claims["iss"],
            audience=checked.audience,
            exp=checked.exp,
            iat=checked.iat,
            nbf=checked.nbf,
            jti=claims.get("jti"),
            scopes=frozenset(scopes),
            digest=checked.digest,
            kid=checked.kid,
            alg=checked.alg,
        )
        if self._cache is not None:
            self._cache.put(verified, now=now)
        return verified


def _now(now: float | None) -> float:
    return time.time() if now is None else now


def _check_times(exp: float, nbf: float | None, now: float, leeway: float) -> None:
    # RFC 7519 section 4.1.4: the current time must be *before* exp.
    if now >= exp + leeway:
        raise _refuse("expired")
    if nbf is not None and now + leeway < nbf:
        raise _refuse("not_yet_valid")


def _check_audience(
    audience: tuple[str, ...], accepted: frozenset[str], route_audience: str | None
) -> None:
    if route_audience is not None:
        if route_audience not in audience:
            raise _refuse("wrong_audience")
    elif accepted.isdisjoint(audience):
        raise _refuse("wrong_audience")


def verify_cli_lines(
    verifier: TokenVerifier, lines: Iterable[str], *, now: float | None = None
) -> Iterator[str]:
    """One JSON verdict per non-blank input line, for ``apiforge token verify -``.

    Args:
        verifier: a verifier with local keys (``verify_sync`` is used; nothing is fetched).
        lines: tokens, one per line (surrounding whitespace ignored).
        now: the time to verify at (seconds since the epoch); the current time by default.

    Yields:
        ``{"ok": true, "claims": {...}}`` or ``{"ok": false, "reason": "..."}``, one line each.
        The token itself is never echoed (it is a credential).
    """
    for line in lines:
        token = line.strip()
        if not token:
            continue
        try:
            verified = verifier.verify_sync(token, now=now)
        except InvalidToken as exc:
            yield json.dumps({"ok": False, "reason": exc.reason})
        except JwksUnavailable:
            yield json.dumps({"ok": False, "reason": "keys_unavailable"})
        else:
            yield json.dumps({"ok": True, "claims": dict(verified.claims)}, sort_keys=True)
