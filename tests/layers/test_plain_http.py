from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import httpx
import orjson
import pytest
import uvicorn

from apiforge.errors import ConfigurationError
from apiforge.events import EventBus, MemorySink
from apiforge.layers.plain_http import PlainHttpApp

KEY = "afk_live_k7Gh2_s3cr3tS3cr3tS3cr3t-xyz"


def client(app: PlainHttpApp, host: str = "evil.example") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{host}",
                             follow_redirects=False)


@pytest.fixture
def plain(events: EventBus) -> PlainHttpApp:
    return PlainHttpApp("api.example.com", 443, events)


@pytest.mark.parametrize(("target", "location"), [
    ("/v1/users/me", "https://api.example.com/v1/users/me"),
    ("/", "https://api.example.com/"),
    ("/search?q=a%20b&page=2", "https://api.example.com/search?q=a%20b&page=2"),
    ("/caf%C3%A9", "https://api.example.com/caf%C3%A9"),
])
async def test_get_redirects_to_the_canonical_host(plain: PlainHttpApp, target: str,
                                                   location: str) -> None:
    async with client(plain) as c:
        r = await c.get(target, headers={"x-request-id": "rid-1"})
        head = await c.head(target)
    assert r.status_code == 301 and r.content == b""
    assert r.headers["location"] == location  # never the request's Host (evil.example)
    assert r.headers["x-request-id"] == "rid-1"
    assert "strict-transport-security" not in r.headers
    assert head.status_code == 301 and head.headers["location"] == location


@pytest.mark.parametrize(("port", "prefix"), [
    (443, "https://api.example.com/"), (8443, "https://api.example.com:8443/"),
])
async def test_port_in_location_only_when_not_443(port: int, prefix: str,
                                                  events: EventBus) -> None:
    async with client(PlainHttpApp("API.example.com.", port, events)) as c:
        r = await c.get("/x")
    assert r.headers["location"] == prefix + "x"


async def test_ipv6_canonical_host_is_bracketed(events: EventBus) -> None:
    async with client(PlainHttpApp("::1", 8443, events)) as c:
        r = await c.get("/x")
    assert r.headers["location"] == "https://[::1]:8443/x"


@pytest.mark.parametrize("host", ["https://api.example.com", "api.example.com:443",
                                  "api.example.com/x", "", "exa mple.com"])
def test_bad_canonical_host_refused(host: str, events: EventBus) -> None:
    with pytest.raises(ConfigurationError, match="canonical_host"):
        PlainHttpApp(host, 443, events)


@pytest.mark.parametrize("port", [0, 65536])
def test_bad_port_refused(port: int, events: EventBus) -> None:
    with pytest.raises(ConfigurationError, match="https_port"):
        PlainHttpApp("api.example.com", port, events)


def assert_https_required(r: httpx.Response) -> None:
    assert r.status_code == 403
    assert r.headers["content-type"] == "application/problem+json"
    body = orjson.loads(r.content)
    assert body["code"] == "https_required"
    assert body["request_id"] == r.headers["x-request-id"]
    assert "location" not in r.headers and "strict-transport-security" not in r.headers


