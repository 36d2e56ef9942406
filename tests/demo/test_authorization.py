"""The demo's authorization at every level: endpoint, object, field, lists; each refusal logged."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from apiforge.identity.totp import totp_code
from tests.demo.test_auth_flow import Demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    return Demo(tmp_path_factory.mktemp("authz"))


class Caller:
    def __init__(self, demo: Demo, client: httpx.AsyncClient, token: str) -> None:
        self.demo = demo
        self.client = client
        self.headers = demo.headers(token)

    async def get(self, path: str) -> httpx.Response:
        return await self.client.get(path, headers=self.headers)

    async def put(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return await self.client.put(path, json=body, headers=self.headers)


async def login(demo: Demo, c: httpx.AsyncClient, user: str) -> Caller:
    extra = {}
    if user == "ada":
        extra["otp"] = totp_code(demo.credentials["accounts"]["ada"]["totp_secret"], time.time())
    granted = await demo.grant(c, user, **extra)
    assert granted.status_code == 200, granted.text
    return Caller(demo, c, granted.json()["access_token"])


def same_problem(a: httpx.Response, b: httpx.Response) -> bool:
    def strip(r: httpx.Response) -> dict[str, Any]:
        body = dict(r.json())
        body.pop("request_id")
        return body

    return (a.status_code == b.status_code and strip(a) == strip(b)
            and sorted(k for k in a.headers if k != "x-request-id")
            == sorted(k for k in b.headers if k != "x-request-id"))


async def test_a_user_cannot_read_or_write_another_users_profile(demo: Demo) -> None:
    async with demo.client("10.20.0.1") as c:
        bob = await login(demo, c, "bob")
        alice_profile = await bob.get("/v1/users/1")
        missing = await bob.get("/v1/users/999999")
        assert alice_profile.status_code == 404
        assert same_problem(alice_profile, missing)  # no existence oracle
        write = await bob.put("/v1/users/1", {"email": "x@example.com", "age": 40, "bio": ""})
        missing_write = await bob.put("/v1/users/999999",
                                      {"email": "x@example.com", "age": 40, "bio": ""})
        assert write.status_code == 404 and same_problem(write, missing_write)
        own = (await bob.get("/v1/users/me")).json()
        assert (await bob.get(f"/v1/users/{own['id']}")).json()["username"] == "bob"
    demo.bus.flush()
    assert [e for e in demo.sink.events if e["event"] == "malicious_direct_reference"]
    # The write never reached the app: alice's profile is untouched.
    async with demo.client("10.20.0.2") as c:
        alice = await login(demo, c, "alice")
        assert (await alice.get("/v1/users/me")).json()["email"] != "x@example.com"


async def test_a_user_cannot_set_role_status_or_id(demo: Demo) -> None:
    async with demo.client("10.21.0.1") as c:
        bob = await login(demo, c, "bob")
        for field, value in (("role", "admin"), ("status", "active"), ("id", 1)):
            body = {"email": "bob@example.com", "age": 30, "bio": "", field: value}
            refused = await bob.put("/v1/users/me", body)
            assert refused.status_code == 422, field
            assert field in refused.text
    demo.bus.flush()
    assert [e for e in demo.sink.events if e["event"] == "malicious_extraneous"]


async def test_support_reads_any_profile_without_email_or_age(demo: Demo) -> None:
    async with demo.client("10.22.0.1") as c:
        sam = await login(demo, c, "sam")
        alice = await sam.get("/v1/users/1")
        assert alice.status_code == 200
        body = alice.json()
        assert body["username"] == "alice" and "email" not in body and "age" not in body
        assert int(alice.headers["content-length"]) == len(alice.content)
        own = (await sam.get("/v1/users/me")).json()
        assert "email" not in own  # never, not even their own
        update = await sam.put("/v1/users/1", {"email": "s@example.com", "age": 50, "bio": ""})
        assert update.status_code == 403  # sam may see alice, not change her
    demo.bus.flush()
    assert [e for e in demo.sink.events if e["event"] == "authz_fail"]


async def test_admin_reads_everything_and_updates_anyone(demo: Demo) -> None:
    async with demo.client("10.23.0.1") as c:
        ada = await login(demo, c, "ada")
        alice = await ada.get("/v1/users/1")
        assert alice.status_code == 200 and "email" in alice.json()
        update = await ada.put("/v1/users/1", {"email": "alice@example.com", "age": 34,
                                               "bio": "edited by ada"})
        assert update.status_code == 200 and update.json()["bio"] == "edited by ada"


async def test_explain_agrees_with_the_running_demo(demo: Demo) -> None:
    from apiforge.access.tools import explain
    from apiforge.demo import load_demo_policy

    policy = load_demo_policy()
    bob_reads_alice = explain(policy, "user:acc_x:user", "GET", "/v1/users/1",
                              resource={"id": 1, "username": "alice"})
    assert bob_reads_alice.outcome == "404"
    support = explain(policy, "role:support", "GET", "/v1/users/1",
                      resource={"id": 1, "username": "alice"})
    assert support.outcome == "allow"


async def test_lists_are_filtered_per_caller(demo: Demo) -> None:
    async with demo.client("10.24.0.1") as c:
        bob = await login(demo, c, "bob")
        seen = (await bob.get("/v1/users")).json()
        assert [u["username"] for u in seen] == ["bob"]
        sam = await login(demo, c, "sam")
        everyone = (await sam.get("/v1/users")).json()
        assert len(everyone) == 4 and all("email" not in u for u in everyone)


async def test_a_caller_without_any_grant_never_reaches_a_read(demo: Demo) -> None:
    """A role with no grant of the route's permission is refused before the app runs."""
    from apiforge.access import Authorizer
    from apiforge.core.context import Principal
    from apiforge.demo import load_demo_policy

    authorizer = Authorizer(load_demo_policy().authorization)
    stranger = Principal(user="acc_x", roles=frozenset({"guest"}), username="x")
    assert authorizer.never(stranger, "users:read") is not None
    assert authorizer.never(Principal(roles=frozenset({"user"})), "users:read") is None
    assert authorizer.never(Principal(roles=frozenset({"support"})), "users:read") is None
