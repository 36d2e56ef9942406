"""The sliding-window counter: two fixed windows, the previous one weighted by overlap.

Time is cut into fixed windows of ``period``. The count of the sliding window that ends at
``now`` is estimated as ``previous * (period - elapsed) / period + current``, where
``elapsed`` is the time since the current window began. A request of weight ``cost`` is
admitted iff that estimate plus ``cost`` is at most ``limit``. The estimate assumes the
previous window's requests were spread evenly; it never lets more than ``limit`` through in
one fixed window, and at most ``2 * limit`` in the worst-case sliding span straddling two.

State is ``(window, current, previous)``; all times are integer microseconds and every
comparison is done in integers scaled by ``period`` so that Python and the Redis Lua script
agree exactly (``limit * period`` must stay below 2**52, checked by ``Limit``).
"""

from __future__ import annotations

from typing import NamedTuple

from apiforge.ratelimit.gcra import NEVER

__all__ = ["SlidingOutcome", "WindowState", "sliding_window"]

WindowState = tuple[int, int, int]
"""``(window index, count in that window, count in the window before it)``."""


class SlidingOutcome(NamedTuple):
    """One sliding-window decision (times in microseconds); fields as in ``GcraOutcome``."""

    allowed: bool
    state: WindowState | None
    remaining: int
    reset_after: int
    retry_after: int


def sliding_window(
    state: WindowState | None, now: int, period: int, limit: int, cost: int
) -> SlidingOutcome:
    """Decide one request against a sliding-window counter.

    Args:
        state: the stored state, or ``None`` for an unknown key.
        now: the current time, microseconds (injected).
        period: the window length, microseconds.
        limit: requests admitted per sliding window.
        cost: the request's weight; 0 only peeks.

    Returns:
        The decision; store ``outcome.state`` only if the request was admitted.
    """
    window = now // period
    elapsed = now - window * period
    current = previous = 0
    if state is not None:
        stored_window, stored_current, stored_previous = state
        if stored_window == window:
            current, previous = stored_current, stored_previous
        elif stored_window == window - 1:
            previous = stored_current
    # Everything below is scaled by `period`: `used / period` is the estimated count.
    used = previous * (period - elapsed) + current * period
    capacity = limit * period
    if used + cost * period <= capacity:
        current += cost
        used += cost * period
        return SlidingOutcome(
            allowed=True,
            state=(window, current, previous),
            remaining=(capacity - used) // period,
            reset_after=_idle_in(current, previous, period, elapsed),
            retry_after=0,
        )
    return SlidingOutcome(
        allowed=False,
        state=state,
        remaining=max(0, (capacity - used) // period),
        reset_after=_idle_in(current, previous, period, elapsed),
        retry_after=_retry_in(current, previous, period, elapsed, limit, cost),
    )


def _idle_in(current: int, previous: int, period: int, elapsed: int) -> int:
    """Time until the estimate falls to zero (the stored state can expire then)."""
    if current > 0:
        return 2 * period - elapsed
    if previous > 0:
        return period - elapsed
    return 0


def _retry_in(current: int, previous: int, period: int, elapsed: int, limit: int, cost: int) -> int:
    """The shortest wait after which the same request would be admitted."""
    room = limit - current - cost
    if room >= 0 and previous > 0:
        # Still in this window: wait until previous*(period - e)/period <= room.
        return period - (room * period) // previous - elapsed
    room = limit - cost
    if room < 0:
        return NEVER
    # In the next window the current count becomes the weighted one.
    wait_in_next = period - (room * period) // current if current > 0 else 0
    return period - elapsed + wait_in_next
