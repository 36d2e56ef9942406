"""`explain` and `run_cases`: the policy's answer for a caller and a request, from data."""

from __future__ import annotations

from typing import Any

import pytest

from apiforge.access.tools import (
    Case,
    explain,
    parse_cases,
    parse_principal,
    route_problems,
    run_cases,
)
from apiforge.errors import ConfigurationError
from apiforge.policy import Policy, load_policy

from .conftest import DEMO_AUTHORIZATION

ID = {"path": {"id": {"type": "integer", "minimum": 1}}}
POLICY: dict[str, Any] = {
    "routes": {
        "GET /v1/users/{id}": {"auth": "api_key", "params": ID,
                               "authorize": {"permission": "users:read", "resource": "user"}},
        "POST /v1/users/{id}/suspend": {
            "auth": "api_key", "params": ID,
            "authorize": {"permission": "users:suspend", "resource": "user"}},
        "GET /v1/tags/{name}": {"auth": "api_key",
                                "authorize": {"permission": "users:read"}},
        "GET /v1/stats": {"auth": "api_key"},
        "GET /openapi.json": {"auth": "none"},
    },
    "authorization": DEMO_AUTHORIZATION,
}


@pytest.fixture
def policy() -> Policy:
    return load_policy(POLICY)


def test_own_profile_is_allowed_with_typed_path_parameters(policy: Policy) -> None:
    explanation = explain(policy, "user:7:user", "GET", "/v1/users/7")
    assert explanation.allowed and explanation.outcome == "allow"
    assert explanation.route == "GET /v1/users/{id}"
    assert explanation.resource == {"id": 7}  # `type: integer` makes it an int
    assert explanation.principal == {"user_id": 7, "roles": ["user"]}
    assert explanation.decision.decided_by == "role:user"
    assert "when resource.id == principal.user_id -> true" in explanation.render()


def test_other_profile_is_404_not_403(policy: Policy) -> None:
    explanation = explain(policy, "user:7:user", "GET", "/v1/users/8")
    assert explanation.outcome == "404" and explanation.decision.decided_by == "default"
    assert any("404 (existence not disclosed)" in s for s in explanation.steps)


def test_visible_but_forbidden_is_403_and_names_the_deny_rule(policy: Policy) -> None:
    explanation = explain(policy, "user:1:admin", "POST", "/v1/users/1/suspend")
    assert explanation.outcome == "403"
    assert explanation.decision.decided_by == "rule:no-self-suspend"
    text = explanation.render()
    assert "DENY (403) by rule:no-self-suspend" in text
    assert "rule:no-self-suspend (deny): when resource.id == principal.user_id -> true" in text
    assert explain(policy, "user:1:admin", "POST", "/v1/users/2/suspend").allowed


def test_given_resource_replaces_the_path_parameters(policy: Policy) -> None:
    explanation = explain(policy, "user:7:user", "GET", "/v1/users/8", resource={"id": 7})
    assert explanation.allowed and explanation.resource == {"id": 7}


def test_untyped_parameters_stay_strings(policy: Policy) -> None:
    explanation = explain(policy, "role:support", "GET", "/v1/tags/7")
    assert explanation.resource == {"name": "7"} and explanation.allowed
    assert explain(policy, "role:user", "GET", "/v1/tags/7").outcome == "403"  # no type


def test_route_without_permission_is_denied_not_open(policy: Policy) -> None:
    explanation = explain(policy, "role:admin", "GET", "/v1/stats")
    assert explanation.outcome == "403"
    assert "names no permission" in explanation.decision.reason
    public = explain(policy, "role:admin", "GET", "/openapi.json")
    assert public.allowed and "public" in public.decision.reason
    unconfigured = load_policy({"routes": {"GET /v1/stats": {"auth": "api_key"}}})
    assert explain(unconfigured, "user:1", "GET", "/v1/stats").allowed


@pytest.mark.parametrize(("method", "path", "outcome"), [
    ("GET", "/nope", "404"),
    ("DELETE", "/v1/users/7", "405"),
    ("GET", "/v1/users/%2e%2e", "400"),
    ("GET", "/v1/users/../x", "400"),
])
def test_refusals_before_authorization(policy: Policy, method: str, path: str,
                                       outcome: str) -> None:
    explanation = explain(policy, "role:admin", method, path)
    assert explanation.outcome == outcome and not explanation.allowed


def test_parse_principal(policy: Policy) -> None:
    assert parse_principal("role:admin", policy) == {"roles": ["admin"]}
    assert parse_principal("role:user,support", policy) == {"roles": ["user", "support"]}
    assert parse_principal("user:42", policy) == {"user_id": 42, "roles": []}
    assert parse_principal("user:ada:admin", policy) == {"user_id": "ada", "roles": ["admin"]}
    for bad, fragment in [("admin", "not a caller"), ("role:", "not a caller"),
                          ("role:ghost", "'ghost' is not a role"), ("user::admin", "empty"),
                          ("user:1:admin,ghost", "'ghost'")]:
        with pytest.raises(ConfigurationError, match=fragment):
            parse_principal(bad, policy)


def test_run_cases_reports_mismatches(policy: Policy) -> None:
    cases = parse_cases([
        {"as": "user:7:user", "request": "GET /v1/users/7", "expect": "allow"},
        {"as": "user:7:user", "request": "GET /v1/users/8", "expect": 404},
        {"as": "user:1:admin", "request": "POST /v1/users/1/suspend", "expect": "deny"},
        {"name": "wrong on purpose", "as": "role:support", "request": "GET /v1/users/8",
         "expect": "403"},
    ])
    report = run_cases(policy, cases)
    assert [r.passed for r in report.results] == [True, True, True, False]
    assert not report.ok and [r.label for r in report.failures] == ["wrong on purpose"]
    assert report.results[0].label == "#1 as user:7:user GET /v1/users/7"
    assert run_cases(policy, cases[:3]).ok


def test_parse_cases_names_each_problem() -> None:
    with pytest.raises(ConfigurationError, match="a cases file is a list"):
        parse_cases({"as": "x"})
    with pytest.raises(ConfigurationError) as info:
        parse_cases([{"as": "role:a", "request": "GET /a", "expect": "maybe"},
                     {"request": "nope", "expect": "allow"}])
    text = str(info.value)
    assert "0.expect" in text and "1.as" in text and "1.request" in text
    assert Case.model_validate({"as": "role:a", "request": "GET /", "expect": 403}).expect == "403"


def test_route_problems_cross_check_routes_and_authorization(policy: Policy) -> None:
    assert route_problems(policy) == []
    broken = load_policy({**POLICY, "routes": {
        "GET /a": {"authorize": {"permission": "users:raed", "resource": "usr"}}}})
    problems = route_problems(broken)
    assert len(problems) == 2
    assert "routes.GET /a.authorize.resource = 'usr': not a resource type" in problems[0]
    assert "'users:raed': no role grants it" in problems[1]
