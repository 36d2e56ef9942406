"""The authorization layer in a small app: closed by default, report mode, loaders, lists."""

from __future__ import annotations

from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from apiforge import protect
from apiforge.core.context import Principal
from apiforge.events import EventBus, MemorySink

DOCS = {1: {"id": 1, "owner": "ann", "secret": "s1"}, 2: {"id": 2, "owner": "bo", "secret": "s2"}}


async def doc(request: Request) -> JSONResponse:
    if request.path_params["id"] == "3":
        return JSONResponse("s3")  # an answer that is not an object
    found = DOCS.get(int(request.path_params["id"]))
    if request.method == "DELETE":
        DOCS.pop(int(request.path_params["id"]), None)
    return JSONResponse(found) if found else JSONResponse({"detail": "x"}, status_code=404)


async def docs(request: Request) -> JSONResponse:
    return JSONResponse(list(DOCS.values()))


async def other(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


def build(mode: str = "enforce") -> tuple[Any, MemorySink]:
    app = Starlette(routes=[Route("/docs/{id}", doc, methods=["GET", "DELETE"]),
                            Route("/docs", docs), Route("/other", other)])
    typed = {"params": {"path": {"id": {"type": "integer"}}}}
    policy = {
        "routes": {
            "GET /docs/{id}": {**typed, "auth": "api_key",
                               "authorize": {"permission": "docs:read", "resource": "doc",
                                             "check_response": True}},
            "DELETE /docs/{id}": {**typed, "auth": "api_key",
                                  "authorize": {"permission": "docs:delete", "resource": "doc"}},
            "GET /docs": {"auth": "api_key",
                          "authorize": {"permission": "docs:list", "resource": "doc",
                                        "check_response": True}},
            "GET /other": {"auth": "api_key"},  # no permission named: closed
        },
        "hosts": {"allowed_hosts": ["t"]},
        "events": {"sink": "none"},
        "authorization": {
            "mode": mode,
            "roles": {"reader": {"permissions": [
                "docs:list",
                {"permission": "docs:read", "when": "resource.owner == principal.username"},
                {"permission": "docs:delete", "when": "resource.owner == principal.username"},
            ]}},
            "resources": {"doc": {"read": "docs:read",
                                  "fields": {"reader": {"read": {"deny": ["secret"]}}}}},
        },
    }
    sink = MemorySink()
    bus = EventBus([sink])
    bus.start()

    def load(ctx: Any) -> dict[str, Any] | None:
        return DOCS.get(int(ctx.path_params["id"]))

    pipeline = protect(app, policy, events=bus, identity=_NoIdentity(),  # type: ignore[arg-type]
                       resources={"DELETE /docs/{id}": load})
    # Authentication stands in: every request is ann, a reader.
    for layer in pipeline.layers:
        if layer.name == "authn":
            for plan in pipeline.routes.plans:
                plan.request_hooks = tuple(h if getattr(h, "__self__", None) is not layer
                                           else _as_ann for h in plan.request_hooks)
    return pipeline, sink


class _NoIdentity:
    """What the API-key layer needs to plan its routes; its check is replaced below."""

    ready = True
    tokens = None


def _as_ann(ctx: Any, scope: Any) -> None:
    ctx.principal = Principal(user="u-ann", username="ann", roles=frozenset({"reader"}))


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def events(sink: MemorySink, name: str) -> list[dict[str, Any]]:
    return [e for e in sink.events if e["event"] == name]


async def test_objects_fields_lists_and_closed_routes() -> None:
    app, sink = build()
    async with client(app) as c:
        own = await c.get("/docs/1")
        assert own.status_code == 200 and own.json() == {"id": 1, "owner": "ann"}
        hidden = await c.get("/docs/2")
        missing = await c.get("/docs/99")
        assert hidden.status_code == missing.status_code == 404
        assert hidden.json()["title"] == missing.json()["title"]
        assert [d["id"] for d in (await c.get("/docs")).json()] == [1]
        assert (await c.get("/other")).status_code == 403
        assert (await c.delete("/docs/2")).status_code == 404
        assert 2 in DOCS  # decided before the handler: nothing was deleted
    app.events.flush()
    assert events(sink, "malicious_direct_reference")
    closed = events(sink, "authz_fail")
    assert closed and closed[0]["details"]["decided_by"] == "route"


async def test_report_mode_lets_everything_through_and_logs() -> None:
    app, sink = build("report")
    async with client(app) as c:
        assert (await c.get("/docs/2")).status_code == 200
        assert (await c.get("/other")).status_code == 200
    app.events.flush()
    reported = events(sink, "malicious_direct_reference") + events(sink, "authz_fail")
    assert len(reported) >= 2 and all(e["outcome"] == "report" for e in reported)


async def test_what_the_checks_cannot_read_is_refused() -> None:
    app, _ = build()
    async with client(app) as c:
        scalar = await c.get("/docs/3")
        assert scalar.status_code == 500 and b"s3" not in scalar.content
        unreadable = await c.request("DELETE", "/docs/1", content=b'{"id": NaN}',
                                     headers={"content-type": "application/json"})
        assert unreadable.status_code == 400 and unreadable.json()["code"] == "malformed_json"
        assert 1 in DOCS


async def test_a_remembered_answer_serves_only_the_principal_it_was_checked_for() -> None:
    """Allowed read answers are remembered by principal and bytes: the same bytes for anyone
    else, or for the same user under other roles, are decided again and refused."""
    items = {"1": {"id": 1, "owner": "ann"}}

    async def item(request: Request) -> JSONResponse:
        return JSONResponse(items[request.path_params["id"]])

    policy = {
        "routes": {"GET /items/{id}": {
            "auth": "api_key",
            "authorize": {"permission": "items:read", "resource": "item",
                          "check_response": True}}},
        "hosts": {"allowed_hosts": ["t"]},
        "events": {"sink": "none"},
        "authorization": {
            "roles": {"owner": {"permissions": [
                {"permission": "items:read", "when": "resource.owner == principal.username"},
            ]}},
            "resources": {"item": {"read": "items:read"}},  # no field rules: answers kept whole
        },
    }
    principals = {
        "ann": Principal(user="u-ann", username="ann", roles=frozenset({"owner"})),
        "bo": Principal(user="u-bo", username="bo", roles=frozenset({"owner"})),
        "ann-demoted": Principal(user="u-ann", username="ann", roles=frozenset()),
    }

    def as_header(ctx: Any, scope: Any) -> None:
        ctx.principal = principals[ctx.headers[b"x-who"].decode()]

    app = protect(Starlette(routes=[Route("/items/{id}", item)]), policy,
                  events=EventBus([]), identity=_NoIdentity())  # type: ignore[arg-type]
    for layer in app.layers:
        if layer.name == "authn":
            for plan in app.routes.plans:
                plan.request_hooks = tuple(h if getattr(h, "__self__", None) is not layer
                                           else as_header for h in plan.request_hooks)
    async with client(app) as c:
        for who, status in [("ann", 200), ("ann", 200), ("bo", 404), ("ann-demoted", 403),
                            ("ann", 200), ("bo", 404)]:
            answer = await c.get("/items/1", headers={"x-who": who})
            assert answer.status_code == status, who
            if status == 200:
                assert answer.json() == {"id": 1, "owner": "ann"}
