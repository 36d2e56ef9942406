"""``apiforge token``: verify tokens against the policy's trusted issuers."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from apiforge.errors import ConfigurationError
from apiforge.identity.jwks import JwksUnavailable
from apiforge.identity.token_runtime import TokenRuntime
from apiforge.identity.tokens import InvalidToken
from apiforge.policy import DEFAULT_POLICY_PATH, load_policy

__all__ = ["token"]

token = typer.Typer(help="Bearer tokens (JWT).", no_args_is_help=True)


def _verdict(runtime: TokenRuntime, text: str, now: float | None) -> dict[str, object]:
    async def run() -> dict[str, object]:
        try:
            verified = await runtime.verifier.verify(text, now=now)
        except InvalidToken as refused:
            return {"ok": False, "reason": refused.reason}
        except JwksUnavailable:
            return {"ok": False, "reason": "keys_unavailable"}
        return {"ok": True, "claims": dict(verified.claims)}

    return asyncio.run(run())


@token.command("verify")
def verify(
    value: Annotated[str, typer.Argument(
        help="The token, or - to read one token a line from standard input.",
        metavar="TOKEN|-")],
    policy: Annotated[Path, typer.Option("--policy", help="Policy file.", dir_okay=False)] = (
        DEFAULT_POLICY_PATH
    ),
    now: Annotated[float | None, typer.Option(
        "--now", help="Verify at this time (seconds since the epoch).")] = None,
) -> None:
    """Verify a token: print its claims as JSON (exit 0) or the refusal reason (exit 1).

    With -, print one JSON verdict a line ({"ok": true, "claims": ...} or {"ok": false,
    "reason": ...}); exit 1 if any token was refused. Tokens are never echoed.
    """
    try:
        settings = load_policy(policy).authentication.tokens
        if not settings.issuers and settings.provider is None:
            raise ConfigurationError(
                f"{policy}: authentication.tokens trusts no issuer; add"
                " authentication.tokens.issuers"
            )
        runtime = TokenRuntime(settings)
    except ConfigurationError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    if value != "-":
        verdict = _verdict(runtime, value.strip(), now)
        if verdict["ok"]:
            typer.echo(json.dumps(verdict["claims"], sort_keys=True, indent=2))
            return
        typer.echo(f"refused: {verdict['reason']}", err=True)
        raise typer.Exit(1)
    refused = False
    for line in sys.stdin:
        text = line.strip()
        if not text:
            continue
        verdict = _verdict(runtime, text, now)
        refused = refused or not verdict["ok"]
        typer.echo(json.dumps(verdict, sort_keys=True))
    if refused:
        raise typer.Exit(1)
