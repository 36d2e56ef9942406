"""JWKS: strict JWK parsing, the client against a real local provider, and the egress rules.

The provider is a small Starlette app under uvicorn on 127.0.0.1 (rotation, outage, flood,
single flight); the egress tests use the factory's transport injection.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from apiforge.identity.jwks import (
    InvalidJwk,
    JwksClient,
    JwksUnavailable,
    parse_jwk,
    parse_jwk_set,
)
from apiforge.identity.token_cache import VerifiedTokenCache
from apiforge.identity.tokens import InvalidToken, TokenVerifier, TrustedIssuer
from apiforge.integrations import (
    EgressRefused,
    HttpClientFactory,
    ResponseTooLarge,
    check_address,
)
from tests.conftest import LiveServer
from tests.identity.test_tokens import ISSUER, NOW, b64, base_claims, encode, public_jwk

pytestmark = pytest.mark.timeout(60)


class Provider:
    """A local identity provider's JWKS endpoint with switchable keys, failures and latency."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = {"keys": []}
        self.hits = 0
        self.status = 200
        self.delay = 0.0
        self._lock = threading.Lock()

    async def jwks(self, request: Request) -> Response:
        with self._lock:
            self.hits += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200:
            return Response("unavailable", status_code=self.status)
        return Response(json.dumps(self.document), media_type="application/jwk-set+json")

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/jwks.json", self.jwks)])


def local_factory(**kwargs: Any) -> HttpClientFactory:
    settings: dict[str, Any] = {
        "allowed_hosts": ["127.0.0.1"],
        "allow_private_networks": ["127.0.0.1/32"],
        "allow_insecure_http": True,
        "connect_timeout": 2.0,
        "read_timeout": 5.0,
    }
    settings.update(kwargs)
    return HttpClientFactory(**settings)


@pytest.fixture(scope="module")
def provider() -> Iterator[tuple[Provider, str]]:
    state = Provider()
    with LiveServer(state.app()) as server:
        yield state, f"{server.url}/jwks.json"


@pytest.fixture
def es_keys() -> list[ec.EllipticCurvePrivateKey]:
    return [ec.generate_private_key(ec.SECP256R1()) for _ in range(3)]


@pytest.fixture
async def setup(
    provider: tuple[Provider, str], es_keys: list[ec.EllipticCurvePrivateKey]
) -> AsyncIterator[tuple[Provider, JwksClient, TokenVerifier, VerifiedTokenCache]]:
    state, url = provider
    state.document = {"keys": [public_jwk(es_keys[0], "k0", "ES256")]}
    state.hits = 0
    state.status = 200
    state.delay = 0.0
    client = JwksClient(url, http=local_factory(), min_refetch_interval=30, max_age=300)
    cache = VerifiedTokenCache()
    issuer = TrustedIssuer(issuer=ISSUER, audience="api", jwks_url=url)
    verifier = TokenVerifier([issuer], jwks=client, cache=cache)
    yield state, client, verifier, cache
    await client.aclose()


def token(key: ec.EllipticCurvePrivateKey, kid: str, now: float = NOW, **claims: Any) -> str:
    return encode(
        {"alg": "ES256", "kid": kid},
        base_claims(exp=now + 600, iat=now - 1, **claims),
        "ES256",
        key,
    )


async def test_rotation_is_picked_up_on_unknown_kid(setup: Any, es_keys: Any) -> None:
    state, _, verifier, cache = setup
    assert (await verifier.verify(token(es_keys[0], "k0"), now=NOW)).kid == "k0"
    assert state.hits == 1
    # The provider rotates: k0 is withdrawn, k1 published.
    state.document = {"keys": [public_jwk(es_keys[1], "k1", "ES256")]}
    later = NOW + 31
    assert (await verifier.verify(token(es_keys[1], "k1", later), now=later)).kid == "k1"
    assert state.hits == 2
    # k0 was removed: the verified-token cache was flushed and k0 tokens are now refused.
    assert cache.flushes == 1
    with pytest.raises(InvalidToken) as caught:
        await verifier.verify(token(es_keys[0], "k0"), now=later + 1)
    assert caught.value.reason == "unknown_kid"


