"""`apiforge policy explain` and `apiforge policy test`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from apiforge.cli import app

from .test_tools import POLICY

runner = CliRunner()


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "apiforge.yaml"
    path.write_text(yaml.safe_dump(POLICY), encoding="utf-8")
    return path


def test_explain_prints_the_decision_and_what_decided(policy_file: Path) -> None:
    result = runner.invoke(app, ["policy", "explain", "--policy", str(policy_file),
                                 "--as", "user:1:admin", "POST", "/v1/users/1/suspend"])
    assert result.exit_code == 0, result.output
    assert "permission: users:suspend" in result.output
    assert "decision:   DENY (403) by rule:no-self-suspend" in result.output
    allowed = runner.invoke(app, ["policy", "explain", "--policy", str(policy_file),
                                  "--as", "user:7:user", "GET", "/v1/users/8",
                                  "--resource", '{"id": 7}'])
    assert allowed.exit_code == 0 and "ALLOW by role:user" in allowed.output


@pytest.mark.parametrize(("args", "fragment"), [
    (["--as", "role:ghost", "GET", "/v1/users/1"], "'ghost' is not a role"),
    (["--as", "role:user", "GET", "/v1/users/1", "--resource", "[1]"], "a JSON object"),
    (["--as", "role:user", "GET", "/v1/users/1", "--resource", "{"], "not valid JSON"),
])
def test_explain_exits_2_when_it_cannot_answer(policy_file: Path, args: list[str],
                                               fragment: str) -> None:
    result = runner.invoke(app, ["policy", "explain", "--policy", str(policy_file), *args])
    assert result.exit_code == 2 and fragment in result.output


def test_explain_exits_2_on_a_bad_policy(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("authorization: {roles: {a: {inherits: [b]}}}\n", encoding="utf-8")
    result = runner.invoke(app, ["policy", "explain", "--policy", str(bad), "--as", "role:a",
                                 "GET", "/"])
    assert result.exit_code == 2 and "'b' is not a role" in result.output


def write_cases(tmp_path: Path, cases: list[dict[str, object]]) -> Path:
    path = tmp_path / "cases.yaml"
    path.write_text(yaml.safe_dump(cases), encoding="utf-8")
    return path


PASSING: list[dict[str, object]] = [
    {"as": "user:7:user", "request": "GET /v1/users/7", "expect": "allow"},
    {"as": "user:7:user", "request": "GET /v1/users/8", "expect": 404},
    {"as": "user:2:support", "request": "POST /v1/users/8/suspend", "expect": 403},
    {"as": "user:1:admin", "request": "POST /v1/users/1/suspend", "expect": "deny"},
]


def test_policy_test_passes(policy_file: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["policy", "test", "--policy", str(policy_file),
                                 str(write_cases(tmp_path, PASSING))])
    assert result.exit_code == 0, result.output
    assert result.output.count("PASS  ") == 4 and "4 passed, 0 failed" in result.output


def test_policy_test_fails_and_names_the_case(policy_file: Path, tmp_path: Path) -> None:
    cases: list[dict[str, object]] = [
        *PASSING,
        {"name": "support suspends", "as": "user:2:support",
         "request": "POST /v1/users/8/suspend", "expect": "allow"},
    ]
    result = runner.invoke(app, ["policy", "test", "--policy", str(policy_file),
                                 str(write_cases(tmp_path, cases))])
    assert result.exit_code == 1
    assert "FAIL  support suspends: expected allow, got 403" in result.output
    assert "decided by default" in result.output
    assert "4 passed, 1 failed" in result.output


def test_policy_test_exits_2_on_a_bad_cases_file(policy_file: Path, tmp_path: Path) -> None:
    missing = runner.invoke(app, ["policy", "test", "--policy", str(policy_file),
                                  str(tmp_path / "none.yaml")])
    assert missing.exit_code == 2 and "no such cases file" in missing.output
    bad = write_cases(tmp_path, [{"as": "role:user", "request": "GET /", "expect": "yes"}])
    result = runner.invoke(app, ["policy", "test", "--policy", str(policy_file), str(bad)])
    assert result.exit_code == 2 and "0.expect" in result.output


def test_policy_docs_command_is_kept() -> None:
    result = runner.invoke(app, ["policy-docs"])
    assert result.exit_code == 0 and "### `authorize`" in result.output
