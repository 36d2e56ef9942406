"""In-process stores: for tests and for a single-process server only.

State kept here is invisible to other processes, so a revocation made in one worker would not
reach another; :func:`apiforge.stores.open_identity_stores` refuses ``memory://`` when the
server runs more than one worker.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta

from apiforge.errors import StoreError
from apiforge.identity.accounts import Account
from apiforge.identity.api_keys import ApiKeyRecord, Application
from apiforge.identity.refresh import FamilyEnd, RefreshFamily, Rotation

__all__ = ["MemoryRecordStore", "MemoryRefreshStore", "MemoryStateStore"]


class MemoryRecordStore:
    """Applications, key records and accounts in dicts; satisfies all three record protocols."""

    def __init__(self) -> None:
        self._applications: dict[str, Application] = {}
        self._keys: dict[str, ApiKeyRecord] = {}
        self._accounts: dict[str, Account] = {}

    # applications
    def add_application(self, application: Application) -> None:
        if application.application_id in self._applications:
            raise StoreError("duplicate application id")
        self._applications[application.application_id] = application

    def get_application(self, application_id: str) -> Application | None:
        return self._applications.get(application_id)

    def list_applications(self) -> list[Application]:
        return list(self._applications.values())

    def update_application(self, application: Application) -> None:
        if application.application_id not in self._applications:
            raise LookupError("no such application")
        self._applications[application.application_id] = application

    # api keys
    def add_key(self, record: ApiKeyRecord) -> None:
        if record.key_id in self._keys:
            raise StoreError("duplicate API key id")
        if record.application_id not in self._applications:
            raise StoreError("unknown application")
        self._keys[record.key_id] = record

    def get_key(self, key_id: str) -> ApiKeyRecord | None:
        return self._keys.get(key_id)

    def list_keys(self) -> list[ApiKeyRecord]:
        return list(self._keys.values())

    def update_key(self, record: ApiKeyRecord) -> None:
        current = self._keys.get(record.key_id)
        if current is None:
            raise LookupError("no such API key")
        self._keys[record.key_id] = replace(
            record, digest=current.digest, last_used_at=current.last_used_at
        )

    def record_last_used(self, used: Mapping[str, datetime]) -> None:
        for key_id, at in used.items():
            current = self._keys.get(key_id)
            if current is not None and (current.last_used_at is None or current.last_used_at < at):
                self._keys[key_id] = replace(current, last_used_at=at)

    def replace_digest(self, key_id: str, old: bytes, new: bytes) -> bool:
        current = self._keys.get(key_id)
        if current is None or current.digest != old:
            return False
        self._keys[key_id] = replace(current, digest=new)
        return True

    # accounts
    def add_account(self, account: Account) -> None:
        if account.account_id in self._accounts:
            raise StoreError("duplicate account id")
        if any(a.username == account.username for a in self._accounts.values()):
            raise StoreError("duplicate username")
        self._accounts[account.account_id] = account

    def get_account(self, account_id: str) -> Account | None:
        return self._accounts.get(account_id)

    def list_accounts(self) -> list[Account]:
        return list(self._accounts.values())

    def update_account(self, account: Account) -> None:
        if account.account_id not in self._accounts:
            raise LookupError("no such account")
        self._accounts[account.account_id] = account

    def replace_password_hash(self, account_id: str, old: str, new: str) -> bool:
        current = self._accounts.get(account_id)
        if current is None or current.password_hash != old:
            return False
        self._accounts[account_id] = replace(current, password_hash=new)
        return True


class MemoryStateStore:
    """Revocations, version counters and a change feed for one process.

    Args:
        clock: monotonic seconds, for revocation expiry; injectable for tests.
        max_changes: how many changes the feed keeps; a reader further behind misses changes,
            which in one process cannot happen (every reader polls the same list).
    """

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, max_changes: int = 10_000
    ) -> None:
        self._clock = clock
        self._versions: dict[str, int] = {}
        self._revoked: dict[tuple[str, str], float] = {}
        self._changes: deque[tuple[int, str, str]] = deque(maxlen=max_changes)
        self._sequence = 0

    async def bump_version(self, account_id: str) -> int:
        version = self._versions.get(account_id, 0) + 1
        self._versions[account_id] = version
        return version

    async def get_versions(self, account_ids: Iterable[str]) -> dict[str, int]:
        return {account_id: self._versions.get(account_id, 0) for account_id in account_ids}

    async def revoke(self, kind: str, item_id: str, ttl: timedelta) -> None:
        seconds = ttl.total_seconds()
        if seconds <= 0:
            raise ValueError("ttl must be positive")
        now = self._clock()
        # Drop expired marks as we go so the dict stays as small as the live revocations.
        for key in [k for k, until in self._revoked.items() if until <= now]:
            del self._revoked[key]
        self._revoked[(kind, item_id)] = now + seconds

    async def is_revoked(self, kind: str, item_id: str) -> bool:
        until = self._revoked.get((kind, item_id))
        return until is not None and self._clock() < until

    async def publish_change(self, topic: str, item_id: str) -> None:
        self._sequence += 1
        self._changes.append((self._sequence, topic, item_id))

    async def current_cursor(self) -> str:
        return str(self._sequence)

    async def changes_since(self, cursor: str) -> tuple[str, list[tuple[str, str]]]:
        try:
            after = int(cursor)
        except ValueError:
            raise ValueError("not a cursor of this store") from None
        found = [(topic, item_id) for seq, topic, item_id in self._changes if seq > after]
        return str(self._sequence), found

    async def aclose(self) -> None:
        return None


class MemoryRefreshStore:
    """Refresh-token families and TOTP steps in dicts, behind one lock.

    The lock makes every operation atomic between the worker threads of one process; other
    processes see nothing of it (``memory://`` is refused with several workers).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._families: dict[str, RefreshFamily] = {}
        self._tokens: dict[bytes, tuple[str, bool]] = {}  # digest -> (family id, spent)
        self._totp: dict[str, int] = {}

    def add_family(self, family: RefreshFamily, digest: bytes) -> None:
        with self._lock:
            if family.family_id in self._families or digest in self._tokens:
                raise StoreError("duplicate refresh family or token")
            self._families[family.family_id] = family
            self._tokens[digest] = (family.family_id, False)

    def get_family(self, digest: bytes) -> RefreshFamily | None:
        with self._lock:
            found = self._tokens.get(digest)
            return None if found is None else self._families.get(found[0])

    def _revoke(self, family: RefreshFamily, now: datetime, reason: FamilyEnd) -> RefreshFamily:
        if family.revoked_at is not None:
            return family
        revoked = replace(family, revoked_at=now, revoked_reason=reason)
        self._families[family.family_id] = revoked
        return revoked

    def rotate(
        self, digest: bytes, successor: bytes, *, now: datetime, idle_for: timedelta
    ) -> Rotation:
        with self._lock:
            found = self._tokens.get(digest)
            family = None if found is None else self._families.get(found[0])
            if found is None or family is None:
                return Rotation("unknown", None)
            family_id, spent = found
            self._tokens[digest] = (family_id, True)
            if spent:
                return Rotation("reused", self._revoke(family, now, "reuse"))
            if family.revoked_at is not None:
                return Rotation("revoked", family)
            if now >= family.expires_at or now >= family.idle_expires_at:
                return Rotation("expired", self._revoke(family, now, "expired"))
            if successor in self._tokens:
                raise StoreError("duplicate refresh token")
            family = replace(family, idle_expires_at=min(now + idle_for, family.expires_at))
            self._families[family_id] = family
            self._tokens[successor] = (family_id, False)
            return Rotation("rotated", family)

    def revoke_family(self, family_id: str, *, now: datetime, reason: FamilyEnd) -> bool:
        with self._lock:
            family = self._families.get(family_id)
            if family is None or family.revoked_at is not None:
                return False
            self._revoke(family, now, reason)
            return True

    def revoke_account(self, account_id: str, *, now: datetime, reason: FamilyEnd) -> int:
        with self._lock:
            live = [f for f in self._families.values()
                    if f.account_id == account_id and f.revoked_at is None]
            for family in live:
                self._revoke(family, now, reason)
            return len(live)

    def claim_totp_step(self, account_id: str, step: int) -> bool:
        with self._lock:
            if step <= self._totp.get(account_id, -1):
                return False
            self._totp[account_id] = step
            return True

    def purge(self, *, now: datetime) -> int:
        with self._lock:
            gone = {i for i, f in self._families.items()
                    if now >= f.expires_at or now >= f.idle_expires_at}
            for family_id in gone:
                del self._families[family_id]
            for digest in [d for d, (i, _) in self._tokens.items() if i in gone]:
                del self._tokens[digest]
            return len(gone)

    def close(self) -> None:
        return None