async def test_forged_kid_flood_costs_at_most_the_refetch_rate(setup: Any, es_keys: Any) -> None:
    state, client, verifier, _ = setup
    await verifier.verify(token(es_keys[0], "k0"), now=NOW)
    assert state.hits == 1
    forger = ec.generate_private_key(ec.SECP256R1())
    # 200 forged kids spread over 100 seconds: with a 30 s interval, at most 4 fetches
    # (at +0 is inside the interval of the first fetch; +30, +60, +90 may each fetch once).
    for i in range(200):
        now = NOW + i * 0.5
        with pytest.raises(InvalidToken) as caught:
            await verifier.verify(token(forger, f"forged-{i}", now), now=now)
        assert caught.value.reason == "unknown_kid"
    assert state.hits - 1 <= 100 // 30
    assert client.fetch_count == state.hits


async def test_single_flight(setup: Any, es_keys: Any) -> None:
    state, client, verifier, _ = setup
    assert client.fetch_count == 0
    await verifier.verify(token(es_keys[0], "k0"), now=NOW)
    state.document = {
        "keys": [public_jwk(es_keys[0], "k0", "ES256"), public_jwk(es_keys[1], "k1", "ES256")]
    }
    state.delay = 0.2  # so every caller arrives while the fetch is in flight
    later = NOW + 31
    new = token(es_keys[1], "k1", later)
    results = await asyncio.gather(*(verifier.verify(new, now=later) for _ in range(50)))
    assert {r.kid for r in results} == {"k1"}
    assert state.hits == 2  # the first load and one shared refetch
    assert client.fetch_count == 2


async def test_provider_outage_serves_cached_set_until_stale_if_error(
    es_keys: Any,
) -> None:
    state = Provider()
    state.document = {"keys": [public_jwk(es_keys[0], "k0", "ES256")]}
    server = LiveServer(state.app())
    with server:
        url = f"{server.url}/jwks.json"
        client = JwksClient(
            url, http=local_factory(), min_refetch_interval=30, max_age=300, stale_if_error=3600
        )
        verifier = TokenVerifier(
            [TrustedIssuer(issuer=ISSUER, audience="api", jwks_url=url)], jwks=client
        )
        await verifier.verify(token(es_keys[0], "k0"), now=NOW)
    # The provider is down (its server is stopped: connections are refused).
    try:
        for offset in (301, 1000, 3000, 3900):
            now = NOW + offset
            assert (await verifier.verify(token(es_keys[0], "k0", now), now=now)).kid == "k0"
            await asyncio.sleep(0.05)  # let the background revalidation fail
        assert client.fetch_count >= 2  # revalidation was attempted, and failed
        now = NOW + 300 + 3600 + 1
        with pytest.raises(JwksUnavailable):
            await verifier.verify(token(es_keys[0], "k0", now), now=now)
        # Throttled: a second refusal right after does not hammer the provider.
        attempts = client.fetch_count
        with pytest.raises(JwksUnavailable):
            await verifier.verify(token(es_keys[0], "k0", now + 1), now=now + 1)
        assert client.fetch_count == attempts
    finally:
        await client.aclose()


async def test_provider_errors_keep_the_cached_set(setup: Any, es_keys: Any) -> None:
    state, client, verifier, cache = setup
    await verifier.verify(token(es_keys[0], "k0"), now=NOW)
    for status, document in ((503, None), (200, {"keys": []}), (200, {"nokeys": 1})):
        state.status = status
        if document is not None:
            state.document = document
        now = NOW + 400 + 100 * status
        with pytest.raises(JwksUnavailable):
            await client.refresh(now=now)
        assert client.keys is not None and client.keys.has_kid("k0")
    assert cache.flushes == 0


async def test_first_fetch_failure_is_unavailable_not_invalid(provider: Any, es_keys: Any) -> None:
    state, url = provider
    state.status = 500
    state.hits = 0
    client = JwksClient(url, http=local_factory(), min_refetch_interval=30)
    verifier = TokenVerifier(
        [TrustedIssuer(issuer=ISSUER, audience="api", jwks_url=url)], jwks=client
    )
    try:
        with pytest.raises(JwksUnavailable):
            await verifier.verify(token(es_keys[0], "k0"), now=NOW)
        with pytest.raises(JwksUnavailable):
            await verifier.verify(token(es_keys[0], "k0"), now=NOW + 1)
        assert state.hits == 1
        with pytest.raises(JwksUnavailable):
            verifier.verify_sync(token(es_keys[0], "k0"), now=NOW)
    finally:
        state.status = 200
        await client.aclose()


