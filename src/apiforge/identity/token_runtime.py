"""Token verification for one process: the verifier, its cache, JWKS clients and revocations.

Built from the policy's ``authentication.tokens``. The built-in provider's keyring is trusted
without being listed as an issuer, and re-read when it changes on disk (``apiforge keys
rotate-signing`` in another process): new keys are accepted at once, and a dropped key flushes
the verified-token cache so no token signed with it is served from memory.

Revoked access tokens (``jti``) reach every process through the state store's change feed and
are kept here in memory, so the request path asks no store for a token it has already seen; a
token seen for the first time is also checked against the store once (a process started after
a revocation has not seen it on the feed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from apiforge.errors import ConfigurationError
from apiforge.identity.jwks import JwksClient, KeySet
from apiforge.identity.token_cache import VerifiedTokenCache
from apiforge.identity.tokens import MAX_LEEWAY, TokenVerifier, TrustedIssuer
from apiforge.integrations.http_client import HttpClientFactory
from apiforge.secrets import Secret

if TYPE_CHECKING:  # the policy package imports this package's settings: no cycle at run time
    from apiforge.identity.token_settings import IssuerSettings, TokenSettings

__all__ = ["REVOKED_TOKEN_TOPIC", "RevokedTokens", "TokenRuntime"]

_log = logging.getLogger("apiforge")

REVOKED_TOKEN_TOPIC: Final = "jti"  # noqa: S105 - a topic name, not a secret
"""The change-feed topic (and state-store kind) of revoked access tokens."""

# An access token lives at most 15 minutes plus leeway: a revocation older than that concerns
# a token that can no longer be accepted anyway.
_REVOCATION_MEMORY: Final = 900.0 + MAX_LEEWAY
_KEYRING_POLL: Final = 1.0


class RevokedTokens:
    """Revoked ``jti`` values this process has heard of, each forgotten once no token can use it.

    A cached service of the change feed (topic ``jti``): ``refresh`` receives the ids revoked
    since the last poll.
    """

    topic = REVOKED_TOKEN_TOPIC

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until: dict[str, float] = {}
        self._sweep_at = 1024

    def __contains__(self, jti: object) -> bool:
        until = self._until.get(jti) if isinstance(jti, str) else None
        return until is not None and until > self._clock()

    def add(self, jti: str) -> None:
        """Remember one revoked ``jti``."""
        self._until[jti] = self._clock() + _REVOCATION_MEMORY
        if len(self._until) > self._sweep_at:
            now = self._clock()
            self._until = {k: v for k, v in self._until.items() if v > now}
            self._sweep_at = max(1024, 2 * len(self._until))

    async def load(self) -> int:
        return 0  # earlier revocations are looked up once per new token instead

    async def refresh(self, ids: Iterable[str]) -> None:
        for jti in ids:
            self.add(jti)


def _trusted(settings: IssuerSettings) -> TrustedIssuer:
    secret = None
    if settings.hmac_secret_env is not None:
        value = os.environ.get(settings.hmac_secret_env)
        if not value:
            raise ConfigurationError(
                f"authentication.tokens.issuers: issuer {settings.issuer!r} reads its HS256"
                f" secret from ${settings.hmac_secret_env}, which is not set; export it"
            )
        secret = Secret(value)
    audience = (settings.audience if isinstance(settings.audience, str)
                else tuple(settings.audience))
    return TrustedIssuer(
        issuer=settings.issuer, audience=audience, algorithms=tuple(settings.algorithms),
        pem_file=settings.pem_file, pem_algorithm=settings.pem_algorithm,
        jwks_file=settings.jwks_file, jwks_url=settings.jwks_url, hmac_secret=secret,
        key_id=settings.key_id, leeway=settings.leeway,
    )


class TokenRuntime:
    """Everything that verifies bearer tokens in this process.

    Args:
        settings: the policy's ``authentication.tokens``.
        http: the outbound client factory for JWKS URLs; by default one that may reach only
            the JWKS hosts named in the policy.
        keyring: the built-in provider's keyring, when ``settings.provider`` is set; opened
            (created on first start) from ``provider.keyring_file`` by default.
    """

    def __init__(
        self,
        settings: TokenSettings,
        *,
        http: HttpClientFactory | None = None,
        keyring: Any = None,
    ) -> None:
        self.settings = settings
        self.revoked = RevokedTokens()
        self.cache = VerifiedTokenCache(settings.cache_size) if settings.cache_size else None
        issuers = [_trusted(issuer) for issuer in settings.issuers]
        provider = settings.provider
        self.keyring = keyring
        if provider is not None:
            if self.keyring is None:
                from apiforge.identity.signing import SigningKeyring

                self.keyring = SigningKeyring.load_or_create(Path(provider.keyring_file))
            issuers.append(TrustedIssuer(provider.issuer, provider.audience, ("ES256",),
                                         key_set=self._keyring_keys()))
        urls = [i.jwks_url for i in issuers if i.jwks_url is not None]
        if urls and http is None:
            http = HttpClientFactory(allowed_hosts={urlsplit(u).hostname or "" for u in urls})
        self.http = http
        self.jwks = [JwksClient(url=url, http=http,
                                min_refetch_interval=settings.jwks_refetch_interval)
                     for url in urls] if http is not None else []
        self.verifier = TokenVerifier(issuers, jwks=self.jwks, cache=self.cache)
        self._poller: asyncio.Task[None] | None = None

    def _keyring_keys(self) -> KeySet:
        keys: KeySet = self.keyring.key_set()
        return keys

    def reload_keyring(self) -> bool:
        """Re-read the provider's keyring if it changed on disk; returns whether it did."""
        if self.keyring is None or not self.keyring.reload_if_changed():
            return False
        provider = self.settings.provider
        if provider is None:  # a keyring exists only with a provider
            return False
        self.verifier.replace_keys(provider.issuer, self._keyring_keys())
        return True

    def start(self) -> None:
        """Follow the keyring file in the background (idempotent)."""
        if self.keyring is not None and self._poller is None:
            self._poller = asyncio.create_task(self._follow_keyring(),
                                               name="apiforge-keyring")

    async def _follow_keyring(self) -> None:
        while True:
            await asyncio.sleep(_KEYRING_POLL)
            try:
                self.reload_keyring()
            except Exception:
                _log.exception("reloading the signing keyring failed; keeping the keys in use")

    async def aclose(self) -> None:
        """Stop following the keyring and close the JWKS clients."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        for client in self.jwks:
            await client.aclose()


def verify_token(
    token: str, *, now: float | None = None, policy: Any = None
) -> dict[str, Any]:
    """Verify one token against the policy's trusted issuers; the claims if it passes.

    Args:
        token: the compact JWS.
        now: the time to verify at (seconds since the epoch); the current time by default.
        policy: a :class:`~apiforge.policy.Policy`, a mapping or a path (default
            ``./apiforge.yaml``).

    Raises:
        InvalidToken: the token is refused; ``reason`` says why.
        JwksUnavailable: an issuer's keys cannot be had.
        ConfigurationError: the policy trusts no issuer.
    """
    from apiforge.policy import load_policy

    settings = load_policy(policy).authentication.tokens
    if not settings.issuers and settings.provider is None:
        raise ConfigurationError(
            "authentication.tokens trusts no issuer: add authentication.tokens.issuers"
        )
    runtime = TokenRuntime(settings)

    async def run() -> dict[str, Any]:
        try:
            verified = await runtime.verifier.verify(token, now=now)
            return dict(verified.claims)
        finally:
            await runtime.aclose()

    return asyncio.run(run())
