"""The authorization layer: endpoint, object and field decisions from ``authorization``.

For a route with ``authorize: {permission, resource, check_response}``:

1. before the app (after authentication and rate limits): the object is loaded (a resource
   loader of the route, in library mode; otherwise the typed path parameters), and the
   principal must have ``permission`` on it. A caller who may not even *read* the object gets
   a 404 identical to a missing id (no existence oracle, event ``malicious_direct_reference``);
   one who may read it but not do this gets 403 (``authz_fail``). Writes are decided here,
   before the handler runs: a response check cannot undo a write.
2. after validation, for bodies: the fields the principal's roles may not write are refused
   (422, ``malicious_extraneous``: mass assignment).
3. with ``check_response``, before the answer leaves: an object the caller may not read
   becomes that same 404 (a BOLA slip in the app is still stopped), lists are filtered to the
   readable items, and only readable fields are sent.

Once ``authorization`` has roles or rules, a route that requires authentication and names no
``authorize`` is denied: routes are closed by default. In ``report`` mode every refusal is
logged and the request goes through.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

from apiforge.access.engine import Authorizer, Decision
from apiforge.access.settings import RouteAuthorization
from apiforge.authorization import current_authorizer, typed_path_params
from apiforge.core.context import RequestContext
from apiforge.core.routing import RoutePlan
from apiforge.errors import (
    BadRequest,
    ConfigurationError,
    FieldError,
    Forbidden,
    InternalError,
    NotFound,
    ValidationFailed,
)
from apiforge.events import EventBus, make_event
from apiforge.policy.models import Policy

__all__ = ["AuthzFieldsLayer", "AuthzLayer", "ResourceLoader"]

ResourceLoader = Callable[
    [RequestContext], "Mapping[str, Any] | Awaitable[Mapping[str, Any] | None] | None"]
"""Loads the object a request acts on (library mode), or ``None`` when it does not exist."""

_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_READS = frozenset({"GET", "HEAD"})
_NOT_WRITABLE = "You may not write this field."
# Read answers let through unchanged, remembered per principal and exact bytes (see
# _response_check): at most this many, of at most this size each.
_PASSED_KEPT = 1024
_PASSED_BODY = 4096


class AuthzLayer:
    """Endpoint and object decisions before the app, and response checks after it.

    Args:
        policy: the policy (``authorization`` and each route's ``authorize``).
        events: where ``authz_fail`` and ``malicious_direct_reference`` go.
        loaders: resource loaders by route key (library mode).
    """

    name = "authz"

    def __init__(self, policy: Policy, events: EventBus,
                 loaders: Mapping[str, ResourceLoader] | None = None) -> None:
        self.policy = policy
        self.events = events
        self.loaders = dict(loaders or {})
        self.authorizer = Authorizer(policy.authorization)
        self.enabled = policy.authorization.enabled
        unknown = sorted(set(self.loaders) - set(policy.routes))
        if unknown:
            raise ConfigurationError(f"resource loaders for undeclared routes: {unknown}")

    def early_hook(self) -> Callable[[RequestContext, Any], None] | None:
        if not self.enabled:
            return None
        authorizer = self.authorizer

        def offer_authorizer(ctx: RequestContext, scope: Any) -> None:
            # For authorize()/require() inside the app: the same policy and engine.
            current_authorizer.set(authorizer)

        return offer_authorizer

    def response_hook(self) -> None:
        return None

    def attach(self, plan: RoutePlan) -> None:
        if not self.enabled:
            return
        authorize = plan.settings.authorize
        if authorize is None:
            if (plan.settings.auth or self.policy.authentication.default) != "none":
                plan.request_hooks = (*plan.request_hooks, self._closed)
            return
        checked_after = (authorize.check_response and authorize.resource is not None)
        if checked_after:
            plan.response_transforms = (*plan.response_transforms,
                                        self._response_check(authorize))
        if checked_after and plan.method in _READS and plan.key not in self.loaders:
            # A read whose answer is checked is decided on the object the app returns, without
            # loading it twice (a read changes nothing meanwhile). A caller whom nothing could
            # ever grant the permission is still refused before the app runs.
            plan.request_hooks = (*plan.request_hooks, self._endpoint_check(authorize))
            return
        plan.request_hooks = (*plan.request_hooks, self._checker(plan, authorize))

    def _endpoint_check(self, authorize: RouteAuthorization
                        ) -> Callable[[RequestContext, Any], None]:
        permission = authorize.permission
        authorizer = self.authorizer

        def check_endpoint(ctx: RequestContext, scope: Any) -> None:
            principal = ctx.principal
            refusal = authorizer.never(principal if principal is not None else _ANONYMOUS,
                                       permission)
            if refusal is not None:
                ctx.decision = refusal
                self._refuse(ctx, refusal, visible=True)

        return check_endpoint

    def _closed(self, ctx: RequestContext, scope: Any) -> None:
        decision = Decision(False, "", "route", "deny", "the route names no permission")
        self._refuse(ctx, decision, visible=True)

    def _checker(self, plan: RoutePlan, authorize: RouteAuthorization
                 ) -> Callable[[RequestContext, Any], Awaitable[None] | None]:
        loader = self.loaders.get(plan.key)
        permission = authorize.permission
        resource_type = authorize.resource
        authorizer = self.authorizer

        def decide(ctx: RequestContext, resource: Mapping[str, Any] | None) -> None:
            principal = ctx.principal
            subject: Any = principal if principal is not None else _ANONYMOUS
            request = {"method": ctx.method, "path": ctx.path, "params": ctx.path_params}
            decision = authorizer.decide(subject, permission, resource, request)
            ctx.decision = decision
            if decision.allowed:
                return
            visible = (resource_type is None
                       or authorizer.can_see(subject, resource_type, resource or {}, request))
            self._refuse(ctx, decision, visible=visible)

        if loader is None:
            def check_params(ctx: RequestContext, scope: Any) -> None:
                decide(ctx, typed_path_params(plan, ctx.path_params))

            return check_params

        async def check_loaded(ctx: RequestContext, scope: Any) -> None:
            found = loader(ctx)
            if inspect.isawaitable(found):
                found = await found
            if found is None:
                raise NotFound(reason="no_such_object")  # as the app would answer
            ctx.extra["apiforge.resource"] = found
            decide(ctx, found)

        return check_loaded

    def _refuse(self, ctx: RequestContext, decision: Decision, *, visible: bool) -> None:
        name = "authz_fail" if visible else "malicious_direct_reference"
        report = not self.authorizer.enforcing
        self.events.emit(make_event(name, ctx=ctx, outcome="report" if report else "deny",
                                    reason=decision.reason, permission=decision.permission,
                                    decided_by=decision.decided_by))
        if report:
            return
        error: Forbidden | NotFound = (Forbidden(reason=decision.decided_by) if visible
                                       else NotFound(reason="not_visible"))
        error.event = None  # logged above under its own name
        raise error

    def _response_check(self, authorize: RouteAuthorization
                        ) -> Callable[[RequestContext, int, bytes], bytes]:
        resource_type = authorize.resource
        if resource_type is None:  # attached only with a resource type
            raise ConfigurationError("check_response needs authorize.resource")
        read = self.policy.authorization.resources[resource_type].read
        permission = authorize.permission
        authorizer = self.authorizer
        # Read answers already checked and let through unchanged, by who asked and the exact
        # bytes: a client reading the same object again costs a lookup, not a parse and the
        # rules. Sound because this check reads nothing else (no request, no environment, no
        # clock), rules are pure, and a principal is immutable (a changed account makes a new
        # one). Only allowed, unchanged answers are kept; anything else is decided afresh.
        passed: dict[tuple[int, bytes], tuple[Any, Decision]] = {}

        def check_response(ctx: RequestContext, status: int, body: bytes) -> bytes:
            principal: Any = ctx.principal if ctx.principal is not None else _ANONYMOUS
            remember = ctx.method in _READS and len(body) <= _PASSED_BODY
            if remember:
                key = (id(principal), body)
                known = passed.get(key)
                if known is not None and known[0] is principal:
                    ctx.decision = known[1]
                    return body
            document = orjson.loads(body)
            if isinstance(document, list):
                kept = authorizer.filter_list(principal, read, resource_type,
                                              [d for d in document if isinstance(d, dict)])
                return orjson.dumps(kept)
            if not isinstance(document, dict):
                # Fail closed: an answer the check cannot read as objects is not sent.
                raise InternalError(reason="response_not_checkable")
            decision = ctx.decision
            if decision is None or ctx.method in _READS:
                # Decided here on the object itself (or checked again: the app may have
                # answered with another object than the one decided on, a BOLA slip).
                decision = authorizer.decide(principal, permission, document)
                ctx.decision = decision
            if not decision.allowed:
                visible = permission != read and authorizer.can_see(principal, resource_type,
                                                                    document)
                self._refuse(ctx, decision, visible=visible)
                return body  # report mode
            if permission != read and not authorizer.can_see(principal, resource_type,
                                                             document):
                self._refuse(ctx, Decision(False, read, "response", "deny",
                                           "the answer holds an object the caller may not"
                                           " read"), visible=False)
                return body  # report mode
            if authorizer.reads_all(principal, resource_type):
                if remember:
                    if len(passed) >= _PASSED_KEPT:
                        passed.clear()
                    passed[key] = (principal, decision)
                return body  # the answer leaves as the app wrote it
            return orjson.dumps(authorizer.readable(principal, resource_type, document))

        return check_response


class AuthzFieldsLayer:
    """Refuses writes of fields the principal's roles may not write (runs after validation).

    Args:
        authz: the authorization layer whose decisions and policy it shares.
    """

    name = "authz_fields"

    def __init__(self, authz: AuthzLayer) -> None:
        self.authz = authz

    def early_hook(self) -> None:
        return None

    def response_hook(self) -> None:
        return None

    def attach(self, plan: RoutePlan) -> None:
        authz = self.authz
        authorize = plan.settings.authorize
        if (not authz.enabled or authorize is None or authorize.resource is None
                or plan.method not in _WRITES):
            return
        resources = authz.policy.authorization.resources
        if not resources[authorize.resource].fields:
            return
        resource_type = authorize.resource
        authorizer = authz.authorizer
        plan.read_body = True

        def check_fields(ctx: RequestContext, body: bytes) -> None:
            document = ctx.json if ctx.json is not None else _loads(body)
            if document is None:
                return
            principal: Any = ctx.principal if ctx.principal is not None else _ANONYMOUS
            refused = authorizer.unwritable(principal, resource_type, document)
            if not refused:
                return
            authz.events.emit(make_event("malicious_extraneous", ctx=ctx,
                                         reason="field_not_writable", fields=refused))
            if authorizer.enforcing:
                raise ValidationFailed(errors=[FieldError(path, _NOT_WRITABLE)
                                               for path in refused[:50]],
                                       reason="field_not_writable")

        plan.body_hooks = (*plan.body_hooks, check_fields)


_ANONYMOUS: Mapping[str, Any] = {"roles": frozenset(), "user_id": None}


def _loads(body: bytes) -> Any:
    if not body:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        # Fail closed: a lenient parser in the app could read fields this check never saw.
        raise BadRequest("malformed_json", "The body is not valid JSON.",
                         reason="field_check_unreadable") from None