async def test_verify_sync_uses_cached_set_without_fetching(setup: Any, es_keys: Any) -> None:
    state, client, verifier, _ = setup
    await client.refresh(now=NOW)
    assert verifier.verify_sync(token(es_keys[0], "k0"), now=NOW).kid == "k0"
    with pytest.raises(InvalidToken):
        verifier.verify_sync(token(es_keys[1], "k1"), now=NOW + 100)
    assert state.hits == 1


async def test_loopback_provider_refused_unless_allowed(provider: Any, es_keys: Any) -> None:
    _, url = provider
    guarded = HttpClientFactory(allow_insecure_http=True)  # no private network allowed
    client = JwksClient(url, http=guarded)
    try:
        with pytest.raises(JwksUnavailable) as caught:
            await client.refresh(now=NOW)
        assert isinstance(caught.value.__cause__, EgressRefused)
    finally:
        await client.aclose()


# --- strict JWK parsing ---------------------------------------------------------------------

EC = ec.generate_private_key(ec.SECP256R1())
ED = ed25519.Ed25519PrivateKey.generate()
RSA_SMALL = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the weak key must be refused
RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    jwk = dict(base)
    for name, value in changes.items():
        if value is None:
            jwk.pop(name, None)
        else:
            jwk[name] = value
    return jwk


EC_JWK = public_jwk(EC, "e", "ES256")
RSA_JWK = public_jwk(RSA, "r", "RS256")

BAD_JWKS = {
    "use enc": _with(EC_JWK, use="enc"),
    "oct key": {"kty": "oct", "k": b64(b"x" * 32), "alg": "HS256"},
    "HS256 alg on EC key": _with(EC_JWK, alg="HS256"),
    "alg none": _with(EC_JWK, alg="none"),
    "EC alg RS256": _with(EC_JWK, alg="RS256"),
    "private member d": _with(EC_JWK, d=b64(b"\x01" * 32)),
    "curve P-384": _with(EC_JWK, crv="P-384"),
    "short x": _with(EC_JWK, x=b64(b"\x01" * 31)),
    "padded x": _with(EC_JWK, x=EC_JWK["x"] + "="),
    "point not on curve": _with(EC_JWK, y=b64((1).to_bytes(32, "big"))),
    "key_ops without verify": _with(EC_JWK, key_ops=["encrypt"]),
    "kid not a string": _with(EC_JWK, kid=5),
    "kty missing": _with(EC_JWK, kty=None),
    "unknown kty": _with(EC_JWK, kty="XYZ"),
    "RSA 1024 bits": public_jwk(RSA_SMALL, "s", "RS256"),
    "RSA even exponent": _with(RSA_JWK, e=b64(b"\x01\x00\x00")),
    "RSA exponent 1": _with(RSA_JWK, e=b64(b"\x01")),
    "RSA leading zero": _with(RSA_JWK, n="AA" + RSA_JWK["n"]),
    "Ed448": {"kty": "OKP", "crv": "Ed448", "x": b64(b"\x01" * 57)},
    "EdDSA alg on RSA": _with(RSA_JWK, alg="EdDSA"),
    "not an object": ["kty", "EC"],
}


@pytest.mark.parametrize("jwk", BAD_JWKS.values(), ids=BAD_JWKS.keys())
def test_bad_jwk_refused(jwk: Any) -> None:
    with pytest.raises(InvalidJwk):
        parse_jwk(jwk)


def test_jwk_pins_algorithm() -> None:
    assert parse_jwk(_with(EC_JWK, alg=None)).alg == "ES256"
    assert parse_jwk(public_jwk(ED, "d")).alg == "EdDSA"
    assert parse_jwk(_with(RSA_JWK, alg=None)).alg == "RS256"
    assert parse_jwk(_with(RSA_JWK, alg="PS256")).alg == "PS256"


