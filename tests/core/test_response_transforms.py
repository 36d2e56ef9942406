"""Response transforms: a 2xx body is held, checked and rewritten before any byte leaves."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from apiforge.core.context import RequestContext
from apiforge.core.pipeline import Pipeline
from apiforge.core.routing import RoutePlan
from apiforge.errors import NotFound
from apiforge.events import EventBus
from apiforge.policy import load_policy


async def data(request: Request) -> Response:
    return JSONResponse({"secret": "s", "name": "n"})


async def streamed(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        for part in (b'{"name":', b' "n", "secret"', b': "s"}'):
            yield part

    return StreamingResponse(chunks(), media_type="application/json")


async def missing(request: Request) -> Response:
    return JSONResponse({"code": "gone"}, status_code=404)


def redact(ctx: RequestContext, status: int, body: bytes) -> bytes:
    return body.replace(b'"s"', b'"***"')


def refuse_bob(ctx: RequestContext, status: int, body: bytes) -> bytes:
    if ctx.headers.get(b"x-user") == b"bob":
        raise NotFound()
    if ctx.headers.get(b"x-user") == b"crash":
        raise RuntimeError("bug in a check")
    return body


class Transforming:
    name = "transforming"

    def early_hook(self) -> None:
        return None

    def response_hook(self) -> None:
        return None

    def attach(self, plan: RoutePlan) -> None:
        plan.response_transforms = (*plan.response_transforms, redact, refuse_bob)


def client() -> httpx.AsyncClient:
    app = Starlette(routes=[Route("/data", data), Route("/stream", streamed),
                            Route("/missing", missing)])
    policy = load_policy({"routes": {"GET /data": {}, "GET /stream": {}, "GET /missing": {}},
                          "events": {"sink": "none"}})
    pipeline = Pipeline(app, policy, layers=[Transforming()], events=EventBus([]))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=pipeline), base_url="http://t")


async def test_body_is_rewritten_and_length_fixed() -> None:
    async with client() as c:
        for path in ("/data", "/stream"):
            response = await c.get(path)
            assert response.status_code == 200
            assert b'"***"' in response.content and b'"s"' not in response.content
            if "content-length" in response.headers:
                assert int(response.headers["content-length"]) == len(response.content)
            assert response.headers["x-request-id"]


async def test_a_check_can_replace_the_answer_with_a_problem() -> None:
    async with client() as c:
        refused = await c.get("/data", headers={"x-user": "bob"})
        assert refused.status_code == 404
        assert refused.headers["content-type"] == "application/problem+json"
        assert b"secret" not in refused.content and b"***" not in refused.content


async def test_a_failing_check_withholds_the_answer() -> None:
    async with client() as c:
        crashed = await c.get("/stream", headers={"x-user": "crash"})
        assert crashed.status_code == 500
        assert b"secret" not in crashed.content and b"bug" not in crashed.content


async def test_errors_are_not_transformed() -> None:
    async with client() as c:
        response = await c.get("/missing", headers={"x-user": "bob"})
        assert response.status_code == 404 and response.json()["code"] == "not_found"


def test_unused_on_routes_without_transforms() -> None:
    plan: Any = RoutePlan("GET /x", "GET", "/x", settings=None)  # type: ignore[arg-type]
    assert plan.response_transforms == ()
