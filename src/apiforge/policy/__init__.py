"""The policy file: models, loading, and errors that name the key."""

from apiforge.policy.loader import DEFAULT_POLICY_PATH, load_policy, policy_errors
from apiforge.policy.models import EventsSettings, Policy, RouteSettings, parse_route_key

__all__ = [
    "DEFAULT_POLICY_PATH",
    "EventsSettings",
    "Policy",
    "RouteSettings",
    "load_policy",
    "parse_route_key",
    "policy_errors",
]
