"""The demo users API: the reference service APIForge protects.

A plain Starlette app that works on its own (the "bare app") and behind the APIForge pipeline.
Routes:

- ``GET /v1/users/me``: the caller's profile.
- ``PUT /v1/users/me``: replace the caller's email, age and bio (see
  :class:`~apiforge.demo.schemas.ProfileUpdate`); returns the updated profile.
- ``GET /v1/users``: the first page of profiles (filtered per caller by the pipeline).
- ``GET /v1/users/{id}``: a profile by numeric id. Any id that is not a positive decimal
  integer of at most 18 digits gets the same 404 as an id nobody has.
- ``PUT /v1/users/{id}``: replace that profile's email, age and bio (an administrator's
  route: who may is decided by the pipeline's authorization, not here).
- ``GET /openapi.json``: the OpenAPI 3.1 description of these routes.

Every error leaves as RFC 9457 ``application/problem+json`` in fixed words; exception text goes
to the ``apiforge.demo`` log only.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Final

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from apiforge.core.context import get_context
from apiforge.core.problem import PROBLEM_CONTENT_TYPE, problem_body
from apiforge.demo.db import UserNotFound, UserRepository
from apiforge.demo.openapi import build_openapi
from apiforge.demo.schemas import ProfileUpdate, parse_profile_update
from apiforge.errors import (
    ApiError,
    BadRequest,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)

__all__ = ["DATABASE_FILENAME", "MAX_BODY_BYTES", "ORJSONResponse", "create_app"]

DATABASE_FILENAME: Final = "demo.db"

# The largest valid body (254-character email, 500-character bio of 4-byte characters escaped
# as \uXXXX pairs, an age) is about 6.5 KiB; 16 KiB leaves room for whitespace and refuses more
# before it is parsed, even when the app runs without the pipeline's body limits.
MAX_BODY_BYTES: Final = 16 * 1024

# The caller of every request until an authentication layer names one.
DEFAULT_USERNAME: Final = "alice"

# Positive decimal integers of at most 18 digits: always below 2**63, so SQLite's INTEGER
# holds them and int() never meets a huge digit string (CVE-2020-10735). ASCII digits only:
# \d would also match other scripts' digits, which int() accepts.
_USER_ID: Final = re.compile(r"[1-9][0-9]{0,17}")

_REQUEST_ID_KEY: Final = "apiforge.demo.request_id"
_PROBLEM_MEDIA_TYPE: Final = PROBLEM_CONTENT_TYPE.decode("ascii")
_JSON_MEDIA_TYPE: Final = "application/json"

logger = logging.getLogger("apiforge.demo")

Endpoint = Callable[[Request], Awaitable[Response]]


class ORJSONResponse(Response):
    """A JSON response serialized by orjson, ``content-type: application/json``."""

    media_type = _JSON_MEDIA_TYPE

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _request_id(request: Request) -> str:
    scope = request.scope
    ctx = get_context(scope)
    if ctx is not None:
        # Behind the pipeline the problem carries the id the pipeline logs.
        return ctx.request_id
    # Bare, a fresh id, kept in the scope so the log line and the problem body agree.
    request_id: str | None = scope.get(_REQUEST_ID_KEY)
    if request_id is None:
        request_id = scope[_REQUEST_ID_KEY] = secrets.token_hex(8)
    return request_id


def _caller(request: Request) -> str:
    ctx = get_context(request.scope)
    if ctx is not None and ctx.principal is not None and ctx.principal.username:
        return ctx.principal.username
    return DEFAULT_USERNAME


def _problem(error: ApiError, request_id: str, *, echo_id: bool) -> Response:
    headers = dict(error.headers)
    if echo_id:  # behind the pipeline, it echoes the id on every response itself
        headers["x-request-id"] = request_id
    return Response(
        problem_body(error, request_id),
        status_code=error.status,
        headers=headers,
        media_type=_PROBLEM_MEDIA_TYPE,
    )


async def _on_api_error(request: Request, exc: Exception) -> Response:
    error = exc if isinstance(exc, ApiError) else InternalError()
    return _problem(error, _request_id(request), echo_id=get_context(request.scope) is None)


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    # Starlette's router raises these for unknown paths (404) and methods (405); they are
    # rendered like our own errors instead of Starlette's plain-text pages.
    error: ApiError
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if status == 404:
        error = NotFound()
    elif status == 405:
        allow = (exc.headers or {}).get("Allow", "") if isinstance(exc, HTTPException) else ""
        error = MethodNotAllowed(allowed=[m.strip() for m in allow.split(",") if m.strip()])
    elif status == 413:
        error = PayloadTooLarge()
    elif status < 500:
        error = BadRequest()
    else:
        error = InternalError()
    return _problem(error, _request_id(request), echo_id=get_context(request.scope) is None)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    # Last resort for failures outside the endpoints. Starlette re-raises the exception after
    # this response is sent, so the server logs it as well.
    request_id = _request_id(request)
    logger.error("unhandled exception (request_id=%s)", request_id, exc_info=exc)
    return _problem(InternalError(), request_id, echo_id=get_context(request.scope) is None)


def _guarded(endpoint: Endpoint) -> Endpoint:
    """Turn an endpoint's unexpected exceptions into a logged ``InternalError``.

    Starlette sends exceptions without a more specific handler to ``ServerErrorMiddleware``,
    which re-raises them after answering; raising ``InternalError`` instead keeps the answer
    inside the app's handlers, so the pipeline and the server see a finished response.
    """

    async def guarded(request: Request) -> Response:
        try:
            return await endpoint(request)
        except (ApiError, HTTPException):
            raise
        except ClientDisconnect:
            # The client is gone and reads no answer; nothing went wrong on our side.
            raise BadRequest(reason="client disconnected") from None
        except Exception as exc:
            request_id = _request_id(request)
            logger.error("unhandled exception (request_id=%s)", request_id, exc_info=exc)
            raise InternalError(reason=type(exc).__name__) from None

    guarded.__name__ = endpoint.__name__
    guarded.__doc__ = endpoint.__doc__
    return guarded


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return False
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == _JSON_MEDIA_TYPE


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise PayloadTooLarge()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise PayloadTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(data_dir: Path, *, extra_routes: Sequence[Route] = ()) -> Starlette:
    """Build the demo users API over the SQLite database ``data_dir/demo.db``.

    ``data_dir`` is created if missing; a fresh directory gets a fresh database seeded with four
    accounts: ``alice`` and ``bob`` (role ``user``), ``sam`` (``support``), ``ada`` (``admin``).

    The caller of a request is the user the pipeline authenticated
    (``RequestContext.principal.username``). Until an authentication layer runs in front of the
    app, there is no such user and every request acts as ``alice``: the bare app is the
    unprotected baseline, not a service to expose.

    Args:
        data_dir: where the database lives; it holds user data, so keep it private.
        extra_routes: more routes served by the same app (the identity provider's), with
            the same error handling.

    Returns:
        The Starlette app. ``app.state.users`` is its :class:`~apiforge.demo.db.UserRepository`.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    users = UserRepository(data_dir / DATABASE_FILENAME)
    users.create_schema_and_seed()
    # Built once: every /openapi.json answer sends these bytes.
    openapi_bytes = orjson.dumps(build_openapi())

    async def me(request: Request) -> Response:
        """``GET`` or ``PUT`` the caller's own profile."""
        username = _caller(request)
        if request.method == "PUT":
            return await _update_me(request, username)
        user = users.get_by_username(username)
        if user is None:
            raise NotFound()
        return ORJSONResponse(user.to_public())

    async def _update_me(request: Request, username: str) -> Response:
        ctx = get_context(request.scope)
        if ctx is not None and isinstance(ctx.model, ProfileUpdate):
            update = ctx.model  # validated by the pipeline: the body is parsed only once
        else:
            if not _is_json(request.headers.get("content-type")):
                raise UnsupportedMediaType()
            update = parse_profile_update(await _read_body(request))
        try:
            user = users.update_profile(
                username, email=update.email, age=update.age, bio=update.bio
            )
        except UserNotFound:
            raise NotFound() from None
        return ORJSONResponse(user.to_public())

    async def user_by_id(request: Request) -> Response:
        """``GET`` or ``PUT`` a profile by numeric id (who may is the pipeline's decision)."""
        raw_id: str = request.path_params["id"]
        if _USER_ID.fullmatch(raw_id) is None:
            raise NotFound()
        user = users.get_by_id(int(raw_id))
        if user is None:
            raise NotFound()
        if request.method == "PUT":
            return await _update_me(request, user.username)
        return ORJSONResponse(user.to_public())

    async def list_users(request: Request) -> Response:
        """``GET`` the first page of profiles. The app lists them all: which of them a caller
        may see, and which fields, is the pipeline's decision (``check_response``)."""
        return ORJSONResponse([user.to_public() for user in users.list_page()])

    async def openapi(request: Request) -> Response:
        """The OpenAPI document."""
        return Response(openapi_bytes, media_type=_JSON_MEDIA_TYPE)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        users.close()

    routes = [
        # The demo's queries are local and take microseconds, so the handlers call the
        # repository directly on the event loop: a thread-pool hop would cost more than the
        # query. One route serves both methods of /me so that a 405 lists them all.
        Route("/v1/users/me", _guarded(me), methods=["GET", "PUT"], name="users_me"),
        Route("/v1/users", _guarded(list_users), methods=["GET"], name="users"),
        Route("/v1/users/{id}", _guarded(user_by_id), methods=["GET", "PUT"],
              name="user_by_id"),
        Route("/openapi.json", _guarded(openapi), methods=["GET"], name="openapi"),
        *(Route(r.path, _guarded(r.endpoint), methods=sorted(r.methods or ()), name=r.name)
          for r in extra_routes),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            ApiError: _on_api_error,
            HTTPException: _on_http_exception,
            Exception: _on_unexpected,
        },
        lifespan=lifespan,
    )
    # `/v1/users/` is not `/v1/users`: no redirect that would make two paths one resource.
    app.router.redirect_slashes = False
    app.state.users = users
    return app
