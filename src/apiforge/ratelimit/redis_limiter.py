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
request in flight, slowapi #130), on :class:`~apiforge.stores.resp.RespClient`: one pipelined
connection, so the checks of one event-loop tick leave in one write and their replies come back
in one read, each check still one atomic script of its own. Through redis-py one awaited call
cost more CPU than the rest of a protected request.

Failures (refused connection, a socket timeout, a server error) raise
:class:`~apiforge.errors.StoreError` and nothing else, so the layer applies the policy's
``on_store_error`` (deny, allow, or :class:`FallbackLimiter` for a local limit). Each
connection attempt and each reply may take ``timeout``; a reply later than that drops the
connection, and the next check connects again.

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
from apiforge.stores.resp import ReplyError, RespClient, pack

__all__ = ["SCRIPT", "FallbackLimiter", "RedisLimiter"]

SCRIPT: str = resources.files("apiforge.ratelimit").joinpath("ratelimit.lua").read_text("utf-8")
"""The Lua source that decides a request's limits (``ratelimit.lua`` in this package)."""
_SHA: str = hashlib.sha1(SCRIPT.encode(), usedforsecurity=False).hexdigest()
_LOAD = pack("SCRIPT", "LOAD", SCRIPT)
_PING = pack("PING")
_MICROS = 1_000_000
_FAILURES = (OSError, TimeoutError)  # ConnectionError is an OSError


class RedisLimiter:
    """A limiter on Redis: one atomic ``EVALSHA`` per request, pipelined per event-loop tick.

    Args:
        client: the connection to Redis (:meth:`from_url` makes one from the policy's URL).
        prefix: prepended to every key; lets deployments share a server.
        hash_tag: for Redis Cluster, a tag that puts every key in one slot (see the module
            docstring); ``None`` for a single primary.
    """

    shared_across_processes: ClassVar[bool] = True
    """Every process and instance shares one budget: safe with any number of workers."""

    def __init__(
        self, client: RespClient, prefix: str = "apiforge:rl:", *, hash_tag: str | None = None
    ) -> None:
        if hash_tag is not None and ("{" in hash_tag or "}" in hash_tag or not hash_tag):
            raise ValueError("hash_tag must be non-empty and contain no braces")
        self._client = client
        self.prefix = prefix if hash_tag is None else f"{prefix}{{{hash_tag}}}:"
        self._loading: asyncio.Future[Any] | None = None
        """The ``SCRIPT LOAD`` in flight, shared by every check that found the script gone."""

    @classmethod
    def from_url(
        cls,
        url: str,
        prefix: str = "apiforge:rl:",
        *,
        timeout: float = 0.1,
        hash_tag: str | None = None,
    ) -> RedisLimiter:
        """A limiter on ``redis://``, ``rediss://`` or ``redis+sentinel://`` ``url``.

        It connects on the first check. ``timeout`` bounds each connection attempt and each
        reply, and nothing is retried: the limiter answers (or raises ``StoreError``) within a
        request's budget.
        """
        return cls(RespClient.from_url(url, timeout=timeout), prefix, hash_tag=hash_tag)

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
        args: list[str | int] = ["EVALSHA", _SHA, len(found)]
        args += [key for _, key in found]
        args.append("" if now is None else round(now * _MICROS))
        for limit, _ in found:
            args += limit.script_args
        reply = await self._run(pack(*args))
        verdicts = []
        for index, (limit, key) in enumerate(found):
            at = 1 + 4 * index
            allowed, remaining, reset_us, retry_us = reply[at : at + 4]
            verdicts.append(
                verdict(limit, key, allowed == 1, int(remaining), int(reset_us), int(retry_us))
            )
        return combine(verdicts)

    async def _run(self, command: bytes) -> list[Any]:
        client = self._client
        try:
            pending = client.call(command)
            reply = await (pending if pending is not None else client.execute(command))
            if isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT"):
                # The server restarted or flushed its script cache.
                await self._load_script()
                reply = await client.execute(command)
        except _FAILURES as exc:
            raise StoreError(f"redis: rate-limit check failed ({type(exc).__name__})") from exc
        if not isinstance(reply, list):
            error = StoreError(f"redis: rate-limit script failed ({type(reply).__name__})")
            if isinstance(reply, ReplyError):
                error.__cause__ = reply
            raise error
        return reply

    async def _load_script(self) -> None:
        """Load the script once for all the checks in flight that found it missing: after a
        restart, every one of them gets ``NOSCRIPT`` in the same burst of replies."""
        loading = self._loading
        if loading is None or loading.done():  # done: a later flush needs a new load
            loading = self._loading = asyncio.ensure_future(self._client.execute(_LOAD))
        # Shielded: one check cancelled by its deadline must not cancel the others' load.
        await asyncio.shield(loading)

    async def ping(self) -> None:
        """Check that Redis answers; raises ``StoreError`` otherwise."""
        try:
            reply = await self._client.execute(_PING)
        except _FAILURES as exc:
            raise StoreError(f"redis: ping failed ({type(exc).__name__})") from exc
        if isinstance(reply, ReplyError):
            raise StoreError(f"redis: ping failed ({reply})")

    async def aclose(self) -> None:
        """Close the client's connection."""
        await self._client.aclose()


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
