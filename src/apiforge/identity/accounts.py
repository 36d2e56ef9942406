"""Accounts: status, roles and the version counter that makes a change felt everywhere.

Every status change bumps the account's version in the shared state store (Redis when there
are several processes) and publishes it on the change feed. A process whose cached copy of the
account is older than the shared version refuses the account until it has re-read it
(:meth:`AccountService.check`), so a suspension is never outrun by a stale cache.

Locking is an administrator's decision only. Protection against password guessing is a
back-off (slower answers, temporary per-address and per-username throttles), never an account
lock: a lock that failed logins can trigger is a tool for an attacker to shut a victim out.

Exceptions::

    AccountRefused         the account may not act (or the actor may not make a change)
"""

from __future__ import annotations

import asyncio
import builtins
import secrets as _random
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Final, Literal, get_args

from apiforge.errors import ApiForgeError
from apiforge.identity.totp import check_totp_secret

if TYPE_CHECKING:
    from apiforge.stores.protocols import AccountStore, StateStore

__all__ = [
    "ACCOUNT_STATUSES",
    "ACCOUNT_TOPIC",
    "ADMIN_ROLE",
    "Account",
    "AccountRefused",
    "AccountService",
    "AccountStatus",
]

AccountStatus = Literal["active", "suspended", "locked", "deleted"]
ACCOUNT_STATUSES: Final[frozenset[str]] = frozenset(get_args(AccountStatus))
ACCOUNT_TOPIC: Final = "account"
"""Change-feed topic under which account ids are published when an account changes."""
ADMIN_ROLE: Final = "admin"


