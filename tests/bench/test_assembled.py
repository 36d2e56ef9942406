"""The assembled FastAPI stack of the benchmark: it must make the checks it is compared on.

A benchmark variant that skipped a check would flatter itself; these tests hold it to the same
answers as the protected demo for the requests wrk sends and for the usual attacks on them.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from apiforge.layers.headers import SecurityHeadersSettings

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH_DIR))

import assembled  # noqa: E402

PUT_BODY = {"email": "alice@example.com", "age": 34, "bio": "hello"}
PROBLEM = "application/problem+json"


def _redis_reachable() -> bool:
    try:
        import redis

        url = os.environ.get(assembled.REDIS_URL_ENV, assembled.DEFAULT_REDIS_URL)
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except Exception:
        return False


LIMITERS = [
    "memory",
    pytest.param(
        "redis",
        marks=pytest.mark.skipif(not _redis_reachable(), reason="no Redis server reachable"),
    ),
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The demo's first start hashes four passwords: once per module is enough.
    path = tmp_path_factory.mktemp("assembled")
    assembled.build_assembled(path, limiter="memory")
    return path


@pytest.fixture(params=LIMITERS)
def limiter(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def app(data_dir: Path, limiter: Any) -> Any:
    # Built outside the event loop, as the benchmark's server builds it.
    return assembled.build_assembled(data_dir, limiter=limiter)


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        yield http


@pytest.fixture
def good(data_dir: Path) -> dict[str, str]:
    return assembled.assembled_headers(data_dir)


@pytest.fixture(scope="module")
def ids(data_dir: Path) -> dict[str, str]:
    """Username -> account id, the subject of that user's tokens."""
    return {name: found for found, name in assembled.demo_accounts(data_dir).items()}


def _token(data_dir: Path, subject: str, key: Any = None, **changes: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": assembled.ISSUER,
        "aud": assembled.AUDIENCE,
        "sub": subject,
        "iat": now,
        "exp": now + 60,
        **changes,
    }
    claims = {name: value for name, value in claims.items() if value is not None}
    signing_key = key or assembled._ensure_signing_key(data_dir)
    return "Bearer " + jwt.encode(claims, signing_key, algorithm="ES256")


async def test_the_benchmarked_requests_succeed(
    client: httpx.AsyncClient, good: dict[str, str]
) -> None:
    for response in (
        await client.get("/v1/users/me", headers=good),
        await client.get("/v1/users/1", headers=good),
        await client.put("/v1/users/me", headers=good, json=PUT_BODY),
    ):
        assert response.status_code == 200, response.text
        assert response.json()["username"] == "alice"


async def test_the_bio_is_stripped_of_html(client: httpx.AsyncClient, good: dict[str, str]) -> None:
    body = {**PUT_BODY, "bio": "hi <b>there</b><script>alert(1)</script>"}
    response = await client.put("/v1/users/me", headers=good, json=body)
    assert response.json()["bio"] == "hi there"


async def test_sends_the_security_headers_apiforge_sends(
    client: httpx.AsyncClient, good: dict[str, str]
) -> None:
    expected = SecurityHeadersSettings()
    headers = (await client.get("/v1/users/me", headers=good)).headers
    assert headers["content-security-policy"] == expected.content_security_policy
    assert headers["x-frame-options"] == expected.frame_options
    assert headers["referrer-policy"] == expected.referrer_policy
    assert headers["cross-origin-resource-policy"] == expected.cross_origin_resource_policy
    assert headers["cross-origin-opener-policy"] == expected.cross_origin_opener_policy
    assert headers["permissions-policy"] == expected.permissions_policy
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == "no-store"


async def test_request_id_is_kept_when_a_uuid_and_replaced_otherwise(
    client: httpx.AsyncClient, good: dict[str, str]
) -> None:
    rid = uuid.uuid4().hex
    kept = await client.get("/v1/users/me", headers={**good, "X-Request-ID": rid})
    assert kept.headers.get_list("x-request-id") == [rid]
    replaced = await client.get("/v1/users/me", headers={**good, "X-Request-ID": "<script>"})
    assert replaced.headers.get_list("x-request-id") != ["<script>"]
    failed = await client.get("/v1/users/me", headers={"X-Request-ID": rid})
    # Problems carry the id once, in the header and in the body.
    assert failed.headers.get_list("x-request-id") == [rid]
    assert failed.json()["request_id"] == rid


