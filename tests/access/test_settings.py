"""The `authorization` section: load-time checks whose messages name the key and the fix."""

from __future__ import annotations

from typing import Any

import pytest

from apiforge.access.settings import AuthorizationSettings, RouteAuthorization, inherited_roles
from apiforge.errors import ConfigurationError
from apiforge.policy import load_policy, policy_errors

from .conftest import DEMO_AUTHORIZATION


def test_default_is_empty_and_changes_nothing() -> None:
    settings = AuthorizationSettings()
    assert settings.roles == {} and settings.rules == [] and settings.resources == {}
    assert settings.mode == "enforce" and not settings.enabled
    policy = load_policy({})
    assert policy.authorization == settings
    assert load_policy({"routes": {"GET /a": {}}}).routes["GET /a"].authorize is None


def test_demo_section_loads_into_the_policy() -> None:
    policy = load_policy({"authorization": DEMO_AUTHORIZATION, "routes": {
        "GET /v1/users/{id}": {"authorize": {"permission": "users:read", "resource": "user"}}}})
    assert policy.authorization.enabled
    grant = policy.authorization.roles["user"].permissions[0]
    assert grant.permission == "users:read" and grant.when is not None
    assert policy.authorization.roles["support"].permissions[0].when is None  # string form
    route = policy.routes["GET /v1/users/{id}"].authorize
    assert route == RouteAuthorization(permission="users:read", resource="user")
    assert route is not None and route.check_response is False


def test_inheritance_is_transitive_nearest_first() -> None:
    settings = AuthorizationSettings.model_validate(DEMO_AUTHORIZATION)
    assert inherited_roles(settings.roles)["admin"] == ("admin", "support", "user")


def section(**authorization: Any) -> dict[str, Any]:
    return {"authorization": authorization}


@pytest.mark.parametrize(("data", "fragments"), [
    (section(roles={"a": {"inherits": ["b"]}, "b": {"inherits": ["c"]},
                    "c": {"inherits": ["a"]}}),
     ["inheritance cycle a -> b -> c -> a", "remove one"]),
    (section(roles={"a": {"inherits": ["a"]}}), ["inheritance cycle a -> a"]),
    (section(roles={"a": {"inherits": ["ghost"]}}),
     ["roles.a.inherits", "'ghost' is not a role", "define it"]),
    (section(rules=[{"name": "r1", "effect": "allow", "permissions": ["p"],
                     "when": "resource.id == princpal.id"}]),
     ["authorization.rules.0.when", "rule 'r1'", "column 16", "unknown identifier 'princpal'"]),
    (section(roles={"u": {"permissions": [{"permission": "p", "when": "1 +"}]}}),
     ["authorization.roles.u.permissions.0.when", "the condition of 'p'", "column 4"]),
    (section(rules=[{"name": "r", "effect": "deny", "permissions": ["p"], "roles": ["x"]}]),
     ["rules.0.roles", "'x' is not a role"]),
    (section(rules=[{"name": "r", "effect": "deny", "permissions": ["p"]},
                    {"name": "r", "effect": "allow", "permissions": ["p"]}]),
     ["rules.1.name", "used twice"]),
    (section(rules=[{"name": "r", "effect": "deny", "permissions": []}]),
     ["authorization.rules.0.permissions"]),
    (section(rules=[{"name": "r", "effect": "maybe", "permissions": ["p"]}]),
     ["authorization.rules.0.effect"]),
    (section(roles={"a": {}}, resources={"u": {"read": "p", "fields": {"b": {}}}}),
     ["resources.u.fields", "'b' is not a role"]),
    (section(roles={"a": {}}, resources={"u": {"read": "p", "fields": {
        "a": {"read": {"deny": ["address..city"]}}}}}),
     ["authorization.resources.u.fields.a.read.deny", "'address..city' is not a dotted"]),
    (section(roles={"a": {}}, resources={"u": {"read": "p", "fields": {
        "a": {"write": {"allow": [""]}}}}}), ["'' is not a dotted field path"]),
    (section(roles={"a": {}}, resources={"u": {"read": "p", "fields": {"a": {"read": {}}}}}),
     ["give `allow` or `deny`"]),
    (section(resources={"u": {}}), ["authorization.resources.u.read: required"]),
    (section(roles={"a": {"permissions": ["*"]}}), ["'*' is only allowed in a rule"]),
    (section(roles={"a": {"permissions": ["users read"]}}), ["may hold only letters"]),
    (section(roles={"1a": {}}), ["roles.1a: a role name starts with a letter"]),
    (section(roles={"a": {"permisions": []}}), ["authorization.roles.a.permisions: unknown key"]),
    ({"routes": {"GET /a": {"authorize": {"resource": "user"}}}},
     ["routes.GET /a.authorize.permission: required"]),
])
def test_errors_name_the_key_value_and_fix(data: dict[str, Any], fragments: list[str]) -> None:
    problems = policy_errors(data)
    assert any(all(f in p for f in fragments) for p in problems), problems
    with pytest.raises(ConfigurationError):
        load_policy(data)
