"""Refresh-store contract (memory, SQLite, PostgreSQL): single use under real concurrency.

Each SQL handle has its own engine, so concurrent callers hold separate connections, as separate
server processes would.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from alembic import command

from apiforge.errors import ConfigurationError
from apiforge.identity import Account
from apiforge.identity.refresh import RefreshFamily, RefreshTokenRefused, RefreshTokens
from apiforge.stores import open_refresh_store
from apiforge.stores.memory import MemoryRecordStore, MemoryRefreshStore
from apiforge.stores.migrations import alembic_config
from apiforge.stores.sql import SqlRecordStore, SqlRefreshStore
from tests.contract.conftest import migrated_database, store_handles

RefreshBackend = MemoryRefreshStore | SqlRefreshStore
RecordStore = MemoryRecordStore | SqlRecordStore
T = TypeVar("T")
T0 = datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
DAY = timedelta(days=1)


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def refresh_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[], RefreshBackend]]:
    """A factory of refresh-store handles on one database (one shared object for memory)."""
    kind: str = request.param
    if kind == "memory":
        memory = MemoryRefreshStore()
        yield lambda: memory
        return
    with migrated_database(kind, tmp_path) as engine:
        yield from store_handles(engine, SqlRefreshStore)


@pytest.fixture
def store(refresh_backend: Callable[[], RefreshBackend]) -> RefreshBackend:
    return refresh_backend()


def digest(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def family(family_id: str = "rtf_1", account_id: str = "acc_1", **changes: Any) -> RefreshFamily:
    base = RefreshFamily(
        family_id=family_id,
        account_id=account_id,
        account_version=2,
        client_id="web",
        scope=frozenset({"orders:read", "orders:write"}),
        created_at=T0,
        expires_at=T0 + 30 * DAY,
        idle_expires_at=T0 + 7 * DAY,
    )
    return replace(base, **changes)


def race(handles: list[Any], action: Callable[[Any, int], T]) -> list[T]:
    """Run ``action`` once per handle, each in its own thread, released at the same instant."""
    for handle in handles:
        if isinstance(handle, SqlRefreshStore):
            handle.get_family(b"warm-up")  # connect now, so the race is about the statements
    barrier = threading.Barrier(len(handles))
    results: list[T] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(handle: Any, index: int) -> None:
        barrier.wait()
        try:
            result = action(handle, index)
        except BaseException as exc:  # reported below, in the test's thread
            with lock:
                errors.append(exc)
        else:
            with lock:
                results.append(result)

    threads = [threading.Thread(target=run, args=(h, i)) for i, h in enumerate(handles)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    return results


def test_family_round_trip(refresh_backend: Callable[[], RefreshBackend]) -> None:
    first, second = refresh_backend(), refresh_backend()
    first.add_family(family(), digest("t1"))
    found = second.get_family(digest("t1"))
    assert found == family()
    assert found is not None and found.expires_at.tzinfo is not None
    assert second.get_family(digest("other")) is None
    first.add_family(family("rtf_2", client_id=None, scope=frozenset()), digest("t2"))
    assert second.get_family(digest("t2")) == family("rtf_2", client_id=None, scope=frozenset())


def test_rotation_then_reuse(store: RefreshBackend) -> None:
    store.add_family(family(), digest("t1"))
    now = T0 + timedelta(hours=1)
    rotated = store.rotate(digest("t1"), digest("t2"), now=now, idle_for=7 * DAY)
    assert rotated.outcome == "rotated"
    assert rotated.family == family(idle_expires_at=now + 7 * DAY)
    assert store.get_family(digest("t2")) == rotated.family

    reused = store.rotate(digest("t1"), digest("t3"), now=now, idle_for=7 * DAY)
    assert reused.outcome == "reused"
    assert reused.family is not None
    assert (reused.family.revoked_at, reused.family.revoked_reason) == (now, "reuse")
    assert store.get_family(digest("t3")) is None  # no successor for the reuse
    revoked = store.rotate(digest("t2"), digest("t4"), now=now, idle_for=7 * DAY)
    assert revoked.outcome == "revoked"
    unknown = store.rotate(digest("nope"), digest("t5"), now=now, idle_for=7 * DAY)
    assert (unknown.outcome, unknown.family) == ("unknown", None)


@pytest.mark.parametrize("contenders", [2, 8])
def test_concurrent_refresh_has_exactly_one_winner(
    refresh_backend: Callable[[], RefreshBackend], contenders: int
) -> None:
    """THE single-use test: N callers on N connections present one token at the same time."""
    handles = [refresh_backend() for _ in range(contenders)]
    handles[0].add_family(family(), digest("shared"))
    now = T0 + timedelta(minutes=10)

    results = race(
        handles,
        lambda h, i: (i, h.rotate(digest("shared"), digest(f"next-{i}"), now=now,
                                  idle_for=7 * DAY)),
    )
    outcomes = sorted(r.outcome for _, r in results)
    assert outcomes == ["reused"] * (contenders - 1) + ["rotated"]
    [winner] = [i for i, r in results if r.outcome == "rotated"]

    # The losers revoked the family, so the winner's successor is dead too.
    final = handles[0].get_family(digest("shared"))
    assert final is not None and final.revoked_reason == "reuse"
    after = handles[-1].rotate(digest(f"next-{winner}"), digest("after"), now=now,
                               idle_for=7 * DAY)
    assert after.outcome == "revoked"
    for i in range(contenders):
        if i != winner:
            assert handles[0].get_family(digest(f"next-{i}")) is None


@pytest.mark.parametrize("refresh_backend", ["sqlite", "postgresql"], indirect=True)
def test_concurrent_refresh_through_the_domain_layer(
    refresh_backend: Callable[[], RefreshBackend],
) -> None:
    clock = Clock(T0.timestamp())
    services = [RefreshTokens(refresh_backend(), clock=clock) for _ in range(4)]
    issued = _run(services[0].start("acc_1", 0))

    def refresh(_: object, index: int) -> str:
        try:
            _run(services[index].rotate(issued.token))
        except RefreshTokenRefused as exc:
            return exc.reason
        return "rotated"

    results = race([s.store for s in services], refresh)
    assert sorted(results) == ["reused", "reused", "reused", "rotated"]


def test_idle_timeout_and_absolute_lifetime(store: RefreshBackend) -> None:
    clock = Clock(T0.timestamp())
    families = RefreshTokens(store, idle=7 * 86400, absolute=30 * 86400, clock=clock)

    idle = _run(families.start("acc_1", 0))
    clock.now += 7 * 86400 - 1
    idle = _run(families.rotate(idle.token))  # one second before the idle end: fine
    clock.now += 7 * 86400
    assert _reason(families, idle.token) == "expired"
    assert _refused_family(families, idle.token).revoked_reason == "expired"

    clock.now = T0.timestamp()
    lasting = _run(families.start("acc_2", 0))
    for _ in range(5):
        clock.now += 6 * 86400  # days 6 .. 30
        if clock.now >= T0.timestamp() + 30 * 86400:
            break
        lasting = _run(families.rotate(lasting.token))
    assert lasting.family.idle_expires_at == lasting.family.expires_at
    clock.now = T0.timestamp() + 30 * 86400
    assert _reason(families, lasting.token) == "expired"


def test_revocations_and_purge(store: RefreshBackend) -> None:
    store.add_family(family("rtf_a1"), digest("a1"))
    store.add_family(family("rtf_a2"), digest("a2"))
    store.add_family(family("rtf_b1", "acc_2"), digest("b1"))
    now = T0 + DAY
    assert store.revoke_family("rtf_a1", now=now, reason="logout") is True
    assert store.revoke_family("rtf_a1", now=now, reason="logout") is False
    assert store.revoke_family("rtf_none", now=now, reason="logout") is False
    assert store.revoke_account("acc_1", now=now, reason="account") == 1
    assert store.revoke_account("acc_1", now=now, reason="account") == 0
    a1, a2 = store.get_family(digest("a1")), store.get_family(digest("a2"))
    assert a1 is not None and a1.revoked_reason == "logout"
    assert a2 is not None and (a2.revoked_at, a2.revoked_reason) == (now, "account")
    b1 = store.get_family(digest("b1"))
    assert b1 is not None and b1.revoked_at is None

    store.add_family(family("rtf_young", created_at=T0 + 6 * DAY,
                            idle_expires_at=T0 + 13 * DAY), digest("young"))
    assert store.purge(now=T0 + 7 * DAY) == 3  # idle-expired, revoked or not
    assert store.get_family(digest("a1")) is None
    assert store.get_family(digest("young")) is not None
    assert store.purge(now=T0 + 7 * DAY) == 0


def test_totp_steps_are_claimed_once(refresh_backend: Callable[[], RefreshBackend]) -> None:
    first, second = refresh_backend(), refresh_backend()
    assert first.claim_totp_step("acc_1", 58_000_000) is True
    assert second.claim_totp_step("acc_1", 58_000_000) is False
    assert second.claim_totp_step("acc_1", 57_999_999) is False
    assert second.claim_totp_step("acc_2", 58_000_000) is True
    assert first.claim_totp_step("acc_1", 58_000_001) is True
    assert first.claim_totp_step("acc_1", 2**40) is True  # steps are 64-bit


@pytest.mark.parametrize("existing", [False, True], ids=["first-claim", "later-claim"])
def test_concurrent_totp_claims_have_one_winner(
    refresh_backend: Callable[[], RefreshBackend], existing: bool
) -> None:
    handles = [refresh_backend() for _ in range(4)]
    if existing:
        assert handles[0].claim_totp_step("acc_1", 100) is True
    for step in (200, 201, 202):
        results = race(handles, lambda h, _, step=step: h.claim_totp_step("acc_1", step))
        assert sorted(results) == [False, False, False, True]


def test_account_totp_secret_and_hash_swap(records: RecordStore) -> None:
    account = Account("acc_1", "alice", frozenset({"user"}), password_hash="$argon2id$old",
                      totp_secret="JBSWY3DPEHPK3PXP")
    records.add_account(account)
    assert records.get_account("acc_1") == account
    assert "JBSWY3DPEHPK3PXP" not in repr(records.get_account("acc_1"))
    records.update_account(replace(account, totp_secret=None))
    found = records.get_account("acc_1")
    assert found is not None and found.totp_secret is None
    assert records.replace_password_hash("acc_1", "$argon2id$wrong", "$argon2id$new") is False
    assert records.replace_password_hash("acc_1", "$argon2id$old", "$argon2id$new") is True
    found = records.get_account("acc_1")
    assert found is not None and found.password_hash == "$argon2id$new"
    assert records.replace_password_hash("acc_9", "$argon2id$new", "x") is False


def test_open_refresh_store_by_url(tmp_path: Path) -> None:
    assert isinstance(open_refresh_store("memory://"), MemoryRefreshStore)
    opened = open_refresh_store(f"sqlite:///{tmp_path / 'r.db'}")
    try:
        assert isinstance(opened, SqlRefreshStore)
        opened.add_family(family(), digest("t"))
        assert opened.get_family(digest("t")) == family()
    finally:
        opened.close()
    with pytest.raises(ConfigurationError, match=r"^authentication\.records_url: memory://"):
        open_refresh_store("memory://", workers=2)
    with pytest.raises(ConfigurationError) as caught:
        open_refresh_store("mysql://u:hunter2@db/x")
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("refresh_backend", ["sqlite", "postgresql"], indirect=True)
def test_migration_goes_down_and_up_again(store: RefreshBackend) -> None:
    assert isinstance(store, SqlRefreshStore)
    config = alembic_config(store.engine)
    command.downgrade(config, "0001_identity_tables")
    command.upgrade(config, "head")
    store.add_family(family(), digest("t"))
    assert store.get_family(digest("t")) == family()


# -- helpers -----------------------------------------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _run(awaitable: Any) -> Any:
    return asyncio.run(awaitable)


def _reason(families: RefreshTokens, token: Any) -> str:
    try:
        _run(families.rotate(token))
    except RefreshTokenRefused as exc:
        return exc.reason
    return "rotated"


def _refused_family(families: RefreshTokens, token: Any) -> RefreshFamily:
    try:
        _run(families.inspect(token))
    except RefreshTokenRefused as exc:
        assert exc.family is not None
        return exc.family
    raise AssertionError("not refused")
