"""The policy file: models, loading, and errors that name the key.

The names below are imported on first use: the settings models of other packages import
``apiforge.policy.base``, and the policy's models import those settings, so loading the whole
package eagerly here would make the order of imports matter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_FROM_LOADER = frozenset({"DEFAULT_POLICY_PATH", "load_policy", "policy_errors"})


def __getattr__(name: str) -> Any:
    if name in _FROM_LOADER:
        from apiforge.policy import loader

        return getattr(loader, name)
    if name in __all__:
        from apiforge.policy import models

        return getattr(models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
