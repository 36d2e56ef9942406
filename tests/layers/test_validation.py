from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from pydantic import BaseModel, ConfigDict, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from apiforge import get_context
from apiforge.core.pipeline import Pipeline
from apiforge.errors import FieldError, ValidationFailed
from apiforge.events import EventBus, MemorySink
from apiforge.layers.validation import ValidationLayer, sanitize_text
from apiforge.policy import load_policy


class Profile(BaseModel):
    model_config = ConfigDict(strict=True)
    name: str = Field(max_length=20)
    age: int = Field(ge=13, le=120)
    tags: list[str] = Field(default_factory=list, max_length=3)


SCHEMA = {
    "type": "object",
    "properties": {
        "email": {"type": "string", "format": "email", "maxLength": 50},
        "count": {"type": "integer", "minimum": 1, "maximum": 10},
    },
    "required": ["email"],
}

POLICY: dict[str, Any] = {
    "routes": {
        "PUT /profile": {"body": {"sanitize": {"name": {"strip_html": True}}}},
        "POST /schema": {"body": {"json_schema": SCHEMA}},
        "POST /open": {"body": {"json_schema": SCHEMA, "unknown_fields": "allow"}},
        "POST /raw": {"limits": {"json_body": {"max_depth": 3}}, "body": {}},
    },
    "events": {"sink": "none"},
}


async def echo(request: Request) -> JSONResponse:
    ctx = get_context(request.scope)
    assert ctx is not None
    raw = await request.body()
    model = ctx.model.model_dump() if ctx.model is not None else None
    return JSONResponse({"json": ctx.json, "raw": raw.decode(), "model": model})


def no_admins(value: Any, ctx: Any) -> None:
    if value.get("name") == "admin":
        raise ValidationFailed([FieldError("name", "This name is reserved.")])


def client(events: EventBus | None = None) -> httpx.AsyncClient:
    app = Starlette(routes=[Route(p, echo, methods=[m]) for m, p in
                            (("PUT", "/profile"), ("POST", "/schema"), ("POST", "/open"),
                             ("POST", "/raw"))])
    policy = load_policy(POLICY)
    layer = ValidationLayer(policy, models={"PUT /profile": Profile},
                            checks={"PUT /profile": no_admins})
    pipeline = Pipeline(app, policy, layers=[layer], events=events)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=pipeline), base_url="http://t")


def errors(response: httpx.Response) -> list[tuple[str, str]]:
    assert response.headers["content-type"] == "application/problem+json"
    return [(e["field"], e["message"]) for e in response.json()["errors"]]


async def test_valid_body_is_parsed_once_and_handed_over() -> None:
    async with client() as c:
        r = await c.put("/profile", json={"name": "Tom <b>&</b> Jerry", "age": 30})
    assert r.status_code == 200
    body = r.json()
    assert body["json"] == {"name": "Tom &amp; Jerry", "age": 30}
    assert orjson.loads(body["raw"]) == body["json"]  # the app reads the sanitized body
    assert body["model"]["age"] == 30


@pytest.mark.parametrize(("payload", "expected"), [
    ({"name": "x", "age": "30"}, [("age", "Must be an integer.")]),
    ({"name": "x", "age": 30.0}, [("age", "Must be an integer.")]),
    ({"name": "x", "age": True}, [("age", "Must be an integer.")]),
    ({"name": "x", "age": 12}, [("age", "Must be at least 13.")]),
    ({"name": "x" * 21, "age": 30}, [("name", "Must be at most 20 characters.")]),
    ({"age": 30}, [("name", "This field is required.")]),
    ({"name": "x", "age": 30, "tags": ["a", "b", "c", "d"]},
     [("tags", "Must have at most 3 items.")]),
    ({"name": "admin", "age": 30}, [("name", "This name is reserved.")]),
])
async def test_pydantic_errors_in_our_words(payload: Any, expected: Any) -> None:
    async with client() as c:
        r = await c.put("/profile", json=payload)
    assert r.status_code == 422
    assert errors(r) == expected
    assert "pydantic" not in r.text and "Input should" not in r.text


