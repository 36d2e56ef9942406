"""Storage behind small Protocols: SQL records, shared state, chosen by URL.

Import the SQL and Redis backends from their modules (:mod:`apiforge.stores.sql`,
:mod:`apiforge.stores.redis_store`); this package itself loads neither driver.
"""

from __future__ import annotations

from apiforge.stores.memory import MemoryRecordStore, MemoryRefreshStore, MemoryStateStore
from apiforge.stores.protocols import (
    AccountStore,
    ApiKeyStore,
    ApplicationStore,
    RefreshStore,
    StateStore,
)
from apiforge.stores.urls import (
    RECORD_SCHEMES,
    STATE_SCHEMES,
    IdentityStores,
    open_identity_stores,
    open_refresh_store,
)

__all__ = [
    "RECORD_SCHEMES",
    "STATE_SCHEMES",
    "AccountStore",
    "ApiKeyStore",
    "ApplicationStore",
    "IdentityStores",
    "MemoryRecordStore",
    "MemoryRefreshStore",
    "MemoryStateStore",
    "RefreshStore",
    "StateStore",
    "open_identity_stores",
    "open_refresh_store",
]
