"""Exactness across processes: three OS processes, each its own limiter and connections,
fire 200 concurrent requests at one key of a real Redis. The shared budget must hold: never
more than the limit (the failure of in-memory or process-locked limiters, slowapi #226 and
Litestar #4700), and no lost admissions either.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import uuid
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier

import pytest
import redis

from apiforge.ratelimit import Identities, Limit, RedisLimiter

REDIS_URL = os.environ.get("APIFORGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PROCESSES = 3
REQUESTS = 200


def _worker(
    url: str, prefix: str, limit: Limit, requests: int, start: Barrier, out: Queue[int]
) -> None:
    out.put(_admitted(url, prefix, limit, requests, start))


def _admitted(url: str, prefix: str, limit: Limit, requests: int, start: Barrier) -> int:
    async def run() -> int:
        limiter = RedisLimiter.from_url(url, prefix, timeout=5.0)
        try:
            await limiter.redis.ping()  # connected before the start line
            start.wait(timeout=30)
            decisions = await asyncio.gather(
                *(limiter.check_all([limit], Identities(route="hot")) for _ in range(requests))
            )
        finally:
            await limiter.aclose()
        return sum(d.allowed for d in decisions)

    return asyncio.run(run())


@pytest.mark.parametrize("algorithm", ["gcra", "sliding_window"])
@pytest.mark.parametrize("limit_count", [1, 50, 137])
def test_three_processes_share_one_budget(algorithm: str, limit_count: int) -> None:
    probe = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        probe.ping()
    except redis.RedisError as exc:
        probe.close()
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"Redis unreachable ({exc}); CI=true requires it", pytrace=False)
        pytest.skip(f"Redis at {REDIS_URL} is unreachable ({type(exc).__name__})")
    prefix = f"apiforge-test:{uuid.uuid4().hex}:"
    # A long period: refill during the test is nil, so the exact answer is `limit_count`.
    limit = Limit(
        "route",
        rate=limit_count,
        period=3600.0,
        burst=limit_count,
        algorithm=algorithm,  # type: ignore[arg-type]
    )
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    shares = [REQUESTS // PROCESSES + (i < REQUESTS % PROCESSES) for i in range(PROCESSES)]
    out: Queue[int] = context.Queue()
    workers = [
        context.Process(target=_worker, args=(REDIS_URL, prefix, limit, share, barrier, out))
        for share in shares
    ]
    try:
        for worker in workers:
            worker.start()
        admitted = [out.get(timeout=60) for _ in workers]
        for worker in workers:
            worker.join(timeout=10)
            assert worker.exitcode == 0
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()
        for key in probe.scan_iter(match=f"{prefix}*"):
            probe.delete(key)
        probe.close()
    assert sum(shares) == REQUESTS
    total = sum(admitted)
    assert total <= limit_count
    assert total >= 0.98 * limit_count
