"""What the load benchmark measures: server variants, routes and throughput goals.

A variant is one way of serving the same users API. Each is built inside its own server
process (bench/serve.py) from a fresh data directory, so a variant's imports and start-up work
never leak into another's numbers. Adding a variant is a builder function and one `Variant(...)`
entry in VARIANTS; `bench/run.py` picks it up by name.

Builders import their app lazily: the harness process itself only needs the names, and a
variant whose modules are missing fails in its own server with its own traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from starlette.types import ASGIApp

BENCH_DIR = Path(__file__).resolve().parent

# The profile update of the reference lesson; put.lua sends exactly this body.
PUT_BODY = b'{"email": "alice@example.com", "age": 34, "bio": "hello"}'

RouteKind = Literal["GET", "PUT"]
Scheme = Literal["http", "https"]


@dataclass(frozen=True, slots=True)
class Route:
    """One request shape driven by wrk against every variant."""

    method: RouteKind
    path: str
    # A wrk Lua script for requests that need more than a GET (method, body, content type).
    script: Path | None = None
    body: bytes | None = None
    content_type: str | None = None

    @property
    def name(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def kind(self) -> RouteKind:
        """The key goals are declared against: reads and writes have different budgets."""
        return self.method


@dataclass(frozen=True, slots=True)
class Variant:
    """A server configuration under test."""

    name: str
    description: str
    # Called in the server process with that server's own fresh data directory.
    build: Callable[[Path], ASGIApp]
    scheme: Scheme = "http"
    # Run when no --variants is given; reference variants can stay opt-in.
    default: bool = True
    # Extra request headers (credentials, for instance), computed in the harness once the
    # server is ready, from the same data directory the app was built on.
    headers: Callable[[Path], Mapping[str, str]] | None = None
    # The variant its ratio divides by (the same app without protection); None: the baseline.
    baseline: str | None = None


def _build_bare(data_dir: Path) -> ASGIApp:
    from apiforge.demo import prepare_demo_data
    from apiforge.demo.app import create_app

    # The demo's first-start identities too, so that the bare app is sent the same credentials
    # as the protected variants (see _demo_key): it ignores them.
    prepare_demo_data(data_dir, bench_policy())
    return create_app(data_dir)


def bench_policy(*, store: str = "memory://", token_cache: bool = True) -> Any:
    """The demo's policy with its rate limits raised out of reach (same limits, same work).

    wrk sends thousands of requests a second from one address and one user: with the demo's
    real limits every round would measure 429s. The checks themselves are unchanged.
    """
    import os

    import yaml

    from apiforge.demo import DEMO_POLICY_PATH
    from apiforge.policy import load_policy

    document = yaml.safe_load(DEMO_POLICY_PATH.read_text(encoding="utf-8"))
    limits = document["rate_limits"]
    for spec in limits["limits"].values():
        spec.update(rate=10_000_000, burst=1_000_000)
    limits["store"] = store
    limits["prefix"] = f"apiforge:bench:{os.getpid()}:"
    # bench/instructions.py runs servers ~50x slower under valgrind: a store reply must not
    # time out there. The checks are the same whatever the timeout.
    timeout = os.environ.get("APIFORGE_BENCH_STORE_TIMEOUT")
    if timeout:
        limits["timeout"] = float(timeout)
    if not token_cache:
        document["authentication"]["tokens"]["cache_size"] = 0
    return load_policy(document)


def _build_protected(data_dir: Path) -> ASGIApp:
    from apiforge.demo import protected_demo_app

    return protected_demo_app(data_dir, policy=bench_policy())


def _build_protected_with(**options: Any) -> Callable[[Path], ASGIApp]:
    def build(data_dir: Path) -> ASGIApp:
        from apiforge.demo import protected_demo_app

        return protected_demo_app(data_dir, policy=bench_policy(**options))

    return build


def _build_without(*names: str) -> Callable[[Path], ASGIApp]:
    """The full path with the named layers left out (to measure what they cost)."""

    def build(data_dir: Path) -> ASGIApp:
        from apiforge.core.pipeline import Pipeline
        from apiforge.demo import protected_demo_app

        full = protected_demo_app(data_dir, policy=bench_policy())
        layers = [layer for layer in full.layers if layer.name not in names]
        return Pipeline(full.app, full.policy, layers=layers, events=full.events)

    return build


def _build_layers(*names: str) -> Callable[[Path], ASGIApp]:
    """The demo behind the pipeline with only the named layers: one stack per stage."""

    def build(data_dir: Path) -> ASGIApp:
        from apiforge.core.pipeline import Pipeline
        from apiforge.demo import protected_demo_app

        full = protected_demo_app(data_dir, policy=bench_policy())
        layers = [layer for layer in full.layers if layer.name in names]
        return Pipeline(full.app, full.policy, layers=layers, events=full.events)

    return build


def _build_starlette_min_protected(data_dir: Path) -> ASGIApp:
    """The minimal app behind the same layers: the pipeline's cost without the demo's SQL."""
    from apiforge.demo import protected_demo_app

    return protected_demo_app(data_dir, policy=bench_policy(),
                              app=_build_starlette_min(data_dir))


def _demo_key(data_dir: Path) -> Mapping[str, str]:
    """The API key the demo wrote on its first start, and a bearer token of alice's.

    Baselines are sent them too, so every variant parses byte-identical requests and a ratio
    counts only what the layers do with the credentials, not the server reading ~500 more
    bytes of headers.

    The token is signed with the demo's own keyring, as its token endpoint signs them, but
    lives an hour so that no round outlives it: clients reuse their tokens, as real clients
    do between refreshes.
    """
    import asyncio
    import json
    import secrets
    import time

    from apiforge.demo import load_demo_policy, resolve_data_dir
    from apiforge.identity.runtime import IdentityRuntime
    from apiforge.identity.signing import SigningKeyring

    credentials = json.loads((data_dir / "demo-credentials.json").read_text(encoding="utf-8"))
    policy = resolve_data_dir(load_demo_policy(), data_dir)
    provider = policy.authentication.tokens.provider
    if provider is None:
        raise SystemExit("the demo policy names no token provider: nothing signs its tokens")

    async def alice() -> Any:
        runtime = IdentityRuntime(policy.authentication)
        try:
            await runtime.accounts.load()
            return runtime.accounts.find("alice")
        finally:
            await runtime.stop()

    account = asyncio.run(alice())
    now = int(time.time())
    token = SigningKeyring.load(Path(provider.keyring_file)).sign({
        "iss": provider.issuer, "aud": provider.audience, "sub": account.account_id,
        "iat": now, "exp": now + 3600, "jti": secrets.token_urlsafe(12),
        "account_version": account.version,
    })
    return {"X-API-Key": credentials["api_key"], "Authorization": f"Bearer {token}"}


def _build_starlette_min(data_dir: Path) -> ASGIApp:
    """The same three routes in plain Starlette with no storage and no checks.

    It bounds what any app on this server stack can reach on this machine, so a drop of the
    demo app itself can be told apart from a slower machine.
    """
    import orjson
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route as StarletteRoute

    profiles: dict[str, dict[str, object]] = {
        "1": {"id": 1, "username": "alice", "email": "alice@example.com", "age": 34,
              "bio": "hello"},
    }

    def as_json(payload: object) -> Response:
        return Response(orjson.dumps(payload), media_type="application/json")

    async def read_me(request: Request) -> Response:
        return as_json(profiles["1"])

    async def read_user(request: Request) -> Response:
        profile = profiles.get(request.path_params["user_id"])
        if profile is None:
            return as_json({"title": "Not Found", "status": 404})
        return as_json(profile)

    async def update_me(request: Request) -> Response:
        changes = orjson.loads(await request.body())
        profiles["1"] = {**profiles["1"], **changes}
        return as_json(profiles["1"])

    return Starlette(
        routes=[
            StarletteRoute("/v1/users/me", read_me, methods=["GET"]),
            StarletteRoute("/v1/users/me", update_me, methods=["PUT"]),
            StarletteRoute("/v1/users/{user_id}", read_user, methods=["GET"]),
        ]
    )


def _build_starlette_min_baseline(data_dir: Path) -> ASGIApp:
    """The minimal app, with the demo's identities written so it is sent the same credentials."""
    from apiforge.demo import prepare_demo_data

    prepare_demo_data(data_dir, bench_policy())
    return _build_starlette_min(data_dir)


