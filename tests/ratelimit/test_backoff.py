"""Guessing back-off per (name, address): doubling waits, reset on success, no owner lock-out."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from apiforge.errors import StoreError
from apiforge.ratelimit.backoff import (
    GuessingBackoff,
    MemoryBackoffStore,
    RedisBackoffStore,
    backoff_key,
)
from tests.contract.conftest import REDIS_URL, unavailable


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_waits_double_after_the_free_failures_and_success_resets() -> None:
    clock = Clock()
    backoff = GuessingBackoff(MemoryBackoffStore(clock), free=3, base=1.0, ceiling=8.0)
    waits = [await backoff.failed("ada", "10.0.0.1") for _ in range(7)]
    assert waits == [0, 0, 0, 1, 2, 4, 8]
    assert await backoff.wait("ada", "10.0.0.1") == 8
    clock.now += 8
    assert await backoff.wait("ada", "10.0.0.1") == 0
    assert await backoff.failed("ada", "10.0.0.1") == 8  # the count is remembered
    await backoff.succeeded("ada", "10.0.0.1")
    assert await backoff.wait("ada", "10.0.0.1") == 0
    assert await backoff.failed("ada", "10.0.0.1") == 0


async def test_an_attacker_elsewhere_cannot_lock_the_owner_out() -> None:
    backoff = GuessingBackoff(MemoryBackoffStore(Clock()), free=1)
    for _ in range(20):
        await backoff.failed("ada", "203.0.113.9")
    assert await backoff.wait("ada", "203.0.113.9") > 0
    assert await backoff.wait("ada", "198.51.100.7") == 0  # the owner's own address


def test_unknown_and_known_names_share_one_key_shape() -> None:
    assert backoff_key("Ada ", "2001:db8::1") == backoff_key("ada", "2001:db8::2")
    assert "ada" not in backoff_key("ada", "10.0.0.1")  # the name is hashed
    assert backoff_key("nobody", "10.0.0.1") != backoff_key("ada", "10.0.0.1")


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL, socket_timeout=1)
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        unavailable("Redis", exc)
    yield client
    await client.aclose()


async def test_redis_store_is_shared_atomic_and_expires(redis_client: aioredis.Redis) -> None:
    prefix = f"test:bo:{uuid.uuid4().hex}:"
    first = GuessingBackoff(RedisBackoffStore(redis_client, prefix, memory=5), free=2,
                            base=1.0, ceiling=4.0)
    second = GuessingBackoff(RedisBackoffStore(redis_client, prefix, memory=5), free=2,
                             base=1.0, ceiling=4.0)
    waits = [await (first if n % 2 else second).failed("ada", "10.0.0.1") for n in range(5)]
    assert waits == [0, 0, 1, 2, 4]
    assert 3 < await second.wait("ada", "10.0.0.1") <= 4
    key = prefix + backoff_key("ada", "10.0.0.1")
    ttl = await redis_client.pttl(key)
    assert 0 < ttl <= 10_000  # the wait plus the memory: never immortal
    await first.succeeded("ada", "10.0.0.1")
    assert await redis_client.exists(key) == 0


async def test_redis_failure_is_a_store_error() -> None:
    client = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2,
                            retry=Retry(NoBackoff(), 0))
    backoff = GuessingBackoff(RedisBackoffStore(client))
    with pytest.raises(StoreError):
        await backoff.wait("ada", "10.0.0.1")
    with pytest.raises(StoreError):
        await backoff.failed("ada", "10.0.0.1")
    await client.aclose()
