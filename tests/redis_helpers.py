"""Redis for tests: the shared server, and a private ``redis-server`` a test may count or kill.

The shared server comes from ``APIFORGE_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``);
tests that use it take a unique key prefix and delete their keys afterwards. Tests that read
``INFO commandstats`` or kill the server start their own :class:`OwnRedis` on a spare port (the
``own_redis`` fixture of ``tests/conftest.py``), so nothing else touches its counts.

An unreachable server or a missing binary skips the test with the reason, except under
``CI=true``, where it fails it: CI must never pass by testing nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import NoReturn

import pytest
import redis

__all__ = ["REDIS_URL", "OwnRedis", "delete_prefix", "redis_or_skip", "unavailable"]

REDIS_URL = os.environ.get("APIFORGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def unavailable(what: str, error: Exception | None = None) -> NoReturn:
    """Skip (or, under CI=true, fail) because a test server cannot be reached or run."""
    message = what if error is None else f"{what} is unreachable ({type(error).__name__}: {error})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI=true requires every backend", pytrace=False)
    pytest.skip(f"{message}; set the URL or start the server to run these tests")


def redis_or_skip(url: str = REDIS_URL) -> redis.Redis:
    """A client of the shared server, or skip (fail under CI) when it does not answer."""
    probe = redis.Redis.from_url(url, socket_connect_timeout=3)
    try:
        probe.ping()
    except redis.RedisError as exc:
        probe.close()
        unavailable("Redis", exc)
    return probe


def delete_prefix(client: redis.Redis, prefix: str) -> None:
    """Delete every key under ``prefix`` (a test's own keys on the shared server)."""
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)


class OwnRedis:
    """A throwaway ``redis-server`` on a spare port of 127.0.0.1, without persistence.

    :meth:`kill` then :meth:`start` brings it back on the same port, empty (no data, no
    script cache), as a crashed and restarted server would.
    """

    def __init__(self, directory: Path, port: int) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server is not installed")
        self.binary = binary
        self.directory = directory
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A synchronous client for assertions (close it)."""
        return redis.Redis(port=self.port)

    def start(self) -> None:
        """Start the server and return once it answers PING."""
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 5
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: no shutdown, connections reset, everything lost."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=5)
            self.process = None
