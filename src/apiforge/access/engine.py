"""The authorization engine: decisions, object visibility and field filtering, as plain data.

:class:`Authorizer` compiles an :class:`AuthorizationSettings` once. Everything a decision
needs for a set of roles and a permission (which deny rules apply, which grants and allow
rules, the decisions they make) is built the first time it is asked for and kept, so a role
check is a few dictionary lookups and a rule check one closure call. Nothing here knows about
HTTP: the pipeline turns a :class:`Decision` into a status.

The decision for a permission:

1. a ``deny`` rule that applies (its permissions and roles match) and whose ``when`` is true,
   or raises (fail closed), denies;
2. otherwise a role of the principal that grants the permission (unconditionally, or with a
   ``when`` that is true), or an ``allow`` rule that applies and whose ``when`` is true,
   allows; a ``when`` that raises allows nothing;
3. otherwise it is denied by default.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from apiforge.access.expressions import Evaluator, RuleError, compile_expression
from apiforge.access.settings import (
    ANY_PERMISSION,
    AuthorizationSettings,
    FieldList,
    ResourceSettings,
    inherited_roles,
)
from apiforge.core.context import Principal
from apiforge.errors import ConfigurationError

__all__ = ["Authorizer", "Decision", "Trace"]

# Caches are keyed by role sets and permissions, which come from the server's own records and
# routes, not from clients; the caps only keep a misbehaving caller from growing them forever.
_MAX_VIEWS = 1024
_MAX_PLANS = 4096
_EMPTY: Mapping[str, Any] = {}


@dataclass(frozen=True, slots=True)
class Decision:
    """An authorization decision and what made it.

    Attributes:
        allowed: the permission is granted.
        permission: the permission decided.
        decided_by: ``role:NAME``, ``rule:NAME`` or ``default``.
        effect: ``allow`` or ``deny`` (the same fact as ``allowed``, for events).
        reason: one sentence for logs and ``apiforge policy explain``; it names rules and
            roles, never the principal's or the object's data.
    """

    allowed: bool
    permission: str
    decided_by: str
    effect: Literal["allow", "deny"]
    reason: str


@dataclass(frozen=True, slots=True)
class Trace:
    """A decision and how each role and rule fared on the same input (``policy explain``)."""

    decision: Decision
    steps: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Plan:
    """Everything ``decide`` does for one role set and one permission.

    ``denies`` are the deny rules that apply, in order, as (condition or ``None``, decision);
    ``allows`` the conditional grants and allow rules, as (condition, decision).
    """

    fixed: Decision | None  # the decision when no condition needs evaluating
    denies: tuple[tuple[Evaluator | None, Decision], ...]
    granted: Decision | None  # an unconditional grant or allow rule
    allows: tuple[tuple[Evaluator, Decision], ...]
    default: Decision


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str
    effect: Literal["allow", "deny"]
    permissions: frozenset[str]
    roles: frozenset[str] | None
    condition: Evaluator | None
    source: str | None


@dataclass(frozen=True, slots=True)
class _RoleGrants:
    """One role's grants, its own and inherited, flattened at load."""

    unconditional: frozenset[str]
    conditional: tuple[tuple[str, Evaluator, str, str], ...]  # permission, test, source, origin


class _Keep(enum.Enum):
    ALL = "all"
    NONE = "none"


ALL, NONE = _Keep.ALL, _Keep.NONE


@dataclass(frozen=True, slots=True)
class _Node:
    """Part of a document is kept: ``children`` by key, every other key as ``rest``."""

    children: Mapping[str, _FieldPlan]
    rest: _Keep


_FieldPlan = _Keep | _Node


class _RoleView:
    """What a set of roles may do: built on first use, then only read."""

    __slots__ = ("effective", "field_plans", "plans", "roles")

    def __init__(self, roles: tuple[str, ...], effective: frozenset[str]) -> None:
        self.roles = roles  # the known roles held, sorted, for deterministic `decided_by`
        self.effective = effective  # with every inherited role
        self.plans: dict[str, _Plan] = {}
        self.field_plans: dict[tuple[str, str], _FieldPlan] = {}


