"""Safe third-party integration: the outbound HTTP client factory (the seed of the egress guard).

Webhook verification and the secret vault join this package later.
"""

from __future__ import annotations

from apiforge.integrations.http_client import (
    EgressError,
    EgressRefused,
    HttpClientFactory,
    ResponseTooLarge,
    check_address,
)

__all__ = [
    "EgressError",
    "EgressRefused",
    "HttpClientFactory",
    "ResponseTooLarge",
    "check_address",
]
