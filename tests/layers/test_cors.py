from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from apiforge.core.context import RequestContext
from apiforge.core.pipeline import Pipeline
from apiforge.events import EventBus, MemorySink
from apiforge.layers.cors import CorsLayer, CorsSettings
from apiforge.layers.headers import SecurityHeadersLayer
from apiforge.policy import load_policy

POLICY = {
    "routes": {
        "GET /items": {},
        "POST /items": {},
        "PUT /items/{id}": {},
        "GET /vary": {},
    },
    "events": {"sink": "none"},
}
ORIGINS = ["https://app.example.com", "https://*.example.com", "http://localhost:3000"]


class Counter:
    calls = 0


async def items(request: Request) -> JSONResponse:
    Counter.calls += 1
    return JSONResponse({"items": []})


async def vary(request: Request) -> JSONResponse:
    return JSONResponse({}, headers={"vary": "Accept-Encoding"})


def app() -> Starlette:
    return Starlette(routes=[
        Route("/items", items, methods=["GET", "POST"]), Route("/items/{id}", items,
                                                               methods=["PUT"]),
        Route("/vary", vary),
    ])


def client(events: EventBus, **settings: Any) -> httpx.AsyncClient:
    cors = CorsLayer(CorsSettings(**{"allow_origins": ORIGINS, **settings}), events)
    pipeline = Pipeline(app(), load_policy(POLICY), layers=[cors, SecurityHeadersLayer()],
                        events=events)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=pipeline),
                             base_url="https://api.service.test")


# --- the origin matrix -------------------------------------------------------------------

@pytest.mark.parametrize(("origin", "allowed"), [
    ("https://app.example.com", True),
    ("https://a.example.com", True),
    ("https://a.b.example.com", True),
    ("http://localhost:3000", True),
    ("https://example.com", False),
    ("https://a.example.com.evil.com", False),
    ("http://a.example.com", False),
    ("https://a.example.com:8443", False),
    ("https://evilexample.com", False),
    ("https://.example.com", False),
    ("https://evil.com/.example.com", False),
    ("https://user@a.example.com", False),
    ("https://-a.example.com", False),
    ("https://a..example.com", False),
    ("HTTPS://APP.EXAMPLE.COM", False),
    ("http://localhost:3001", False),
    ("http://localhost", False),
    ("null", False),
    ("", False),
])
def test_origin_matching(origin: str, allowed: bool, events: EventBus) -> None:
    layer = CorsLayer(CorsSettings(allow_origins=ORIGINS), events)
    assert layer.allows(origin.encode()) is allowed


def test_pattern_matches_are_remembered_within_a_bound(events: EventBus) -> None:
    layer = CorsLayer(CorsSettings(allow_origins=ORIGINS), events)
    for i in range(3000):
        assert layer.allows(f"https://h{i}.example.com".encode())
        assert not layer.allows(f"https://h{i}.example.com.evil.com".encode())
    assert len(layer._known) <= 1024
    assert layer.allows(b"https://app.example.com")


@pytest.mark.parametrize("origin", ["https://a.example.com", "https://evil.com"])
async def test_wildcard_without_credentials_grants_star(origin: str, events: EventBus) -> None:
    async with client(events, allow_origins=["*"]) as c:
        r = await c.get("/items", headers={"origin": origin})
    assert r.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in r.headers
    assert r.headers["vary"] == "Origin"


# --- load-time refusals ------------------------------------------------------------------

def test_star_with_credentials_refused_at_load() -> None:
    with pytest.raises(ValidationError) as info:
        CorsSettings(allow_origins=["*"], allow_credentials=True)
    message = str(info.value)
    assert "allow_origins" in message and "allow_credentials" in message
    assert "'*'" in message and "set allow_credentials: false" in message


def test_refusal_reaches_the_policy_loader_with_the_key_path() -> None:
    from apiforge.policy.base import PolicyModel

    class Wrapper(PolicyModel):
        cors: CorsSettings

    with pytest.raises(ValidationError, match=r"cors\.allow_origins") as info:
        Wrapper.model_validate({"cors": {"allow_origins": ["null"]}})
    assert "never allowed" in str(info.value)


@pytest.mark.parametrize(("origins", "fragment"), [
    (["null"], "never allowed"),
    (["NULL"], "never allowed"),
    (["*", "https://a.example.com"], "alone"),
    (["app.example.com"], "https://host"),
    (["ftp://app.example.com"], "https://host"),
    (["https://app.example.com/"], "no path"),
    (["https://app.example.com/api"], "no path"),
    (["https://user@app.example.com"], "no path"),
    (["https://a.*.example.com"], "leftmost"),
    (["https://*example.com"], "leftmost"),
    (["https://*.com"], "top-level"),
    (["https://app.example.com:0"], "1-65535"),
    (["https://[zz::1]"], "IPv6"),
    (["https://exa_mple.com"], "not a host name"),
])
def test_bad_origins_refused_at_load(origins: list[str], fragment: str) -> None:
    with pytest.raises(ValidationError, match="allow_origins") as info:
        CorsSettings(allow_origins=origins)
    assert fragment in str(info.value)


