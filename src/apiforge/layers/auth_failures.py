"""Failed authentications per client address: a cheap gate before any expensive check.

A forged bearer token costs its sender a few bytes and us one signature verification (~50 µs
for ES256). Each failure is charged to the client's address (IPv6 by /64) in an in-process
GCRA; an address over its budget is refused with 429 before its next token is even decoded.
The guard protects this process's CPU, so its budget is per process on purpose: it needs no
store round trip, and a shared store being down cannot switch it off.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from apiforge.errors import TooManyRequests
from apiforge.ratelimit.headers import retry_after
from apiforge.ratelimit.limits import Identities, Limit, address_group
from apiforge.ratelimit.memory import MemoryLimiter

__all__ = ["AuthFailureGuard"]

_MAX_BLOCKED = 100_000


class AuthFailureGuard:
    """Counts authentication failures per address and refuses addresses over budget.

    Args:
        rate: failures allowed per ``period`` in the long run.
        period: seconds.
        burst: failures allowed at once from idle.
        clock: monotonic seconds.
    """

    def __init__(self, rate: int, period: float, burst: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._limits = (Limit("address", rate, period, burst, name="auth-failures"),)
        self._counter = MemoryLimiter(clock)
        self._blocked: dict[str, float] = {}
        self._clock = clock

    def check(self, address: str) -> None:
        """Refuse ``address`` (429) while it is over its failure budget; otherwise nothing."""
        if not self._blocked:
            return
        group = address_group(address)
        until = self._blocked.get(group)
        if until is None:
            return
        wait = until - self._clock()
        if wait <= 0:
            del self._blocked[group]
            return
        value = retry_after(wait)
        raise TooManyRequests(headers=(("retry-after", value),) if value else (),
                              reason="auth_failures")

    def failed(self, address: str) -> None:
        """Charge one failure to ``address``; past the budget, block it until it has refilled
        enough for one more attempt."""
        decision = self._counter.check_all_sync(self._limits, Identities(address=address))
        if decision.allowed:
            return
        if len(self._blocked) >= _MAX_BLOCKED:
            now = self._clock()
            self._blocked = {k: v for k, v in self._blocked.items() if v > now}
        self._blocked[address_group(address)] = self._clock() + decision.retry_after