@pytest.mark.parametrize(("headers", "names", "exposed", "key_id"), [
    ({"authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.e30.x"}, ["authorization"], False, None),
    ({"cookie": "session=abc"}, ["cookie"], False, None),
    ({"x-api-key": KEY}, ["x-api-key"], True, "afk_live_k7Gh2"),
    ({"x-api-key": "opaque-key"}, ["x-api-key"], True, None),
    ({"authorization": f"ApiKey {KEY}"}, ["authorization"], True, "afk_live_k7Gh2"),
    ({"x-api-key": KEY, "cookie": "a=b"}, ["x-api-key", "cookie"], True, "afk_live_k7Gh2"),
])
async def test_credentials_over_http_are_refused_and_reported(
    plain: PlainHttpApp, events: EventBus, event_sink: MemorySink, headers: dict[str, str],
    names: list[str], exposed: bool, key_id: str | None,
) -> None:
    async with client(plain) as c:
        r = await c.get("/v1/users/me", headers=headers)
    assert_https_required(r)
    events.flush()
    [event] = event_sink.events
    assert event["event"] == "apiforge_cleartext_credentials"
    assert event["level"] == ("CRITICAL" if exposed else "WARN")
    assert event["request_id"] == r.headers["x-request-id"]
    details: Any = event["details"]
    assert details["credentials"] == names
    assert details["key_exposed"] is exposed
    assert details["key_id"] == key_id
    logged = orjson.dumps(event).decode()
    assert "s3cr3t" not in logged and "session=abc" not in logged


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_other_methods_are_refused(plain: PlainHttpApp, events: EventBus,
                                         event_sink: MemorySink, method: str) -> None:
    async with client(plain) as c:
        r = await c.request(method, "/v1/users/me", content=b'{"password": "x"}')
    assert_https_required(r)
    events.flush()
    assert [(e["event"], e["reason"]) for e in event_sink.events] == [
        ("apiforge_cleartext_request", "unsafe_method")]


async def call(app: PlainHttpApp, path: str, raw_path: bytes, query: bytes = b"",
               ) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": raw_path, "query_string": query, "headers": [],
             "client": ("198.51.100.7", 4000)}
    await app(scope, receive, send)
    return sent


@pytest.mark.parametrize(("path", "raw_path", "query"), [
    ("/\\evil.com", b"/\\evil.com", b""),
    ("/a\\b", b"/a%5Cb", b""),
    ("/a\r\nSet-Cookie: x", b"/a%0D%0ASet-Cookie:%20x", b""),
    ("/a\x00", b"/a%00", b""),
    ("/a b", b"/a b", b""),
    ("evil", b"evil", b""),
    ("/x", b"/x", b"a=\r\nb"),
    ("/caf\u00e9", "/caf\u00e9".encode(), b""),
])
async def test_unsafe_targets_are_400(plain: PlainHttpApp, events: EventBus,
                                      event_sink: MemorySink, path: str, raw_path: bytes,
                                      query: bytes) -> None:
    sent = await call(plain, path, raw_path, query)
    assert sent[0]["status"] == 400
    assert not any(name == b"location" for name, _ in sent[0]["headers"])
    events.flush()
    assert event_sink.events[-1]["event"] == "input_validation_fail"
    assert event_sink.events[-1]["client"] == "198.51.100.7"


async def test_protocol_relative_path_stays_on_our_host(plain: PlainHttpApp) -> None:
    sent = await call(plain, "//evil.com/x", b"//evil.com/x")
    assert sent[0]["status"] == 301
    assert dict(sent[0]["headers"])[b"location"] == b"https://api.example.com//evil.com/x"


async def test_missing_raw_path_is_re_encoded(plain: PlainHttpApp) -> None:
    sent = await call(plain, "/a b", None)  # type: ignore[arg-type]
    assert sent[0]["status"] == 301
    assert dict(sent[0]["headers"])[b"location"] == b"https://api.example.com/a%20b"


async def test_lifespan_and_websocket(plain: PlainHttpApp) -> None:
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    await plain({"type": "lifespan"}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete",
                                        "lifespan.shutdown.complete"]
    sent.clear()
    messages.append({"type": "websocket.connect"})
    await plain({"type": "websocket", "path": "/", "headers": []}, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008}]


@pytest.mark.e2e
def test_over_a_real_server(events: EventBus) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    config = uvicorn.Config(PlainHttpApp("api.example.com", 8443, events), host="127.0.0.1",
                            port=port, log_level="warning", server_header=False,
                            access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
            time.sleep(0.01)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", follow_redirects=False) as c:
            r = c.get("/v1/users/me?x=1", headers={"host": "evil.example"})
            refused = c.get("/v1/users/me", headers={"x-api-key": KEY})
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert r.status_code == 301
    assert r.headers["location"] == "https://api.example.com:8443/v1/users/me?x=1"
    assert "server" not in r.headers and "strict-transport-security" not in r.headers
    assert refused.status_code == 403
