"""Storage of the demo users API: one SQLite table behind SQLAlchemy Core.

Every statement is built with SQLAlchemy's expression language and runs with bound parameters,
so client text reaches SQLite only as a value, never as SQL. The ``select`` statements are built
once per repository and reused; SQLAlchemy caches their compiled form.

The demo calls the repository straight from its async handlers. Its queries hit a local SQLite
file and take tens of microseconds; a hop to a worker thread would cost more than the query.
A service whose queries can block for long belongs on an async driver or a thread pool instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from sqlalchemy import (
    CheckConstraint,
    Column,
    Integer,
    MetaData,
    Table,
    Text,
    bindparam,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from apiforge.core.deadlines import sqlite_progress_handler

__all__ = ["ROLES", "User", "UserNotFound", "UserRepository", "users_table"]

ROLES: Final = ("user", "support", "admin")

_metadata = MetaData()

users_table: Final = Table(
    "users",
    _metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("username", Text, nullable=False, unique=True),
    Column("email", Text, nullable=False),
    Column("age", Integer, nullable=True),
    Column("bio", Text, nullable=False, server_default=""),
    Column("role", Text, nullable=False),
    Column("status", Text, nullable=False, server_default="active"),
    # A fixed DDL constraint (no client text in it): the database itself refuses unknown roles,
    # so a bug elsewhere cannot grant a role the access rules do not know.
    CheckConstraint("role IN ('user', 'support', 'admin')", name="users_role_known"),
)

# The seeded accounts: two plain users, one support agent, one administrator.
_SEED: Final = (
    {"username": "alice", "email": "alice@example.com", "age": 34, "bio": "", "role": "user"},
    {"username": "bob", "email": "bob@example.com", "age": 29, "bio": "", "role": "user"},
    {"username": "sam", "email": "sam@example.com", "age": 41, "bio": "", "role": "support"},
    {"username": "ada", "email": "ada@example.com", "age": 37, "bio": "", "role": "admin"},
)


class UserNotFound(LookupError):
    """No account has the given username or id."""


@dataclass(frozen=True, slots=True)
class User:
    """One row of the ``users`` table.

    Attributes:
        id: the numeric id, as used in ``/v1/users/{id}``.
        username: the unique login name.
        email: the normalized email address.
        age: the age in years, or ``None`` when not given.
        bio: the biography in its stored form (HTML removed, ``&``, ``<`` and ``>`` escaped).
        role: one of ``user``, ``support``, ``admin``.
        status: the account status, ``active`` unless changed.
    """

    id: int
    username: str
    email: str
    age: int | None
    bio: str
    role: str
    status: str

    def to_public(self) -> dict[str, object]:
        """The JSON-ready representation returned by the API."""
        return {
            "id": self.id,
            "username": self.username,
            "email": self.email,
            "age": self.age,
            "bio": self.bio,
            "role": self.role,
            "status": self.status,
        }


def _user(row: Sequence[Any]) -> User:
    # Column order is fixed by users_table, and every statement selects all of its columns.
    user_id, username, email, age, bio, role, status = row
    return User(user_id, username, email, age, bio, role, status)


class UserRepository:
    """The ``users`` table of one SQLite database file.

    Args:
        database_path: the SQLite file; created on first connection if missing.
    """

    def __init__(self, database_path: Path) -> None:
        self.database_path = database_path
        self._engine = create_engine(
            f"sqlite:///{database_path}",
            connect_args={
                # The engine is shared by the event loop and, in tests, by helper threads.
                "check_same_thread": False,
                # Wait up to 5 s for another process's write lock instead of failing at once.
                "timeout": 5.0,
            },
        )
        # A query still running when its request's deadline passes is interrupted, since
        # cancelling the request cannot stop SQLite by itself.
        event.listen(self._engine, "connect", _interrupt_at_deadline)
        t = users_table
        self._by_username = select(t).where(t.c.username == bindparam("username"))
        self._by_id = select(t).where(t.c.id == bindparam("user_id"))
        self._count = select(func.count()).select_from(t)
        self._update = (
            update(t)
            .where(t.c.username == bindparam("match_username"))
            .values(
                email=bindparam("new_email"), age=bindparam("new_age"), bio=bindparam("new_bio")
            )
            .returning(*t.c)
        )

    def create_schema_and_seed(self) -> None:
        """Create the table if missing and seed the four demo accounts into an empty table.

        Safe to call on every start and from several processes at once: the count and the
        inserts share one transaction, and a username seeded meanwhile by another process is
        skipped rather than failing on the unique constraint.
        """
        _metadata.create_all(self._engine, checkfirst=True)
        with self._engine.begin() as conn:
            if conn.execute(self._count).scalar_one() == 0:
                conn.execute(
                    sqlite_insert(users_table).on_conflict_do_nothing(index_elements=["username"]),
                    [dict(row) for row in _SEED],
                )

    def get_by_username(self, username: str) -> User | None:
        """The account named ``username``, or ``None``."""
        with self._engine.connect() as conn:
            row = conn.execute(self._by_username, {"username": username}).one_or_none()
        return None if row is None else _user(row)

    def get_by_id(self, user_id: int) -> User | None:
        """The account with id ``user_id``, or ``None``."""
        with self._engine.connect() as conn:
            row = conn.execute(self._by_id, {"user_id": user_id}).one_or_none()
        return None if row is None else _user(row)

    def update_profile(self, username: str, *, email: str, age: int | None, bio: str) -> User:
        """Replace the editable profile fields of ``username`` and return the updated account.

        Args:
            username: whose profile to change; the caller decides who may change it.
            email: the new, already validated address.
            age: the new age, or ``None`` to clear it.
            bio: the new, already sanitized biography.

        Raises:
            UserNotFound: no account has that username.
        """
        params = {"match_username": username, "new_email": email, "new_age": age, "new_bio": bio}
        with self._engine.begin() as conn:
            row = conn.execute(self._update, params).one_or_none()
        if row is None:
            raise UserNotFound(username)
        return _user(row)

    def list_page(self, limit: int = 100) -> list[User]:
        """The first ``limit`` accounts by id (who may see which is the caller's decision)."""
        with self._engine.connect() as conn:
            rows = conn.execute(users_table.select().order_by(users_table.c.id).limit(limit))
            return [_user(row) for row in rows]

    def count(self) -> int:
        """The number of accounts."""
        with self._engine.connect() as conn:
            return int(conn.execute(self._count).scalar_one())

    def close(self) -> None:
        """Close every pooled connection (the file stays)."""
        self._engine.dispose()


def _interrupt_at_deadline(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.set_progress_handler(sqlite_progress_handler, 10_000)
