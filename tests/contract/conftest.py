"""Backends for the store contract suite: every contract test runs against each of them.

Record stores: memory, SQLite (a file under ``tmp_path``) and PostgreSQL (a fresh schema per
test, first on the ``search_path``, dropped afterwards). State stores: memory and Redis (a unique
key prefix per test, its keys deleted afterwards). Servers come from
``APIFORGE_TEST_DATABASE_URL`` and ``APIFORGE_TEST_REDIS_URL``. An unreachable server skips its
tests with the reason, except under ``CI=true``, where it fails them: CI must never pass by
testing nothing.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Engine

from apiforge.stores.memory import MemoryRecordStore, MemoryStateStore
from apiforge.stores.migrations import upgrade
from apiforge.stores.redis_store import RedisStateStore
from apiforge.stores.sql import SqlRecordStore, SqlRefreshStore, create_sql_engine
from tests.redis_helpers import REDIS_URL, delete_prefix, redis_or_skip, unavailable

DATABASE_URL = os.environ.get(
    "APIFORGE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)

RecordStore = MemoryRecordStore | SqlRecordStore
StateBackend = MemoryStateStore | RedisStateStore


@contextlib.contextmanager
def migrated_database(kind: str, tmp_path: Path) -> Iterator[Callable[[], Engine]]:
    """A migrated database of ``kind`` (``sqlite``: a file under ``tmp_path``; ``postgresql``:
    a fresh schema, dropped afterwards); yields a factory of engines on it, one per "process".
    """
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'records.db'}"
        upgrade(url)
        yield lambda: create_sql_engine(url)
        return
    schema = f"t_{uuid.uuid4().hex}"
    try:
        admin = psycopg.connect(
            DATABASE_URL.replace("postgresql+psycopg://", "postgresql://"),
            autocommit=True,
            connect_timeout=3,
        )
    except psycopg.OperationalError as exc:
        unavailable("PostgreSQL", exc)
    with admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        try:
            engine = create_sql_engine(DATABASE_URL, schema=schema)
            upgrade(engine)
            engine.dispose()
            yield lambda: create_sql_engine(DATABASE_URL, schema=schema)
        finally:
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


Closable = TypeVar("Closable", bound=SqlRecordStore | SqlRefreshStore)


def store_handles(
    engine: Callable[[], Engine], make: Callable[[Engine], Closable]
) -> Iterator[Callable[[], Closable]]:
    """A factory of stores, each on its own engine; all closed afterwards."""
    opened: list[Closable] = []

    def open_store() -> Closable:
        opened.append(make(engine()))
        return opened[-1]

    try:
        yield open_store
    finally:
        for store in opened:
            store.close()


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def record_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[], RecordStore]]:
    """A factory of record-store handles that all see the same data.

    Memory has one handle per process (the same object); SQL backends open a new engine on the
    same database each time, as a second process would.
    """
    kind: str = request.param
    if kind == "memory":
        store = MemoryRecordStore()
        yield lambda: store
        return
    with migrated_database(kind, tmp_path) as engine:
        yield from store_handles(engine, SqlRecordStore)


@pytest.fixture
def records(record_backend: Callable[[], RecordStore]) -> RecordStore:
    """One record-store handle on the backend under test."""
    return record_backend()


@pytest.fixture(params=["memory", "redis"])
async def state_backend(
    request: pytest.FixtureRequest,
) -> AsyncIterator[Callable[[], StateBackend]]:
    """A factory of state-store handles that share the same state (same process for memory)."""
    kind: str = request.param
    if kind == "memory":
        memory = MemoryStateStore()
        yield lambda: memory
        return
    probe = redis_or_skip()
    prefix = f"apiforge-test:{uuid.uuid4().hex}:"
    opened: list[RedisStateStore] = []

    def open_redis() -> StateBackend:
        opened.append(RedisStateStore.from_url(REDIS_URL, prefix=prefix))
        return opened[-1]

    try:
        yield open_redis
    finally:
        for store in opened:
            await store.aclose()
        delete_prefix(probe, prefix)
        probe.close()


@pytest.fixture
def state(state_backend: Callable[[], StateBackend]) -> StateBackend:
    """One state-store handle on the backend under test."""
    return state_backend()
