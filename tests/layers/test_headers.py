from __future__ import annotations

import timeit
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from apiforge.core.context import RequestContext
from apiforge.core.pipeline import Pipeline
from apiforge.core.routing import Respond, RoutePlan
from apiforge.errors import ConfigurationError
from apiforge.layers.headers import (
    RouteHeadersSettings,
    SecurityHeadersLayer,
    SecurityHeadersSettings,
)
from apiforge.policy import load_policy

POLICY = {
    "routes": {
        "GET /hello": {},
        "GET /boom": {},
        "GET /banner": {},
        "GET /cached": {},
        "GET /stored": {},
        "GET /docs": {},
    },
    "events": {"sink": "none"},
}

BASE = {
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-resource-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
    "permissions-policy": "accelerometer=(), camera=(), geolocation=(), gyroscope=(),"
                          " microphone=(), payment=(), usb=()",
}
HSTS = "max-age=31536000; includeSubDomains"


async def hello(request: Request) -> JSONResponse:
    return JSONResponse({"hello": "world"})


async def boom(request: Request) -> JSONResponse:
    raise RuntimeError("internal")


async def banner(request: Request) -> JSONResponse:
    return JSONResponse({}, headers={"Server": "gunicorn/20", "X-Powered-By": "PHP/5.4"})


async def cached(request: Request) -> Response:
    return JSONResponse({}, headers={"cache-control": "public, max-age=600"})


async def stored(request: Request) -> Response:
    return JSONResponse({}, headers={"cache-control": "private, no-store"})


def app() -> Starlette:
    return Starlette(routes=[
        Route("/hello", hello), Route("/boom", boom), Route("/banner", banner),
        Route("/cached", cached), Route("/stored", stored), Route("/docs", hello),
    ])


class EarlyAnswer:
    """Answers `GET /early` before routing, as a CORS preflight would."""

    name = "early"

    def early_hook(self) -> Any:
        def hook(ctx: RequestContext, scope: Any) -> None:
            if ctx.path == "/early":
                raise Respond(204, [(b"x-early", b"1")])
        return hook

    def response_hook(self) -> None:
        return None

    def attach(self, plan: RoutePlan) -> None:
        return None


def protected(layer: SecurityHeadersLayer | None = None) -> Pipeline:
    return Pipeline(app(), load_policy(POLICY),
                    layers=[EarlyAnswer(), layer or SecurityHeadersLayer()])


def client(scheme: str = "http", layer: SecurityHeadersLayer | None = None) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=protected(layer), raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url=f"{scheme}://testserver")


def assert_base(response: httpx.Response) -> None:
    for name, value in BASE.items():
        assert response.headers.get_list(name) == [value], name
    assert "server" not in response.headers and "x-powered-by" not in response.headers


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/hello", 200), ("GET", "/nope", 404), ("DELETE", "/hello", 405),
    ("GET", "/boom", 500), ("GET", "/early", 204), ("HEAD", "/hello", 200),
])
@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_every_response_gets_the_block(method: str, path: str, status: int,
                                             scheme: str) -> None:
    async with client(scheme) as c:
        r = await c.request(method, path)
    assert r.status_code == status
    assert_base(r)
    # RFC 6797 7.2: HSTS over HTTPS only, never over plain HTTP.
    expected = [HSTS] if scheme == "https" else []
    assert r.headers.get_list("strict-transport-security") == expected
    assert "cache-control" not in r.headers  # no credentials, app set none


def test_hsts_options() -> None:
    settings = SecurityHeadersSettings(hsts_max_age=63_072_000, hsts_preload=True)
    layer = SecurityHeadersLayer(settings)
    hook = layer.response_hook()
    headers: list[tuple[bytes, bytes]] = []
    hook(context(scheme="https"), 200, headers)
    assert (b"strict-transport-security",
            b"max-age=63072000; includeSubDomains; preload") in headers
    off = SecurityHeadersLayer(SecurityHeadersSettings(hsts_include_subdomains=False))
    headers = []
    off.response_hook()(context(scheme="https"), 200, headers)
    assert (b"strict-transport-security", b"max-age=31536000") in headers


@pytest.mark.parametrize("kwargs", [
    {"hsts_preload": True, "hsts_include_subdomains": False},
    {"hsts_preload": True, "hsts_max_age": 86400},
])
def test_preload_needs_the_list_requirements(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="hsts_preload"):
        SecurityHeadersSettings(**kwargs)


