"""``apiforge policy explain`` and ``apiforge policy test``: authorization from the shell.

Exit codes: ``explain`` exits 0 whatever the decision (it answers a question; read the
``decision:`` line); ``test`` exits 0 when every case passes and 1 when one does not. Both exit
2 when they cannot run: a bad policy, cases file, caller or resource.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from apiforge.errors import ConfigurationError
from apiforge.policy import DEFAULT_POLICY_PATH, load_policy

__all__ = ["policy_cli"]

policy_cli = typer.Typer(help="Authorization: explain decisions, test cases.",
                         no_args_is_help=True)

PolicyOption = Annotated[
    Path, typer.Option("--policy", help="Policy file (default ./apiforge.yaml).", dir_okay=False)
]


@policy_cli.command("explain")
def explain_command(
    method: Annotated[str, typer.Argument(help="The request method, e.g. GET.")],
    path: Annotated[str, typer.Argument(help="The request path, e.g. /v1/users/7.")],
    who: Annotated[str, typer.Option(
        "--as", help="The caller: role:NAME[,NAME] or user:ID[:ROLE,ROLE].")],
    policy: PolicyOption = DEFAULT_POLICY_PATH,
    resource: Annotated[str | None, typer.Option(
        "--resource", help="The object as rules see it, as JSON (default: the path "
                           "parameters).")] = None,
) -> None:
    """Print what the gateway would decide for a caller and a request, and why."""
    from apiforge.access.tools import explain

    try:
        explanation = explain(load_policy(policy), who, method, path,
                              resource=_resource(resource))
    except ConfigurationError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    typer.echo(explanation.render())


@policy_cli.command("test")
def test_command(
    cases: Annotated[Path, typer.Argument(help="YAML list of {as, request, resource?, expect}.",
                                          dir_okay=False)],
    policy: PolicyOption = DEFAULT_POLICY_PATH,
) -> None:
    """Run authorization cases: PASS/FAIL each, then a summary; exit 1 on any failure."""
    from apiforge.access.tools import parse_cases, run_cases

    try:
        loaded = load_policy(policy)
        report = run_cases(loaded, parse_cases(_read_yaml(cases)))
    except ConfigurationError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    for result in report.results:
        explanation = result.explanation
        got = explanation.outcome
        status = "PASS" if result.passed else "FAIL"
        typer.echo(f"{status}  {result.label}: expected {result.case.expect}, got {got}")
        if not result.passed:
            d = explanation.decision
            typer.echo(f"      decided by {d.decided_by}: {d.reason}")
    failed = len(report.failures)
    typer.echo(f"{len(report.results) - failed} passed, {failed} failed")
    if failed:
        raise typer.Exit(1)


def _resource(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise ConfigurationError("--resource is not valid JSON") from None
    if not isinstance(value, dict):
        raise ConfigurationError("--resource must be a JSON object, e.g. '{\"id\": 7}'")
    return value


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigurationError(f"{path}: no such cases file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"{path}: cannot be read ({exc.__class__.__name__})") from None
    except yaml.YAMLError:
        raise ConfigurationError(f"{path}: not valid YAML") from None
