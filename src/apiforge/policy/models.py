"""The policy file's models: every key of ``apiforge.yaml``, its safe default and its meaning.

Each field's docstring is what ``docs/policy.md`` says about the key; a test keeps the two in
step. Unknown keys are refused everywhere (``extra="forbid"``), so a misspelt key can never
silently leave a protection switched off.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal, TypeVar

from pydantic import ByteSize, Field, field_validator, model_validator

from apiforge.access.settings import AuthorizationSettings, RouteAuthorization
from apiforge.identity.token_settings import RouteTokenSettings, TokenSettings
from apiforge.layers.cors import CorsSettings
from apiforge.layers.headers import RouteHeadersSettings, SecurityHeadersSettings
from apiforge.layers.hosts import HostSettings
from apiforge.policy.base import PolicyModel
from apiforge.policy.routes import HTTP_METHODS, parse_route_key
from apiforge.ratelimit.settings import RateLimitSettings, RouteRateLimits

__all__ = [
    "HTTP_METHODS",
    "AuthFailureSettings",
    "AuthenticationSettings",
    "BodySettings",
    "EventsSettings",
    "FieldSanitizer",
    "JsonLimitSettings",
    "LimitSettings",
    "ParameterSettings",
    "Policy",
    "RouteSettings",
    "ServerSettings",
    "TimeoutSettings",
    "TlsPolicySettings",
    "parse_route_key",
    "route_limits",
    "route_timeouts",
]

M = TypeVar("M", bound=PolicyModel)

class JsonLimitSettings(PolicyModel):
    """Limits on the structure of a JSON body, checked before it is parsed."""

    max_depth: Annotated[int, Field(ge=1, le=512)] = 32
    """Deepest nesting of objects and arrays. Deeper documents get 400 `json_too_deep`
    (deep JSON exhausts recursive parsers and turns into 500s in many apps)."""

    max_members: Annotated[int, Field(ge=1)] = 10_000
    """Most members of one object or elements of one array (400 `json_too_many_members`)."""

    max_string: Annotated[int, Field(ge=1)] = 65_536
    """Longest string, keys included, in bytes as sent (400 `json_string_too_long`)."""

    max_number_digits: Annotated[int, Field(ge=1, le=4300)] = 20
    """Most digits in one number (400 `json_number_too_long`): converting long digit strings
    to integers is quadratic in Python (CVE-2020-10735). Integers outside the signed 64-bit
    range are refused too, so a validator and the app never read different values."""


class LimitSettings(PolicyModel):
    """Size limits; a route's `limits` overrides only the keys it names."""

    mode: Literal["enforce", "report"] = "enforce"
    """`enforce` refuses what is over a limit; `report` lets it through and emits the event
    that a refusal would have emitted, to try new limits on live traffic."""

    max_body: ByteSize = ByteSize(1024 * 1024)
    """Largest request body (e.g. `16KiB`, `1MiB`). Enforced while the body streams in: 413
    as soon as it is crossed, the rest never buffered."""

    max_header: ByteSize = ByteSize(8 * 1024)
    """Largest single request header, name and value (431)."""

    max_headers_total: ByteSize = ByteSize(64 * 1024)
    """Largest total size of all request headers (431)."""

    json_body: JsonLimitSettings = Field(default_factory=JsonLimitSettings)
    """Limits on JSON bodies: see `JsonLimitSettings` below."""


class TimeoutSettings(PolicyModel):
    """Time limits of one request; a route's `timeouts` overrides only the keys it names."""

    request: Annotated[float, Field(gt=0, le=3600)] = 30.0
    """Seconds from the end of the headers to the end of the response's start. Past it the
    request is cancelled (504 `deadline_exceeded`); if the response had already started,
    the connection is aborted."""

    body_idle: Annotated[float, Field(gt=0, le=600)] = 10.0
    """Most seconds between two pieces of a request body (408 `request_timeout`)."""


class ServerSettings(PolicyModel):
    """Protections of the servers APIForge starts (the demo, the gateway).

    They act below the ASGI app, which never sees a request whose headers are still arriving.
    """

    header_timeout: Annotated[float, Field(gt=0, le=300)] = 10.0
    """Seconds a client has to send a complete request head. A client that trickles headers
    (slowloris) is disconnected when it runs out, however often it sends a byte."""

    max_connections_per_client: Annotated[int, Field(ge=1)] = 64
    """Open connections allowed from one client address; more are closed at once."""

    max_connections: Annotated[int, Field(ge=1)] = 2048
    """Open connections allowed in all."""


