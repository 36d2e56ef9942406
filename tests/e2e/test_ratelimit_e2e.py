"""The rate-limit layer over real sockets: server processes, a real Redis, a Redis that dies.

Each server is ``python -m tests.e2e.app_server POLICY PORT`` on 127.0.0.1, its output (with
``events: {sink: stdout}``, its security events) in a file. What is checked:

* **exactness**: three servers on one Redis, 200 concurrent requests spread over them, admit
  the limit and no more (GCRA and sliding window);
* **round trips**: one ``EVALSHA`` per request whatever the number of limits, counted by a
  private ``redis-server``'s ``INFO commandstats``;
* **faults**: ``redis-server`` killed under load and restarted on the same port: never a 500;
  ``deny`` answers 503 with ``Retry-After``, ``local`` keeps limiting in the process, ``allow``
  serves; the store is used again within seconds, without a server restart;
* **spoofing**: forged ``X-Forwarded-For``/``Forwarded``/``X-Real-IP`` change nothing unless
  the peer is a trusted proxy (the servers turn uvicorn's own proxy-header handling off, so
  ``trusted_proxies`` alone decides);
* **the 429 answer** on the wire: problem body, security headers, request id, RateLimit headers.

Redis comes from ``APIFORGE_TEST_REDIS_URL`` with a unique key prefix per run; tests that count
commands or kill the server start their own (``own_redis``). See ``tests/redis_helpers.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.conftest import free_port
from tests.redis_helpers import REDIS_URL, OwnRedis, delete_prefix, redis_or_skip

pytestmark = pytest.mark.e2e

ALGORITHMS = ("gcra", "sliding_window")
LIMIT = 50  # the shared budget of the exactness test
CLIENTS = 200  # concurrent requests, each on its own connection
ROUND_TRIPS = 25
LOCAL_BURST = 20  # the limit of the on_store_error=local route of the fault test

# What every answer carries over plain HTTP (HSTS is sent over HTTPS only, RFC 6797 7.2).
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-resource-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
    "permissions-policy": "accelerometer=(), camera=(), geolocation=(), gyroscope=(),"
                          " microphone=(), payment=(), usb=()",
}


# --- servers and policies ------------------------------------------------------------------

# uvicorn would trust X-Forwarded-For from every peer with FORWARDED_ALLOW_IPS=*: the servers
# must ignore it (proxy_headers off), so the spoofing tests run with it set.
SERVER_ENV = dict(os.environ) | {"PYTHONUNBUFFERED": "1", "FORWARDED_ALLOW_IPS": "*"}


class AppServer:
    """``tests.e2e.app_server`` in its own process, its output in a file (no pipe to fill)."""

    def __init__(self, policy: Path, output: Path) -> None:
        port = free_port()
        self.output = output
        self.url = f"http://127.0.0.1:{port}"
        with output.open("wb") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.e2e.app_server", str(policy), str(port)],
                stdout=sink, stderr=subprocess.STDOUT, env=SERVER_ENV,
            )

    def text(self) -> str:
        return self.output.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while "ready on " not in self.text():
            assert self.process.poll() is None, f"server exited:\n{self.text()}"
            assert time.monotonic() < deadline, f"server not ready:\n{self.text()}"
            time.sleep(0.02)

    def events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for line in self.text().split("\n")[:-1]:  # the last one may be half written
            if line.startswith("{"):
                event = json.loads(line)
                if event.get("event") == name:
                    found.append(event)
        return found

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


@contextlib.contextmanager
def serving(*policies: Path) -> Iterator[list[AppServer]]:
    """One server per policy, started side by side, stopped on exit."""
    servers: list[AppServer] = []
    try:
        for index, policy in enumerate(policies):
            servers.append(AppServer(policy, policy.with_name(f"{policy.stem}-{index}.log")))
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.stop()


def write_policy(
    path: Path, rate_limits: dict[str, Any], routes: dict[str, Any] | None = None,
    **sections: Any,
) -> Path:
    """A policy for ``app_server`` (JSON, which is YAML) with these rate limits and routes."""
    policy = {
        "routes": routes if routes is not None else {"GET /who": {}},
        "hosts": {"allowed_hosts": ["127.0.0.1"]},
        "events": {"sink": "none"},
        "rate_limits": rate_limits,
        **sections,
    }
    path.write_text(json.dumps(policy), encoding="utf-8")
    return path


def assert_rate_limited(answer: httpx.Response) -> None:
    assert answer.status_code == 429
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["code"] == "rate_limited"
    assert int(answer.headers["retry-after"]) >= 1


# --- exactness: three processes, one Redis -------------------------------------------------


@pytest.fixture(scope="module")
def three_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Three servers on the shared Redis; route ``/r/<algorithm>`` has a route-wide limit."""
    probe = redis_or_skip()
    prefix = f"apiforge-test:{uuid.uuid4().hex}:"
    limits = {
        algorithm: {"scope": "route", "rate": LIMIT, "period": 3600, "burst": LIMIT,
                    "algorithm": algorithm}
        for algorithm in ALGORITHMS
    }  # fmt: skip
    policy = write_policy(
        tmp_path_factory.mktemp("exactness") / "policy.yaml",
        # A generous timeout: a slow machine must not turn a burst into store errors (503s).
        {"store": REDIS_URL, "prefix": prefix, "timeout": 2.0, "limits": limits},
        {f"GET /r/{algorithm}": {"rate_limits": {"limits": [algorithm]}}
         for algorithm in ALGORITHMS},
        # ~67 connections per server from one address: above the default cap of 64.
        server={"max_connections_per_client": CLIENTS},
    )
    try:
        with serving(policy, policy, policy) as servers:
            yield [server.url for server in servers]
    finally:
        delete_prefix(probe, prefix)
        probe.close()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_three_servers_on_one_redis_admit_exactly_the_limit(
    three_servers: list[str], algorithm: str
) -> None:
    urls = [f"{url}/r/{algorithm}" for url in three_servers]
    pool = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(limits=pool, timeout=20) as client:
        answers = await asyncio.gather(
            *(client.get(urls[i % len(urls)]) for i in range(CLIENTS))
        )
    statuses = Counter(answer.status_code for answer in answers)
    assert 0.98 * LIMIT <= statuses[200] <= LIMIT, statuses
    assert statuses[200] + statuses[429] == CLIENTS, statuses  # no 5xx, nothing else
    for answer in answers:
        if answer.status_code == 429:
            assert_rate_limited(answer)