async def test_unknown_fields_are_mass_assignment() -> None:
    sink = MemorySink()
    bus = EventBus([sink])
    bus.start()
    async with client(bus) as c:
        r = await c.put("/profile", json={"name": "x", "age": 30, "role": "admin",
                                          "<script>": 1})
    assert r.status_code == 422
    assert errors(r) == [("role", "This field is not allowed."), ("", "This field is not allowed.")]
    assert "<script>" not in r.text
    bus.flush()
    assert [e["event"] for e in sink.events] == ["malicious_extraneous"]
    bus.close()


async def test_json_schema_route() -> None:
    async with client() as c:
        ok = await c.post("/schema", json={"email": "a@example.com", "count": 3})
        bad = await c.post("/schema", json={"email": "not-an-email", "count": 11, "x": 1})
        missing = await c.post("/schema", json={})
        allowed = await c.post("/open", json={"email": "a@example.com", "x": 1})
    assert ok.status_code == 200 and ok.json()["json"]["count"] == 3
    assert bad.status_code == 422 and errors(bad) == [("x", "This field is not allowed.")]
    assert errors(missing) == [("email", "This field is required.")]
    assert allowed.status_code == 200


async def test_schema_bounds_and_formats() -> None:
    async with client() as c:
        r = await c.post("/open", json={"email": "not-an-email", "count": 11})
    assert sorted(errors(r)) == [("count", "Must be at most 10."),
                                 ("email", "Does not have the required format.")]


@pytest.mark.parametrize(("content_type", "status"), [
    ("text/plain", 415), ("application/x-www-form-urlencoded", 415),
    ("application/json; charset=utf-8", 200), ("application/merge-patch+json", 200),
])
async def test_media_type(content_type: str, status: int) -> None:
    async with client() as c:
        r = await c.post("/schema", content=b'{"email": "a@example.com"}',
                         headers={"content-type": content_type})
    assert r.status_code == status


async def test_missing_media_type_is_415() -> None:
    async with client() as c:
        r = await c.post("/schema", content=b'{"email": "a@example.com"}')
    assert r.status_code == 415 and r.json()["code"] == "unsupported_media_type"


@pytest.mark.parametrize(("body", "code"), [
    (b'{"a": [[[[1]]]]}', "json_too_deep"),
    (b'{"a": 1, "a": 2}', "json_duplicate_key"),
    (b'{"a": 123456789012345678901234}', "json_number_too_long"),
    (b"{", "json_malformed"),
    (b"\xff\xfe", "json_malformed"),
])
async def test_structure_refused_with_400(body: bytes, code: str) -> None:
    async with client() as c:
        r = await c.post("/raw", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["code"] == code


async def test_control_characters_refused_and_text_normalized() -> None:
    async with client() as c:
        bad = await c.post("/raw", json={"a": "x\u0000y"})
        nfd = await c.post("/raw", json={"a": "e\u0301"})
    assert errors(bad) == [("a", "Must not contain control characters.")]
    assert nfd.json()["json"] == {"a": "\u00e9"}


def test_sanitize_text_keeps_tabs_and_newlines() -> None:
    value, problems = sanitize_text({"a": ["x\ty\nz\r"], "b": {"c": "\x7f"}})
    assert value == {"a": ["x\ty\nz\r"], "b": {"c": "\x7f"}}
    assert problems == [FieldError("b.c", "Must not contain control characters.")]


PARAMS_POLICY: dict[str, Any] = {
    "routes": {
        "GET /items/{id}": {"params": {
            "path": {"id": {"type": "integer", "minimum": 1}},
            "query": {"page": {"type": "integer", "minimum": 1, "maximum": 100},
                      "sort": {"enum": ["asc", "desc"]},
                      "flag": {"type": "boolean"},
                      "q": {"maxLength": 5, "required": True}},
            "headers": {"X-Tenant": {"pattern": "^[a-z]{2,8}$", "required": True}},
        }},
    },
    "events": {"sink": "none"},
}


def params_client() -> httpx.AsyncClient:
    async def item(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    policy = load_policy(PARAMS_POLICY)
    pipeline = Pipeline(Starlette(routes=[Route("/items/{id}", item)]), policy,
                        layers=[ValidationLayer(policy)])
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=pipeline), base_url="http://t",
                             headers={"x-tenant": "acme"})


