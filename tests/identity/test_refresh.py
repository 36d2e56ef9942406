"""Refresh-token families on the memory store: rotation, reuse, lifetimes, revocation."""

from __future__ import annotations

import asyncio
import hashlib
import re

import pytest

from apiforge.errors import ConfigurationError
from apiforge.identity.refresh import (
    RefreshTokenRefused,
    RefreshTokens,
    new_refresh_token,
    refresh_digest,
)
from apiforge.secrets import Secret
from apiforge.stores.memory import MemoryRefreshStore

DAY = 24 * 3600.0
T0 = 1_750_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store() -> MemoryRefreshStore:
    return MemoryRefreshStore()


@pytest.fixture
def families(store: MemoryRefreshStore, clock: Clock) -> RefreshTokens:
    return RefreshTokens(store, idle=7 * DAY, absolute=30 * DAY, clock=clock)


async def refused(families: RefreshTokens, token: Secret) -> str:
    with pytest.raises(RefreshTokenRefused) as caught:
        await families.rotate(token)
    return caught.value.reason


def test_token_format_and_digest() -> None:
    token, digest = new_refresh_token()
    assert re.fullmatch(r"rt_[A-Za-z0-9_-]{43}", token.reveal())
    assert "rt_" not in repr(token)
    assert digest == hashlib.sha256(token.reveal().encode()).digest()
    assert refresh_digest(token) == digest == refresh_digest(token.reveal())
    for bad in ("", "rt_", token.reveal() + "A", "xx" + token.reveal()[2:], "rt_" + "é" * 43):
        assert refresh_digest(bad) is None


async def test_the_store_keeps_digests_only(
    families: RefreshTokens, store: MemoryRefreshStore
) -> None:
    issued = await families.start("acc_1", 0, client_id="web", scope={"orders:read"})
    assert issued.token.reveal() not in repr(store.__dict__)
    assert list(store._tokens) == [refresh_digest(issued.token)]
    family = issued.family
    assert (family.account_id, family.client_id, family.scope) == (
        "acc_1", "web", frozenset({"orders:read"}))
    assert family.expires_at.timestamp() == T0 + 30 * DAY
    assert family.idle_expires_at.timestamp() == T0 + 7 * DAY


async def test_rotation_and_reuse_revokes_the_family(
    families: RefreshTokens, clock: Clock
) -> None:
    first = await families.start("acc_1", 3)
    clock.now += 60
    second = await families.rotate(first.token)
    assert second.family.family_id == first.family.family_id
    assert second.token != first.token
    assert second.family.idle_expires_at.timestamp() == clock.now + 7 * DAY
    third = await families.rotate(second.token)

    # The first token comes back (stolen copy, or a client that kept it): the family dies,
    # including the legitimate holder's newest token.
    with pytest.raises(RefreshTokenRefused) as caught:
        await families.rotate(first.token)
    assert caught.value.reason == "reused"
    assert caught.value.family is not None
    assert caught.value.family.revoked_reason == "reuse"
    assert caught.value.family.account_id == "acc_1"
    assert await refused(families, third.token) == "revoked"
    with pytest.raises(RefreshTokenRefused) as inspected:
        await families.inspect(third.token)
    assert inspected.value.reason == "revoked"


async def test_inspect_does_not_spend(families: RefreshTokens) -> None:
    issued = await families.start("acc_1", 0)
    assert (await families.inspect(issued.token)).family_id == issued.family.family_id
    assert (await families.inspect(issued.token)).family_id == issued.family.family_id
    await families.rotate(issued.token)
    for bad, reason in ((Secret("nonsense"), "malformed"), (new_refresh_token()[0], "unknown")):
        with pytest.raises(RefreshTokenRefused) as caught:
            await families.inspect(bad)
        assert caught.value.reason == reason
        assert await refused(families, bad) == reason


async def test_idle_timeout(families: RefreshTokens, clock: Clock) -> None:
    issued = await families.start("acc_1", 0)
    clock.now += 7 * DAY
    with pytest.raises(RefreshTokenRefused) as caught:
        await families.inspect(issued.token)
    assert caught.value.reason == "expired"
    assert await refused(families, issued.token) == "expired"
    assert await refused(families, issued.token) == "reused"  # spent by the refused attempt


async def test_absolute_lifetime_however_often_refreshed(
    families: RefreshTokens, clock: Clock
) -> None:
    issued = await families.start("acc_1", 0)
    for _ in range(4):  # days 6, 12, 18, 24: each within the idle timeout
        clock.now += 6 * DAY
        issued = await families.rotate(issued.token)
    clock.now += 5 * DAY  # day 29: idle end is capped at the absolute end (day 30)
    issued = await families.rotate(issued.token)
    assert issued.family.idle_expires_at == issued.family.expires_at
    clock.now = T0 + 30 * DAY
    assert await refused(families, issued.token) == "expired"


async def test_revocations(families: RefreshTokens) -> None:
    a1 = await families.start("acc_1", 0)
    a2 = await families.start("acc_1", 0)
    b1 = await families.start("acc_2", 0)

    assert await families.revoke_token(Secret("garbage")) is None
    assert await families.revoke_token(new_refresh_token()[0]) is None
    revoked = await families.revoke_token(a1.token)
    assert revoked is not None and revoked.revoked_reason == "logout"
    assert await refused(families, a1.token) == "revoked"
    assert await families.revoke_family(a1.family.family_id) is False  # already revoked

    assert await families.revoke_account("acc_1") == 1  # a2 only: a1 was revoked already
    assert await refused(families, a2.token) == "revoked"
    assert (await families.rotate(b1.token)).family.account_id == "acc_2"
    assert await families.revoke_family(b1.family.family_id) is True


async def test_purge_removes_ended_families(
    families: RefreshTokens, store: MemoryRefreshStore, clock: Clock
) -> None:
    old = await families.start("acc_1", 0)
    clock.now += 8 * DAY
    young = await families.start("acc_1", 0)
    assert await families.purge() == 1
    assert await refused(families, old.token) == "unknown"
    assert (await families.rotate(young.token)).family.family_id == young.family.family_id
    assert len(store._families) == 1


async def test_concurrent_rotations_have_one_winner(families: RefreshTokens) -> None:
    issued = await families.start("acc_1", 0)
    results = await asyncio.gather(
        *(families.rotate(issued.token) for _ in range(8)), return_exceptions=True
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, RefreshTokenRefused)]
    assert len(winners) == 1 and len(losers) == 7
    assert {e.reason for e in losers} == {"reused"}
    assert await refused(families, winners[0].token) == "revoked"


def test_configuration_is_checked(store: MemoryRefreshStore) -> None:
    with pytest.raises(ConfigurationError):
        RefreshTokens(store, idle=0)
    with pytest.raises(ConfigurationError):
        RefreshTokens(store, idle=10 * DAY, absolute=5 * DAY)
