"""The reference service: a users API protected by every layer, on embedded storage."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from apiforge.policy import Policy, load_policy

if TYPE_CHECKING:
    from apiforge.core.pipeline import ASGIApp, Pipeline
    from apiforge.events import EventBus

__all__ = ["DEMO_POLICY_PATH", "load_demo_policy", "prepare_demo_data", "protected_demo_app",
           "resolve_data_dir"]

DEMO_POLICY_PATH = Path(__file__).with_name("policy.yaml")


def load_demo_policy(path: Path | None = None) -> Policy:
    """The demo's policy: its own file unless ``path`` names another."""
    return load_policy(path or DEMO_POLICY_PATH)


def resolve_data_dir(policy: Policy, data_dir: Path) -> Policy:
    """The policy with ``{data_dir}`` in the authentication section replaced by ``data_dir``."""
    auth = policy.authentication
    here = str(data_dir.resolve())
    changes: dict[str, object] = {
        name: value.replace("{data_dir}", here)
        for name in ("records_url", "state_url", "pepper_file")
        if isinstance(value := getattr(auth, name), str)
    }
    provider = auth.tokens.provider
    if provider is not None:
        provider = provider.model_copy(
            update={"keyring_file": provider.keyring_file.replace("{data_dir}", here)})
        changes["tokens"] = auth.tokens.model_copy(update={"provider": provider})
    return policy.model_copy(update={"authentication": auth.model_copy(update=changes)})


def prepare_demo_data(data_dir: Path, policy: Policy | None = None) -> Policy:
    """Create the demo's first-start data in ``data_dir`` unless it is there already.

    That is its pepper, signing keys, application, API key and accounts
    (``demo-credentials.json``). Call it with no event loop running. Returns the policy with
    ``{data_dir}`` resolved.
    """
    import asyncio

    from apiforge.demo.bootstrap import ensure_demo_identity
    from apiforge.identity.runtime import IdentityRuntime, ensure_pepper_file

    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    resolved = resolve_data_dir(policy or load_demo_policy(), data_dir)
    if resolved.authentication.pepper_file:
        ensure_pepper_file(Path(resolved.authentication.pepper_file))

    async def bootstrap() -> None:
        runtime = IdentityRuntime(resolved.authentication)
        try:
            await ensure_demo_identity(runtime, data_dir)
        finally:
            await runtime.stop()

    asyncio.run(bootstrap())
    return resolved


def protected_demo_app(
    data_dir: Path,
    policy: Policy | None = None,
    events: EventBus | None = None,
    app: ASGIApp | None = None,
) -> Pipeline:
    """The demo users API (or ``app``) behind every layer its policy names.

    Call it with no event loop running: the first start of a data directory creates the
    demo's pepper, signing keys, application, API key and accounts (``demo-credentials.json``).
    With ``app``, the identity provider's routes are not served (the app is benchmarked alone).
    """
    from apiforge.core.pipeline import event_bus
    from apiforge.demo.app import create_app
    from apiforge.demo.auth import auth_routes
    from apiforge.demo.schemas import ProfileUpdate
    from apiforge.identity.runtime import IdentityRuntime
    from apiforge.protection import protect

    resolved = prepare_demo_data(data_dir, policy)
    bus = events if events is not None else event_bus(resolved.events)
    identity = IdentityRuntime(resolved.authentication)
    if app is None:
        # The provider's routes live in the demo app and read its repository: the app is made
        # with them, and they reach the repository through it once it exists.
        made: list[Any] = []

        def users() -> Any:
            return made[0].state.users

        routes = auth_routes(_token_service(resolved, identity), _guessing_backoff(resolved),
                             identity.accounts, users, bus, identity.start,
                             identity.refresher.poll_once)
        made.append(create_app(data_dir, extra_routes=routes))
        app, resources = made[0], _resource_loaders(users)
    else:  # another app over the same data: the rules still see the stored profiles
        resources = _resource_loaders(_own_repository(data_dir))
    pipeline = protect(app, resolved, events=bus, identity=identity,
                       models={"PUT /v1/users/me": ProfileUpdate,
                               "PUT /v1/users/{id}": ProfileUpdate},
                       resources=resources)
    pipeline.owns_events = events is None
    return pipeline


def _token_service(policy: Policy, identity: Any) -> Any:
    from apiforge.errors import ConfigurationError
    from apiforge.identity.token_service import TokenService
    from apiforge.stores import open_refresh_store

    provider = policy.authentication.tokens.provider
    tokens = identity.tokens
    if provider is None or tokens is None or tokens.keyring is None:
        raise ConfigurationError(
            "the demo issues its own tokens: set authentication.tokens.provider in its policy"
        )
    return TokenService(
        identity.accounts, tokens.keyring,
        open_refresh_store(policy.authentication.records_url), identity.stores.state,
        issuer=provider.issuer, audience=provider.audience, access_ttl=provider.access_ttl,
        refresh_idle=provider.refresh_idle, refresh_absolute=provider.refresh_absolute,
        verifier=tokens.verifier,
    )


def _guessing_backoff(policy: Policy) -> Any:
    from apiforge.ratelimit.backoff import GuessingBackoff, MemoryBackoffStore, RedisBackoffStore

    settings = policy.rate_limits
    store: Any
    if settings.store.startswith("memory://"):
        store = MemoryBackoffStore()
    else:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # Fail fast, as the rate limits do: a dead store costs a login milliseconds.
        client = Redis.from_url(settings.store, protocol=2, socket_timeout=settings.timeout,
                                socket_connect_timeout=settings.timeout,
                                retry=Retry(NoBackoff(), 0))
        store = RedisBackoffStore(client, settings.prefix + "bo:")
    guessing = settings.guessing
    return GuessingBackoff(store, free=guessing.free, base=guessing.base,
                           ceiling=guessing.ceiling)


def _resource_loaders(users: Any) -> dict[str, Any]:
    """The objects authorization rules see, by route: a profile as the API returns it."""
    from apiforge.core.context import RequestContext

    def caller(ctx: RequestContext) -> dict[str, Any] | None:
        # "me" is the caller's own profile by definition: no query needed to decide on it.
        principal = ctx.principal
        return {"username": principal.username} if principal and principal.username else None

    def by_id(ctx: RequestContext) -> dict[str, Any] | None:
        raw = ctx.path_params.get("id", "")
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
            return None
        user = users().get_by_id(int(raw))
        return None if user is None else dict(user.to_public())

    # Reads need no loader: their answers are checked (`check_response`), and the decision is
    # made on the object the app returns. Writes are decided before the handler runs.
    return {
        "PUT /v1/users/me": caller,
        "PUT /v1/users/{id}": by_id,
        "POST /v1/users/{id}/suspend": by_id,
    }


def _own_repository(data_dir: Path) -> Any:
    from apiforge.demo.app import DATABASE_FILENAME
    from apiforge.demo.db import UserRepository

    opened: list[UserRepository] = []

    def users() -> UserRepository:
        if not opened:
            repository = UserRepository(data_dir / DATABASE_FILENAME)
            repository.create_schema_and_seed()
            opened.append(repository)
        return opened[0]

    return users
