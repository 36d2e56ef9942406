"""Rate limits kept in this process's memory.

Correct for exactly one process. With several workers each process keeps its own counters
and the effective limit is multiplied by the number of workers (slowapi #226), so
``MemoryLimiter.shared_across_processes`` is ``False`` and the policy must refuse a memory
limiter when more than one worker runs; use :class:`~apiforge.ratelimit.RedisLimiter` there.

Checks run synchronously with no ``await`` between reading and writing a state, so on one
event loop no other request can interleave with a check (no lock is needed, and none that
would only hold within one process, as in Litestar #4700, is pretended to be enough).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import ClassVar

from apiforge.ratelimit.limits import (
    Decision,
    Identities,
    Limit,
    State,
    Verdict,
    applicable,
    combine,
    decide,
)

__all__ = ["MemoryLimiter"]

_MICROS = 1_000_000


class MemoryLimiter:
    """An in-process limiter; states expire when their bucket is idle again.

    Args:
        clock: seconds, monotonic; used when a check passes no ``now``.
        min_sweep: entries kept before the first sweep of expired states. Sweeps run when the
            table doubles, so memory stays bounded by twice the live keys (an attacker who
            spreads over many addresses costs one entry per address per idle period) at an
            amortized O(1) cost per check.
    """

    shared_across_processes: ClassVar[bool] = False
    """Refuse this limiter with more than one worker process: each worker would admit the
    whole limit, multiplying it by the number of workers (slowapi #226)."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, *, min_sweep: int = 10_000
    ) -> None:
        self._clock = clock
        self._states: dict[str, tuple[int, State]] = {}
        self._min_sweep = min_sweep
        self._sweep_at = min_sweep

    def __len__(self) -> int:
        """Stored states, live or expired but not yet swept."""
        return len(self._states)

    def check_all_sync(
        self, limits: Sequence[Limit], identities: Identities, now: float | None = None
    ) -> Decision:
        """Decide and charge ``limits`` all-or-nothing (see :func:`~.limits.check_all`)."""
        now_us = round((self._clock() if now is None else now) * _MICROS)
        found = applicable(limits, identities)
        states = self._states
        if self.admit(found, now_us) is not None:  # the common case: every limit admits
            # A GCRA state expires at its arrival time: the first item is the new one.
            return _admitted(found, [states[key][0] for _, key in found], now_us)
        stored: list[State | None] = []
        for _, key in found:
            entry = states.get(key)
            stored.append(entry[1] if entry is not None and entry[0] > now_us else None)
        decision, writes = decide(found, stored, now_us)
        for key, state, ttl in writes:
            states[key] = (now_us + ttl, state)
        if len(states) > self._sweep_at:
            self._sweep(now_us)
        return decision

    def admit(self, found: Sequence[tuple[Limit, str]], now_us: int | None = None
              ) -> Verdict | None:
        """The hot path of a request under GCRA limits that all admit it: charge them and
        return the binding limit's verdict (the one its ``RateLimit`` header advertises).

        ``found`` holds the applicable limits and their keys (:func:`~.limits.applicable`).
        Returns ``None``, having changed nothing, when a limit refuses or is not GCRA, or when
        none applies: call :meth:`check_all_sync` then, for the whole decision.
        """
        if now_us is None:
            now_us = round(self._clock() * _MICROS)
        states = self._states
        new_tats: list[int] = []
        best = -1
        best_remaining = best_idle = 0
        # One pass: gcra()'s arithmetic for a request every limit admits, and combine()'s
        # choice of the binding limit (the fewest remaining, then the longest reset, then the
        # first); tests compare both with the general path.
        for index, (limit, key) in enumerate(found):
            if limit.code != "g":
                return None
            entry = states.get(key)
            tat = entry[1] if entry is not None and entry[0] > now_us else now_us
            if not isinstance(tat, int):
                return None  # not a GCRA state: the general path decides
            wait = tat - now_us
            idle_in = (wait if wait > 0 else 0) + limit.increment
            if idle_in > limit.tolerance:
                return None  # refused: check_all_sync reports it
            remaining = (limit.tolerance - idle_in) // limit.emission
            if best < 0 or remaining < best_remaining or (
                    remaining == best_remaining and idle_in > best_idle):
                best, best_remaining, best_idle = index, remaining, idle_in
            new_tats.append(now_us + idle_in)
        if best < 0:
            return None  # no limit applies: nothing to advertise
        for (_, key), new_tat in zip(found, new_tats, strict=True):
            states[key] = (new_tat, new_tat)
        if len(states) > self._sweep_at:
            self._sweep(now_us)
        limit, key = found[best]
        # tuple.__new__: the namedtuple's own __new__ is a Python call, and this is per request.
        return tuple.__new__(Verdict, (limit, key, True, best_remaining, best_idle / _MICROS, 0.0))

    async def check_all(
        self, limits: Sequence[Limit], identities: Identities, now: float | None = None
    ) -> Decision:
        """Async form of :meth:`check_all_sync`, for the ``Limiter`` protocol."""
        return self.check_all_sync(limits, identities, now)

    def _sweep(self, now_us: int) -> None:
        self._states = {k: v for k, v in self._states.items() if v[0] > now_us}
        self._sweep_at = max(self._min_sweep, 2 * len(self._states))

    async def aclose(self) -> None:
        """Drop every state."""
        self._states.clear()


def _admitted(found: Sequence[tuple[Limit, str]], new_tats: Sequence[int], now_us: int
              ) -> Decision:
    """The decision of a request every GCRA limit admitted, from the new arrival times."""
    verdicts = []
    for (limit, key), new_tat in zip(found, new_tats, strict=True):
        idle_in = new_tat - now_us
        remaining = (limit.tolerance - idle_in) // limit.emission
        verdicts.append(Verdict(limit, key, True, remaining if remaining > 0 else 0,
                                idle_in / _MICROS, 0.0))
    return combine(verdicts)
