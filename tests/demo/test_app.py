"""The demo users API over ASGI: routes, validation, errors, and the pipeline's context."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from apiforge.core.context import SCOPE_KEY, Principal, RequestContext
from apiforge.demo.app import MAX_BODY_BYTES, create_app
from apiforge.demo.openapi import build_openapi
from apiforge.demo.schemas import ProfileUpdate

ALICE = {
    "id": 1,
    "username": "alice",
    "email": "alice@example.com",
    "age": 34,
    "bio": "",
    "role": "user",
    "status": "active",
}
PROBLEM = "application/problem+json"


class DemoClient:
    """Drives an ASGI app through httpx's ASGI transport from synchronous tests."""

    def __init__(self, app: ASGIApp) -> None:
        self._runner = asyncio.Runner()
        self._client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://demo.test"
        )

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self._runner.run(self._client.request(method, url, **kwargs))

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", url, **kwargs)

    def close(self) -> None:
        self._runner.run(self._client.aclose())
        self._runner.close()


@pytest.fixture
def app(tmp_path: Path) -> Starlette:
    return create_app(tmp_path / "data")


@pytest.fixture
def client(app: Starlette) -> Iterator[DemoClient]:
    demo = DemoClient(app)
    yield demo
    demo.close()


def put_me(client: DemoClient, body: object) -> httpx.Response:
    # The standard json module writes any int, so huge numbers reach the app as sent.
    return client.put("/v1/users/me", content=json.dumps(body).encode(), headers=JSON_HEADERS)


JSON_HEADERS = {"content-type": "application/json"}


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"].endswith("#" + code)
    assert response.headers["x-request-id"] == body["request_id"]
    return body


def field_errors(response: httpx.Response) -> list[tuple[str, str]]:
    body = assert_problem(response, 422, "validation_failed")
    return [(e["field"], e["message"]) for e in body["errors"]]


def without_request_id(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    del body["request_id"]
    return body


# --- reading ---------------------------------------------------------------------------------


def test_get_me_is_alice_without_the_pipeline(client: DemoClient) -> None:
    response = client.get("/v1/users/me")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == ALICE


def test_head_me_has_no_body(client: DemoClient) -> None:
    response = client.request("HEAD", "/v1/users/me")
    assert response.status_code == 200
    assert response.content == b""


@pytest.mark.parametrize(
    ("user_id", "username", "role"),
    [("1", "alice", "user"), ("2", "bob", "user"), ("3", "sam", "support"), ("4", "ada", "admin")],
)
def test_get_user_by_id(client: DemoClient, user_id: str, username: str, role: str) -> None:
    response = client.get(f"/v1/users/{user_id}")
    assert response.status_code == 200
    body = response.json()
    assert (body["id"], body["username"], body["role"]) == (int(user_id), username, role)
    assert body["email"] == f"{username}@example.com"


@pytest.mark.parametrize(
    "path",
    [
        "/v1/users/abc",
        "/v1/users/0",
        "/v1/users/00",
        "/v1/users/01",
        "/v1/users/-1",
        "/v1/users/+1",
        "/v1/users/1.0",
        "/v1/users/1e3",
        "/v1/users/%201",
        "/v1/users/1%20",
        "/v1/users/%D9%A1",  # ARABIC-INDIC DIGIT ONE: int() would accept it
        "/v1/users/0x1",
        "/v1/users/1_0",
        "/v1/users/99999999999999999999999",
        "/v1/users/1000000000000000000",  # 19 digits
        "/v1/users/" + "9" * 5000,
        "/v1/users/999999999999999999",  # 18 digits, well formed, nobody has it
        "/v1/users/5",
        "/v1/users/",
        "/v1/users/1/2",
        "/v1/nothing",
    ],
)
def test_every_bad_or_missing_id_gets_the_same_404(client: DemoClient, path: str) -> None:
    missing = client.get("/v1/users/404")
    response = client.get(path)
    assert_problem(response, 404, "not_found")
    assert without_request_id(response) == without_request_id(missing)
    assert response.headers.keys() == missing.headers.keys()


def test_request_ids_are_fresh_without_the_pipeline(client: DemoClient) -> None:
    first = assert_problem(client.get("/v1/users/404"), 404, "not_found")["request_id"]
    second = assert_problem(client.get("/v1/users/404"), 404, "not_found")["request_id"]
    assert re.fullmatch(r"[0-9a-f]{16}", first)
    assert first != second


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/v1/users/me", "GET, HEAD, PUT"),
        ("POST", "/v1/users/me", "GET, HEAD, PUT"),
        ("DELETE", "/v1/users/1", "GET, HEAD, PUT"),
        ("POST", "/openapi.json", "GET, HEAD"),
    ],
)
def test_wrong_method_is_a_405_problem(
    client: DemoClient, method: str, path: str, allow: str
) -> None:
    response = client.request(method, path)
    assert_problem(response, 405, "method_not_allowed")
    assert response.headers["allow"] == allow


