"""``protect(app, policy)``: the library-mode entry point, and the standard layer order."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from apiforge.core.pipeline import ASGIApp, Layer, Pipeline, event_bus
from apiforge.events import EventBus
from apiforge.identity.runtime import IdentityRuntime
from apiforge.layers.auth_failures import AuthFailureGuard
from apiforge.layers.authn import ApiKeyLayer
from apiforge.layers.authz import AuthzFieldsLayer, AuthzLayer, ResourceLoader
from apiforge.layers.bearer import BearerLayer
from apiforge.layers.cors import CorsLayer
from apiforge.layers.headers import SecurityHeadersLayer
from apiforge.layers.hosts import HostLayer
from apiforge.layers.ratelimit import RateLimitLayer
from apiforge.layers.validation import BusinessCheck, ValidationLayer
from apiforge.policy import Policy, load_policy

__all__ = ["needs_identity", "protect", "standard_layers"]


def needs_identity(policy: Policy) -> bool:
    """Whether any served route requires a credential."""
    default = policy.authentication.default
    return any((route.auth or default) != "none" for route in policy.routes.values()
               if route.enabled)


def standard_layers(
    policy: Policy,
    events: EventBus,
    *,
    identity: IdentityRuntime | None = None,
    models: Mapping[str, type[BaseModel]] | None = None,
    checks: Mapping[str, BusinessCheck] | None = None,
    resources: Mapping[str, ResourceLoader] | None = None,
) -> list[Layer]:
    """The layers every protected app runs, in their fixed order.

    Host allowlist first (nothing is answered for a host we do not serve), then CORS preflights
    (answered before authentication, as browsers send them without credentials), then
    authentication (the API key, then the bearer token: the cheap check first), rate limits
    (after it, so per-key and per-user limits are decided with the per-address ones in one
    charge), endpoint and object authorization, the security headers on every response, body
    validation after every check of who is calling (the body of a refused caller is never
    read), and field-level authorization of the validated body last.
    """
    overrides = {key: route.headers for key, route in policy.routes.items() if route.headers}
    authz = AuthzLayer(policy, events, resources)
    failures = policy.authentication.failures
    guard = AuthFailureGuard(failures.rate, failures.period, failures.burst)
    return [
        HostLayer(policy.hosts),
        CorsLayer(policy.cors, events),
        ApiKeyLayer(policy, identity, events, guard),
        BearerLayer(policy, identity, events, guard),
        RateLimitLayer(policy.rate_limits,
                       {key: route.rate_limits for key, route in policy.routes.items()}, events),
        authz,
        SecurityHeadersLayer(policy.security_headers, overrides),
        ValidationLayer(policy, models=models, checks=checks),
        AuthzFieldsLayer(authz),
    ]


def protect(
    app: ASGIApp,
    policy: Policy | Mapping[str, Any] | str | Path | None = None,
    *,
    events: EventBus | None = None,
    identity: IdentityRuntime | None = None,
    models: Mapping[str, type[BaseModel]] | None = None,
    checks: Mapping[str, BusinessCheck] | None = None,
    resources: Mapping[str, ResourceLoader] | None = None,
) -> Pipeline:
    """Wrap an ASGI app (FastAPI, Starlette, Litestar, ...) in APIForge's pipeline.

    Args:
        app: the ASGI app to protect. Only routes declared in the policy reach it.
        policy: a :class:`Policy`, a mapping, or a path to ``apiforge.yaml`` (default
            ``./apiforge.yaml``). Unknown keys and unsafe values raise ``ConfigurationError``
            here, at start-up, never at request time.
        events: where security events go; by default what the policy's ``events`` says.
        identity: the process's identity services; by default opened from the policy's
            ``authentication`` section when a route requires a credential.
        models: pydantic models validating request bodies, by route key
            (``{"PUT /v1/users/me": ProfileUpdate}``), in strict mode.
        checks: business rules run on validated bodies, by route key; they raise
            ``ValidationFailed``.
        resources: resource loaders by route key: ``loader(ctx)`` returns the object the
            request acts on (a mapping, as authorization rules read it) or ``None`` when it
            does not exist; sync or async.

    Returns:
        The protected ASGI app.
    """
    loaded = load_policy(policy)
    bus = events if events is not None else event_bus(loaded.events)
    if identity is None and needs_identity(loaded):
        identity = IdentityRuntime(loaded.authentication)
    layers = standard_layers(loaded, bus, identity=identity, models=models, checks=checks,
                             resources=resources)
    pipeline = Pipeline(app, loaded, layers=layers, events=bus)
    pipeline.owns_events = events is None
    return pipeline
