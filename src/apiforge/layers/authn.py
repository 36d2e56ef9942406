"""The authentication layer: API keys identify the calling application.

Keys are accepted only in ``X-API-Key`` or ``Authorization: ApiKey …``; both at once is a 400
(two components could pick different ones). A key in the query string is refused and reported
as exposed: URLs end up in logs, browser history and ``Referer`` headers.

Every refusal is the same 401 with the same body and ``WWW-Authenticate``, whichever check
failed, so a caller learns nothing about which part of a key was wrong; the internal event
``authn_login_fail`` says exactly which (``reason``). Verification reads an in-process cache
only (no SQL on the request path), kept current across processes by the identity runtime.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable
from typing import Any, NoReturn

from apiforge.core.context import Principal, RequestContext
from apiforge.core.routing import RoutePlan
from apiforge.errors import BadRequest, ConfigurationError, Unauthorized
from apiforge.events import EventBus, make_event
from apiforge.identity import AccountRefused, ApiKeyRecord, InvalidApiKey
from apiforge.identity.runtime import IdentityRuntime
from apiforge.layers.auth_failures import AuthFailureGuard
from apiforge.policy.models import Policy

__all__ = ["ApiKeyLayer"]

_CHALLENGE = ("www-authenticate", 'ApiKey realm="apiforge", header="X-API-Key"')
_APIKEY_SCHEME = b"apikey "
_PRINCIPALS_KEPT = 10_000
# A key-looking value or a key-named parameter in the query string.
_KEY_IN_QUERY = re.compile(rb"(?:^|&)(?:api[_-]?key|x-api-key)=|afk_", re.IGNORECASE)


class ApiKeyLayer:
    """Requires a valid API key on the routes whose ``auth`` is ``api_key`` or ``both``.

    Args:
        policy: the policy (``authentication`` and each route's ``auth``).
        runtime: the process's identity services; ``None`` when no route needs them.
        events: where ``authn_login_fail`` events go.
        guard: the per-address budget of failed authentications (shared with the bearer
            layer); by default one built from ``authentication.failures``.
    """

    name = "authn"

    def __init__(self, policy: Policy, runtime: IdentityRuntime | None, events: EventBus,
                 guard: AuthFailureGuard | None = None) -> None:
        self.policy = policy
        self.runtime = runtime
        self.events = events
        failures = policy.authentication.failures
        self.guard = guard if guard is not None else AuthFailureGuard(
            failures.rate, failures.period, failures.burst)
        # One immutable Principal per key record, rebuilt when the record changes.
        self._principals: dict[str, tuple[ApiKeyRecord, Principal]] = {}

    def early_hook(self) -> None:
        return None

    def response_hook(self) -> None:
        return None

    def attach(self, plan: RoutePlan) -> None:
        requirement = plan.settings.auth or self.policy.authentication.default
        if requirement not in ("api_key", "both"):
            return
        if self.runtime is None:
            raise ConfigurationError(
                f"routes.{plan.key}.auth requires an API key, but no identity stores were"
                " opened; configure `authentication` (records_url, state_url, pepper)"
            )
        plan.request_hooks = (*plan.request_hooks, self._check)

    def _check(self, ctx: RequestContext, scope: Any) -> Awaitable[None] | None:
        runtime = self._runtime()
        if not runtime.ready:
            return self._start_then_check(runtime, ctx, scope)
        self._verify(runtime, ctx, scope)
        return None

    async def _start_then_check(
        self, runtime: IdentityRuntime, ctx: RequestContext, scope: Any
    ) -> None:
        await runtime.start()
        self._verify(runtime, ctx, scope)

    def _runtime(self) -> IdentityRuntime:
        if self.runtime is None:  # attach() refuses to plan such a route; deny if it ever runs
            raise ConfigurationError("authentication is not configured")
        return self.runtime

    def _verify(self, runtime: IdentityRuntime, ctx: RequestContext, scope: Any) -> None:
        self.guard.check(ctx.client)
        headers = ctx.headers
        header_key = headers.get(b"x-api-key")
        authorization = headers.get(b"authorization")
        scheme_key = None
        if authorization is not None and authorization[:7].lower() == _APIKEY_SCHEME:
            scheme_key = authorization[7:].strip()
        query = scope.get("query_string") or b""
        if query and _KEY_IN_QUERY.search(query):
            self._fail(ctx, "key_in_query", exposed=True)
        if header_key is not None and scheme_key is not None:
            self.events.emit(make_event("authn_login_fail", ctx=ctx, reason="two_keys"))
            raise BadRequest("ambiguous_credentials",
                             "Send the API key in one header only.", reason="two_keys")
        presented = header_key if header_key is not None else scheme_key
        if not presented:
            self._fail(ctx, "missing_key", charge=False)
        try:
            record = runtime.keys.verify(presented.decode("latin-1"))
        except InvalidApiKey as refused:
            self._fail(ctx, refused.reason, key_id=refused.key_id)
        application = runtime.applications.by_id.get(record.application_id)
        owner_id = application.owner_account_id if application is not None else None
        if owner_id is not None:
            # A suspended (or locked, deleted) owner takes its applications' keys with it, on
            # every instance at once: the account's version is checked on each request.
            owner = runtime.accounts.get(owner_id)
            if owner is None:
                self._fail(ctx, "owner_unknown", key_id=record.key_id)
            try:
                runtime.accounts.check(owner)
            except AccountRefused as refused:
                self._fail(ctx, f"account_{refused.reason}", key_id=record.key_id)
        known = self._principals.get(record.key_id)
        if known is None or known[0] is not record:
            if len(self._principals) >= _PRINCIPALS_KEPT:
                self._principals.clear()
            known = self._principals[record.key_id] = (
                record, Principal(application=record.application_id, scopes=record.scopes))
        ctx.principal = known[1]

    def _fail(self, ctx: RequestContext, reason: str, *, key_id: str | None = None,
              exposed: bool = False, charge: bool = True) -> NoReturn:
        if charge:  # a missing key costs us nothing to refuse
            self.guard.failed(ctx.client)
        # The key's public id only, never its secret.
        self.events.emit(make_event("authn_login_fail", ctx=ctx, reason=reason, key_id=key_id,
                                    key_exposed=exposed))
        raise Unauthorized(headers=(_CHALLENGE,), reason=reason)
