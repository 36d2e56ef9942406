"""The signing keyring: file safety, JWS round trips through the verifier, rotation, reload."""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from typer.testing import CliRunner

from apiforge.errors import ConfigurationError
from apiforge.identity.signing import (
    DEFAULT_KEEP_FOR,
    KEYRING_FORMAT,
    SigningKeyring,
    keyring_jwks_client,
)
from apiforge.identity.tokens import InvalidToken, TokenVerifier, TrustedIssuer
from apiforge.keys_cli import keys

NOW = 1_750_000_000.0
ISSUER = "https://id.example.test"
AUDIENCE = "orders-api"
KEEP = 960


def claims(now: float = NOW, **extra: Any) -> dict[str, Any]:
    return {"iss": ISSUER, "sub": "acc_1", "aud": AUDIENCE, "iat": int(now),
            "exp": int(now) + 600, "jti": "j1", **extra}


def verifier_for(ring: SigningKeyring, tmp_path: Path, now: float = NOW) -> TokenVerifier:
    """A verifier as an external relying party builds it: from a JWKS file we published."""
    jwks_file = tmp_path / f"jwks-{now}.json"
    jwks_file.write_text(json.dumps(ring.jwks(now)))
    issuer = TrustedIssuer(ISSUER, AUDIENCE, algorithms=("ES256",), jwks_file=str(jwks_file))
    return TokenVerifier([issuer])


def segments(token: str) -> list[dict[str, Any]]:
    parts = token.split(".")
    return [json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4))) for p in parts[:2]]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "keys" / "signing.json"


def test_created_keyring_is_private_and_well_formed(path: Path) -> None:
    ring = SigningKeyring.load_or_create(path, now=NOW)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    document = json.loads(path.read_text())
    assert document["format"] == KEYRING_FORMAT
    [entry] = document["keys"]
    assert entry["kid"] == ring.current.kid
    assert (entry["created"], entry["retired"]) == (int(NOW), None)
    assert "PRIVATE KEY" in entry["private_key"]
    assert "PRIVATE" not in repr(ring.current)
    again = SigningKeyring.load_or_create(path)
    assert again.current.kid == ring.current.kid
    assert not list(path.parent.glob("*.tmp"))


def test_kid_is_the_rfc7638_thumbprint(path: Path) -> None:
    ring = SigningKeyring.load_or_create(path, now=NOW)
    [jwk] = ring.jwks(NOW)["keys"]
    assert set(jwk) == {"kty", "crv", "x", "y", "use", "alg", "kid"}  # nothing private
    assert (jwk["use"], jwk["alg"]) == ("sig", "ES256")
    # Cross-check with PyJWT's independent implementation of RFC 7638.
    public = {k: jwk[k] for k in ("crv", "kty", "x", "y")}
    assert pyjwt.PyJWK(public).key is not None
    [key] = ring.key_set(NOW)
    assert key.kid == jwk["kid"] == key.thumbprint


def test_signed_token_verifies_with_the_existing_verifier(path: Path, tmp_path: Path) -> None:
    ring = SigningKeyring.load_or_create(path, now=NOW)
    token = ring.sign(claims(scope="orders:read"))
    header, body = segments(token)
    assert header == {"alg": "ES256", "typ": "at+jwt", "kid": ring.current.kid}
    assert body["sub"] == "acc_1"
    verified = verifier_for(ring, tmp_path).verify_sync(token, now=NOW + 1)
    assert (verified.subject, verified.kid, verified.alg) == ("acc_1", ring.current.kid, "ES256")
    assert verified.scopes == frozenset({"orders:read"})
    # The signature is raw r || s (64 bytes), which other libraries accept too.
    jwk = ring.jwks(NOW)["keys"][0]
    decoded = pyjwt.decode(token, pyjwt.PyJWK(jwk).key, algorithms=["ES256"],
                           audience=AUDIENCE, options={"verify_exp": False,
                                                       "verify_iat": False})
    assert decoded["jti"] == "j1"
    assert segments(ring.sign(claims(), typ="JWT"))[0]["typ"] == "JWT"


def test_tampered_token_is_refused(path: Path, tmp_path: Path) -> None:
    ring = SigningKeyring.load_or_create(path, now=NOW)
    header, _, signature = ring.sign(claims()).split(".")
    forged_body = base64.urlsafe_b64encode(
        json.dumps(claims(sub="acc_admin"), separators=(",", ":")).encode()
    ).rstrip(b"=").decode()
    with pytest.raises(InvalidToken) as caught:
        verifier_for(ring, tmp_path).verify_sync(f"{header}.{forged_body}.{signature}", now=NOW)
    assert caught.value.reason == "bad_signature"


