"""Header values that tell a client its limits: RateLimit-Policy, RateLimit, Retry-After.

Follows draft-ietf-httpapi-ratelimit-headers-09 (18 March 2025). Both fields are Structured
Field Lists (RFC 9651) of items whose value is the policy name, a String:

- ``RateLimit-Policy: "user";q=10;w=60`` — quota ``q`` (requests) per window ``w`` (seconds);
- ``RateLimit: "user";r=3;t=12`` — ``r`` requests remaining, ``t`` seconds until the quota is
  whole again.

For a GCRA limit the advertised quota is the burst (what may be sent at once from idle) and the
window is the time the bucket takes to refill completely, ``burst * period / rate``, rounded
up: a client that sends at most ``q`` requests per ``w`` seconds is never refused. A sliding
window advertises ``rate`` per ``period``.

Policies are fixed per route, so :func:`rate_limit_policy` runs once at start-up; only
:func:`rate_limit` and :func:`retry_after` run per request.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from apiforge.ratelimit.limits import Limit, Verdict

__all__ = ["rate_limit", "rate_limit_policy", "retry_after"]


def _ceil_seconds(seconds: float) -> int:
    # Round up: a client told to wait less than needed would be refused again.
    return max(0, math.ceil(seconds - 1e-9))


def rate_limit_policy(limits: Iterable[Limit]) -> str:
    """The ``RateLimit-Policy`` value announcing ``limits`` (once per route, at start-up).

    Limit names are restricted by ``Limit`` to characters that need no escaping.
    """
    return ", ".join(
        f'"{limit.name}";q={limit.quota};w={max(1, _ceil_seconds(limit.window))}'
        for limit in limits
    )


def rate_limit(binding: Verdict | None) -> str | None:
    """The ``RateLimit`` value for a decision's binding verdict (``Decision.binding``).

    Only the binding limit is sent (the one closest to refusing, or the one that refused):
    it is what the client must pace itself by, and one item keeps the header small.
    ``None`` (no limit applied) has no value.
    """
    if binding is None:
        return None
    return f'"{binding.limit.name}";r={binding.remaining};t={_ceil_seconds(binding.reset_after)}'


def retry_after(seconds: float) -> str | None:
    """``Retry-After`` (RFC 9110 section 10.2.3) in whole seconds, rounded up, at least 1.

    Returns ``None`` when the request can never pass (``math.inf``): no wait would help, and
    a made-up delay would only bring the client back.
    """
    if math.isinf(seconds) or math.isnan(seconds):
        return None
    return str(max(1, _ceil_seconds(seconds)))
