"""Rate limits through Redis Sentinel: the store URL names the primary, Sentinel finds it."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from apiforge import protect
from apiforge.events import EventBus
from tests.conftest import free_port
from tests.redis_helpers import OwnRedis


@pytest.fixture
def sentinel(own_redis: OwnRedis, tmp_path: Path) -> Iterator[int]:
    """A Sentinel of our own watching ``own_redis`` as the primary ``apiforge``."""
    port = free_port()
    config = tmp_path / "sentinel.conf"  # Sentinel rewrites its own file: it must be writable
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor apiforge 127.0.0.1 {own_redis.port} 1\n"
        "sentinel down-after-milliseconds apiforge 1000\n")
    process = subprocess.Popen([own_redis.binary, str(config), "--sentinel"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.execute_command("SENTINEL", "get-master-addr-by-name", "apiforge"):
                    break
            except redis.ConnectionError:
                pass
            assert time.monotonic() < deadline, "sentinel did not start"
            time.sleep(0.05)
        client.close()
        yield port
    finally:
        process.kill()
        process.wait(timeout=5)


async def test_limits_hold_through_sentinel(sentinel: int, own_redis: OwnRedis) -> None:
    def ok(request: Any) -> JSONResponse:
        return JSONResponse({"ok": True})

    policy = {
        "routes": {"GET /a": {}},
        "hosts": {"allowed_hosts": ["t"]},
        "events": {"sink": "none"},
        "rate_limits": {
            "store": f"redis+sentinel://127.0.0.1:{sentinel}/apiforge/0",
            "prefix": "sentinel-test:",
            "limits": {"per-address": {"scope": "address", "rate": 3, "period": 60}},
            "default": ["per-address"],
        },
    }
    app = protect(Starlette(routes=[Route("/a", ok)]), policy, events=EventBus([]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as c:
        statuses = [(await c.get("/a")).status_code for _ in range(5)]
    await app.aclose()
    assert statuses == [200, 200, 200, 429, 429]
    direct = own_redis.client()
    try:
        assert direct.keys("sentinel-test:*")  # the counters live in the primary Sentinel named
    finally:
        direct.close()