def test_data_dir_is_created_with_a_seeded_database(tmp_path: Path) -> None:
    data_dir = tmp_path / "a" / "b"
    demo = DemoClient(create_app(data_dir))
    try:
        assert (data_dir / "demo.db").is_file()
        assert demo.get("/v1/users/4").json()["username"] == "ada"
    finally:
        demo.close()


def test_changes_survive_a_new_app_on_the_same_dir(tmp_path: Path) -> None:
    first = DemoClient(create_app(tmp_path))
    try:
        assert put_me(first, {"email": "kept@example.com"}).status_code == 200
    finally:
        first.close()
    second = DemoClient(create_app(tmp_path))
    try:
        assert second.get("/v1/users/me").json()["email"] == "kept@example.com"
    finally:
        second.close()


# --- updating --------------------------------------------------------------------------------


def test_put_me_round_trips(client: DemoClient) -> None:
    response = put_me(client, {"email": "alice.new@example.com", "age": 35, "bio": "Hello"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    expected = {**ALICE, "email": "alice.new@example.com", "age": 35, "bio": "Hello"}
    assert response.json() == expected
    assert client.get("/v1/users/me").json() == expected
    assert client.get("/v1/users/1").json() == expected
    assert client.get("/v1/users/2").json()["email"] == "bob@example.com"


@pytest.mark.parametrize(
    ("email", "bio"),
    [
        ("o'brien@example.com", "O'Brien"),
        ("x'or'1'='1@example.com", "'; DROP TABLE users; --"),
        ("robert'--@example.com", "Robert'); DROP TABLE users;--"),
        ("a+tag@example.com", 'She said "hi" \\ and left'),
        ("plain@example.com", "line one\nline two\tindented"),
        ("plain@example.com", "Zoë, 日本語, emoji 🙂"),
    ],
)
def test_quotes_and_sql_text_round_trip_byte_for_byte(
    client: DemoClient, email: str, bio: str
) -> None:
    response = put_me(client, {"email": email, "age": 40, "bio": bio})
    assert response.status_code == 200
    assert response.json()["email"] == email
    assert response.json()["bio"] == bio
    assert client.get("/v1/users/me").json()["bio"] == bio


def test_put_replaces_the_whole_profile(client: DemoClient) -> None:
    put_me(client, {"email": "a@example.com", "age": 50, "bio": "something"})
    response = put_me(client, {"email": "a@example.com"})
    assert response.status_code == 200
    assert (response.json()["age"], response.json()["bio"]) == (None, "")


def test_email_domain_is_normalized(client: DemoClient) -> None:
    response = put_me(client, {"email": "Alice@EXAMPLE.com"})
    assert response.json()["email"] == "Alice@example.com"


@pytest.mark.parametrize("age", [13, 120, None])
def test_age_bounds_and_null_are_accepted(client: DemoClient, age: int | None) -> None:
    response = put_me(client, {"email": "a@example.com", "age": age})
    assert response.status_code == 200
    assert response.json()["age"] == age


@pytest.mark.parametrize(
    ("age", "message"),
    [
        ("30", "Must be an integer."),
        (30.0, "Must be an integer."),
        (30.5, "Must be an integer."),
        (True, "Must be an integer."),
        (False, "Must be an integer."),
        ([30], "Must be an integer."),
        ({"v": 30}, "Must be an integer."),
        (10**30, "Must be an integer."),  # orjson reads it as a float
        (12, "Must be between 13 and 120."),
        (121, "Must be between 13 and 120."),
        (0, "Must be between 13 and 120."),
        (-1, "Must be between 13 and 120."),
        (2**63 - 1, "Must be between 13 and 120."),
    ],
)
def test_age_is_strict(client: DemoClient, age: object, message: str) -> None:
    response = put_me(client, {"email": "a@example.com", "age": age})
    assert field_errors(response) == [("age", message)]
    assert client.get("/v1/users/me").json() == ALICE


def test_bio_of_500_characters_is_accepted_and_501_refused(client: DemoClient) -> None:
    ok = put_me(client, {"email": "a@example.com", "bio": "é" * 500})
    assert ok.status_code == 200
    assert ok.json()["bio"] == "é" * 500
    too_long = put_me(client, {"email": "a@example.com", "bio": "x" * 501})
    assert field_errors(too_long) == [("bio", "Must be at most 500 characters.")]


def test_the_limit_applies_before_escaping(client: DemoClient) -> None:
    # 500 characters in, 2000 stored: the documented stored form escapes each "<".
    response = put_me(client, {"email": "a@example.com", "bio": "<" * 500})
    assert response.status_code == 200
    assert response.json()["bio"] == "&lt;" * 500


@pytest.mark.parametrize(
    ("bio", "stored"),
    [
        ("<script>alert(1)</script>hi", "hi"),
        ("<SCRIPT>alert(1)</SCRIPT>hi", "hi"),
        ("<style>body{}</style>hi", "hi"),
        ("<b>bold</b> and <i>italic</i>", "bold and italic"),
        ('<img src=x onerror="alert(1)">', ""),
        ('<a href="javascript:alert(1)">click</a>', "click"),
        ("<!-- comment -->text", "text"),
        ("<svg><script>alert(1)</script></svg>x", "x"),
        ("Tom & Jerry", "Tom &amp; Jerry"),
        ("a < b > c", "a &lt; b &gt; c"),
        ("&amp; stays", "&amp; stays"),
        ('it\'s "quoted"', 'it\'s "quoted"'),
    ],
)
def test_html_is_removed_from_bio(client: DemoClient, bio: str, stored: str) -> None:
    response = put_me(client, {"email": "a@example.com", "bio": bio})
    assert response.status_code == 200
    assert response.json()["bio"] == stored
    assert client.get("/v1/users/me").json()["bio"] == stored


@pytest.mark.parametrize(
    "char", ["\x00", "\x01", "\x08", "\x0b", "\x0c", "\r", "\x1b", "\x7f", "\x85"]
)
def test_control_characters_are_refused_in_bio(client: DemoClient, char: str) -> None:
    response = put_me(client, {"email": "a@example.com", "bio": f"a{char}b"})
    assert field_errors(response) == [("bio", "Must not contain control characters.")]


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({}, [("email", "This field is required.")]),
        ({"age": 30}, [("email", "This field is required.")]),
        ({"email": None}, [("email", "Must be a string.")]),
        ({"email": 5}, [("email", "Must be a string.")]),
        ({"email": "not-an-address"}, [("email", "Must be a valid email address.")]),
        ({"email": "a@localhost"}, [("email", "Must be a valid email address.")]),
        ({"email": "Alice <alice@example.com>"}, [("email", "Must be a valid email address.")]),
        ({"email": "a" * 243 + "@example.com"}, [("email", "Must be at most 254 characters.")]),
        ({"email": "a@example.com", "bio": None}, [("bio", "Must be a string.")]),
        ({"email": "a@example.com", "bio": ["x"]}, [("bio", "Must be a string.")]),
        ({"email": "a@example.com", "role": "admin"}, [("role", "This field is not allowed.")]),
        ({"email": "a@example.com", "id": 4}, [("id", "This field is not allowed.")]),
        (
            {"email": "a@example.com", "username": "ada"},
            [("username", "This field is not allowed.")],
        ),
        (
            {"age": "x", "bio": 1, "status": "banned"},
            [
                ("email", "This field is required."),
                ("age", "Must be an integer."),
                ("bio", "Must be a string."),
                ("status", "This field is not allowed."),
            ],
        ),
    ],
)
def test_field_errors_use_our_words(
    client: DemoClient, body: dict[str, object], errors: list[tuple[str, str]]
) -> None:
    response = put_me(client, body)
    assert field_errors(response) == errors
    assert client.get("/v1/users/me").json() == ALICE


