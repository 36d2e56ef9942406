"""``apiforge keys`` and ``apiforge accounts``: API keys and account status from the shell.

Changes are written to the record store and published on the state store's change feed, so
running servers sharing the stores pick them up within a second. ``keys rotate-signing``
rotates the token issuer's signing keyring file, which running servers re-read on their next
signature.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from apiforge.errors import ApiForgeError, ConfigurationError
from apiforge.identity import ADMIN_ROLE, Account, AccountStatus, Application
from apiforge.identity.runtime import APPLICATION_TOPIC, IdentityRuntime, new_pepper
from apiforge.identity.signing import DEFAULT_KEEP_FOR, SigningKeyring
from apiforge.policy import DEFAULT_POLICY_PATH, Policy, load_policy

__all__ = ["accounts", "keys"]

keys = typer.Typer(help="API keys: create, list, rotate, revoke; the token signing keyring.",
                   no_args_is_help=True)
out = Console()
err = Console(stderr=True)
T = TypeVar("T")

PolicyOption = Annotated[
    Path | None,
    typer.Option("--policy", help="Policy file (default ./apiforge.yaml, else the demo's).",
                 dir_okay=False),
]
DataDirOption = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Replaces {data_dir} in the policy (the demo's data dir).",
                 file_okay=False),
]


def _policy(policy: Path | None, data_dir: Path | None) -> Policy:
    from apiforge.demo import load_demo_policy, resolve_data_dir

    if policy is not None:
        loaded = load_policy(policy)
    elif DEFAULT_POLICY_PATH.exists():
        loaded = load_policy(DEFAULT_POLICY_PATH)
    else:
        loaded = load_demo_policy()
    if "{data_dir}" in loaded.authentication.model_dump_json():
        if data_dir is None:
            raise ConfigurationError(
                "the policy's authentication section uses {data_dir}: pass --data-dir DIR"
            )
        loaded = resolve_data_dir(loaded, data_dir)
    return loaded


def _run(policy: Path | None, data_dir: Path | None,
         action: Callable[[IdentityRuntime], Awaitable[T]]) -> T:
    async def main() -> T:
        runtime = IdentityRuntime(_policy(policy, data_dir).authentication)
        try:
            await runtime.keys.load()
            return await action(runtime)
        finally:
            await runtime.stores.aclose()

    try:
        return asyncio.run(main())
    except (ApiForgeError, ValueError, LookupError) as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        raise typer.Exit(1) from None


def _show_secret(label: str, secret: str) -> None:
    out.print(f"{label}\n\n  {secret}\n", markup=False, highlight=False)
    out.print("Store it now: it is shown once and cannot be recovered.", style="bold")


@keys.command("create")
def create(
    app: Annotated[str, typer.Option("--app", help="The application the key identifies.")],
    scope: Annotated[list[str] | None, typer.Option("--scope", help="A scope (repeat).")] = None,
    env: Annotated[str, typer.Option(help="Environment label shown in the key.")] = "live",
    expires_in_days: Annotated[
        int | None, typer.Option("--expires-in-days", min=1, help="Days until it expires.")
    ] = None,
    owner: Annotated[
        str | None, typer.Option("--owner", help="Username owning a new application: its"
                                 " keys stop working while that account is not active.")
    ] = None,
    policy: PolicyOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Create a key for an application (created too if new); print the key once."""

    async def action(runtime: IdentityRuntime) -> str:
        if runtime.stores.applications.get_application(app) is None:
            owner_id = _account(runtime, owner).account_id if owner else None
            runtime.stores.applications.add_application(
                Application(app, app, owner_id, datetime.now(UTC)))
            await runtime.stores.state.publish_change(APPLICATION_TOPIC, app)
        expires = (datetime.now(UTC) + timedelta(days=expires_in_days)
                   if expires_in_days else None)
        secret, record = await runtime.keys.create(app, scope or [], env, expires_at=expires)
        return f"{record.key_id}\n{secret.reveal()}"

    key_id, secret = _run(policy, data_dir, action).split("\n")
    _show_secret(f"API key {key_id} for {app}:", secret)


@keys.command("list")
def list_keys(policy: PolicyOption = None, data_dir: DataDirOption = None) -> None:
    """List keys: their public id and prefix only, never a secret."""

    async def action(runtime: IdentityRuntime) -> Table:
        table = Table("key", "id", "application", "scopes", "status", "created", "expires",
                      "last used")
        for r in sorted(runtime.keys.list(), key=lambda r: r.created_at):
            status = r.status if r.replaced_by is None else f"rotated → {r.replaced_by}"
            table.add_row(f"afk_{r.env}_{r.key_id}_…", r.key_id, r.application_id,
                          " ".join(sorted(r.scopes)), status, _when(r.created_at),
                          _when(r.expires_at), _when(r.last_used_at))
        return table

    out.print(_run(policy, data_dir, action))


