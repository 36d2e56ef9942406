"""The demo as a user runs it: `apiforge demo` in its own process, over real sockets."""

from __future__ import annotations

import functools
import json
import os
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.e2e

SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-resource-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
    "strict-transport-security": "max-age=31536000; includeSubDomains",
}


class Demo:
    def __init__(self, url: str, http_url: str, data_dir: Path, process: subprocess.Popen[str],
                 output: list[str]):
        self.output = output
        self.url = url
        self.http_url = http_url
        self.data_dir = data_dir
        self.process = process
        self.ca = data_dir / "tls" / "ca.pem"

    @property
    def api_key(self) -> str:
        credentials = json.loads((self.data_dir / "demo-credentials.json").read_text())
        return str(credentials["api_key"])

    def credentials(self) -> dict[str, Any]:
        return dict(json.loads((self.data_dir / "demo-credentials.json").read_text()))

    @functools.cached_property
    def token(self) -> str:
        """An access token of alice's, from the demo's own password grant (fetched once)."""
        alice = self.credentials()["accounts"]["alice"]
        with self.client(with_key=False) as c:
            granted = c.post("/v1/auth/token", data={
                "grant_type": "password", "username": "alice", "password": alice["password"]})
        assert granted.status_code == 200, granted.text
        return str(granted.json()["access_token"])

    def client(self, *, with_key: bool = True) -> httpx.Client:
        headers = ({"x-api-key": self.api_key, "authorization": f"Bearer {self.token}"}
                   if with_key else {})
        return httpx.Client(base_url=self.url, verify=ssl.create_default_context(
            cafile=str(self.ca)), timeout=10, headers=headers)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    data_dir = tmp_path_factory.mktemp("demo")
    port, http_port = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "apiforge", "demo", "--port", str(port), "--http-port",
         str(http_port), "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 30
    url = None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if line.startswith("apiforge demo ready on "):
            url = line.removeprefix("apiforge demo ready on ").strip()
            break
    if url is None:
        process.kill()
        process.wait()
        process.stdout.close()
        pytest.fail("the demo did not print its ready line")
    assert url == f"https://127.0.0.1:{port}"
    lines: list[str] = []
    # Keep reading its output (the security events) so the pipe never fills up.
    reader = threading.Thread(target=lambda: lines.extend(process.stdout or ()), daemon=True)
    reader.start()
    try:
        yield Demo(url, f"http://127.0.0.1:{http_port}", data_dir, process, lines)
    finally:
        process.terminate()
        process.wait(timeout=10)
        reader.join(timeout=10)
        process.stdout.close()


def assert_protected(response: httpx.Response) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, name
    assert "server" not in response.headers and "x-powered-by" not in response.headers
    assert response.headers["x-request-id"]
    if response.status_code >= 400:
        assert response.headers["content-type"] == "application/problem+json"
        body = response.json()
        assert body["request_id"] == response.headers["x-request-id"]
        assert body["status"] == response.status_code
        for leak in ("Traceback", "File \"", "sqlalchemy", "pydantic", "orjson", "sqlite"):
            assert leak not in response.text


def test_reads_and_updates_over_https(demo: Demo) -> None:
    with demo.client() as c:
        me = c.get("/v1/users/me")
        assert me.status_code == 200 and me.json()["username"] == "alice"
        assert_protected(me)
        update = c.put("/v1/users/me", json={"email": "alice@example.com", "age": 35,
                                             "bio": "<script>x()</script>Hi O'Brien"})
        assert update.status_code == 200, update.text
        assert update.json()["bio"] == "Hi O'Brien"
        assert_protected(update)
        assert c.get(f"/v1/users/{me.json()['id']}").json()["username"] == "alice"
        assert c.get("/v1/users/2").status_code == 404  # bob's profile is not alice's to see
        assert c.get("/openapi.json").json()["openapi"].startswith("3.1")


