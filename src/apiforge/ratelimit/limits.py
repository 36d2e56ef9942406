"""What is limited: the ``Limit`` model, the key of each limit, and the decision of a request.

A request is usually under several limits at once (per address, per API key, per user, per
route, global). :func:`check_all` decides them together and charges them **all or none**: if
one limit refuses, no other limit is charged, so a refused request never eats into a quota it
did not use, and the order in which limits are listed changes nothing.

Key per scope (the part after the limit's name):

- ``address``: the client address the transport layer resolved; IPv4-mapped IPv6
  (``::ffff:192.0.2.1``) becomes the IPv4 address, and IPv6 addresses are grouped by their
  /64, because one subscriber usually holds a whole /64 and would otherwise get 2**64 fresh
  limits;
- ``key``, ``user``: the authenticated API key id or user id;
- ``route``: the route's name (one budget shared by every caller of the route);
- ``global``: one budget for everything.

A limit whose identity is missing (a ``user`` limit on an anonymous request) does not apply.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal, NamedTuple, Protocol, TypeAlias

from apiforge.core.client import address_group
from apiforge.ratelimit.gcra import NEVER, gcra
from apiforge.ratelimit.sliding_window import WindowState, sliding_window

__all__ = [
    "Algorithm",
    "Decision",
    "Identities",
    "Limit",
    "Limiter",
    "Scope",
    "State",
    "Verdict",
    "address_group",
    "applicable",
    "check_all",
    "combine",
    "decide",
    "evaluate",
    "verdict",
]

Scope: TypeAlias = Literal["address", "key", "user", "route", "global"]
Algorithm: TypeAlias = Literal["gcra", "sliding_window"]
State: TypeAlias = int | WindowState
"""A stored state: a GCRA theoretical arrival time, or a sliding-window triple."""

_SCOPES: frozenset[str] = frozenset(("address", "key", "user", "route", "global"))
_ALGORITHM_CODES: dict[str, str] = {"gcra": "g", "sliding_window": "s"}
_MICROS = 1_000_000
# Lua numbers are doubles: products computed by the script must stay exact.
_EXACT = 2**52
_MAX_IDENTITY = 128


@dataclass(frozen=True, slots=True)
class Limit:
    """One rate limit.

    Args:
        scope: whose budget this is (see the module docstring for the key of each scope).
        rate: requests admitted per ``period`` in the long run.
        period: seconds.
        burst: GCRA: requests admitted at once from idle (B requests at t=0 pass, the B+1-th
            is refused, then one more every ``period / rate``). Sliding window: must equal
            ``rate`` (the window admits ``rate`` per ``period``; there is no separate burst).
        cost: weight of one request against this limit (an expensive route can cost 5).
        algorithm: ``gcra`` (the default: smooth, one timestamp per key) or
            ``sliding_window``.
        name: distinguishes several limits of one scope (a per-user limit on one route and
            the user's overall limit); defaults to the scope. Part of the stored key.

    Raises:
        ValueError: on a limit that cannot work (non-positive numbers, a cost heavier than
            the burst, which no request could ever pass, or numbers too large to be exact).
    """

    scope: Scope
    rate: int
    period: float
    burst: int
    cost: int = 1
    algorithm: Algorithm = "gcra"
    name: str = ""
    emission: int = field(init=False, repr=False, compare=False)
    """GCRA: microseconds per unit request, rounded up so the rate is never exceeded."""
    tolerance: int = field(init=False, repr=False, compare=False)
    """GCRA: ``burst * emission``."""
    increment: int = field(init=False, repr=False, compare=False)
    """GCRA: ``cost * emission``, what one request adds to the arrival time."""
    period_us: int = field(init=False, repr=False, compare=False)
    code: str = field(init=False, repr=False, compare=False)
    key_head: str = field(init=False, repr=False, compare=False)
    """``<name>:<algorithm code>:``, the start of every stored key of this limit."""
    script_args: tuple[str | int, ...] = field(init=False, repr=False, compare=False)
    """This limit's four arguments of the Redis script (``ratelimit.lua``)."""

    def __post_init__(self) -> None:
        if self.scope not in _SCOPES:
            raise ValueError(f"scope {self.scope!r} is not one of {sorted(_SCOPES)}")
        if self.algorithm not in _ALGORITHM_CODES:
            raise ValueError(f"algorithm {self.algorithm!r} is not 'gcra' or 'sliding_window'")
        if self.rate < 1 or self.burst < 1 or self.cost < 1:
            raise ValueError("rate, burst and cost must be at least 1")
        if not (math.isfinite(self.period) and self.period > 0):
            raise ValueError("period must be a positive number of seconds")
        if self.cost > self.burst:
            raise ValueError(
                f"cost {self.cost} exceeds burst {self.burst}: no request could ever pass"
            )
        name = self.name or self.scope
        if any(c in name for c in ":{} ") or len(name) > 64:
            raise ValueError(f"limit name {name!r} must be short, without ':', '{{', '}}', ' '")
        period_us = round(self.period * _MICROS)
        if period_us < 1:
            raise ValueError("period must be at least one microsecond")
        emission = -(-period_us // self.rate)
        if self.algorithm == "sliding_window":
            if self.burst != self.rate:
                raise ValueError("a sliding_window limit has no separate burst: set burst = rate")
            if self.rate * period_us >= _EXACT:
                raise ValueError("rate * period is too large for an exact sliding window")
        elif self.burst * emission >= _EXACT // 4:
            raise ValueError("burst * period / rate is too large")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "emission", emission)
        object.__setattr__(self, "tolerance", self.burst * emission)
        object.__setattr__(self, "increment", self.cost * emission)
        object.__setattr__(self, "period_us", period_us)
        object.__setattr__(self, "code", _ALGORITHM_CODES[self.algorithm])
        object.__setattr__(self, "key_head", f"{name}:{self.code}:")
        object.__setattr__(self, "script_args", (
            (self.code, emission, self.burst * emission, self.cost)
            if self.algorithm == "gcra" else (self.code, period_us, self.rate, self.cost)))

    @property
    def quota(self) -> int:
        """Requests a client may send at once from idle (the ``q`` of ``RateLimit-Policy``)."""
        return self.burst

    @property
    def window(self) -> float:
        """Seconds to regain the whole quota: ``burst * period / rate`` (GCRA) or ``period``."""
        if self.algorithm == "gcra":
            return self.tolerance / _MICROS
        return self.period


class Identities(NamedTuple):
    """Who and what a request is, as far as limits care. ``None`` means unknown/absent.

    Args:
        address: the client address resolved across trusted proxies only (never the first
            ``X-Forwarded-For`` value, which the client writes: a fresh limit per request).
        key: the authenticated API key id.
        user: the authenticated user id.
        route: the matched route's name.
    """

    address: str | None = None
    key: str | None = None
    user: str | None = None
    route: str | None = None


class Verdict(NamedTuple):
    """The outcome of one limit for one request (seconds)."""

    limit: Limit
    key: str
    allowed: bool
    remaining: int
    reset_after: float
    retry_after: float
    """0 when allowed; ``math.inf`` when the request can never pass this limit."""


class Decision(NamedTuple):
    """The outcome of every limit of one request.

    Attributes:
        allowed: every applicable limit admitted the request (and all were charged).
        remaining: the smallest remaining count over the limits.
        reset_after: seconds until the binding limit is fully idle.
        retry_after: 0 when allowed; otherwise the longest wait any refusing limit asks for.
        verdicts: one per applicable limit, in the order the limits were given.
        binding: the verdict to advertise in headers: the refusal with the longest wait, or
            the limit with the fewest remaining; ``None`` when no limit applied.
    """

    allowed: bool
    remaining: int
    reset_after: float
    retry_after: float
    verdicts: tuple[Verdict, ...]
    binding: Verdict | None


class Limiter(Protocol):
    """A store that decides limits: :class:`MemoryLimiter`, :class:`RedisLimiter`, ..."""

    shared_across_processes: ClassVar[bool]
    """Whether N worker processes see one budget. ``False`` limiters must be refused with
    more than one worker: each process would admit the whole limit (slowapi #226)."""

    async def check_all(
        self, limits: Sequence[Limit], identities: Identities, now: float | None = None
    ) -> Decision:
        """Decide and charge ``limits`` all-or-nothing; raises ``StoreError`` on failure."""
        ...


# Where each scope's identity sits in an ``Identities`` tuple (``global`` has none).
_SLOTS: dict[str, int] = {"address": 0, "key": 1, "user": 2, "route": 3}


def _identity(limit: Limit, identities: Identities) -> str | None:
    scope = limit.scope
    if scope == "global":
        return "*"
    value = identities[_SLOTS[scope]]
    if value is None:
        return None
    if scope == "address":
        return address_group(value)
    if len(value) > _MAX_IDENTITY:
        # Bound the key's size whatever an identifier looks like.
        return "h-" + hashlib.sha256(value.encode()).hexdigest()
    return value


def applicable(
    limits: Iterable[Limit], identities: Identities, prefix: str = ""
) -> list[tuple[Limit, str]]:
    """The limits that apply to a request, each with its store key.

    The key is ``<prefix><name>:<algorithm>:<identity>``; the algorithm is part of it so that
    a changed configuration never reads a state written by the other algorithm.
    """
    found: list[tuple[Limit, str]] = []
    for limit in limits:
        identity = _identity(limit, identities)
        if identity is not None:
            found.append((limit, prefix + limit.key_head + identity))
    return found


def evaluate(
    limit: Limit, state: State | None, now: int, cost: int
) -> tuple[bool, State | None, int, int, int]:
    """One limit's raw decision: ``(allowed, new state, remaining, reset µs, retry µs)``."""
    if limit.algorithm == "gcra":
        tat = state if isinstance(state, int) else None
        g = gcra(tat, now, limit.emission, limit.tolerance, cost)
        return g.allowed, g.tat, g.remaining, g.reset_after, g.retry_after
    window = state if isinstance(state, tuple) else None
    s = sliding_window(window, now, limit.period_us, limit.rate, cost)
    return s.allowed, s.state, s.remaining, s.reset_after, s.retry_after


def _seconds(micros: int) -> float:
    return math.inf if micros == NEVER else micros / _MICROS


def verdict(
    limit: Limit, key: str, allowed: bool, remaining: int, reset_us: int, retry_us: int
) -> Verdict:
    """A :class:`Verdict` from a raw decision in microseconds."""
    return Verdict(limit, key, allowed, remaining, _seconds(reset_us), _seconds(retry_us))


_NO_LIMIT = Decision(True, 2**31 - 1, 0.0, 0.0, (), None)


def combine(verdicts: Sequence[Verdict]) -> Decision:
    """The decision of a request from its verdicts (already all-or-nothing)."""
    if not verdicts:
        return _NO_LIMIT
    if len(verdicts) == 1:
        v = verdicts[0]
        return Decision(v.allowed, v.remaining, v.reset_after, v.retry_after, (v,), v)
    refused = [v for v in verdicts if not v.allowed]
    if refused:
        binding = max(refused, key=lambda v: v.retry_after)
        return Decision(
            False,
            min(v.remaining for v in verdicts),
            binding.reset_after,
            binding.retry_after,
            tuple(verdicts),
            binding,
        )
    binding = min(verdicts, key=lambda v: (v.remaining, -v.reset_after))
    return Decision(True, binding.remaining, binding.reset_after, 0.0, tuple(verdicts), binding)


def decide(
    found: Sequence[tuple[Limit, str]], stored: Sequence[State | None], now_us: int
) -> tuple[Decision, list[tuple[str, State, int]]]:
    """Decide limits all-or-nothing from their stored states; no I/O.

    Args:
        found: the applicable limits and their keys (from :func:`applicable`).
        stored: the state of each key, aligned with ``found`` (``None`` when absent).
        now_us: the current time, integer microseconds.

    Returns:
        The decision and the writes to make: ``(key, new state, time to live µs)`` for every
        limit when the request is admitted, nothing when it is refused (a refusal charges no
        limit, not even those that would have admitted it).
    """
    raw = []
    admitted = True
    for (limit, _), state in zip(found, stored, strict=True):
        r = evaluate(limit, state, now_us, limit.cost)
        admitted = admitted and r[0]
        raw.append(r)
    writes: list[tuple[str, State, int]] = []
    verdicts: list[Verdict] = []
    for index, (limit, key) in enumerate(found):
        r = raw[index]
        if admitted:
            if r[1] is not None and r[3] > 0:
                writes.append((key, r[1], r[3]))
        elif r[0]:
            # Report the uncharged standing of a limit that would have admitted it.
            r = evaluate(limit, stored[index], now_us, 0)
        verdicts.append(verdict(limit, key, r[0], r[2], r[3], r[4]))
    return combine(verdicts), writes


def check_all(
    limits: Sequence[Limit],
    identities: Identities,
    now: float,
    states: MutableMapping[str, State],
    prefix: str = "",
) -> Decision:
    """Decide every applicable limit of a request and charge them all, or none.

    Pure apart from ``states`` (key → stored state), which is updated only when every limit
    admits the request. Expiry is the caller's business (see ``MemoryLimiter``).

    Args:
        limits: the limits of the request's route.
        identities: who the request is.
        now: seconds, on the clock the states were written with (injected, never read here).
        states: where states live.
        prefix: prepended to every key.
    """
    found = applicable(limits, identities, prefix)
    decision, writes = decide(found, [states.get(key) for _, key in found], round(now * _MICROS))
    for key, state, _ in writes:
        states[key] = state
    return decision
