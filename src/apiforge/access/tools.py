"""The domain side of ``apiforge policy explain`` and ``apiforge policy test``.

Both answer "what would the gateway decide for this caller and this request?" from the policy
alone: the route is found as the pipeline finds it (:class:`~apiforge.core.routing.RouteTable`),
the route's ``authorize`` key names the permission, and the :class:`Authorizer` decides.

Callers are written ``role:NAME[,NAME...]`` (a principal holding those roles) or
``user:ID[:ROLE,ROLE...]`` (a user with that id and those roles; an id of digits is an
integer, as ids read from a database are). Accounts are not looked up: their stores are
outside the policy. Before the app runs, the gateway knows only the path, so unless a
resource is given, rules see the route's path parameters as ``resource`` (typed by the route's
``params.path`` schemas: ``{id}`` with ``type: integer`` is the integer 7, not ``"7"``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from apiforge.access.engine import Authorizer, Decision
from apiforge.core.routing import RouteTable, TrailingSlashRedirect
from apiforge.errors import ApiError, ConfigurationError
from apiforge.policy.models import Policy, RouteSettings

__all__ = [
    "Case",
    "CaseReport",
    "CaseResult",
    "Explainer",
    "Explanation",
    "explain",
    "parse_cases",
    "parse_principal",
    "route_problems",
    "run_cases",
]

Expectation = Literal["allow", "deny", "403", "404"]

_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]{0,17})\Z")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]{0,17})(?:\.[0-9]{1,17})?(?:[eE][+-]?[0-9]{1,3})?\Z")


@dataclass(frozen=True, slots=True)
class Explanation:
    """What the gateway would answer, and why.

    Attributes:
        request: ``METHOD /path`` as asked.
        route: the matched route key, or ``None`` when no route matches.
        principal: the caller as rules see it.
        resource: the object as rules see it.
        decision: the authorization decision (or a refusal made before authorization).
        outcome: ``allow``, or the status of the refusal: ``403``, ``404`` (no such route, or
            an object the caller cannot see), ``405``, ``400`` (a malformed path), ``308``.
        steps: every rule and role grant considered, with its outcome.
    """

    request: str
    route: str | None
    principal: Mapping[str, Any]
    resource: Mapping[str, Any] | None
    decision: Decision
    outcome: str
    steps: tuple[str, ...] = ()

    @property
    def allowed(self) -> bool:
        """The request would reach the app."""
        return self.outcome == "allow"

    def matches(self, expect: Expectation) -> bool:
        """``allow`` and ``deny`` match any allow or refusal; ``403``/``404`` match exactly."""
        if expect == "deny":
            return not self.allowed
        return self.outcome == expect

    def render(self) -> str:
        """The explanation as lines of text for a terminal."""
        d = self.decision
        verdict = "ALLOW" if self.allowed else f"DENY ({self.outcome})"
        lines = [
            f"request:    {self.request}",
            f"route:      {self.route or '(none)'}",
            f"principal:  {_json(self.principal)}",
            f"permission: {d.permission or '(none)'}",
            f"resource:   {_json(self.resource) if self.resource is not None else '(none)'}",
            f"decision:   {verdict} by {d.decided_by}: {d.reason}",
        ]
        if self.steps:
            lines.append("considered:")
            lines.extend(f"  - {step}" for step in self.steps)
        return "\n".join(lines)


class Case(BaseModel):
    """One case of a cases file: a caller, a request and the expected answer."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    as_: str = Field(alias="as")
    """The caller: ``role:NAME`` or ``user:ID[:ROLE,...]``."""

    request: str
    """``METHOD /path``, e.g. ``GET /v1/users/7``."""

    resource: dict[str, Any] | None = None
    """The object as rules see it; unset: the route's path parameters."""

    expect: Expectation
    """``allow``, ``deny`` (any refusal), ``403`` or ``404``."""

    name: str | None = None
    """Shown in reports; default ``#N as WHO REQUEST``."""

    @field_validator("expect", mode="before")
    @classmethod
    def _status_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("request")
    @classmethod
    def _check_request(cls, value: str) -> str:
        method, _, path = value.partition(" ")
        if not method.isupper() or not path.startswith("/"):
            raise ValueError(f"{value!r} is not 'METHOD /path', e.g. 'GET /v1/users/7'")
        return value


