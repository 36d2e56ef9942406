"""Attacks on the demo users API: injection, echo of hostile input, leaks, and fuzzing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.types import ASGIApp

from apiforge.demo.app import create_app
from apiforge.demo.schemas import ProfileUpdate, parse_profile_update, sanitize_bio
from apiforge.errors import ApiError, BadRequest, ValidationFailed

JSON_HEADERS = {"content-type": "application/json"}

# Words that only appear in a response when internals leak.
LEAK_MARKERS = (
    "traceback",
    'file "',
    "pydantic",
    "sqlalchemy",
    "sqlite",
    "orjson",
    "email_validator",
    "nh3",
    "exception",
    "errors.pydantic.dev",
)


class DemoClient:
    """Drives an ASGI app through httpx's ASGI transport from synchronous tests."""

    def __init__(self, app: ASGIApp) -> None:
        self._runner = asyncio.Runner()
        self._client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://demo.test"
        )

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self._runner.run(self._client.request(method, url, **kwargs))

    def put_json_bytes(self, content: bytes) -> httpx.Response:
        return self.request("PUT", "/v1/users/me", content=content, headers=JSON_HEADERS)

    def close(self) -> None:
        self._runner.run(self._client.aclose())
        self._runner.close()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def client(data_dir: Path) -> Iterator[DemoClient]:
    demo = DemoClient(create_app(data_dir))
    yield demo
    demo.close()


@contextlib.contextmanager
def sqlite(db_path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(db_path)
    try:
        yield conn
    finally:
        conn.close()


def assert_no_leak(response: httpx.Response, *hostile: str) -> None:
    text = response.text.lower()
    for marker in LEAK_MARKERS:
        assert marker not in text, marker
    if response.status_code >= 400:
        for value in hostile:
            assert value.lower() not in text, value


# --- SQL injection ---------------------------------------------------------------------------

SQL_BIOS = [
    "'; DROP TABLE users; --",
    "Robert'); DROP TABLE users;--",
    "' OR '1'='1",
    "1; UPDATE users SET role='admin' WHERE username='alice'; --",
    "' UNION SELECT id, username, email, age, bio, role, status FROM users --",
    '"; DELETE FROM users; --',
]
SQL_EMAILS = [
    "x'or'1'='1@example.com",
    "'--@example.com",
    "admin'#@example.com",
    "a'||'b@example.com",
]
SQL_PATHS = [
    "/v1/users/1%20OR%201=1",
    "/v1/users/1;DROP%20TABLE%20users",
    "/v1/users/1'%20OR%20'1'='1",
    "/v1/users/1%27--",
    "/v1/users/(SELECT%201)",
    "/v1/users/1%20UNION%20SELECT%20*%20FROM%20users",
]


def test_sql_injection_is_inert_everywhere(client: DemoClient, data_dir: Path) -> None:
    stored = []
    for email, bio in zip(SQL_EMAILS * 2, SQL_BIOS, strict=False):
        body = json.dumps({"email": email, "age": 30, "bio": bio}).encode()
        response = client.put_json_bytes(body)
        assert response.status_code == 200, response.text
        assert response.json()["email"] == email
        assert response.json()["bio"] == bio
        stored.append((email, bio))
    for path in SQL_PATHS:
        response = client.request("GET", path)
        assert response.status_code == 404
        assert_no_leak(response, "select", "union", "drop")
    # Injection through a value that is refused must leave no trace either.
    refused = client.put_json_bytes(b'{"email": "\\"\' OR 1=1 --\\"@example.com"}')
    assert refused.status_code == 422
    assert_no_leak(refused, "or 1=1")

    with sqlite(data_dir / "demo.db") as conn:
        tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        rows = conn.execute(
            "SELECT id, username, email, bio, role FROM users ORDER BY id"
        ).fetchall()
    assert ("users",) in tables
    assert [r[:2] for r in rows] == [(1, "alice"), (2, "bob"), (3, "sam"), (4, "ada")]
    assert [r[4] for r in rows] == ["user", "user", "support", "admin"]
    assert (rows[0][2], rows[0][3]) == stored[-1]
    assert [r[2] for r in rows[1:]] == ["bob@example.com", "sam@example.com", "ada@example.com"]


@pytest.mark.parametrize("field", ["role", "id", "username", "status"])
def test_mass_assignment_of_protected_fields_is_refused(
    client: DemoClient, data_dir: Path, field: str
) -> None:
    body = json.dumps({"email": "a@example.com", field: "admin' --"}).encode()
    response = client.put_json_bytes(body)
    assert response.status_code == 422
    assert response.json()["errors"] == [{"field": field, "message": "This field is not allowed."}]
    with sqlite(data_dir / "demo.db") as conn:
        assert conn.execute("SELECT role FROM users WHERE id = 1").fetchone() == ("user",)


# --- nothing hostile is echoed back -------------------------------------------------------------

HOSTILE_BODIES: list[tuple[bytes, tuple[str, ...]]] = [
    (b'{"email": "<script>alert(1)</script>@example.com"}', ("<script>", "alert(1)")),
    (b'{"email": "a@example.com", "age": "<img src=x onerror=alert(7)>"}', ("onerror",)),
    (b'{"email": "a@example.com", "bio": 12345678987654321}', ("12345678987654321",)),
    (b'{"email": "a@example.com", "<img src=x onerror=alert(8)>": 1}', ("onerror", "<img")),
    (b'{"email": "a@example.com", "\'; DROP TABLE users; --": 1}', ("drop table",)),
    (b'{"email": "a@example.com", "a.b": 1, "x y": 2, "": 3}', ("a.b", "x y")),
    (b'{"email": "a@example.com", "bio": "' + b"Z" * 501 + b'"}', ("zzzzzzzzzz",)),
    (b'{"email": "' + b"Q" * 300 + b'@example.com"}', ("qqqqqqqqqq",)),
    (b'{"email": "EVIL_MARKER_7f3a", "age": 1}', ("evil_marker_7f3a",)),
    (b'{"email": "a@example.com", "bio": "a\\u0000EVIL_NUL"}', ("evil_nul",)),
    (b'{"email": EVIL_BARE_WORD}', ("evil_bare_word",)),
    (b"\xc3\x28 EVIL_BYTES", ("evil_bytes",)),
    (b'["EVIL_ARRAY_ITEM"]', ("evil_array_item",)),
    (b'{"email": "\\ud800EVIL_SURROGATE"}', ("evil_surrogate",)),
]


@pytest.mark.parametrize(("content", "hostile"), HOSTILE_BODIES)
def test_refusals_never_echo_input_or_leak_internals(
    client: DemoClient, content: bytes, hostile: tuple[str, ...]
) -> None:
    response = client.put_json_bytes(content)
    assert 400 <= response.status_code < 500
    assert response.headers["content-type"] == "application/problem+json"
    assert_no_leak(response, *hostile)


def test_unknown_keys_that_are_not_identifiers_are_reported_against_the_body() -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_profile_update(b'{"email": "a@example.com", "<b>": 1, "\'--": 2, "ok_name": 3}')
    fields = [(e.field, e.message) for e in caught.value.errors]
    assert fields == [("", "This field is not allowed."), ("ok_name", "This field is not allowed.")]


# --- the parser on its own -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "bio",
    ["O'Brien", "'; DROP TABLE users; --", 'He said "no"', "back\\slash", "tab\there\nnewline"],
)
def test_sanitizer_keeps_quotes_and_sql_text_byte_for_byte(bio: str) -> None:
    assert sanitize_bio(bio) == bio
    assert (
        parse_profile_update(json.dumps({"email": "a@example.com", "bio": bio}).encode()).bio == bio
    )