# --- round trips: one EVALSHA per request ----------------------------------------------------


def command_stats(admin: redis.Redis) -> dict[str, tuple[int, int]]:
    """``{command: (calls, failed_calls)}`` since the last ``CONFIG RESETSTAT``."""
    return {
        name.removeprefix("cmdstat_"): (value["calls"], value["failed_calls"])
        for name, value in admin.info("commandstats").items()
    }


def test_one_evalsha_per_request_whatever_the_number_of_limits(
    own_redis: OwnRedis, tmp_path: Path
) -> None:
    roomy = {"rate": 100_000, "period": 60}
    policy = write_policy(tmp_path / "policy.yaml", {
        "store": own_redis.url, "timeout": 2.0, "default": ["address", "route", "global"],
        "limits": {scope: {"scope": scope, **roomy} for scope in ("address", "route", "global")},
    })  # fmt: skip
    admin = own_redis.client()

    def send() -> None:
        for _ in range(ROUND_TRIPS):
            answer = client.get("/who")
            assert answer.status_code == 200
            assert answer.headers["ratelimit-policy"].count(";q=") == 3

    try:
        with serving(policy) as (server,), httpx.Client(base_url=server.url, timeout=10) as client:
            # The server connects lazily: nothing has reached Redis yet.
            admin.config_resetstat()
            send()
            cold = command_stats(admin)
            admin.config_resetstat()
            send()
            warm = command_stats(admin)
    finally:
        admin.close()
    # Inside the script, not round trips: one TIME, and one GET and one SET per limit.
    in_script = {"time": (ROUND_TRIPS, 0), "get": (3 * ROUND_TRIPS, 0),
                 "set": (3 * ROUND_TRIPS, 0)}
    assert warm == {"evalsha": (ROUND_TRIPS, 0), **in_script, "config|resetstat": (1, 0)}
    # From cold: the first EVALSHA finds no script (NOSCRIPT), so SCRIPT LOAD and again, once;
    # and the one connection's handshake.
    assert cold.pop("evalsha") == (ROUND_TRIPS + 1, 1)
    assert cold.pop("script|load") == (1, 0)
    handshake = {name for name in cold if name not in {*in_script, "config|resetstat"}}
    assert handshake <= {"hello", "client|setinfo"}, cold
    assert {name: cold[name] for name in in_script} == in_script


# --- faults: Redis killed under load, then back ----------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    route: str
    sent: float
    done: float
    response: httpx.Response

    @property
    def status(self) -> int:
        return self.response.status_code


