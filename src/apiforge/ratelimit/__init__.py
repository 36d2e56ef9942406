"""Rate limiting: algorithms (GCRA, sliding window), the limit model, and limiters.

What is limited (:class:`Limit`, :class:`Identities`), how (:mod:`.gcra`,
:mod:`.sliding_window`) and where the counters live (:class:`MemoryLimiter` for one process,
:class:`RedisLimiter` shared by every process, :class:`FallbackLimiter` for the policy's
``on_store_error: local``) are separate; every limiter passes one contract suite. The
algorithms are plain Python with an injected clock and know nothing of HTTP.
"""

from typing import TYPE_CHECKING

from apiforge.ratelimit.gcra import NEVER, GcraOutcome, gcra
from apiforge.ratelimit.headers import rate_limit, rate_limit_policy, retry_after
from apiforge.ratelimit.limits import (
    Decision,
    Identities,
    Limit,
    Limiter,
    Scope,
    Verdict,
    address_group,
    applicable,
    check_all,
)
from apiforge.ratelimit.memory import MemoryLimiter
from apiforge.ratelimit.sliding_window import SlidingOutcome, sliding_window

if TYPE_CHECKING:
    from apiforge.ratelimit.redis_limiter import FallbackLimiter, RedisLimiter

__all__ = [
    "NEVER",
    "Decision",
    "FallbackLimiter",
    "GcraOutcome",
    "Identities",
    "Limit",
    "Limiter",
    "MemoryLimiter",
    "RedisLimiter",
    "Scope",
    "SlidingOutcome",
    "Verdict",
    "address_group",
    "applicable",
    "check_all",
    "gcra",
    "rate_limit",
    "rate_limit_policy",
    "retry_after",
    "sliding_window",
]


def __getattr__(name: str) -> object:
    # redis is an optional dependency: import the Redis limiters only when asked for.
    if name in ("RedisLimiter", "FallbackLimiter"):
        from apiforge.ratelimit import redis_limiter

        return getattr(redis_limiter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
