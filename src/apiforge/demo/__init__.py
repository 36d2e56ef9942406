"""The reference service: a users API protected by every layer, on embedded storage."""

from __future__ import annotations

from pathlib import Path

from apiforge.policy import Policy, load_policy

__all__ = ["DEMO_POLICY_PATH", "load_demo_policy"]

DEMO_POLICY_PATH = Path(__file__).with_name("policy.yaml")


def load_demo_policy(path: Path | None = None) -> Policy:
    """The demo's policy: its own file unless ``path`` names another."""
    return load_policy(path or DEMO_POLICY_PATH)