async def test_a_killed_redis_is_survived_and_used_again_without_a_restart(
    own_redis: OwnRedis, tmp_path: Path
) -> None:
    policy = write_policy(
        tmp_path / "policy.yaml",
        {
            "store": own_redis.url,
            "timeout": 0.5,
            "limits": {
                "roomy": {"scope": "route", "rate": 100_000, "period": 60},
                "tight": {"scope": "route", "rate": LOCAL_BURST, "period": 3600},
            },
        },
        {
            "GET /r/deny": {"rate_limits": {"limits": ["roomy"], "on_store_error": "deny"}},
            "GET /r/local": {"rate_limits": {"limits": ["tight"], "on_store_error": "local"}},
            "GET /r/allow": {"rate_limits": {"limits": ["roomy"], "on_store_error": "allow"}},
        },
        events={"sink": "stdout"},
    )
    answers: list[Answer] = []
    stop = asyncio.Event()

    async def drive(client: httpx.AsyncClient, route: str) -> None:
        while not stop.is_set():
            sent = time.monotonic()
            response = await client.get(f"/r/{route}")
            answers.append(Answer(route, sent, time.monotonic(), response))
            await asyncio.sleep(0.02)

    async def until(seen: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not seen():
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.02)

    def steady(since: float) -> bool:
        deny = [a.status for a in answers if a.route == "deny" and a.sent >= since]
        return len(deny) >= 15 and set(deny[-15:]) == {200}

    def refused_local_since(start: float) -> bool:
        return any(a.route == "local" and a.sent >= start and a.status == 429 for a in answers)

    with serving(policy) as (server,):
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            drivers = [asyncio.create_task(drive(client, route))
                       for route in ("deny", "local", "allow") for _ in range(3)]
            try:
                began = time.monotonic()
                await until(lambda: time.monotonic() - began > 0.5 and refused_local_since(0),
                            10, "the local route's Redis budget never ran out")
                killing = time.monotonic()
                await asyncio.to_thread(own_redis.kill)  # SIGKILL, under load
                killed = time.monotonic()
                await until(lambda: time.monotonic() - killed > 1.0
                            and refused_local_since(killed), 10,
                            "the local route never refused while Redis was down")
                restarting = time.monotonic()
                await asyncio.to_thread(own_redis.start)  # same port, empty
                restarted = time.monotonic()
                await until(lambda: steady(restarted), 8,
                            "deny does not admit steadily 8 s after Redis came back")
            finally:
                stop.set()
                await asyncio.gather(*drivers)
        assert server.process.poll() is None  # the same process all along
        await until(lambda: [e["outcome"] for e in server.events("apiforge_ratelimit_store")
                             ][-1:] == ["recovered"], 3, "store events not written")
        switches = [e["outcome"] for e in server.events("apiforge_ratelimit_store")]

    def statuses(route: str, after: float = 0.0, before: float = float("inf")) -> Counter[int]:
        return Counter(a.status for a in answers
                       if a.route == route and a.sent >= after and a.done <= before)

    # Never a 500: each route answers only what its on_store_error allows.
    assert set(statuses("deny")) <= {200, 503}
    assert set(statuses("local")) <= {200, 429}
    assert set(statuses("allow")) == {200}
    # Before the kill: Redis decides, the local route's budget is the shared one.
    assert set(statuses("deny", before=killing)) == {200}
    assert statuses("local", before=killing)[200] == LOCAL_BURST
    # While down: deny fails closed, local limits in this process, allow serves.
    down = [a for a in answers if a.route == "deny" and killed <= a.sent and a.done <= restarting]
    assert len(down) >= 5
    for answer in down:
        assert answer.status == 503
        assert answer.response.headers["content-type"] == "application/problem+json"
        assert answer.response.json()["code"] == "rate_limit_store_unavailable"
        assert answer.response.headers["retry-after"] == "1"
    local = statuses("local", after=killed, before=restarting)
    assert 1 <= local[200] <= LOCAL_BURST and local[429] >= 1, local
    # Back, with no restart: the first probe after Redis answers (about once a second) lets
    # deny admit again, and it ends up admitting steadily.
    first = min((a for a in answers if a.route == "deny" and a.sent >= restarted
                 and a.status == 200), key=lambda a: a.done)
    assert first.sent - restarted < 3.0
    assert set(statuses("local", after=restarted)) <= {200, 429}
    # One event per switch, never one per request, and no flapping after the recovery.
    assert switches == ["down", "recovered"], switches


# --- spoofing and the 429 on the wire ---------------------------------------------------------


