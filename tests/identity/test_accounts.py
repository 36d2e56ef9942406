"""Accounts: status changes, admin-only locking, version staleness (memory stores)."""

from __future__ import annotations

import pytest

from apiforge.identity import Account, AccountRefused, AccountService
from apiforge.stores.memory import MemoryRecordStore, MemoryStateStore


@pytest.fixture
def state() -> MemoryStateStore:
    return MemoryStateStore()


@pytest.fixture
def records() -> MemoryRecordStore:
    return MemoryRecordStore()


@pytest.fixture
def accounts(records: MemoryRecordStore, state: MemoryStateStore) -> AccountService:
    return AccountService(records, state)


async def test_created_account_is_cached_and_active(accounts: AccountService) -> None:
    alice = await accounts.create("alice", {"user"}, password_hash="$argon2id$v=19$secret")
    assert accounts.get(alice.account_id) == alice
    assert accounts.get("acc_missing") is None
    accounts.check(alice)
    assert "argon2" not in repr(alice)


@pytest.mark.parametrize("status", ["suspended", "deleted"])
async def test_inactive_accounts_are_refused(accounts: AccountService, status: str) -> None:
    admin = await accounts.create("root", {"admin"})
    bob = await accounts.create("bob", {"user"})
    changed = await accounts.set_status(bob.account_id, status, actor=admin)  # type: ignore[arg-type]
    assert changed.version == 1
    with pytest.raises(AccountRefused) as caught:
        accounts.check(changed)
    assert caught.value.reason == status


async def test_only_an_active_admin_can_lock(accounts: AccountService) -> None:
    admin = await accounts.create("root", {"admin"})
    user = await accounts.create("eve", {"user"})
    victim = await accounts.create("victim", {"user"})
    with pytest.raises(AccountRefused) as caught:
        await accounts.set_status(victim.account_id, "locked", actor=user)
    assert caught.value.reason == "not_admin"
    suspended_admin = await accounts.set_status(admin.account_id, "suspended", actor=admin)
    with pytest.raises(AccountRefused) as caught:
        await accounts.set_status(victim.account_id, "locked", actor=suspended_admin)
    assert caught.value.reason == "suspended"
    other_admin = await accounts.create("ops", {"admin"})
    locked = await accounts.set_status(victim.account_id, "locked", actor=other_admin)
    assert locked.status == "locked"


async def test_every_change_bumps_the_shared_version(
    accounts: AccountService, state: MemoryStateStore
) -> None:
    admin = await accounts.create("root", {"admin"})
    bob = await accounts.create("bob", {"user"})
    await accounts.set_status(bob.account_id, "suspended", actor=admin)
    again = await accounts.set_status(bob.account_id, "active", actor=admin)
    assert again.version == 2
    assert await state.get_versions([bob.account_id]) == {bob.account_id: 2}
    accounts.check(again)
    with pytest.raises(AccountRefused) as caught:
        accounts.check(bob)  # the copy from before both changes
    assert caught.value.reason == "stale"


async def test_a_version_bumped_elsewhere_refuses_the_cached_copy(
    records: MemoryRecordStore, state: MemoryStateStore
) -> None:
    here = AccountService(records, state)
    records.add_account(Account("acc_1", "carol", frozenset({"user"})))
    await here.load()
    cached = here.get("acc_1")
    assert cached is not None
    here.check(cached)
    await state.bump_version("acc_1")  # another process started a change
    await here.refresh(["acc_1"])  # ...whose new record is not written yet
    with pytest.raises(AccountRefused) as caught:
        here.check(cached)
    assert caught.value.reason == "stale"


async def test_bad_requests(accounts: AccountService) -> None:
    admin = await accounts.create("root", {"admin"})
    with pytest.raises(ValueError):
        await accounts.set_status(admin.account_id, "frozen", actor=admin)  # type: ignore[arg-type]
    with pytest.raises(LookupError):
        await accounts.set_status("acc_none", "suspended", actor=admin)


async def test_refresh_forgets_deleted_rows(
    records: MemoryRecordStore, state: MemoryStateStore
) -> None:
    service = AccountService(records, state)
    await service.create("dave")
    assert await service.load() == 1
    await service.refresh(["acc_gone"])
    assert service.get("acc_gone") is None