@pytest.mark.parametrize(("method", "path", "kwargs", "status"), [
    ("GET", "/v1/users/999", {}, 404),
    ("GET", "/v1/admin", {}, 404),
    ("DELETE", "/v1/users/me", {}, 405),
    ("PUT", "/v1/users/me", {"content": b"x" * 20_000,
                             "headers": {"content-type": "application/json"}}, 413),
    ("PUT", "/v1/users/me", {"json": {"email": "a@example.com", "age": "30"}}, 422),
    ("PUT", "/v1/users/me", {"json": {"email": "a@example.com", "role": "admin"}}, 422),
    ("PUT", "/v1/users/me", {"content": b"\xff\xfe{", "headers":
                             {"content-type": "application/json"}}, 400),
    ("PUT", "/v1/users/me", {"content": b'{"email": "a@example.com", "email": "b@x.io"}',
                             "headers": {"content-type": "application/json"}}, 400),
    ("PUT", "/v1/users/me", {"content": b"[" * 100 + b"]" * 100,
                             "headers": {"content-type": "application/json"}}, 400),
    ("PUT", "/v1/users/me", {"content": b"email=a", "headers":
                             {"content-type": "application/x-www-form-urlencoded"}}, 415),
    ("GET", "/v1/users/me", {"headers": {"x-big": "a" * 9000}}, 431),
])
def test_every_refusal_is_a_problem_with_every_header(
    demo: Demo, method: str, path: str, kwargs: dict[str, object], status: int
) -> None:
    with demo.client() as c:
        response = c.request(method, path, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    assert_protected(response)


@pytest.mark.parametrize("raw", [
    b"/v1/users/me/../2", b"/v1/users/%2e%2e/2", b"/v1%2Fusers/me", b"/v1/users/me;x=1",
    b"/v1//users/me", b"/v1/users/%00",
])
def test_odd_paths_are_refused(demo: Demo, raw: bytes) -> None:
    # Sent byte for byte: HTTP clients normalize dot-segments before sending.
    host, port = demo.url.removeprefix("https://").split(":")
    context = ssl.create_default_context(cafile=str(demo.ca))
    with socket.create_connection((host, int(port)), timeout=10) as sock, \
            context.wrap_socket(sock, server_hostname="localhost") as tls:
        tls.sendall(b"GET " + raw + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                    b"X-API-Key: " + demo.api_key.encode() + b"\r\n\r\n")
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (line.decode("latin-1").partition(":") for line in head.split(b"\r\n")[1:])}
    assert status in (400, 404, 422), answer
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name) == value, name
    assert headers["content-type"] == "application/problem+json"
    assert b"Traceback" not in body


SQL = ["' OR '1'='1", "'; DROP TABLE users; --", "\" OR 1=1 --", "1; SELECT * FROM users",
       "admin'--", "Robert'); DROP TABLE users;--"]


def test_injection_strings_are_inert_and_the_table_survives(demo: Demo) -> None:
    with demo.client() as c:
        for text in SQL:
            response = c.put("/v1/users/me", json={"email": "alice@example.com", "bio": text})
            assert response.status_code == 200
            assert response.json()["bio"] == text  # stored and returned byte for byte
            refused = c.put("/v1/users/me", json={"email": text, "bio": "x"})
            assert refused.status_code == 422
            assert_protected(refused)
            assert c.get(f"/v1/users/{text}").status_code in (400, 404, 422)
    with sqlite3.connect(demo.data_dir / "demo.db") as db:
        assert db.execute("SELECT count(*) FROM users").fetchone() == (4,)


