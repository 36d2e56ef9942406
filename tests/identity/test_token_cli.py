"""`apiforge token verify` and `verify_token`: the attack vectors through the policy file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from apiforge import verify_token
from apiforge.cli import app
from apiforge.identity.tokens import InvalidToken
from tests.identity.test_tokens import (  # the same keys, vectors and forger
    HS_ISSUER,
    HS_SECRET,
    ISSUER,
    NOW,
    VECTORS,
    Keys,
    base_claims,
    build_vector,
    encode,
    jwks_file,
    keys,
)

__all__ = ["jwks_file", "keys"]  # fixtures used here by name


@pytest.fixture
def policy_file(jwks_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TEST_HS_SECRET", HS_SECRET)
    path = tmp_path / "apiforge.yaml"
    path.write_text(yaml.safe_dump({"authentication": {"tokens": {"issuers": [
        {"issuer": ISSUER, "audience": "api", "algorithms": ["ES256", "EdDSA", "RS256", "PS256"],
         "jwks_file": str(jwks_file)},
        {"issuer": HS_ISSUER, "audience": ["api", "internal"], "algorithms": ["HS256"],
         "hmac_secret_env": "TEST_HS_SECRET"},
    ]}}}))
    return path


def test_every_vector_through_the_command(keys: Keys, policy_file: Path) -> None:
    # One token a line: a vector made of surrounding whitespace cannot be written as a line
    # (the command strips lines), so it is checked through the one-token form below.
    built = [(v, build_vector(v, keys)) for v in VECTORS["vectors"]]
    kept = [(v, t) for v, t in built if t == t.strip() and "\n" not in t]
    assert len(kept) >= len(built) - 2
    vectors = [v for v, _ in kept]
    tokens = [t for _, t in kept]
    result = CliRunner().invoke(
        app, ["token", "verify", "--policy", str(policy_file), "--now", str(NOW), "-"],
        input="\n".join(tokens) + "\n")
    verdicts = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(verdicts) == len(tokens)
    for vector, verdict in zip(vectors, verdicts, strict=True):
        if vector["expect"] == "ok":
            assert verdict["ok"] is True and verdict["claims"]["sub"] == "user-1", vector["name"]
        else:
            assert verdict == {"ok": False, "reason": vector["expect"]}, vector["name"]
    assert result.exit_code == 1  # some were refused
    for token in tokens:
        assert token not in result.stdout  # a credential is never echoed


def test_one_token_prints_claims_or_the_reason(keys: Keys, policy_file: Path) -> None:
    good = encode({"alg": "ES256", "kid": "es1"}, base_claims(), "ES256", keys.es)
    runner = CliRunner()
    ok = runner.invoke(app, ["token", "verify", "--policy", str(policy_file),
                             "--now", str(NOW), good])
    assert ok.exit_code == 0 and json.loads(ok.stdout) == base_claims()
    expired = runner.invoke(app, ["token", "verify", "--policy", str(policy_file),
                                  "--now", str(NOW + 86_400), good])
    assert expired.exit_code == 1 and "expired" in expired.stderr


def test_policy_without_issuers_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "apiforge.yaml"
    path.write_text("version: 1\n")
    result = CliRunner().invoke(app, ["token", "verify", "--policy", str(path), "x"])
    assert result.exit_code == 2 and "authentication.tokens.issuers" in result.stderr


def test_verify_token_entry_point(keys: Keys, policy_file: Path) -> None:
    good = encode({"alg": "ES256", "kid": "es1"}, base_claims(), "ES256", keys.es)
    claims: dict[str, Any] = verify_token(good, now=NOW, policy=policy_file)
    assert claims == base_claims()
    with pytest.raises(InvalidToken) as caught:
        verify_token(good, now=NOW + 86_400, policy=policy_file)
    assert caught.value.reason == "expired"
