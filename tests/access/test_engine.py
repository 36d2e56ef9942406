"""The engine: decision order, what decided, object visibility and field filtering."""

from __future__ import annotations

from typing import Any

import pytest

from apiforge.access import Authorizer, Decision
from apiforge.core.context import Principal
from apiforge.errors import ConfigurationError

from .conftest import authorizer

USER7 = {"roles": ["user"], "user_id": 7}
SUPPORT2 = {"roles": frozenset({"support"}), "user_id": 2}
ADMIN1 = {"roles": ("admin",), "user_id": 1}


def test_conditional_role_grant(demo: Authorizer) -> None:
    own = demo.decide(USER7, "users:read", {"id": 7})
    assert own == Decision(True, "users:read", "role:user", "allow",
                           "role user grants users:read when resource.id == principal.user_id")
    other = demo.decide(USER7, "users:read", {"id": 8})
    assert not other.allowed and other.decided_by == "default" and other.effect == "deny"


def test_inheritance_keeps_conditions_and_adds_grants(demo: Authorizer) -> None:
    # support inherits user's conditional users:update, and has users:read outright.
    assert demo.decide(SUPPORT2, "users:read", {"id": 8}).decided_by == "role:support"
    assert demo.decide(SUPPORT2, "users:update", {"id": 2}).allowed
    denied = demo.decide(SUPPORT2, "users:update", {"id": 8})
    assert not denied.allowed
    inherited = demo.decide(SUPPORT2, "users:update", {"id": 2})
    assert "inherited from user" in inherited.reason
    assert demo.decide(ADMIN1, "users:read", {"id": 8}).allowed  # two levels down
    assert not demo.decide(SUPPORT2, "users:suspend", {"id": 8}).allowed  # never upwards


def test_deny_rule_wins_over_a_role_grant(demo: Authorizer) -> None:
    assert demo.decide(ADMIN1, "users:suspend", {"id": 8}).decided_by == "role:admin"
    self_suspend = demo.decide(ADMIN1, "users:suspend", {"id": 1})
    assert not self_suspend.allowed
    assert self_suspend.decided_by == "rule:no-self-suspend"
    assert "no-self-suspend denies users:suspend" in self_suspend.reason


def test_default_deny(demo: Authorizer) -> None:
    principals: list[dict[str, Any]] = [{"roles": []}, {"roles": ["ghost"]}, {}, {"roles": None}]
    for principal in principals:
        decision = demo.decide(principal, "users:read", {"id": 7})
        assert decision == Decision(False, "users:read", "default", "deny",
                                    "no role or rule allows users:read")
    assert not demo.decide(ADMIN1, "billing:read").allowed  # a permission nobody names


def test_erroring_deny_rule_denies_fail_closed(demo: Authorizer) -> None:
    decision = demo.decide(ADMIN1, "users:suspend", {"name": "no id"})
    assert not decision.allowed and decision.decided_by == "rule:no-self-suspend"
    assert "could not be evaluated" in decision.reason and "fail closed" in decision.reason
    non_bool = authorizer(roles={"a": {"permissions": ["p"]}}, rules=[
        {"name": "odd", "effect": "deny", "permissions": ["p"], "when": "resource.id"}])
    assert non_bool.decide({"roles": ["a"]}, "p", {"id": 1}).decided_by == "rule:odd"


def test_erroring_allow_does_not_allow() -> None:
    engine = authorizer(roles={"u": {"permissions": [{"permission": "p", "when": "resource.x"}]}},
                        rules=[{"name": "a", "effect": "allow", "permissions": ["p"],
                                "when": "resource.missing == 1"}])
    assert not engine.decide({"roles": ["u"]}, "p", {}).allowed
    assert not engine.decide({"roles": ["u"]}, "p", {"x": 1}).allowed  # not a bool
    assert engine.decide({"roles": ["u"]}, "p", {"x": True}).allowed


def test_allow_rules_apply_by_permission_and_role() -> None:
    engine = authorizer(
        roles={"staff": {}, "manager": {"inherits": ["staff"]}, "guest": {}},
        rules=[
            {"name": "staff-reports", "effect": "allow", "permissions": ["reports:read"],
             "roles": ["staff"], "when": "request.method == 'GET'"},
            {"name": "everyone-ping", "effect": "allow", "permissions": ["ping"]},
            {"name": "freeze", "effect": "deny", "permissions": ["*"], "when": "env.frozen"},
        ])
    get = {"method": "GET"}
    env = {"frozen": False}
    assert engine.decide({"roles": ["staff"]}, "reports:read", None, get, env).allowed
    # a rule's roles match through inheritance
    assert engine.decide({"roles": ["manager"]}, "reports:read", None, get, env).allowed
    assert not engine.decide({"roles": ["guest"]}, "reports:read", None, get, env).allowed
    assert not engine.decide({"roles": ["staff"]}, "reports:read", None, {"method": "PUT"},
                             env).allowed
    ping = engine.decide({"roles": []}, "ping", env=env)
    assert ping.allowed and ping.decided_by == "rule:everyone-ping"
    frozen = engine.decide({"roles": []}, "ping", env={"frozen": True})
    assert not frozen.allowed and frozen.decided_by == "rule:freeze"
    assert not engine.decide({"roles": []}, "ping").allowed  # env.frozen missing: fail closed


