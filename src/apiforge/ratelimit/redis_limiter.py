"""Rate limits shared by every process and instance, on Redis.

Every limit of one request is decided by **one** Lua script call (``EVALSHA``; ``SCRIPT LOAD``
then a retry only after the server lost its script cache), so a request costs one round trip
whatever the number of limits, and the check is atomic: no other client can run between the
read and the write of any of the request's keys. Nothing is decided from a local copy of a
counter, so N gateway instances share one budget exactly (no lock held only within one
process, Litestar #4700; no periodic sync that double counts or drifts, Kong #11846). The
script takes the time from Redis (``TIME``), not from each instance's clock, and writes each
state with ``SET ... PX``: a key can never outlive its bucket (``INCR`` then ``EXPIRE`` leaves
an immortal key if the process dies in between).

Calls are asyncio all the way (a synchronous Redis client blocks the event loop for every
request in flight, slowapi #130). Checks started in the same event-loop tick are *coalesced*:
they leave as one pipeline, one ``EVALSHA`` per check, each still atomic on its own. One awaited
call per request costs about as much CPU as the rest of a lean request; a pipeline shares that
cost among all requests of the tick.

Failures (refused connection, a socket timeout, a server error) raise
:class:`~apiforge.errors.StoreError` and nothing else, so the layer applies the policy's
``on_store_error`` (deny, allow, or :class:`FallbackLimiter` for a local limit).

Redis Cluster: the keys of one request belong to different principals (an address, a user, a
route, the global budget) and a script may only touch keys of one hash slot. A per-principal
hash tag cannot work, since the global and per-route keys are shared by every principal. Pass
``hash_tag`` to put every key in one slot (one node serves all limits; atomicity holds);
otherwise use a single primary with replicas.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any, ClassVar, Literal

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from apiforge.errors import StoreError
from apiforge.ratelimit.limits import (
    Decision,
    Identities,
    Limit,
    applicable,
    combine,
    verdict,
)
from apiforge.ratelimit.memory import MemoryLimiter

__all__ = ["SCRIPT", "FallbackLimiter", "RedisLimiter"]

SCRIPT: str = resources.files("apiforge.ratelimit").joinpath("ratelimit.lua").read_text("utf-8")
"""The Lua source that decides a request's limits (``ratelimit.lua`` in this package)."""
_SHA: str = hashlib.sha1(SCRIPT.encode(), usedforsecurity=False).hexdigest()
_MICROS = 1_000_000
_FAILURES = (RedisError, OSError, TimeoutError)

_Call = tuple[list[str], list[Limit], tuple[str | int, ...]]


