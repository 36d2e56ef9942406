"""API keys at the door: every refusal is the same 401, every reason a distinct event."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from apiforge import get_context, protect
from apiforge.errors import ConfigurationError
from apiforge.events import EventBus, MemorySink
from apiforge.identity import Application, generate_key
from apiforge.identity.api_keys import SECRET_LENGTH, _checksum
from apiforge.identity.runtime import IdentityRuntime
from apiforge.policy import load_policy
from apiforge.secrets import Secret

PEPPER = base64.b64encode(b"p" * 32).decode()

POLICY: dict[str, Any] = {
    "routes": {"GET /me": {"auth": "api_key"}, "GET /open": {}},
    "hosts": {"allowed_hosts": ["t"]},
    "events": {"sink": "none"},
}


async def me(request: Request) -> JSONResponse:
    ctx = get_context(request.scope)
    assert ctx is not None and ctx.principal is not None
    return JSONResponse({"app": ctx.principal.application,
                         "scopes": sorted(ctx.principal.scopes)})


APP = Starlette(routes=[Route("/me", me), Route("/open", lambda r: JSONResponse({}))])


class Harness:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("APIFORGE_KEY_PEPPER", PEPPER)
        self.policy = load_policy(POLICY)
        self.runtime = IdentityRuntime(self.policy.authentication)
        self.sink = MemorySink()
        self.bus = EventBus([self.sink])
        self.bus.start()
        self.app = protect(APP, self.policy, events=self.bus, identity=self.runtime)
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app),
                                        base_url="http://t")
        self.runtime.stores.applications.add_application(
            Application("app1", "test app", None, datetime.now(UTC)))

    async def key(self, **kwargs: Any) -> tuple[Secret, Any]:
        return await self.runtime.keys.create("app1", ["users:read"], "test", **kwargs)

    def reasons(self) -> list[str]:
        self.bus.flush()
        return [e["reason"] for e in self.sink.events if e["event"] == "authn_login_fail"]


@pytest.fixture
async def h(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Harness]:
    harness = Harness(monkeypatch)
    await harness.runtime.start()
    yield harness
    await harness.client.aclose()
    await harness.runtime.stop()
    harness.bus.close()


async def test_a_valid_key_identifies_the_application(h: Harness) -> None:
    secret, _ = await h.key()
    r = await h.client.get("/me", headers={"x-api-key": secret.reveal()})
    assert r.status_code == 200 and r.json() == {"app": "app1", "scopes": ["users:read"]}
    r = await h.client.get("/me", headers={"authorization": f"ApiKey {secret.reveal()}"})
    assert r.status_code == 200


async def test_routes_without_requirement_stay_open(h: Harness) -> None:
    assert (await h.client.get("/open")).status_code == 200


def flip(text: str) -> str:
    last = text[-1]
    return text[:-1] + ("A" if last != "A" else "B")


async def test_every_refusal_is_the_same_401_with_its_own_reason(h: Harness) -> None:
    good, record = await h.key()
    expired, _ = await h.key(expires_at=datetime(2021, 1, 1, tzinfo=UTC),
                             now=datetime(2020, 1, 1, tzinfo=UTC))
    revoked, revoked_record = await h.key()
    await h.runtime.keys.revoke(revoked_record.key_id)
    old, old_record = await h.key()
    await h.runtime.keys.rotate(old_record.key_id, timedelta(0),
                                now=datetime.now(UTC) - timedelta(seconds=1))
    text = good.reveal()
    # Well-formed keys with a valid checksum: a stranger's key, and ours with another secret.
    stranger, _ = generate_key("test")
    body = f"afk_test_{record.key_id}_{'A' * SECRET_LENGTH}"
    other_secret = body + _checksum(body)
    cases = {
        "missing_key": {},
        "malformed": {"x-api-key": "not-a-key"},
        "truncated": {"x-api-key": text[:-5]},
        "bad_checksum": {"x-api-key": flip(text)},
        "unknown_id": {"x-api-key": stranger.reveal()},
        "wrong_secret": {"x-api-key": other_secret},
        "expired": {"x-api-key": expired.reveal()},
        "revoked": {"x-api-key": revoked.reveal()},
        "rotated_out": {"x-api-key": old.reveal()},
    }
    bodies = set()
    for headers in cases.values():
        r = await h.client.get("/me", headers=headers)
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("ApiKey")
        body = r.json()
        body.pop("request_id")
        bodies.add(tuple(sorted(body.items())))
    assert len(bodies) == 1  # identical whichever check failed
    expected = list(cases)
    expected[expected.index("truncated")] = "malformed"  # a cut key is too short to parse
    assert h.reasons() == expected


async def test_rotated_key_works_inside_the_overlap(h: Harness) -> None:
    old, record = await h.key()
    new, _ = await h.runtime.keys.rotate(record.key_id, timedelta(hours=1))
    for secret in (old, new):
        assert (await h.client.get("/me", headers={"x-api-key": secret.reveal()})).status_code \
            == 200


async def test_key_in_query_string_is_refused_and_marked_exposed(h: Harness) -> None:
    secret, _ = await h.key()
    r = await h.client.get(f"/me?api_key={secret.reveal()}",
                           headers={"x-api-key": secret.reveal()})
    assert r.status_code == 401
    h.bus.flush()
    event = h.sink.events[-1]
    assert event["reason"] == "key_in_query" and event["details"]["key_exposed"] is True
    assert secret.reveal() not in str(h.sink.events)


async def test_both_headers_is_400(h: Harness) -> None:
    secret, _ = await h.key()
    r = await h.client.get("/me", headers={"x-api-key": secret.reveal(),
                                           "authorization": f"ApiKey {secret.reveal()}"})
    assert r.status_code == 400 and r.json()["code"] == "ambiguous_credentials"


async def test_revocation_is_immediate_in_process(h: Harness) -> None:
    secret, record = await h.key()
    assert (await h.client.get("/me", headers={"x-api-key": secret.reveal()})).status_code == 200
    await h.runtime.keys.revoke(record.key_id)
    assert (await h.client.get("/me", headers={"x-api-key": secret.reveal()})).status_code == 401


def test_an_api_key_route_needs_a_pepper(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APIFORGE_KEY_PEPPER", raising=False)
    with pytest.raises(ConfigurationError, match="APIFORGE_KEY_PEPPER"):
        protect(APP, POLICY)
    monkeypatch.setenv("APIFORGE_KEY_PEPPER", base64.b64encode(b"short").decode())
    with pytest.raises(ConfigurationError, match="at least 32"):
        protect(APP, POLICY)
