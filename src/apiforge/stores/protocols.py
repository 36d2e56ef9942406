"""The small interfaces the identity domain needs from storage.

Two kinds of store, chosen separately by URL (see :func:`apiforge.stores.open_identity_stores`):

- **record stores** (:class:`ApplicationStore`, :class:`ApiKeyStore`, :class:`AccountStore`):
  durable rows, SQLite or PostgreSQL. Blocking calls; used at start-up, by management commands
  and by background refreshes in a worker thread. The request path never calls them.
- **the state store** (:class:`StateStore`): small shared state that must be the same for every
  process: revocations with a time to live, per-account version counters and a change feed.
  Memory (one process) or Redis. Async.

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

__all__ = ["AccountStore", "ApiKeyStore", "ApplicationStore", "StateStore"]


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
