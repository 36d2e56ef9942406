"""Bearer tokens at the door: verification, the cache, revocation, the account, scopes."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from apiforge import get_context, protect
from apiforge.errors import ConfigurationError
from apiforge.events import EventBus, MemorySink
from apiforge.identity.runtime import IdentityRuntime
from apiforge.identity.token_runtime import REVOKED_TOKEN_TOPIC
from apiforge.policy import load_policy

PEPPER = base64.b64encode(b"p" * 32).decode()
ISSUER = "https://id.example.com"
AUDIENCE = "api.example.com"


async def me(request: Request) -> JSONResponse:
    ctx = get_context(request.scope)
    assert ctx is not None and ctx.principal is not None
    return JSONResponse({"user": ctx.principal.user, "roles": sorted(ctx.principal.roles),
                         "scopes": sorted(ctx.principal.scopes)})


APP = Starlette(routes=[Route("/me", me), Route("/admin", me)])


class Harness:
    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **policy: Any) -> None:
        monkeypatch.setenv("APIFORGE_KEY_PEPPER", PEPPER)
        self.key = ec.generate_private_key(ec.SECP256R1())
        pem = tmp_path / "issuer.pem"
        pem.write_bytes(self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        self.policy = load_policy({
            "routes": {"GET /me": {"auth": "jwt"},
                       "GET /admin": {"auth": "jwt", "token": {"scopes": ["admin"]}}},
            "hosts": {"allowed_hosts": ["t"]},
            "events": {"sink": "none"},
            "authentication": {
                "tokens": {"issuers": [{"issuer": ISSUER, "audience": AUDIENCE,
                                        "pem_file": str(pem), "key_id": "k1"}]},
                **policy,
            },
        })
        self.runtime = IdentityRuntime(self.policy.authentication)
        self.sink = MemorySink()
        self.bus = EventBus([self.sink])
        self.bus.start()
        self.app = protect(APP, self.policy, events=self.bus, identity=self.runtime)
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app),
                                        base_url="http://t")

    def token(self, sub: str, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + 300,
                "jti": f"j-{time.monotonic_ns()}", **claims}
        return jwt.encode(body, self.key, algorithm="ES256", headers={"kid": "k1"})

    async def get(self, token: str | None, path: str = "/me") -> httpx.Response:
        headers = {"authorization": f"Bearer {token}"} if token is not None else {}
        return await self.client.get(path, headers=headers)

    def reasons(self) -> list[str]:
        self.bus.flush()
        return [e["reason"] for e in self.sink.events if e["event"] == "authn_login_fail"]


@pytest.fixture
async def h(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    harness = Harness(tmp_path, monkeypatch)
    await harness.runtime.start()
    yield harness
    await harness.client.aclose()
    await harness.runtime.stop()


async def test_valid_token_names_the_user_and_roles(h: Harness) -> None:
    account = await h.runtime.accounts.create("ada", roles=["admin"])
    response = await h.get(h.token(account.account_id, scope="read admin"))
    assert response.status_code == 200
    assert response.json() == {"user": account.account_id, "roles": ["admin"],
                               "scopes": ["admin", "read"]}


async def test_every_refusal_is_the_same_401(h: Harness) -> None:
    account = await h.runtime.accounts.create("bob")
    other_key = ec.generate_private_key(ec.SECP256R1())
    now = int(time.time())
    forged = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": account.account_id,
                         "iat": now, "exp": now + 60}, other_key, algorithm="ES256",
                        headers={"kid": "k1"})
    cases = {
        "bad_signature": forged,
        "expired": h.token(account.account_id, exp=now - 120, iat=now - 600),
        "wrong_audience": h.token(account.account_id, aud="other"),
        "unknown_account": h.token("acc_nobody"),
        "malformed": "not-a-token",
    }
    bodies = []
    for token in cases.values():
        response = await h.get(token)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == (
            'Bearer realm="apiforge", error="invalid_token"')
        body = response.json()
        body.pop("request_id")
        bodies.append(body)
    assert all(b == bodies[0] for b in bodies)
    missing = await h.get(None)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == 'Bearer realm="apiforge"'
    assert h.reasons() == [*cases, "missing_token"]


async def test_a_token_seen_again_skips_its_signature(h: Harness) -> None:
    account = await h.runtime.accounts.create("cy")
    token = h.token(account.account_id)
    verifier = h.runtime.tokens.verifier  # type: ignore[union-attr]
    before = verifier.signature_checks
    for _ in range(5):
        assert (await h.get(token)).status_code == 200
    assert verifier.signature_checks == before + 1


async def test_suspension_stops_a_cached_token_at_once(h: Harness) -> None:
    admin = await h.runtime.accounts.create("root", roles=["admin"])
    account = await h.runtime.accounts.create("dee")
    token = h.token(account.account_id)
    assert (await h.get(token)).status_code == 200
    await h.runtime.accounts.set_status(account.account_id, "suspended", admin)
    assert (await h.get(token)).status_code == 401
    assert h.reasons()[-1] == "account_suspended"


async def test_revoked_jti_is_refused_cached_or_not(h: Harness) -> None:
    account = await h.runtime.accounts.create("eve")
    seen = h.token(account.account_id, jti="seen-1")
    assert (await h.get(seen)).status_code == 200
    h.runtime.tokens.revoked.add("seen-1")  # type: ignore[union-attr]
    assert (await h.get(seen)).status_code == 401
    # A token this process never saw, revoked in the shared store before it arrives.
    from datetime import timedelta

    await h.runtime.stores.state.revoke(REVOKED_TOKEN_TOPIC, "new-1", timedelta(minutes=5))
    assert (await h.get(h.token(account.account_id, jti="new-1"))).status_code == 401
    assert h.reasons()[-2:] == ["token_revoked", "token_revoked"]


async def test_revocation_arrives_through_the_change_feed(h: Harness) -> None:
    account = await h.runtime.accounts.create("fay")
    token = h.token(account.account_id, jti="feed-1")
    assert (await h.get(token)).status_code == 200
    from datetime import timedelta

    state = h.runtime.stores.state
    await state.revoke(REVOKED_TOKEN_TOPIC, "feed-1", timedelta(minutes=5))
    await state.publish_change(REVOKED_TOKEN_TOPIC, "feed-1")
    await h.runtime.refresher.poll_once()
    assert (await h.get(token)).status_code == 401


async def test_route_scopes_are_required(h: Harness) -> None:
    account = await h.runtime.accounts.create("gus")
    response = await h.get(h.token(account.account_id, scope="read"), "/admin")
    assert response.status_code == 403
    assert response.json()["code"] == "insufficient_scope"
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    ok = await h.get(h.token(account.account_id, scope="admin"), "/admin")
    assert ok.status_code == 200


async def test_forged_tokens_spend_the_address_budget_before_any_signature(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = Harness(tmp_path, monkeypatch, failures={"rate": 3, "period": 60, "burst": 3})
    await h.runtime.start()
    account = await h.runtime.accounts.create("hal")
    other = ec.generate_private_key(ec.SECP256R1())
    now = int(time.time())
    verifier = h.runtime.tokens.verifier  # type: ignore[union-attr]
    statuses = []
    for n in range(10):
        forged = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": account.account_id,
                             "iat": now, "exp": now + 60, "n": n}, other, algorithm="ES256",
                            headers={"kid": "k1"})
        statuses.append((await h.get(forged)).status_code)
    assert statuses[:4] == [401] * 4 and set(statuses[4:]) == {429}
    assert verifier.signature_checks == 4
    blocked = await h.get(h.token(account.account_id))
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) >= 1
    await h.client.aclose()
    await h.runtime.stop()


def test_jwt_route_without_issuers_is_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APIFORGE_KEY_PEPPER", PEPPER)
    policy = load_policy({"routes": {"GET /me": {"auth": "jwt"}},
                          "events": {"sink": "none"}})
    with pytest.raises(ConfigurationError, match="bearer token"):
        protect(APP, policy)
