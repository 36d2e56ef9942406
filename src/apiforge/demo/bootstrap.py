"""First start of the demo: its application, API key and accounts, and the file that lists them.

``DATA_DIR/demo-credentials.json`` (mode 0600) is written once per data directory::

    {"api_key": "afk_…", "accounts": {"alice": {"password": "…", "role": "user"}, …,
     "ada": {"password": "…", "role": "admin", "totp_secret": "BASE32…"}}}

The administrator ``ada`` must add a TOTP code (``otp``) to every password grant.

Only hashes are stored: the key as HMAC-SHA-256 under the pepper, passwords with argon2id.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path

from apiforge.identity import Application
from apiforge.identity.passwords import hash_password
from apiforge.identity.runtime import IdentityRuntime
from apiforge.identity.totp import new_totp_secret

__all__ = ["CREDENTIALS_FILE", "DEMO_ACCOUNTS", "ensure_demo_identity"]

CREDENTIALS_FILE = "demo-credentials.json"
DEMO_APPLICATION = "demo-app"
DEMO_ACCOUNTS = {"alice": "user", "bob": "user", "sam": "support", "ada": "admin"}


async def ensure_demo_identity(runtime: IdentityRuntime, data_dir: Path) -> Path:
    """Create the demo's identities unless this data directory has them; returns the file."""
    path = data_dir / CREDENTIALS_FILE
    if path.exists():
        return path
    stores = runtime.stores
    if stores.applications.get_application(DEMO_APPLICATION) is None:
        stores.applications.add_application(
            Application(DEMO_APPLICATION, "APIForge demo client", None, datetime.now(UTC)))
    key, _ = await runtime.keys.create(DEMO_APPLICATION, ["users:read", "users:write"], "demo")
    accounts: dict[str, dict[str, str]] = {}
    for username, role in DEMO_ACCOUNTS.items():
        password = secrets.token_urlsafe(18)
        password_hash = await asyncio.to_thread(hash_password, password)
        account = await runtime.accounts.create(username, [role], password_hash)
        accounts[username] = {"password": password, "role": role}
        if role == "admin":  # an administrator needs a second factor
            secret = new_totp_secret()
            await runtime.accounts.set_totp(account.account_id, secret)
            accounts[username]["totp_secret"] = secret
    document = {"api_key": key.reveal(), "accounts": accounts}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2)
        handle.write("\n")
    return path