def test_origins_normalized_as_browsers_send_them() -> None:
    settings = CorsSettings(allow_origins=["HTTPS://App.Example.com:443", "http://h:80",
                                           "https://h:8443", "https://[::1]:443"])
    assert settings.allow_origins == ["https://app.example.com", "http://h", "https://h:8443",
                                      "https://[::1]"]


@pytest.mark.parametrize(("key", "value"), [
    ("allow_methods", ["*"]), ("allow_methods", ["get"]), ("allow_headers", ["*"]),
    ("allow_headers", ["bad header"]), ("expose_headers", ["a:b"]), ("max_age", 86_401),
])
def test_bad_lists_refused(key: str, value: Any) -> None:
    with pytest.raises(ValidationError, match=key):
        CorsSettings(**{key: value})


def test_empty_origins_means_off(events: EventBus) -> None:
    layer = CorsLayer(CorsSettings(), events)
    assert layer.early_hook() is None and layer.response_hook() is None


async def test_cors_off_adds_nothing(events: EventBus) -> None:
    async with client(events, allow_origins=[]) as c:
        simple = await c.get("/items", headers={"origin": "https://app.example.com"})
        pre = await c.options("/items", headers={"origin": "https://app.example.com",
                                                 "access-control-request-method": "POST"})
    assert not [h for h in simple.headers if h.startswith("access-control-")]
    assert "vary" not in simple.headers
    assert pre.status_code == 405


# --- simple (non-preflighted) requests ---------------------------------------------------