@pytest.mark.parametrize("credential", [
    {"authorization": "Bearer abc"}, {"x-api-key": "afk_live_abc_secret"}, {"cookie": "s=1"},
])
async def test_no_store_on_credentialed_requests(credential: dict[str, str]) -> None:
    async with client() as c:
        hello_r = await c.get("/hello", headers=credential)
        cached_r = await c.get("/cached", headers=credential)
        stored_r = await c.get("/stored", headers=credential)
        missing = await c.get("/nope", headers=credential)
        anonymous = await c.get("/cached")
    assert hello_r.headers.get_list("cache-control") == ["no-store"]
    # A weaker policy set by the app is replaced on a credentialed request...
    assert cached_r.headers.get_list("cache-control") == ["no-store"]
    # ...one that already forbids storing is kept as it is.
    assert stored_r.headers.get_list("cache-control") == ["private, no-store"]
    assert missing.headers.get_list("cache-control") == ["no-store"]
    assert anonymous.headers.get_list("cache-control") == ["public, max-age=600"]


async def test_banners_removed_whatever_their_case() -> None:
    async with client() as c:
        r = await c.get("/banner")
    assert r.status_code == 200
    assert_base(r)
    assert r.headers["content-type"] == "application/json"


async def test_route_override_replaces_and_adds() -> None:
    override = RouteHeadersSettings(
        content_security_policy="default-src 'self'; script-src 'self'",
        frame_options="SAMEORIGIN",
        cross_origin_resource_policy="cross-origin",
        extra_headers={"X-Robots-Tag": "noindex"},
    )
    layer = SecurityHeadersLayer(SecurityHeadersSettings(), {"GET /docs": override})
    async with client(layer=layer) as c:
        docs = await c.get("/docs")
        other = await c.get("/hello")
        missing = await c.get("/nope")
    assert docs.headers.get_list("content-security-policy") == [
        "default-src 'self'; script-src 'self'"]
    assert docs.headers["x-frame-options"] == "SAMEORIGIN"
    assert docs.headers["cross-origin-resource-policy"] == "cross-origin"
    assert docs.headers["x-robots-tag"] == "noindex"
    assert docs.headers["referrer-policy"] == "no-referrer"  # not overridden: global value
    assert docs.headers["x-content-type-options"] == "nosniff"
    assert_base(other)
    assert_base(missing)
    assert "x-robots-tag" not in other.headers


def test_bad_route_key_refused() -> None:
    with pytest.raises(ConfigurationError, match="route key"):
        SecurityHeadersLayer(SecurityHeadersSettings(), {"/docs": RouteHeadersSettings()})


@pytest.mark.parametrize("value", ["a\r\nSet-Cookie: x=1", "", " padded", "caf\u00e9", "a\x00"])
def test_header_injection_refused(value: str) -> None:
    with pytest.raises(ValidationError, match="header value"):
        SecurityHeadersSettings(content_security_policy=value)
    with pytest.raises(ValidationError, match="header value"):
        RouteHeadersSettings(extra_headers={"X-Note": value})


@pytest.mark.parametrize("name", [
    "Strict-Transport-Security", "content-security-policy", "Set-Cookie", "Cache-Control",
    "Access-Control-Allow-Origin", "Content-Length", "Server", "bad name", "x:y",
])
def test_reserved_or_bad_extra_header_names_refused(name: str) -> None:
    with pytest.raises(ValidationError, match="extra_headers"):
        RouteHeadersSettings(extra_headers={name: "1"})


def test_unknown_keys_refused() -> None:
    with pytest.raises(ValidationError):
        SecurityHeadersSettings.model_validate({"x_frame_options": "DENY"})
    with pytest.raises(ValidationError):
        SecurityHeadersSettings.model_validate({"frame_options": "ALLOW-FROM https://x"})


def context(scheme: str = "http", headers: dict[bytes, bytes] | None = None) -> RequestContext:
    return RequestContext("rid", "198.51.100.1", scheme, "GET", "/hello", headers or {})


def test_hook_cost_is_about_a_microsecond() -> None:
    """Not a benchmark: a guard against an accidental per-request parse or regex."""
    hook = SecurityHeadersLayer().response_hook()
    app_headers = [(b"content-type", b"application/json"), (b"content-length", b"17"),
                   (b"x-request-id", b"abc")]
    ctx = context("https", {b"host": b"api.example.com", b"authorization": b"Bearer x",
                            b"accept": b"*/*"})

    def run() -> None:
        hook(ctx, 200, list(app_headers))

    number = 20_000
    best = min(timeit.repeat(run, number=number, repeat=5)) / number
    baseline = min(timeit.repeat(lambda: list(app_headers), number=number, repeat=5)) / number
    assert best - baseline < 5e-6  # measured ≈ 0.5 µs; generous for slow CI machines
