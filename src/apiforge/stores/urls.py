"""Open the identity stores from two URLs, choosing the backend by scheme.

=====================  ===========================================  =======================
URL                    backend                                      use
=====================  ===========================================  =======================
``sqlite:///PATH``     records in an SQLite file                    embedded default
``postgresql://…``     records in PostgreSQL (psycopg 3)            several instances
``memory://``          records or state in this process only        tests, one worker
``redis://…``          state in Redis (``rediss://`` for TLS)       several instances
=====================  ===========================================  =======================

Refresh-token families live in the record database (:func:`open_refresh_store` with the same
URL as the records, or ``SqlRefreshStore(records.engine)`` to share the pool): their single use
needs a transaction, which is what SQL gives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from apiforge.errors import ConfigurationError
from apiforge.stores.memory import MemoryRecordStore, MemoryRefreshStore, MemoryStateStore
from apiforge.stores.protocols import (
    AccountStore,
    ApiKeyStore,
    ApplicationStore,
    RefreshStore,
    StateStore,
)

__all__ = [
    "RECORD_SCHEMES",
    "STATE_SCHEMES",
    "IdentityStores",
    "open_identity_stores",
    "open_refresh_store",
    "redact_url",
]

RECORD_SCHEMES: Final = ("sqlite", "postgresql", "postgresql+psycopg", "memory")
STATE_SCHEMES: Final = ("memory", "redis", "rediss")


@dataclass(frozen=True, slots=True)
class IdentityStores:
    """The stores the identity services need, opened together.

    Attributes:
        applications: application records.
        api_keys: API key records.
        accounts: account records.
        state: shared revocations, versions and change feed.
    """

    applications: ApplicationStore
    api_keys: ApiKeyStore
    accounts: AccountStore
    state: StateStore

    async def aclose(self) -> None:
        """Close the state store's connections and dispose of the SQL pool."""
        await self.state.aclose()
        close = getattr(self.api_keys, "close", None)
        if callable(close):
            close()


def _scheme(url: str) -> str:
    # Only the scheme is ever echoed back: the rest of a URL may hold a password.
    return urlsplit(url).scheme.lower()


def _refuse(key: str, scheme: str, accepted: tuple[str, ...]) -> ConfigurationError:
    return ConfigurationError(
        f"{key}: unsupported URL scheme {scheme!r}; accepted schemes: "
        + ", ".join(f"{s}://" for s in accepted)
    )


def _refuse_memory(key: str, workers: int) -> ConfigurationError:
    return ConfigurationError(
        f"{key}: memory:// keeps state inside one process, but the server runs {workers} "
        "workers, so a revocation in one would not reach the others; use "
        + ("sqlite:///PATH or postgresql://" if "record" in key else "redis://")
        + " or run one worker"
    )


def open_identity_stores(
    url_for_records: str,
    url_for_state: str,
    *,
    workers: int = 1,
    migrate: bool = True,
    state_prefix: str = "apiforge:",
    records_key: str = "stores.records",
    state_key: str = "stores.state",
) -> IdentityStores:
    """Open the record and state stores named by URL.

    Args:
        url_for_records: ``sqlite:///PATH``, ``postgresql://…`` or ``memory://``.
        url_for_state: ``memory://`` or ``redis://…`` / ``rediss://…``.
        workers: how many server processes will share these stores. ``memory://`` is refused
            when it is above one, because each process would hold its own revocations.
        migrate: bring an SQL database to the newest schema first (Alembic).
        state_prefix: Redis key prefix, to keep deployments on one server apart.
        records_key: the policy key of the records URL, named in errors.
        state_key: the policy key of the state URL, named in errors.

    Raises:
        ConfigurationError: an unknown scheme, or ``memory://`` with several workers.
    """
    if workers < 1:
        raise ConfigurationError(f"workers must be at least 1, not {workers}")
    record_scheme = _scheme(url_for_records)
    state_scheme = _scheme(url_for_state)
    if record_scheme not in RECORD_SCHEMES:
        raise _refuse(records_key, record_scheme, RECORD_SCHEMES)
    if state_scheme not in STATE_SCHEMES:
        raise _refuse(state_key, state_scheme, STATE_SCHEMES)
    if workers > 1 and record_scheme == "memory":
        raise _refuse_memory(records_key, workers)
    if workers > 1 and state_scheme == "memory":
        raise _refuse_memory(state_key, workers)

    applications: ApplicationStore
    keys: ApiKeyStore
    accounts: AccountStore
    if record_scheme == "memory":
        memory_records = MemoryRecordStore()
        applications, keys, accounts = memory_records, memory_records, memory_records
    else:
        from apiforge.stores.sql import SqlRecordStore, create_sql_engine

        engine = create_sql_engine(url_for_records)
        if migrate:
            from apiforge.stores.migrations import upgrade

            upgrade(engine)
        sql_records = SqlRecordStore(engine)
        applications, keys, accounts = sql_records, sql_records, sql_records

    state: StateStore
    if state_scheme == "memory":
        state = MemoryStateStore()
    else:
        from apiforge.stores.redis_store import RedisStateStore

        state = RedisStateStore.from_url(url_for_state, prefix=state_prefix)
    return IdentityStores(applications, keys, accounts, state)


def open_refresh_store(
    url: str,
    *,
    workers: int = 1,
    migrate: bool = True,
    key: str = "authentication.records_url",
) -> RefreshStore:
    """Open the refresh-token store named by URL (the record store's URL, as a rule).

    Args:
        url: ``sqlite:///PATH``, ``postgresql://…`` or ``memory://``.
        workers: server processes sharing the store. ``memory://`` is refused above one: a
            token spent in one process would still be fresh in another, so single use (and
            reuse detection) would not hold.
        migrate: bring an SQL database to the newest schema first (Alembic).
        key: the policy key of the URL, named in errors.

    Raises:
        ConfigurationError: an unknown scheme, or ``memory://`` with several workers.
    """
    if workers < 1:
        raise ConfigurationError(f"workers must be at least 1, not {workers}")
    scheme = _scheme(url)
    if scheme not in RECORD_SCHEMES:
        raise _refuse(key, scheme, RECORD_SCHEMES)
    if scheme == "memory":
        if workers > 1:
            raise _refuse_memory(key, workers)
        return MemoryRefreshStore()
    from apiforge.stores.sql import SqlRefreshStore, create_sql_engine

    engine = create_sql_engine(url)
    if migrate:
        from apiforge.stores.migrations import upgrade

        upgrade(engine)
    return SqlRefreshStore(engine)


def redact_url(url: str) -> str:
    """``url`` as a log line or an error message may show it: credentials masked."""
    scheme, sep, rest = url.partition("://")
    return scheme + sep + ("***@" + rest.rsplit("@", 1)[1] if "@" in rest else rest)
