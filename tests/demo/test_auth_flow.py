"""The demo's identity provider end to end, in process: grant, refresh, revoke, TOTP, suspend."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from apiforge.demo import protected_demo_app
from apiforge.events import EventBus, MemorySink
from apiforge.identity.totp import totp_code


class Demo:
    def __init__(self, data_dir: Path, policy: Any = None) -> None:
        self.sink = MemorySink()
        self.bus = EventBus([self.sink])
        self.bus.start()
        self.app = protected_demo_app(data_dir, policy, events=self.bus)
        self.credentials = json.loads((data_dir / "demo-credentials.json").read_text())
        self.key = self.credentials["api_key"]

    def client(self, address: str = "127.0.0.1") -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app, client=(address, 5000)),
            base_url="https://localhost")

    def password(self, user: str) -> str:
        return str(self.credentials["accounts"][user]["password"])

    async def grant(self, c: httpx.AsyncClient, user: str, password: str | None = None,
                    **extra: str) -> httpx.Response:
        return await c.post("/v1/auth/token", data={
            "grant_type": "password", "username": user,
            "password": self.password(user) if password is None else password, **extra})

    def headers(self, token: str) -> dict[str, str]:
        return {"x-api-key": self.key, "authorization": f"Bearer {token}"}

    def events(self, name: str) -> list[dict[str, Any]]:
        self.bus.flush()
        return [e for e in self.sink.events if e["event"] == name]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    return Demo(tmp_path_factory.mktemp("demo"))


@pytest.fixture
async def c(demo: Demo) -> AsyncIterator[httpx.AsyncClient]:
    async with demo.client() as client:
        yield client


def without_id(response: httpx.Response) -> dict[str, Any]:
    body = dict(response.json())
    body.pop("request_id")
    return body


async def test_password_grant_then_the_user_routes(demo: Demo, c: httpx.AsyncClient) -> None:
    granted = await demo.grant(c, "alice")
    assert granted.status_code == 200
    assert granted.headers["cache-control"] == "no-store"
    body = granted.json()
    assert body["token_type"] == "Bearer" and 0 < body["expires_in"] <= 900
    assert set(body) >= {"access_token", "refresh_token"}
    me = await c.get("/v1/users/me", headers=demo.headers(body["access_token"]))
    assert me.status_code == 200 and me.json()["username"] == "alice"
    as_json = await c.post("/v1/auth/token", json={
        "grant_type": "password", "username": "bob", "password": demo.password("bob")})
    assert as_json.status_code == 200
    bob = await c.get("/v1/users/me", headers=demo.headers(as_json.json()["access_token"]))
    assert bob.json()["username"] == "bob"
    assert (await c.get("/v1/users/me", headers={"x-api-key": demo.key})).status_code == 401


async def test_unknown_user_and_wrong_password_look_the_same(demo: Demo) -> None:
    async with demo.client("10.1.0.1") as c:
        wrong = await demo.grant(c, "bob", password="nope")
        started = time.perf_counter()
        unknown = await demo.grant(c, "nobody-here", password="nope")
        unknown_time = time.perf_counter() - started
    assert wrong.status_code == unknown.status_code == 401
    assert without_id(wrong) == without_id(unknown)
    assert wrong.headers.keys() == unknown.headers.keys()
    assert unknown_time > 0.005  # a dummy argon2id hash was verified, not skipped
    reasons = [e["reason"] for e in demo.events("authn_login_fail")][-2:]
    assert reasons == ["bad_password", "unknown_user"]


async def test_guessing_backs_off_known_and_unknown_names_alike(demo: Demo) -> None:
    # One attacker address per name, so the per-address limit of the route stays out of it.
    for attacker_address, name in (("10.2.0.1", "bob"), ("10.2.0.2", "nobody-at-all")):
        async with demo.client(attacker_address) as attacker:
            statuses = [(await demo.grant(attacker, name, password="x")).status_code
                        for _ in range(4)]
            assert statuses == [401, 401, 401, 401]  # three free failures, the 4th starts a wait
            throttled = await demo.grant(attacker, name, password="x")
            assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) >= 1
    assert len(demo.events("authn_login_fail_max")) >= 2
    async with demo.client("10.3.0.1") as owner:  # the owner, from their own address
        assert (await demo.grant(owner, "bob")).status_code == 200


async def test_refresh_is_single_use_and_reuse_revokes_the_family(
    demo: Demo, c: httpx.AsyncClient
) -> None:
    first = (await demo.grant(c, "bob")).json()
    second = await c.post("/v1/auth/refresh", data={"refresh_token": first["refresh_token"]})
    assert second.status_code == 200 and second.headers["cache-control"] == "no-store"
    assert second.json()["refresh_token"] != first["refresh_token"]
    reused = await c.post("/v1/auth/refresh", data={"refresh_token": first["refresh_token"]})
    assert reused.status_code == 401 and reused.json()["code"] == "invalid_grant"
    # The thief's reuse killed the whole family: the legitimate successor is dead too.
    successor = await c.post("/v1/auth/refresh",
                             data={"refresh_token": second.json()["refresh_token"]})
    assert successor.status_code == 401
    assert demo.events("authn_token_reuse")


async def test_concurrent_refreshes_exactly_one_wins(demo: Demo, c: httpx.AsyncClient) -> None:
    token = (await demo.grant(c, "sam")).json()["refresh_token"]
    answers = await asyncio.gather(*(
        c.post("/v1/auth/refresh", data={"refresh_token": token}) for _ in range(5)))
    assert sorted(a.status_code for a in answers) == [200, 401, 401, 401, 401]


async def test_revoked_access_token_stops_at_once(demo: Demo, c: httpx.AsyncClient) -> None:
    access = (await demo.grant(c, "alice")).json()["access_token"]
    assert (await c.get("/v1/users/me", headers=demo.headers(access))).status_code == 200
    revoked = await c.post("/v1/auth/revoke", data={"token": access})
    assert revoked.status_code == 200
    assert (await c.get("/v1/users/me", headers=demo.headers(access))).status_code == 401
    garbage = await c.post("/v1/auth/revoke", data={"token": "not-a-token"})
    assert garbage.status_code == 200  # RFC 7009: unknown tokens are not an error


async def test_ada_needs_her_second_factor_and_a_code_works_once(demo: Demo) -> None:
    secret = demo.credentials["accounts"]["ada"]["totp_secret"]
    async with demo.client("10.4.0.1") as c:
        assert (await demo.grant(c, "ada")).status_code == 401
        code = totp_code(secret, time.time())
        assert (await demo.grant(c, "ada", otp=code)).status_code == 200
        replayed = await demo.grant(c, "ada", otp=code)
        assert replayed.status_code == 401
    reasons = [e["reason"] for e in demo.events("authn_login_fail")]
    assert "otp_required" in reasons and "otp_replayed" in reasons


async def test_jwks_publishes_the_signing_key(demo: Demo, c: httpx.AsyncClient) -> None:
    jwks = await c.get("/.well-known/jwks.json")
    assert jwks.status_code == 200
    keys = jwks.json()["keys"]
    assert keys and all(k["alg"] == "ES256" and "d" not in k for k in keys)


async def test_flood_of_bad_grants_from_one_address_is_rate_limited(demo: Demo) -> None:
    async with demo.client("10.9.0.1") as c:
        statuses = [(await demo.grant(c, f"user{n}", password="x")).status_code
                    for n in range(8)]
    assert statuses[:5] == [401] * 5 and 429 in statuses[5:]
    assert demo.events("excess_rate_limit_exceeded")


async def test_admin_suspends_a_user_whose_tokens_stop_at_once(demo: Demo) -> None:
    secret = demo.credentials["accounts"]["ada"]["totp_secret"]
    async with demo.client("10.5.0.1") as c:
        bob = (await demo.grant(c, "bob")).json()
        assert (await c.get("/v1/users/me", headers=demo.headers(bob["access_token"]))
                ).status_code == 200
        bob_id = (await c.get("/v1/users/me", headers=demo.headers(bob["access_token"]))
                  ).json()["id"]
        hidden = await c.post("/v1/users/1/suspend", headers=demo.headers(bob["access_token"]))
        assert hidden.status_code == 404  # bob may not even see alice's account
        refused = await c.post(f"/v1/users/{bob_id}/suspend",
                               headers=demo.headers(bob["access_token"]))
        assert refused.status_code == 403  # he sees his own, but may not suspend it
        ada = (await demo.grant(c, "ada", otp=totp_code(secret, time.time() + 30))).json()
        ada_id = (await c.get("/v1/users/me", headers=demo.headers(ada["access_token"]))
                  ).json()["id"]
        self_suspend = await c.post(f"/v1/users/{ada_id}/suspend",
                                    headers=demo.headers(ada["access_token"]))
        assert self_suspend.status_code == 403  # the explicit deny rule wins over her role
        done = await c.post(f"/v1/users/{bob_id}/suspend",
                            headers=demo.headers(ada["access_token"]))
        assert done.status_code == 200 and done.json()["status"] == "suspended"
        assert (await c.get("/v1/users/me", headers=demo.headers(bob["access_token"]))
                ).status_code == 401
        again = await c.post("/v1/auth/refresh", data={"refresh_token": bob["refresh_token"]})
        assert again.status_code == 401
        assert (await demo.grant(c, "bob")).status_code == 401


@pytest.fixture
def dead_store_demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    """The demo with its counters on a Redis nobody runs, the token route's limit allowing."""
    import socket

    import yaml

    from apiforge.demo import DEMO_POLICY_PATH
    from apiforge.policy import load_policy

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{s.getsockname()[1]}/0"
    document = yaml.safe_load(DEMO_POLICY_PATH.read_text())
    document["rate_limits"]["store"] = dead
    document["routes"]["POST /v1/auth/token"]["rate_limits"]["on_store_error"] = "allow"
    return Demo(tmp_path_factory.mktemp("dead-store"), load_policy(document))


async def test_an_unreachable_backoff_store_refuses_the_login(dead_store_demo: Demo) -> None:
    async with dead_store_demo.client("10.8.0.1") as c:
        refused = await dead_store_demo.grant(c, "alice")
    assert refused.status_code == 503
    assert refused.json()["code"] == "backoff_store_unavailable"
    assert refused.headers["retry-after"] == "1"
