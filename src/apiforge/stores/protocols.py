"""The small interfaces the identity domain needs from storage.

Two kinds of store, chosen separately by URL (see :func:`apiforge.stores.open_identity_stores`):

- **record stores** (:class:`ApplicationStore`, :class:`ApiKeyStore`, :class:`AccountStore`):
  durable rows, SQLite or PostgreSQL. Blocking calls; used at start-up, by management commands
  and by background refreshes in a worker thread. The request path never calls them.
- **the state store** (:class:`StateStore`): small shared state that must be the same for every
  process: revocations with a time to live, per-account version counters and a change feed.
  Memory (one process) or Redis. Async.
- **the refresh store** (:class:`RefreshStore`): refresh-token families and the last TOTP step
  of each account. SQLite, PostgreSQL or memory, opened by
  :func:`apiforge.stores.open_refresh_store`. Blocking, called from a worker thread; its
  single-use operations are atomic across processes.

Every method raises :class:`~apiforge.errors.StoreError` when the backend fails. Every backend
passes the same contract suite (``tests/contract``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from apiforge.identity.accounts import Account
    from apiforge.identity.api_keys import ApiKeyRecord, Application
    from apiforge.identity.refresh import FamilyEnd, RefreshFamily, Rotation

__all__ = ["AccountStore", "ApiKeyStore", "ApplicationStore", "RefreshStore", "StateStore"]


class ApplicationStore(Protocol):
    """Applications, the owners of API keys."""

    def add_application(self, application: Application) -> None:
        """Insert; a duplicate id raises ``StoreError``."""

    def get_application(self, application_id: str) -> Application | None:
        """The application, or ``None``."""

    def list_applications(self) -> list[Application]:
        """Every application."""

    def update_application(self, application: Application) -> None:
        """Replace the stored row; a missing row raises ``LookupError``."""


class ApiKeyStore(Protocol):
    """API key records (digests only, never keys)."""

    def add_key(self, record: ApiKeyRecord) -> None:
        """Insert; a duplicate id or an unknown application raises ``StoreError``."""

    def get_key(self, key_id: str) -> ApiKeyRecord | None:
        """The record, or ``None``."""

    def list_keys(self) -> list[ApiKeyRecord]:
        """Every record."""

    def update_key(self, record: ApiKeyRecord) -> None:
        """Replace status, expiry and rotation fields; a missing row raises ``LookupError``.

        ``last_used_at`` and ``digest`` are left alone: they have their own narrow writes, so a
        background flush never overwrites a revocation made meanwhile (and the reverse).
        """

    def record_last_used(self, used: Mapping[str, datetime]) -> None:
        """Set ``last_used_at`` for many keys at once, never moving it backwards."""

    def replace_digest(self, key_id: str, old: bytes, new: bytes) -> bool:
        """Compare-and-set the digest (pepper upgrade); whether it was replaced."""


class AccountStore(Protocol):
    """Account records."""

    def add_account(self, account: Account) -> None:
        """Insert; a duplicate id or username raises ``StoreError``."""

    def get_account(self, account_id: str) -> Account | None:
        """The account, or ``None``."""

    def list_accounts(self) -> list[Account]:
        """Every account."""

    def update_account(self, account: Account) -> None:
        """Replace the stored row; a missing row raises ``LookupError``."""

    def replace_password_hash(self, account_id: str, old: str, new: str) -> bool:
        """Compare-and-set the password hash (re-hash on login); whether it was replaced."""


class StateStore(Protocol):
    """Shared state: revocations, version counters and the change feed."""

    async def bump_version(self, account_id: str) -> int:
        """Atomically increment and return the account's version (the first bump gives 1)."""

    async def get_versions(self, account_ids: Iterable[str]) -> dict[str, int]:
        """Current versions; an account never bumped has version 0."""

    async def revoke(self, kind: str, item_id: str, ttl: timedelta) -> None:
        """Mark ``(kind, item_id)`` revoked for ``ttl`` (e.g. a token until its expiry).

        The mark disappears by itself afterwards, so the set of revocations stays bounded.
        """

    async def is_revoked(self, kind: str, item_id: str) -> bool:
        """Whether a live revocation mark exists."""

    async def publish_change(self, topic: str, item_id: str) -> None:
        """Announce that ``item_id`` under ``topic`` changed and caches must re-read it."""

    async def current_cursor(self) -> str:
        """A cursor positioned after the latest change (take it before loading caches)."""

    async def changes_since(self, cursor: str) -> tuple[str, list[tuple[str, str]]]:
        """Changes after ``cursor``, oldest first, and the cursor to pass next time."""

    async def aclose(self) -> None:
        """Release connections."""


class RefreshStore(Protocol):
    """Refresh-token families (digests only, never tokens) and TOTP replay marks.

    Times are timezone-aware UTC datetimes chosen by the caller (its clock), never the
    database's.
    """

    def add_family(self, family: RefreshFamily, digest: bytes) -> None:
        """Insert a family and its first token's digest, together."""

    def get_family(self, digest: bytes) -> RefreshFamily | None:
        """The family of the token with this digest (spent or not), or ``None``."""

    def rotate(
        self, digest: bytes, successor: bytes, *, now: datetime, idle_for: timedelta
    ) -> Rotation:
        """Spend the token ``digest`` and store ``successor`` in its family, atomically.

        In one transaction: mark the token spent only if it is not spent yet, and tell from
        the row count whether this call did it. If it did not (reuse, or a concurrent call
        won), revoke the family (``reuse``). If the family is revoked already, or past
        ``expires_at`` or ``idle_expires_at`` (then revoke it, ``expired``), store nothing.
        Otherwise insert ``successor`` and move ``idle_expires_at`` to ``now + idle_for``
        (never past ``expires_at``).
        """

    def revoke_family(self, family_id: str, *, now: datetime, reason: FamilyEnd) -> bool:
        """Revoke one family unless it is revoked already; whether this call revoked it."""

    def revoke_account(self, account_id: str, *, now: datetime, reason: FamilyEnd) -> int:
        """Revoke every unrevoked family of the account; how many."""

    def claim_totp_step(self, account_id: str, step: int) -> bool:
        """Atomically record ``step`` if it is newer than the account's last; whether it was.

        Of two concurrent claims of one step, exactly one returns ``True``.
        """

    def purge(self, *, now: datetime) -> int:
        """Delete families (and their tokens) past their absolute or idle end; how many."""

    def close(self) -> None:
        """Release connections."""
