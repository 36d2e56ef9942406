"""The shared state store on Redis (redis-py asyncio).

Layout under one key prefix (``apiforge:`` by default), so several deployments or test runs can
share a server without seeing each other:

- ``<prefix>versions``: a hash, account id → version, bumped with ``HINCRBY`` (atomic);
- ``<prefix>revoked:<kind>:<id>``: one string per revocation, written with ``SET … PX`` so the
  mark and its expiry are set in one command (no ``SET``-then-``EXPIRE`` window that could leave
  an immortal key);
- ``<prefix>changes``: a stream of ``(topic, id)`` entries, capped near ``max_changes``; the
  cursor is a stream entry id and ``XRANGE`` with an exclusive start reads what came after it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from apiforge.errors import StoreError

__all__ = ["RedisStateStore"]

_START: str = "0-0"


class RedisStateStore:
    """:class:`~apiforge.stores.protocols.StateStore` on Redis.

    Args:
        client: a ``redis.asyncio.Redis``; this store closes it in :meth:`aclose`.
        prefix: prepended to every key this store touches.
        max_changes: approximate length of the change stream; a reader that falls further behind
            than this misses changes, so keep it far above what one poll interval can produce.
    """

    def __init__(
        self, client: Redis, prefix: str = "apiforge:", max_changes: int = 100_000
    ) -> None:
        self._redis = client
        self.prefix = prefix
        self._versions = f"{prefix}versions"
        self._changes = f"{prefix}changes"
        self._max_changes = max_changes

    @classmethod
    def from_url(cls, url: str, prefix: str = "apiforge:") -> RedisStateStore:
        """Connect lazily to ``redis://`` or ``rediss://`` ``url``."""
        # RESP2: see RedisLimiter.from_url (stale pooled connections after a restart).
        client: Redis = Redis.from_url(url, decode_responses=True, protocol=2)
        return cls(client, prefix=prefix)

    def _revoked_key(self, kind: str, item_id: str) -> str:
        return f"{self.prefix}revoked:{kind}:{item_id}"

    async def bump_version(self, account_id: str) -> int:
        try:
            return int(await self._redis.hincrby(self._versions, account_id, 1))
        except RedisError as exc:
            raise StoreError("redis: bump_version failed") from exc

    async def get_versions(self, account_ids: Iterable[str]) -> dict[str, int]:
        ids = list(account_ids)
        if not ids:
            return {}
        try:
            values: list[Any] = await self._redis.hmget(self._versions, ids)
        except RedisError as exc:
            raise StoreError("redis: get_versions failed") from exc
        return {i: int(v) if v is not None else 0 for i, v in zip(ids, values, strict=True)}

    async def revoke(self, kind: str, item_id: str, ttl: timedelta) -> None:
        milliseconds = int(ttl.total_seconds() * 1000)
        if milliseconds <= 0:
            raise ValueError("ttl must be positive")
        try:
            await self._redis.set(self._revoked_key(kind, item_id), "1", px=milliseconds)
        except RedisError as exc:
            raise StoreError("redis: revoke failed") from exc

    async def is_revoked(self, kind: str, item_id: str) -> bool:
        try:
            return bool(await self._redis.exists(self._revoked_key(kind, item_id)))
        except RedisError as exc:
            raise StoreError("redis: is_revoked failed") from exc

    async def publish_change(self, topic: str, item_id: str) -> None:
        try:
            await self._redis.xadd(
                self._changes,
                {"topic": topic, "id": item_id},
                maxlen=self._max_changes,
                approximate=True,
            )
        except RedisError as exc:
            raise StoreError("redis: publish_change failed") from exc

    async def current_cursor(self) -> str:
        try:
            last: list[Any] = list(await self._redis.xrevrange(self._changes, count=1) or [])
        except RedisError as exc:
            raise StoreError("redis: current_cursor failed") from exc
        return str(last[0][0]) if last else _START

    async def changes_since(self, cursor: str) -> tuple[str, list[tuple[str, str]]]:
        try:
            # "(" makes the start exclusive (Redis 6.2+): entries strictly after the cursor.
            entries: list[Any] = list(
                await self._redis.xrange(self._changes, min=f"({cursor}", count=1000) or []
            )
        except RedisError as exc:
            raise StoreError("redis: changes_since failed") from exc
        if not entries:
            return cursor, []
        found = [(str(fields["topic"]), str(fields["id"])) for _, fields in entries]
        return str(entries[-1][0]), found

    async def aclose(self) -> None:
        await self._redis.aclose()