@keys.command("rotate")
def rotate(
    key_id: Annotated[str, typer.Argument(help="The id of the key to replace.")],
    overlap_hours: Annotated[
        float, typer.Option("--overlap-hours", min=0, help="Hours the old key keeps working.")
    ] = 24.0,
    policy: PolicyOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Replace a key; the old one keeps working during the overlap."""

    async def action(runtime: IdentityRuntime) -> str:
        secret, record = await runtime.keys.rotate(key_id, timedelta(hours=overlap_hours))
        return f"{record.key_id}\n{secret.reveal()}"

    new_id, secret = _run(policy, data_dir, action).split("\n")
    _show_secret(f"API key {new_id} replaces {key_id} (old key valid {overlap_hours:g} h):",
                 secret)


@keys.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="The id of the key to revoke.")],
    policy: PolicyOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Revoke a key at once, on every server sharing the stores."""

    async def action(runtime: IdentityRuntime) -> None:
        await runtime.keys.revoke(key_id)

    _run(policy, data_dir, action)
    out.print(f"revoked {key_id}", markup=False, highlight=False)


@keys.command("pepper")
def pepper(
    file: Annotated[str, typer.Argument(help="File to create (mode 0600), or - to print.")] = "-",
) -> None:
    """Make a new pepper (base64 of 32 random bytes) for hashing API keys."""
    from apiforge.identity.runtime import ensure_pepper_file

    if file == "-":
        typer.echo(new_pepper())
        return
    path = Path(file)
    if path.exists():
        err.print(f"error: {path} exists; peppers are never overwritten", markup=False)
        raise typer.Exit(1)
    ensure_pepper_file(path)
    out.print(f"wrote {path} (mode 0600)", markup=False, highlight=False)


@keys.command("rotate-signing")
def rotate_signing(
    keyring: Annotated[
        Path,
        typer.Option("--keyring", help="The token issuer's signing keyring (JSON, mode 0600).",
                     dir_okay=False),
    ],
    keep_for: Annotated[
        float,
        typer.Option("--keep-for", min=1, help="Seconds a retired key stays published: at"
                     " least the access-token lifetime plus the verifiers' leeway."),
    ] = DEFAULT_KEEP_FOR,
    create: Annotated[
        bool, typer.Option("--create", help="Create the keyring if the file does not exist.")
    ] = False,
) -> None:
    """Retire the current signing key and add a new one; print the kids still published."""
    try:
        if create and not keyring.exists():
            ring = SigningKeyring.load_or_create(keyring, keep_for=keep_for)
            out.print(f"created {keyring} with signing key {ring.current.kid}", markup=False,
                      highlight=False)
            return
        ring = SigningKeyring.rotate(keyring, keep_for=keep_for)
    except FileNotFoundError:
        err.print(f"error: no keyring at {keyring}; pass --create to make one", markup=False,
                  highlight=False)
        raise typer.Exit(1) from None
    except ApiForgeError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    out.print(f"new signing key: {ring.current.kid}", markup=False, highlight=False)
    retired = ring.keys[1:]
    if not retired:
        out.print("no older key remains published", markup=False, highlight=False)
    for key in retired:
        until = datetime.fromtimestamp((key.retired or 0) + keep_for, UTC)
        out.print(f"still published: {key.kid} (until {_when(until)} UTC)", markup=False,
                  highlight=False)


accounts = typer.Typer(help="Accounts: create, list, suspend, activate.",
                       no_args_is_help=True)
# The command line acts as the operator, who holds the stores' credentials.
_OPERATOR = Account("operator", "operator", frozenset({ADMIN_ROLE}))


def _account(runtime: IdentityRuntime, username: str) -> Account:
    for account in runtime.stores.accounts.list_accounts():
        if account.username == username:
            return account
    raise ConfigurationError(f"no account named {username!r}; `apiforge accounts list` shows them")


@accounts.command("create")
def create_account(
    username: Annotated[str, typer.Argument(help="The new account's username.")],
    role: Annotated[list[str] | None, typer.Option("--role", help="A role (repeat).")] = None,
    policy: PolicyOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Create an active account (no password: it logs in through its applications' keys)."""

    async def action(runtime: IdentityRuntime) -> str:
        if any(a.username == username for a in runtime.stores.accounts.list_accounts()):
            raise ConfigurationError(f"an account named {username!r} exists")
        return (await runtime.accounts.create(username, role or [])).account_id

    out.print(f"created {username} ({_run(policy, data_dir, action)})", markup=False,
              highlight=False)


@accounts.command("list")
def list_accounts(policy: PolicyOption = None, data_dir: DataDirOption = None) -> None:
    """List accounts with their roles, status and version."""

    async def action(runtime: IdentityRuntime) -> Table:
        table = Table("username", "id", "roles", "status", "version")
        for a in sorted(runtime.stores.accounts.list_accounts(), key=lambda a: a.username):
            table.add_row(a.username, a.account_id, " ".join(sorted(a.roles)), a.status,
                          str(a.version))
        return table

    out.print(_run(policy, data_dir, action))


def _set_status(username: str, status: AccountStatus, policy: Path | None,
                data_dir: Path | None) -> None:
    async def action(runtime: IdentityRuntime) -> None:
        await runtime.accounts.set_status(_account(runtime, username).account_id, status,
                                          _OPERATOR)

    _run(policy, data_dir, action)
    out.print(f"{username}: {status}", markup=False, highlight=False)


@accounts.command("suspend")
def suspend(username: Annotated[str, typer.Argument(help="The account to suspend.")],
            policy: PolicyOption = None, data_dir: DataDirOption = None) -> None:
    """Suspend an account: refused at once on every server sharing the stores."""
    _set_status(username, "suspended", policy, data_dir)


@accounts.command("lock")
def lock(username: Annotated[str, typer.Argument(help="The account to lock.")],
         policy: PolicyOption = None, data_dir: DataDirOption = None) -> None:
    """Lock an account (an administrator's decision; guessing never locks an account)."""
    _set_status(username, "locked", policy, data_dir)


@accounts.command("activate")
def activate(username: Annotated[str, typer.Argument(help="The account to re-activate.")],
             policy: PolicyOption = None, data_dir: DataDirOption = None) -> None:
    """Make a suspended or locked account active again."""
    _set_status(username, "active", policy, data_dir)


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment else "-"
