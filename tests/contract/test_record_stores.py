"""Record-store contract: every backend (memory, SQLite, PostgreSQL) behaves the same."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from apiforge.errors import ConfigurationError, StoreError
from apiforge.identity import Account, ApiKeyRecord, Application
from apiforge.stores import open_identity_stores
from apiforge.stores.memory import MemoryRecordStore
from apiforge.stores.sql import SqlRecordStore, metadata

RecordStore = MemoryRecordStore | SqlRecordStore
T0 = datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def application(app_id: str = "app_1", name: str = "Billing") -> Application:
    return Application(app_id, name, owner_account_id="acc_1", created_at=T0)


def key(key_id: str = "k" * 12, app_id: str = "app_1", **changes: object) -> ApiKeyRecord:
    record = ApiKeyRecord(
        key_id=key_id,
        env="live",
        application_id=app_id,
        digest=bytes(range(32)),
        scopes=frozenset({"users:read", "users:write"}),
        status="active",
        created_at=T0,
        expires_at=T0 + timedelta(days=30),
    )
    return replace(record, **changes)  # type: ignore[arg-type]


def account(account_id: str = "acc_1", username: str = "alice") -> Account:
    return Account(account_id, username, frozenset({"user"}), password_hash="$argon2id$x")


def test_application_round_trip(records: RecordStore) -> None:
    records.add_application(application())
    assert records.get_application("app_1") == application()
    assert records.get_application("app_2") is None
    records.add_application(application("app_2", "Search"))
    assert {a.application_id for a in records.list_applications()} == {"app_1", "app_2"}


def test_application_update_and_duplicates(records: RecordStore) -> None:
    records.add_application(application())
    records.update_application(application(name="Billing v2"))
    found = records.get_application("app_1")
    assert found is not None and found.name == "Billing v2"
    with pytest.raises(StoreError):
        records.add_application(application())
    with pytest.raises(LookupError):
        records.update_application(application("missing"))


def test_key_round_trip_keeps_every_field(records: RecordStore) -> None:
    records.add_application(application())
    record = key(last_used_at=T0, replaced_by="n" * 12, rotated_at=T0, overlap_until=T0)
    records.add_key(record)
    found = records.get_key(record.key_id)
    assert found == record
    assert found is not None and found.created_at.tzinfo is not None
    assert records.get_key("x" * 12) is None
    assert [r.key_id for r in records.list_keys()] == [record.key_id]


def test_key_needs_a_known_application_and_a_unique_id(records: RecordStore) -> None:
    with pytest.raises(StoreError):
        records.add_key(key(app_id="nope"))
    records.add_application(application())
    records.add_key(key())
    with pytest.raises(StoreError):
        records.add_key(key())


def test_revocation_is_visible_to_a_second_handle(
    record_backend: Callable[[], RecordStore],
) -> None:
    first, second = record_backend(), record_backend()
    first.add_application(application())
    first.add_key(key())
    first.update_key(key(status="revoked", revoked_at=T0))
    found = second.get_key(key().key_id)
    assert found is not None
    assert (found.status, found.revoked_at) == ("revoked", T0)


def test_update_key_leaves_digest_and_last_used_alone(records: RecordStore) -> None:
    records.add_application(application())
    records.add_key(key())
    records.record_last_used({key().key_id: T0})
    records.update_key(key(digest=b"\x00" * 32, last_used_at=None, scopes=frozenset({"a"})))
    found = records.get_key(key().key_id)
    assert found is not None
    assert found.digest == key().digest
    assert found.last_used_at == T0
    assert found.scopes == frozenset({"a"})
    with pytest.raises(LookupError):
        records.update_key(key("m" * 12))


def test_last_used_never_moves_backwards(records: RecordStore) -> None:
    records.add_application(application())
    records.add_key(key())
    records.add_key(key("j" * 12))
    later = T0 + timedelta(minutes=5)
    records.record_last_used({key().key_id: later, "j" * 12: T0, "unknown00000": T0})
    records.record_last_used({key().key_id: T0})
    first, second = records.get_key(key().key_id), records.get_key("j" * 12)
    assert first is not None and first.last_used_at == later
    assert second is not None and second.last_used_at == T0
    records.record_last_used({})


def test_replace_digest_is_compare_and_set(records: RecordStore) -> None:
    records.add_application(application())
    records.add_key(key())
    assert records.replace_digest(key().key_id, b"wrong", b"\x01" * 32) is False
    assert records.replace_digest(key().key_id, key().digest, b"\x01" * 32) is True
    found = records.get_key(key().key_id)
    assert found is not None and found.digest == b"\x01" * 32
    assert records.replace_digest("absent000000", key().digest, b"\x02" * 32) is False


def test_account_round_trip_and_update(record_backend: Callable[[], RecordStore]) -> None:
    first, second = record_backend(), record_backend()
    first.add_account(account())
    first.add_account(account("acc_2", "bob"))
    assert second.get_account("acc_1") == account()
    assert second.get_account("acc_3") is None
    assert [a.username for a in second.list_accounts()] == ["alice", "bob"]
    changed = replace(account(), status="suspended", version=3, roles=frozenset({"admin", "user"}))
    first.update_account(changed)
    assert second.get_account("acc_1") == changed
    with pytest.raises(LookupError):
        first.update_account(account("acc_9", "zed"))


def test_account_ids_and_usernames_are_unique(records: RecordStore) -> None:
    records.add_account(account())
    with pytest.raises(StoreError):
        records.add_account(account())
    with pytest.raises(StoreError):
        records.add_account(account("acc_2", "alice"))


@pytest.mark.parametrize("record_backend", ["sqlite", "postgresql"], indirect=True)
def test_migration_is_the_schema_the_code_expects(records: RecordStore) -> None:
    assert isinstance(records, SqlRecordStore)
    with records.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), metadata) == []


@pytest.mark.parametrize("record_backend", ["sqlite", "postgresql"], indirect=True)
def test_database_refuses_unknown_status(records: RecordStore) -> None:
    records.add_application(application())
    with pytest.raises(StoreError):
        records.add_key(key(status="paused"))


@pytest.mark.parametrize(
    ("records_url", "state_url", "key"),
    [
        ("mysql://u:hunter2@db/x", "memory://", "stores.records"),
        ("memory://", "memcached://cache", "stores.state"),
        ("sqlite", "memory://", "stores.records"),
    ],
)
def test_unknown_scheme_names_the_key_and_the_choices(
    records_url: str, state_url: str, key: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        open_identity_stores(records_url, state_url)
    message = str(caught.value)
    assert message.startswith(f"{key}: unsupported URL scheme")
    assert "accepted schemes:" in message
    assert "hunter2" not in message


@pytest.mark.parametrize(
    ("records_url", "state_url", "key"),
    [
        ("memory://", "redis://127.0.0.1:6379/0", "stores.records"),
        (None, "memory://", "stores.state"),
    ],
)
def test_memory_is_refused_with_several_workers(
    records_url: str | None, state_url: str, key: str, tmp_path: Path
) -> None:
    url = records_url or f"sqlite:///{tmp_path / 'r.db'}"
    with pytest.raises(ConfigurationError, match=f"^{key}: memory://"):
        open_identity_stores(url, state_url, workers=4)


async def test_open_sqlite_migrates_and_works(tmp_path: Path) -> None:
    stores = open_identity_stores(f"sqlite:///{tmp_path / 'id.db'}", "memory://")
    try:
        assert isinstance(stores.api_keys, SqlRecordStore)
        stores.applications.add_application(application())
        assert stores.applications.get_application("app_1") == application()
    finally:
        await stores.aclose()
    with pytest.raises(ConfigurationError):
        open_identity_stores("sqlite:///:memory:", "memory://")
