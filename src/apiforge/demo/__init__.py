"""The reference service: a users API protected by every layer, on embedded storage."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from apiforge.policy import Policy, load_policy

if TYPE_CHECKING:
    from apiforge.core.pipeline import Pipeline
    from apiforge.events import EventBus

__all__ = ["DEMO_POLICY_PATH", "load_demo_policy", "protected_demo_app"]

DEMO_POLICY_PATH = Path(__file__).with_name("policy.yaml")


def load_demo_policy(path: Path | None = None) -> Policy:
    """The demo's policy: its own file unless ``path`` names another."""
    return load_policy(path or DEMO_POLICY_PATH)


def protected_demo_app(
    data_dir: Path, policy: Policy | None = None, events: EventBus | None = None
) -> Pipeline:
    """The demo users API behind every layer its policy names."""
    from apiforge.demo.app import create_app
    from apiforge.demo.schemas import ProfileUpdate
    from apiforge.protection import protect

    return protect(create_app(data_dir), policy or load_demo_policy(), events=events,
                   models={"PUT /v1/users/me": ProfileUpdate})