def test_unconditional_deny_rule_and_rule_order() -> None:
    engine = authorizer(
        roles={"a": {"permissions": ["p"]}},
        rules=[{"name": "first", "effect": "deny", "permissions": ["p"], "when": "resource.x"},
               {"name": "always", "effect": "deny", "permissions": ["p"]},
               {"name": "never-reached", "effect": "deny", "permissions": ["p"]}])
    assert engine.decide({"roles": ["a"]}, "p", {"x": True}).decided_by == "rule:first"
    assert engine.decide({"roles": ["a"]}, "p", {"x": False}).decided_by == "rule:always"


def test_decided_by_is_deterministic_across_roles() -> None:
    engine = authorizer(roles={"b": {"permissions": ["p"]}, "a": {"permissions": ["p"]}})
    for roles in (["a", "b"], ["b", "a"], {"b", "a"}):
        assert engine.decide({"roles": roles}, "p").decided_by == "role:a"


def test_principal_dataclass_is_accepted() -> None:
    engine = authorizer(
        roles={"user": {"permissions": [
            {"permission": "p", "when": "resource.owner == principal.user_id"
                                        " && 'read' in principal.scopes"}]}})
    principal = Principal(application="app", user="u1", roles=frozenset({"user"}),
                          scopes=frozenset({"read"}))
    assert engine.decide(principal, "p", {"owner": "u1"}).allowed
    assert not engine.decide(principal, "p", {"owner": "u2"}).allowed


def test_roles_given_as_a_string_are_refused(demo: Authorizer) -> None:
    with pytest.raises(TypeError):
        demo.decide({"roles": "admin"}, "users:read")


def test_report_mode_is_exposed_not_applied() -> None:
    engine = authorizer(mode="report", roles={"a": {}})
    assert engine.enforcing is False
    assert not engine.decide({"roles": ["a"]}, "p").allowed  # the pipeline decides what to do


def test_can_see_uses_the_read_permission(demo: Authorizer) -> None:
    assert demo.can_see(USER7, "user", {"id": 7})
    assert not demo.can_see(USER7, "user", {"id": 8})
    assert demo.can_see(SUPPORT2, "user", {"id": 8})
    with pytest.raises(ConfigurationError, match="'order' is not declared"):
        demo.can_see(USER7, "order", {"id": 1})


def test_filter_list_keeps_readable_items_with_readable_fields(demo: Authorizer) -> None:
    items = [{"id": n, "email": f"{n}@x", "age": n} for n in (6, 7, 8)]
    assert demo.filter_list(USER7, "users:read", "user", items) == [items[1]]
    assert demo.filter_list(SUPPORT2, "users:read", "user", items) == [
        {"id": 6}, {"id": 7}, {"id": 8}]
    assert demo.filter_list({"roles": []}, "users:read", "user", items) == []


DOC: dict[str, Any] = {
    "id": 7, "email": "a@x", "age": 30, "bio": "hi",
    "address": {"city": "Paris", "zip": "75001", "geo": {"lat": 1, "lon": 2}},
    "orders": [{"id": 1, "total": 5, "card": "4111"}, {"id": 2, "total": 9, "card": "5500"}],
}


def test_readable_deny_list(demo: Authorizer) -> None:
    assert demo.readable(SUPPORT2, "user", DOC) == {
        k: v for k, v in DOC.items() if k not in ("email", "age")}
    assert demo.readable(USER7, "user", DOC) == DOC  # no read rule: everything
    assert demo.readable({"roles": []}, "user", DOC) == {}  # no role: nothing (fail closed)


def fields_engine(**fields: Any) -> Authorizer:
    return authorizer(roles={"a": {}, "b": {}, "c": {}},
                      resources={"doc": {"read": "doc:read", "fields": fields}})


