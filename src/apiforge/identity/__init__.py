"""Identity: API keys, accounts, and the cache refresher that keeps every process current.

Plain Python, no HTTP: the authentication layer adapts these to requests.

The request path reads in-process caches only. :class:`CacheRefresher` keeps them current: it
polls the shared state store's change feed (every 250 ms by default) and re-reads the changed
records from the record store in a worker thread, so a key revoked in one process is refused by
every other process within a second.

Exceptions::

    ApiForgeError
    ├── InvalidApiKey      an API key was refused (reason for internal logs only)
    └── AccountRefused     an account may not act
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

from apiforge.identity.accounts import (
    ACCOUNT_TOPIC,
    ADMIN_ROLE,
    Account,
    AccountRefused,
    AccountService,
    AccountStatus,
)
from apiforge.identity.api_keys import (
    API_KEY_TOPIC,
    ApiKeyRecord,
    ApiKeyService,
    Application,
    InvalidApiKey,
    KeyCache,
    KeyHasher,
    ParsedKey,
    generate_key,
    parse_key,
)

if TYPE_CHECKING:
    from apiforge.stores.protocols import StateStore

__all__ = [
    "ACCOUNT_TOPIC",
    "ADMIN_ROLE",
    "API_KEY_TOPIC",
    "Account",
    "AccountRefused",
    "AccountService",
    "AccountStatus",
    "ApiKeyRecord",
    "ApiKeyService",
    "Application",
    "CacheRefresher",
    "CachedService",
    "InvalidApiKey",
    "KeyCache",
    "KeyHasher",
    "ParsedKey",
    "generate_key",
    "parse_key",
]

_log = logging.getLogger("apiforge.identity")


class CachedService(Protocol):
    """A service with an in-process cache fed by one change-feed topic."""

    @property
    def topic(self) -> str:
        """The change-feed topic whose ids this service caches."""

    async def load(self) -> int:
        """Fill the whole cache from the record store."""

    async def refresh(self, ids: Iterable[str]) -> None:
        """Re-read the given ids from the record store."""


class CacheRefresher:
    """Keeps service caches current by polling the change feed.

    Args:
        state: the shared state store whose change feed is polled.
        services: the cached services to load at start and refresh on change.
        interval: seconds between polls. Revocations take effect everywhere within about this
            long (plus one record read), so keep it well under a second.
        flush_interval: seconds between batched writes of API key last-used times.

    A failed poll is logged and retried with the same cursor, so no change is skipped. While the
    state store is unreachable, changes made elsewhere cannot arrive: :attr:`seconds_since_sync`
    lets a health check or the policy (``on_store_error``) decide what to do about it.
    """

    def __init__(
        self,
        state: StateStore,
        services: Sequence[CachedService],
        *,
        interval: float = 0.25,
        flush_interval: float = 5.0,
    ) -> None:
        if interval <= 0 or flush_interval <= 0:
            raise ValueError("intervals must be positive")
        self._state = state
        self._services = tuple(services)
        self._interval = interval
        self._flush_interval = flush_interval
        self._cursor: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_sync = time.monotonic()
        self._stopping = asyncio.Event()

    @property
    def seconds_since_sync(self) -> float:
        """Seconds since the last successful poll."""
        return time.monotonic() - self._last_sync

    async def start(self) -> None:
        """Take a cursor, load every cache, then poll in the background.

        The cursor is taken *before* loading, so a change made while loading is replayed after
        (refreshing an entry twice is harmless; missing one is not).
        """
        if self._task is not None:
            raise RuntimeError("already started")
        self._stopping.clear()
        self._cursor = await self._state.current_cursor()
        for service in self._services:
            count = await service.load()
            _log.info("identity cache loaded", extra={"topic": service.topic, "count": count})
        self._last_sync = time.monotonic()
        self._task = asyncio.create_task(self._run(), name="apiforge-cache-refresher")

    async def poll_once(self) -> int:
        """Apply the changes published since the last poll; returns how many were read."""
        if self._cursor is None:
            self._cursor = await self._state.current_cursor()
        cursor, changes = await self._state.changes_since(self._cursor)
        by_topic: dict[str, set[str]] = {}
        for topic, item_id in changes:
            by_topic.setdefault(topic, set()).add(item_id)
        for service in self._services:
            ids = by_topic.get(service.topic)
            if ids:
                await service.refresh(ids)
        # Advance only once every refresh succeeded, so a failure is retried next time.
        self._cursor = cursor
        self._last_sync = time.monotonic()
        return len(changes)

    async def flush(self) -> None:
        """Write buffered API key last-used times, in a worker thread."""
        for service in self._services:
            if isinstance(service, ApiKeyService):
                await asyncio.to_thread(service.flush_last_used)

    async def _run(self) -> None:
        next_flush = time.monotonic() + self._flush_interval
        while not self._stopping.is_set():
            try:
                await self.poll_once()
                if time.monotonic() >= next_flush:
                    next_flush = time.monotonic() + self._flush_interval
                    await self.flush()
            except Exception:
                # Keep polling: stopping would freeze every cache at its current content.
                _log.exception("identity cache refresh failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval)

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop polling after the current poll, then flush what is buffered.

        A stop flag rather than cancellation alone: some client libraries turn a cancellation
        that lands inside a network call into an ordinary error, which the loop would survive.

        Args:
            timeout: seconds to wait for the current poll before cancelling it.
        """
        task, self._task = self._task, None
        self._stopping.set()
        if task is not None:
            _, pending = await asyncio.wait({task}, timeout=timeout)
            if pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.flush()
