from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from apiforge.cli import app
from apiforge.errors import ConfigurationError
from apiforge.policy import load_policy, policy_errors
from apiforge.policy.reference import render_reference

ROOT = Path(__file__).resolve().parents[2]


def test_docs_policy_md_is_in_step_with_the_models() -> None:
    committed = (ROOT / "docs" / "policy.md").read_text(encoding="utf-8")
    assert committed == render_reference(), (
        "docs/policy.md is out of date: run `apiforge policy-docs > docs/policy.md`"
    )


def test_every_key_is_documented() -> None:
    text = render_reference()
    for key in ("routes", "trusted_proxies", "max_body", "max_depth", "body_idle",
                "header_timeout", "json_schema", "strip_html", "queue_size"):
        assert f"### `{key}`" in text


def test_defaults_are_safe() -> None:
    policy = load_policy({})
    assert policy.routes == {} and policy.trusted_proxies == []
    assert policy.limits.max_body == 1024 * 1024 and policy.limits.json_body.max_depth == 32
    assert policy.timeouts.request == 30 and policy.timeouts.body_idle == 10


@pytest.mark.parametrize(("data", "fragment"), [
    ({"routs": {}}, "routs: unknown key"),
    ({"routes": {"GET /a": {"limit": {}}}}, "routes.GET /a.limit: unknown key"),
    ({"routes": {"GET a": {}}}, "must start with '/'"),
    ({"routes": {"FETCH /a": {}}}, "method 'FETCH'"),
    ({"routes": {"GET /a/../b": {}}}, "segment '..'"),
    ({"trusted_proxies": ["0.0.0.0/0"]}, "trusts every address"),
    ({"trusted_proxies": ["nope"]}, "is not an IP network"),
    ({"limits": {"max_body": "lots"}}, "limits.max_body = 'lots'"),
    ({"timeouts": {"request": 0}}, "timeouts.request = 0"),
    ({"limits": {"json_body": {"max_depth": 10_000}}}, "limits.json_body.max_depth"),
])
def test_errors_name_the_key_value_and_fix(data: dict[str, object], fragment: str) -> None:
    problems = policy_errors(data)
    assert any(fragment in p for p in problems), problems
    with pytest.raises(ConfigurationError):
        load_policy(data)


def test_route_overrides_merge_key_by_key() -> None:
    from apiforge.policy.models import route_limits

    policy = load_policy({"limits": {"max_body": "2MiB", "json_body": {"max_members": 50}},
                          "routes": {"PUT /a": {"limits": {"json_body": {"max_depth": 4}}}}})
    merged = route_limits(policy, policy.routes["PUT /a"])
    assert merged.max_body == 2 * 1024 * 1024
    assert merged.json_body.max_depth == 4 and merged.json_body.max_members == 50


def test_yaml_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "none.yaml"
    with pytest.raises(ConfigurationError, match="no such policy file"):
        load_policy(missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes: [\n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match="not valid YAML at line"):
        load_policy(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match="must be a mapping"):
        load_policy(listy)


def test_check_config_command(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text('routes:\n  "GET /a": {}\n', encoding="utf-8")
    bad = tmp_path / "bad.yaml"
    bad.write_text('routes:\n  "GET /a": {}\ntrusted_proxies: ["0.0.0.0/0"]\nx: 1\n',
                   encoding="utf-8")
    runner = CliRunner()
    ok = runner.invoke(app, ["check-config", str(good)])
    assert ok.exit_code == 0 and "OK" in ok.output
    failed = runner.invoke(app, ["check-config", str(bad)])
    assert failed.exit_code == 1
    assert "trusts every address" in failed.output and "x: unknown key" in failed.output


def test_demo_policy_is_valid() -> None:
    from apiforge.demo import load_demo_policy

    policy = load_demo_policy()
    assert "PUT /v1/users/me" in policy.routes