class TlsPolicySettings(PolicyModel):
    """HTTPS for the servers APIForge starts."""

    min_version: Literal["1.3", "1.2"] = "1.3"
    """Oldest TLS version accepted. `1.3` (the default) refuses every older client; `1.2`
    also accepts TLS 1.2 with ECDHE key exchange and AEAD ciphers only. Nothing lower exists
    here: older versions have known attacks."""

    certfile: str | None = None
    """PEM file with the server certificate followed by its intermediates (the full chain).
    The demo makes a development certificate in its data directory when this is empty.
    Reloaded without a restart when the file changes."""

    keyfile: str | None = None
    """PEM file with the certificate's private key (keep it mode 0600)."""

    canonical_host: str = "localhost"
    """The host name clients use. The plain-HTTP listener redirects to `https://` + this
    name, never to the request's own `Host` (which would be an open redirect), and the
    certificate must cover it."""


class AuthFailureSettings(PolicyModel):
    """The budget of failed authentications per client address, checked before any key or
    token is verified (per process: it guards this process's CPU, with no store round trip)."""

    rate: Annotated[int, Field(ge=1)] = 30
    """Failures allowed per `period` in the long run."""

    period: Annotated[float, Field(gt=0, le=86_400)] = 60.0
    """Seconds."""

    burst: Annotated[int, Field(ge=1)] = 30
    """Failures allowed at once from idle; past the budget the address gets 429 with
    `Retry-After` before its credentials are even decoded."""


class AuthenticationSettings(PolicyModel):
    """Who is calling: API keys (the application) and, later, tokens (the user)."""

    records_url: str = "memory://"
    """Where applications, keys and accounts are kept: `sqlite:///PATH`, `postgresql://…`,
    or `memory://` (one process, lost on restart). Read at start-up and on change only: the
    request path never runs SQL. `{data_dir}` is replaced by the demo's data directory."""

    state_url: str = "memory://"
    """Where revocations, account versions and the change feed live: `memory://` (one
    process) or `redis://…`, shared by every instance so a revocation holds everywhere
    within a second. `memory://` is refused when the server runs several workers."""

    state_prefix: str = "apiforge:"
    """Prefix of every Redis key, so several deployments can share one Redis server."""

    pepper_env: str = "APIFORGE_KEY_PEPPER"
    """Environment variable holding the server-side pepper(s) API keys are hashed with
    (HMAC-SHA-256): base64 of at least 32 random bytes, newest first, comma-separated.
    `apiforge keys pepper -` prints a new one."""

    pepper_file: str | None = None
    """A file holding the pepper(s) instead of the environment variable (keep it 0600).
    `{data_dir}` is replaced by the demo's data directory."""

    default: Literal["api_key", "jwt", "both", "none"] = "none"
    """The requirement of routes that do not name one in their `auth` key."""

    tokens: TokenSettings = Field(default_factory=TokenSettings)
    """Bearer tokens: see `TokenSettings` below."""

    failures: AuthFailureSettings = Field(default_factory=AuthFailureSettings)
    """Failed authentications per client address: see `AuthFailureSettings` below."""


class FieldSanitizer(PolicyModel):
    """How one string field of a request body is cleaned before the app sees it."""

    strip_html: bool = False
    """Remove HTML tags with nh3 (an HTML parser, never a regex). Text is stored escaped the
    way HTML needs it: `&` becomes `&amp;`, `<` becomes `&lt;`, `>` becomes `&gt;`."""

    allowed_tags: list[str] = Field(default_factory=list)
    """Tags kept when `strip_html` is on; empty (the default) keeps none."""


class BodySettings(PolicyModel):
    """The request body a route accepts, validated after authentication and authorization."""

    content_type: Literal["application/json"] = "application/json"
    """The only media type accepted (415 otherwise)."""

    json_schema: dict[str, object] | None = None
    """A JSON Schema (draft 2020-12) for the body, compiled once at start-up. In library mode a
    pydantic model given to `protect(..., models=...)` may take its place."""

    unknown_fields: Literal["refuse", "allow"] = "refuse"
    """`refuse`: members the schema does not name get 422 and a `malicious_extraneous` event
    (mass assignment). `allow`: they pass through."""

    sanitize: dict[str, FieldSanitizer] = Field(default_factory=dict)
    """Per top-level field, how its string is cleaned. Every string in the body is also
    normalized to Unicode NFC, and NUL and control characters other than tab, line feed and
    carriage return are refused (422)."""


