"""CORS: which other web origins a browser may let read our answers, and send credentials.

CORS is a *read* permission that browsers enforce: a server cannot stop a cross-origin request
from arriving, it can only decline to tell the browser the calling page may read the answer.
So a simple request (``GET``, form ``POST``) from an origin we do not allow is still served,
without any CORS header: the browser then hides the answer from the page. Anything that must
not happen for a cross-site request (a state change with cookie authentication) needs CSRF
protection or a non-cookie credential, not CORS.

Preflights (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) are answered here,
before authentication, since browsers never send credentials on them:

* allowed origin, method and every requested header, for a declared path: ``204`` with the
  ``Access-Control-Allow-*`` headers;
* any of them refused: ``403`` problem (``cors_refused``) with no CORS header, and a
  ``malicious_cors`` event. The browser blocks the real request either way; a 403 rather
  than a bare 204 makes the refusal visible to the developer in the browser's network panel,
  in metrics and in the log, and it is a refusal the pipeline accounts for like any other;
* a path that is not declared: not answered here, so routing gives the usual 404.

What is refused at load time, because each one lets any site read answers: ``null`` as an
origin (sandboxed iframes, ``file:`` pages and redirects all send ``Origin: null``, so any site
can), ``*`` together with ``allow_credentials`` (Starlette and Kong echo any origin in that case),
and regular expressions: origin patterns are ``https://*.example.com``, compiled to an exact
scheme, a fixed suffix and a check that only DNS labels come between.

``Vary: Origin`` is on every response while CORS is on, so a shared cache never hands one
origin's answer (with its ``Access-Control-Allow-Origin``) to another.
"""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING, Annotated

from pydantic import Field, field_validator, model_validator

from apiforge.core.client import DNS_NAME
from apiforge.core.context import RequestContext
from apiforge.core.pipeline import RequestHook, ResponseHook, Scope
from apiforge.core.routing import Respond, RoutePlan, RouteTable
from apiforge.errors import BadRequest, Forbidden, MethodNotAllowed, NotFound
from apiforge.events import EventBus, make_event
from apiforge.policy.base import PolicyModel
from apiforge.policy.routes import HTTP_METHODS

if TYPE_CHECKING:
    from apiforge.policy.models import RouteSettings

__all__ = ["CorsLayer", "CorsSettings"]

Header = tuple[bytes, bytes]

# What a pattern's `*` may stand for in a request's Origin: one or more DNS labels, nothing
# else, so `https://evil.com/.example.com` or `https://a@b.example.com` never match.
_LABELS = re.compile(rb"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*\Z")
_FIELD_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_DEFAULT_PORTS = {"http": "80", "https": "443"}
_KNOWN_LIMIT = 1024
_TITLE = "This cross-origin request is not allowed."

_ACAO = b"access-control-allow-origin"
_VARY = b"vary"
_VARY_NAMES = frozenset({b"vary", b"Vary", b"VARY"})
_PREFLIGHT_VARY = b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"


