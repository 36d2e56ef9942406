from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from apiforge import get_context, protect
from apiforge.core.pipeline import Pipeline
from apiforge.core.routing import Respond, RoutePlan
from apiforge.events import EventBus, MemorySink
from apiforge.policy import load_policy

POLICY = {
    "routes": {
        "GET /hello": {},
        "GET /items/{id}": {},
        "POST /items": {},
        "GET /boom": {},
        "GET /teapot": {},
        "GET /who": {},
    },
    "events": {"sink": "none"},
    "hosts": {"allowed_hosts": ["testserver", "t"]},
}


async def hello(request: Request) -> JSONResponse:
    return JSONResponse({"hello": "world"})


async def item(request: Request) -> JSONResponse:
    if request.path_params["id"] == "404":
        return JSONResponse({"detail": "no item 404 in table items"}, status_code=404)
    return JSONResponse({"id": request.path_params["id"]})


async def boom(request: Request) -> JSONResponse:
    raise RuntimeError("secret detail /etc/passwd SELECT * FROM users")


async def teapot(request: Request) -> PlainTextResponse:
    return PlainTextResponse("I'm a teapot with internals", status_code=418)


async def who(request: Request) -> JSONResponse:
    ctx = get_context(request.scope)
    assert ctx is not None
    return JSONResponse({"client": ctx.client, "scheme": ctx.scheme, "rid": ctx.request_id})


def starlette_app() -> Starlette:
    return Starlette(routes=[
        Route("/hello", hello), Route("/items/{id}", item), Route("/items", hello,
                                                                  methods=["POST"]),
        Route("/boom", boom), Route("/teapot", teapot), Route("/who", who),
        Route("/undeclared", hello),
    ])


def fastapi_app() -> FastAPI:
    api = FastAPI()

    @api.get("/hello")
    async def f_hello() -> dict[str, str]:
        return {"hello": "world"}

    @api.get("/items/{id}")
    async def f_item(id: int) -> dict[str, int]:
        return {"id": id}

    @api.post("/items")
    async def f_post() -> dict[str, str]:
        return {"hello": "world"}

    @api.get("/boom")
    async def f_boom() -> dict[str, str]:
        raise RuntimeError("secret detail /etc/passwd")

    @api.get("/undeclared")
    async def f_undeclared() -> dict[str, str]:
        return {"hello": "world"}

    return api


@pytest.fixture(params=["starlette", "fastapi"])
def app_factory(request: pytest.FixtureRequest) -> Any:
    return starlette_app if request.param == "starlette" else fastapi_app


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = orjson.loads(response.content)
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"].endswith(f"/docs/errors.md#{code}")
    assert body["request_id"] == response.headers["x-request-id"]
    for leak in ("Traceback", "RuntimeError", "/etc/passwd", "SELECT", "starlette", "fastapi"):
        assert leak not in response.text
    return body


async def test_declared_route_passes_with_request_id(app_factory: Any) -> None:
    async with client(protect(app_factory(), POLICY)) as c:
        r = await c.get("/hello")
    assert r.status_code == 200 and r.json() == {"hello": "world"}
    assert len(r.headers["x-request-id"]) >= 8


async def test_undeclared_route_never_reaches_app(app_factory: Any) -> None:
    async with client(protect(app_factory(), POLICY)) as c:
        assert_problem(await c.get("/undeclared"), 404, "not_found")