def test_jwk_set_skips_bad_keys_and_refuses_empty_sets() -> None:
    keys = parse_jwk_set(json.dumps({"keys": [EC_JWK, BAD_JWKS["use enc"]]}).encode())
    assert len(keys) == 1 and keys.has_kid("e")
    for raw in (
        b'{"keys": []}',
        b"[]",
        b'{"keys": {}}',
        b'{"keys": [1]}',
        b'{"keys":[],"keys":[]}',
    ):
        with pytest.raises(InvalidJwk):
            parse_jwk_set(raw)


def test_thumbprint_is_rfc7638() -> None:
    # RFC 7638 section 3.1 example key and thumbprint.
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tS"
        "oc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0"
        "_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4"
        "vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert parse_jwk(jwk).thumbprint == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


# --- the outbound client factory ------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "::1",
        "::ffff:127.0.0.1",
        "64:ff9b::7f00:1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "fe80::1",
        "fc00::1",
        "not-an-ip",
    ],
)
def test_non_public_addresses_refused(address: str) -> None:
    with pytest.raises(EgressRefused):
        check_address(address)


def test_public_and_explicitly_allowed_addresses() -> None:
    import ipaddress

    assert str(check_address("93.184.216.34")) == "93.184.216.34"
    assert str(check_address("2606:4700::1111")) == "2606:4700::1111"
    allowed = [ipaddress.ip_network("127.0.0.1/32")]
    assert str(check_address("::ffff:127.0.0.1", allowed)) == "127.0.0.1"


def _mock(handler: Any, **kwargs: Any) -> HttpClientFactory:
    return HttpClientFactory(transport=httpx.MockTransport(handler), **kwargs)


async def test_factory_scheme_and_host_rules() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, content=b"{}")

    factory = _mock(handler, allowed_hosts=["idp.example.com"])
    async with factory.client() as client:
        assert (await factory.fetch(client, "https://IDP.example.com/jwks"))[0] == 200
        with pytest.raises(EgressRefused, match="scheme"):
            await factory.fetch(client, "http://idp.example.com/jwks")
        with pytest.raises(EgressRefused, match="allowed_hosts"):
            await factory.fetch(client, "https://evil.example.com/jwks")
    assert seen == ["https://idp.example.com/jwks"]


async def test_factory_redirects_stay_on_origin() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/a":
            return httpx.Response(302, headers={"location": "/b"})
        if request.url.path == "/b":
            return httpx.Response(200, content=b"ok")
        if request.url.path == "/away":
            return httpx.Response(302, headers={"location": "https://169.254.169.254/latest"})
        return httpx.Response(302, headers={"location": "/loop"})

    factory = _mock(handler)
    async with factory.client() as client:
        assert (await factory.fetch(client, "https://idp.example.com/a"))[2] == b"ok"
        with pytest.raises(EgressRefused, match="another origin"):
            await factory.fetch(client, "https://idp.example.com/away")
        with pytest.raises(EgressRefused, match="redirects"):
            await factory.fetch(client, "https://idp.example.com/loop")


async def test_factory_response_size_limit() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/declared":
            return httpx.Response(200, content=b"x" * 2048)

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(1000):
                yield b"x" * 1024

        return httpx.Response(200, content=chunks())

    factory = _mock(handler, max_response_bytes=1024)
    async with factory.client() as client:
        with pytest.raises(ResponseTooLarge, match="declared"):
            await factory.fetch(client, "https://idp.example.com/declared")
        with pytest.raises(ResponseTooLarge):
            await factory.fetch(client, "https://idp.example.com/stream")
        assert (
            len(
                (await factory.fetch(client, "https://idp.example.com/declared", max_bytes=4096))[2]
            )
            == 2048
        )


async def test_jwks_through_mock_transport(es_keys: Any) -> None:
    document = {"keys": [public_jwk(es_keys[0], "k0", "ES256")]}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=document)

    client = JwksClient("https://idp.example.com/jwks", http=_mock(handler))
    try:
        assert [k.kid for k in await client.candidates("k0", "ES256", now=NOW)] == ["k0"]
        assert await client.candidates("k0", "RS256", now=NOW) == ()
    finally:
        await client.aclose()


def test_factory_configuration_refused() -> None:
    from apiforge.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        HttpClientFactory(allow_private_networks=["not-a-cidr"])
    with pytest.raises(ConfigurationError):
        HttpClientFactory(connect_timeout=0)
    with pytest.raises(ConfigurationError):
        HttpClientFactory(max_response_bytes=0)