class Authorizer:
    """Authorization decisions for one policy, compiled once.

    A principal is a :class:`~apiforge.core.context.Principal` or a mapping with at least
    ``roles`` (an iterable of role names) and any attributes rules read (``user_id``, ...).
    Rules see a ``Principal`` as ``{application, user, user_id, username, roles, scopes}``, where
    ``user_id`` is ``Principal.user``. Roles the policy does not define grant nothing.

    Safe to share between threads and tasks: its caches only ever gain entries, and a race
    at worst builds one twice.

    Attributes:
        settings: the section it was built from.
        enforcing: ``False`` in ``report`` mode, where the pipeline logs refusals and lets
            the request through; :meth:`decide` answers the same in both modes.
    """

    def __init__(self, settings: AuthorizationSettings) -> None:
        self.settings = settings
        self.enforcing = settings.mode == "enforce"
        self._inherits = inherited_roles(settings.roles)
        self._grants = {name: self._flatten(name) for name in settings.roles}
        self._rules = tuple(
            _Rule(rule.name, rule.effect, frozenset(rule.permissions),
                  frozenset(rule.roles) if rule.roles is not None else None,
                  compile_expression(rule.when).evaluate if rule.when is not None else None,
                  rule.when)
            for rule in settings.rules
        )
        self._views: dict[frozenset[str], _RoleView] = {}

    # --- decisions ---------------------------------------------------------------------------

    def decide(
        self,
        principal: Principal | Mapping[str, Any],
        permission: str,
        resource: Mapping[str, Any] | None = None,
        request: Mapping[str, Any] | None = None,
        env: Mapping[str, Any] | None = None,
    ) -> Decision:
        """Decide whether ``principal`` has ``permission`` on ``resource``.

        Args:
            principal: who asks (roles and attributes, as rules read them).
            permission: what is asked, e.g. ``users:read``.
            resource: the object acted on, as rules read it (``resource`` in CEL); ``None`` is
                an empty object, so ``resource.id`` is an error and ``has(resource.id)``
                false.
            request: request attributes rules may read as ``request``.
            env: anything else rules may read as ``env`` (time, deployment, ...).
        """
        plan = self._plan(self._view(principal), permission)
        if plan.fixed is not None:
            return plan.fixed
        activation = _activation(principal, resource, request, env)
        for condition, decision in plan.denies:
            if condition is None:
                return decision
            try:
                outcome = condition(activation)
            except RuleError as exc:
                return _failed_deny(decision, str(exc))
            if outcome is True:
                return decision
            if outcome is not False:
                return _failed_deny(decision, "the condition is not a bool")
        if plan.granted is not None:
            return plan.granted
        for test, decision in plan.allows:
            try:
                if test(activation) is True:
                    return decision
            except RuleError:
                continue  # an allow that cannot be evaluated allows nothing
        return plan.default

    def can_see(
        self,
        principal: Principal | Mapping[str, Any],
        resource_type: str,
        resource: Mapping[str, Any],
        request: Mapping[str, Any] | None = None,
        env: Mapping[str, Any] | None = None,
    ) -> bool:
        """Whether ``principal`` may know the object exists: its type's ``read`` permission.

        A refusal of an object the caller cannot see is answered 404, not 403.
        """
        read = self._resource(resource_type).read
        return self.decide(principal, read, resource, request, env).allowed

    def filter_list(
        self,
        principal: Principal | Mapping[str, Any],
        permission: str,
        resource_type: str,
        items: Iterable[Mapping[str, Any]],
    ) -> list[dict[str, Any]]:
        """The items ``principal`` has ``permission`` on, each reduced to its readable fields.

        A list is filtered, never refused: objects the caller may not read are left out, as if
        they did not exist, and each kept object is what :meth:`readable` makes of it.
        """
        plan = self._field_plan(self._view(principal), resource_type, "read")
        kept: list[dict[str, Any]] = []
        for item in items:
            if self.decide(principal, permission, item).allowed:
                kept.append(_project_object(plan, item))
        return kept

    def readable(
        self,
        principal: Principal | Mapping[str, Any],
        resource_type: str,
        document: Mapping[str, Any],
    ) -> dict[str, Any]:
        """A copy of ``document`` with only the fields the principal's roles may read.

        A field is readable when any role of the principal may read it. Subtrees that are
        readable whole are shared with ``document``, not copied. A value the policy needs to
        look inside (``address`` for ``address.city``) that is not an object or a list is left
        out.
        """
        return _project_object(self._field_plan(self._view(principal), resource_type, "read"),
                               document)

    def never(self, principal: Principal | Mapping[str, Any], permission: str) -> Decision | None:
        """The refusal when nothing could ever grant ``permission`` to this principal, whatever
        the object (no grant or allow rule of its roles names it, or an unconditional deny
        rule applies); ``None`` when the answer depends on the object. A set lookup."""
        plan = self._plan(self._view(principal), permission)
        fixed = plan.fixed
        return fixed if fixed is not None and not fixed.allowed else None

    def reads_all(self, principal: Principal | Mapping[str, Any], resource_type: str) -> bool:
        """Whether :meth:`readable` keeps every field for this principal (nothing to filter)."""
        return self._field_plan(self._view(principal), resource_type, "read") is ALL

    def unwritable(
        self,
        principal: Principal | Mapping[str, Any],
        resource_type: str,
        body: Mapping[str, Any],
    ) -> list[str]:
        """The dotted paths in ``body`` the principal may not write; empty when all are allowed.

        Paths have no list indices (``tags.name`` for a ``name`` in any element of ``tags``)
        and are listed once each, in body order. A body that is not an object where the policy
        needs one is reported as ``$``.
        """
        plan = self._field_plan(self._view(principal), resource_type, "write")
        found: dict[str, None] = {}
        _collect_unwritable(plan, body, "", found)
        return list(found)

    def trace(
        self,
        principal: Principal | Mapping[str, Any],
        permission: str,
        resource: Mapping[str, Any] | None = None,
        request: Mapping[str, Any] | None = None,
        env: Mapping[str, Any] | None = None,
    ) -> Trace:
        """:meth:`decide`, and the outcome of every role grant and rule on the same input.

        For explanations, not for the request path: it evaluates everything.
        """
        decision = self.decide(principal, permission, resource, request, env)
        activation = _activation(principal, resource, request, env)
        view = self._view(principal)
        steps: list[str] = []
        for rule in self._rules:
            subject = f"rule:{rule.name} ({rule.effect})"
            if ANY_PERMISSION not in rule.permissions and permission not in rule.permissions:
                steps.append(f"{subject}: not about {permission}")
            elif rule.roles is not None and not rule.roles & view.effective:
                steps.append(f"{subject}: only for roles {', '.join(sorted(rule.roles))}")
            else:
                outcome = _condition_outcome(rule.condition, rule.source, activation)
                steps.append(f"{subject}: {outcome}")
        for role in view.roles:
            grants = self._grants[role]
            if permission in grants.unconditional:
                steps.append(f"role:{role}: grants {permission}")
            for granted, condition, source, origin in grants.conditional:
                if granted == permission:
                    via = f" (from {origin})" if origin != role else ""
                    outcome = _condition_outcome(condition, source, activation)
                    steps.append(f"role:{role}: grants {permission}{via} {outcome}")
        if not view.roles:
            steps.append("roles: the principal holds no role the policy defines")
        return Trace(decision, tuple(steps))

    # --- compilation -------------------------------------------------------------------------

    def _flatten(self, role: str) -> _RoleGrants:
        unconditional: set[str] = set()
        conditional: list[tuple[str, Evaluator, str, str]] = []
        seen: set[tuple[str, str]] = set()
        for origin in self._inherits[role]:
            for grant in self.settings.roles[origin].permissions:
                if grant.when is None:
                    unconditional.add(grant.permission)
                elif (grant.permission, grant.when) not in seen:
                    seen.add((grant.permission, grant.when))
                    conditional.append((grant.permission,
                                        compile_expression(grant.when).evaluate,
                                        grant.when, origin))
        return _RoleGrants(frozenset(unconditional), tuple(conditional))

    def _view(self, principal: Principal | Mapping[str, Any]) -> _RoleView:
        roles = principal.roles if isinstance(principal, Principal) else principal.get("roles")
        if type(roles) is not frozenset:
            if roles is None:
                roles = frozenset()
            elif isinstance(roles, str):
                raise TypeError("a principal's roles are a collection of names, not a string")
            else:
                roles = frozenset(roles)
        view = self._views.get(roles)
        if view is None:
            known = tuple(sorted(r for r in roles if r in self._grants))
            effective = frozenset(a for r in known for a in self._inherits[r])
            view = _RoleView(known, effective)
            if len(self._views) < _MAX_VIEWS:
                self._views[roles] = view
        return view

    def _plan(self, view: _RoleView, permission: str) -> _Plan:
        plan = view.plans.get(permission)
        if plan is None:
            plan = self._build_plan(view, permission)
            if len(view.plans) < _MAX_PLANS:
                view.plans[permission] = plan
        return plan

    def _build_plan(self, view: _RoleView, permission: str) -> _Plan:
        denies: list[tuple[Evaluator | None, Decision]] = []
        allows: list[tuple[Evaluator, Decision]] = []
        allowed_by_rule: Decision | None = None
        for rule in self._rules:
            if ANY_PERMISSION not in rule.permissions and permission not in rule.permissions:
                continue
            if rule.roles is not None and not rule.roles & view.effective:
                continue
            verb = "denies" if rule.effect == "deny" else "allows"
            reason = (f"rule {rule.name} {verb} {permission}"
                      + (f": {rule.source}" if rule.source is not None else ""))
            decision = _decision(rule.effect == "allow", permission, f"rule:{rule.name}", reason)
            if rule.effect == "deny":
                if not denies or denies[-1][0] is not None:
                    denies.append((rule.condition, decision))  # none after an unconditional one
            elif rule.condition is not None:
                allows.append((rule.condition, decision))
            elif allowed_by_rule is None:
                allowed_by_rule = decision
        granted: Decision | None = None
        conditional: list[tuple[Evaluator, Decision]] = []
        for role in view.roles:
            grants = self._grants[role]
            if granted is None and permission in grants.unconditional:
                granted = _decision(True, permission, f"role:{role}",
                                    f"role {role} grants {permission}")
            for granted_permission, condition, source, origin in grants.conditional:
                if granted_permission == permission:
                    via = f" (inherited from {origin})" if origin != role else ""
                    conditional.append((condition, _decision(
                        True, permission, f"role:{role}",
                        f"role {role} grants {permission}{via} when {source}")))
        granted = granted or allowed_by_rule
        # Once something allows unconditionally, conditional allows could only rename it.
        checks = () if granted is not None else (*conditional, *allows)
        default = _decision(False, permission, "default",
                            f"no role or rule allows {permission}")
        fixed: Decision | None = None
        if denies and denies[0][0] is None:
            fixed = denies[0][1]
        elif not denies:
            fixed = granted if granted is not None else (None if checks else default)
        return _Plan(fixed, tuple(denies), granted, checks, default)

    def _resource(self, resource_type: str) -> ResourceSettings:
        resource = self.settings.resources.get(resource_type)
        if resource is None:
            raise ConfigurationError(
                f"resource type {resource_type!r} is not declared under"
                " authorization.resources; declare it or fix the route's authorize.resource"
            )
        return resource

    def _field_plan(self, view: _RoleView, resource_type: str,
                    access: Literal["read", "write"]) -> _FieldPlan:
        key = (resource_type, access)
        plan = view.field_plans.get(key)
        if plan is None:
            fields = self._resource(resource_type).fields
            if not fields:
                plan = ALL
            else:
                plan = NONE  # no role: nothing (fail closed)
                for role in view.roles:
                    entry = fields.get(role)
                    rule = None if entry is None else getattr(entry, access)
                    plan = _union(plan, ALL if rule is None else _compile_fields(rule))
            view.field_plans[key] = plan
        return plan


