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


certs = typer.Typer(help="Certificates for HTTPS.", no_args_is_help=True)
app.add_typer(certs, name="certs")


@certs.command("dev")
def certs_dev(
    directory: Annotated[Path, typer.Argument(help="Where to write the files.", file_okay=False)],
    host: Annotated[
        list[str] | None, typer.Option("--host", help="A name the certificate covers (repeat).")
    ] = None,
) -> None:
    """Write a development CA, server certificate and key; print the SPKI pins."""
    from apiforge.tls import write_dev_certificates

    made = write_dev_certificates(directory, tuple(host) if host else
                                  ("localhost", "127.0.0.1", "::1"))
    out.print(f"CA certificate     {made.ca_cert}", markup=False, highlight=False)
    out.print(f"server chain       {made.server_cert}", markup=False, highlight=False)
    out.print(f"server key (0600)  {made.server_key}", markup=False, highlight=False)
    out.print(f"backup key (0600)  {made.backup_key}", markup=False, highlight=False)
    out.print("SPKI pins, for clients that pin (ship both):", markup=False, highlight=False)
    out.print(f"  server  {made.server_pin}", markup=False, highlight=False)
    out.print(f"  backup  {made.backup_pin}", markup=False, highlight=False)


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
