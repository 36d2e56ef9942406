"""The identity provider's logic: password grant, refresh, revocation, password change.

Plain Python, no HTTP: the token endpoints adapt these calls to requests (RFC 6749 section 5).

- :meth:`TokenService.password_grant` checks username, password (argon2id, off the event loop,
  bounded concurrency) and, for an account with a second factor, a TOTP code used at most once;
  then it signs an access token (RFC 9068 ``at+jwt``, at most 15 minutes) and starts a
  refresh-token family. The resource-owner password grant is deprecated for third-party
  clients (RFC 9700 section 2.4): offer it to first-party clients only.
- :meth:`TokenService.refresh` rotates the refresh token (single use, atomic across processes)
  and signs a new access token; a reused refresh token revokes its family.
- :meth:`TokenService.revoke` (RFC 7009): an access token's ``jti`` goes on the shared denylist
  until the token expires; a refresh token ends its family. Unknown tokens are not an error.
- :meth:`TokenService.change_password` and :meth:`TokenService.revoke_account` end every family
  of the account.

Access tokens carry ``account_version``, the account's version when the family began. Every
change of the account (status, password, second factor) bumps the version, so the token check
can refuse tokens issued before the change (:meth:`TokenService.is_revoked`), and a family
begun before it ends at its next refresh.

Every refusal raises :class:`InvalidGrant`. Its ``reason`` is for the internal security log
only; the endpoint answers every one of them with the same 401 ``invalid_grant``, so a client
cannot tell an unknown user from a wrong password, a suspended account or a missing code (the
answers also take the same time: an unknown user's password is checked against a dummy hash).

Exceptions::

    ApiForgeError
    └── InvalidGrant     every refusal of a grant; ``reason`` for internal logs only
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final, Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from apiforge.errors import ApiForgeError, ConfigurationError
from apiforge.identity.accounts import AccountRefused
from apiforge.identity.jwks import JwksClient, JwksUnavailable
from apiforge.identity.passwords import password_hasher
from apiforge.identity.refresh import (
    DEFAULT_ABSOLUTE,
    DEFAULT_IDLE,
    REFRESH_PREFIX,
    IssuedRefresh,
    RefreshFamily,
    RefreshTokenRefused,
    RefreshTokens,
)
from apiforge.identity.signing import keyring_jwks_client
from apiforge.identity.tokens import (
    MAX_LEEWAY,
    InvalidToken,
    TokenVerifier,
    TrustedIssuer,
    VerifiedToken,
)
from apiforge.identity.totp import match_totp
from apiforge.secrets import Secret

if TYPE_CHECKING:
    from apiforge.identity.accounts import Account, AccountService
    from apiforge.identity.signing import SigningKeyring
    from apiforge.identity.token_cache import VerifiedTokenCache
    from apiforge.stores.protocols import RefreshStore, StateStore

__all__ = [
    "MAX_ACCESS_TTL",
    "MAX_PASSWORD_LENGTH",
    "MIN_PASSWORD_LENGTH",
    "REVOKED_JTI_KIND",
    "REVOKED_JTI_TOPIC",
    "GrantRefusal",
    "InvalidGrant",
    "RevokedKind",
    "TokenPair",
    "TokenService",
]

MAX_ACCESS_TTL: Final = 900
"""Access tokens live at most 15 minutes: revocation of a refresh family takes this long to
reach tokens already issued (unless the ``jti`` is denylisted)."""
REVOKED_JTI_KIND: Final = "jti"
"""The ``StateStore.revoke`` kind under which revoked access-token ids are kept."""
REVOKED_JTI_TOPIC: Final = "jti"
"""Change-feed topic on which a revoked access token's ``jti`` is announced (the same name as
the state-store kind, and as ``token_runtime.REVOKED_TOKEN_TOPIC``)."""
MIN_PASSWORD_LENGTH: Final = 8
MAX_PASSWORD_LENGTH: Final = 1024
MAX_USERNAME_LENGTH: Final = 256
MAX_OTP_LENGTH: Final = 16

GrantRefusal = Literal[
    "malformed",
    "invalid_scope",
    "unknown_user",
    "no_password",
    "bad_password",
    "account_suspended",
    "account_locked",
    "account_deleted",
    "account_stale",
    "account_changed",
    "otp_required",
    "bad_otp",
    "otp_replayed",
    "bad_token",
    "unknown_token",
    "token_reuse",
    "token_revoked",
    "token_expired",
]
RevokedKind = Literal["access_token", "refresh_token"]

_log = logging.getLogger("apiforge.identity.tokens")

_REFRESH_REASONS: Final[dict[str, GrantRefusal]] = {
    "malformed": "bad_token",
    "unknown": "unknown_token",
    "reused": "token_reuse",
    "revoked": "token_revoked",
    "expired": "token_expired",
}
_ACCOUNT_REASONS: Final[dict[str, GrantRefusal]] = {
    "suspended": "account_suspended",
    "locked": "account_locked",
    "deleted": "account_deleted",
    "stale": "account_stale",
}


class InvalidGrant(ApiForgeError):
    """A grant was refused. The one exception every refusal raises.

    Args:
        reason: which check failed, for the internal security log only. The client gets the
            same ``invalid_grant`` 401 for all of them: telling it ``bad_password`` rather than
            ``unknown_user`` (or ``otp_required``, which confirms the password) would help it
            enumerate accounts or guess passwords.
        account_id: the account, once known (never the username typed, which may be a
            password pasted into the wrong field).
        family_id: the refresh-token family, for refresh refusals.
    """

    def __init__(
        self,
        reason: GrantRefusal,
        *,
        account_id: str | None = None,
        family_id: str | None = None,
    ) -> None:
        self.reason: GrantRefusal = reason
        self.account_id = account_id
        self.family_id = family_id
        super().__init__("invalid grant")

    @property
    def event(self) -> str:
        """The security event to emit: ``authn_token_reuse`` or ``authn_login_fail``."""
        return "authn_token_reuse" if self.reason == "token_reuse" else "authn_login_fail"


@dataclass(frozen=True, slots=True)
class TokenPair:
    """What a successful grant gives the client, plus ids for the security log.

    Attributes:
        access_token: the signed JWT; a bearer credential (masked in ``repr``).
        expires_in: the access token's lifetime in seconds.
        refresh_token: the new refresh token (masked in ``repr``).
        scope: the scopes granted.
        token_type: always ``Bearer`` (RFC 6750).
        account_id: whose tokens these are (for the log; not sent).
        family_id: the refresh-token family (for the log; not sent).
        jti: the access token's id (for the log; not sent).
    """

    access_token: Secret
    expires_in: int
    refresh_token: Secret
    scope: frozenset[str]
    account_id: str
    family_id: str
    jti: str
    token_type: str = "Bearer"  # noqa: S105 - the RFC 6750 token type, not a secret

    def to_response(self) -> dict[str, str | int]:
        """The RFC 6749 section 5.1 body. Send it with ``Cache-Control: no-store``."""
        body: dict[str, str | int] = {
            "access_token": self.access_token.reveal(),
            "token_type": self.token_type,
            "expires_in": self.expires_in,
            "refresh_token": self.refresh_token.reveal(),
        }
        if self.scope:
            body["scope"] = " ".join(sorted(self.scope))
        return body


def _text(value: str | Secret | None) -> str:
    if isinstance(value, Secret):
        return value.reveal()
    return value if isinstance(value, str) else ""


class TokenService:
    """Issues, refreshes and revokes this service's own tokens.

    Args:
        accounts: the account cache (kept current by the cache refresher).
        keyring: the issuer's signing keys; reloaded from its file before every signature.
        refresh: the refresh-token store (single use is atomic there).
        state: the shared state store: the ``jti`` denylist and the change feed.
        issuer: the ``iss`` of every token (an ``https://`` URL, as a rule).
        audience: the ``aud`` of every access token: the API that accepts them.
        access_ttl: access-token lifetime in seconds, at most 900. Once issued, a token is
            valid this long unless its ``jti`` is denylisted.
        refresh_idle: seconds a refresh family survives without use (default 7 days).
        refresh_absolute: seconds a refresh family lives at most (default 30 days).
        hash_concurrency: argon2 computations at once. Each takes its memory cost (19 MiB
            in production) and a core; the cap keeps a login flood from exhausting either.
        clock: seconds since the epoch; injectable for tests.
        hasher: the argon2 hasher; the production parameters unless a test passes cheaper.
        scopes: the scopes a client may request; a request outside them is refused
            (``invalid_scope``). Empty: tokens carry no scope.
        cache: a verified-token cache for the verifier built here.
        verifier: a verifier that trusts this issuer already (the process's token runtime);
            by default one is built on the keyring (:func:`keyring_jwks_client`). It checks
            access tokens presented for revocation.

    Raises:
        ConfigurationError: an access lifetime outside 1..900 s, a keyring that drops keys
            before the tokens they signed expire, an empty issuer or audience, or a
            concurrency below 1.
    """

    def __init__(
        self,
        accounts: AccountService,
        keyring: SigningKeyring,
        refresh: RefreshStore,
        state: StateStore,
        *,
        issuer: str,
        audience: str,
        access_ttl: int = 600,
        refresh_idle: float = DEFAULT_IDLE,
        refresh_absolute: float = DEFAULT_ABSOLUTE,
        hash_concurrency: int = os.cpu_count() or 2,
        clock: Callable[[], float] = time.time,
        hasher: PasswordHasher = password_hasher,
        scopes: Iterable[str] = (),
        cache: VerifiedTokenCache | None = None,
        verifier: TokenVerifier | None = None,
    ) -> None:
        if not 1 <= access_ttl <= MAX_ACCESS_TTL:
            raise ConfigurationError(
                f"access_ttl must be between 1 and {MAX_ACCESS_TTL} seconds, not {access_ttl}"
            )
        if keyring.keep_for < access_ttl + MAX_LEEWAY:
            raise ConfigurationError(
                f"the signing keyring drops retired keys after {keyring.keep_for:g} s, before "
                f"tokens living {access_ttl} s (+{MAX_LEEWAY:g} s leeway) expire; raise keep_for"
            )
        if hash_concurrency < 1:
            raise ConfigurationError("hash_concurrency must be at least 1")
        if not issuer or not audience:
            raise ConfigurationError("the token service needs an issuer and an audience")
        self._accounts = accounts
        self._keyring = keyring
        self._state = state
        self._issuer = issuer
        self._audience = audience
        self._access_ttl = access_ttl
        self._clock = clock
        self._hasher = hasher
        self._scopes = frozenset(scopes)
        self._hashing = asyncio.Semaphore(hash_concurrency)
        self._dummy_hash: str | None = None
        self.families = RefreshTokens(
            refresh, idle=refresh_idle, absolute=refresh_absolute, clock=clock
        )
        self._jwks: JwksClient | None = None
        if verifier is None:
            base = (issuer.rstrip("/") if issuer.startswith("https://")
                    else "https://apiforge.invalid")
            self._jwks = keyring_jwks_client(keyring, f"{base}/.well-known/jwks.json",
                                             clock=clock)
            verifier = TokenVerifier(
                [TrustedIssuer(issuer, audience, algorithms=("ES256",), jwks_url=self._jwks.url)],
                jwks=self._jwks,
                cache=cache,
            )
        self.verifier = verifier
        """A verifier of this service's own access tokens (the keyring's published keys,
        through the same checks as any issuer's). The pipeline may use it as it is."""

    # -- grants -------------------------------------------------------------------------------

    async def password_grant(
        self,
        username: str,
        password: str | Secret,
        otp: str | Secret | None = None,
        *,
        client_id: str | None = None,
        scope: Iterable[str] = (),
    ) -> TokenPair:
        """Resource-owner password grant (RFC 6749 section 4.3), with a second factor.

        Args:
            username: as typed.
            password: as typed.
            otp: the current TOTP code; required when the account has a TOTP secret, ignored
                otherwise. A code is accepted once: its time step is claimed atomically.
            client_id: the client asking, copied into the tokens (RFC 9068 ``client_id``).
            scope: scopes requested; each must be in the service's ``scopes``.

        Raises:
            InvalidGrant: ``malformed``, ``invalid_scope``, ``unknown_user``, ``no_password``,
                ``bad_password``, ``account_<status>``, ``account_stale``, ``otp_required``,
                ``bad_otp`` or ``otp_replayed``.
        """
        secret = _text(password)
        requested = frozenset(scope)
        if (
            not isinstance(username, str)
            or not username
            or len(username) > MAX_USERNAME_LENGTH
            or not secret
            or len(secret) > MAX_PASSWORD_LENGTH
        ):
            raise InvalidGrant("malformed")
        if not requested <= self._scopes:
            raise InvalidGrant("invalid_scope")
        # Unknown users (and accounts without a password) pay for one argon2 verification
        # too, against a dummy hash, so the answer's timing does not tell them apart. The dummy
        # is made at the first grant of any kind, so even that one does not single them out.
        dummy = await self._dummy()
        account = self._accounts.find(username)
        stored = None if account is None else account.password_hash
        matched = await self._verify(stored or dummy, secret)
        if account is None:
            raise InvalidGrant("unknown_user")
        account_id = account.account_id
        if stored is None:
            raise InvalidGrant("no_password", account_id=account_id)
        if not matched:
            raise InvalidGrant("bad_password", account_id=account_id)
        self._check(account)
        if account.totp_secret is not None:
            await self._check_otp(account, account.totp_secret, _text(otp))
        await self._rehash_if_needed(account_id, stored, secret)
        issued = await self.families.start(
            account_id, account.version, client_id=client_id, scope=requested
        )
        return self._pair(issued)

    async def refresh(self, refresh_token: str | Secret) -> TokenPair:
        """Refresh grant (RFC 6749 section 6): rotate the refresh token, sign a new access token.

        The account must still be active and unchanged since the family began; a family whose
        account was suspended, locked, deleted or changed is ended.

        Raises:
            InvalidGrant: ``bad_token``, ``unknown_token``, ``token_revoked``,
                ``token_expired``, ``token_reuse`` (the family is now revoked: emit
                ``authn_token_reuse``), ``unknown_user``, ``account_<status>``,
                ``account_stale`` (not spent: the client may retry) or ``account_changed``.
        """
        try:
            family = await self.families.inspect(refresh_token)
        except RefreshTokenRefused as exc:
            raise self._refused(exc) from None
        ids: dict[str, Any] = {"account_id": family.account_id, "family_id": family.family_id}
        account = self._accounts.get(family.account_id)
        if account is None:
            raise InvalidGrant("unknown_user", **ids)
        try:
            self._accounts.check(account)
        except AccountRefused as exc:
            if exc.reason != "stale":
                await self.families.revoke_family(family.family_id, "account")
            raise InvalidGrant(_ACCOUNT_REASONS.get(exc.reason, "account_stale"), **ids) from None
        if account.version > family.account_version:
            await self.families.revoke_family(family.family_id, "account_changed")
            raise InvalidGrant("account_changed", **ids)
        try:
            issued = await self.families.rotate(refresh_token)
        except RefreshTokenRefused as exc:
            raise self._refused(exc) from None
        return self._pair(issued)

    # -- revocation ---------------------------------------------------------------------------

    async def revoke(self, token: str | Secret) -> RevokedKind | None:
        """RFC 7009 revocation of an access or a refresh token.

        An access token of ours (verified first: a forged token revokes nothing) has its
        ``jti`` put on the shared denylist until it expires, and the ``jti`` is announced on
        the change feed (topic :data:`REVOKED_JTI_TOPIC`) for processes that cache the
        denylist. A refresh token ends its whole family.

        Returns:
            Which kind was revoked, for the ``authn_token_revoked`` event; ``None`` when the
            token is invalid, expired or unknown, which is not an error (RFC 7009 section 2.2).
        """
        text = _text(token)
        if text.startswith(REFRESH_PREFIX):
            family = await self.families.revoke_token(text)
            return None if family is None else "refresh_token"
        now = self._clock()
        try:
            verified = await self.verifier.verify(text, now=now)
        except (InvalidToken, JwksUnavailable):
            return None
        if verified.jti is None:
            return None
        # Until the token's expiry plus the largest leeway any verifier grants: after that the
        # token is refused anyway and the mark may go.
        ttl = max(verified.exp + MAX_LEEWAY - now, 1.0)
        await self._state.revoke(REVOKED_JTI_KIND, verified.jti, timedelta(seconds=ttl))
        await self._state.publish_change(REVOKED_JTI_TOPIC, verified.jti)
        return "access_token"

    async def is_revoked(self, token: VerifiedToken) -> bool:
        """Whether an access token of ours, already verified, must be refused all the same.

        True when its ``jti`` is denylisted (one state-store read) or its
        ``account_version`` is older than the account's (the account changed since the
        token's family began). The account's status is the caller's check
        (:meth:`AccountService.check`).
        """
        if token.jti is not None and await self._state.is_revoked(REVOKED_JTI_KIND, token.jti):
            return True
        issued_under = token.claims.get("account_version")
        account = self._accounts.get(token.subject)
        return (
            account is not None
            and isinstance(issued_under, int)
            and account.version > issued_under
        )

    async def revoke_account(self, account_id: str) -> int:
        """End every refresh family of the account (suspension, compromise); how many.

        Access tokens already issued stay valid until they expire unless the token check
        uses :meth:`is_revoked` (a suspension bumps the account's version).
        """
        return await self.families.revoke_account(account_id, "account")

    on_account_suspended = revoke_account

    async def change_password(self, account_id: str, new_password: str | Secret) -> None:
        """Set a new password and end every refresh family of the account.

        The account's version is bumped, so access tokens issued before are refused by
        :meth:`is_revoked`. Checking the old password (or a recent login) is the caller's job.

        Raises:
            ValueError: the password is shorter than 8 or longer than 1024 characters.
            LookupError: no such account.
        """
        secret = _text(new_password)
        if not MIN_PASSWORD_LENGTH <= len(secret) <= MAX_PASSWORD_LENGTH:
            raise ValueError(
                f"a password must have {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters"
            )
        new_hash = await self._hash(secret)
        await self._accounts.set_password(account_id, new_hash)
        await self.families.revoke_account(account_id, "account")

    # -- keys ---------------------------------------------------------------------------------

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The JWKS to serve at ``/.well-known/jwks.json`` (re-read after a rotation)."""
        self._keyring.reload_if_changed()
        return self._keyring.jwks(self._clock())

    async def aclose(self) -> None:
        """Close the key client of the verifier built here (a verifier passed in is left)."""
        if self._jwks is not None:
            await self._jwks.aclose()

    # -- internals ----------------------------------------------------------------------------

    def _check(self, account: Account) -> None:
        try:
            self._accounts.check(account)
        except AccountRefused as exc:
            raise InvalidGrant(
                _ACCOUNT_REASONS.get(exc.reason, "account_stale"), account_id=account.account_id
            ) from None

    async def _check_otp(self, account: Account, secret: str, code: str) -> None:
        account_id = account.account_id
        if not code:
            raise InvalidGrant("otp_required", account_id=account_id)
        if len(code) > MAX_OTP_LENGTH:
            raise InvalidGrant("bad_otp", account_id=account_id)
        try:
            step = match_totp(secret, code, self._clock())
        except ValueError:
            _log.error("stored TOTP secret is not base32", extra={"account_id": account_id})
            step = None
        if step is None:
            raise InvalidGrant("bad_otp", account_id=account_id)
        # RFC 6238 section 5.2: a code is good once. The claim is atomic in the store, so two
        # logins racing with one intercepted code cannot both pass.
        if not await self.families.claim_totp_step(account_id, step):
            raise InvalidGrant("otp_replayed", account_id=account_id)

    def _pair(self, issued: IssuedRefresh) -> TokenPair:
        family: RefreshFamily = issued.family
        now = int(self._clock())
        jti = secrets.token_urlsafe(16)
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "sub": family.account_id,
            "aud": self._audience,
            "exp": now + self._access_ttl,
            "iat": now,
            "jti": jti,
            "account_version": family.account_version,
        }
        if family.client_id is not None:
            claims["client_id"] = family.client_id
        if family.scope:
            claims["scope"] = " ".join(sorted(family.scope))
        self._keyring.reload_if_changed()
        return TokenPair(
            access_token=Secret(self._keyring.sign(claims)),
            expires_in=self._access_ttl,
            refresh_token=issued.token,
            scope=family.scope,
            account_id=family.account_id,
            family_id=family.family_id,
            jti=jti,
        )

    @staticmethod
    def _refused(exc: RefreshTokenRefused) -> InvalidGrant:
        family = exc.family
        return InvalidGrant(
            _REFRESH_REASONS[exc.reason],
            account_id=None if family is None else family.account_id,
            family_id=None if family is None else family.family_id,
        )

    async def _verify(self, stored: str, password: str) -> bool:
        def check() -> bool:
            try:
                return self._hasher.verify(stored, password)
            except (VerificationError, InvalidHashError):
                return False

        async with self._hashing:
            return await asyncio.to_thread(check)

    async def _hash(self, password: str) -> str:
        async with self._hashing:
            return await asyncio.to_thread(self._hasher.hash, password)

    async def _dummy(self) -> str:
        if self._dummy_hash is None:
            # Hashed with the same hasher, so verifying against it costs what a real one does.
            self._dummy_hash = await self._hash(secrets.token_urlsafe(32))
        return self._dummy_hash

    async def _rehash_if_needed(self, account_id: str, stored: str, password: str) -> None:
        try:
            if not self._hasher.check_needs_rehash(stored):
                return
        except InvalidHashError:
            return
        try:
            await self._accounts.upgrade_password_hash(
                account_id, stored, await self._hash(password)
            )
        except Exception:
            # A failed upgrade costs nothing but the upgrade: the old hash still verifies.
            _log.exception("password re-hash failed", extra={"account_id": account_id})