def test_sanitizer_has_an_empty_allowlist() -> None:
    # Every tag nh3 allows by default is removed here, attributes and all.
    html = '<a href="https://x.example">a</a><img src="x.png"><b>b</b><p>p</p><code>c</code>'
    assert sanitize_bio(html) == "abpc"


def test_model_validation_is_strict_from_python_objects() -> None:
    assert ProfileUpdate.model_validate({"email": "a@example.com", "age": 30}).age == 30
    for age in ("30", 30.0, True):
        with pytest.raises(ValueError, match=r"valid integer"):
            ProfileUpdate.model_validate({"email": "a@example.com", "age": age})


def test_model_is_frozen() -> None:
    update = ProfileUpdate.model_validate({"email": "a@example.com"})
    with pytest.raises(ValueError, match="frozen"):
        update.bio = "<script>"  # type: ignore[misc]


def test_parse_errors_are_our_types_with_fixed_titles() -> None:
    with pytest.raises(BadRequest) as malformed:
        parse_profile_update(b'{"email": ')
    assert malformed.value.code == "malformed_json"
    assert malformed.value.title == "The request body is not valid JSON."
    assert malformed.value.__cause__ is None
    with pytest.raises(BadRequest) as not_utf8:
        parse_profile_update(b'{"email": "\xff"}')
    assert not_utf8.value.code == "malformed_json"
    assert not_utf8.value.title == malformed.value.title


# --- fuzzing ----------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
field_values = st.one_of(
    json_values,
    st.text(max_size=600),
    st.emails(),
    st.integers(min_value=-1000, max_value=1000),
)
profile_like = st.fixed_dictionaries(
    {},
    optional={
        "email": field_values,
        "age": field_values,
        "bio": field_values,
        "role": field_values,
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.one_of(json_values, profile_like))
def test_any_json_body_gets_an_answer_below_500(tmp_path_factory: Any, body: object) -> None:
    _fuzz(tmp_path_factory, json.dumps(body).encode())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=st.binary(max_size=300))
def test_any_bytes_body_gets_an_answer_below_500(tmp_path_factory: Any, content: bytes) -> None:
    _fuzz(tmp_path_factory, content)


_FUZZ_CLIENTS: dict[int, DemoClient] = {}


@pytest.fixture(scope="module", autouse=True)
def _close_fuzz_clients() -> Iterator[None]:
    yield
    while _FUZZ_CLIENTS:
        _FUZZ_CLIENTS.popitem()[1].close()


def _fuzz(tmp_path_factory: Any, content: bytes) -> None:
    # One app per session factory, shared by the examples: creating one per example would
    # spend the time budget on SQLite set-up instead of on inputs.
    key = id(tmp_path_factory)
    if key not in _FUZZ_CLIENTS:
        _FUZZ_CLIENTS[key] = DemoClient(create_app(tmp_path_factory.mktemp("fuzz")))
    response = _FUZZ_CLIENTS[key].put_json_bytes(content)
    assert response.status_code < 500, response.text
    assert response.status_code in (200, 400, 413, 422)
    assert_no_leak(response)
    if response.status_code == 200:
        assert set(response.json()) == {"id", "username", "email", "age", "bio", "role", "status"}


def test_parser_only_raises_api_errors() -> None:
    @settings(max_examples=300, deadline=None)
    @given(
        content=st.one_of(
            st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode())
        )
    )
    def check(content: bytes) -> None:
        try:
            parse_profile_update(content)
        except ApiError as exc:
            assert exc.status in (400, 422)

    check()
