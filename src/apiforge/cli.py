"""The ``apiforge`` command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from apiforge.errors import ConfigurationError
from apiforge.policy import DEFAULT_POLICY_PATH, load_policy

__all__ = ["app", "main"]

app = typer.Typer(
    name="apiforge",
    help="APIForge: the security layer for HTTP APIs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

PolicyOption = Annotated[
    Path | None,
    typer.Option("--policy", help="Policy file (default ./apiforge.yaml).", dir_okay=False),
]


@app.command("check-config")
def check_config(
    file: Annotated[Path, typer.Argument(help="The policy file to check.", dir_okay=False)] = (
        DEFAULT_POLICY_PATH
    ),
) -> None:
    """Check a policy file: print OK, or every problem with the key, the value and the fix."""
    try:
        load_policy(file)
    except ConfigurationError as exc:
        err.print(str(exc), markup=False, highlight=False)
        raise typer.Exit(1) from None
    out.print(f"OK: {file}", markup=False, highlight=False)


@app.command("policy-docs")
def policy_docs() -> None:
    """Print the policy reference (docs/policy.md), generated from the policy models."""
    from apiforge.policy.reference import render_reference

    typer.echo(render_reference(), nl=False)


@app.command()
def demo(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=0, max=65535)] = 8443,
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="Where the demo keeps its database.", file_okay=False)
    ] = Path(".apiforge/demo"),
    policy: PolicyOption = None,
) -> None:
    """Run the reference users API, protected by every layer, on embedded storage."""
    from apiforge.demo import load_demo_policy
    from apiforge.demo.app import create_app
    from apiforge.protection import protect
    from apiforge.server import serve

    try:
        loaded = load_demo_policy(policy)
    except ConfigurationError as exc:
        err.print(str(exc), markup=False, highlight=False)
        raise typer.Exit(1) from None
    protected = protect(create_app(data_dir), loaded)

    def ready(url: str) -> None:
        typer.echo(f"apiforge demo ready on {url}")
        typer.echo(
            "\n"
            "  Every request acts as the user alice until authentication is configured.\n\n"
            f"  curl -s {url}/v1/users/me\n"
            f"  curl -s -X PUT {url}/v1/users/me -H 'Content-Type: application/json' \\\n"
            "       -d '{\"email\": \"alice@example.com\", \"age\": 34, "
            "\"bio\": \"<b>Hi</b> there\"}'\n"
            f"  curl -s {url}/v1/users/2\n"
            f"  curl -s {url}/openapi.json\n"
            f"  curl -si --path-as-is {url}/v1/users/me/../2   # refused: 400 problem+json\n"
            "\n  Security events are written to this terminal as JSON lines. Ctrl-C stops.",
        )

    serve(protected, host=host, port=port, on_ready=ready)


def main() -> None:
    """Entry point of the ``apiforge`` console script."""
    app()
