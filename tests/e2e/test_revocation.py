"""A key revoked through the CLI is refused by every running server within a second."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import free_port
from tests.contract.conftest import REDIS_URL, unavailable

pytestmark = pytest.mark.e2e


@pytest.fixture
def shared_policy(tmp_path: Path) -> Iterator[Path]:
    probe = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        probe.ping()
    except redis.RedisError as exc:
        probe.close()
        unavailable("Redis", exc)
    prefix = f"apiforge-test:{uuid.uuid4().hex}:"
    pepper = tmp_path / "pepper"
    subprocess.run([sys.executable, "-m", "apiforge", "keys", "pepper", str(pepper)],
                   check=True, capture_output=True)
    policy = tmp_path / "apiforge.yaml"
    policy.write_text(
        'routes:\n  "GET /who": {auth: api_key}\n'
        "hosts: {allowed_hosts: ['127.0.0.1']}\n"
        "events: {sink: none}\n"
        "authentication:\n"
        f'  records_url: "sqlite:///{tmp_path}/identity.db"\n'
        f'  state_url: "{REDIS_URL}"\n'
        f'  state_prefix: "{prefix}"\n'
        f'  pepper_file: "{pepper}"\n',
        encoding="utf-8",
    )
    try:
        yield policy
    finally:
        for key in probe.scan_iter(match=f"{prefix}*"):
            probe.delete(key)
        probe.close()


def cli(*args: str, group: str = "keys") -> str:
    done = subprocess.run([sys.executable, "-m", "apiforge", group, *args], check=True,
                          capture_output=True, text=True, timeout=60)
    return done.stdout


def wait_for(servers: list[tuple[subprocess.Popen[str], str]], key: str, status: int,
             since: float) -> None:
    """Every server answers ``status`` for ``key`` within a second of ``since``."""
    for _, url in servers:
        while httpx.get(url + "/who", headers={"x-api-key": key}, timeout=10).status_code \
                != status:
            assert time.monotonic() - since < 1.0, f"not {status} within a second"
            time.sleep(0.02)


def start_server(policy: Path) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.e2e.app_server", str(policy), str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("ready on "), line
    return process, line.removeprefix("ready on ").strip()


def test_revocation_reaches_every_process_within_a_second(shared_policy: Path) -> None:
    output = cli("create", "--app", "shared-app", "--env", "test", "--policy", str(shared_policy))
    key = next(line.strip() for line in output.splitlines()
               if line.strip().startswith("afk_test_"))
    key_id = key.split("_")[2]
    servers = [start_server(shared_policy) for _ in range(2)]
    try:
        for _, url in servers:
            r = httpx.get(url + "/who", headers={"x-api-key": key}, timeout=10)
            assert r.status_code == 200 and r.json() == {"application": "shared-app"}
        cli("revoke", key_id, "--policy", str(shared_policy))
        revoked_at = time.monotonic()
        for _, url in servers:
            while True:
                status = httpx.get(url + "/who", headers={"x-api-key": key}, timeout=10)
                if status.status_code == 401:
                    break
                assert time.monotonic() - revoked_at < 1.0, "still accepted after a second"
                time.sleep(0.02)
        # A key created after start-up reaches the running servers the same way.
        fresh = next(line.strip() for line in
                     cli("create", "--app", "shared-app", "--env", "test", "--policy",
                         str(shared_policy)).splitlines()
                     if line.strip().startswith("afk_test_"))
        deadline = time.monotonic() + 1.0
        for _, url in servers:
            while httpx.get(url + "/who", headers={"x-api-key": fresh},
                            timeout=10).status_code != 200:
                assert time.monotonic() < deadline, "new key not seen within a second"
                time.sleep(0.02)
    finally:
        for process, _ in servers:
            process.terminate()
            process.wait(timeout=10)
            if process.stdout is not None:
                process.stdout.close()


def test_a_suspended_owner_is_refused_everywhere_within_a_second(shared_policy: Path) -> None:
    policy = ("--policy", str(shared_policy))
    cli("create", "bob", "--role", "user", *policy, group="accounts")
    output = cli("create", "--app", "bobs-app", "--owner", "bob", "--env", "test", *policy)
    key = next(line.strip() for line in output.splitlines()
               if line.strip().startswith("afk_test_"))
    servers = [start_server(shared_policy) for _ in range(2)]
    try:
        wait_for(servers, key, 200, time.monotonic())
        cli("suspend", "bob", *policy, group="accounts")
        wait_for(servers, key, 401, time.monotonic())
        cli("activate", "bob", *policy, group="accounts")
        wait_for(servers, key, 200, time.monotonic())
    finally:
        for process, _ in servers:
            process.terminate()
            process.wait(timeout=10)
            if process.stdout is not None:
                process.stdout.close()
