"""The reference service: a users API protected by every layer, on embedded storage."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from apiforge.policy import Policy, load_policy

if TYPE_CHECKING:
    from apiforge.core.pipeline import ASGIApp, Pipeline
    from apiforge.events import EventBus

__all__ = ["DEMO_POLICY_PATH", "load_demo_policy", "protected_demo_app", "resolve_data_dir"]

DEMO_POLICY_PATH = Path(__file__).with_name("policy.yaml")


def load_demo_policy(path: Path | None = None) -> Policy:
    """The demo's policy: its own file unless ``path`` names another."""
    return load_policy(path or DEMO_POLICY_PATH)


def resolve_data_dir(policy: Policy, data_dir: Path) -> Policy:
    """The policy with ``{data_dir}`` in the authentication section replaced by ``data_dir``."""
    auth = policy.authentication
    changes = {
        name: value.replace("{data_dir}", str(data_dir.resolve()))
        for name in ("records_url", "state_url", "pepper_file")
        if isinstance(value := getattr(auth, name), str)
    }
    return policy.model_copy(update={"authentication": auth.model_copy(update=changes)})


def protected_demo_app(
    data_dir: Path,
    policy: Policy | None = None,
    events: EventBus | None = None,
    app: ASGIApp | None = None,
) -> Pipeline:
    """The demo users API (or ``app``) behind every layer its policy names.

    Call it with no event loop running: the first start of a data directory creates the
    demo's pepper, application, API key and accounts (``demo-credentials.json``).
    """
    import asyncio

    from apiforge.demo.app import create_app
    from apiforge.demo.bootstrap import ensure_demo_identity
    from apiforge.demo.schemas import ProfileUpdate
    from apiforge.identity.runtime import IdentityRuntime, ensure_pepper_file
    from apiforge.protection import protect

    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    resolved = resolve_data_dir(policy or load_demo_policy(), data_dir)
    if resolved.authentication.pepper_file:
        ensure_pepper_file(Path(resolved.authentication.pepper_file))

    async def bootstrap() -> None:
        runtime = IdentityRuntime(resolved.authentication)
        try:
            await ensure_demo_identity(runtime, data_dir)
        finally:
            await runtime.stores.aclose()

    asyncio.run(bootstrap())
    return protect(app or create_app(data_dir), resolved, events=events,
                   models={"PUT /v1/users/me": ProfileUpdate})
