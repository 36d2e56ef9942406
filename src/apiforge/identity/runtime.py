"""The identity services of one server process: stores opened by URL, caches kept current.

Started lazily by the first request that needs it (so it works with or without ASGI lifespan),
and once started the request path reads in-process caches only.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from apiforge.errors import ConfigurationError
from apiforge.identity import (
    AccountService,
    ApiKeyService,
    Application,
    CachedService,
    CacheRefresher,
    KeyHasher,
)
from apiforge.identity.token_runtime import TokenRuntime
from apiforge.policy.models import AuthenticationSettings
from apiforge.secrets import Secret
from apiforge.stores import IdentityStores, open_identity_stores
from apiforge.stores.protocols import ApplicationStore

__all__ = [
    "APPLICATION_TOPIC",
    "ApplicationCache",
    "IdentityRuntime",
    "ensure_pepper_file",
    "load_peppers",
]

MIN_PEPPER_BYTES = 32
RECORD_RELOAD_SECONDS = 1.0
_log = logging.getLogger("apiforge.identity")


def load_peppers(settings: AuthenticationSettings) -> list[Secret]:
    """The peppers, newest first, from the file or the environment variable the policy names.

    Each pepper is base64 of at least 32 random bytes; several are separated by commas (or
    lines) so an old pepper keeps verifying keys while they are re-hashed under the new one.

    Raises:
        ConfigurationError: naming the key and the fix when none is found or one is too short.
    """
    if settings.pepper_file:
        where = f"authentication.pepper_file ({settings.pepper_file})"
        try:
            text = Path(settings.pepper_file).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError):
            raise ConfigurationError(
                f"{where} cannot be read; create it with `apiforge keys pepper FILE`"
            ) from None
    else:
        where = f"the environment variable {settings.pepper_env} (authentication.pepper_env)"
        text = os.environ.get(settings.pepper_env, "")
        if not text:
            raise ConfigurationError(
                f"{where} is not set; set it to the output of `apiforge keys pepper -`"
            )
    peppers = []
    for part in text.replace("\n", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            raw = base64.b64decode(part, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigurationError(f"{where}: a pepper is not base64") from None
        if len(raw) < MIN_PEPPER_BYTES:
            raise ConfigurationError(
                f"{where}: a pepper has {len(raw)} bytes; use at least {MIN_PEPPER_BYTES}"
                " random bytes (`apiforge keys pepper -` makes one)"
            )
        peppers.append(Secret(part))
    if not peppers:
        raise ConfigurationError(f"{where} holds no pepper")
    return peppers


def new_pepper() -> str:
    """A fresh pepper: base64 of 32 random bytes."""
    return base64.b64encode(secrets.token_bytes(MIN_PEPPER_BYTES)).decode("ascii")


def ensure_pepper_file(path: Path) -> None:
    """Create ``path`` with a fresh pepper (mode 0600) unless it exists."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(new_pepper() + "\n")


APPLICATION_TOPIC = "application"


class ApplicationCache:
    """Applications by id, in process; refreshed through the change feed like keys."""

    topic = APPLICATION_TOPIC

    def __init__(self, store: ApplicationStore) -> None:
        self._store = store
        self.by_id: dict[str, Application] = {}

    async def load(self) -> int:
        applications = await asyncio.to_thread(self._store.list_applications)
        self.by_id = {a.application_id: a for a in applications}
        return len(applications)

    async def refresh(self, ids: Iterable[str]) -> None:
        for application_id in set(ids):
            found = await asyncio.to_thread(self._store.get_application, application_id)
            if found is None:
                self.by_id.pop(application_id, None)
            else:
                self.by_id[application_id] = found


class IdentityRuntime:
    """API keys and accounts for one process, with their caches and refresher.

    Args:
        settings: the policy's ``authentication`` section (URLs already resolved).
        workers: server processes sharing the stores; ``memory://`` is refused above one.
    """

    def __init__(self, settings: AuthenticationSettings, *, workers: int = 1) -> None:
        self.settings = settings
        self.hasher = KeyHasher(load_peppers(settings))
        self.stores: IdentityStores = open_identity_stores(
            settings.records_url, settings.state_url, workers=workers,
            state_prefix=settings.state_prefix,
            records_key="authentication.records_url", state_key="authentication.state_url",
        )
        self.keys = ApiKeyService(self.stores.api_keys, self.stores.state, self.hasher)
        self.accounts = AccountService(self.stores.accounts, self.stores.state)
        self.applications = ApplicationCache(self.stores.applications)
        tokens = settings.tokens
        self.tokens = (TokenRuntime(tokens) if tokens.issuers or tokens.provider is not None
                       else None)
        cached: list[CachedService] = [self.keys, self.accounts, self.applications]
        if self.tokens is not None:
            cached.append(self.tokens.revoked)
        self.refresher = CacheRefresher(self.stores.state, cached)
        self.ready = False
        self._starting: asyncio.Lock | None = None
        self._reloader: asyncio.Task[None] | None = None
        # With process-local state, changes made by another process (the `apiforge keys`
        # command) cannot arrive through the change feed: re-read the records instead.
        self._poll_records = (settings.state_url.startswith("memory:")
                              and not settings.records_url.startswith("memory:"))

    async def start(self) -> None:
        """Load the caches and start following the change feed (once; concurrent-safe)."""
        if self.ready:
            return
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if not self.ready:
                await self.refresher.start()
                if self.tokens is not None:
                    self.tokens.start()
                if self._poll_records:
                    self._reloader = asyncio.create_task(self._reload_records())
                self.ready = True

    async def stop(self) -> None:
        if self._reloader is not None:
            self._reloader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reloader
            self._reloader = None
        if self.ready:
            await self.refresher.stop()
            self.ready = False
        if self.tokens is not None:
            await self.tokens.aclose()
        await self.stores.aclose()

    async def _reload_records(self) -> None:
        while True:
            await asyncio.sleep(RECORD_RELOAD_SECONDS)
            try:
                await self.keys.load()
                await self.accounts.load()
                await self.applications.load()
            except Exception:
                _log.exception("reloading identity records failed; keeping the cached ones")