@pytest.mark.parametrize(
    "body",
    [
        {**PUT_BODY, "role": "admin"},
        {**PUT_BODY, "age": "34"},
        {**PUT_BODY, "age": 34.0},
        {**PUT_BODY, "age": True},
        {**PUT_BODY, "age": 12},
        {**PUT_BODY, "age": 121},
        {**PUT_BODY, "age": 10**30},
        {**PUT_BODY, "bio": "x" * 501},
        {**PUT_BODY, "email": "not an address"},
        [PUT_BODY],
    ],
)
async def test_invalid_bodies_are_422_problems(
    client: httpx.AsyncClient, good: dict[str, str], body: object
) -> None:
    response = await client.put("/v1/users/me", headers=good, json=body)
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize(
    "content", [b"{not json", b'{"email": "\xff"}', b"[" * 5000 + b"]" * 5000, b""]
)
async def test_malformed_bodies_never_fail_the_server(
    client: httpx.AsyncClient, good: dict[str, str], content: bytes
) -> None:
    headers = {**good, "Content-Type": "application/json"}
    response = await client.put("/v1/users/me", headers=headers, content=content)
    assert 400 <= response.status_code < 500


@pytest.mark.parametrize("user_id", ["0", "-1", "abc", "9" * 40, "1000000000000000000"])
async def test_invalid_ids_are_refused(
    client: httpx.AsyncClient, good: dict[str, str], user_id: str
) -> None:
    response = await client.get(f"/v1/users/{user_id}", headers=good)
    assert response.status_code == 422


@pytest.mark.parametrize(
    "api_key", [None, "", "afk_wrong", "é"], ids=["missing", "empty", "wrong", "latin-1"]
)
async def test_requests_without_the_api_key_are_401(
    client: httpx.AsyncClient, good: dict[str, str], api_key: str | None
) -> None:
    headers: dict[str, Any] = {"Authorization": good["Authorization"]}
    if api_key is not None:
        headers["X-API-Key"] = api_key.encode("latin-1")
    response = await client.get("/v1/users/me", headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == PROBLEM


@pytest.mark.parametrize(
    "tamper",
    [
        "missing",
        "not-bearer",
        "garbage",
        "other-key",
        "expired",
        "audience",
        "issuer",
        "no-sub",
        "unknown-sub",
        "username-sub",
    ],
)
async def test_requests_without_a_valid_token_are_401(
    client: httpx.AsyncClient,
    good: dict[str, str],
    data_dir: Path,
    ids: dict[str, str],
    tamper: str,
) -> None:
    alice = ids["alice"]
    authorization = {
        "missing": None,
        "not-bearer": "Basic YTpi",
        "garbage": "Bearer abc.def.ghi",
        "other-key": _token(data_dir, alice, key=ec.generate_private_key(ec.SECP256R1())),
        "expired": _token(data_dir, alice, exp=int(time.time()) - 10),
        "audience": _token(data_dir, alice, aud="someone-else"),
        "issuer": _token(data_dir, alice, iss="https://evil.example/"),
        "no-sub": _token(data_dir, alice, sub=None),
        "unknown-sub": _token(data_dir, "acc_0000000000000000"),
        "username-sub": _token(data_dir, "alice"),
    }[tamper]
    headers = {"X-API-Key": good["X-API-Key"]}
    if authorization is not None:
        headers["Authorization"] = authorization
    response = await client.get("/v1/users/me", headers=headers)
    assert response.status_code == 401
    assert "www-authenticate" in response.headers


async def test_an_unknown_host_is_refused(client: httpx.AsyncClient, good: dict[str, str]) -> None:
    response = await client.get("/v1/users/me", headers={**good, "Host": "evil.example"})
    assert response.status_code == 400


async def test_cors_allows_only_the_configured_origin(
    client: httpx.AsyncClient, good: dict[str, str]
) -> None:
    allowed = await client.get("/v1/users/me", headers={**good, "Origin": assembled.ALLOWED_ORIGIN})
    assert allowed.headers["access-control-allow-origin"] == assembled.ALLOWED_ORIGIN
    other = await client.get("/v1/users/me", headers={**good, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


@pytest.fixture
def strict_app(data_dir: Path, limiter: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(assembled, "RATE_LIMIT", "2/minute")
    return assembled.build_assembled(data_dir, limiter=limiter)


async def test_the_rate_limit_is_enforced_per_user(
    strict_app: Any, data_dir: Path, good: dict[str, str], ids: dict[str, str]
) -> None:
    transport = httpx.ASGITransport(app=strict_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        statuses = [(await http.get("/v1/users/me", headers=good)).status_code for _ in range(3)]
        bob_token = _token(data_dir, ids["bob"])
        other_user = {**good, "Authorization": bob_token}
        bob = await http.get("/v1/users/me", headers=other_user)
    assert statuses == [200, 200, 429]
    assert bob.status_code == 200
    assert bob.json()["username"] == "bob"
