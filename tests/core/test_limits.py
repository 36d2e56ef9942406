"""Body size limits, slow bodies, deadlines and header limits, driven at the ASGI level."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from apiforge.core.pipeline import Pipeline
from apiforge.events import EventBus, MemorySink
from apiforge.policy import load_policy


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"size": len(body)})


async def slow(request: Request) -> JSONResponse:
    await asyncio.sleep(5)
    return JSONResponse({})


async def started_then_slow(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"partial", "more_body": True})
    await asyncio.sleep(5)
    await send({"type": "http.response.body", "body": b"rest"})


def app() -> Starlette:
    return Starlette(routes=[Route("/echo", echo, methods=["POST"]), Route("/slow", slow)])


POLICY: dict[str, Any] = {
    "routes": {
        "POST /echo": {"limits": {"max_body": 100}, "timeouts": {"body_idle": 0.3}},
        "GET /slow": {"timeouts": {"request": 0.3}},
        "GET /started": {"timeouts": {"request": 0.3}},
    },
    "limits": {"max_header": 200, "max_headers_total": 400},
    "events": {"sink": "none"},
}


async def call(
    asgi: Any, method: str, path: str, chunks: Sequence[bytes] = (),
    headers: Sequence[tuple[bytes, bytes]] = (), pause: float = 0.0,
) -> tuple[int, dict[bytes, bytes], bytes, list[dict[str, Any]]]:
    """Drive one request through ``asgi``; returns status, headers, body and raw messages."""
    pending = list(chunks)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if pending:
            if pause:
                await asyncio.sleep(pause)
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending)}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "method": method, "path": path, "raw_path": path.encode(),
        "query_string": b"", "headers": list(headers), "scheme": "http",
        "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80), "asgi": {"version": "3.0"},
        "http_version": "1.1", "root_path": "",
    }
    await asyncio.wait_for(asgi(scope, receive, send), 5)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body, sent


def pipeline(policy: dict[str, Any] = POLICY, target: Any = None,
             events: EventBus | None = None) -> Pipeline:
    return Pipeline(target or app(), load_policy(policy), events=events)


async def test_body_within_limit_reaches_app() -> None:
    status, _, body, _ = await call(pipeline(), "POST", "/echo", [b"a" * 60, b"b" * 40],
                                    [(b"transfer-encoding", b"chunked")])
    assert status == 200 and orjson.loads(body) == {"size": 100}


async def test_declared_length_over_limit_refused_before_reading() -> None:
    status, headers, body, _ = await call(pipeline(), "POST", "/echo", [b"x" * 500],
                                          [(b"content-length", b"500")])
    assert status == 413 and headers[b"content-type"] == b"application/problem+json"
    assert orjson.loads(body)["code"] == "payload_too_large"


async def test_chunked_body_refused_as_soon_as_it_crosses() -> None:
    chunks = [b"x" * 60] * 1000  # 60 KB offered; refused after the second chunk
    status, _, body, _ = await call(pipeline(), "POST", "/echo", chunks,
                                    [(b"transfer-encoding", b"chunked")])
    assert status == 413 and orjson.loads(body)["code"] == "payload_too_large"


async def test_lying_content_length_gains_nothing() -> None:
    status, _, _, _ = await call(pipeline(), "POST", "/echo", [b"x" * 80, b"x" * 80],
                                 [(b"content-length", b"10")])
    assert status == 413


@pytest.mark.parametrize("value", [b"+5", b"0x10", b"5, 5", b"-1", b"1" * 30, b""])
async def test_malformed_content_length_refused(value: bytes) -> None:
    status, _, body, _ = await call(pipeline(), "POST", "/echo", [b"x"],
                                    [(b"content-length", value)])
    assert status == 400 and orjson.loads(body)["code"] == "bad_content_length"


async def test_slow_body_gets_408() -> None:
    began = time.monotonic()
    status, _, body, _ = await call(pipeline(), "POST", "/echo", [b"a", b"b", b"c"],
                                    [(b"transfer-encoding", b"chunked")], pause=1.0)
    assert status == 408 and orjson.loads(body)["code"] == "request_timeout"
    assert time.monotonic() - began < 2


async def test_deadline_gives_504_and_cancels_the_handler() -> None:
    sink = MemorySink()
    bus = EventBus([sink])
    bus.start()
    began = time.monotonic()
    status, _, body, _ = await call(pipeline(events=bus), "GET", "/slow")
    assert status == 504 and orjson.loads(body)["code"] == "deadline_exceeded"
    assert time.monotonic() - began < 1.5
    bus.flush()
    assert [e["event"] for e in sink.events] == ["apiforge_deadline_exceeded"]
    bus.close()


async def test_deadline_after_response_started_aborts() -> None:
    status, _, body, sent = await call(pipeline(target=started_then_slow), "GET", "/started")
    assert status == 200 and body == b"partial"
    # The response is never completed, so the server drops the connection.
    assert all(m.get("more_body") for m in sent if m["type"] == "http.response.body")


async def test_header_limits_431() -> None:
    status, _, body, _ = await call(pipeline(), "GET", "/slow", headers=[(b"x-big", b"a" * 300)])
    assert status == 431 and orjson.loads(body)["code"] == "headers_too_large"
    many = [(f"x-h{i}".encode(), b"a" * 100) for i in range(5)]
    status, _, _, _ = await call(pipeline(), "GET", "/slow", headers=many)
    assert status == 431
    # A total limit below the one-header limit still holds.
    tight = {**POLICY, "limits": {"max_header": 400, "max_headers_total": 250}}
    few = [(f"x-h{i}".encode(), b"a" * 100) for i in range(3)]
    status, _, _, _ = await call(pipeline(tight), "GET", "/slow", headers=few)
    assert status == 431


async def test_report_mode_lets_through_and_reports() -> None:
    sink = MemorySink()
    bus = EventBus([sink])
    bus.start()
    policy = {**POLICY, "limits": {**POLICY["limits"], "mode": "report"},
              "routes": {"POST /echo": {"limits": {"max_body": 10, "mode": "report"}}}}
    status, _, body, _ = await call(pipeline(policy, events=bus), "POST", "/echo", [b"x" * 50],
                                    [(b"content-length", b"50"), (b"x-big", b"a" * 300)])
    assert status == 200 and orjson.loads(body) == {"size": 50}
    bus.flush()
    assert {e["outcome"] for e in sink.events} == {"report"}
    assert len(sink.events) == 2
    bus.close()


async def test_deadline_interrupts_database_work_in_a_thread(tmp_path: Any) -> None:
    """The handler runs a long SQLite query in a thread; the deadline stops the query too."""
    import sqlite3
    import threading

    from starlette.concurrency import run_in_threadpool

    from apiforge.core.deadlines import sqlite_progress_handler

    outcome: list[str] = []
    finished = threading.Event()

    def long_query() -> None:
        db = sqlite3.connect(tmp_path / "slow.db", check_same_thread=False)
        db.set_progress_handler(sqlite_progress_handler, 10_000)
        try:
            db.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
                       "WHERE i < 1000000000) SELECT count(*) FROM n").fetchone()
            outcome.append("completed")
        except sqlite3.OperationalError as exc:
            outcome.append(str(exc))
        finally:
            db.close()
            finished.set()

    async def handler(request: Request) -> JSONResponse:
        await run_in_threadpool(long_query)
        return JSONResponse({})

    target = Starlette(routes=[Route("/slow", handler)])
    began = time.monotonic()
    status, _, body, _ = await call(pipeline(target=target), "GET", "/slow")
    assert status == 504 and orjson.loads(body)["code"] == "deadline_exceeded"
    assert await asyncio.to_thread(finished.wait, 3)
    assert outcome == ["interrupted"]
    assert time.monotonic() - began < 2


async def test_the_watch_cancels_the_task_that_is_running_the_request() -> None:
    # The deadline watch finds each request's task by its own lookup (faster than
    # asyncio.current_task on Python 3.11): it must name the same task, in every task.
    from apiforge.core.deadlines import DeadlineWatch

    watch = DeadlineWatch()

    async def named() -> tuple[object, object]:
        await asyncio.sleep(0)
        entry = watch.watch(30.0, 10.0)
        watch.release(entry)
        return entry.task, asyncio.current_task()

    tasks = [asyncio.create_task(named()) for _ in range(5)]
    for task, (ours, theirs) in zip(tasks, await asyncio.gather(*tasks), strict=True):
        assert ours is theirs is task


async def test_one_watcher_serves_requests_that_never_yield() -> None:
    # A request answered without yielding ends before the watcher first runs; the watcher
    # must stay for the next ones rather than be made again per request, and still cancel
    # a request that runs late.
    from apiforge.core.deadlines import TICK, DeadlineWatch

    watch = DeadlineWatch()
    watchers = set()

    async def quick() -> None:
        entry = watch.watch(30.0, 10.0)
        watchers.add(watch._watcher)
        watch.release(entry)

    for _ in range(20):
        await asyncio.create_task(quick())
        await asyncio.sleep(0)
    assert len(watchers) == 1

    async def late() -> None:
        entry = watch.watch(0.05, 10.0)
        try:
            await asyncio.sleep(5)
        finally:
            watch.release(entry)

    started = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.create_task(late())
    assert time.monotonic() - started < 0.05 + 3 * TICK
    await asyncio.sleep(3 * TICK)
    assert watch._watcher is None  # idle for a whole tick: the watcher has gone
