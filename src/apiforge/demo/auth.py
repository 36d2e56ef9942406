"""The demo's identity provider over HTTP: token, refresh, revoke, JWKS, and account suspension.

- ``POST /v1/auth/token``: the OAuth 2.0 password grant (``grant_type=password``,
  ``username``, ``password``, and ``otp`` for accounts with a second factor), form or JSON.
  Demo only: current OAuth security practice (RFC 9700) forbids this grant for real clients.
- ``POST /v1/auth/refresh``: ``refresh_token`` → a new pair; the old refresh token is spent.
- ``POST /v1/auth/revoke``: ``token`` (access or refresh), RFC 7009: always 200.
- ``GET /.well-known/jwks.json``: the public signing keys, old ones until their tokens expire.
- ``POST /v1/users/{id}/suspend``: an administrator suspends an account; its tokens stop
  working at once.

Every refused grant is the same 401 ``invalid_grant`` problem, whatever failed (unknown user,
wrong password, missing or replayed code, reused refresh token); the event says which.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final
from urllib.parse import parse_qsl

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from apiforge.core.context import get_context
from apiforge.demo.db import UserRepository
from apiforge.errors import (
    ApiError,
    BadRequest,
    Forbidden,
    NotFound,
    ServiceUnavailable,
    StoreError,
    TooManyRequests,
    Unauthorized,
    UnsupportedMediaType,
)
from apiforge.events import EventBus, make_event
from apiforge.identity import AccountService
from apiforge.identity.token_service import InvalidGrant, TokenService
from apiforge.jsonguard import JsonLimits, JsonRejected, parse_json
from apiforge.ratelimit.backoff import GuessingBackoff
from apiforge.ratelimit.headers import retry_after

__all__ = ["auth_routes"]

_MAX_FORM: Final = 4096
_NO_STORE: Final = {"cache-control": "no-store", "pragma": "no-cache"}
_FORM: Final = "application/x-www-form-urlencoded"
_JSON: Final = "application/json"
_USER_ID: Final = re.compile(r"[1-9][0-9]{0,17}")
_LIMITS: Final = JsonLimits(max_depth=2, max_members=16, max_string=2048, max_number_digits=20)


class InvalidGrantProblem(Unauthorized):
    code = "invalid_grant"
    title = "The credentials or the grant were not accepted."


async def _fields(request: Request) -> Mapping[str, str]:
    """The form or JSON body as string fields; anything else is a 4xx."""
    media = (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM:
            raise BadRequest("form_too_large", "The form is larger than this endpoint accepts.")
    if media == _FORM:
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False,
                              max_num_fields=16)
        except (UnicodeDecodeError, ValueError):
            raise BadRequest("malformed_form", "The form could not be read.") from None
        fields: dict[str, str] = {}
        for name, value in pairs:
            if name in fields:  # two readers could pick different copies
                raise BadRequest("malformed_form", "A form field appears twice.")
            fields[name] = value
        return fields
    if media == _JSON:
        try:
            document = parse_json(body, _LIMITS)
        except JsonRejected:
            raise BadRequest("malformed_json", "The body is not valid JSON.") from None
        if not isinstance(document, dict) or not all(isinstance(v, str)
                                                     for v in document.values()):
            raise BadRequest("malformed_form", "Send an object of string fields.")
        return document
    raise UnsupportedMediaType()


def _tokens(body: dict[str, str | int]) -> Response:
    return Response(orjson.dumps(body), media_type=_JSON, headers=_NO_STORE)


def auth_routes(
    service: TokenService,
    backoff: GuessingBackoff,
    accounts: AccountService,
    users: Callable[[], UserRepository],
    events: EventBus,
    ready: Callable[[], Awaitable[None]],
    settle: Callable[[], Awaitable[object]],
) -> list[Route]:
    """The identity provider's routes, over ``service``.

    Args:
        service: issues, refreshes and revokes tokens.
        backoff: the guessing back-off per (login name, address).
        accounts: the account cache (suspension).
        users: the demo's profile repository (to find the account of a profile id).
        events: where ``authn_*`` events go.
        ready: loads the identity caches on first use (these routes need no credential, so
            the authentication layer may not have started them yet).
        settle: applies the change feed now, so a revocation made here holds in this process
            from the next request (other processes follow within their poll interval).
    """

    def emit(request: Request, name: str, **details: Any) -> None:
        events.emit(make_event(name, ctx=get_context(request.scope), **details))

    def refused(request: Request, grant: InvalidGrant) -> ApiError:
        emit(request, grant.event, reason=grant.reason, account_id=grant.account_id,
             family_id=grant.family_id)
        return InvalidGrantProblem(headers=(("cache-control", "no-store"),),
                                   reason=grant.reason)

    async def token(request: Request) -> Response:
        await ready()
        fields = await _fields(request)
        if fields.get("grant_type") != "password":
            raise BadRequest("unsupported_grant_type", "Only grant_type=password is served.")
        username = fields.get("username", "")
        address = _client(request)
        try:
            wait = await backoff.wait(username, address)
        except StoreError:
            # Fail closed: without the back-off's answer a guess would go unthrottled.
            raise ServiceUnavailable("backoff_store_unavailable",
                                     "Logins cannot be checked right now; retry shortly.",
                                     headers=(("retry-after", "1"),),
                                     reason="backoff_store_down") from None
        if wait > 0:
            emit(request, "authn_login_fail_max", reason="backoff")
            value = retry_after(wait)
            raise TooManyRequests(headers=(("retry-after", value),) if value else (),
                                  reason="login_backoff")
        try:
            pair = await service.password_grant(username, fields.get("password", ""),
                                                fields.get("otp") or None)
        except InvalidGrant as grant:
            with contextlib.suppress(StoreError):  # the per-address limit still applies
                await backoff.failed(username, address)
            raise refused(request, grant) from None
        with contextlib.suppress(StoreError):
            await backoff.succeeded(username, address)
        emit(request, "authn_token_created", level="INFO", outcome="success",
             account_id=pair.account_id, jti=pair.jti)
        return _tokens(pair.to_response())

    async def refresh(request: Request) -> Response:
        await ready()
        fields = await _fields(request)
        try:
            pair = await service.refresh(fields.get("refresh_token", ""))
        except InvalidGrant as grant:
            raise refused(request, grant) from None
        emit(request, "authn_token_created", level="INFO", outcome="success",
             account_id=pair.account_id, jti=pair.jti, refreshed=True)
        return _tokens(pair.to_response())

    async def revoke(request: Request) -> Response:
        await ready()
        fields = await _fields(request)
        kind = await service.revoke(fields.get("token", ""))
        await settle()
        if kind is not None:
            emit(request, "authn_token_revoked", level="INFO", outcome="success", kind=kind)
        return Response(status_code=200, headers=_NO_STORE)

    async def jwks(request: Request) -> Response:
        return Response(orjson.dumps(service.jwks()), media_type="application/jwk-set+json",
                        headers={"cache-control": "public, max-age=300"})

    async def suspend(request: Request) -> Response:
        await ready()
        ctx = get_context(request.scope)
        principal = ctx.principal if ctx is not None else None
        actor = accounts.get(principal.user) if principal and principal.user else None
        raw_id: str = request.path_params["id"]
        profile = users().get_by_id(int(raw_id)) if _USER_ID.fullmatch(raw_id) else None
        target = accounts.find(profile.username) if profile is not None else None
        if actor is None or target is None:
            raise NotFound()
        if "admin" not in actor.roles:  # the policy's authorization decides first; this holds
            raise Forbidden()          # even if a policy forgets the route
        account = await accounts.set_status(target.account_id, "suspended", actor)
        revoked = await service.revoke_account(account.account_id)
        await settle()
        emit(request, "user_updated", level="INFO", outcome="success",
             account_id=account.account_id, status="suspended", families_revoked=revoked)
        return Response(orjson.dumps({"id": profile.id if profile else None,
                                      "status": account.status}), media_type=_JSON)

    return [
        Route("/v1/auth/token", token, methods=["POST"]),
        Route("/v1/auth/refresh", refresh, methods=["POST"]),
        Route("/v1/auth/revoke", revoke, methods=["POST"]),
        Route("/.well-known/jwks.json", jwks, methods=["GET"]),
        Route("/v1/users/{id}/suspend", suspend, methods=["POST"]),
    ]


def _client(request: Request) -> str:
    ctx = get_context(request.scope)
    if ctx is not None:
        return ctx.client  # resolved across trusted proxies only
    client = request.client
    return client.host if client is not None else "unknown"
