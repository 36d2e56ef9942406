"""The demo's SQLite repository, checked against the file with the sqlite3 module directly."""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from apiforge.demo.db import User, UserNotFound, UserRepository

SEEDED = [
    (1, "alice", "alice@example.com", 34, "", "user", "active"),
    (2, "bob", "bob@example.com", 29, "", "user", "active"),
    (3, "sam", "sam@example.com", 41, "", "support", "active"),
    (4, "ada", "ada@example.com", 37, "", "admin", "active"),
]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "demo.db"


@pytest.fixture
def repo(db_path: Path) -> Iterator[UserRepository]:
    repository = UserRepository(db_path)
    repository.create_schema_and_seed()
    yield repository
    repository.close()


@contextlib.contextmanager
def sqlite(db_path: Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection that commits on success and is always closed."""
    conn = sqlite3.connect(db_path)
    try:
        with conn:
            yield conn
    finally:
        conn.close()


def rows(db_path: Path) -> list[tuple[object, ...]]:
    with sqlite(db_path) as conn:
        return conn.execute(
            "SELECT id, username, email, age, bio, role, status FROM users ORDER BY id"
        ).fetchall()


def test_fresh_database_is_seeded_with_four_accounts(repo: UserRepository, db_path: Path) -> None:
    assert rows(db_path) == SEEDED
    assert repo.count() == 4


def test_seeding_is_idempotent_and_keeps_changes(repo: UserRepository, db_path: Path) -> None:
    repo.update_profile("bob", email="bobby@example.com", age=30, bio="changed")
    repo.create_schema_and_seed()
    again = UserRepository(db_path)
    again.create_schema_and_seed()
    again.close()
    assert repo.count() == 4
    bob = repo.get_by_username("bob")
    assert bob is not None
    assert (bob.email, bob.age, bob.bio) == ("bobby@example.com", 30, "changed")


def test_seed_only_fills_an_empty_table(repo: UserRepository, db_path: Path) -> None:
    with sqlite(db_path) as conn:
        conn.execute("DELETE FROM users WHERE username != ?", ("alice",))
    repo.create_schema_and_seed()
    assert [r[1] for r in rows(db_path)] == ["alice"]


def test_lookups(repo: UserRepository) -> None:
    sam = repo.get_by_username("sam")
    assert sam == User(3, "sam", "sam@example.com", 41, "", "support", "active")
    assert repo.get_by_id(3) == sam
    assert repo.get_by_username("mallory") is None
    assert repo.get_by_username("") is None
    assert repo.get_by_id(5) is None
    assert repo.get_by_id(0) is None
    assert repo.get_by_id(2**63 - 1) is None


def test_to_public_has_exactly_the_public_fields(repo: UserRepository) -> None:
    ada = repo.get_by_id(4)
    assert ada is not None
    assert ada.to_public() == {
        "id": 4,
        "username": "ada",
        "email": "ada@example.com",
        "age": 37,
        "bio": "",
        "role": "admin",
        "status": "active",
    }


def test_user_is_frozen(repo: UserRepository) -> None:
    alice = repo.get_by_id(1)
    assert alice is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        alice.role = "admin"  # type: ignore[misc]


def test_update_profile_persists(repo: UserRepository, db_path: Path) -> None:
    updated = repo.update_profile("alice", email="a2@example.com", age=None, bio="new bio")
    assert updated == User(1, "alice", "a2@example.com", None, "new bio", "user", "active")
    assert rows(db_path)[0] == (1, "alice", "a2@example.com", None, "new bio", "user", "active")
    # Other accounts are untouched.
    assert rows(db_path)[1:] == SEEDED[1:]


def test_update_of_unknown_user_raises_and_changes_nothing(
    repo: UserRepository, db_path: Path
) -> None:
    with pytest.raises(UserNotFound):
        repo.update_profile("mallory", email="m@example.com", age=20, bio="")
    assert rows(db_path) == SEEDED


@pytest.mark.parametrize(
    "text",
    [
        "'; DROP TABLE users; --",
        "alice' OR '1'='1",
        "Robert'); DROP TABLE users;--",
        '" OR ""="',
        "1; UPDATE users SET role='admin'",
    ],
)
def test_sql_text_is_only_ever_a_value(repo: UserRepository, db_path: Path, text: str) -> None:
    # As a lookup key it matches nothing; as a value it is stored byte for byte.
    assert repo.get_by_username(text) is None
    updated = repo.update_profile("bob", email="bob@example.com", age=29, bio=text)
    assert updated.bio == text
    stored = rows(db_path)
    assert len(stored) == 4
    assert stored[1][4] == text
    assert [r[5] for r in stored] == ["user", "user", "support", "admin"]


def test_database_refuses_unknown_roles(repo: UserRepository, db_path: Path) -> None:
    with sqlite(db_path) as conn, pytest.raises(sqlite3.IntegrityError):
        conn.execute(
            "INSERT INTO users (username, email, role) VALUES (?, ?, ?)",
            ("eve", "eve@example.com", "root"),
        )


def test_column_defaults_and_uniqueness(repo: UserRepository, db_path: Path) -> None:
    with sqlite(db_path) as conn:
        conn.execute(
            "INSERT INTO users (username, email, role) VALUES (?, ?, ?)",
            ("eve", "eve@example.com", "user"),
        )
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(
                "INSERT INTO users (username, email, role) VALUES (?, ?, ?)",
                ("alice", "other@example.com", "user"),
            )
    eve = repo.get_by_username("eve")
    assert eve is not None
    assert (eve.id, eve.age, eve.bio, eve.status) == (5, None, "", "active")


def test_seeding_creates_the_file_and_table(tmp_path: Path) -> None:
    path = tmp_path / "fresh.db"
    repository = UserRepository(path)
    repository.create_schema_and_seed()
    repository.close()
    assert path.is_file()
    with sqlite(path) as conn:
        (sql,) = conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'users'"
        ).fetchone()
    assert "UNIQUE" in sql.upper()
