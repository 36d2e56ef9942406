"""The route table: declared routes compiled once into plans, and safe path matching.

Matching uses the same decoded ``scope["path"]`` the app routes on. Before matching, paths that
different components could read differently are refused: encoded ``/``, ``\\`` and NUL
(``%2F``, ``%5C``, ``%00``), dot-segments (also encoded), empty segments (``//``), ``;`` path
parameters, raw backslashes and control characters. A gateway and its upstream must never
disagree about which resource a path names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from apiforge.errors import BadRequest, MethodNotAllowed, NotFound
from apiforge.policy.routes import parse_route_key

if TYPE_CHECKING:
    from apiforge.policy.models import RouteSettings

__all__ = ["Respond", "RouteMatch", "RoutePlan", "RouteTable", "TrailingSlashRedirect"]

# Percent-encodings that smuggle a separator, a NUL, a dot-segment or a path parameter.
_ENCODED_DANGER = re.compile(rb"%(?:2f|5c|00|2e|3b)", re.IGNORECASE)
_BAD_CHARS = re.compile(r"[\\;\x00-\x1f\x7f]")
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(slots=True)
class RoutePlan:
    """One declared route, compiled: its key, settings and the hooks that apply to it.

    Layers attach their per-route hooks at start-up; the pipeline runs exactly those.
    """

    key: str
    method: str
    template: str
    settings: RouteSettings
    request_hooks: tuple[Callable[..., Any], ...] = ()
    response_start_hooks: tuple[Callable[..., Any], ...] = ()
    receive_wrappers: tuple[Callable[..., Any], ...] = ()
    body_hooks: tuple[Callable[..., Any], ...] = ()
    """``hook(ctx, body) -> bytes | None`` on the whole body, when ``read_body``; a returned
    value replaces the body the app reads."""
    read_body: bool = False
    """Read the whole body (within ``body_limit``) before the app runs, for ``body_hooks``."""
    response_transforms: tuple[Callable[..., Any], ...] = ()
    """``transform(ctx, status, body) -> bytes`` on the whole body of a 2xx answer, in order,
    before anything of it is sent; raise an ``ApiError`` to answer with it instead (a
    response-level authorization check). Only routes that have one pay for the buffering."""
    body_limit: int = 1024 * 1024
    report_only: bool = False
    deadline: float = 30.0
    body_idle: float = 10.0
    status_counts: dict[int, int] = field(default_factory=dict)
    """Answers by status, counted on the request path (the pipeline's metrics read them)."""
    extra: dict[str, Any] = field(default_factory=dict)


class Respond(Exception):
    """A layer answers the request itself (a CORS preflight, a redirect); the app is not called.

    The pipeline adds the request id and the response hooks' headers, as for any response.
    """

    def __init__(
        self, status: int, headers: list[tuple[bytes, bytes]] | None = None, body: bytes = b""
    ) -> None:
        super().__init__(status)
        self.status = status
        self.headers = headers or []
        self.body = body


class TrailingSlashRedirect(Respond):
    """The path differs from a declared one only by its trailing slash (``redirect`` mode)."""

    def __init__(self, location: str) -> None:
        super().__init__(308, [(b"location", location.encode("utf-8"))])
        self.location = location


class RouteMatch(NamedTuple):
    """The matched plan and the values of its ``{name}`` segments."""

    plan: RoutePlan
    params: Mapping[str, str]


_NO_PARAMS: Mapping[str, str] = MappingProxyType({})
# Templated paths whose match is remembered; the table is emptied when it is full. Only short
# paths are kept, so the table stays small whatever lengths a client sends.
_RECENT_PATHS = 1024
_RECENT_PATH_LENGTH = 256


class RouteTable:
    """Declared routes: static paths in a dict, templated ones in ordered regexes."""

    def __init__(
        self,
        routes: Mapping[str, RouteSettings],
        trailing_slash: Literal["strict", "redirect"] = "strict",
    ) -> None:
        self.plans: list[RoutePlan] = []
        self._static: dict[str, dict[str, RoutePlan]] = {}
        # The match of each static route, made once: most requests take this path.
        self._static_matches: dict[str, dict[str, RouteMatch]] = {}
        self._recent: dict[str, dict[str, RouteMatch]] = {}
        dynamic: dict[str, dict[str, RoutePlan]] = {}
        for key, settings in routes.items():
            method, template = parse_route_key(key)
            plan = RoutePlan(key=f"{method} {template}", method=method, template=template,
                             settings=settings)
            self.plans.append(plan)
            if not settings.enabled:
                continue
            table = dynamic if _PARAM.search(template) else self._static
            table.setdefault(template, {})[method] = plan
            # HEAD is answered wherever GET is, as every HTTP server does (RFC 9110 9.3.2).
            if method == "GET":
                table[template].setdefault("HEAD", plan)
        self._dynamic = [(_compile(t), methods) for t, methods in dynamic.items()]
        self._static_matches = {
            template: {method: RouteMatch(plan, _NO_PARAMS) for method, plan in methods.items()}
            for template, methods in self._static.items()
        }
        self._redirect = trailing_slash == "redirect"

    def match(self, method: str, path: str, raw_path: bytes | None) -> RouteMatch:
        """The plan for ``method path``.

        Raises:
            BadRequest: the path is ambiguous or malformed.
            NotFound: no declared route has this path.
            MethodNotAllowed: the path is declared, but not for ``method``.
            TrailingSlashRedirect: ``redirect`` mode and the other slash form is declared.
        """
        # Fast path: no percent-encoding at all, and an exact static route (its template was
        # checked at load time, so such a path is safe as it is) or a templated path seen
        # lately (`/v1/users/1` again: it passed the checks below then, and passes them again).
        plain = raw_path is None or b"%" not in raw_path
        if plain:
            matches = self._static_matches.get(path)
            if matches is None:
                matches = self._recent.get(path)
            if matches is not None:
                known = matches.get(method)
                if known is None:
                    raise MethodNotAllowed(matches, reason="method_not_declared")
                return known
        self._check_path(path, raw_path)
        found = self._lookup(path)
        if plain and found is not None and found[1] and len(path) <= _RECENT_PATH_LENGTH:
            if len(self._recent) >= _RECENT_PATHS:
                self._recent.clear()  # bounded: a scan of many ids costs a refill, no memory
            # The values are read-only: one copy serves every request for this path.
            self._recent[path] = {m: RouteMatch(plan, found[1]) for m, plan in found[0].items()}
        if found is None:
            if self._redirect and method in ("GET", "HEAD") and path != "/":
                other = path[:-1] if path.endswith("/") else path + "/"
                if self._lookup(other) is not None:
                    raise TrailingSlashRedirect(other)
            raise NotFound(reason="route_not_declared")
        methods, params = found
        plan = methods.get(method)
        if plan is None:
            raise MethodNotAllowed(methods, reason="method_not_declared")
        return RouteMatch(plan, params)

    def _lookup(self, path: str) -> tuple[dict[str, RoutePlan], Mapping[str, str]] | None:
        methods = self._static.get(path)
        if methods is not None:
            return methods, _NO_PARAMS
        for pattern, methods in self._dynamic:
            m = pattern.match(path)
            if m is not None:
                return methods, MappingProxyType(m.groupdict())
        return None

    @staticmethod
    def _check_path(path: str, raw_path: bytes | None) -> None:
        if not path.startswith("/"):
            raise BadRequest("bad_path", "The request path is malformed.", reason="relative_path")
        if raw_path is not None and _ENCODED_DANGER.search(raw_path):
            raise BadRequest("bad_path", "The request path is malformed.",
                             reason="encoded_separator")
        if _BAD_CHARS.search(path) or "//" in path:
            raise BadRequest("bad_path", "The request path is malformed.", reason="bad_character")
        # Dot-segments: `/./`, `/../` anywhere, or at the end.
        if "/." in path:
            for segment in path.split("/"):
                if segment in (".", ".."):
                    raise BadRequest("bad_path", "The request path is malformed.",
                                     reason="dot_segment")


def _compile(template: str) -> re.Pattern[str]:
    pattern = ""
    position = 0
    for m in _PARAM.finditer(template):
        pattern += re.escape(template[position:m.start()]) + f"(?P<{m.group(1)}>[^/]+)"
        position = m.end()
    pattern += re.escape(template[position:])
    return re.compile(pattern + r"\Z")