def test_plain_http_redirects_or_refuses(demo: Demo) -> None:
    with httpx.Client(base_url=demo.http_url, timeout=10) as c:
        redirect = c.get("/v1/users/me?x=1", headers={"host": "evil.example"})
        assert redirect.status_code == 301
        assert redirect.headers["location"].startswith("https://localhost:")
        assert redirect.headers["location"].endswith("/v1/users/me?x=1")
        assert "strict-transport-security" not in redirect.headers
        for refused in (c.get("/v1/users/me", headers={"x-api-key": "afk_live_abc_def"}),
                        c.put("/v1/users/me", json={})):
            assert refused.status_code == 403
            assert refused.headers["content-type"] == "application/problem+json"
            assert "strict-transport-security" not in refused.headers


def test_tls_1_2_refused_by_default(demo: Demo) -> None:
    context = ssl.create_default_context(cafile=str(demo.ca))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with httpx.Client(verify=context) as c, pytest.raises(httpx.ConnectError):
        c.get(demo.url + "/v1/users/me")


def test_refusals_are_security_events(demo: Demo) -> None:
    with demo.client() as c:
        c.put("/v1/users/me", json={"email": "a@example.com", "role": "admin"},
              headers={"x-request-id": "e2e-mass-assignment"})
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = [line for line in demo.output if "e2e-mass-assignment" in line]
        if found:
            break
        time.sleep(0.05)
    event = json.loads(found[0])
    assert event["event"] == "malicious_extraneous" and event["route"] == "PUT /v1/users/me"


def test_credentials_file_is_private(demo: Demo) -> None:
    path = demo.data_dir / "demo-credentials.json"
    assert path.stat().st_mode & 0o777 == 0o600
    credentials = json.loads(path.read_text())
    assert credentials["api_key"].startswith("afk_demo_")
    assert {name: a["role"] for name, a in credentials["accounts"].items()} == {
        "alice": "user", "bob": "user", "sam": "support", "ada": "admin"}


@pytest.mark.parametrize("headers", [
    {}, {"x-api-key": "afk_demo_nope"}, {"authorization": "ApiKey afk_demo_x_y"},
])
def test_user_routes_need_the_api_key(demo: Demo, headers: dict[str, str]) -> None:
    with demo.client(with_key=False) as c:
        refused = c.get("/v1/users/me", headers=headers)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("ApiKey")
        assert_protected(refused)
        assert c.get("/openapi.json").status_code == 200


def test_keys_made_and_revoked_by_the_cli_reach_the_running_demo(demo: Demo) -> None:
    def keys(*args: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "apiforge", "keys", *args, "--data-dir", str(demo.data_dir)],
            check=True, capture_output=True, text=True, timeout=60).stdout

    key = next(line.strip() for line in keys("create", "--app", "e2e", "--env", "test")
               .splitlines() if line.strip().startswith("afk_test_"))

    def status_within(expected: int, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        with demo.client(with_key=False) as c:
            headers = {"x-api-key": key, "authorization": f"Bearer {demo.token}"}
            while c.get("/v1/users/me", headers=headers).status_code != expected:
                assert time.monotonic() < deadline, f"not {expected} within {seconds} s"
                time.sleep(0.05)

    status_within(200, 2.5)  # the demo keeps state in memory: records are re-read every second
    keys("revoke", key.split("_")[2])
    status_within(401, 2.5)
    listing = keys("list")
    assert key.split("_")[2][:6] in listing  # its id is listed...
    assert key.rsplit("_", 1)[1][:8] not in listing  # ...never its secret


def test_rate_limited_answers_carry_every_header(demo: Demo) -> None:
    assert demo.token  # the test's own token, fetched before the token route's budget is spent
    with demo.client(with_key=False) as c:
        answers = [c.post("/v1/auth/token", data={"grant_type": "password",
                                                   "username": "nobody", "password": "x"})
                   for _ in range(12)]
    limited = [a for a in answers if a.status_code == 429]
    assert limited, [a.status_code for a in answers]
    for answer in limited[:2]:
        assert_protected(answer)
        assert int(answer.headers["retry-after"]) >= 1
        assert answer.headers["ratelimit-policy"].startswith('"login-per-address"')
