"""The rate-limit layer over a real app: 429s, headers, report mode, costs and store failures."""

from __future__ import annotations

import socket
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from apiforge import protect
from apiforge.errors import ConfigurationError
from apiforge.events import EventBus, MemorySink
from apiforge.policy import load_policy


def ok(request: Any) -> JSONResponse:
    return JSONResponse({"ok": True})


APP = Starlette(routes=[Route("/a", ok), Route("/b", ok), Route("/free", ok)])


def make_policy(**rate_limits: Any) -> dict[str, Any]:
    routes = rate_limits.pop("routes", {"GET /a": {}, "GET /b": {}, "GET /free": {}})
    return {
        "routes": routes,
        "hosts": {"allowed_hosts": ["t"]},
        "events": {"sink": "none"},
        "rate_limits": {
            "limits": {"per-address": {"scope": "address", "rate": 3, "period": 60}},
            "default": ["per-address"],
            **rate_limits,
        },
    }


class Harness:
    def __init__(self, policy: dict[str, Any], client: str = "10.0.0.1") -> None:
        self.sink = MemorySink()
        self.bus = EventBus([self.sink])
        self.bus.start()
        self.app = protect(APP, load_policy(policy), events=self.bus)
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app, client=(client, 1234)),
            base_url="http://t")

    def events(self, name: str) -> list[Any]:
        self.bus.flush()
        return [e for e in self.sink.events if e["event"] == name]

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.app.aclose()


async def test_burst_then_429_with_retry_after_and_headers() -> None:
    h = Harness(make_policy())
    statuses = [(await h.client.get("/a")).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    first = await h.client.get("/a")
    assert first.headers["content-type"] == "application/problem+json"
    assert first.json()["code"] == "rate_limited"
    assert first.json()["request_id"] == first.headers["x-request-id"]
    assert int(first.headers["retry-after"]) == 20  # one request every 60/3 s
    assert first.headers["ratelimit-policy"] == '"per-address";q=3;w=60'
    assert first.headers["ratelimit"].startswith('"per-address";r=0;t=')
    events = h.events("excess_rate_limit_exceeded")
    assert len(events) == 2 and events[0]["reason"] == "per-address"
    await h.aclose()


async def test_remaining_counts_down_on_allowed_answers() -> None:
    h = Harness(make_policy())
    seen = [(await h.client.get("/a")).headers["ratelimit"] for _ in range(3)]
    assert [s.split(";")[1] for s in seen] == ["r=2", "r=1", "r=0"]
    await h.aclose()


async def test_address_budget_is_shared_across_routes_and_separate_per_address() -> None:
    h = Harness(make_policy())
    for path in ("/a", "/b", "/a"):
        assert (await h.client.get(path)).status_code == 200
    assert (await h.client.get("/b")).status_code == 429
    other = Harness(make_policy(), client="10.0.0.2")
    other.app = h.app
    other.client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=h.app, client=("10.0.0.2", 1)), base_url="http://t")
    assert (await other.client.get("/a")).status_code == 200
    await other.client.aclose()
    await h.aclose()


async def test_ipv6_clients_in_one_64_share_a_budget() -> None:
    h = Harness(make_policy(), client="2001:db8::1")
    for _ in range(3):
        assert (await h.client.get("/a")).status_code == 200
    neighbour = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=h.app, client=("2001:db8::ffff:1", 1)),
        base_url="http://t")
    assert (await neighbour.get("/a")).status_code == 429
    await neighbour.aclose()
    await h.aclose()


async def test_route_cost_and_route_without_limits() -> None:
    policy = make_policy(routes={
        "GET /a": {"rate_limits": {"cost": 3}},
        "GET /free": {"rate_limits": {"limits": []}},
    })
    h = Harness(policy)
    assert (await h.client.get("/a")).status_code == 200
    assert (await h.client.get("/a")).status_code == 429
    free = await h.client.get("/free")
    assert free.status_code == 200 and "ratelimit-policy" not in free.headers
    await h.aclose()


async def test_report_mode_lets_requests_through_and_reports() -> None:
    h = Harness(make_policy(mode="report"))
    statuses = [(await h.client.get("/a")).status_code for _ in range(5)]
    assert statuses == [200] * 5
    reported = h.events("excess_rate_limit_exceeded")
    assert len(reported) == 2 and all(e["outcome"] == "report" for e in reported)
    await h.aclose()


async def test_forged_forwarded_headers_from_untrusted_peer_change_nothing() -> None:
    h = Harness(make_policy())
    for n in range(3):
        assert (await h.client.get("/a", headers={"x-forwarded-for": f"1.2.3.{n}"})
                ).status_code == 200
    spoofed = await h.client.get("/a", headers={"x-forwarded-for": "9.9.9.9",
                                               "forwarded": "for=8.8.8.8",
                                               "x-real-ip": "7.7.7.7"})
    assert spoofed.status_code == 429
    await h.aclose()


def test_unknown_limit_names_are_refused_at_load() -> None:
    with pytest.raises(ConfigurationError, match="unknown limits"):
        load_policy(make_policy(default=["nope"]))
    with pytest.raises(ConfigurationError, match="unknown limits"):
        load_policy(make_policy(routes={"GET /a": {"rate_limits": {"limits": ["nope"]}}}))
    with pytest.raises(ConfigurationError, match="cost"):
        load_policy(make_policy(limits={"x": {"scope": "user", "rate": 1, "cost": 2}}))
    with pytest.raises(ConfigurationError, match="store"):
        load_policy(make_policy(store="memcached://x"))


def test_memory_store_is_refused_with_several_workers() -> None:
    from apiforge.layers.ratelimit import RateLimitLayer

    policy = load_policy(make_policy())
    with pytest.raises(ConfigurationError, match="workers"):
        RateLimitLayer(policy.rate_limits, {}, EventBus([]), workers=2)


def _dead_redis_url() -> str:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


@pytest.mark.parametrize(("behaviour", "expected"), [("deny", 503), ("allow", 200),
                                                     ("local", 200)])
async def test_unreachable_store_does_what_the_policy_says(behaviour: str, expected: int) -> None:
    h = Harness(make_policy(store=_dead_redis_url(), on_store_error=behaviour))
    first = await h.client.get("/a")
    assert first.status_code == expected
    if expected == 503:
        assert first.headers["retry-after"] == "1"
        assert first.json()["code"] == "rate_limit_store_unavailable"
    if behaviour == "local":  # the in-process limiter takes over, with the same limits
        statuses = [(await h.client.get("/a")).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
    switches = h.events("apiforge_ratelimit_store")
    assert [e["outcome"] for e in switches] == ["down"]
    await h.aclose()


async def test_budgets_hold_while_callers_come_and_go() -> None:
    # The layer remembers each caller's limit keys in a bounded table; thousands of other
    # callers passing through (and the table being cleared) must not reset anyone's budget.
    h = Harness(make_policy())

    async def status_from(address: str) -> int:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "GET", "scheme": "http", "path": "/a", "raw_path": b"/a",
                 "query_string": b"", "root_path": "", "headers": [(b"host", b"t")],
                 "client": (address, 1), "server": ("t", 80)}
        await h.app(scope, receive, send)
        return int(sent[0]["status"])

    assert [await status_from("10.1.0.1") for _ in range(2)] == [200, 200]
    for n in range(5000):
        assert await status_from(f"10.2.{n // 250}.{n % 250}") == 200
    assert [await status_from("10.1.0.1") for _ in range(2)] == [200, 429]
    await h.aclose()
