"""Password-guessing protection: a back-off per (login name, client address).

After ``free`` failed logins for one name from one address, each further failure doubles the
wait before the next attempt is even looked at (``base``, ``2 * base``, … up to ``ceiling``).
A success resets the pair.

Why this shape:

- The key is the name *as typed*, whether or not an account has it, so an unknown name is
  throttled exactly like a known one: a 429 never tells an attacker which accounts exist.
- The key includes the address (IPv6 by /64): an attacker elsewhere can slow only their own
  attempts, never lock the real owner out from the owner's own address. Guessing across many
  names from one address is the per-address rate limit's job, on the same route.
- With Redis the state is shared by every instance, written by one atomic script that also
  sets its expiry, so a dead process can never leave a key that blocks forever.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

from apiforge.errors import StoreError
from apiforge.ratelimit.limits import address_group

__all__ = ["GuessingBackoff", "MemoryBackoffStore", "RedisBackoffStore", "backoff_key"]

_MICROS = 1_000_000

# KEYS[1]: the pair's key. ARGV: free failures, base µs, ceiling µs, memory µs.
# Returns the µs to wait before the next attempt (0: none). Time is Redis's own.
_FAILED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local failures = tonumber(redis.call('HGET', KEYS[1], 'f') or '0') + 1
local free, base, ceiling, memory = tonumber(ARGV[1]), tonumber(ARGV[2]),
  tonumber(ARGV[3]), tonumber(ARGV[4])
local wait = 0
if failures > free then
  wait = math.min(ceiling, base * 2 ^ (failures - free - 1))
end
redis.call('HSET', KEYS[1], 'f', failures, 'u', now + wait)
redis.call('PEXPIRE', KEYS[1], math.floor((wait + memory) / 1000) + 1)
return wait
"""
_WAIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local until_ = tonumber(redis.call('HGET', KEYS[1], 'u') or '0')
if until_ > now then return until_ - now end
return 0
"""


def backoff_key(username: str, address: str) -> str:
    """The stored key of a (name, address) pair; the name is hashed, never stored."""
    name = hashlib.sha256(username.strip().casefold().encode("utf-8")).hexdigest()[:32]
    return f"{name}:{address_group(address)}"


class BackoffStore(Protocol):
    """Where back-off states live (memory, or Redis shared by every instance)."""

    async def wait(self, key: str) -> float:
        """Seconds to wait before the pair may try again (0: now)."""
        ...

    async def failed(self, key: str, free: int, base: float, ceiling: float) -> float:
        """Count a failure; the wait it starts, in seconds."""
        ...

    async def reset(self, key: str) -> None:
        """Forget the pair (a successful login)."""
        ...


class MemoryBackoffStore:
    """In-process back-off states (one process; bounded by sweeping expired pairs)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 memory: float = 3600.0) -> None:
        self._clock = clock
        self._memory = memory
        self._pairs: dict[str, tuple[int, float, float]] = {}  # failures, until, forget at
        self._sweep_at = 10_000

    async def wait(self, key: str) -> float:
        entry = self._pairs.get(key)
        return 0.0 if entry is None else max(0.0, entry[1] - self._clock())

    async def failed(self, key: str, free: int, base: float, ceiling: float) -> float:
        now = self._clock()
        entry = self._pairs.get(key)
        failures = (entry[0] if entry is not None and entry[2] > now else 0) + 1
        wait = 0.0 if failures <= free else min(ceiling, base * 2 ** (failures - free - 1))
        self._pairs[key] = (failures, now + wait, now + wait + self._memory)
        if len(self._pairs) > self._sweep_at:
            self._pairs = {k: v for k, v in self._pairs.items() if v[2] > now}
            self._sweep_at = max(10_000, 2 * len(self._pairs))
        return wait

    async def reset(self, key: str) -> None:
        self._pairs.pop(key, None)


class RedisBackoffStore:
    """Back-off states in Redis: one atomic script per failure, Redis's clock, keys that expire.

    Args:
        redis: a ``redis.asyncio.Redis`` with short timeouts.
        prefix: prepended to every key.
        memory: seconds a pair's failure count is remembered after its last wait ends.
    """

    def __init__(self, redis: Any, prefix: str = "apiforge:bo:", memory: float = 3600.0) -> None:
        self._redis = redis
        self._prefix = prefix
        self._memory = memory
        self._failed = redis.register_script(_FAILED)
        self._wait = redis.register_script(_WAIT)

    async def wait(self, key: str) -> float:
        micros = await self._call(self._wait, key)
        return int(micros) / _MICROS

    async def failed(self, key: str, free: int, base: float, ceiling: float) -> float:
        micros = await self._call(self._failed, key, free, round(base * _MICROS),
                                  round(ceiling * _MICROS), round(self._memory * _MICROS))
        return int(micros) / _MICROS

    async def reset(self, key: str) -> None:
        try:
            await self._redis.delete(self._prefix + key)
        except Exception as exc:
            raise StoreError(f"backoff store failed: {type(exc).__name__}") from exc

    async def _call(self, script: Any, key: str, *args: int) -> Any:
        try:
            return await script(keys=[self._prefix + key], args=list(args))
        except Exception as exc:  # refused connection, timeout, server error
            raise StoreError(f"backoff store failed: {type(exc).__name__}") from exc


class GuessingBackoff:
    """The back-off policy over a store.

    Args:
        store: where states live.
        free: failures allowed before any wait.
        base: seconds of the first wait.
        ceiling: the longest wait, in seconds.
    """

    def __init__(self, store: BackoffStore, *, free: int = 3, base: float = 1.0,
                 ceiling: float = 900.0) -> None:
        if free < 0 or not (0 < base <= ceiling) or not math.isfinite(ceiling):
            raise ValueError("need free >= 0 and 0 < base <= ceiling")
        self.store = store
        self.free = free
        self.base = base
        self.ceiling = ceiling

    async def wait(self, username: str, address: str) -> float:
        """Seconds before this name may be tried again from this address (0: now)."""
        return await self.store.wait(backoff_key(username, address))

    async def failed(self, username: str, address: str) -> float:
        """Count a failed login; returns the wait it starts."""
        return await self.store.failed(backoff_key(username, address), self.free, self.base,
                                       self.ceiling)

    async def succeeded(self, username: str, address: str) -> None:
        """A successful login resets the pair."""
        await self.store.reset(backoff_key(username, address))
