"""One contract suite over every limiter (memory, real Redis), then Redis-only guarantees.

Redis comes from ``APIFORGE_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``) with a
unique key prefix per test; it is never mocked. Tests that count commands or kill the server
start their own ``redis-server`` on a spare port (the ``own_redis`` fixture of
``tests/conftest.py``). An unreachable server or a missing binary skips with the reason, and
fails under ``CI=true`` (``tests/redis_helpers.py``).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot

import apiforge.ratelimit as ratelimit
from apiforge.errors import StoreError
from apiforge.ratelimit import (
    FallbackLimiter,
    Identities,
    Limit,
    Limiter,
    MemoryLimiter,
    RedisLimiter,
    address_group,
    rate_limit,
    rate_limit_policy,
    retry_after,
)
from tests.redis_helpers import REDIS_URL, OwnRedis, delete_prefix, redis_or_skip

TABLE: dict[str, Any] = json.loads(
    (Path(__file__).parent / "vectors" / "gcra_table.json").read_text()
)
T0 = 1_000_000.0  # an injected start time, in seconds


@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[Limiter]:
    if request.param == "memory":
        yield MemoryLimiter()
        return
    probe = redis_or_skip()
    prefix = f"apiforge-test:{uuid.uuid4().hex}:"
    shared = RedisLimiter.from_url(REDIS_URL, prefix, timeout=2.0)
    try:
        yield shared
    finally:
        await shared.aclose()
        delete_prefix(probe, prefix)
        probe.close()


# --- the contract: every limiter, same tests --------------------------------------------


async def test_published_table_through_the_limiter(limiter: Limiter) -> None:
    """The throttled table rows a Limit can express (cost 1..burst), replayed in order."""
    burst = TABLE["burst"]
    for row in TABLE["rows"]:
        if not 1 <= row["cost"] <= burst:
            continue
        limit = Limit("key", rate=1, period=1.0, burst=burst, cost=row["cost"])
        d = await limiter.check_all([limit], Identities(key="k"), now=T0 + row["at_ms"] / 1000)
        retry = math.inf if row["retry_after_ms"] is None else row["retry_after_ms"] / 1000
        got = (d.allowed, d.remaining, d.reset_after, d.retry_after)
        assert got == (row["allowed"], row["remaining"], row["reset_after_ms"] / 1000, retry)


async def test_burst_then_one_per_interval(limiter: Limiter) -> None:
    limit = Limit("address", rate=10, period=1.0, burst=3)
    who = Identities(address="192.0.2.7")
    assert [(await limiter.check_all([limit], who, now=T0)).allowed for _ in range(4)] == [
        True,
        True,
        True,
        False,
    ]
    refused = await limiter.check_all([limit], who, now=T0)
    assert refused.retry_after == pytest.approx(0.1)
    assert (await limiter.check_all([limit], who, now=T0 + 0.1)).allowed
    assert not (await limiter.check_all([limit], who, now=T0 + 0.1)).allowed


async def test_all_or_nothing_across_limits(limiter: Limiter) -> None:
    wide = Limit("address", rate=100, period=1.0, burst=5)
    narrow = Limit("user", rate=1, period=60.0, burst=2)
    who = Identities(address="192.0.2.8", user="alice")
    for _ in range(2):
        assert (await limiter.check_all([wide, narrow], who, now=T0)).allowed
    for _ in range(10):
        refused = await limiter.check_all([wide, narrow], who, now=T0)
        assert not refused.allowed
        assert refused.binding is not None and refused.binding.limit is narrow
        address_verdict = refused.verdicts[0]
        assert address_verdict.allowed and address_verdict.remaining == 3  # not charged
    # The address budget is intact: three more requests from another user pass.
    other = Identities(address="192.0.2.8", user="bob")
    assert [(await limiter.check_all([wide, narrow], other, now=T0)).allowed for _ in range(4)] == [
        True,
        True,
        False,
        False,
    ]
    # Charged: alice's 2 and bob's 2, none of the 12 refusals; one left of the burst of 5.
    last = await limiter.check_all([wide], other, now=T0)
    assert last.allowed and last.remaining == 0
    assert not (await limiter.check_all([wide], other, now=T0)).allowed


async def test_order_of_limits_changes_nothing(limiter: Limiter) -> None:
    a = Limit("route", rate=1, period=60.0, burst=1, name="a")
    b = Limit("global", rate=1, period=60.0, burst=3, name="b")
    who = Identities(route="r")
    assert (await limiter.check_all([b, a], who, now=T0)).allowed
    assert not (await limiter.check_all([a, b], who, now=T0)).allowed
    assert (await limiter.check_all([b], who, now=T0)).remaining == 1


async def test_weighted_cost(limiter: Limiter) -> None:
    heavy = Limit("key", rate=10, period=1.0, burst=10, cost=4)
    who = Identities(key="k")
    decisions = [await limiter.check_all([heavy], who, now=T0) for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, False]
    assert decisions[1].remaining == 2
    assert decisions[2].retry_after == pytest.approx(0.2)


async def test_missing_identity_means_the_limit_does_not_apply(limiter: Limiter) -> None:
    per_user = Limit("user", rate=1, period=60.0, burst=1)
    anonymous = Identities(address="192.0.2.9")
    for _ in range(3):
        d = await limiter.check_all([per_user], anonymous, now=T0)
        assert d.allowed and d.verdicts == () and d.binding is None


async def test_ipv6_grouped_by_64_and_mapped_ipv4_normalized(limiter: Limiter) -> None:
    limit = Limit("address", rate=1, period=60.0, burst=2)
    assert (await limiter.check_all([limit], Identities("2001:db8:1:2::1"), now=T0)).allowed
    assert (await limiter.check_all([limit], Identities("2001:db8:1:2:ffff::9"), now=T0)).allowed
    assert not (await limiter.check_all([limit], Identities("2001:db8:1:2::7"), now=T0)).allowed
    assert (await limiter.check_all([limit], Identities("2001:db8:1:3::1"), now=T0)).allowed
    assert (await limiter.check_all([limit], Identities("::ffff:198.51.100.4"), now=T0)).allowed
    assert (await limiter.check_all([limit], Identities("198.51.100.4"), now=T0)).allowed
    assert not (await limiter.check_all([limit], Identities("198.51.100.4"), now=T0)).allowed


async def test_sliding_window_limit(limiter: Limiter) -> None:
    limit = Limit("key", rate=4, period=10.0, burst=4, algorithm="sliding_window")
    who = Identities(key="k")
    start = T0 - T0 % 10  # a window boundary
    assert [(await limiter.check_all([limit], who, now=start)).allowed for _ in range(5)] == [
        True,
        True,
        True,
        True,
        False,
    ]
    refused = await limiter.check_all([limit], who, now=start + 5)
    assert refused.retry_after == pytest.approx(7.5)  # next window, a quarter slid out
    assert (await limiter.check_all([limit], who, now=start + 12.5)).allowed


async def test_mixed_algorithms_in_one_request(limiter: Limiter) -> None:
    g = Limit("address", rate=1, period=60.0, burst=1)
    s = Limit("global", rate=5, period=60.0, burst=5, algorithm="sliding_window")
    assert (await limiter.check_all([g, s], Identities("192.0.2.1"), now=T0)).allowed
    refused = await limiter.check_all([g, s], Identities("192.0.2.1"), now=T0)
    assert not refused.allowed and refused.verdicts[1].remaining == 4


# --- the model and the headers ------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": 0}, "at least 1"),
        ({"burst": 2, "cost": 3}, "ever pass"),
        ({"period": 0.0}, "positive"),
        ({"period": math.inf}, "positive"),
        ({"algorithm": "sliding_window", "burst": 3}, "set burst"),
        ({"name": "a:b"}, "name"),
        ({"algorithm": "leaky"}, "algorithm"),
    ],
)
def test_unworkable_limits_are_refused(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"scope": "key", "rate": 5, "period": 1.0, "burst": 5} | kwargs
    with pytest.raises(ValueError, match=message):
        Limit(**args)


def test_address_group() -> None:
    assert address_group("203.0.113.9") == "203.0.113.9"
    assert address_group("::ffff:203.0.113.9") == "203.0.113.9"
    assert address_group("2001:db8:a:b:c:d:e:f") == "2001:db8:a:b::/64"
    assert address_group("[2001:db8::1%eth0]") == "2001:db8::/64"


async def test_headers_follow_the_draft() -> None:
    user = Limit("user", rate=1, period=6.0, burst=10)
    window = Limit("route", rate=100, period=60.0, burst=100, algorithm="sliding_window")
    assert rate_limit_policy([user, window]) == '"user";q=10;w=60, "route";q=100;w=60'
    memory = MemoryLimiter()
    decision = await memory.check_all([user], Identities(user="u"), now=T0 + 0.5)
    assert rate_limit(decision.binding) == '"user";r=9;t=6'
    assert rate_limit((await memory.check_all([], Identities(), now=T0)).binding) is None
    assert retry_after(0.2) == "1"
    assert retry_after(1.0) == "1"
    assert retry_after(1.0001) == "2"
    assert retry_after(math.inf) is None


def test_public_surface() -> None:
    assert sorted(ratelimit.__all__) == sorted(
        [
            "NEVER", "Decision", "FallbackLimiter", "GcraOutcome", "Identities", "Limit",
            "Limiter", "MemoryLimiter", "RedisLimiter", "Scope", "SlidingOutcome", "Verdict",
            "address_group", "applicable", "check_all", "gcra", "rate_limit",
            "rate_limit_policy", "retry_after", "sliding_window",
        ]
    )  # fmt: skip
    for name in ratelimit.__all__:
        assert getattr(ratelimit, name) is not None
    assert MemoryLimiter.shared_across_processes is False
    assert RedisLimiter.shared_across_processes is True


def test_memory_states_are_swept() -> None:
    memory = MemoryLimiter(min_sweep=100)
    limit = Limit("address", rate=1, period=1.0, burst=1)
    for i in range(1000):
        memory.check_all_sync([limit], Identities(f"10.0.{i // 250}.{i % 250}"), now=T0 + i)
    assert len(memory) <= 200


# --- Redis only ---------------------------------------------------------------------------


@pytest.fixture
async def shared() -> AsyncIterator[tuple[RedisLimiter, redis.Redis]]:
    probe = redis_or_skip()
    prefix = f"apiforge-test:{uuid.uuid4().hex}:"
    limiter = RedisLimiter.from_url(REDIS_URL, prefix, timeout=2.0)
    try:
        yield limiter, probe
    finally:
        await limiter.aclose()
        delete_prefix(probe, prefix)
        probe.close()


async def test_every_written_key_expires(shared: tuple[RedisLimiter, redis.Redis]) -> None:
    limiter, probe = shared
    limits = [
        Limit("address", rate=5, period=2.0, burst=5),
        Limit("user", rate=3, period=30.0, burst=3, algorithm="sliding_window"),
        Limit("global", rate=10, period=10.0, burst=50),
    ]
    for i in range(20):
        await limiter.check_all(limits, Identities(f"192.0.2.{i % 4}", user=f"u{i % 3}"))
    keys = list(probe.scan_iter(match=f"{limiter.prefix}*"))
    assert len(keys) == 4 + 3 + 1
    for key in keys:
        ttl = probe.pttl(key)
        assert 0 < ttl <= 60_000, key  # never immortal (-1), never longer than two windows


async def test_coalesced_checks_are_exact(shared: tuple[RedisLimiter, redis.Redis]) -> None:
    limiter, _ = shared
    limit = Limit("route", rate=1, period=3600.0, burst=40)
    results = await asyncio.gather(
        *(limiter.check_all([limit], Identities(route="r")) for _ in range(100))
    )
    assert sum(d.allowed for d in results) == 40
    assert sorted(d.remaining for d in results if d.allowed) == list(range(40))


async def test_hash_tag_puts_every_key_in_one_slot(
    shared: tuple[RedisLimiter, redis.Redis],
) -> None:
    _, probe = shared
    prefix = f"apiforge-test:{uuid.uuid4().hex}:"
    tagged = RedisLimiter.from_url(REDIS_URL, prefix, hash_tag="rl", timeout=2.0)
    try:
        limits = [
            Limit("address", rate=5, period=2.0, burst=5),
            Limit("user", rate=3, period=30.0, burst=3),
            Limit("global", rate=1000, period=1.0, burst=50),
        ]
        assert (await tagged.check_all(limits, Identities("192.0.2.1", user="u"))).allowed
        keys = list(probe.scan_iter(match=f"{prefix}*"))
        assert len(keys) == 3
        assert len({key_slot(k) for k in keys}) == 1
    finally:
        await tagged.aclose()
        delete_prefix(probe, prefix)


# --- a private redis-server: command counts and faults ------------------------------------


async def test_one_evalsha_per_check_and_nothing_else(own_redis: OwnRedis) -> None:
    limiter = RedisLimiter.from_url(own_redis.url, "rl:", timeout=2.0)
    admin = redis.Redis(port=own_redis.port)
    limits = [
        Limit("address", rate=1000, period=1.0, burst=1000),
        Limit("user", rate=1000, period=1.0, burst=1000),
        Limit("global", rate=100_000, period=1.0, burst=100_000),
    ]
    try:
        await limiter.check_all(limits, Identities("192.0.2.1", user="u"))  # loads the script
        admin.config_resetstat()
        for i in range(30):
            await limiter.check_all(limits, Identities(f"192.0.2.{i}", user="u"))
        await asyncio.gather(
            *(limiter.check_all(limits, Identities(f"192.0.2.{i}", user="u")) for i in range(64))
        )
        stats = {
            name.removeprefix("cmdstat_"): value
            for name, value in admin.info("commandstats").items()
        }
    finally:
        await limiter.aclose()
        admin.close()
    checks = 30 + 64
    assert stats["evalsha"]["calls"] == checks
    assert stats["evalsha"]["failed_calls"] == 0
    # Inside the script: one TIME, one GET per limit, one SET per limit.
    assert stats["time"]["calls"] == checks
    assert stats["get"]["calls"] == 3 * checks
    assert stats["set"]["calls"] == 3 * checks
    sent_by_us = set(stats) - {"evalsha", "time", "get", "set", "config|resetstat"}
    assert sent_by_us <= {"info"}, sent_by_us


async def test_a_flushed_script_is_loaded_once_for_every_check_in_flight(
    own_redis: OwnRedis,
) -> None:
    limiter = RedisLimiter.from_url(own_redis.url, "rl:", timeout=2.0)
    admin = redis.Redis(port=own_redis.port)
    limits = [Limit("address", rate=1000, period=1.0, burst=1000)]
    try:
        for _ in range(2):  # the first flush, then a second one: each loads the script again
            admin.script_flush()
            admin.config_resetstat()
            decisions = await asyncio.gather(
                *(limiter.check_all(limits, Identities(f"192.0.2.{i}")) for i in range(50))
            )
            assert all(decision.allowed for decision in decisions)
            stats = {
                name.removeprefix("cmdstat_"): value
                for name, value in admin.info("commandstats").items()
            }
            assert stats["script|load"]["calls"] == 1
            assert stats["evalsha"]["calls"] == 100  # 50 refused with NOSCRIPT, 50 answered
    finally:
        await limiter.aclose()
        admin.close()


async def test_store_failure_and_fallback_round_trip(own_redis: OwnRedis) -> None:
    primary = RedisLimiter.from_url(own_redis.url, "rl:", timeout=0.1)
    switches: list[tuple[str, StoreError | None]] = []
    fallback = FallbackLimiter(
        primary,
        MemoryLimiter(),
        probe_interval=0.05,
        on_switch=lambda mode, error: switches.append((mode, error)),
    )
    limit = Limit("route", rate=1000, period=3600.0, burst=1000)
    who = Identities(route="r")
    try:
        for _ in range(20):
            assert (await fallback.check_all([limit], who)).allowed
        assert fallback.mode == "primary"

        own_redis.kill()
        errors: list[BaseException] = []
        for _ in range(5):
            try:
                await primary.check_all([limit], who)
            except Exception as exc:
                errors.append(exc)
        assert len(errors) == 5 and all(type(e) is StoreError for e in errors)
        started = time.monotonic()
        results = await asyncio.gather(*(fallback.check_all([limit], who) for _ in range(50)))
        assert time.monotonic() - started < 1.0  # fails fast, no retries against a dead server
        assert all(d.allowed for d in results)
        assert str(fallback.mode) == "local"  # str(): mypy narrowed it at the first assert
        assert [m for m, _ in switches] == ["local"] and isinstance(switches[0][1], StoreError)

        own_redis.start()  # the same port: the same URL comes back, script cache empty
        deadline = time.monotonic() + 5
        while str(fallback.mode) == "local" and time.monotonic() < deadline:
            await fallback.check_all([limit], who)
            await asyncio.sleep(0.02)
        assert [m for m, _ in switches] == ["local", "primary"]
        for _ in range(5):
            assert (await fallback.check_all([limit], who)).allowed
        check = redis.Redis(port=own_redis.port)
        try:
            assert check.exists("rl:route:g:r") == 1  # decided on Redis again
        finally:
            check.close()
    finally:
        await fallback.aclose()


async def test_checks_pass_once_a_restarted_redis_answers_the_probe(own_redis: OwnRedis) -> None:
    """What the layer and FallbackLimiter assume: a successful ping means checks work again.

    Otherwise a recovery is followed by one more StoreError per dead pooled connection: the
    layer switches down again (deny answers 503 another second, a second pair of events).
    """
    limiter = RedisLimiter.from_url(own_redis.url, "rl:", timeout=0.5)
    limit = Limit("route", rate=1000, period=3600.0, burst=1000)
    who = Identities(route="r")
    try:
        # Four checks at once: four pooled connections, idle when the server dies.
        await asyncio.gather(*(limiter.check_all([limit], who) for _ in range(4)))
        own_redis.kill()
        with pytest.raises(StoreError):
            await limiter.check_all([limit], who)
        own_redis.start()
        await limiter.ping()  # the probe: Redis answers
        results = await asyncio.gather(
            *(limiter.check_all([limit], who) for _ in range(4)), return_exceptions=True
        )
        assert [type(result).__name__ for result in results] == ["Decision"] * 4
    finally:
        await limiter.aclose()


def test_memory_fast_path_decides_exactly_as_the_general_path() -> None:
    """The inlined all-admitted GCRA path gives the numbers `decide` gives, state included."""
    import random

    from apiforge.ratelimit.limits import applicable as keys_of
    from apiforge.ratelimit.limits import decide as general

    rng = random.Random(7)
    for _ in range(300):
        limits = _random_limits(rng)
        limits = [Limit(lim.scope, lim.rate, lim.period, lim.burst,
                        rng.randint(1, lim.burst), name=lim.name) for lim in limits]
        ids = Identities(address="192.0.2.1", user="u")
        fast = MemoryLimiter()
        now = 1000.0
        for _ in range(rng.randint(1, 30)):
            now += rng.choice([0.0, 0.001, 0.5, 3.0])
            found = keys_of(limits, ids)
            now_us = round(now * 1_000_000)
            stored = [fast._states[k][1] if k in fast._states and fast._states[k][0] > now_us
                      else None for _, k in found]
            expected, writes = general(found, stored, now_us)
            got = fast.check_all_sync(limits, ids, now)
            assert got == expected
            if expected.allowed:
                for key, state, ttl in writes:
                    assert fast._states[key] == (now_us + ttl, state)


def test_admit_charges_as_check_all_and_names_its_binding_limit() -> None:
    """The layer's hot path: same charges, same binding verdict, and None where it declines."""
    import random

    from apiforge.ratelimit.limits import applicable as keys_of

    rng = random.Random(11)
    for _ in range(200):
        limits = _random_limits(rng)
        ids = Identities(address="192.0.2.1", user="u")
        clock = _Clock()
        lean = MemoryLimiter(clock)
        full = MemoryLimiter(clock)
        for _ in range(rng.randint(1, 30)):
            clock.now += rng.choice([0.0, 0.001, 0.5, 3.0])
            before = dict(lean._states)
            binding = lean.admit(keys_of(limits, ids))
            decision = full.check_all_sync(limits, ids)
            if binding is None:  # declined: nothing charged, the general path decides
                assert lean._states == before
                lean.check_all_sync(limits, ids)
            else:
                assert decision.allowed and binding == decision.binding
            assert lean._states == full._states


def _random_limits(rng: Any) -> list[Limit]:
    """One to three GCRA limits of random scope, rate, period and burst."""
    return [Limit(rng.choice(["address", "user", "global"]), rng.randint(1, 50),
                  rng.choice([1.0, 7.5, 60.0]), rng.randint(1, 20), name=f"l{n}")
            for n in range(rng.randint(1, 3))]


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now
