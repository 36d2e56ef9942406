"""APIForge: the API security layer for ASGI apps and upstream APIs.

``apiforge.protect(app, policy)`` wraps an ASGI app in every layer the policy names.
"""

from apiforge.authorization import authorize, require, requires
from apiforge.core.context import Principal, RequestContext, get_context
from apiforge.errors import (
    ApiError,
    ApiForgeError,
    ConfigurationError,
    FieldError,
    StoreError,
    ValidationFailed,
)
from apiforge.identity.token_runtime import verify_token
from apiforge.policy import Policy, load_policy
from apiforge.protection import protect

__version__ = "0.1.0"

__all__ = [
    "ApiError",
    "ApiForgeError",
    "ConfigurationError",
    "FieldError",
    "Policy",
    "Principal",
    "RequestContext",
    "StoreError",
    "ValidationFailed",
    "__version__",
    "authorize",
    "get_context",
    "load_policy",
    "protect",
    "require",
    "requires",
    "verify_token",
]