def test_readable_nested_paths_lists_and_union_over_roles() -> None:
    engine = fields_engine(
        a={"read": {"allow": ["id", "address.city", "orders.total"]}},
        b={"read": {"deny": ["email", "address", "orders.card"]}},
        c={"read": {"allow": ["address"], "deny": ["address.geo.lat"]}},
    )
    assert engine.readable({"roles": ["a"]}, "doc", DOC) == {
        "id": 7, "address": {"city": "Paris"}, "orders": [{"total": 5}, {"total": 9}]}
    assert engine.readable({"roles": ["b"]}, "doc", DOC) == {
        "id": 7, "age": 30, "bio": "hi",
        "orders": [{"id": 1, "total": 5}, {"id": 2, "total": 9}]}
    assert engine.readable({"roles": ["c"]}, "doc", DOC) == {
        "address": {"city": "Paris", "zip": "75001", "geo": {"lon": 2}}}
    assert engine.readable({"roles": ["a", "b"]}, "doc", DOC) == {
        "id": 7, "age": 30, "bio": "hi", "address": {"city": "Paris"},
        "orders": [{"id": 1, "total": 5}, {"id": 2, "total": 9}]}
    assert engine.readable({"roles": ["a", "c"]}, "doc", DOC) == {
        "id": 7, "address": {"city": "Paris", "zip": "75001", "geo": {"lon": 2}},
        "orders": [{"total": 5}, {"total": 9}]}


def test_readable_leaves_out_values_it_cannot_look_inside() -> None:
    engine = fields_engine(a={"read": {"allow": ["address.city"]}},
                           b={"read": {"deny": ["address.zip"]}})
    flat = {"address": "12 rue X, 75001 Paris", "other": 1}
    assert engine.readable({"roles": ["a"]}, "doc", flat) == {}
    assert engine.readable({"roles": ["b"]}, "doc", flat) == {"other": 1}
    assert engine.readable({"roles": ["b"]}, "doc", {"address": [{"zip": 1, "c": 2}, "x"]}) == {
        "address": [{"c": 2}]}


def test_readable_copies_the_top_level() -> None:
    engine = fields_engine()
    doc = {"a": 1}
    copy = engine.readable({"roles": ["a"]}, "doc", doc)
    assert copy == doc and copy is not doc


def test_unwritable_paths(demo: Authorizer) -> None:
    assert demo.unwritable(USER7, "user", {"email": "x", "bio": "y"}) == []
    assert demo.unwritable(USER7, "user", {"email": "x", "role": "admin", "id": 9}) == [
        "role", "id"]
    assert demo.unwritable(SUPPORT2, "user", {"role": "admin"}) == []  # no write rule
    assert demo.unwritable({"roles": []}, "user", {"bio": "x"}) == ["bio"]
    engine = fields_engine(a={"write": {"allow": ["address.city", "tags.name"]}},
                           b={"write": {"deny": ["orders.card"]}})
    body = {"address": {"city": "P", "zip": "1"},
            "tags": [{"name": "a"}, {"name": "b", "color": "red"}, {"color": "blue"}],
            "orders": [{"card": 1}]}
    assert engine.unwritable({"roles": ["a"]}, "doc", body) == [
        "address.zip", "tags.color", "orders"]
    assert engine.unwritable({"roles": ["b"]}, "doc", body) == ["orders.card"]
    assert engine.unwritable({"roles": ["a", "b"]}, "doc", body) == ["orders.card"]
    assert engine.unwritable({"roles": ["a"]}, "doc", {"address": "flat"}) == ["address"]
    assert engine.unwritable({"roles": ["a"]}, "doc", {"tags": ["x"]}) == ["tags"]


def test_trace_lists_every_rule_and_grant(demo: Authorizer) -> None:
    trace = demo.trace(ADMIN1, "users:suspend", {"id": 1})
    assert trace.decision == demo.decide(ADMIN1, "users:suspend", {"id": 1})
    assert trace.steps == (
        "rule:no-self-suspend (deny): when resource.id == principal.user_id -> true",
        "role:admin: grants users:suspend",
    )
    read = demo.trace(USER7, "users:read", {"name": "no id"})
    assert read.steps == (
        "rule:no-self-suspend (deny): not about users:read",
        "role:user: grants users:read when resource.id == principal.user_id -> error:"
        " no such key 'id'",
    )
    assert demo.trace({"roles": []}, "users:read").steps[-1].startswith("roles: the principal")


def test_caches_are_bounded(demo: Authorizer) -> None:
    for n in range(3000):
        demo.decide({"roles": [f"r{n}"]}, f"perm:{n}")
    assert len(demo._views) <= 1024
    view = demo._view(ADMIN1)
    for n in range(5000):
        demo.decide(ADMIN1, f"perm:{n}")
    assert len(view.plans) <= 4096
    assert demo.decide(ADMIN1, "perm:4999").decided_by == "default"  # uncached, still right