class ParameterSettings(PolicyModel):
    """Schemas of a route's path, query and header parameters.

    Each parameter maps to a JSON Schema for its value. Values arrive as text: when the schema
    says `integer`, `number` or `boolean`, the text must be exactly such a literal (`12`,
    `-3.5`, `true`), and is then checked against the rest of the schema. A parameter whose
    schema has `required: true` must be present. A query parameter may appear only once.
    """

    path: dict[str, dict[str, object]] = Field(default_factory=dict)
    """Schemas of the `{name}` segments of the route's path."""

    query: dict[str, dict[str, object]] = Field(default_factory=dict)
    """Schemas of query parameters."""

    headers: dict[str, dict[str, object]] = Field(default_factory=dict)
    """Schemas of request headers (names in any case)."""

    unknown_query: Literal["refuse", "allow"] = "refuse"
    """`refuse`: a query parameter the route does not name gets 422 (it may be an attempt to
    reach a parameter the app reads but the gateway does not check). `allow`: it passes."""


class RouteSettings(PolicyModel):
    """Settings of one declared route; later layers add their keys here."""

    enabled: bool = True
    """Serve this route. A route set to `false` answers 404 as if it were not declared."""

    limits: LimitSettings | None = None
    """Overrides of the top-level `limits` for this route, key by key."""

    timeouts: TimeoutSettings | None = None
    """Overrides of the top-level `timeouts` for this route, key by key."""

    body: BodySettings | None = None
    """The body this route accepts. Without it, a body is only size-limited."""

    params: ParameterSettings | None = None
    """The path, query and header parameters this route accepts, validated after
    authentication (422 with field errors). Without it, they are not checked."""

    headers: RouteHeadersSettings | None = None
    """Overrides of the top-level `security_headers` for this route's responses."""

    auth: Literal["api_key", "jwt", "both", "none"] | None = None
    """What a caller must present: `api_key` (in `X-API-Key`, or `Authorization: ApiKey …`:
    identifies the application), `jwt` (`Authorization: Bearer …`: identifies the user),
    `both` (the key in `X-API-Key` and the bearer token), or `none`. Unset:
    `authentication.default`. Every refusal is the same 401."""

    token: RouteTokenSettings | None = None
    """What this route requires of a bearer token (audience, scopes)."""

    rate_limits: RouteRateLimits | None = None
    """This route's rate limits; unset: `rate_limits.default`."""

    authorize: RouteAuthorization | None = None
    """The permission this route needs, and the resource type it acts on (see
    docs/authorization.md). Once `authorization` has roles or rules, a route that requires
    authentication and has no `authorize` is denied (403): routes are closed unless they say
    what they need. A route with `auth: none` is public and is not authorized."""


class EventsSettings(PolicyModel):
    """Where security events go."""

    sink: Literal["stdout", "none"] = "stdout"
    """`stdout` writes one JSON object a line to standard output; `none` discards events (tests)."""

    queue_size: Annotated[int, Field(ge=100, le=1_000_000)] = 10_000
    """Events buffered between a request and the writer; when full, new events are dropped and
    counted (`apiforge_events_dropped_total`) rather than slowing requests down."""


