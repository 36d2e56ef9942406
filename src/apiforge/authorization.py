"""Authorization inside the app (library mode): ``authorize()``, ``require()``, ``@requires()``.

The pipeline decides each route's own ``authorize`` before the app runs. Inside a handler,
finer questions use the same policy and the same engine::

    from apiforge import authorize, require

    @app.delete("/v1/items/{item_id}", dependencies=[Depends(require("items:delete"))])
    async def delete_item(item_id: int) -> None: ...

    @app.get("/v1/reports/{report_id}")
    async def report(request: Request, report_id: int) -> dict:
        found = load(report_id)
        if not authorize(get_context(request.scope).principal, "reports:read", found).allowed:
            raise HTTPException(404)
        ...

The policy's authorizer is set for each request by the pipeline, so these helpers work only
behind :func:`apiforge.protect`; called elsewhere they deny (fail closed).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import Any, TypeVar

from starlette.exceptions import HTTPException
from starlette.requests import Request

from apiforge.access.engine import Authorizer, Decision
from apiforge.core.context import Principal, get_context
from apiforge.core.routing import RoutePlan

__all__ = ["authorize", "current_authorizer", "require", "requires", "typed_path_params"]

current_authorizer: ContextVar[Authorizer | None] = ContextVar("apiforge_authorizer",
                                                               default=None)
"""The authorizer of the pipeline serving the current request (set by the pipeline)."""

_NO_PIPELINE = Decision(False, "", "pipeline", "deny",
                        "no APIForge pipeline serves this request: nothing can be allowed")
_ANONYMOUS: Mapping[str, Any] = {"roles": frozenset(), "user_id": None}

Endpoint = TypeVar("Endpoint", bound=Callable[..., Awaitable[Any]])


def authorize(
    principal: Principal | Mapping[str, Any] | None,
    action: str,
    resource: Mapping[str, Any] | None = None,
    *,
    request: Mapping[str, Any] | None = None,
) -> Decision:
    """Decide whether ``principal`` may do ``action`` (a permission) on ``resource``.

    Returns the :class:`~apiforge.access.Decision` (``allowed``, ``decided_by``, ``reason``):
    deny by default, an explicit deny rule wins, and a rule that cannot be evaluated denies.
    """
    authorizer = current_authorizer.get()
    if authorizer is None:
        return _NO_PIPELINE
    return authorizer.decide(principal if principal is not None else _ANONYMOUS, action,
                             resource, request)


def typed_path_params(plan: RoutePlan, params: Mapping[str, str]) -> dict[str, Any]:
    """Path parameters as rules see them: an ``integer`` in ``params.path`` is an int.

    Rules compare without conversion (``7 == "7"`` is false), so values are typed the way the
    validation layer reads them.
    """
    schemas = plan.settings.params.path if plan.settings.params is not None else {}
    typed: dict[str, Any] = {}
    for name, text in params.items():
        kind = schemas.get(name, {}).get("type")
        typed[name] = int(text) if (kind == "integer" and text.isascii() and text.isdigit()
                                    and len(text) <= 18) else text
    return typed


def _decide(request: Request, permission: str) -> Decision:
    ctx = get_context(request.scope)
    principal = ctx.principal if ctx is not None else None
    params = (typed_path_params(ctx.route, ctx.path_params)
              if ctx is not None and ctx.route is not None else dict(request.path_params))
    decision = authorize(principal, permission, params,
                         request={"method": request.method, "path": request.url.path,
                                  "params": params})
    if ctx is not None and ctx.decision is None:
        ctx.decision = decision
    return decision


def require(permission: str) -> Callable[[Request], Decision]:
    """A FastAPI dependency that refuses (403) a caller without ``permission``.

    Rules see the path parameters as ``resource`` (typed by the route's ``params.path``).
    Use it in ``dependencies=[...]`` or as a parameter
    (``decision: Decision = Depends(require("users:write"))``).
    """

    def dependency(request: Request) -> Decision:
        decision = _decide(request, permission)
        if not decision.allowed:
            raise HTTPException(status_code=403)
        return decision

    dependency.__name__ = f"require_{permission.replace(':', '_')}"
    return dependency


def requires(permission: str) -> Callable[[Endpoint], Endpoint]:
    """Decorate a Starlette endpoint ``async def endpoint(request)``: 403 without
    ``permission``."""

    def decorate(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def guarded(request: Request, *args: Any, **kwargs: Any) -> Any:
            if not _decide(request, permission).allowed:
                raise HTTPException(status_code=403)
            return await endpoint(request, *args, **kwargs)

        return guarded  # type: ignore[return-value]

    return decorate
