"""The verified-token cache: hits skip the signature, never the time, audience or key checks."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from apiforge.identity.jwks import JwksClient
from apiforge.identity.token_cache import VerifiedTokenCache
from apiforge.identity.tokens import InvalidToken, TokenVerifier, TrustedIssuer, VerifiedToken
from apiforge.integrations import HttpClientFactory
from tests.identity.test_tokens import (
    ISSUER,
    NOW,
    Keys,
    base_claims,
    encode,
    jwks_file,
    keys,
    make_issuers,
    mutate,
    public_jwk,
)

__all__ = ["jwks_file", "keys"]  # session fixtures shared with test_tokens.py


@pytest.fixture
def cached(jwks_file: Path) -> tuple[TokenVerifier, VerifiedTokenCache]:
    cache = VerifiedTokenCache(max_entries=100)
    return TokenVerifier(make_issuers(jwks_file), cache=cache), cache


def es_token(keys: Keys, **claims: Any) -> str:
    return encode({"alg": "ES256", "kid": "es1"}, base_claims(**claims), "ES256", keys.es)


def test_hit_skips_signature(keys: Keys, cached: Any) -> None:
    verifier, cache = cached
    token = es_token(keys)
    first = verifier.verify_sync(token, now=NOW)
    second = verifier.verify_sync(token, now=NOW + 1)
    assert second is first
    assert verifier.signature_checks == 1
    assert (cache.hits, len(cache)) == (1, 1)


def test_a_different_token_is_not_a_hit(keys: Keys, cached: Any) -> None:
    verifier, _ = cached
    token = es_token(keys)
    verifier.verify_sync(token, now=NOW)
    # Same claims, other bytes (a forged signature): misses and fails.
    for forged in (mutate(token, "sig_zero"), mutate(token, "flip_claims")):
        with pytest.raises(InvalidToken):
            verifier.verify_sync(forged, now=NOW)
    assert verifier.signature_checks == 3


def test_refusals_are_never_cached(keys: Keys, cached: Any) -> None:
    verifier, cache = cached
    bad = mutate(es_token(keys), "sig_r_is_n")
    for _ in range(2):
        with pytest.raises(InvalidToken):
            verifier.verify_sync(bad, now=NOW)
    assert len(cache) == 0


def test_entry_expires_at_exp(keys: Keys, cached: Any) -> None:
    verifier, cache = cached
    token = es_token(keys, exp=NOW + 60)
    verified = verifier.verify_sync(token, now=NOW)
    assert cache.get(verified.digest, now=NOW + 59.9) is verified
    assert cache.get(verified.digest, now=NOW + 60) is None
    assert len(cache) == 0
    # Past exp + leeway the full path refuses it as well.
    with pytest.raises(InvalidToken) as caught:
        verifier.verify_sync(token, now=NOW + 90)
    assert caught.value.reason == "expired"


def test_token_past_exp_is_not_stored(keys: Keys, cached: Any) -> None:
    verifier, cache = cached
    verifier.verify_sync(es_token(keys, exp=NOW - 10), now=NOW)  # inside the 30 s leeway
    assert len(cache) == 0


def test_hit_rechecks_route_audience_and_nbf(keys: Keys, cached: Any) -> None:
    verifier, _ = cached
    token = es_token(keys, aud=["api", "billing"], nbf=NOW)
    verifier.verify_sync(token, now=NOW, audience="billing")
    with pytest.raises(InvalidToken) as caught:
        verifier.verify_sync(token, now=NOW, audience="admin")
    assert caught.value.reason == "wrong_audience"
    with pytest.raises(InvalidToken) as caught:
        verifier.verify_sync(token, now=NOW - 31)
    assert caught.value.reason == "not_yet_valid"
    assert verifier.signature_checks == 1


def _verified(n: int, exp: float = NOW + 100) -> VerifiedToken:
    return VerifiedToken(
        claims={},
        subject=f"s{n}",
        issuer=ISSUER,
        audience=("api",),
        exp=exp,
        iat=NOW,
        nbf=None,
        jti=None,
        scopes=frozenset(),
        digest=hashlib.sha256(str(n).encode()).digest(),
        kid=None,
        alg="ES256",
    )


def test_bounded_lru() -> None:
    cache = VerifiedTokenCache(max_entries=3)
    tokens = [_verified(i) for i in range(5)]
    for t in tokens[:3]:
        cache.put(t, now=NOW)
    assert cache.get(tokens[0].digest, now=NOW) is tokens[0]  # 0 is now most recent
    cache.put(tokens[3], now=NOW)
    cache.put(tokens[4], now=NOW)
    assert len(cache) == 3
    assert cache.get(tokens[1].digest, now=NOW) is None
    assert cache.get(tokens[2].digest, now=NOW) is None
    assert cache.get(tokens[0].digest, now=NOW) is tokens[0]
    assert cache.evictions == 2


def test_discard_and_flush() -> None:
    cache = VerifiedTokenCache()
    a, b = _verified(1), _verified(2)
    cache.put(a, now=NOW)
    cache.put(b, now=NOW)
    cache.discard(a.digest)
    assert cache.get(a.digest, now=NOW) is None
    cache.flush()
    assert len(cache) == 0 and cache.flushes == 1
    with pytest.raises(ValueError):
        VerifiedTokenCache(max_entries=0)


def test_replacing_an_entry_keeps_the_bound() -> None:
    cache = VerifiedTokenCache(max_entries=2)
    token = _verified(1)
    cache.put(token, now=NOW)
    cache.put(dataclasses.replace(token, subject="again"), now=NOW)
    assert len(cache) == 1


async def test_key_removal_flushes_cache(keys: Keys) -> None:
    """A withdrawn key: cached tokens it signed are re-verified, and refused, at once."""
    other = ec.generate_private_key(ec.SECP256R1())
    document = {"keys": [public_jwk(keys.es, "es1", "ES256"), public_jwk(other, "es2", "ES256")]}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=document)

    url = "https://idp.example.com/jwks"
    client = JwksClient(url, http=HttpClientFactory(transport=httpx.MockTransport(handler)))
    cache = VerifiedTokenCache()
    verifier = TokenVerifier(
        [TrustedIssuer(issuer=ISSUER, audience="api", jwks_url=url)], jwks=client, cache=cache
    )
    try:
        token = es_token(keys)
        await verifier.verify(token, now=NOW)
        await verifier.verify(token, now=NOW)
        assert (verifier.signature_checks, len(cache)) == (1, 1)
        document["keys"] = [public_jwk(other, "es2", "ES256")]
        await client.refresh(now=NOW + 40)
        assert len(cache) == 0 and cache.flushes == 1
        with pytest.raises(InvalidToken) as caught:
            await verifier.verify(token, now=NOW + 41)
        assert caught.value.reason == "unknown_kid"
        # Adding a key removes nothing: no flush.
        document["keys"].append(public_jwk(keys.es, "es3", "ES256"))
        await client.refresh(now=NOW + 80)
        assert cache.flushes == 1
    finally:
        await client.aclose()
