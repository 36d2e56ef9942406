"""The ``apiforge`` command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from apiforge.access.cli import policy_cli
from apiforge.errors import ConfigurationError
from apiforge.keys_cli import accounts, keys
from apiforge.policy import DEFAULT_POLICY_PATH, load_policy
from apiforge.tokens_cli import token

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
app.add_typer(keys, name="keys")
app.add_typer(accounts, name="accounts")
app.add_typer(token, name="token")
app.add_typer(policy_cli, name="policy")


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
    port: Annotated[int, typer.Option(help="HTTPS port.", min=1, max=65535)] = 8443,
    http_port: Annotated[
        int, typer.Option("--http-port", help="Plain-HTTP port (redirects to HTTPS).",
                          min=1, max=65535)
    ] = 8080,
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="Where the demo keeps its database and keys.",
                           file_okay=False)
    ] = Path(".apiforge/demo"),
    policy: PolicyOption = None,
) -> None:
    """Run the reference users API, protected by every layer, on embedded storage, over HTTPS."""
    from apiforge.demo.server import run_demo

    try:
        run_demo(host=host, port=port, http_port=http_port, data_dir=data_dir,
                 policy_path=policy)
    except ConfigurationError as exc:
        err.print(str(exc), markup=False, highlight=False)
        raise typer.Exit(1) from None


def main() -> None:
    """Entry point of the ``apiforge`` console script."""
    app()
