"""The demo's authorization section, as the engine, tools and CLI tests use it."""

from __future__ import annotations

from typing import Any

import pytest

from apiforge.access import AuthorizationSettings, Authorizer

OWN = "resource.id == principal.user_id"

DEMO_AUTHORIZATION: dict[str, Any] = {
    "roles": {
        "user": {"permissions": [{"permission": "users:read", "when": OWN},
                                 {"permission": "users:update", "when": OWN}]},
        "support": {"inherits": ["user"], "permissions": ["users:read"]},
        "admin": {"inherits": ["support"],
                  "permissions": ["users:update_any", "users:suspend"]},
    },
    "rules": [
        {"name": "no-self-suspend", "effect": "deny", "permissions": ["users:suspend"],
         "when": OWN},
    ],
    "resources": {
        "user": {
            "read": "users:read",
            "fields": {
                "support": {"read": {"deny": ["email", "age"]}},
                "user": {"write": {"allow": ["email", "age", "bio"]}},
            },
        },
    },
}


@pytest.fixture
def demo() -> Authorizer:
    return Authorizer(AuthorizationSettings.model_validate(DEMO_AUTHORIZATION))


def authorizer(**section: Any) -> Authorizer:
    return Authorizer(AuthorizationSettings.model_validate(section))
