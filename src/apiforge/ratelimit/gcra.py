"""GCRA, the generic cell rate algorithm: a leaky bucket kept as one timestamp.

The state of a key is its *theoretical arrival time* (TAT): the instant at which the bucket
would be empty again if nothing else arrived. A request of weight ``cost`` moves the TAT
``cost`` emission intervals later; it is admitted when the new TAT is no further ahead of
``now`` than the delay-variation tolerance.

Definitions used everywhere in APIForge (docs/rate-limits.md restates them):

- ``emission`` (T): the time one unit of the rate is worth, ``period / rate``;
- ``burst`` (B): the number of unit requests admitted *at once* from idle. With burst B, B
  requests at ``t=0`` pass and the B+1-th is refused; after that, one more passes every T;
- ``tolerance`` (tau): ``B * T``. A request is admitted iff ``max(tat, now) + cost*T - now <= tau``.

All times are integer microseconds, so the same arithmetic runs bit for bit in Python and in
the Redis Lua script (Lua numbers are doubles: microseconds since the epoch stay far below
2**53 and are exact, nanoseconds would not be). Floats are avoided on purpose: with
``period=1, rate=3`` a float T summed three times exceeds ``3*T`` and the third request of a
full burst would be refused.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["NEVER", "GcraOutcome", "gcra"]

NEVER = -1
"""``retry_after`` of a request heavier than the burst: it can never be admitted."""


class GcraOutcome(NamedTuple):
    """One GCRA decision (times in microseconds).

    Attributes:
        allowed: whether the request is admitted.
        tat: the TAT to store; unchanged when refused (a refusal charges nothing).
        remaining: unit requests that would still be admitted at ``now`` after this one.
        reset_after: time until the bucket is fully idle again (the key may expire then).
        retry_after: 0 when allowed; otherwise the wait before the same request would pass,
            or :data:`NEVER` when ``cost`` exceeds the burst.
    """

    allowed: bool
    tat: int | None
    remaining: int
    reset_after: int
    retry_after: int


def gcra(tat: int | None, now: int, emission: int, tolerance: int, cost: int) -> GcraOutcome:
    """Decide one request against one GCRA bucket.

    Args:
        tat: the stored theoretical arrival time, or ``None`` for an idle (unknown) key.
        now: the current time, microseconds; injected so tests control the clock.
        emission: T, microseconds per unit request (``ceil(period / rate)``).
        tolerance: tau, ``burst * emission``.
        cost: the request's weight; 0 only peeks at the state.

    Returns:
        The decision; store ``outcome.tat`` only if the request was admitted.
    """
    base = tat if tat is not None and tat > now else now
    increment = cost * emission
    new_tat = base + increment
    allow_at = new_tat - tolerance
    if now < allow_at:
        idle_in = base - now
        return GcraOutcome(
            allowed=False,
            tat=tat,
            remaining=max(0, (tolerance - idle_in) // emission),
            reset_after=idle_in,
            retry_after=allow_at - now if increment <= tolerance else NEVER,
        )
    idle_in = new_tat - now
    return GcraOutcome(
        allowed=True,
        tat=new_tat,
        remaining=max(0, (tolerance - idle_in) // emission),
        reset_after=idle_in,
        retry_after=0,
    )