def test_email_of_254_characters_is_accepted(client: DemoClient) -> None:
    email = "a" * 64 + "@" + ".".join(["b" * 59] * 3) + ".example"
    assert len(email) <= 254
    response = put_me(client, {"email": email})
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b"{", 400, "malformed_json"),
        (b"", 400, "malformed_json"),
        (b"{'email': 'a@example.com'}", 400, "malformed_json"),
        (b'{"email": "a@example.com",}', 400, "malformed_json"),
        (b'{"email": "caf\xe9@example.com"}', 400, "malformed_json"),
        (b"\xff\xfe{\x00}\x00", 400, "malformed_json"),
        (b'{"email": "\\ud800@example.com"}', 400, "malformed_json"),
        (b"NaN", 400, "malformed_json"),
        (b"[" * 10_000, 400, "malformed_json"),  # deeper than orjson nests
        (b'[{"email": "a@example.com"}]', 422, "validation_failed"),
        (b'"a@example.com"', 422, "validation_failed"),
        (b"null", 422, "validation_failed"),
        (b"42", 422, "validation_failed"),
    ],
)
def test_bodies_that_are_not_a_json_object(
    client: DemoClient, content: bytes, status: int, code: str
) -> None:
    response = client.put("/v1/users/me", content=content, headers=JSON_HEADERS)
    body = assert_problem(response, status, code)
    if status == 422:
        assert body["errors"] == [{"field": "", "message": "The body must be a JSON object."}]
    else:
        assert body["title"] == "The request body is not valid JSON."


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"content-type": "text/plain"},
        {"content-type": "application/jsonx"},
        {"content-type": "application/x-www-form-urlencoded"},
    ],
)
def test_body_must_be_declared_json(client: DemoClient, headers: dict[str, str]) -> None:
    response = client.put("/v1/users/me", content=b'{"email": "a@example.com"}', headers=headers)
    assert_problem(response, 415, "unsupported_media_type")


