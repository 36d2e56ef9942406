"""authorize(), require() and @requires() inside FastAPI and Starlette apps behind the pipeline."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from apiforge import authorize, get_context, protect, require, requires
from apiforge.access import Decision
from apiforge.core.context import Principal
from apiforge.events import EventBus

AUTHORIZATION: dict[str, Any] = {
    "roles": {
        "reader": {"permissions": ["items:read"]},
        "owner": {"inherits": ["reader"], "permissions": [
            {"permission": "items:delete", "when": "resource.item_id == 7"}]},
    },
}


def with_roles(pipeline: Any) -> Any:
    """Stands in for authentication: the caller is a user with the roles in ``x-roles``."""
    original = pipeline.app

    async def as_user(scope: Any, receive: Any, send: Any) -> None:
        ctx = get_context(scope)
        if ctx is not None:
            roles = ctx.headers.get(b"x-roles", b"").decode()
            ctx.principal = Principal(user="u1",
                                      roles=frozenset(r for r in roles.split(",") if r))
        await original(scope, receive, send)

    pipeline.app = as_user
    return pipeline


def fastapi_app() -> Any:
    api = FastAPI()

    @api.delete("/items/{item_id}", dependencies=[Depends(require("items:delete"))])
    async def delete(item_id: int) -> dict[str, Any]:
        return {"deleted": item_id}

    @api.get("/items/{item_id}")
    async def read(item_id: int, request: Request) -> dict[str, Any]:
        ctx = get_context(request.scope)
        decision = authorize(ctx.principal if ctx else None, "items:read", {"id": item_id})
        return {"allowed": decision.allowed, "by": decision.decided_by}

    typed = {"params": {"path": {"item_id": {"type": "integer"}}}}
    policy = {"routes": {"DELETE /items/{item_id}": typed, "GET /items/{item_id}": typed},
              "hosts": {"allowed_hosts": ["t"]}, "events": {"sink": "none"},
              "authorization": AUTHORIZATION}
    return with_roles(protect(api, policy, events=EventBus([])))


async def test_require_refuses_without_the_permission_and_rules_see_path_params() -> None:
    transport = httpx.ASGITransport(app=fastapi_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        refused = await c.delete("/items/7", headers={"x-roles": "reader"})
        assert refused.status_code == 403
        assert refused.headers["content-type"] == "application/problem+json"
        other = await c.delete("/items/8", headers={"x-roles": "owner"})
        assert other.status_code == 403  # the rule reads resource.item_id from the path
        ok = await c.delete("/items/7", headers={"x-roles": "owner"})
        assert ok.status_code == 200 and ok.json() == {"deleted": 7}


async def test_authorize_inside_a_handler() -> None:
    transport = httpx.ASGITransport(app=fastapi_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        allowed = await c.get("/items/1", headers={"x-roles": "reader"})
        assert allowed.json() == {"allowed": True, "by": "role:reader"}
        nobody = await c.get("/items/1")
        assert nobody.json()["allowed"] is False


async def test_requires_decorates_a_starlette_endpoint() -> None:
    @requires("items:read")
    async def endpoint(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/items", endpoint)])
    policy = {"routes": {"GET /items": {}}, "hosts": {"allowed_hosts": ["t"]},
              "events": {"sink": "none"}, "authorization": AUTHORIZATION}
    transport = httpx.ASGITransport(app=with_roles(protect(app, policy, events=EventBus([]))))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        assert (await c.get("/items", headers={"x-roles": "reader"})).status_code == 200
        assert (await c.get("/items")).status_code == 403


def test_without_a_pipeline_everything_is_denied() -> None:
    decision = authorize(Principal(roles=frozenset({"admin"})), "anything")
    assert isinstance(decision, Decision) and not decision.allowed
