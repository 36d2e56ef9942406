"""Shared fixtures: an in-memory event bus, a real uvicorn server and a private redis-server."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from apiforge.events import EventBus, MemorySink
from tests.redis_helpers import OwnRedis


@pytest.fixture
def event_sink() -> Iterator[MemorySink]:
    yield MemorySink()


@pytest.fixture
def events(event_sink: MemorySink) -> Iterator[EventBus]:
    bus = EventBus([event_sink], queue_size=1000)
    bus.start()
    yield bus
    bus.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    """A running ``redis-server`` of this test alone (see :class:`OwnRedis`); killed after."""
    server = OwnRedis(tmp_path, free_port())
    server.start()
    try:
        yield server
    finally:
        server.kill()


class LiveServer:
    """uvicorn serving an app on 127.0.0.1 in a background thread."""

    def __init__(self, app: Any, **config: Any) -> None:
        self.port = free_port()
        self.config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", server_header=False,
            proxy_headers=False, access_log=False, lifespan="off", **config,
        )
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self.server.serve())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
