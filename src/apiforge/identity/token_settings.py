"""The policy's ``authentication.tokens`` section: trusted issuers and the built-in provider."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from apiforge.policy.base import PolicyModel

__all__ = ["IssuerSettings", "ProviderSettings", "RouteTokenSettings", "TokenSettings"]

AlgorithmName = Literal["ES256", "EdDSA", "RS256", "PS256", "HS256"]
_DEFAULT_ALGORITHMS: tuple[AlgorithmName, ...] = ("ES256",)


class IssuerSettings(PolicyModel):
    """One external token issuer this service trusts. Give exactly one key source."""

    issuer: str
    """The exact `iss` value. Tokens naming any other issuer are refused before any signature
    work."""

    audience: str | list[str]
    """The `aud` value(s) that mean this service: a token minted for another service is
    refused here."""

    algorithms: list[AlgorithmName] = Field(default_factory=lambda: list(_DEFAULT_ALGORITHMS))
    """Algorithms accepted from this issuer, each pinned to its keys. `none` does not exist
    here; `HS256` only with `hmac_secret_env` and never beside public keys."""

    pem_file: str | None = None
    """A PEM public key file (one key)."""

    pem_algorithm: AlgorithmName | None = None
    """The PEM key's algorithm; needed for RSA keys (`RS256` or `PS256`)."""

    jwks_file: str | None = None
    """A local JWKS file (several keys, for rotation)."""

    jwks_url: str | None = None
    """The provider's JWKS URL (https). Fetched through the egress client (certificates
    verified, timeouts, size limit), cached, refetched on an unknown `kid` at most once per
    `tokens.jwks_refetch_interval`, and served stale while the provider is down."""

    hmac_secret_env: str | None = None
    """Name of the environment variable holding an HS256 secret (at least 32 bytes). The
    secret itself is never written in the policy."""

    key_id: str | None = None
    """The `kid` of a PEM key or of the HMAC secret, when tokens carry one."""

    leeway: Annotated[float, Field(ge=0, le=60)] = 30.0
    """Seconds of clock skew tolerated on `exp`, `nbf` and `iat` (at most 60: every second is
    a second a stolen expired token still works)."""


class ProviderSettings(PolicyModel):
    """The built-in identity provider: `POST /v1/auth/token` and friends (the demo's)."""

    issuer: str
    """The `iss` of the tokens it signs; trusted by this service without listing it again."""

    audience: str
    """The `aud` of the tokens it signs."""

    keyring_file: str
    """The signing keyring (ES256 private keys, mode 0600), created on first start and
    rotated with `apiforge keys rotate-signing`. Every process re-reads it when it changes.
    `{data_dir}` is replaced by the demo's data directory."""

    access_ttl: Annotated[int, Field(ge=30, le=900)] = 600
    """Seconds an access token lives (at most 15 minutes: access tokens cannot be recalled
    from clients, so they must die young)."""

    refresh_idle: Annotated[float, Field(gt=0)] = 7 * 86_400.0
    """Seconds a refresh-token family may go unused before it dies."""

    refresh_absolute: Annotated[float, Field(gt=0)] = 30 * 86_400.0
    """Seconds a refresh-token family lives at most, however often it is used; then the user
    logs in again."""

    @model_validator(mode="after")
    def _check_lifetimes(self) -> ProviderSettings:
        if self.refresh_idle > self.refresh_absolute:
            raise ValueError("refresh_idle must not exceed refresh_absolute")
        return self


class TokenSettings(PolicyModel):
    """Bearer tokens (JWT): who may issue them and how they are verified."""

    issuers: list[IssuerSettings] = Field(default_factory=list)
    """External issuers whose tokens are accepted."""

    provider: ProviderSettings | None = None
    """The built-in provider, if this service issues tokens itself."""

    cache_size: Annotated[int, Field(ge=0, le=1_000_000)] = 10_000
    """Verified tokens kept so a token presented again skips its signature check (0: off).
    Entries never outlive the token's `exp`; expiry, the `jti` denylist, the account and the
    route's audience and scopes are checked again on every request; a removed signing key
    flushes the cache."""

    jwks_refetch_interval: Annotated[float, Field(ge=1, le=3600)] = 30.0
    """Least seconds between two fetches of one JWKS URL caused by unknown `kid`s, so a flood
    of forged `kid`s cannot hammer the provider."""


class RouteTokenSettings(PolicyModel):
    """What a route requires of a bearer token beyond its issuer's defaults."""

    audience: str | None = None
    """The `aud` a token must name for this route (default: any audience of its issuer)."""

    scopes: list[str] = Field(default_factory=list)
    """Scopes the token must all carry (`scope` or `scp` claim); 403 `insufficient_scope`
    otherwise."""
