"""Security response headers for a JSON API, on every response: the app's, problems, early answers.

What each header defends against (OWASP REST Security and Secure Headers guidance):

* ``Content-Security-Policy: default-src 'none'; frame-ancestors 'none'`` — a JSON answer that
  a browser is tricked into rendering as HTML can run no script and load nothing, and no site can
  frame it (clickjacking);
* ``X-Content-Type-Options: nosniff`` — no MIME sniffing of a JSON body into HTML or script;
* ``X-Frame-Options: DENY`` — clickjacking, for browsers without ``frame-ancestors``;
* ``Referrer-Policy: no-referrer`` — URLs (with ids or tokens) never leak to other sites;
* ``Cross-Origin-Resource-Policy`` / ``Cross-Origin-Opener-Policy: same-origin`` — other sites
  cannot embed answers into their pages (Spectre-style side channels) or keep a handle on our
  windows;
* ``Permissions-Policy`` — no powerful browser feature for anything we serve;
* ``Strict-Transport-Security`` — over HTTPS only (RFC 6797 section 7.2: a host must not send it
  over plain HTTP, where an attacker could inject or strip it);
* ``Cache-Control: no-store`` whenever the request carried credentials (``Authorization``,
  ``X-API-Key`` or ``Cookie``), so a shared cache or the browser's disk never keeps a
  per-user answer. A weaker ``Cache-Control`` the app set on such an answer is replaced;
  one that already says ``no-store`` is kept as it is;
* ``Server`` and ``X-Powered-By`` set by the app (or the upstream, in the gateway) are removed:
  they tell an attacker which exploits to try. (uvicorn's own ``server`` header is added below
  any middleware: run it with ``server_header=False``.)

The header block is encoded to bytes once at start-up (once per route with overrides), so a
response pays one ``list.extend``. The app should not set these headers itself: a route that
needs a different value (an HTML documentation page needs a CSP that allows its scripts) says
so in its ``RouteHeadersSettings``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from apiforge.core.context import RequestContext
from apiforge.core.pipeline import RequestHook, ResponseHook
from apiforge.core.routing import RoutePlan
from apiforge.errors import ConfigurationError
from apiforge.policy.base import PolicyModel
from apiforge.policy.routes import parse_route_key

__all__ = ["RouteHeadersSettings", "SecurityHeadersLayer", "SecurityHeadersSettings"]

Header = tuple[bytes, bytes]

_FIELD_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # RFC 9110 section 5.1 token
# Visible ASCII and inner spaces only: a CR or LF in a configured value would split the
# response (header injection), and other bytes are read differently by different clients.
_FIELD_VALUE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?\Z")

# Headers this layer writes from its own keys, or that must never be set as a fixed value.
_RESERVED = frozenset({
    "content-security-policy", "x-content-type-options", "x-frame-options", "referrer-policy",
    "cross-origin-resource-policy", "cross-origin-opener-policy", "permissions-policy",
    "strict-transport-security", "cache-control", "server", "x-powered-by", "x-request-id",
    "set-cookie", "content-type", "content-length", "content-encoding", "transfer-encoding",
    "connection", "keep-alive", "upgrade", "trailer", "te", "location", "vary",
    "www-authenticate", "retry-after", "allow",
})
# Response header names are matched as ASGI requires them (lower case) and in their usual
# Title-Case spelling, without lower-casing each name per response. These headers come from
# our own app or upstream, not from the client, so an odd spelling is not an attacker's bypass.
_BANNERS = frozenset({b"server", b"Server", b"SERVER", b"x-powered-by", b"X-Powered-By",
                      b"X-POWERED-BY"})
_CACHE_CONTROL = frozenset({b"cache-control", b"Cache-Control", b"CACHE-CONTROL"})
# Names that make the response hook rewrite the app's headers.
_WATCHED = _BANNERS | _CACHE_CONTROL
_NO_STORE: Header = (b"cache-control", b"no-store")

FrameOptions = Literal["DENY", "SAMEORIGIN"]
ReferrerPolicy = Literal[
    "no-referrer", "no-referrer-when-downgrade", "origin", "origin-when-cross-origin",
    "same-origin", "strict-origin", "strict-origin-when-cross-origin",
]
ResourcePolicy = Literal["same-origin", "same-site", "cross-origin"]
OpenerPolicy = Literal["same-origin", "same-origin-allow-popups", "noopener-allow-popups",
                       "unsafe-none"]


def _header_value(value: str) -> str:
    if not _FIELD_VALUE.match(value):
        raise ValueError(
            "a header value must be visible ASCII characters and inner spaces, not empty"
            " (no line breaks or control characters)"
        )
    return value


HeaderValue = Annotated[str, AfterValidator(_header_value)]


class SecurityHeadersSettings(PolicyModel):
    """Security headers sent on every response; the defaults suit a JSON API."""

    content_security_policy: HeaderValue = "default-src 'none'; frame-ancestors 'none'"
    """`Content-Security-Policy`. The default lets a response load and run nothing and be
    framed by no one: a JSON body that a browser is tricked into rendering stays inert."""

    frame_options: FrameOptions = "DENY"
    """`X-Frame-Options`: `DENY` (default) or `SAMEORIGIN`. Clickjacking protection for
    browsers that predate CSP `frame-ancestors`."""

    referrer_policy: ReferrerPolicy = "no-referrer"
    """`Referrer-Policy`. `no-referrer` keeps URLs, which may carry ids, out of other sites'
    logs."""

    cross_origin_resource_policy: ResourcePolicy = "same-origin"
    """`Cross-Origin-Resource-Policy`. `same-origin` stops other sites from embedding our
    answers (`<img>`, `<script>`), which side-channel attacks such as Spectre rely on. CORS
    reads by allowed origins are not affected."""

    cross_origin_opener_policy: OpenerPolicy = "same-origin"
    """`Cross-Origin-Opener-Policy`. `same-origin` cuts the link between our pages and windows
    opened by or opening other sites (cross-window attacks, XS-Leaks)."""

    permissions_policy: HeaderValue = (
        "accelerometer=(), camera=(), geolocation=(), gyroscope=(), microphone=(), payment=(),"
        " usb=()"
    )
    """`Permissions-Policy`. Denies powerful browser features to anything we serve."""

    hsts_max_age: Annotated[int, Field(ge=0, le=63_072_000)] = 31_536_000
    """`Strict-Transport-Security` max-age in seconds (default one year, at most two). Sent
    over HTTPS only, never over plain HTTP. `0` tells browsers to forget an earlier HSTS
    policy: use it only to undo one."""

    hsts_include_subdomains: bool = True
    """Add `includeSubDomains`: every subdomain must also be HTTPS-only, so a forgotten
    plain-HTTP subdomain cannot be used to set cookies for ours."""

    hsts_preload: bool = False
    """Add `preload`, asking to be built into browsers' HSTS lists. Opt-in because it is hard
    to undo (removal takes months). Requires `hsts_include_subdomains` and `hsts_max_age` of
    at least 31536000, as the preload list does."""

    @model_validator(mode="after")
    def _check_preload(self) -> SecurityHeadersSettings:
        if self.hsts_preload and not (
            self.hsts_include_subdomains and self.hsts_max_age >= 31_536_000
        ):
            raise ValueError(
                f"hsts_preload is true but hsts_include_subdomains is"
                f" {str(self.hsts_include_subdomains).lower()} and hsts_max_age is"
                f" {self.hsts_max_age}: the HSTS preload list requires includeSubDomains and a"
                " max-age of at least 31536000; set both, or set hsts_preload: false"
            )
        return self


class RouteHeadersSettings(PolicyModel):
    """Per-route changes to the security headers; unset keys keep the global value."""

    content_security_policy: HeaderValue | None = None
    """Replaces the global `Content-Security-Policy` on this route (e.g. an HTML
    documentation page that needs its own scripts and styles)."""

    frame_options: FrameOptions | None = None
    """Replaces the global `X-Frame-Options` on this route."""

    referrer_policy: ReferrerPolicy | None = None
    """Replaces the global `Referrer-Policy` on this route."""

    cross_origin_resource_policy: ResourcePolicy | None = None
    """Replaces the global `Cross-Origin-Resource-Policy` on this route (e.g. `cross-origin`
    for a public image or a public key set other sites may embed)."""

    cross_origin_opener_policy: OpenerPolicy | None = None
    """Replaces the global `Cross-Origin-Opener-Policy` on this route."""

    permissions_policy: HeaderValue | None = None
    """Replaces the global `Permissions-Policy` on this route."""

    extra_headers: dict[str, HeaderValue] = Field(default_factory=dict)
    """Fixed headers added to every response of this route, name → value. Names this layer
    manages (set them with the keys above), `Cache-Control`, `Set-Cookie`, framing headers
    (`Content-Length`, `Transfer-Encoding`, `Connection`...) and other per-response headers
    are refused."""

    @field_validator("extra_headers")
    @classmethod
    def _check_extra(cls, headers: dict[str, str]) -> dict[str, str]:
        lowered: dict[str, str] = {}
        for name, value in headers.items():
            key = name.lower()
            if not _FIELD_NAME.match(name):
                raise ValueError(f"extra_headers: {name!r} is not a valid header name")
            if key in _RESERVED or key.startswith(("access-control-", "proxy-")):
                raise ValueError(
                    f"extra_headers: {name!r} cannot be set here; use this section's own keys"
                    " for security headers, the cors section for Access-Control-*, and let"
                    " the app set per-response headers"
                )
            if key in lowered:
                raise ValueError(f"extra_headers: {name!r} is given twice")
            lowered[key] = value
        return lowered


def _encode(pairs: list[tuple[str, str]]) -> tuple[Header, ...]:
    return tuple((name.encode("ascii"), value.encode("ascii")) for name, value in pairs)


def _hsts(settings: SecurityHeadersSettings) -> Header:
    value = f"max-age={settings.hsts_max_age}"
    if settings.hsts_include_subdomains:
        value += "; includeSubDomains"
    if settings.hsts_preload:
        value += "; preload"
    return (b"strict-transport-security", value.encode("ascii"))


def _build_blocks(
    settings: SecurityHeadersSettings, route: RouteHeadersSettings | None = None
) -> tuple[tuple[Header, ...], tuple[Header, ...]]:
    """The encoded header blocks ``(over plain HTTP, over HTTPS)`` for one route.

    The HTTPS block is the plain one plus ``Strict-Transport-Security``.
    """
    r = route or RouteHeadersSettings()
    pairs = [
        ("content-security-policy", r.content_security_policy or settings.content_security_policy),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", r.frame_options or settings.frame_options),
        ("referrer-policy", r.referrer_policy or settings.referrer_policy),
        ("cross-origin-resource-policy",
         r.cross_origin_resource_policy or settings.cross_origin_resource_policy),
        ("cross-origin-opener-policy",
         r.cross_origin_opener_policy or settings.cross_origin_opener_policy),
        ("permissions-policy", r.permissions_policy or settings.permissions_policy),
        *r.extra_headers.items(),
    ]
    plain = _encode(pairs)
    return plain, (*plain, _hsts(settings))


class SecurityHeadersLayer:
    """Adds the security headers to every response and strips ``Server`` / ``X-Powered-By``.

    Args:
        settings: the global header values.
        route_overrides: route key (``"GET /v1/docs"``) → that route's changes. Responses
            before routing (a 404, a refused host, a preflight) use the global block.

    Raises:
        ConfigurationError: a route key is malformed.
    """

    name = "security_headers"

    def __init__(
        self,
        settings: SecurityHeadersSettings | None = None,
        route_overrides: Mapping[str, RouteHeadersSettings] | None = None,
    ) -> None:
        self.settings = settings or SecurityHeadersSettings()
        self._default = _build_blocks(self.settings)
        self._by_route: dict[str, tuple[tuple[Header, ...], tuple[Header, ...]]] = {}
        for key, override in (route_overrides or {}).items():
            try:
                method, template = parse_route_key(key)
            except ValueError as exc:
                raise ConfigurationError(f"security header overrides: {exc}") from None
            self._by_route[f"{method} {template}"] = _build_blocks(self.settings, override)

    def early_hook(self) -> RequestHook | None:
        """None: headers are a response concern."""
        return None

    def attach(self, plan: RoutePlan) -> None:
        """Nothing per route: the one response hook picks the route's block by its key."""
        return None

    def response_hook(self) -> ResponseHook:
        """The hook, specialised at start-up: no route lookup when no route overrides."""
        default = self._default
        by_route = self._by_route

        def add_headers(ctx: RequestContext, status: int, headers: list[Header]) -> None:
            request_headers = ctx.headers
            # The three credential carriers; a per-user answer must never be cached.
            credentialed = (
                b"authorization" in request_headers
                or b"x-api-key" in request_headers
                or b"cookie" in request_headers
            )
            watched = _WATCHED if credentialed else _BANNERS
            keep_cache_control = False
            for name, _ in headers:
                if name in watched:
                    # Rare: the app set a banner or a Cache-Control; rewrite the list in place.
                    keep_cache_control = _clean(headers, credentialed)
                    break
            if by_route:
                route = ctx.route
                blocks = by_route.get(route.key, default) if route is not None else default
            else:
                blocks = default
            headers.extend(blocks[ctx.scheme == "https"])
            if credentialed and not keep_cache_control:
                headers.append(_NO_STORE)

        return add_headers


def _clean(headers: list[Header], credentialed: bool) -> bool:
    """Drop banners (and, on credentialed requests, a Cache-Control without ``no-store``).

    Returns:
        Whether a Cache-Control that already says ``no-store`` was kept.
    """
    kept: list[Header] = []
    no_store = False
    for name, value in headers:
        if name in _BANNERS:
            continue
        if credentialed and name in _CACHE_CONTROL:
            if b"no-store" not in value.lower():
                continue  # a per-user answer must not be stored: ours replaces it
            no_store = True
        kept.append((name, value))
    headers[:] = kept
    return no_store