# --- decisions -------------------------------------------------------------------------------


def _decision(allowed: bool, permission: str, decided_by: str, reason: str) -> Decision:
    return Decision(allowed, permission, decided_by, "allow" if allowed else "deny", reason)


def _failed_deny(decision: Decision, problem: str) -> Decision:
    return Decision(False, decision.permission, decision.decided_by, "deny",
                    f"{decision.decided_by.removeprefix('rule:')} could not be evaluated"
                    f" ({problem}); denied (fail closed)")


def _activation(principal: Principal | Mapping[str, Any], resource: Mapping[str, Any] | None,
                request: Mapping[str, Any] | None, env: Mapping[str, Any] | None
                ) -> dict[str, Any]:
    """What a rule's variables are bound to; an absent part is an empty object."""
    return {"principal": _attributes(principal), "resource": resource or _EMPTY,
            "request": request or _EMPTY, "env": env or _EMPTY}


def _attributes(principal: Principal | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(principal, Principal):
        return principal.attributes
    return principal


def _condition_outcome(condition: Evaluator | None, source: str | None,
                       activation: Mapping[str, Any]) -> str:
    if condition is None:
        return "applies (no condition)"
    try:
        outcome = condition(activation)
    except RuleError as exc:
        return f"when {source} -> error: {exc}"
    if outcome is True or outcome is False:
        return f"when {source} -> {'true' if outcome else 'false'}"
    return f"when {source} -> error: the condition is not a bool"


# --- field plans -----------------------------------------------------------------------------


def _compile_fields(rule: FieldList) -> _FieldPlan:
    plan: _FieldPlan = ALL
    if rule.allow is not None:
        allowed: _FieldPlan = NONE
        for path in rule.allow:
            allowed = _union(allowed, _path_plan(path.split("."), ALL, NONE))
        plan = allowed
    for path in rule.deny or ():
        plan = _intersect(plan, _path_plan(path.split("."), NONE, ALL))
    return plan


def _path_plan(segments: list[str], leaf: _Keep, rest: _Keep) -> _FieldPlan:
    plan: _FieldPlan = leaf
    for segment in reversed(segments):
        plan = _Node({segment: plan}, rest)
    return plan


def _child(plan: _FieldPlan, key: str) -> _FieldPlan:
    return plan.children.get(key, plan.rest) if isinstance(plan, _Node) else plan


def _combine(a: _FieldPlan, b: _FieldPlan, absorbing: _Keep, neutral: _Keep) -> _FieldPlan:
    if a is absorbing or b is absorbing:
        return absorbing
    if a is neutral:
        return b
    if b is neutral:
        return a
    if not (isinstance(a, _Node) and isinstance(b, _Node)):  # excluded by the cases above
        raise TypeError("field plans must be nodes here")
    rest = _combine(a.rest, b.rest, absorbing, neutral)
    if not isinstance(rest, _Keep):  # a combination of two _Keep is a _Keep
        raise TypeError("a field plan's rest must be a _Keep")
    children = {}
    for key in {**a.children, **b.children}:
        child = _combine(_child(a, key), _child(b, key), absorbing, neutral)
        if child is not rest:
            children[key] = child
    return _Node(children, rest) if children else rest


def _union(a: _FieldPlan, b: _FieldPlan) -> _FieldPlan:
    return _combine(a, b, ALL, NONE)


def _intersect(a: _FieldPlan, b: _FieldPlan) -> _FieldPlan:
    return _combine(a, b, NONE, ALL)


def _project_object(plan: _FieldPlan, document: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(plan, _Node):
        return dict(document) if plan is ALL else {}
    children, rest = plan.children, plan.rest
    kept: dict[str, Any] = {}
    for key, value in document.items():
        child = children.get(key, rest)
        if child is ALL:
            kept[key] = value
        elif isinstance(child, _Node) and isinstance(value, Mapping | list):
            kept[key] = _project(child, value)
        # else: not readable, or a value the plan must look inside that has no inside
    return kept


def _project(plan: _FieldPlan, value: Any) -> Any:
    if plan is ALL:
        return value
    if isinstance(value, list):
        return [_project(plan, item) for item in value if isinstance(item, Mapping | list)]
    return _project_object(plan, value)


def _collect_unwritable(plan: _FieldPlan, value: Any, prefix: str, found: dict[str, None]
                        ) -> None:
    if plan is ALL:
        return
    if isinstance(value, list):
        for item in value:
            _collect_unwritable(plan, item, prefix, found)
        return
    if not isinstance(value, Mapping):
        found[prefix or "$"] = None
        return
    for key, item in value.items():
        child = _child(plan, str(key))
        path = f"{prefix}.{key}" if prefix else str(key)
        if child is NONE:
            found[path] = None
        else:
            _collect_unwritable(child, item, path, found)