def test_rotation_keeps_the_old_key_published_until_keep_for(
    path: Path, tmp_path: Path
) -> None:
    first = SigningKeyring.load_or_create(path, now=NOW, keep_for=KEEP)
    old_token = first.sign(claims())
    rotated_at = NOW + 100
    second = SigningKeyring.rotate(path, now=rotated_at, keep_for=KEEP)
    assert second.current.kid != first.current.kid
    assert [k.kid for k in second.keys] == [second.current.kid, first.current.kid]
    assert second.keys[1].retired == int(rotated_at)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    new_token = second.sign(claims(rotated_at))

    # Both tokens verify against what is published right after the rotation.
    published = verifier_for(second, tmp_path, rotated_at + 1)
    published.verify_sync(old_token, now=rotated_at + 1)
    published.verify_sync(new_token, now=rotated_at + 1)

    # keep_for later the old key is no longer published, even before the next rotation...
    assert [k.kid for k in second.published(rotated_at + KEEP - 1)] == [
        second.current.kid, first.current.kid]
    assert [k["kid"] for k in second.jwks(rotated_at + KEEP)["keys"]] == [second.current.kid]
    # ...and the next rotation drops it from the file.
    third = SigningKeyring.rotate(path, now=rotated_at + KEEP, keep_for=KEEP)
    assert [k.kid for k in third.keys] == [third.current.kid, second.current.kid]
    assert first.current.kid not in path.read_text()

    later = verifier_for(third, tmp_path, rotated_at + KEEP + 1)
    with pytest.raises(InvalidToken) as caught:
        later.verify_sync(old_token, now=rotated_at + 10)
    assert caught.value.reason == "unknown_kid"
    later.verify_sync(new_token, now=rotated_at + 10)


def test_another_process_picks_up_a_rotation(path: Path) -> None:
    here = SigningKeyring.load_or_create(path, now=NOW)
    assert here.reload_if_changed() is False
    there = SigningKeyring.rotate(path, now=NOW + 5)
    assert here.reload_if_changed() is True
    assert here.current.kid == there.current.kid
    assert here.reload_if_changed() is False
    assert segments(here.sign(claims()))[0]["kid"] == there.current.kid


def test_a_broken_replacement_keeps_the_keys_in_memory(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ring = SigningKeyring.load_or_create(path, now=NOW)
    kid = ring.current.kid
    path.write_text("{not json")
    os.chmod(path, 0o600)
    assert ring.reload_if_changed() is False
    assert ring.current.kid == kid
    assert "cannot be used" in caplog.text
    assert ring.reload_if_changed() is False  # logged once per change, not per call


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(format="other"), "not an APIForge signing keyring"),
        (lambda d: d["keys"][0].update(kid="chosen-by-hand"), "not the key's thumbprint"),
        (lambda d: d["keys"][0].update(retired=NOW), "'retired' must be an integer"),
        (lambda d: d["keys"][0].update(private_key="garbage"), "not a PEM key"),
        (lambda d: d["keys"][0].update(retired=1), "exactly one key must be current"),
    ],
)
def test_malformed_keyrings_are_refused(path: Path, mutate: Any, message: str) -> None:
    SigningKeyring.load_or_create(path, now=NOW)
    document = json.loads(path.read_text())
    mutate(document)
    path.write_text(json.dumps(document))
    os.chmod(path, 0o600)
    with pytest.raises(ConfigurationError, match=message):
        SigningKeyring.load(path)


def test_a_keyring_readable_by_others_is_refused(path: Path) -> None:
    SigningKeyring.load_or_create(path, now=NOW)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        SigningKeyring.load(path)


def test_missing_keyring_and_bad_keep_for(path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        SigningKeyring.load(path)
    with pytest.raises(FileNotFoundError):
        SigningKeyring.rotate(path)
    with pytest.raises(ConfigurationError):
        SigningKeyring.load_or_create(path, keep_for=0)


def test_concurrent_creation_makes_one_keyring(path: Path) -> None:
    kids: list[str] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        barrier.wait()
        kids.append(SigningKeyring.load_or_create(path).current.kid)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(kids) == 4 and len(set(kids)) == 1


async def test_keyring_jwks_client_follows_rotations(path: Path) -> None:
    ring = SigningKeyring.load_or_create(path, now=NOW)
    client = keyring_jwks_client(ring, f"{ISSUER}/.well-known/jwks.json",
                                 min_refetch_interval=1.0)
    verifier = TokenVerifier(
        [TrustedIssuer(ISSUER, AUDIENCE, algorithms=("ES256",), jwks_url=client.url)],
        jwks=client,
    )
    try:
        assert (await verifier.verify(ring.sign(claims()), now=NOW)).subject == "acc_1"
        # Another process rotates; this process's verifier learns the new kid on first sight.
        rotated = SigningKeyring.rotate(path, now=NOW + 10)
        token = rotated.sign(claims(NOW + 10))
        assert (await verifier.verify(token, now=NOW + 11)).kid == rotated.current.kid
    finally:
        await client.aclose()


def test_cli_rotate_signing(path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(keys, ["rotate-signing", "--keyring", str(path)])
    assert missing.exit_code == 1
    assert "--create" in missing.output

    created = runner.invoke(keys, ["rotate-signing", "--keyring", str(path), "--create"])
    assert created.exit_code == 0, created.output
    first = SigningKeyring.load(path).current.kid
    assert first in created.output

    rotated = runner.invoke(keys, ["rotate-signing", "--keyring", str(path)])
    assert rotated.exit_code == 0, rotated.output
    ring = SigningKeyring.load(path)
    assert f"new signing key: {ring.current.kid}" in rotated.output
    assert f"still published: {first}" in rotated.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    os.chmod(path, 0o640)
    refused = runner.invoke(keys, ["rotate-signing", "--keyring", str(path)])
    assert refused.exit_code == 1
    assert "chmod 600" in refused.output


def test_default_keep_for_covers_the_longest_access_token() -> None:
    assert DEFAULT_KEEP_FOR >= 900 + 60
