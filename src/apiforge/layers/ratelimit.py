"""The rate-limit layer: every limit of a route decided at once, after authentication.

It runs after authentication so that per-key and per-user limits are known, and decides those
together with the address, route and global limits: one all-or-none charge, and with Redis one
round trip per request. Requests that fail authentication never reach it; the authentication
layer charges their failures to the address instead (see ``AuthFailureGuard``).

While the shared store is unreachable each route does what its ``on_store_error`` says
(``deny``: 503 with ``Retry-After``; ``allow``; ``local``: the in-process limiter). A failure
marks the store down for every request at once, so a dead Redis costs one timeout, not one per
request; a background probe brings it back as soon as it answers. Each switch is one event.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from apiforge.core.context import RequestContext
from apiforge.core.routing import RoutePlan
from apiforge.errors import ConfigurationError, ServiceUnavailable, StoreError, TooManyRequests
from apiforge.events import EventBus, make_event
from apiforge.ratelimit.headers import rate_limit, rate_limit_policy, retry_after
from apiforge.ratelimit.limits import Decision, Identities, Limit, Limiter, applicable
from apiforge.ratelimit.memory import MemoryLimiter
from apiforge.ratelimit.settings import OnStoreError, RateLimitSettings, RouteRateLimits
from apiforge.stores.urls import redact_url

__all__ = ["RateLimitLayer", "open_limiter"]

logger = logging.getLogger("apiforge")

# The binding limit's verdict of the request, for its RateLimit header.
_BINDING = "apiforge.ratelimit"
_RETRY_WHILE_DOWN = "1"
_CALLERS_KEPT = 4096


def open_limiter(settings: RateLimitSettings) -> Limiter:
    """The limiter ``settings.store`` names (Redis connects lazily, on the first check)."""
    url = settings.store
    if url.startswith("memory://"):
        return MemoryLimiter()
    # redis is an optional dependency: imported only when a policy names it.
    from apiforge.ratelimit.redis_limiter import RedisLimiter

    try:
        return RedisLimiter.from_url(url, settings.prefix, timeout=settings.timeout)
    except ValueError as exc:
        raise ConfigurationError(f"rate_limits.store: {exc}") from None


@dataclass(frozen=True, slots=True)
class _RoutePlan:
    limits: tuple[Limit, ...]
    on_store_error: OnStoreError
    report: bool
    policy_header: tuple[bytes, bytes] | None


class RateLimitLayer:
    """Decides the limits of each route that has some.

    Args:
        settings: the policy's ``rate_limits`` section.
        routes: each route's own ``rate_limits`` key, by route key.
        events: where ``excess_rate_limit_exceeded`` and store switches go.
        limiter: the counter store; by default what ``settings.store`` names.
        workers: server worker processes; an in-process store is refused with more than one
            (each would admit the whole limit).
    """

    name = "ratelimit"

    def __init__(
        self,
        settings: RateLimitSettings,
        routes: dict[str, RouteRateLimits | None],
        events: EventBus,
        *,
        limiter: Limiter | None = None,
        workers: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.routes = routes
        self.events = events
        self.limiter = limiter if limiter is not None else open_limiter(settings)
        if workers > 1 and not self.limiter.shared_across_processes:
            raise ConfigurationError(
                f"rate_limits.store {settings.store!r} keeps counters in one process, but"
                f" {workers} workers would each admit the whole limit: use a redis:// store"
            )
        self.local = self.limiter if isinstance(self.limiter, MemoryLimiter) else MemoryLimiter()
        self._clock = clock
        self._down = False
        self._probe: asyncio.Task[None] | None = None
        self._next_probe = 0.0

    def early_hook(self) -> None:
        return None

    def response_hook(self) -> None:
        return None

    def attach(self, plan: RoutePlan) -> None:
        own = self.routes.get(plan.key)
        names = own.limits if own is not None and own.limits is not None else self.settings.default
        if not names:
            return
        cost = own.cost if own is not None else None
        unknown = [name for name in names if name not in self.settings.limits]
        if unknown:
            raise ConfigurationError(
                f"routes.{plan.key}.rate_limits.limits names unknown limits {unknown}:"
                " declare them under rate_limits.limits"
            )
        limits = tuple(self.settings.limits[name].build(name, cost) for name in names)
        header = None
        if self.settings.headers:
            header = (b"ratelimit-policy", rate_limit_policy(limits).encode("ascii"))
        route = _RoutePlan(
            limits,
            (own.on_store_error if own is not None and own.on_store_error else
             self.settings.on_store_error),
            ((own.mode if own is not None and own.mode else self.settings.mode) == "report"),
            header,
        )
        if isinstance(self.limiter, MemoryLimiter):
            memory = self.limiter
            # The limits and keys that apply to each caller of this route, worked out once per
            # caller (a client sends many requests), by what of its Identities can vary within
            # one route: everything but the route.
            known: dict[tuple[str, str | None, str | None], list[tuple[Limit, str]]] = {}

            def check_memory(ctx: RequestContext, scope: Any) -> None:
                principal = ctx.principal
                caller = ((ctx.client, principal.application, principal.user)
                          if principal is not None else (ctx.client, None, None))
                found = known.get(caller)
                if found is None:
                    if len(known) >= _CALLERS_KEPT:
                        known.clear()
                    found = known[caller] = applicable(limits, _identities(ctx))
                if not found:
                    return  # no limit applies (a per-user limit, an anonymous caller)
                binding = memory.admit(found)
                if binding is None:  # refused (or not only GCRA): the whole decision
                    self._apply(ctx, route, memory.check_all_sync(limits, _identities(ctx)))
                else:
                    ctx.extra[_BINDING] = binding

            plan.request_hooks = (*plan.request_hooks, check_memory)
        else:
            plan.request_hooks = (*plan.request_hooks, self._checker(route))
        if header is not None:
            plan.response_start_hooks = (*plan.response_start_hooks, self._headers(route))

    def _checker(self, route: _RoutePlan) -> Callable[[RequestContext, Any], Awaitable[None]]:
        limiter = self.limiter

        async def check_shared(ctx: RequestContext, scope: Any) -> None:
            identities = _identities(ctx)
            if self._down:
                self._maybe_probe()
                decision = self._store_down(ctx, route, identities)
            else:
                try:
                    decision = await limiter.check_all(route.limits, identities)
                except StoreError as exc:
                    self._switch(True, exc)
                    decision = self._store_down(ctx, route, identities)
            if decision is not None:
                self._apply(ctx, route, decision)

        return check_shared

    def _store_down(
        self, ctx: RequestContext, route: _RoutePlan, identities: Identities
    ) -> Decision | None:
        behaviour = route.on_store_error
        if behaviour == "local":
            return self.local.check_all_sync(route.limits, identities)
        if behaviour == "allow":
            return None
        raise ServiceUnavailable("rate_limit_store_unavailable",
                                 "Rate limits cannot be checked right now; retry shortly.",
                                 headers=(("retry-after", _RETRY_WHILE_DOWN),),
                                 reason="ratelimit_store_down")

    def _apply(self, ctx: RequestContext, route: _RoutePlan, decision: Decision) -> None:
        ctx.extra[_BINDING] = decision.binding
        if decision.allowed:
            return
        binding = decision.binding
        self.events.emit(make_event(
            "excess_rate_limit_exceeded", ctx=ctx,
            outcome="report" if route.report else "deny",
            reason=binding.limit.name if binding is not None else None,
            retry_after=None if math.isinf(decision.retry_after) else decision.retry_after,
        ))
        if route.report:
            return
        wait = retry_after(decision.retry_after)
        raise TooManyRequests(headers=(("retry-after", wait),) if wait is not None else (),
                              reason=binding.limit.name if binding is not None else None)

    def _headers(
        self, route: _RoutePlan
    ) -> Callable[[RequestContext, int, list[tuple[bytes, bytes]]], None]:
        policy = route.policy_header
        if policy is None:  # only attached with headers on
            raise ConfigurationError("rate-limit headers are off for this route")

        def add_headers(ctx: RequestContext, status: int, headers: list[tuple[bytes, bytes]]
                        ) -> None:
            headers.append(policy)
            value = rate_limit(ctx.extra.get(_BINDING))
            if value is not None:
                headers.append((b"ratelimit", value.encode("ascii")))

        return add_headers

    # -- the shared store's health ------------------------------------------------------------

    def _switch(self, down: bool, error: StoreError | None) -> None:
        if down == self._down:
            return
        self._down = down
        if down:
            self._next_probe = self._clock() + 1.0
            logger.warning("rate-limit store unreachable: %s", error)
        self.events.emit(make_event(
            "apiforge_ratelimit_store", level="CRITICAL" if down else "INFO",
            outcome="down" if down else "recovered", reason=type(error).__name__ if error else None,
            store=redact_url(self.settings.store),
        ))

    def _maybe_probe(self) -> None:
        if self._probe is not None or self._clock() < self._next_probe:
            return
        self._next_probe = self._clock() + 1.0
        self._probe = asyncio.create_task(self._try_store())

    async def _try_store(self) -> None:
        ping = getattr(self.limiter, "ping", None)
        try:
            if ping is not None:
                await ping()
        except StoreError:
            return
        finally:
            self._probe = None
        self._switch(False, None)

    async def aclose(self) -> None:
        """Stop a pending probe and close the store's connections."""
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
        closer = getattr(self.limiter, "aclose", None)
        if closer is not None:
            await closer()


def _identities(ctx: RequestContext) -> Identities:
    principal = ctx.principal
    route = ctx.route
    if principal is None:
        return Identities(ctx.client, None, None, route.key if route is not None else None)
    return Identities(ctx.client, principal.application, principal.user,
                      route.key if route is not None else None)