def _build_assembled(limiter: Literal["memory", "redis"]) -> Callable[[Path], ASGIApp]:
    """The demo's routes on FastAPI with slowapi, secure, PyJWT and Starlette's middleware."""

    def build(data_dir: Path) -> ASGIApp:
        from assembled import build_assembled

        return build_assembled(data_dir, limiter=limiter)

    return build


def _assembled_credentials(data_dir: Path) -> Mapping[str, str]:
    """The demo's API key and an ES256 bearer token for alice, signed with the app's key."""
    from assembled import assembled_headers

    return assembled_headers(data_dir)


def _redis_url() -> str:
    import os

    return os.environ.get("APIFORGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


# The variant every ratio is computed against.
BASELINE = "bare"

VARIANTS: list[Variant] = [
    Variant(
        name="bare",
        description="the demo users API alone, no protection layers (sent the same"
        " credentials as the protected variants, which it ignores)",
        build=_build_bare,
        headers=_demo_key,
    ),
    Variant(
        name="bare-twin",
        description="a second server of the bare demo, measured against `bare` like any variant:"
        " what the method reads when nothing differs (its own error)",
        build=_build_bare,
        headers=_demo_key,
    ),
    Variant(
        name="protected",
        description="the full path: the demo behind every layer of its policy (API key, ES256"
        " bearer token, rate limits in memory, authorization, validation)",
        build=_build_protected,
        headers=_demo_key,
    ),
    Variant(
        name="protected-redis",
        description="the full path with its rate limits in Redis (one round trip a request)",
        build=_build_protected_with(store=_redis_url()),
        headers=_demo_key,
    ),
    Variant(
        name="protected-fresh-tokens",
        description="the full path with the verified-token cache off: every request's"
        " signature is checked and its jti looked up, as for a token never seen before",
        build=_build_protected_with(token_cache=False),
        headers=_demo_key,
    ),
    Variant(
        name="no-authz",
        description="the full path without authorization (what authorization costs)",
        build=_build_without("authz", "authz_fields"),
        headers=_demo_key,
    ),
    Variant(
        name="core",
        description="the demo behind the pipeline core only: routing, path checks, request id,"
        " shield, client address, size and time limits",
        build=_build_layers(),
        headers=_demo_key,
    ),
    Variant(
        name="validated",
        description="the demo behind the pipeline core and body/parameter validation",
        build=_build_layers("validation"),
        headers=_demo_key,
    ),
    Variant(
        name="no-authn",
        description="the demo behind every layer but authentication (hosts, CORS, headers,"
        " validation)",
        build=_build_layers("hosts", "cors", "security_headers", "validation"),
        headers=_demo_key,
    ),
    Variant(
        name="bare-https",
        description="the demo users API alone, over HTTPS",
        build=_build_bare,
        scheme="https",
        baseline="bare-https",
        headers=_demo_key,
    ),
    Variant(
        name="protected-https",
        description="the protected demo over HTTPS",
        build=_build_protected,
        scheme="https",
        baseline="bare-https",
        headers=_demo_key,
    ),
    Variant(
        name="starlette-min",
        description="the three routes in plain Starlette, no storage or checks",
        build=_build_starlette_min_baseline,
        baseline="starlette-min",
        headers=_demo_key,
    ),
    Variant(
        name="starlette-min-protected",
        description="the minimal app behind the demo policy's layers (the pipeline's own cost)",
        build=_build_starlette_min_protected,
        baseline="starlette-min",
        headers=_demo_key,
    ),
    Variant(
        name="assembled",
        description="what users assemble today: the same routes on FastAPI with pydantic,"
        " an API key header, PyJWT ES256 bearer tokens, slowapi limits in memory, trusted"
        " hosts, CORS, secure's headers and a request-id middleware",
        build=_build_assembled("memory"),
        baseline="bare",
        headers=_assembled_credentials,
    ),
    Variant(
        name="assembled-redis",
        description="the assembled FastAPI stack with slowapi's limits in Redis",
        build=_build_assembled("redis"),
        baseline="bare",
        headers=_assembled_credentials,
    ),
]

ROUTES: list[Route] = [
    Route("GET", "/v1/users/me"),
    Route("GET", "/v1/users/1"),
    Route(
        "PUT",
        "/v1/users/me",
        script=BENCH_DIR / "put.lua",
        body=PUT_BODY,
        content_type="application/json",
    ),
]

# Minimum median ratio to the baseline, checked with --goals. Reads carry only the cheap
# checks; writes also pay for body limits, validation and sanitization.
GOALS: dict[tuple[str, RouteKind], float] = {
    ("core", "GET"): 0.90,
    ("validated", "GET"): 0.85,
    ("validated", "PUT"): 0.75,
    ("no-authn", "GET"): 0.75,
    ("protected", "GET"): 0.68,  # API key + ES256 token (reused) + account, and every layer
    ("protected", "PUT"): 0.60,
    ("protected-redis", "GET"): 0.45,
    ("protected-redis", "PUT"): 0.45,
    ("protected-https", "GET"): 0.65,
}


def get_variant(name: str) -> Variant:
    for variant in VARIANTS:
        if variant.name == name:
            return variant
    known = ", ".join(v.name for v in VARIANTS)
    raise KeyError(f"unknown variant {name!r} (known: {known})")