def _normalize_origin(entry: str) -> str:
    """One ``allow_origins`` entry as browsers serialize an origin; ValueError if malformed."""
    if entry == "*":
        return entry
    if entry.strip().lower() == "null":
        raise ValueError(
            "allow_origins: 'null' is never allowed: sandboxed iframes, file: pages and"
            " cross-site redirects all send 'Origin: null', so any site could read answers;"
            " list the real origins (scheme://host[:port])"
        )
    scheme, sep, rest = entry.lower().partition("://")
    if not sep or scheme not in _DEFAULT_PORTS:
        raise ValueError(
            f"allow_origins: {entry!r} must be 'https://host[:port]' (or 'http://')"
        )
    if any(ch in rest for ch in "/?#@\\ "):
        raise ValueError(
            f"allow_origins: {entry!r}: an origin is scheme://host[:port], with no path"
            " (not even a trailing '/'), query or user info"
        )
    if rest.startswith("["):
        host, _, port = rest.partition("]")
        host += "]"
        if port and not port.startswith(":"):
            raise ValueError(f"allow_origins: {entry!r}: only ':port' may follow ']'")
        port = port[1:]
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"allow_origins: {entry!r}: not an IPv6 address") from None
    else:
        host, _, port = rest.partition(":")
        bare = host.removeprefix("*.")
        if "*" in bare:
            raise ValueError(
                f"allow_origins: {entry!r}: '*' may only be the whole leftmost label, as in"
                " 'https://*.example.com', or the whole entry '*'"
            )
        if not DNS_NAME.match(bare):
            raise ValueError(f"allow_origins: {entry!r}: {host!r} is not a host name")
        if host.startswith("*.") and "." not in bare:
            raise ValueError(
                f"allow_origins: {entry!r} would allow every site under a top-level domain;"
                " name your own domain, e.g. 'https://*.example.com'"
            )
    if port:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"allow_origins: {entry!r}: the port must be 1-65535")
        port = str(int(port))
        # Browsers omit a default port when they serialize an origin; so do we.
        if port != _DEFAULT_PORTS[scheme]:
            return f"{scheme}://{host}:{port}"
    return f"{scheme}://{host}"


class CorsSettings(PolicyModel):
    """Cross-origin resource sharing. Off (no CORS header at all) while `allow_origins` is
    empty, the default."""

    allow_origins: list[str] = Field(default_factory=list)
    """Origins whose pages a browser may let read our answers: exact origins
    (`https://app.example.com`, `http://localhost:3000`) and patterns
    (`https://*.example.com` matches `https://a.example.com` and `https://a.b.example.com`,
    not `https://example.com`, another scheme or another port). `"*"` allows every origin and
    must be alone; it cannot be combined with `allow_credentials`. `null` is always refused.
    Empty (default): CORS is off."""

    allow_methods: list[str] = Field(
        default_factory=lambda: ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
    )
    """Methods an allowed origin may use in a cross-origin request (preflight check). The
    origin list is the trust decision; routes still answer only their declared methods."""

    allow_headers: list[str] = Field(
        default_factory=lambda: ["Authorization", "Content-Type", "X-API-Key", "X-Request-ID"]
    )
    """Request headers an allowed origin may send (preflight check), compared without case.
    `*` is refused: list them."""

    expose_headers: list[str] = Field(
        default_factory=lambda: ["X-Request-ID", "RateLimit", "RateLimit-Policy", "Retry-After"]
    )
    """Response headers, beyond the CORS-safelisted ones, that the calling page may read."""

    allow_credentials: bool = False
    """Let allowed origins send cookies and HTTP authentication and read the answers
    (`Access-Control-Allow-Credentials: true`). Needs an explicit origin list, never `*`."""

    max_age: Annotated[int, Field(ge=0, le=86_400)] = 600
    """Seconds a browser may cache a preflight answer (`Access-Control-Max-Age`); browsers
    cap it (Chromium at 7200, Firefox at 86400)."""

    @field_validator("allow_origins")
    @classmethod
    def _check_origins(cls, origins: list[str]) -> list[str]:
        if "*" in origins and len(origins) > 1:
            raise ValueError("allow_origins: '*' allows every origin; use it alone or remove it")
        normalized = [_normalize_origin(origin) for origin in origins]
        return list(dict.fromkeys(normalized))

    @field_validator("allow_methods")
    @classmethod
    def _check_methods(cls, methods: list[str]) -> list[str]:
        for method in methods:
            if method not in HTTP_METHODS:
                raise ValueError(
                    f"allow_methods: {method!r} must be one of {', '.join(sorted(HTTP_METHODS))}"
                    " (upper case, no '*')"
                )
        return list(dict.fromkeys(methods))

    @field_validator("allow_headers", "expose_headers")
    @classmethod
    def _check_header_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if name == "*" or not _FIELD_NAME.match(name):
                raise ValueError(f"{name!r} is not a header name; list header names, no '*'")
        return names

    @model_validator(mode="after")
    def _check_credentials(self) -> CorsSettings:
        if self.allow_credentials and self.allow_origins == ["*"]:
            raise ValueError(
                "allow_origins is ['*'] while allow_credentials is true: every site on the web"
                " could read answers made with your users' credentials; list the origins"
                " allowed to call with credentials in allow_origins, or set"
                " allow_credentials: false"
            )
        return self


