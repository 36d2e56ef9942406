"""Property test: the engine agrees with an obviously correct reference evaluator.

Random small policies (roles with inheritance, unconditional and conditional grants, allow
and deny rules) are built as data; the reference interprets that data directly in Python,
conditions included, following the documented semantics. The engine sees the same policy as
YAML-shaped settings with the conditions written in CEL. They must never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from apiforge.access import AuthorizationSettings, Authorizer

ROLES = ("r0", "r1", "r2", "r3")
PERMISSIONS = ("p0", "p1", "p2")
ERROR = object()  # a condition that cannot be evaluated
MISSING = object()  # an attribute that is absent


@dataclass(frozen=True)
class Compare:
    attribute: str  # resource.<attribute>
    op: str  # == != < >=
    other: int | str | None  # a literal, or None: principal.x

    def cel(self) -> str:
        right = "principal.x" if self.other is None else repr(self.other).replace("'", '"')
        return f"resource.{self.attribute} {self.op} {right}"

    def reference(self, principal: dict[str, Any], resource: dict[str, Any]) -> Any:
        left: Any = resource.get(self.attribute, MISSING)
        right: Any = principal.get("x", MISSING) if self.other is None else self.other
        if left is MISSING or right is MISSING:
            return ERROR
        if self.op in ("==", "!="):
            same = type(left) is type(right) and left == right  # no implicit conversion
            return same if self.op == "==" else not same
        if type(left) is not type(right):
            return ERROR  # ordering is defined for two ints or two strings, never across
        return left < right if self.op == "<" else left >= right


@dataclass(frozen=True)
class Logical:
    op: str  # && ||
    left: Compare
    right: Compare

    def cel(self) -> str:
        return f"({self.left.cel()}) {self.op} ({self.right.cel()})"

    def reference(self, principal: dict[str, Any], resource: dict[str, Any]) -> Any:
        a = self.left.reference(principal, resource)
        b = self.right.reference(principal, resource)
        absorbing = self.op == "||"  # CEL: true absorbs errors in ||, false in &&
        if a is absorbing or b is absorbing:
            return absorbing
        if a is ERROR or b is ERROR:
            return ERROR
        return not absorbing


Condition = Compare | Logical | None

values = st.one_of(st.integers(-2, 2), st.sampled_from(["a", "b"]))
compares = st.builds(Compare, st.sampled_from(["a", "b"]), st.sampled_from(["==", "!=", "<", ">="]),
                     st.one_of(st.none(), values))
conditions: st.SearchStrategy[Condition] = st.one_of(
    st.none(), compares, st.builds(Logical, st.sampled_from(["&&", "||"]), compares, compares))


@st.composite
def policies(draw: st.DrawFn) -> dict[str, Any]:
    roles: dict[str, Any] = {}
    for index, name in enumerate(ROLES):
        roles[name] = {
            "inherits": draw(st.lists(st.sampled_from(ROLES[:index]), unique=True, max_size=2))
            if index else [],
            "grants": draw(st.lists(st.tuples(st.sampled_from(PERMISSIONS), conditions),
                                    max_size=3)),
        }
    rules = draw(st.lists(st.fixed_dictionaries({
        "effect": st.sampled_from(["allow", "deny"]),
        "permissions": st.one_of(st.just(["*"]), st.lists(st.sampled_from(PERMISSIONS),
                                                          min_size=1, max_size=2, unique=True)),
        "roles": st.one_of(st.none(), st.lists(st.sampled_from(ROLES), min_size=1, max_size=2,
                                               unique=True)),
        "when": conditions,
    }), max_size=4))
    return {"roles": roles, "rules": rules}


principals = st.fixed_dictionaries(
    {"roles": st.lists(st.sampled_from((*ROLES, "stranger")), unique=True, max_size=3)},
    optional={"x": values})
resources = st.fixed_dictionaries({}, optional={"a": values, "b": values})


def to_settings(policy: dict[str, Any]) -> AuthorizationSettings:
    def grant(permission: str, condition: Condition) -> Any:
        return permission if condition is None else {"permission": permission,
                                                     "when": condition.cel()}

    return AuthorizationSettings.model_validate({
        "roles": {name: {"inherits": role["inherits"],
                         "permissions": [grant(p, c) for p, c in role["grants"]]}
                  for name, role in policy["roles"].items()},
        "rules": [{"name": f"rule{i}", "effect": rule["effect"],
                   "permissions": rule["permissions"], "roles": rule["roles"],
                   **({"when": rule["when"].cel()} if rule["when"] is not None else {})}
                  for i, rule in enumerate(policy["rules"])],
    })


def reference(policy: dict[str, Any], principal: dict[str, Any], permission: str,
              resource: dict[str, Any]) -> str:
    """``deny-rule``, ``allow`` or ``default``, straight from the documented semantics."""

    def holds(condition: Condition) -> Any:
        return True if condition is None else condition.reference(principal, resource)

    effective: set[str] = set()
    pending = [r for r in principal["roles"] if r in policy["roles"]]
    while pending:
        role = pending.pop()
        if role not in effective:
            effective.add(role)
            pending.extend(policy["roles"][role]["inherits"])

    def applies(rule: dict[str, Any]) -> bool:
        return (("*" in rule["permissions"] or permission in rule["permissions"])
                and (rule["roles"] is None or bool(effective & set(rule["roles"]))))

    for rule in policy["rules"]:
        if rule["effect"] == "deny" and applies(rule) and holds(rule["when"]) in (True, ERROR):
            return "deny-rule"
    for role in effective:
        for granted, condition in policy["roles"][role]["grants"]:
            if granted == permission and holds(condition) is True:
                return "allow"
    for rule in policy["rules"]:
        if rule["effect"] == "allow" and applies(rule) and holds(rule["when"]) is True:
            return "allow"
    return "default"


@settings(max_examples=200, deadline=None)
@given(policies(), st.lists(st.tuples(principals, st.sampled_from(PERMISSIONS), resources),
                            min_size=1, max_size=8))
def test_engine_agrees_with_the_reference(
        policy: dict[str, Any], asks: list[tuple[dict[str, Any], str, dict[str, Any]]]) -> None:
    engine = Authorizer(to_settings(policy))
    for principal, permission, resource in asks:
        expected = reference(policy, principal, permission, resource)
        decision = engine.decide(principal, permission, resource)
        assert decision.allowed is (expected == "allow"), (expected, decision)
        assert decision.effect == ("allow" if decision.allowed else "deny")
        if expected == "deny-rule":
            assert decision.decided_by.startswith("rule:")
        elif expected == "default":
            assert decision.decided_by == "default"
        # the explanation never contradicts the decision
        assert engine.trace(principal, permission, resource).decision == decision