class RedisLimiter:
    """A limiter on Redis: one atomic ``EVALSHA`` per request, coalesced per event-loop tick.

    Args:
        redis: a ``redis.asyncio.Redis``; give it short socket timeouts (see :meth:`from_url`)
            and no retries, so a dead server costs a request milliseconds, not seconds.
        prefix: prepended to every key; lets deployments share a server.
        timeout: seconds a check may wait for Redis before it raises ``StoreError``.
        coalesce: send the checks of one event-loop tick as one pipeline.
        hash_tag: for Redis Cluster, a tag that puts every key in one slot (see the module
            docstring); ``None`` for a single primary.
    """

    shared_across_processes: ClassVar[bool] = True
    """Every process and instance shares one budget: safe with any number of workers."""

    def __init__(
        self,
        redis: Redis,
        prefix: str = "apiforge:rl:",
        *,
        timeout: float = 0.1,
        coalesce: bool = True,
        hash_tag: str | None = None,
    ) -> None:
        if hash_tag is not None and ("{" in hash_tag or "}" in hash_tag or not hash_tag):
            raise ValueError("hash_tag must be non-empty and contain no braces")
        self._redis = redis
        self.prefix = prefix if hash_tag is None else f"{prefix}{{{hash_tag}}}:"
        self._timeout = timeout
        self._coalesce = coalesce
        self._batch: list[tuple[_Call, asyncio.Future[list[Any]] | None]] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def from_url(
        cls,
        url: str,
        prefix: str = "apiforge:rl:",
        *,
        timeout: float = 0.1,
        coalesce: bool = True,
        hash_tag: str | None = None,
        max_connections: int | None = 64,
    ) -> RedisLimiter:
        """Connect lazily to ``redis://`` or ``rediss://`` ``url`` with fail-fast settings.

        Socket and connect timeouts equal ``timeout`` and retries are off: the limiter must
        answer (or raise ``StoreError``) within a request's budget.
        """
        client: Redis = Redis.from_url(
            url,
            # RESP2: with RESP3 redis-py skips its check for closed pooled connections, so
            # after a Redis restart each stale connection fails one more check.
            protocol=2,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            max_connections=max_connections,
        )
        return cls(client, prefix, timeout=timeout, coalesce=coalesce, hash_tag=hash_tag)

    @property
    def redis(self) -> Redis:
        """The client (tests read keys through it)."""
        return self._redis

    async def check_all(
        self, limits: Sequence[Limit], identities: Identities, now: float | None = None
    ) -> Decision:
        """Decide and charge ``limits`` all-or-nothing in one round trip.

        Args:
            limits: the request's limits.
            identities: who the request is.
            now: seconds; ``None`` (production) uses the Redis server's clock. Tests pass
                a time to replay exact scenarios.

        Raises:
            StoreError: Redis is unreachable, too slow or failed.
        """
        found = applicable(limits, identities, self.prefix)
        if not found:
            return combine([])
        keys = [key for _, key in found]
        args: list[str | int] = ["" if now is None else round(now * _MICROS)]
        for limit, _ in found:
            if limit.algorithm == "gcra":
                args += (limit.code, limit.emission, limit.tolerance, limit.cost)
            else:
                args += (limit.code, limit.period_us, limit.rate, limit.cost)
        call: _Call = (keys, [limit for limit, _ in found], tuple(args))
        reply = await (self._coalesced(call) if self._coalesce else self._one(call))
        verdicts = []
        for index, (limit, key) in enumerate(found):
            at = 1 + 4 * index
            allowed, remaining, reset_us, retry_us = reply[at : at + 4]
            verdicts.append(
                verdict(limit, key, allowed == 1, int(remaining), int(reset_us), int(retry_us))
            )
        return combine(verdicts)

    async def _one(self, call: _Call) -> list[Any]:
        keys, _, args = call
        try:
            async with asyncio.timeout(self._timeout):
                try:
                    reply = await self._redis.evalsha(_SHA, len(keys), *keys, *args)
                except NoScriptError:
                    # The server restarted or flushed its script cache.
                    await self._redis.script_load(SCRIPT)
                    reply = await self._redis.evalsha(_SHA, len(keys), *keys, *args)
        except _FAILURES as exc:
            raise StoreError(f"redis: rate-limit check failed ({type(exc).__name__})") from exc
        return list(reply)

    async def _coalesced(self, call: _Call) -> list[Any]:
        batch = self._batch
        if batch is not None:
            future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
            batch.append((call, future))
            return await future
        # The first check of a tick leads: it yields once so the other requests of the tick
        # can join, then sends them all. Alone, it makes a plain call.
        batch = self._batch = [(call, None)]
        try:
            await asyncio.sleep(0)
        finally:
            self._batch = None
            if len(batch) > 1:
                # In a task of its own: a cancelled leader must not strand the others.
                own: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
                batch[0] = (call, own)
                task = asyncio.create_task(self._send(batch))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        if len(batch) == 1:
            return await self._one(call)
        leader_future = batch[0][1]
        if leader_future is None:  # set just above; checked rather than asserted (python -O)
            raise StoreError("rate-limit batch lost its result")
        return await leader_future

    async def _send(self, batch: list[tuple[_Call, asyncio.Future[list[Any]] | None]]) -> None:
        try:
            replies = await self._pipeline([call for call, _ in batch])
        except StoreError as exc:
            for _, future in batch:
                if future is not None and not future.done():
                    future.set_exception(exc)
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if future is None or future.done():
                continue
            if isinstance(reply, BaseException):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _pipeline(self, calls: list[_Call]) -> list[list[Any] | StoreError]:
        try:
            async with asyncio.timeout(self._timeout):
                replies = await self._execute(calls)
                missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
                if missing:
                    await self._redis.script_load(SCRIPT)
                    again = await self._execute([calls[i] for i in missing])
                    for i, reply in zip(missing, again, strict=True):
                        replies[i] = reply
        except _FAILURES as exc:
            raise StoreError(f"redis: rate-limit check failed ({type(exc).__name__})") from exc
        out: list[list[Any] | StoreError] = []
        for reply in replies:
            if isinstance(reply, BaseException):
                error = StoreError(f"redis: rate-limit script failed ({type(reply).__name__})")
                error.__cause__ = reply
                out.append(error)
            else:
                out.append(list(reply))
        return out

    async def _execute(self, calls: list[_Call]) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        for keys, _, args in calls:
            pipe.execute_command("EVALSHA", _SHA, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))

    async def ping(self) -> None:
        """Check that Redis answers; raises ``StoreError`` otherwise."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.ping()
        except _FAILURES as exc:
            raise StoreError(f"redis: ping failed ({type(exc).__name__})") from exc

    async def aclose(self) -> None:
        """Close the client's connections."""
        await self._redis.aclose()