@pytest.mark.parametrize(("url", "headers", "expected"), [
    ("/items/7?q=a", {}, None),
    ("/items/7?q=a&page=3&sort=asc&flag=true", {}, None),
    ("/items/x?q=a", {}, [("path.id", "Must be an integer.")]),
    ("/items/0?q=a", {}, [("path.id", "Must be at least 1.")]),
    ("/items/7?q=a&page=1.5", {}, [("query.page", "Must be an integer.")]),
    ("/items/7?q=a&page=101", {}, [("query.page", "Must be at most 100.")]),
    ("/items/7?q=a&sort=random", {}, [("query.sort", "Must be one of the allowed values.")]),
    ("/items/7?q=a&flag=1", {}, [("query.flag", "Must be true or false.")]),
    ("/items/7", {}, [("query.q", "This field is required.")]),
    ("/items/7?q=abcdef", {}, [("query.q", "Must be at most 5 characters.")]),
    ("/items/7?q=a&q=b", {}, [("query.q", "Must appear only once.")]),
    ("/items/7?q=a&admin=1", {}, [("query.admin", "This field is not allowed.")]),
    ("/items/7?q=a&%3Cx%3E=1", {}, [("query", "This field is not allowed.")]),
    ("/items/7?q=a", {"x-tenant": "ACME!"}, [("headers.x-tenant",
                                              "Does not have the required form.")]),
])
async def test_parameters(url: str, headers: dict[str, str], expected: Any) -> None:
    async with params_client() as c:
        r = await c.get(url, headers=headers)
    if expected is None:
        assert r.status_code == 200, r.text
    else:
        assert r.status_code == 422
        assert errors(r) == expected
        assert "<x>" not in r.text and "ACME!" not in r.text


async def test_parameter_texts_found_valid_are_remembered_within_a_bound() -> None:
    from apiforge.layers import validation

    async with params_client() as c:
        for _ in range(2):  # a remembered valid text passes again; a refused one stays refused
            assert (await c.get("/items/7?q=a")).status_code == 200
            assert (await c.get("/items/0?q=a")).status_code == 422
            assert (await c.get("/items/x?q=a")).status_code == 422
        for n in range(1, validation._VALID_KEPT + 50):  # many distinct ids: the set stays bounded
            assert (await c.get(f"/items/{n}?q=a")).status_code == 200
        pipeline = c._transport.app  # type: ignore[attr-defined]
        kept = [p for plan in pipeline.routes.plans for hook in plan.request_hooks
                if isinstance(hook, validation._ParameterValidator) for p in hook.path.values()]
        assert kept and all(0 < len(p.valid) <= validation._VALID_KEPT for p in kept)
        assert all("0" not in p.valid and "x" not in p.valid for p in kept)
        tenants = [p for plan in pipeline.routes.plans for hook in plan.request_hooks
                   if isinstance(hook, validation._ParameterValidator)
                   for p in hook.headers.values()]
        assert all("acme" in p.valid for p in tenants)  # short texts only are kept


def test_only_short_valid_texts_are_remembered() -> None:
    from apiforge.layers import validation

    parameter = validation._Parameter("query.s", {"type": "string", "maxLength": 500})
    long_text = "a" * (validation._VALID_KEPT_LENGTH + 1)
    assert parameter.problem(long_text) is None and parameter.problem("a") is None
    assert parameter.valid == {"a"}
    assert parameter.problem("b" * 501) is not None and parameter.valid == {"a"}


async def test_normalized_text_is_what_the_app_reads() -> None:
    async with client() as c:
        r = await c.post("/raw", json={"a": "e\u0301"})
    assert orjson.loads(r.json()["raw"]) == {"a": "\u00e9"}


async def test_two_spellings_of_one_key_are_refused() -> None:
    body = '{"caf\u00e9": 1, "cafe\u0301": 2}'.encode()
    async with client() as c:
        r = await c.post("/raw", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert errors(r) == [("", "A member is given twice.")]