class Policy(PolicyModel):
    """The whole policy file."""

    version: Literal[1] = 1
    """The policy format version. Only `1` exists."""

    routes: dict[str, RouteSettings] = Field(default_factory=dict)
    """The route table: `"METHOD /path/{param}"` → that route's settings. A request for a path
    that is not declared is answered 404, a declared path with another method 405 with `Allow`:
    nothing reaches the app unless it is declared here. `{name}` matches one path segment."""

    trailing_slash: Literal["strict", "redirect"] = "strict"
    """`strict`: `/a/` and `/a` are different paths and only the declared one matches.
    `redirect`: a request for the other form of a declared `GET`/`HEAD` path gets a 308 to the
    declared form (a relative `Location`, so never an open redirect)."""

    trusted_proxies: list[str] = Field(default_factory=list)
    """CIDRs of the proxies in front of this service. `Forwarded`, `X-Forwarded-For` and
    `X-Forwarded-Proto` are read only when the connection comes from one of them, and only across
    hops that are themselves trusted: the client address is the rightmost one that is not a
    trusted proxy. Empty (the default) means the TCP peer is the client and those headers are
    ignored, so a client cannot forge its address."""

    limits: LimitSettings = Field(default_factory=LimitSettings)
    """Size limits for every route; see `LimitSettings`."""

    timeouts: TimeoutSettings = Field(default_factory=TimeoutSettings)
    """Time limits for every route; see `TimeoutSettings`."""

    server: ServerSettings = Field(default_factory=ServerSettings)
    """Connection-level protections of the servers APIForge runs; see `ServerSettings`."""

    hosts: HostSettings = Field(default_factory=HostSettings)
    """Which `Host` names this service answers for; see `HostSettings`."""

    security_headers: SecurityHeadersSettings = Field(default_factory=SecurityHeadersSettings)
    """Headers added to every response, errors included; see `SecurityHeadersSettings`."""

    cors: CorsSettings = Field(default_factory=CorsSettings)
    """Cross-origin access for browsers; off unless `allow_origins` is set."""

    authentication: AuthenticationSettings = Field(default_factory=AuthenticationSettings)
    """Identity stores and credentials; see `AuthenticationSettings`."""

    tls: TlsPolicySettings = Field(default_factory=TlsPolicySettings)
    """HTTPS settings; see `TlsPolicySettings`."""

    problem_type_base: str = "https://apiforge.dev/docs/errors.md"
    """Base of the `type` link of problem responses; `#<code>` is appended."""

    rate_limits: RateLimitSettings = Field(default_factory=RateLimitSettings)
    """Rate limits: see `RateLimitSettings` below."""

    authorization: AuthorizationSettings = Field(default_factory=AuthorizationSettings)
    """Roles, rules and field visibility: see `AuthorizationSettings` below. Empty (the
    default) changes nothing; once it has roles or rules, routes are authorized by their
    `authorize` key."""

    events: EventsSettings = Field(default_factory=EventsSettings)
    """Security events: see the keys below."""

    @field_validator("routes")
    @classmethod
    def _check_routes(cls, routes: dict[str, RouteSettings]) -> dict[str, RouteSettings]:
        for key in routes:
            parse_route_key(key)
        return routes

    @model_validator(mode="after")
    def _check_route_limits(self) -> Policy:
        known = self.rate_limits.limits
        for key, route in self.routes.items():
            named = route.rate_limits.limits if route.rate_limits is not None else None
            unknown = [name for name in named or () if name not in known]
            if unknown:
                raise ValueError(
                    f"routes.{key}.rate_limits.limits names unknown limits {unknown}:"
                    " declare them under rate_limits.limits"
                )
        return self

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, proxies: list[str]) -> list[str]:
        for cidr in proxies:
            try:
                network = ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(
                    f"{cidr!r} is not an IP network; write a CIDR such as '10.0.0.0/8'"
                ) from None
            if network.prefixlen == 0:
                raise ValueError(
                    f"{cidr!r} trusts every address, so any client could forge its address;"
                    " list only your proxies' networks"
                )
        return proxies

    @model_validator(mode="after")
    def _check_problem_base(self) -> Policy:
        if "#" in self.problem_type_base:
            raise ValueError("problem_type_base must not contain '#': the code is appended")
        return self


def route_limits(policy: Policy, route: RouteSettings) -> LimitSettings:
    """The limits in force on ``route``: the top-level ones with the route's keys on top."""
    return _merge(policy.limits, route.limits)


def route_timeouts(policy: Policy, route: RouteSettings) -> TimeoutSettings:
    """The timeouts in force on ``route``."""
    return _merge(policy.timeouts, route.timeouts)


def _merge(base: M, override: M | None) -> M:
    if override is None:
        return base
    merged = base.model_dump()
    _deep_update(merged, override.model_dump(exclude_unset=True))
    return type(base).model_validate(merged)


def _deep_update(target: dict[str, object], update: dict[str, object]) -> None:
    for key, value in update.items():
        current = target.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            _deep_update(current, value)
        else:
            target[key] = value