def test_json_media_type_parameters_are_accepted(client: DemoClient) -> None:
    response = client.put(
        "/v1/users/me",
        content=b'{"email": "a@example.com"}',
        headers={"content-type": "Application/JSON; charset=utf-8"},
    )
    assert response.status_code == 200


def test_oversized_bodies_are_refused(client: DemoClient) -> None:
    big = b'{"email": "a@example.com", "bio": "' + b" " * MAX_BODY_BYTES + b'"}'
    assert_problem(
        client.put("/v1/users/me", content=big, headers=JSON_HEADERS), 413, "payload_too_large"
    )

    async def chunks() -> Any:
        # No content-length: the limit is enforced while streaming.
        for _ in range(MAX_BODY_BYTES // 1024 + 2):
            yield b" " * 1024

    response = client.put("/v1/users/me", content=chunks(), headers=JSON_HEADERS)
    assert_problem(response, 413, "payload_too_large")


# --- failures inside the app ------------------------------------------------------------------


def test_unexpected_exception_is_a_logged_500_without_its_text(
    app: Starlette, client: DemoClient, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    def explode(username: str) -> None:
        raise RuntimeError("sqlalchemy.exc: SELECT secret FROM users -- boom")

    monkeypatch.setattr(app.state.users, "get_by_username", explode)
    with caplog.at_level(logging.ERROR, logger="apiforge.demo"):
        response = client.get("/v1/users/me")
    body = assert_problem(response, 500, "internal_error")
    assert "boom" not in response.text
    assert "sqlalchemy" not in response.text.lower()
    assert "Traceback" not in response.text
    [record] = [r for r in caplog.records if r.name == "apiforge.demo"]
    assert record.exc_info is not None
    assert "boom" in str(record.exc_info[1])
    assert body["request_id"] in record.getMessage()


# --- behind the pipeline ----------------------------------------------------------------------


class WithContext:
    """Stands in for the pipeline: puts a RequestContext into the scope."""

    def __init__(self, app: ASGIApp, principal: Principal | None, request_id: str) -> None:
        self.app = app
        self.principal = principal
        self.request_id = request_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[SCOPE_KEY] = RequestContext(
                request_id=self.request_id,
                client="127.0.0.1",
                scheme="https",
                method=scope["method"],
                path=scope["path"],
                headers={},
                principal=self.principal,
            )
        await self.app(scope, receive, send)


@pytest.fixture
def as_bob(app: Starlette) -> Iterator[DemoClient]:
    bob = Principal(application="web", user="acc_bob", username="bob")
    demo = DemoClient(WithContext(app, bob, "req-bob-1"))
    yield demo
    demo.close()


def test_the_authenticated_user_is_the_caller(as_bob: DemoClient, client: DemoClient) -> None:
    assert as_bob.get("/v1/users/me").json()["username"] == "bob"
    response = put_me(as_bob, {"email": "bob2@example.com", "age": 30})
    assert response.json()["id"] == 2
    assert client.get("/v1/users/2").json()["email"] == "bob2@example.com"
    assert client.get("/v1/users/1").json() == ALICE


def test_problems_carry_the_pipeline_request_id(as_bob: DemoClient) -> None:
    response = as_bob.get("/v1/users/0")
    assert response.status_code == 404
    assert response.json()["request_id"] == "req-bob-1"
    # The pipeline echoes the id on every response; the app must not add a second header.
    assert "x-request-id" not in response.headers


@pytest.mark.parametrize("principal", [None, Principal(application="batch-job")])
def test_without_a_user_the_caller_is_alice(app: Starlette, principal: Principal | None) -> None:
    demo = DemoClient(WithContext(app, principal, "req-2"))
    try:
        assert demo.get("/v1/users/me").json() == ALICE
    finally:
        demo.close()


def test_an_unknown_user_has_no_profile(app: Starlette) -> None:
    demo = DemoClient(WithContext(app, Principal(user="acc_mallory", username="mallory"), "req-3"))
    try:
        assert demo.get("/v1/users/me").json()["code"] == "not_found"
        assert put_me(demo, {"email": "m@example.com"}).json()["code"] == "not_found"
    finally:
        demo.close()


# --- OpenAPI ----------------------------------------------------------------------------------


def test_openapi_document(client: DemoClient) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    doc = response.json()
    assert doc == orjson.loads(orjson.dumps(build_openapi()))
    assert doc["openapi"] == "3.1.0"
    assert set(doc["paths"]) == {"/v1/users/me", "/v1/users/{id}", "/openapi.json"}
    assert set(doc["paths"]["/v1/users/me"]) == {"get", "put"}
    schemas = doc["components"]["schemas"]
    assert schemas["ProfileUpdate"] == ProfileUpdate.model_json_schema()
    assert schemas["ProfileUpdate"]["additionalProperties"] is False
    assert set(schemas["User"]["properties"]) == set(ALICE)
    put = doc["paths"]["/v1/users/me"]["put"]
    assert put["responses"]["422"]["content"][PROBLEM]["schema"] == {
        "$ref": "#/components/schemas/Problem"
    }
    assert client.get("/openapi.json").content == response.content


def test_openapi_refs_all_resolve() -> None:
    doc = build_openapi()
    refs = re.findall(r'"\$ref":"#/components/schemas/([^"]+)"', orjson.dumps(doc).decode())
    assert refs
    assert set(refs) <= set(doc["components"]["schemas"])
