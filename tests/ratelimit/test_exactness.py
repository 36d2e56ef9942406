"""Exactness across processes: three OS processes, each its own limiter and connections,
fire 200 concurrent requests at one key of a real Redis. The shared budget must hold: never
more than the limit (the failure of in-memory or process-locked limiters, slowapi #226 and
Litestar #4700), and no lost admissions either.

Every scenario runs in the same three processes (started once: starting a process costs more
than all the scenarios), and a barrier lines the processes up before each one.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import uuid
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier

from apiforge.ratelimit import Identities, Limit, RedisLimiter
from tests.redis_helpers import REDIS_URL, delete_prefix, redis_or_skip

PROCESSES = 3
REQUESTS = 200
# A long period: refill during the test is nil, so the exact answer is the limit itself.
SCENARIOS = [
    Limit("route", rate=n, period=3600.0, burst=n, algorithm=algorithm)
    for algorithm in ("gcra", "sliding_window")
    for n in (1, 50, 137, 199)
]


def _worker(
    url: str, prefix: str, requests: int, start: Barrier, out: Queue[tuple[int, list[int]]]
) -> None:
    async def run() -> list[int]:
        limiter = RedisLimiter.from_url(url, prefix, timeout=5.0)
        counts: list[int] = []
        try:
            await limiter.ping()  # connected before the start line
            for index, limit in enumerate(SCENARIOS):
                start.wait(timeout=30)
                who = Identities(route=f"hot-{index}")
                decisions = await asyncio.gather(
                    *(limiter.check_all([limit], who) for _ in range(requests))
                )
                counts.append(sum(d.allowed for d in decisions))
        finally:
            await limiter.aclose()
        return counts

    out.put((os.getpid(), asyncio.run(run())))


def test_three_processes_share_one_budget() -> None:
    probe = redis_or_skip()
    prefix = f"apiforge-test:{uuid.uuid4().hex}:"
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    out: Queue[tuple[int, list[int]]] = context.Queue()
    shares = [REQUESTS // PROCESSES + (i < REQUESTS % PROCESSES) for i in range(PROCESSES)]
    workers = [
        context.Process(target=_worker, args=(REDIS_URL, prefix, share, barrier, out))
        for share in shares
    ]
    try:
        for worker in workers:
            worker.start()
        results = [out.get(timeout=60) for _ in workers]
        for worker in workers:
            worker.join(timeout=10)
            assert worker.exitcode == 0
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()
        delete_prefix(probe, prefix)
        probe.close()
    assert sum(shares) == REQUESTS
    assert len({pid for pid, _ in results}) == PROCESSES
    for index, limit in enumerate(SCENARIOS):
        total = sum(counts[index] for _, counts in results)
        assert total <= limit.burst, (limit, total)
        assert total >= 0.98 * limit.burst, (limit, total)