@pytest.mark.parametrize("credentials", [False, True])
async def test_allowed_origin_gets_read_permission(credentials: bool, events: EventBus,
                                                   event_sink: MemorySink) -> None:
    async with client(events, allow_credentials=credentials) as c:
        r = await c.get("/items", headers={"origin": "https://a.example.com"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "https://a.example.com"
    assert r.headers.get("access-control-allow-credentials") == ("true" if credentials else None)
    assert r.headers["access-control-expose-headers"] == (
        "X-Request-ID, RateLimit, RateLimit-Policy, Retry-After")
    assert r.headers["vary"] == "Origin"
    events.flush()
    assert not event_sink.events


@pytest.mark.parametrize("origin", ["https://evil.com", "null", "https://a.example.com.evil.com"])
async def test_refused_origin_is_served_without_cors_headers(origin: str, events: EventBus,
                                                             event_sink: MemorySink) -> None:
    before = Counter.calls
    async with client(events, allow_credentials=True) as c:
        r = await c.post("/items", headers={"origin": origin})
    # CORS is the browser's read permission: the request is served, the page cannot read it.
    assert r.status_code == 200 and Counter.calls == before + 1
    assert not [h for h in r.headers if h.startswith("access-control-")]
    assert r.headers["vary"] == "Origin"
    events.flush()
    assert [(e["event"], e["reason"]) for e in event_sink.events] == [("malicious_cors", "origin")]
    details: Any = event_sink.events[0]["details"]
    assert details["origin"] == origin
    assert event_sink.events[0]["request_id"] == r.headers["x-request-id"]


async def test_same_origin_request_is_not_an_event(events: EventBus,
                                                   event_sink: MemorySink) -> None:
    async with client(events) as c:
        r = await c.post("/items", headers={"origin": "https://api.service.test"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    events.flush()
    assert not event_sink.events


@pytest.mark.parametrize("path", ["/items", "/nope", "/items/1"])
async def test_vary_origin_always_present(path: str, events: EventBus) -> None:
    async with client(events) as c:
        without = await c.get(path)
        refused = await c.get(path, headers={"origin": "https://evil.com"})
        allowed = await c.get(path, headers={"origin": "https://app.example.com"})
    for r in (without, refused, allowed):
        assert r.headers.get_list("vary") == ["Origin"]
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"


async def test_vary_merges_into_the_apps_vary(events: EventBus) -> None:
    async with client(events) as c:
        r = await c.get("/vary", headers={"origin": "https://app.example.com"})
    assert r.headers.get_list("vary") == ["Accept-Encoding, Origin"]


@pytest.mark.parametrize(("existing", "expected"), [
    ([(b"vary", b"Accept-Encoding")], [(b"vary", b"Accept-Encoding, Origin")]),
    ([(b"Vary", b"origin")], [(b"Vary", b"origin")]),
    ([(b"vary", b"*")], [(b"vary", b"*")]),
    ([(b"vary", b"Accept, Origin")], [(b"vary", b"Accept, Origin")]),
    ([(b"x-a", b"1")], [(b"x-a", b"1"), (b"vary", b"Origin")]),
])
def test_vary_merge_rules(existing: list[tuple[bytes, bytes]],
                          expected: list[tuple[bytes, bytes]], events: EventBus) -> None:
    hook = CorsLayer(CorsSettings(allow_origins=ORIGINS), events).response_hook()
    assert hook is not None
    ctx = RequestContext("rid", "1.2.3.4", "https", "GET", "/items", {})
    headers = list(existing)
    hook(ctx, 200, headers)
    assert headers == expected


# --- preflights --------------------------------------------------------------------------

def preflight_headers(origin: str, method: str, requested: str | None = None) -> dict[str, str]:
    headers = {"origin": origin, "access-control-request-method": method}
    if requested is not None:
        headers["access-control-request-headers"] = requested
    return headers


@pytest.mark.parametrize("credentials", [False, True])
async def test_allowed_preflight_is_204_before_the_app(credentials: bool, events: EventBus,
                                                      event_sink: MemorySink) -> None:
    before = Counter.calls
    async with client(events, allow_credentials=credentials) as c:
        r = await c.options("/items/7", headers=preflight_headers(
            "https://a.example.com", "PUT", "content-type,authorization,x-api-key"))
    assert r.status_code == 204 and r.content == b"" and Counter.calls == before
    assert r.headers["access-control-allow-origin"] == "https://a.example.com"
    assert r.headers["access-control-allow-methods"] == "GET, HEAD, POST, PUT, PATCH, DELETE"
    assert r.headers["access-control-allow-headers"] == (
        "Authorization, Content-Type, X-API-Key, X-Request-ID")
    assert r.headers["access-control-max-age"] == "600"
    assert r.headers.get("access-control-allow-credentials") == ("true" if credentials else None)
    assert r.headers.get_list("vary") == [
        "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"]
    assert r.headers["x-request-id"] and r.headers["x-content-type-options"] == "nosniff"
    events.flush()
    assert not event_sink.events


@pytest.mark.parametrize(("origin", "method", "requested", "reason"), [
    ("https://evil.com", "POST", None, "origin"),
    ("null", "POST", None, "origin"),
    ("http://a.example.com", "POST", None, "origin"),
    ("https://app.example.com", "DELETE", None, "method"),  # allowed by CORS, not declared
    ("https://app.example.com", "TRACE", None, "method"),
    ("https://app.example.com", "post", None, "method"),  # method names are case-sensitive
    ("https://app.example.com", "POST", "content-type, x-evil", "headers"),
    ("https://app.example.com", "POST", "cookie", "headers"),
])
async def test_refused_preflight_is_403_without_cors_headers(
    origin: str, method: str, requested: str | None, reason: str, events: EventBus,
    event_sink: MemorySink,
) -> None:
    async with client(events, allow_credentials=True) as c:
        r = await c.options("/items", headers=preflight_headers(origin, method, requested))
    assert r.status_code == 403
    assert r.headers["content-type"] == "application/problem+json"
    assert orjson.loads(r.content)["code"] == "cors_refused"
    assert not [h for h in r.headers if h.startswith("access-control-")]
    assert r.headers["vary"] == "Origin"
    events.flush()
    assert [(e["event"], e["reason"]) for e in event_sink.events] == [("malicious_cors", reason)]
    details: Any = event_sink.events[0]["details"]
    assert details["preflight"] is True


async def test_preflight_method_not_in_allow_methods(events: EventBus) -> None:
    async with client(events, allow_methods=["GET"]) as c:
        r = await c.options("/items", headers=preflight_headers("https://app.example.com",
                                                                 "POST"))
    assert r.status_code == 403


async def test_preflight_for_undeclared_path_falls_through_to_404(events: EventBus,
                                                                   event_sink: MemorySink
                                                                   ) -> None:
    async with client(events) as c:
        r = await c.options("/nope", headers=preflight_headers("https://app.example.com", "GET"))
        evil = await c.options("/nope", headers=preflight_headers("https://evil.com", "GET"))
    assert r.status_code == 404 and evil.status_code == 404
    assert "access-control-allow-methods" not in r.headers
    events.flush()
    assert [e["event"] for e in event_sink.events] == ["input_validation_fail"] * 2


async def test_options_without_request_method_is_not_a_preflight(events: EventBus) -> None:
    async with client(events) as c:
        r = await c.options("/items", headers={"origin": "https://app.example.com"})
    assert r.status_code == 405
    assert r.headers["access-control-allow-origin"] == "https://app.example.com"


async def test_custom_lists_and_max_age(events: EventBus) -> None:
    async with client(events, allow_methods=["GET", "POST"], allow_headers=["X-Custom"],
                      expose_headers=[], max_age=0) as c:
        ok = await c.options("/items", headers=preflight_headers(
            "https://app.example.com", "POST", "x-custom"))
        bad = await c.options("/items", headers=preflight_headers(
            "https://app.example.com", "POST", "authorization"))
        simple = await c.get("/items", headers={"origin": "https://app.example.com"})
    assert ok.status_code == 204
    assert ok.headers["access-control-allow-methods"] == "GET, POST"
    assert ok.headers["access-control-allow-headers"] == "X-Custom"
    assert ok.headers["access-control-max-age"] == "0"
    assert bad.status_code == 403
    assert "access-control-expose-headers" not in simple.headers
