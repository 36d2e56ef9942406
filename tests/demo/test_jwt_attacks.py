"""The JWT attack vectors through the demo: every forged token is the same 401, for its reason."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from apiforge.demo import DEMO_POLICY_PATH
from apiforge.policy import load_policy
from tests.demo.test_auth_flow import Demo
from tests.identity import test_tokens
from tests.identity.test_tokens import (  # the same keys, vectors and forger
    HS_ISSUER,
    HS_SECRET,
    ISSUER,
    VECTORS,
    Keys,
    build_vector,
    jwks_file,
    keys,
)

__all__ = ["jwks_file", "keys"]  # fixtures used here by name


@pytest.fixture
def demo(jwks_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Demo:
    """The demo, trusting the vectors' issuers besides its own."""
    monkeypatch.setenv("TEST_HS_SECRET", HS_SECRET)
    document = yaml.safe_load(DEMO_POLICY_PATH.read_text())
    document["authentication"]["tokens"]["issuers"] = [
        {"issuer": ISSUER, "audience": "api", "algorithms": ["ES256", "EdDSA", "RS256", "PS256"],
         "jwks_file": str(jwks_file)},
        {"issuer": HS_ISSUER, "audience": ["api", "internal"], "algorithms": ["HS256"],
         "hmac_secret_env": "TEST_HS_SECRET"},
    ]
    return Demo(tmp_path, load_policy(document))


async def test_every_vector_is_refused_by_the_running_demo(
    demo: Demo, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    bodies: list[dict[str, Any]] = []
    for number, vector in enumerate(VECTORS["vectors"]):
        # Dates relative to the moment of sending: the vectors sit a second from the leeway.
        monkeypatch.setattr(test_tokens, "NOW", time.time())
        token = build_vector(vector, keys)
        # One address per vector: the failure budget per address is not what is tested here.
        async with demo.client(f"10.77.{number // 250}.{number % 250 + 1}") as c:
            response = await c.get("/v1/users/me", headers={
                "x-api-key": demo.key, "authorization": f"Bearer {token}"})
        if response.status_code == 431:  # over the 8 KiB header limit: refused before it
            assert len(token) > 8000, vector["name"]
            continue
        assert response.status_code == 401, (vector["name"], response.status_code)
        body = dict(response.json())
        body.pop("request_id")
        bodies.append(body)
        demo.bus.flush()
        refusal = [e for e in demo.sink.events if e["event"] == "authn_login_fail"][-1]
        # Valid tokens pass verification and stop at the account: "user-1" has none here.
        # HTTP trims whitespace around a header value, so a padded valid token is valid here.
        valid = vector["expect"] == "ok" or vector.get("mutate") == "whitespace"
        wanted = "unknown_account" if valid else vector["expect"]
        assert refusal["reason"] == wanted, vector["name"]
    assert len(bodies) >= len(VECTORS["vectors"]) - 3
    assert all(body == bodies[0] for body in bodies)  # one answer, whatever the reason