Mode = Literal["primary", "local"]


class FallbackLimiter:
    """The primary (shared) limiter, and an in-process one while the primary is down.

    This is ``on_store_error: local``. While Redis is unreachable each process enforces the
    limits alone, so the budget is per process for that time (the slowapi #226 failure mode,
    accepted knowingly and reported through ``on_switch``). At most once per
    ``probe_interval`` a background ping tries the primary; when it answers, checks go back
    to it with no restart.

    Args:
        primary: the shared limiter (``RedisLimiter``).
        local: the in-process limiter used meanwhile.
        probe_interval: seconds between probes of the primary while on the local limiter.
        on_switch: called with the new mode (``"local"`` or ``"primary"``) and the error that
            caused a switch to local (``None`` when returning), at every switch.
        clock: monotonic seconds, for probe scheduling.
    """

    def __init__(
        self,
        primary: RedisLimiter,
        local: MemoryLimiter,
        *,
        probe_interval: float = 1.0,
        on_switch: Callable[[Mode, StoreError | None], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._primary = primary
        self._local = local
        self._probe_interval = probe_interval
        self._on_switch = on_switch
        self._clock = clock
        self._mode: Mode = "primary"
        self._next_probe = 0.0
        self._probe: asyncio.Task[None] | None = None

    shared_across_processes: ClassVar[bool] = False
    """While on the local limiter the budget is per process; see the class docstring."""

    @property
    def mode(self) -> Mode:
        """Which limiter decides now."""
        return self._mode

    async def check_all(
        self, limits: Sequence[Limit], identities: Identities, now: float | None = None
    ) -> Decision:
        """Decide on the primary, or on the local limiter while the primary is down."""
        if self._mode == "primary":
            try:
                return await self._primary.check_all(limits, identities, now)
            except StoreError as exc:
                self._switch("local", exc)
        elif self._clock() >= self._next_probe and self._probe is None:
            self._next_probe = self._clock() + self._probe_interval
            self._probe = asyncio.create_task(self._try_primary())
        return self._local.check_all_sync(limits, identities, now)

    async def _try_primary(self) -> None:
        try:
            await self._primary.ping()
        except StoreError:
            return
        finally:
            self._probe = None
        if self._mode == "local":
            self._switch("primary", None)

    def _switch(self, mode: Mode, error: StoreError | None) -> None:
        # Requests in flight when Redis died all fail: report the switch once, not per request.
        if mode == self._mode:
            return
        self._mode = mode
        if mode == "local":
            self._next_probe = self._clock() + self._probe_interval
        if self._on_switch is not None:
            self._on_switch(mode, error)

    async def aclose(self) -> None:
        """Stop a pending probe and close both limiters."""
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
        await self._primary.aclose()
        await self._local.aclose()
