"""The bearer-token layer: a JWT identifies the user, on routes whose ``auth`` is ``jwt``/``both``.

Order of work, cheapest first, so a forged token buys as little as possible:

1. the address's failure budget (in memory; 429 once spent);
2. ``Authorization: Bearer`` present, at most 16 KiB;
3. the verified-token cache (a token seen before skips its signature), else full verification
   (issuer, algorithm, key, times, audience, signature);
4. the ``jti`` denylist (in memory, fed by the change feed; the store is asked once per token
   this process has not seen before);
5. the account: it must exist and be active, at its latest version (a suspension takes effect
   on the next request on every instance), and a token issued before the account last changed
   (its ``account_version`` claim) is refused;
6. the route's scopes (403 ``insufficient_scope``).

Every refusal up to 5 is the same 401 with ``WWW-Authenticate: Bearer error="invalid_token"``
(RFC 6750); the event ``authn_login_fail`` carries the exact reason. A provider whose keys
cannot be had is a 503, not a 401: the client's token may be fine.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, NoReturn

from apiforge.core.context import Principal, RequestContext
from apiforge.core.routing import RoutePlan
from apiforge.errors import ConfigurationError, Forbidden, ServiceUnavailable, Unauthorized
from apiforge.events import EventBus, make_event
from apiforge.identity import AccountRefused
from apiforge.identity.jwks import JwksUnavailable
from apiforge.identity.runtime import IdentityRuntime
from apiforge.identity.token_runtime import REVOKED_TOKEN_TOPIC
from apiforge.identity.tokens import MAX_TOKEN_BYTES, InvalidToken, VerifiedToken
from apiforge.layers.auth_failures import AuthFailureGuard
from apiforge.policy.models import Policy

__all__ = ["BearerLayer"]

_MISSING = ("www-authenticate", 'Bearer realm="apiforge"')
_INVALID = ("www-authenticate", 'Bearer realm="apiforge", error="invalid_token"')
_BEARER = b"bearer "
_PRINCIPALS_KEPT = 10_000


class BearerLayer:
    """Requires a valid bearer token on the routes whose ``auth`` is ``jwt`` or ``both``.

    Args:
        policy: the policy (``authentication`` and each route's ``auth`` and ``token``).
        runtime: the process's identity services (``runtime.tokens`` verifies).
        events: where ``authn_login_fail`` events go.
        guard: the per-address failure budget, shared with the API-key layer.
    """

    name = "bearer"

    def __init__(self, policy: Policy, runtime: IdentityRuntime | None, events: EventBus,
                 guard: AuthFailureGuard) -> None:
        self.policy = policy
        self.runtime = runtime
        self.events = events
        self.guard = guard
        # One Principal per (token, account record, calling application), reused while all
        # three stay the same: most clients send the same token many times.
        self._principals: dict[bytes, tuple[Any, Principal | None, Principal]] = {}

    def early_hook(self) -> None:
        return None

    def response_hook(self) -> None:
        return None

    def attach(self, plan: RoutePlan) -> None:
        requirement = plan.settings.auth or self.policy.authentication.default
        if requirement not in ("jwt", "both"):
            return
        if self.runtime is None or self.runtime.tokens is None:
            raise ConfigurationError(
                f"routes.{plan.key}.auth requires a bearer token, but no issuer is trusted:"
                " configure authentication.tokens.issuers or authentication.tokens.provider"
            )
        wanted = plan.settings.token
        audience = wanted.audience if wanted is not None else None
        scopes = frozenset(wanted.scopes) if wanted is not None else frozenset()
        runtime = self.runtime
        verifier = self.runtime.tokens.verifier
        revoked = self.runtime.tokens.revoked

        def check(ctx: RequestContext, scope: Any) -> Awaitable[None] | None:
            if not runtime.ready:
                return self._start_then_verify(runtime, ctx, audience, scopes)
            # A token seen before is decided without a coroutine; others verify fully.
            token = self._token(ctx)
            try:
                verified = verifier.verify_cached(token, audience=audience)
            except InvalidToken as refused:
                self._fail(ctx, refused.reason)
            if verified is None:
                return self._verify(runtime, ctx, token, audience, scopes)
            if verified.jti is not None and verified.jti in revoked:
                self._fail(ctx, "token_revoked")
            self._admit(runtime, ctx, verified, scopes)
            return None

        plan.request_hooks = (*plan.request_hooks, check)

    async def _start_then_verify(self, runtime: IdentityRuntime, ctx: RequestContext,
                                 audience: str | None, scopes: frozenset[str]) -> None:
        await runtime.start()
        await self._verify(runtime, ctx, self._token(ctx), audience, scopes)

    def _token(self, ctx: RequestContext) -> str:
        """The bearer token of the request; the cheap refusals first."""
        self.guard.check(ctx.client)
        authorization = ctx.headers.get(b"authorization")
        if authorization is None or authorization[:7].lower() != _BEARER:
            self._fail(ctx, "missing_token", _MISSING, charge=False)
        raw = authorization[7:].strip()
        if len(raw) > MAX_TOKEN_BYTES:
            self._fail(ctx, "too_large")
        return raw.decode("latin-1")

    async def _verify(self, runtime: IdentityRuntime, ctx: RequestContext, token: str,
                      audience: str | None, scopes: frozenset[str]) -> None:
        tokens = runtime.tokens
        if tokens is None:  # attach() refuses such a route; deny if it ever runs
            raise ConfigurationError("bearer tokens are not configured")
        verifier = tokens.verifier
        checks_before = verifier.signature_checks
        try:
            verified = await verifier.verify(token, audience=audience)
        except InvalidToken as refused:
            self._fail(ctx, refused.reason)
        except JwksUnavailable:
            raise ServiceUnavailable("token_keys_unavailable",
                                     "Tokens cannot be verified right now; retry shortly.",
                                     headers=(("retry-after", "5"),),
                                     reason="jwks_unavailable") from None
        jti = verified.jti
        if jti is not None:
            if jti in tokens.revoked:
                self._fail(ctx, "token_revoked")
            # First sight of this token in this process: it may have been revoked before
            # this process started following the change feed.
            if verifier.signature_checks != checks_before and await (
                    runtime.stores.state.is_revoked(REVOKED_TOKEN_TOPIC, jti)):
                tokens.revoked.add(jti)
                self._fail(ctx, "token_revoked")
        self._admit(runtime, ctx, verified, scopes)

    def _admit(self, runtime: IdentityRuntime, ctx: RequestContext, verified: VerifiedToken,
               scopes: frozenset[str]) -> None:
        """The account and scope checks of a verified token, then the principal."""
        account = runtime.accounts.get(verified.subject)
        if account is None:
            self._fail(ctx, "unknown_account")
        try:
            runtime.accounts.check(account)
        except AccountRefused as refused:
            self._fail(ctx, f"account_{refused.reason}")
        issued_at_version = verified.claims.get("account_version")
        if type(issued_at_version) is int and issued_at_version < account.version:
            # Issued before a password change, a second factor or a status change.
            self._fail(ctx, "account_changed")
        if scopes and not scopes <= verified.scopes:
            self.events.emit(make_event("authz_fail", ctx=ctx, reason="insufficient_scope"))
            raise Forbidden(
                "insufficient_scope", "The token does not carry the scope this route needs.",
                headers=(("www-authenticate",
                          f'Bearer realm="apiforge", error="insufficient_scope",'
                          f' scope="{" ".join(sorted(scopes))}"'),),
                reason="insufficient_scope")
        ctx.principal = self._principal(verified, account, ctx.principal)

    def _principal(self, verified: VerifiedToken, account: Any,
                   application: Principal | None) -> Principal:
        known = self._principals.get(verified.digest)
        if known is not None and known[0] is account and known[1] is application:
            return known[2]
        client = application.application if application is not None else None
        if client is None:
            claimed = verified.claims.get("client_id")
            client = claimed if isinstance(claimed, str) else None
        principal = Principal(
            application=client,
            user=account.account_id, roles=account.roles, scopes=verified.scopes,
            username=account.username)
        if len(self._principals) >= _PRINCIPALS_KEPT:
            self._principals.clear()
        self._principals[verified.digest] = (account, application, principal)
        return principal

    def _fail(self, ctx: RequestContext, reason: str,
              challenge: tuple[str, str] = _INVALID, *, charge: bool = True) -> NoReturn:
        if charge:  # a missing token costs us nothing to refuse
            self.guard.failed(ctx.client)
        self.events.emit(make_event("authn_login_fail", ctx=ctx, reason=reason,
                                    credential="bearer"))
        raise Unauthorized(headers=(challenge,), reason=reason)
