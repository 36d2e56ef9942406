"""The policy's ``rate_limits`` section and a route's ``rate_limits`` key."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from apiforge.policy.base import PolicyModel
from apiforge.ratelimit.limits import Limit

__all__ = ["GuessingSettings", "LimitSpec", "OnStoreError", "RateLimitSettings", "RouteRateLimits"]

OnStoreError = Literal["deny", "allow", "local"]


class LimitSpec(PolicyModel):
    """One named limit. Its name is part of the stored key and of the `RateLimit` headers."""

    scope: Literal["address", "key", "user", "route", "global"]
    """Whose budget it is: `address` (the client address resolved across trusted proxies only;
    IPv6 grouped by /64), `key` (the calling application, from its API key), `user` (the user
    of the token), `route` (every caller of the route together), `global` (everything). A
    limit whose identity is absent (a `user` limit on a request without a user) does not
    apply."""

    rate: Annotated[int, Field(ge=1)]
    """Requests admitted per `period` in the long run."""

    period: Annotated[float, Field(gt=0, le=86_400 * 31)] = 60.0
    """Seconds."""

    burst: Annotated[int, Field(ge=1)] | None = None
    """GCRA: requests admitted at once from idle (`burst` requests at t=0 pass, the next one is
    refused, then one more every `period / rate`). Default: `rate`. A sliding window admits
    `rate` per `period` and takes no separate burst."""

    cost: Annotated[int, Field(ge=1)] = 1
    """Weight of one request against this limit; a route's `cost` replaces it."""

    algorithm: Literal["gcra", "sliding_window"] = "gcra"
    """`gcra` (smooth, one timestamp per key) or `sliding_window` (a weighted count of the
    current and previous windows)."""

    def build(self, name: str, cost: int | None = None) -> Limit:
        """The :class:`Limit` this spec describes, under ``name``."""
        burst = self.rate if self.algorithm == "sliding_window" else (self.burst or self.rate)
        return Limit(self.scope, self.rate, self.period, burst, cost or self.cost,
                     self.algorithm, name)


class RouteRateLimits(PolicyModel):
    """A route's own rate-limit settings; what it does not name comes from `rate_limits`."""

    limits: list[str] | None = None
    """Names of the limits (from `rate_limits.limits`) that apply to this route, replacing
    `rate_limits.default`. `[]` switches rate limiting off for the route."""

    cost: Annotated[int, Field(ge=1)] | None = None
    """Weight of one request of this route against each of its limits (an expensive search
    can cost 5)."""

    on_store_error: OnStoreError | None = None
    """What this route does while the shared store is unreachable; default
    `rate_limits.on_store_error`."""

    mode: Literal["enforce", "report"] | None = None
    """`report` logs what would have been limited and lets it through; default
    `rate_limits.mode`."""


class GuessingSettings(PolicyModel):
    """Password-guessing back-off on the token route, per (login name, client address).

    Unknown names are throttled exactly like known ones, and the key includes the address, so
    nobody elsewhere can lock the owner out from the owner's own address."""

    free: Annotated[int, Field(ge=0, le=100)] = 3
    """Failed logins of one name from one address before any wait."""

    base: Annotated[float, Field(gt=0, le=3600)] = 1.0
    """Seconds of the first wait; each further failure doubles it."""

    ceiling: Annotated[float, Field(gt=0, le=86_400)] = 900.0
    """The longest wait, in seconds. A success resets the pair."""

    @model_validator(mode="after")
    def _check_ceiling(self) -> GuessingSettings:
        if self.ceiling < self.base:
            raise ValueError("ceiling must be at least base")
        return self


class RateLimitSettings(PolicyModel):
    """Rate limits: named limits, which routes they apply to, and where counters live.

    Every limit that applies to a request is decided together and charged all or none: a
    request refused by one limit uses no other limit's budget. With Redis, one request costs
    one round trip to the store whatever the number of limits.
    """

    store: str = "memory://"
    """Where counters live: `memory://` (this process only: the budget is per process, so it
    refuses to run with more than one worker), `redis://HOST:PORT/DB` or `rediss://…`
    (shared by every process and instance; exact), or
    `redis+sentinel://HOST:PORT[,HOST:PORT…]/SERVICE/DB` (the primary Sentinel names).
    Redis Cluster is not supported: one request's limits live under different keys (address,
    user, route, global) that a single atomic script could only touch in one hash slot."""

    prefix: str = "apiforge:rl:"
    """Prepended to every counter key in Redis; lets deployments share a server."""

    timeout: Annotated[float, Field(gt=0, le=5)] = 0.1
    """Seconds a check may wait for Redis before the store counts as failed."""

    mode: Literal["enforce", "report"] = "enforce"
    """`enforce` refuses with 429; `report` lets the request through and emits the
    `excess_rate_limit_exceeded` event that a refusal would have emitted."""

    on_store_error: OnStoreError = "deny"
    """While the store is unreachable: `deny` (503 problem with `Retry-After`; fail closed),
    `allow` (serve without limits), or `local` (limit in this process alone until the store is
    back). Every switch emits an `apiforge_ratelimit_store` event; the store is probed in the
    background and used again as soon as it answers, with no restart."""

    headers: bool = True
    """Send `RateLimit-Policy` and `RateLimit` (IETF draft) on every answer of a limited
    route; a 429 always carries `Retry-After`."""

    limits: dict[str, LimitSpec] = Field(default_factory=dict)
    """The named limits: `name: {scope, rate, period, burst, cost, algorithm}`."""

    default: list[str] = Field(default_factory=list)
    """Names of the limits that apply to every route without its own `rate_limits.limits`."""

    guessing: GuessingSettings = Field(default_factory=GuessingSettings)
    """The back-off of failed logins on the token route: see `GuessingSettings` below."""

    @field_validator("limits")
    @classmethod
    def _check_names(cls, limits: dict[str, LimitSpec]) -> dict[str, LimitSpec]:
        for name, spec in limits.items():
            try:
                spec.build(name)
            except ValueError as exc:
                raise ValueError(f"limit {name!r}: {exc}") from None
        return limits

    @model_validator(mode="after")
    def _check_default(self) -> RateLimitSettings:
        unknown = [name for name in self.default if name not in self.limits]
        if unknown:
            raise ValueError(
                f"default names unknown limits {unknown}: declare them under rate_limits.limits"
            )
        scheme = self.store.split("://", 1)[0]
        if scheme not in ("memory", "redis", "rediss", "redis+sentinel"):
            raise ValueError(
                f"store {self.store!r}: use memory://, redis://, rediss:// or redis+sentinel://"
            )
        return self