# Per header family, five requests, each with a different forged value.
FORGED: dict[str, list[dict[str, str]]] = {
    "xff": [{"x-forwarded-for": f"198.51.100.{n}"} for n in range(5)],
    "forwarded": [{"forwarded": f"for=198.51.100.{n}"} for n in range(5)],
    "real-ip": [{"x-real-ip": f"198.51.100.{n}"} for n in range(5)],
    "mixed": [
        {"x-forwarded-for": "198.51.100.1"},
        {"forwarded": 'for="[2001:db8::2]:4711"'},
        {"x-real-ip": "198.51.100.3"},
        {"x-forwarded-for": "203.0.113.4, 198.51.100.4", "forwarded": "for=198.51.100.5",
         "x-real-ip": "198.51.100.6"},
        {"x-forwarded-for": "198.51.100.7", "x-real-ip": "198.51.100.8"},
    ],
}


@pytest.fixture(scope="module")
def spoof_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(untrusted, trusted): no proxy trusted, and 127.0.0.1/32 trusted as a proxy.

    ``/who`` has the default address limit of 3; ``/r/<family>`` a limit of its own (of 3 per
    address too) for each family of forged headers, and ``/r/tight`` one of 1.
    """
    directory = tmp_path_factory.mktemp("spoofing")
    per_address = {"scope": "address", "rate": 3, "period": 3600}
    rate_limits = {
        "limits": {"per-address": per_address, "tight": {**per_address, "rate": 1},
                   **{family: per_address for family in FORGED}},
        "default": ["per-address"],
    }
    routes = {
        "GET /who": {},
        "GET /r/tight": {"rate_limits": {"limits": ["tight"]}},
        **{f"GET /r/{family}": {"rate_limits": {"limits": [family]}} for family in FORGED},
    }
    untrusted = write_policy(directory / "untrusted.yaml", rate_limits, routes)
    trusted = write_policy(directory / "trusted.yaml", rate_limits, routes,
                           trusted_proxies=["127.0.0.1/32"])
    with serving(untrusted, trusted) as (plain, proxied):
        yield plain.url, proxied.url


@pytest.mark.parametrize("family", [
    "xff",
    "forwarded",
    "real-ip",
    "mixed",
])  # fmt: skip
def test_forged_forwarding_headers_count_for_the_peer(
    spoof_servers: tuple[str, str], family: str
) -> None:
    untrusted, _ = spoof_servers
    with httpx.Client(base_url=untrusted, timeout=10) as client:
        answers = [client.get(f"/r/{family}", headers=headers) for headers in FORGED[family]]
    assert [a.status_code for a in answers] == [200, 200, 200, 429, 429]
    assert_rate_limited(answers[3])


def test_a_trusted_proxy_forwards_the_client_address(spoof_servers: tuple[str, str]) -> None:
    _, trusted = spoof_servers
    with httpx.Client(base_url=trusted, timeout=10) as client:

        def status(headers: dict[str, str]) -> int:
            return client.get("/who", headers=headers).status_code

        # Four different forwarded clients: four budgets (the untrusted server refuses the 4th).
        assert [status({"x-forwarded-for": f"198.51.100.{n}"}) for n in range(1, 5)] == [200] * 4
        assert [status({"x-forwarded-for": "198.51.100.1"}) for _ in range(3)] == [200, 200, 429]
        # Only the rightmost untrusted hop counts: what the client wrote to its left is ignored.
        assert status({"x-forwarded-for": "203.0.113.9, 198.51.100.1"}) == 429
        assert status({"forwarded": "for=198.51.100.2"}) == 200
        # X-Real-IP is not read: the proxy itself (127.0.0.1) is the client, with its own budget.
        assert [status({"x-real-ip": f"198.51.100.{n}"}) for n in (7, 8, 9, 10)] == [
            200, 200, 200, 429,
        ]  # fmt: skip


def test_the_429_carries_security_rate_limit_and_request_id_headers(
    spoof_servers: tuple[str, str],
) -> None:
    untrusted, _ = spoof_servers
    with httpx.Client(base_url=untrusted, timeout=10) as client:
        admitted = client.get("/r/tight")
        refused = client.get("/r/tight")
    assert admitted.status_code == 200
    assert_rate_limited(refused)
    assert refused.json()["request_id"] == refused.headers["x-request-id"]
    assert refused.headers["x-request-id"] != admitted.headers["x-request-id"]
    for name, value in SECURITY_HEADERS.items():
        assert refused.headers.get(name) == value, name
    assert "strict-transport-security" not in refused.headers  # plain HTTP
    assert "server" not in refused.headers
    assert refused.headers["retry-after"] == "3600"
    assert refused.headers["ratelimit-policy"] == '"tight";q=1;w=3600'
    assert refused.headers["ratelimit"].startswith('"tight";r=0;t=')
    assert admitted.headers["ratelimit-policy"] == '"tight";q=1;w=3600'