@dataclass(frozen=True, slots=True)
class CaseResult:
    """One case's outcome."""

    index: int
    case: Case
    explanation: Explanation
    passed: bool

    @property
    def label(self) -> str:
        """The case's name, or ``#N as WHO REQUEST``."""
        return self.case.name or f"#{self.index + 1} as {self.case.as_} {self.case.request}"


@dataclass(frozen=True, slots=True)
class CaseReport:
    """Every case's outcome; ``ok`` when all passed."""

    results: tuple[CaseResult, ...]

    @property
    def failures(self) -> tuple[CaseResult, ...]:
        """The cases whose answer differs from their ``expect``."""
        return tuple(r for r in self.results if not r.passed)

    @property
    def ok(self) -> bool:
        """Every case passed."""
        return not self.failures


class Explainer:
    """A policy's route table and authorizer, built once for many explanations."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.routes = RouteTable(policy.routes, policy.trailing_slash)
        self.authorizer = Authorizer(policy.authorization)

    def explain(self, as_: str, method: str, path: str, *,
                resource: Mapping[str, Any] | None = None) -> Explanation:
        """What the gateway would answer ``as_`` for ``METHOD path``; see :func:`explain`."""
        principal = parse_principal(as_, self.policy)
        asked = f"{method} {path}"
        try:
            match = self.routes.match(method, path, path.encode("utf-8"))
        except TrailingSlashRedirect as exc:
            return _refused(asked, principal, "308", f"redirected to {exc.location}")
        except ApiError as exc:
            return _refused(asked, principal, str(exc.status),
                            f"refused before authorization ({exc.code})")
        plan, params = match
        settings = plan.settings
        authorize = settings.authorize
        if authorize is None:
            return self._without_permission(asked, plan.key, principal, settings)
        if resource is None:
            resource = _typed_params(settings, params)
        request = {"method": method, "path": path, "params": dict(params)}
        trace = self.authorizer.trace(principal, authorize.permission, resource, request)
        steps = list(trace.steps)
        outcome = "allow" if trace.decision.allowed else "403"
        if not trace.decision.allowed and authorize.resource is not None:
            visible = self.authorizer.can_see(principal, authorize.resource, resource, request)
            read = self.authorizer.settings.resources[authorize.resource].read
            steps.append(f"visibility: {read} is {'allowed' if visible else 'denied'}, so the"
                         f" refusal is {'403' if visible else '404 (existence not disclosed)'}")
            outcome = "403" if visible else "404"
        return Explanation(asked, plan.key, principal, resource, trace.decision, outcome,
                           tuple(steps))

    def _without_permission(self, asked: str, route: str, principal: Mapping[str, Any],
                            settings: RouteSettings) -> Explanation:
        auth = settings.auth or self.policy.authentication.default
        if auth == "none":
            decision = Decision(True, "", "route", "allow",
                                "the route requires no authentication: it is public")
        elif not self.policy.authorization.enabled:
            decision = Decision(True, "", "route", "allow",
                                "authorization has no roles or rules: it is off")
        else:
            decision = Decision(False, "", "route", "deny",
                                "the route names no permission (authorize); routes without"
                                " one are denied, not open")
        return Explanation(asked, route, principal, None, decision,
                           "allow" if decision.allowed else "403")


def explain(policy: Policy, as_: str, method: str, path: str, *,
            resource: Mapping[str, Any] | None = None) -> Explanation:
    """What the gateway would answer ``as_`` for ``METHOD path``, and why.

    Args:
        policy: the loaded policy.
        as_: ``role:NAME[,NAME...]`` or ``user:ID[:ROLE,...]``.
        method: the request method.
        path: the request path (decoded, as the app routes on it).
        resource: the object as rules see it; default: the route's path parameters.

    Raises:
        ConfigurationError: ``as_`` is malformed or names a role the policy lacks, or the
            route names a resource type the policy lacks.
    """
    return Explainer(policy).explain(as_, method.upper(), path, resource=resource)


def run_cases(policy: Policy, cases: Sequence[Case]) -> CaseReport:
    """Explain every case and compare the answer with its ``expect``.

    Raises:
        ConfigurationError: a case names an unknown role or malformed caller.
    """
    explainer = Explainer(policy)
    results = []
    for index, case in enumerate(cases):
        method, _, path = case.request.partition(" ")
        explanation = explainer.explain(case.as_, method, path, resource=case.resource)
        results.append(CaseResult(index, case, explanation, explanation.matches(case.expect)))
    return CaseReport(tuple(results))


def route_problems(policy: Policy) -> list[str]:
    """What is wrong between the routes' ``authorize`` keys and ``authorization``, one line each.

    The models cannot see both at once, so this is checked here: a route naming a resource
    type that is not declared, or a permission that no role grants and no rule mentions (it
    would always be denied: a typo, usually). Empty when all is well.
    """
    section = policy.authorization
    named = ({g.permission for role in section.roles.values() for g in role.permissions}
             | {p for rule in section.rules for p in rule.permissions})
    problems: list[str] = []
    for key, route in policy.routes.items():
        authorize = route.authorize
        if authorize is None:
            continue
        if authorize.resource is not None and authorize.resource not in section.resources:
            problems.append(
                f"routes.{key}.authorize.resource = {authorize.resource!r}: not a resource type"
                " of authorization.resources; declare it or fix the name")
        if authorize.permission not in named and "*" not in named:
            problems.append(
                f"routes.{key}.authorize.permission = {authorize.permission!r}: no role grants"
                " it and no rule mentions it, so the route is always denied; grant it or fix"
                " the name")
    return problems


def parse_cases(data: Any) -> list[Case]:
    """The cases of a cases file's parsed YAML: a list of ``{as, request, resource?, expect}``.

    Raises:
        ConfigurationError: naming each bad case and key.
    """
    if not isinstance(data, list):
        raise ConfigurationError("a cases file is a list of {as, request, expect} mappings")
    cases: list[Case] = []
    problems: list[str] = []
    for index, item in enumerate(data):
        try:
            cases.append(Case.model_validate(item))
        except ValidationError as exc:
            for error in exc.errors():
                where = ".".join(str(part) for part in (index, *error["loc"]))
                message = str(error["msg"]).removeprefix("Value error, ")
                problems.append(f"  - {where}: {message}")
    if problems:
        raise ConfigurationError(f"{len(problems)} problem(s) in the cases:\n"
                                 + "\n".join(problems))
    return cases


def parse_principal(as_: str, policy: Policy) -> dict[str, Any]:
    """The principal written ``role:NAME[,NAME...]`` or ``user:ID[:ROLE,...]``.

    Raises:
        ConfigurationError: malformed, or naming a role that ``policy`` does not define.
    """
    kind, _, rest = as_.partition(":")
    principal: dict[str, Any]
    if kind == "role" and rest:
        principal = {"roles": _roles(rest, policy)}
    elif kind == "user" and rest:
        user, _, roles = rest.partition(":")
        if not user:
            raise ConfigurationError(f"{as_!r}: the user id is empty; write user:ID[:ROLE,...]")
        principal = {"user_id": int(user) if _INTEGER.match(user) else user,
                     "roles": _roles(roles, policy) if roles else []}
    else:
        raise ConfigurationError(
            f"{as_!r} is not a caller: write role:NAME or user:ID[:ROLE,ROLE] (accounts are"
            " not looked up, so give the roles)"
        )
    return principal


def _roles(text: str, policy: Policy) -> list[str]:
    roles = [r for r in text.split(",") if r]
    for role in roles:
        if role not in policy.authorization.roles:
            known = ", ".join(sorted(policy.authorization.roles)) or "none"
            raise ConfigurationError(
                f"{role!r} is not a role of authorization.roles (roles: {known})")
    return roles


def _typed_params(settings: RouteSettings, params: Mapping[str, str]) -> dict[str, Any]:
    schemas = settings.params.path if settings.params is not None else {}
    return {name: _typed(text, schemas.get(name, {}).get("type")) for name, text in
            params.items()}


def _typed(text: str, kind: object) -> Any:
    # As the validation layer reads parameters: text becomes a number or a bool only when the
    # schema says so and the text is exactly such a literal.
    if kind == "integer" and _INTEGER.match(text):
        return int(text)
    if kind == "number" and _NUMBER.match(text):
        return float(text)
    if kind == "boolean" and text in ("true", "false"):
        return text == "true"
    return text


def _refused(asked: str, principal: Mapping[str, Any], status: str, reason: str
             ) -> Explanation:
    return Explanation(asked, None, principal, None,
                       Decision(False, "", "route", "deny", reason), status)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