async def test_undeclared_method_is_405_with_allow(app_factory: Any) -> None:
    async with client(protect(app_factory(), POLICY)) as c:
        r = await c.delete("/hello")
    assert_problem(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "GET, HEAD"


async def test_app_exception_is_a_generic_500(app_factory: Any,
                                              caplog: pytest.LogCaptureFixture) -> None:
    sink = MemorySink()
    bus = EventBus([sink])
    bus.start()
    with caplog.at_level(logging.ERROR, logger="apiforge"):
        async with client(protect(app_factory(), POLICY, events=bus)) as c:
            c._transport._raise_app_exceptions = False  # type: ignore[attr-defined]
            r = await c.get("/boom")
    body = assert_problem(r, 500, "internal_error")
    assert set(body) == {"type", "title", "status", "code", "request_id"}
    assert any("secret detail" in rec.getMessage() or rec.exc_info for rec in caplog.records)
    bus.flush()
    assert [e["event"] for e in sink.events] == ["sys_crash"]
    assert sink.events[0]["request_id"] == body["request_id"]
    bus.close()


@pytest.mark.parametrize(("supplied", "kept"), [
    ("abc-123_X.y", True), ("a" * 64, True), ("a" * 65, False), ("", False),
    ("bad id", False), ("<script>", False), ("é", False),
])
async def test_request_id_kept_only_when_well_formed(supplied: str, kept: bool) -> None:
    async with client(protect(starlette_app(), POLICY)) as c:
        r = await c.get("/who", headers={"x-request-id": supplied.encode("utf-8")})
        bad = await c.get("/nope", headers={"x-request-id": supplied.encode("utf-8")})
    assert (r.headers["x-request-id"] == supplied) is kept
    assert r.json()["rid"] == r.headers["x-request-id"]
    assert (bad.headers["x-request-id"] == supplied) is kept
    assert orjson.loads(bad.content)["request_id"] == bad.headers["x-request-id"]


async def test_generated_request_ids_are_unique() -> None:
    async with client(protect(starlette_app(), POLICY)) as c:
        ids = {(await c.get("/hello")).headers["x-request-id"] for _ in range(50)}
    assert len(ids) == 50


async def test_app_error_without_problem_body_is_replaced() -> None:
    async with client(protect(starlette_app(), POLICY)) as c:
        r = await c.get("/items/404")
        teapot = await c.get("/teapot")
    assert_problem(r, 404, "not_found")
    assert "table items" not in r.text
    body = assert_problem(teapot, 418, "client_error")
    assert "internals" not in teapot.text and body["status"] == 418


async def test_fastapi_validation_error_becomes_problem() -> None:
    async with client(protect(fastapi_app(), POLICY)) as c:
        r = await c.get("/items/not-a-number")
    assert_problem(r, 422, "validation_failed")
    assert "int_parsing" not in r.text and "not-a-number" not in r.text


async def test_head_gets_no_body() -> None:
    async with client(protect(starlette_app(), POLICY)) as c:
        r = await c.head("/nope")
    assert r.status_code == 404 and r.content == b""


async def test_bad_path_is_400_and_an_event(events: EventBus, event_sink: MemorySink) -> None:
    async with client(protect(starlette_app(), POLICY, events=events)) as c:
        r = await c.get("/items/..%2Fhello")
    assert_problem(r, 400, "bad_path")
    events.flush()
    assert event_sink.events[-1]["event"] == "input_validation_fail"
    assert event_sink.events[-1]["reason"] == "encoded_separator"


async def test_repeated_sensitive_header_refused() -> None:
    async with client(protect(starlette_app(), POLICY)) as c:
        r = await c.get("/hello", headers=[("x-api-key", "a"), ("x-api-key", "b")])
        ok = await c.get("/hello", headers=[("accept", "a"), ("accept", "b")])
    assert_problem(r, 400, "repeated_header")
    assert ok.status_code == 200


async def test_trusted_proxy_sets_client_for_the_app() -> None:
    policy = {**POLICY, "trusted_proxies": ["127.0.0.0/8"]}
    transport = httpx.ASGITransport(app=protect(starlette_app(), policy), client=("127.0.0.1", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        r = await c.get("/who", headers={"x-forwarded-for": "6.6.6.6, 198.51.100.4",
                                         "x-forwarded-proto": "https"})
    assert r.json()["client"] == "198.51.100.4" and r.json()["scheme"] == "https"


async def test_forged_forwarding_from_untrusted_peer_changes_nothing() -> None:
    app = protect(starlette_app(), POLICY)
    transport = httpx.ASGITransport(app=app, client=("198.51.100.9", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        r = await c.get("/who", headers={"x-forwarded-for": "1.2.3.4", "forwarded": "for=1.2.3.4"})
    assert r.json()["client"] == "198.51.100.9"


class ExplodingLayer:
    name = "exploding"

    def __init__(self) -> None:
        self.app_called = False

    def early_hook(self) -> None:
        return None

    def response_hook(self) -> None:
        return None

    def attach(self, plan: RoutePlan) -> None:
        def hook(ctx: Any, scope: Any) -> None:
            raise KeyError("internal state")
        plan.request_hooks = (*plan.request_hooks, hook)


async def test_a_failing_layer_denies_fail_closed() -> None:
    called = False

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal called
        called = True

    pipeline = Pipeline(app, load_policy(POLICY), layers=[ExplodingLayer()])
    async with client(pipeline) as c:
        r = await c.get("/hello")
    assert_problem(r, 500, "internal_error")
    assert not called


async def test_lifespan_passes_through() -> None:
    started = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        started.append(True)
        yield

    app = protect(Starlette(lifespan=lifespan), POLICY)
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert started == [True]


async def test_websocket_refused() -> None:
    app = protect(starlette_app(), POLICY)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: Any) -> None:
        sent.append(message)

    await app({"type": "websocket", "path": "/hello", "headers": []}, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008}]


class PreflightLayer:
    """Answers OPTIONS itself and stamps every response, to exercise the hook kinds."""

    name = "preflight"

    def early_hook(self) -> Any:
        def hook(ctx: Any, scope: Any) -> None:
            if ctx.method == "OPTIONS":
                raise Respond(204, [(b"x-preflight", b"yes")])
        return hook

    def response_hook(self) -> Any:
        def hook(ctx: Any, status: int, headers: list[tuple[bytes, bytes]]) -> None:
            headers.append((b"x-stamp", str(status).encode()))
        return hook

    def attach(self, plan: RoutePlan) -> None:
        return None


async def test_layers_answer_early_and_stamp_every_response() -> None:
    pipeline = Pipeline(starlette_app(), load_policy(POLICY), layers=[PreflightLayer()])
    async with client(pipeline) as c:
        pre = await c.options("/anything")
        ok = await c.get("/hello")
        missing = await c.get("/nope")
        crash = await c.get("/items/404")
    assert pre.status_code == 204 and pre.headers["x-preflight"] == "yes"
    assert pre.headers["x-stamp"] == "204" and pre.headers["x-request-id"]
    assert ok.headers["x-stamp"] == "200"
    assert missing.headers["x-stamp"] == "404"
    assert crash.headers["x-stamp"] == "404"


async def test_trailing_slash_redirect_is_relative() -> None:
    policy = {**POLICY, "trailing_slash": "redirect"}
    async with client(protect(starlette_app(), policy)) as c:
        r = await c.get("/hello/")
    assert r.status_code == 308 and r.headers["location"] == "/hello"