class AccountRefused(ApiForgeError):
    """An account may not act, or an actor may not make the change it asked for.

    Args:
        reason: for the internal log: ``suspended``, ``locked``, ``deleted``, ``unknown``,
            ``stale`` (the cached copy is older than the shared version) or ``not_admin``.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__("account refused")


@dataclass(frozen=True, slots=True)
class Account:
    """One account.

    Attributes:
        account_id: stable id.
        username: unique login name.
        roles: role names, read by the authorization layer.
        status: only ``active`` accounts may act.
        version: bumped (in the shared state store) on every status change.
        password_hash: an argon2 hash when the account logs in with a password; not in ``repr``.
        totp_secret: the base32 TOTP shared secret when the account has a second factor; not in
            ``repr``. While it is set, a password grant needs a current code too.
    """

    account_id: str
    username: str
    roles: frozenset[str]
    status: AccountStatus = "active"
    version: int = 0
    password_hash: str | None = field(default=None, repr=False)
    totp_secret: str | None = field(default=None, repr=False)

    @property
    def totp_required(self) -> bool:
        """Whether a password grant for this account must carry a TOTP code."""
        return self.totp_secret is not None


class AccountService:
    """Accounts, cached in process, with status changes propagated through the state store.

    Args:
        store: the record store (SQLite or PostgreSQL); read at start-up and on change only.
        state: the shared state store holding version counters and the change feed.
    """

    topic: Final = ACCOUNT_TOPIC

    def __init__(self, store: AccountStore, state: StateStore) -> None:
        self._store = store
        self._state = state
        self._cache: dict[str, Account] = {}
        self._shared: dict[str, int] = {}
        self._by_username: dict[str, str] = {}

    # -- the request path: no I/O ------------------------------------------------------------

    def get(self, account_id: str) -> Account | None:
        """The cached account, or ``None`` when this process does not know it."""
        return self._cache.get(account_id)

    def find(self, username: str) -> Account | None:
        """The cached account named ``username``, or ``None``."""
        account_id = self._by_username.get(username)
        return None if account_id is None else self._cache.get(account_id)

    def _remember(self, account: Account) -> None:
        previous = self._cache.get(account.account_id)
        if previous is not None and previous.username != account.username:
            self._by_username.pop(previous.username, None)
        self._cache[account.account_id] = account
        self._by_username[account.username] = account.account_id

    def _forget(self, account_id: str) -> None:
        previous = self._cache.pop(account_id, None)
        if previous is not None and self._by_username.get(previous.username) == account_id:
            del self._by_username[previous.username]

    def check(self, account: Account) -> None:
        """Refuse an account that may not act.

        Raises:
            AccountRefused: the status is not ``active``, or the copy given is older than the
                shared version this process has seen (the account changed elsewhere and the
                new record has not arrived yet: refuse rather than act on stale rights).
        """
        if account.status != "active":
            raise AccountRefused(account.status)
        if account.version < self._shared.get(account.account_id, 0):
            raise AccountRefused("stale")

    # -- start-up and refresh ----------------------------------------------------------------

    async def load(self) -> int:
        """Fill the cache and the shared versions; returns the number of accounts loaded."""
        accounts = await asyncio.to_thread(self._store.list_accounts)
        versions = await self._state.get_versions([a.account_id for a in accounts])
        self._cache = {a.account_id: a for a in accounts}
        self._by_username = {a.username: a.account_id for a in accounts}
        self._shared = versions
        return len(accounts)

    async def refresh(self, ids: Iterable[str]) -> None:
        """Re-read ``ids``: shared versions first, then the records (in a worker thread)."""
        wanted = builtins.list(set(ids))
        versions = await self._state.get_versions(wanted)
        self._shared.update(versions)
        records = await asyncio.to_thread(lambda: {i: self._store.get_account(i) for i in wanted})
        for account_id, account in records.items():
            if account is None:
                self._forget(account_id)
            else:
                self._remember(account)

    # -- management --------------------------------------------------------------------------

    async def create(
        self,
        username: str,
        roles: Iterable[str] = (),
        password_hash: str | None = None,
    ) -> Account:
        """Create an active account with a random id."""
        account = Account(
            account_id="acc_" + _random.token_hex(8),
            username=username,
            roles=frozenset(roles),
            password_hash=password_hash,
        )
        self._store.add_account(account)
        self._remember(account)
        await self._state.publish_change(self.topic, account.account_id)
        return account

    async def set_status(self, account_id: str, status: AccountStatus, actor: Account) -> Account:
        """Change an account's status and make every process see it.

        Args:
            account_id: the account to change.
            status: the new status.
            actor: who asks. Setting ``locked`` requires an active actor with the ``admin``
                role; whether the actor may make other changes is decided by the authorization
                layer before this is called.

        Returns:
            The updated account.

        Raises:
            ValueError: unknown status.
            LookupError: no such account.
            AccountRefused: ``not_admin`` when a non-administrator tries to lock an account.
        """
        if status not in ACCOUNT_STATUSES:
            raise ValueError("unknown account status")
        if status == "locked":
            self.check(actor)
            if ADMIN_ROLE not in actor.roles:
                raise AccountRefused("not_admin")
        return await self._change(account_id, status=status)

    async def set_password(self, account_id: str, password_hash: str) -> Account:
        """Replace the account's password hash and make every process see it.

        The version is bumped, so copies cached elsewhere (which still hold the old hash) are
        refused as stale until they are re-read, and tokens and refresh families issued under
        the old version can be told apart (:mod:`apiforge.identity.token_service`).

        Args:
            account_id: the account to change.
            password_hash: the new argon2 hash (hash off the event loop first).

        Raises:
            LookupError: no such account.
        """
        return await self._change(account_id, password_hash=password_hash)

    async def set_totp(self, account_id: str, secret: str | None) -> Account:
        """Set (or, with ``None``, remove) the account's TOTP secret; bumps the version.

        Confirm one code from the user's authenticator before calling this: a secret stored
        but never set up in an app locks the user out.

        Raises:
            ValueError: the secret is not base32 or shorter than 128 bits.
            LookupError: no such account.
        """
        if secret is not None:
            check_totp_secret(secret)
        return await self._change(account_id, totp_secret=secret)

    async def upgrade_password_hash(self, account_id: str, old: str, new: str) -> bool:
        """Replace ``old`` by ``new``, a re-hash of the same password (stronger parameters).

        Compare-and-set in the store: a password changed meanwhile is never overwritten by the
        re-hash of the old one. The version is not bumped (the password is the same, so
        nothing issued under it becomes suspect); the change is announced for caches.

        Returns:
            Whether the hash was replaced.
        """
        if not self._store.replace_password_hash(account_id, old, new):
            return False
        current = self._cache.get(account_id)
        if current is not None and current.password_hash == old:
            self._remember(replace(current, password_hash=new))
        await self._state.publish_change(self.topic, account_id)
        return True

    async def _change(
        self,
        account_id: str,
        *,
        status: AccountStatus | None = None,
        password_hash: str | None = None,
        totp_secret: str | Literal[False] | None = False,
    ) -> Account:
        current = self._store.get_account(account_id)
        if current is None:
            raise LookupError("no such account")
        # Bump first: from this moment every process holding the old copy refuses it as stale,
        # even before the new record is written and announced (fail closed in the gap).
        version = await self._state.bump_version(account_id)
        updated = replace(current, version=max(version, current.version + 1))
        if status is not None:
            updated = replace(updated, status=status)
        if password_hash is not None:
            updated = replace(updated, password_hash=password_hash)
        if totp_secret is not False:
            updated = replace(updated, totp_secret=totp_secret)
        self._store.update_account(updated)
        self._remember(updated)
        self._shared[account_id] = max(self._shared.get(account_id, 0), updated.version)
        await self._state.publish_change(self.topic, account_id)
        return updated
