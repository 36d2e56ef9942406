from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from pydantic import ValidationError

from apiforge.core.pipeline import Pipeline
from apiforge.events import EventBus, MemorySink
from apiforge.layers.hosts import HostLayer, HostSettings
from apiforge.policy import load_policy

POLICY = {"routes": {"GET /hello": {}}, "events": {"sink": "none"}}


class App:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})


def layer(*hosts: str) -> HostLayer:
    return HostLayer(HostSettings(allowed_hosts=list(hosts)))


ALLOWED = ["api.example.com", "*.apps.example.com", "admin.example.com:8443",
           "*.internal.example.com:9000", "127.0.0.1", "[::1]"]


@pytest.mark.parametrize(("host", "allowed"), [
    (b"api.example.com", True),
    (b"API.Example.COM", True),
    (b"api.example.com.", True),
    (b"api.example.com:443", True),
    (b"api.example.com:8080", True),
    (b"api.example.com.:8080", True),
    (b"a.apps.example.com", True),
    (b"a.b.apps.example.com:1234", True),
    (b"apps.example.com", False),
    (b".apps.example.com", False),
    (b"evil.com/.apps.example.com", False),
    (b"user@x.apps.example.com", False),
    (b"a.apps.example.com.evil.com", False),
    (b"evilapps.example.com", False),
    (b"admin.example.com:8443", True),
    (b"admin.example.com:08443", True),
    (b"admin.example.com", False),
    (b"admin.example.com:443", False),
    (b"x.internal.example.com:9000", True),
    (b"x.internal.example.com", False),
    (b"x.internal.example.com:9001", False),
    (b"127.0.0.1:8000", True),
    (b"127.0.0.2", False),
    (b"[::1]", True),
    (b"[::1]:8443", True),
    (b"[::1]x", False),
    (b"[::1", False),
    (b"::1", False),
    (b"api.example.com:http", False),
    (b"api.example.com:1:2", False),
    (b"evil.com", False),
    (b"", False),
])
def test_allowlist_matching(host: bytes, allowed: bool) -> None:
    assert layer(*ALLOWED).allows(host) is allowed


def test_default_allows_loopback_names_only() -> None:
    hosts = HostLayer(HostSettings())
    assert hosts.allows(b"localhost:8000") and hosts.allows(b"127.0.0.1") and hosts.allows(b"[::1]")
    assert not hosts.allows(b"api.example.com")


@pytest.mark.parametrize(("entries", "fragment"), [
    ([], "empty"),
    (["*", "api.example.com"], "alone"),
    (["https://api.example.com"], "host name only"),
    (["api.example.com/path"], "host name only"),
    (["a.*.example.com"], "leftmost"),
    (["*example.com"], "leftmost"),
    (["*.com"], "top-level"),
    (["api.example.com:0"], "1-65535"),
    (["api.example.com:99999"], "1-65535"),
    (["[zz::1]"], "IPv6"),
    (["::1"], "brackets"),
    (["exa_mple.com"], "not a host name"),
])
def test_bad_entries_refused_at_load(entries: list[str], fragment: str) -> None:
    with pytest.raises(ValidationError, match="allowed_hosts") as info:
        HostSettings(allowed_hosts=entries)
    assert fragment in str(info.value)


def test_entries_are_normalized() -> None:
    settings = HostSettings(allowed_hosts=["API.Example.com.", "*.Example.org:08443"])
    assert settings.allowed_hosts == ["api.example.com", "*.example.org:8443"]


def pipeline(app: Any, hosts: HostLayer, events: EventBus) -> Pipeline:
    return Pipeline(app, load_policy(POLICY), layers=[hosts], events=events)


async def test_refused_host_is_400_before_the_app(events: EventBus,
                                                  event_sink: MemorySink) -> None:
    app = App()
    transport = httpx.ASGITransport(app=pipeline(app, layer("api.example.com"), events))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.example.com") as c:
        ok = await c.get("/hello")
        bad = await c.get("/hello", headers={"host": "evil.com"})
        undeclared = await c.get("/nope", headers={"host": "evil.com"})
    assert ok.status_code == 200 and app.calls == 1
    assert bad.status_code == 400 and undeclared.status_code == 400
    body = orjson.loads(bad.content)
    assert body["code"] == "host_not_allowed" and "evil" not in bad.text
    assert bad.headers["content-type"] == "application/problem+json"
    events.flush()
    found = [e for e in event_sink.events if e["reason"] == "host_not_allowed"]
    assert len(found) == 2
    assert {e["event"] for e in found} == {"input_validation_fail"}
    assert found[0]["request_id"] == bad.headers["x-request-id"]


def scope(headers: list[tuple[bytes, bytes]], version: str = "1.1") -> dict[str, Any]:
    return {"type": "http", "http_version": version, "method": "GET", "scheme": "http",
            "path": "/hello", "raw_path": b"/hello", "query_string": b"",
            "headers": headers, "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80)}


async def call(app: Any, asgi_scope: dict[str, Any]) -> int:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    await app(asgi_scope, receive, send)
    return int(sent[0]["status"])


@pytest.mark.parametrize("version", ["1.0", "1.1"])
async def test_missing_host_refused_with_an_allowlist(version: str, events: EventBus,
                                                       event_sink: MemorySink) -> None:
    app = App()
    status = await call(pipeline(app, layer("api.example.com"), events), scope([], version))
    assert status == 400 and app.calls == 0
    events.flush()
    assert event_sink.events[-1]["reason"] == "host_missing"


async def test_star_allows_any_host_but_not_a_missing_one_on_http11(events: EventBus) -> None:
    app = App()
    wrapped = pipeline(app, layer("*"), events)
    assert await call(wrapped, scope([(b"host", b"anything.example")])) == 200
    assert await call(wrapped, scope([], "1.0")) == 200
    assert await call(wrapped, scope([])) == 400
    assert app.calls == 2


def test_pattern_matches_are_remembered_within_a_bound() -> None:
    hosts = layer("*.apps.example.com")
    for i in range(3000):
        assert hosts.allows(f"h{i}.apps.example.com".encode())
        assert not hosts.allows(f"h{i}.evil.com".encode())
    assert len(hosts._known) <= 1024
    assert hosts.allows(b"h2999.apps.example.com")
    assert not hosts.allows(b"apps.example.com")
