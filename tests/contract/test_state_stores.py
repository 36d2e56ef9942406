"""State-store contract (memory, Redis), and propagation between two service instances."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest

from apiforge.identity import (
    Account,
    AccountRefused,
    AccountService,
    ApiKeyService,
    Application,
    CacheRefresher,
    InvalidApiKey,
    KeyHasher,
)
from apiforge.secrets import Secret
from apiforge.stores.memory import MemoryRecordStore, MemoryStateStore
from apiforge.stores.redis_store import RedisStateStore
from apiforge.stores.sql import SqlRecordStore

StateBackend = MemoryStateStore | RedisStateStore
RecordStore = MemoryRecordStore | SqlRecordStore
PEPPER = Secret("p" * 40)


async def test_versions_are_monotonic_and_shared(
    state_backend: Callable[[], StateBackend],
) -> None:
    first, second = state_backend(), state_backend()
    assert await first.get_versions(["a", "b"]) == {"a": 0, "b": 0}
    assert [await first.bump_version("a") for _ in range(3)] == [1, 2, 3]
    assert await second.bump_version("a") == 4
    assert await second.get_versions(["a", "b"]) == {"a": 4, "b": 0}
    assert await first.get_versions([]) == {}


async def test_concurrent_bumps_are_not_lost(state: StateBackend) -> None:
    results = await asyncio.gather(*(state.bump_version("acc") for _ in range(50)))
    assert sorted(results) == list(range(1, 51))


async def test_revocation_is_visible_and_scoped(state_backend: Callable[[], StateBackend]) -> None:
    first, second = state_backend(), state_backend()
    await first.revoke("token", "jti-1", timedelta(minutes=5))
    assert await second.is_revoked("token", "jti-1")
    assert not await second.is_revoked("token", "jti-2")
    assert not await second.is_revoked("session", "jti-1")
    with pytest.raises(ValueError):
        await first.revoke("token", "jti-3", timedelta(0))


async def test_revocation_expires_by_itself(state: StateBackend) -> None:
    await state.revoke("token", "short", timedelta(milliseconds=150))
    await state.revoke("token", "long", timedelta(minutes=5))
    assert await state.is_revoked("token", "short")
    await asyncio.sleep(0.4)
    assert not await state.is_revoked("token", "short")
    assert await state.is_revoked("token", "long")


async def test_redis_revocation_carries_its_ttl(state: StateBackend) -> None:
    if not isinstance(state, RedisStateStore):
        assert isinstance(state, MemoryStateStore)
        return  # memory expiry is covered by test_revocation_expires_by_itself
    await state.revoke("token", "jti", timedelta(seconds=30))
    ttl = await state._redis.pttl(f"{state.prefix}revoked:token:jti")
    assert 0 < ttl <= 30_000


async def test_change_feed_reaches_a_second_handle(
    state_backend: Callable[[], StateBackend],
) -> None:
    first, second = state_backend(), state_backend()
    await first.publish_change("api_key", "before")
    cursor = await second.current_cursor()
    await first.publish_change("api_key", "k1")
    await first.publish_change("account", "a1")
    cursor, changes = await second.changes_since(cursor)
    assert changes == [("api_key", "k1"), ("account", "a1")]
    assert await second.changes_since(cursor) == (cursor, [])
    await first.publish_change("api_key", "k2")
    _, changes = await second.changes_since(cursor)
    assert changes == [("api_key", "k2")]


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 1.0) -> float:
    """Seconds until ``check`` holds; fails the test if it does not within ``within``."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > within:
            pytest.fail(f"not propagated within {within} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def test_key_changes_reach_another_instance_within_a_second(
    record_backend: Callable[[], RecordStore], state_backend: Callable[[], StateBackend]
) -> None:
    records_a, records_b = record_backend(), record_backend()
    records_a.add_application(Application("app", "App", None, created_at=_now()))
    state_a, state_b = state_backend(), state_backend()
    service_a = ApiKeyService(records_a, state_a, KeyHasher([PEPPER]))
    service_b = ApiKeyService(records_b, state_b, KeyHasher([PEPPER]))
    refresher_b = CacheRefresher(state_b, [service_b])
    await refresher_b.start()
    try:
        plaintext, record = await service_a.create("app", {"read"}, "live")

        async def accepted() -> bool:
            try:
                return service_b.verify(plaintext).key_id == record.key_id
            except InvalidApiKey as exc:
                assert exc.reason == "unknown_id"
                return False

        await eventually(accepted)
        await service_a.revoke(record.key_id)

        async def refused() -> bool:
            try:
                service_b.verify(plaintext)
            except InvalidApiKey as exc:
                return exc.reason == "revoked"
            return False

        await eventually(refused)
    finally:
        await refresher_b.stop()


async def test_account_changes_reach_another_instance_within_a_second(
    record_backend: Callable[[], RecordStore], state_backend: Callable[[], StateBackend]
) -> None:
    state_a, state_b = state_backend(), state_backend()
    service_a = AccountService(record_backend(), state_a)
    service_b = AccountService(record_backend(), state_b)
    admin = await service_a.create("root", {"admin"})
    user = await service_a.create("mallory", {"user"})
    refresher_b = CacheRefresher(state_b, [service_b])
    await refresher_b.start()
    try:
        held = service_b.get(user.account_id)
        assert held is not None
        service_b.check(held)
        await service_a.set_status(user.account_id, "locked", actor=admin)

        async def refused() -> bool:
            current = service_b.get(user.account_id)
            assert current is not None
            try:
                service_b.check(current)
            except AccountRefused as exc:
                return exc.reason == "locked"
            return False

        await eventually(refused)
        with pytest.raises(AccountRefused) as caught:
            service_b.check(held)  # a copy taken before the change
        assert caught.value.reason == "stale"
    finally:
        await refresher_b.stop()


def _now() -> datetime:
    return datetime.now(UTC)


async def test_refresher_applies_each_change_once(state: StateBackend) -> None:
    records = MemoryRecordStore()
    service = AccountService(records, state)
    refresher = CacheRefresher(state, [service])  # polled by hand: no background task
    await state.publish_change("account", "old")
    assert await refresher.poll_once() == 0  # takes a cursor after the existing changes
    records.add_account(Account("acc_x", "x", frozenset()))
    await state.publish_change("account", "acc_x")
    assert service.get("acc_x") is None
    assert await refresher.poll_once() == 1
    assert service.get("acc_x") is not None
    assert await refresher.poll_once() == 0


async def test_refresher_stops_promptly(state: StateBackend) -> None:
    refresher = CacheRefresher(state, [AccountService(MemoryRecordStore(), state)])
    await refresher.start()
    await asyncio.sleep(0.3)
    started = time.monotonic()
    await refresher.stop()
    assert time.monotonic() - started < 1.0
    assert refresher.seconds_since_sync < 1.0
