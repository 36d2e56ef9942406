"""Refresh tokens in families: rotation on every use, and reuse detection that ends the family.

A refresh token is ``rt_`` followed by 32 random bytes in base64url (256 bits). The server keeps
only its SHA-256 digest: the token is a random 256-bit value, so a fast hash is enough (nobody
can guess its way back from a digest), and a stolen table holds nothing a client could present.

A *family* starts at a password grant. Each refresh spends the presented token and issues its
successor in the same family, in one transaction, and the spend is a conditional update
(``... WHERE spent IS NULL``) whose row count says who won (RFC 9700 section 4.14.2). So of two
concurrent refreshes with one token, in one process or in two, exactly one gets a successor.
The loser, and anyone presenting a spent token later, has shown that a token was copied: the
legitimate client and the attacker cannot be told apart, so the whole family is revoked, the
attacker's copy and the victim's session together (``authn_token_reuse``).

A family also ends at its absolute lifetime (default 30 days after the password grant), after
an idle period without refresh (default 7 days), when it is revoked (RFC 7009, logout), and when
every family of the account is revoked (password change, suspension).

The store (:class:`~apiforge.stores.protocols.RefreshStore`) does each of these atomically; this
module holds the rules and the token format. The store also keeps the last TOTP step each
account used, for :mod:`apiforge.identity.totp`'s replay protection.

Exceptions::

    ApiForgeError
    └── RefreshTokenRefused    a refresh token was refused; ``reason`` for internal logs only
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final, Literal

from apiforge.errors import ApiForgeError, ConfigurationError
from apiforge.secrets import Secret

if TYPE_CHECKING:
    from apiforge.stores.protocols import RefreshStore

__all__ = [
    "DEFAULT_ABSOLUTE",
    "DEFAULT_IDLE",
    "REFRESH_PREFIX",
    "FamilyEnd",
    "IssuedRefresh",
    "RefreshFamily",
    "RefreshRefusal",
    "RefreshTokenRefused",
    "RefreshTokens",
    "Rotation",
    "RotationOutcome",
    "new_refresh_token",
    "refresh_digest",
]

REFRESH_PREFIX: Final = "rt_"
DEFAULT_IDLE: Final = 7 * 24 * 3600
DEFAULT_ABSOLUTE: Final = 30 * 24 * 3600
_TOKEN_RE: Final = re.compile(r"rt_[A-Za-z0-9_-]{43}", re.ASCII)

RotationOutcome = Literal["rotated", "unknown", "reused", "revoked", "expired"]
RefreshRefusal = Literal["malformed", "unknown", "reused", "revoked", "expired"]
FamilyEnd = Literal["reuse", "expired", "logout", "account", "account_changed"]
"""Why a family was revoked: a spent token came back; its lifetime or idle time ran out; the
client revoked it (RFC 7009); every family of the account was revoked; the account changed
(status, password, second factor) after the family began."""


class RefreshTokenRefused(ApiForgeError):
    """A refresh token was refused. The one exception every refusal raises.

    Args:
        reason: for the internal log only: ``malformed``, ``unknown``, ``reused`` (a spent
            token came back: the family is now revoked), ``revoked`` or ``expired``.
        family: the family the token belonged to, when it is known (its account and id, for
            the security event; never the token).
    """

    def __init__(self, reason: RefreshRefusal, family: RefreshFamily | None = None) -> None:
        self.reason: RefreshRefusal = reason
        self.family = family
        super().__init__("refresh token refused")


@dataclass(frozen=True, slots=True)
class RefreshFamily:
    """The refresh tokens descending from one password grant.

    Attributes:
        family_id: random id; safe to log.
        account_id: whose session it is.
        account_version: the account's version at the password grant. A family whose account
            has changed since (status, password, second factor) is ended at its next refresh.
        client_id: the client it was issued to, if one was named.
        scope: the scopes granted; every access token of the family carries the same.
        created_at: the password grant.
        expires_at: the absolute end, however often it is refreshed.
        idle_expires_at: the end if it is not refreshed before; moved on by each refresh (never
            past ``expires_at``).
        revoked_at: when it was revoked, or ``None``.
        revoked_reason: why (:data:`FamilyEnd`), or ``None``.
    """

    family_id: str
    account_id: str
    account_version: int
    client_id: str | None
    scope: frozenset[str]
    created_at: datetime
    expires_at: datetime
    idle_expires_at: datetime
    revoked_at: datetime | None = None
    revoked_reason: str | None = None

    def ended(self, now: datetime) -> bool:
        """Whether the family can no longer be refreshed at ``now``."""
        return self.revoked_at is not None or now >= self.expires_at or (
            now >= self.idle_expires_at
        )


@dataclass(frozen=True, slots=True)
class Rotation:
    """What a store did with a presented refresh token.

    Attributes:
        outcome: ``rotated`` (spent, successor stored), ``unknown`` (no such token),
            ``reused`` (already spent: the family is now revoked), ``revoked`` (the family was
            revoked before) or ``expired`` (past its lifetime or idle time: now revoked).
        family: the family as it is after the operation, or ``None`` when unknown.
    """

    outcome: RotationOutcome
    family: RefreshFamily | None


@dataclass(frozen=True, slots=True)
class IssuedRefresh:
    """A new refresh token and its family.

    Attributes:
        token: the refresh token for the client; shown once, stored only as a digest.
        family: the family it belongs to.
    """

    token: Secret
    family: RefreshFamily


def new_refresh_token() -> tuple[Secret, bytes]:
    """A fresh refresh token and its digest (the only form that is stored)."""
    token = REFRESH_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(
        "ascii"
    ).rstrip("=")
    return Secret(token), hashlib.sha256(token.encode("ascii")).digest()


def refresh_digest(token: str | Secret) -> bytes | None:
    """The SHA-256 digest of a well-formed refresh token; ``None`` for anything else.

    The format is checked first (prefix, alphabet, length), so arbitrary input never reaches
    the store.
    """
    text = token.reveal() if isinstance(token, Secret) else token
    if not isinstance(text, str) or _TOKEN_RE.fullmatch(text) is None:
        return None
    return hashlib.sha256(text.encode("ascii")).digest()


def _scope(scope: Iterable[str]) -> frozenset[str]:
    return frozenset(scope)


class RefreshTokens:
    """Starts, rotates and revokes refresh-token families in a :class:`RefreshStore`.

    The store blocks (SQL); every call runs it in a worker thread.

    Args:
        store: where families live; single use is atomic there, across processes.
        idle: seconds a family survives without a refresh (default 7 days).
        absolute: seconds a family lives at most, refreshed or not (default 30 days).
        clock: seconds since the epoch; injectable for tests.

    Raises:
        ConfigurationError: a lifetime is not positive, or ``idle`` exceeds ``absolute``.
    """

    def __init__(
        self,
        store: RefreshStore,
        *,
        idle: float = DEFAULT_IDLE,
        absolute: float = DEFAULT_ABSOLUTE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if idle <= 0 or absolute <= 0:
            raise ConfigurationError("refresh tokens: idle and absolute must be positive seconds")
        if idle > absolute:
            raise ConfigurationError(
                "refresh tokens: the idle timeout cannot be longer than the absolute lifetime"
            )
        self.store = store
        self._idle = timedelta(seconds=idle)
        self._absolute = timedelta(seconds=absolute)
        self._clock = clock

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    async def start(
        self,
        account_id: str,
        account_version: int,
        *,
        client_id: str | None = None,
        scope: Iterable[str] = (),
    ) -> IssuedRefresh:
        """Begin a family (at a password grant) and return its first token."""
        now = self._now()
        expires = now + self._absolute
        family = RefreshFamily(
            family_id="rtf_" + secrets.token_hex(12),
            account_id=account_id,
            account_version=account_version,
            client_id=client_id,
            scope=_scope(scope),
            created_at=now,
            expires_at=expires,
            idle_expires_at=min(now + self._idle, expires),
        )
        token, digest = new_refresh_token()
        await asyncio.to_thread(self.store.add_family, family, digest)
        return IssuedRefresh(token, family)

    async def inspect(self, token: str | Secret) -> RefreshFamily:
        """The live family of ``token``, without spending it.

        Lets the caller check the account before the token is spent, so a refusal that may
        pass (a cache a moment behind) does not cost the client its session.

        Raises:
            RefreshTokenRefused: ``malformed``, ``unknown``, ``revoked`` or ``expired``.
                A spent token is not refused here: :meth:`rotate` detects the reuse.
        """
        digest = refresh_digest(token)
        if digest is None:
            raise RefreshTokenRefused("malformed")
        family = await asyncio.to_thread(self.store.get_family, digest)
        if family is None:
            raise RefreshTokenRefused("unknown")
        if family.revoked_at is not None:
            raise RefreshTokenRefused("revoked", family)
        if family.ended(self._now()):
            raise RefreshTokenRefused("expired", family)
        return family

    async def rotate(self, token: str | Secret) -> IssuedRefresh:
        """Spend ``token`` and return its successor in the same family.

        Raises:
            RefreshTokenRefused: ``malformed``; ``unknown``; ``reused`` (the token was spent
                already, or another request spent it a moment ago: the family is now revoked,
                log ``authn_token_reuse``); ``revoked``; ``expired`` (now revoked).
        """
        digest = refresh_digest(token)
        if digest is None:
            raise RefreshTokenRefused("malformed")
        now = self._now()
        successor, successor_digest = new_refresh_token()
        rotation = await asyncio.to_thread(
            self.store.rotate, digest, successor_digest, now=now, idle_for=self._idle
        )
        if rotation.outcome != "rotated" or rotation.family is None:
            reason: RefreshRefusal = (
                "unknown" if rotation.outcome == "rotated" else rotation.outcome
            )
            raise RefreshTokenRefused(reason, rotation.family)
        return IssuedRefresh(successor, rotation.family)

    async def revoke_family(self, family_id: str, reason: FamilyEnd = "logout") -> bool:
        """End one family; whether it was live."""
        return await asyncio.to_thread(
            self.store.revoke_family, family_id, now=self._now(), reason=reason
        )

    async def revoke_account(self, account_id: str, reason: FamilyEnd = "account") -> int:
        """End every live family of an account; how many there were."""
        return await asyncio.to_thread(
            self.store.revoke_account, account_id, now=self._now(), reason=reason
        )

    async def revoke_token(self, token: str | Secret) -> RefreshFamily | None:
        """RFC 7009: revoking a refresh token ends its whole family.

        Returns:
            The family, if the token was known (revoked now or before); ``None`` for anything
            else, which is not an error (RFC 7009 section 2.2).
        """
        digest = refresh_digest(token)
        if digest is None:
            return None
        family = await asyncio.to_thread(self.store.get_family, digest)
        if family is None:
            return None
        if family.revoked_at is None:
            await self.revoke_family(family.family_id, "logout")
            family = replace(family, revoked_at=self._now(), revoked_reason="logout")
        return family

    async def claim_totp_step(self, account_id: str, step: int) -> bool:
        """Record ``step`` as the account's last TOTP step; ``False`` if it is not newer."""
        return await asyncio.to_thread(self.store.claim_totp_step, account_id, step)

    async def purge(self) -> int:
        """Delete families past their absolute or idle end; how many were deleted.

        Revoked families are kept until then, so a reused token is still recognized (and
        logged as reuse) rather than looking unknown.
        """
        return await asyncio.to_thread(self.store.purge, now=self._now())