class CorsLayer:
    """Answers CORS preflights early and grants read permission to allowed origins.

    Args:
        settings: the CORS policy; with no ``allow_origins`` the layer adds no hook at all.
        events: receives ``malicious_cors`` for refused preflights and for requests from
            origins that are neither allowed nor our own.

    The layer learns the declared routes through ``attach`` (the pipeline calls it for every
    route at start-up), so a preflight is answered for declared paths only.
    """

    name = "cors"

    def __init__(self, settings: CorsSettings, events: EventBus) -> None:
        self.settings = settings
        self.events = events
        self.enabled = bool(settings.allow_origins)
        self._any = settings.allow_origins == ["*"]
        exact: set[bytes] = set()
        patterns: list[tuple[bytes, bytes]] = []
        for origin in settings.allow_origins:
            if origin == "*":
                continue
            scheme, _, host = origin.partition("://")
            if host.startswith("*."):
                # `https://*.example.com:8443` → prefix `https://`, suffix `.example.com:8443`
                patterns.append((f"{scheme}://".encode(), host[1:].encode()))
            else:
                exact.add(origin.encode())
        self._exact = frozenset(exact)
        # Origins already matched by a pattern, as received, so the next request from the same
        # origin costs one set lookup; only allowed origins enter, emptied when full.
        self._known: set[bytes] = set(exact)
        self._patterns = tuple(patterns)
        self._methods = frozenset(settings.allow_methods)
        self._headers = frozenset(name.lower().encode() for name in settings.allow_headers)
        self._preflight: list[Header] = [
            (b"access-control-allow-methods", ", ".join(settings.allow_methods).encode()),
            (b"access-control-max-age", str(settings.max_age).encode()),
            (_VARY, _PREFLIGHT_VARY),
        ]
        if settings.allow_headers:
            self._preflight.insert(1, (b"access-control-allow-headers",
                                       ", ".join(settings.allow_headers).encode()))
        grant: list[Header] = []
        if settings.allow_credentials:
            grant.append((b"access-control-allow-credentials", b"true"))
        if settings.expose_headers:
            grant.append((b"access-control-expose-headers",
                          ", ".join(settings.expose_headers).encode()))
        self._grant = tuple(grant)
        self._plans: dict[str, RouteSettings] = {}
        self._routes: RouteTable | None = None

    def allows(self, origin: bytes) -> bool:
        """Whether ``origin`` (an ``Origin`` header value, bytes) may read our answers."""
        if self._any or origin in self._known:
            return True
        for prefix, suffix in self._patterns:
            if (
                origin.startswith(prefix)
                and origin.endswith(suffix)
                and len(origin) > len(prefix) + len(suffix)
                and _LABELS.match(origin, len(prefix), len(origin) - len(suffix))
            ):
                if len(self._known) >= _KNOWN_LIMIT:
                    self._known = set(self._exact)
                self._known.add(origin)
                return True
        return False

    def attach(self, plan: RoutePlan) -> None:
        """Record a declared route, so preflights are answered for declared paths only."""
        self._plans[plan.key] = plan.settings
        self._routes = None  # rebuilt on the next preflight, once every route is known

    def early_hook(self) -> RequestHook | None:
        """Answers preflights and records requests from refused origins; None when CORS is off."""
        if not self.enabled:
            return None
        allows = self.allows

        def check_origin(ctx: RequestContext, scope: Scope) -> None:
            headers = ctx.headers
            origin = headers.get(b"origin")
            if origin is None:
                return
            if ctx.method == "OPTIONS":
                requested = headers.get(b"access-control-request-method")
                if requested is not None:
                    self._answer_preflight(ctx, scope, origin, requested)
                    return
            if not allows(origin) and not _same_origin(ctx, origin):
                # Served anyway (CORS is the browser's read permission), but worth recording:
                # a page on a site we do not know is calling us from a user's browser.
                self.events.emit(make_event("malicious_cors", ctx=ctx, reason="origin",
                                            outcome="no_cors_headers", origin=_shown(origin)))

        return check_origin

    def response_hook(self) -> ResponseHook | None:
        """Grants the read permission to allowed origins; None when CORS is off."""
        if not self.enabled:
            return None
        allows = self.allows
        grant = self._grant
        any_origin = self._any

        def add_cors_headers(ctx: RequestContext, status: int, headers: list[Header]) -> None:
            request_headers = ctx.headers
            origin = request_headers.get(b"origin")
            if origin is not None and allows(origin):
                if (
                    status != 204
                    and ctx.method == "OPTIONS"
                    and b"access-control-request-method" in request_headers
                ):
                    # A preflight we did not answer 204 (refused, or not a declared path)
                    # gets no CORS header at all, so nothing about it reads as a grant.
                    _add_vary_origin(headers)
                    return
                # Never `*` when credentials are allowed (refused at load), so the exact
                # origin is echoed: it passed the allowlist, so it is a well-formed value.
                headers.append((_ACAO, b"*" if any_origin else origin))
                headers.extend(grant)
            _add_vary_origin(headers)

        return add_cors_headers

    def _answer_preflight(
        self, ctx: RequestContext, scope: Scope, origin: bytes, requested: bytes
    ) -> None:
        routes = self._routes
        if routes is None:
            routes = self._routes = RouteTable(self._plans)
        method = requested.decode("latin-1")
        try:
            routes.match(method, ctx.path, scope.get("raw_path"))
        except MethodNotAllowed:
            declared = False  # the path exists, but not with the requested method
        except (NotFound, BadRequest, Respond):
            return  # not a declared path (or a malformed one): routing answers 404 / 400
        else:
            declared = True
        if not self.allows(origin):
            reason = "origin"
        elif method not in self._methods or not declared:
            reason = "method"
        elif not self._headers_allowed(ctx):
            reason = "headers"
        else:
            raise Respond(204, list(self._preflight))
        self.events.emit(make_event("malicious_cors", ctx=ctx, reason=reason, preflight=True,
                                    origin=_shown(origin), method=method[:32]))
        raise Forbidden("cors_refused", _TITLE, reason=f"cors_{reason}")

    def _headers_allowed(self, ctx: RequestContext) -> bool:
        headers = ctx.headers
        value = headers.get(b"access-control-request-headers")
        if not value:
            return True
        allowed = self._headers
        for name in value.split(b","):
            name = name.strip().lower()
            if name and name not in allowed:
                return False
        return True


def _same_origin(ctx: RequestContext, origin: bytes) -> bool:
    """Whether ``origin`` is this service itself (browsers send Origin on same-origin POSTs)."""
    headers = ctx.headers
    host = headers.get(b"host")
    return host is not None and origin == ctx.scheme.encode("ascii") + b"://" + host.lower()


def _shown(origin: bytes) -> str:
    """An origin for the log: bounded, and decoded so that odd bytes cannot break the line."""
    return origin[:256].decode("ascii", "backslashreplace")


def _add_vary_origin(headers: list[Header]) -> None:
    """Add ``Origin`` to the response's ``Vary``, merging into an existing one (RFC 9110 12.5.5).

    ``Vary`` is found in lower case (as ASGI requires) or its usual spellings, without
    lower-casing every name per response; under an odd spelling a second ``Vary`` line is
    added, which RFC 9110 section 5.3 defines as the same as one combined line.
    """
    for name, value in headers:
        if name in _VARY_NAMES:
            tokens = [token.strip().lower() for token in value.split(b",")]
            if b"*" in tokens or b"origin" in tokens:
                return
            headers[headers.index((name, value))] = (name, value + b", Origin")
            return
    headers.append((_VARY, b"Origin"))
