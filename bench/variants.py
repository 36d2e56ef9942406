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
from typing import TYPE_CHECKING, Literal

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
    from apiforge.demo.app import create_app

    return create_app(data_dir)


def _build_protected(data_dir: Path) -> ASGIApp:
    from apiforge.demo import protected_demo_app

    return protected_demo_app(data_dir)


def _build_layers(*names: str) -> Callable[[Path], ASGIApp]:
    """The demo behind the pipeline with only the named layers: one stack per stage."""

    def build(data_dir: Path) -> ASGIApp:
        from apiforge.core.pipeline import Pipeline
        from apiforge.demo import protected_demo_app

        full = protected_demo_app(data_dir)
        layers = [layer for layer in full.layers if layer.name in names]
        return Pipeline(full.app, full.policy, layers=layers, events=full.events)

    return build


def _build_starlette_min_protected(data_dir: Path) -> ASGIApp:
    """The minimal app behind the same layers: the pipeline's cost without the demo's SQL."""
    from apiforge.demo import protected_demo_app

    return protected_demo_app(data_dir, app=_build_starlette_min(data_dir))


def _demo_key(data_dir: Path) -> Mapping[str, str]:
    """The API key the demo wrote on its first start, as real clients send it."""
    import json

    credentials = json.loads((data_dir / "demo-credentials.json").read_text(encoding="utf-8"))
    return {"X-API-Key": credentials["api_key"]}


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
        "1": {"id": 1, "email": "alice@example.com", "age": 34, "bio": "hello"},
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


# The variant every ratio is computed against.
BASELINE = "bare"

VARIANTS: list[Variant] = [
    Variant(
        name="bare",
        description="the demo users API alone, no protection layers",
        build=_build_bare,
    ),
    Variant(
        name="protected",
        description="the demo behind every layer of its policy, API key included",
        build=_build_protected,
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
        build=_build_starlette_min,
        baseline="starlette-min",
    ),
    Variant(
        name="starlette-min-protected",
        description="the minimal app behind the demo policy's layers (the pipeline's own cost)",
        build=_build_starlette_min_protected,
        baseline="starlette-min",
        headers=_demo_key,
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
    ("protected", "GET"): 0.72,
    ("protected", "PUT"): 0.72,
    ("protected-https", "GET"): 0.75,
}


def get_variant(name: str) -> Variant:
    for variant in VARIANTS:
        if variant.name == name:
            return variant
    known = ", ".join(v.name for v in VARIANTS)
    raise KeyError(f"unknown variant {name!r} (known: {known})")
