"""Per-request state shared by the layers and handed to the app.

The pipeline stores one :class:`RequestContext` in the ASGI scope under :data:`SCOPE_KEY`;
``get_context(scope)`` reads it back (from a Starlette ``Request``, use ``request.scope``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from apiforge.core.routing import RoutePlan

__all__ = ["SCOPE_KEY", "Principal", "RequestContext", "get_context"]

SCOPE_KEY = "apiforge.context"
_NO_PARAMS: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the application (from an API key) and the user (from a token)."""

    application: str | None = None
    user: str | None = None
    """The user's stable account id (a token's ``sub``)."""
    roles: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    username: str | None = None
    """The user's login name, for apps that key their data by name."""
    attributes: Mapping[str, Any] = field(init=False, repr=False, compare=False)
    """What authorization rules read as ``principal``, built once per principal: layers
    keep one ``Principal`` per credential, so rules do not rebuild it per request."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "attributes", MappingProxyType({
            "application": self.application, "user": self.user, "user_id": self.user,
            "username": self.username, "roles": self.roles, "scopes": self.scopes,
        }))


@dataclass(slots=True, init=False)
class RequestContext:
    """What the layers know about one request.

    Attributes:
        request_id: the id echoed in ``X-Request-ID`` and in every event and problem body.
        client: the client address, resolved across trusted proxies only.
        scheme: ``http`` or ``https``, resolved the same way.
        method: the request method.
        path: the decoded path the app routes on.
        route: the matched route's compiled plan, once routing has run.
        path_params: values of the route template's ``{name}`` segments.
        principal: the authenticated caller, once authentication has run.
        headers: the request headers (lower-case byte names to byte values), read once.
        json: the request body, parsed once, validated and sanitized (routes with a body
            schema only).
        model: the pydantic model instance that validated the body, in library mode.
        decision: the authorization decision of the route (``apiforge.access.Decision``):
            what was asked and which grant or rule decided it.
        extra: per-request values of layers (the rate-limit decision, the loaded object).
    """

    request_id: str
    client: str
    scheme: str
    method: str
    path: str
    headers: Mapping[bytes, bytes]
    route: RoutePlan | None
    path_params: Mapping[str, str]
    principal: Principal | None
    json: Any
    model: Any
    decision: Any
    extra: dict[str, Any]

    def __init__(  # written out: one made per request, without the dataclass's factory calls
        self, request_id: str, client: str, scheme: str, method: str, path: str,
        headers: Mapping[bytes, bytes], route: RoutePlan | None = None,
        path_params: Mapping[str, str] = _NO_PARAMS, principal: Principal | None = None,
    ) -> None:
        self.request_id = request_id
        self.client = client
        self.scheme = scheme
        self.method = method
        self.path = path
        self.headers = headers
        self.route = route
        self.path_params = path_params
        self.principal = principal
        self.json = None
        self.model = None
        self.decision = None
        self.extra = {}


def get_context(scope: Mapping[str, Any]) -> RequestContext | None:
    """The request's context, or ``None`` when the app runs without the pipeline."""
    ctx = scope.get(SCOPE_KEY)
    return ctx if isinstance(ctx, RequestContext) else None
