"""What users assemble today: the demo's users API on FastAPI with the usual security libraries.

The comparison point for APIForge's full path. The same three routes do the same data work as
`apiforge.demo.app` (one `UserRepository` call per request, on the event loop, as the demo
does), behind the checks APIForge's full path makes, each done the way its library's
documentation shows:

- body and path validation: a strict pydantic model with unknown fields forbidden, and a
  bounded `Path` parameter (FastAPI answers 422 on failure);
- API key: `X-API-Key` through FastAPI's `APIKeyHeader`, compared with `hmac.compare_digest`
  on SHA-256 digests against the key the demo wrote to `demo-credentials.json`;
- bearer token: PyJWT, ES256, audience, issuer, `exp`/`iat`/`sub` required, in an `HTTPBearer`
  dependency; the key pair is generated into the data directory at build time; the subject is
  a stable account id, mapped to the username the demo's data is keyed by through a dict
  loaded at start-up (APIForge's pipeline keeps the same map in process);
- rate limits: slowapi decorators keyed by the authenticated user, in memory or in Redis;
- hosts: Starlette's `TrustedHostMiddleware`, with the demo policy's host names;
- CORS: Starlette's `CORSMiddleware`, one allowed origin, credentials allowed;
- security headers: the `secure` package's `SecureASGIMiddleware`, with the header set APIForge
  sends;
- a request id (kept when it is a UUID, generated otherwise, echoed): asgi-correlation-id's
  `CorrelationIdMiddleware`, and `application/problem+json` errors carrying it.

Outermost first: ServerErrorMiddleware (Starlette's own), request id, security headers, trusted
hosts, CORS, ExceptionMiddleware (the handlers below), the routes and their dependencies.

Every middleware here is a pure ASGI class. FastAPI's documentation shows a request-id header
added in an `@app.middleware("http")` function instead; that wraps Starlette's
BaseHTTPMiddleware, which costs about 140 µs a request on the benchmark machine (a task group
and a memory stream per request), more than all the other middleware together. The comparison
uses the cheaper, widely installed package, so that APIForge is measured against a strong
assembly rather than a slow one.

What APIForge checks that this stack does not: body size and JSON depth limits, unknown query
parameters, control characters in the bio (refused there, dropped by nh3 here) and the
`Name <address>` email form; it also answers a malformed id with a 404 rather than a 422.
Nothing here is tuned beyond what the documentation shows, except that the token key is loaded
once at start-up rather than parsed from PEM on every request.
"""

import hashlib
import hmac
import json
import logging
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import jwt
import nh3
from asgi_correlation_id import CorrelationIdMiddleware, correlation_id
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response, Security
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator
from secure import (
    CacheControl,
    ContentSecurityPolicy,
    CrossOriginOpenerPolicy,
    CrossOriginResourcePolicy,
    PermissionsPolicy,
    ReferrerPolicy,
    Secure,
    XContentTypeOptions,
    XFrameOptions,
)
from secure.middleware import SecureASGIMiddleware
from slowapi import Limiter, _rate_limit_exceeded_handler
from slowapi.errors import RateLimitExceeded
from slowapi.util import get_remote_address
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp

__all__ = [
    "AUDIENCE",
    "ISSUER",
    "KEY_FILE",
    "account_id",
    "assembled_headers",
    "build_assembled",
    "demo_accounts",
    "sign_token",
]

LimiterStorage = Literal["memory", "redis"]

KEY_FILE: Final = "assembled-es256.pem"
ISSUER: Final = "https://auth.example.com/"
AUDIENCE: Final = "apiforge-demo-users"
TOKEN_LIFETIME_S: Final = 3600
# The caller of the benchmarked requests ("me"). Tokens name her by her stable account id,
# as APIForge's do; the demo's data is keyed by username.
DEMO_USER: Final = "alice"

ALLOWED_ORIGIN: Final = "https://app.example.com"
# The demo policy's hosts (Starlette compares the Host header without its port).
ALLOWED_HOSTS: Final = ["localhost", "127.0.0.1"]
# High enough that a benchmark run is never throttled: the limiter's cost is measured, not 429s.
RATE_LIMIT: Final = "1000000/minute"
REDIS_URL_ENV: Final = "APIFORGE_TEST_REDIS_URL"
DEFAULT_REDIS_URL: Final = "redis://127.0.0.1:6379/0"

PROBLEM_MEDIA_TYPE: Final = "application/problem+json"

logger = logging.getLogger("bench.assembled")


# --------------------------------------------------------------------------- models


class ProfileUpdate(BaseModel):
    """Body of `PUT /v1/users/me`, the same constraints as `apiforge.demo.schemas`."""

    model_config = ConfigDict(strict=True, extra="forbid")

    email: Annotated[EmailStr, Field(max_length=254)]
    age: int | None = Field(default=None, ge=13, le=120)
    bio: str = Field(default="", max_length=500)

    @field_validator("bio")
    @classmethod
    def strip_html(cls, value: str) -> str:
        # Stored XSS: the demo policy strips every tag from the biography; nh3 with an empty
        # allowlist does the same (script/style content dropped with the tag).
        return nh3.clean(
            value,
            tags=set(),
            attributes={},
            clean_content_tags={"script", "style"},
            strip_comments=True,
        )


class UserOut(BaseModel):
    """A profile as the API returns it."""

    id: int
    username: str
    email: str
    age: int | None
    bio: str
    role: str
    status: str


UserId = Annotated[int, PathParam(ge=1, le=999_999_999_999_999_999)]


# --------------------------------------------------------------------------- keys and tokens


def _ensure_signing_key(data_dir: Path) -> ec.EllipticCurvePrivateKey:
    """The ES256 key in `data_dir/KEY_FILE`, generated (mode 0600) on first use."""
    path = data_dir / KEY_FILE
    if not path.exists():
        pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{path} does not hold an EC private key")
    return key


def sign_token(data_dir: Path, subject: str, *, now: float | None = None) -> str:
    """An ES256 access token for `subject` (an account id), valid one hour, signed with the
    data dir's key."""
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": subject,
        "iat": issued,
        "exp": issued + TOKEN_LIFETIME_S,
    }
    return jwt.encode(claims, _ensure_signing_key(data_dir), algorithm="ES256")


def _demo_api_key(data_dir: Path) -> str:
    from apiforge.demo.bootstrap import CREDENTIALS_FILE

    credentials = json.loads((data_dir / CREDENTIALS_FILE).read_text(encoding="utf-8"))
    key: str = credentials["api_key"]
    return key


def assembled_headers(data_dir: Path) -> dict[str, str]:
    """The credentials a client of the assembled app sends: the demo's API key and a token."""
    return {
        "X-API-Key": _demo_api_key(data_dir),
        "Authorization": f"Bearer {sign_token(data_dir, account_id(data_dir))}",
    }


def demo_accounts(data_dir: Path) -> dict[str, str]:
    """Account id -> username of the demo's accounts, preparing the data dir on first use.

    The first call does what the demo's first start does (pepper, API key, accounts in
    `demo-credentials.json`); every call reads the accounts from the demo's identity store.
    Call it with no event loop running.
    """
    import asyncio

    from apiforge.demo import load_demo_policy, resolve_data_dir
    from apiforge.demo.bootstrap import ensure_demo_identity
    from apiforge.identity.runtime import IdentityRuntime, ensure_pepper_file

    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    auth = resolve_data_dir(load_demo_policy(), data_dir).authentication
    if auth.pepper_file:
        ensure_pepper_file(Path(auth.pepper_file))

    async def bootstrap() -> dict[str, str]:
        runtime = IdentityRuntime(auth)
        try:
            await ensure_demo_identity(runtime, data_dir)
            accounts = runtime.stores.accounts.list_accounts()
        finally:
            await runtime.stores.aclose()
        return {account.account_id: account.username for account in accounts}

    return asyncio.run(bootstrap())


def account_id(data_dir: Path, username: str = DEMO_USER) -> str:
    """The stable account id of `username`: the subject of that user's tokens."""
    for found, name in demo_accounts(data_dir).items():
        if name == username:
            return found
    raise LookupError(f"no demo account named {username!r} in {data_dir}")


# --------------------------------------------------------------------------- errors


def _request_id() -> str:
    # Set by CorrelationIdMiddleware for the request being served.
    return correlation_id.get() or uuid.uuid4().hex


def problem(
    request: Request,
    status: int,
    *,
    detail: str | None = None,
    headers: dict[str, str] | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    """An RFC 9457 problem answer carrying the request id (the middleware echoes it)."""
    rid = _request_id()
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "request_id": rid,
    }
    if detail is not None:
        body["detail"] = detail
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


async def on_http_exception(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, StarletteHTTPException):
        return await on_unexpected(request, exc)
    detail = exc.detail if isinstance(exc.detail, str) else None
    return problem(request, exc.status_code, detail=detail, headers=exc.headers)


async def on_validation_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, RequestValidationError):
        return await on_unexpected(request, exc)
    # No "input" or "ctx": the answer never carries the client's own text back.
    errors = [{"loc": e["loc"], "type": e["type"], "msg": e["msg"]} for e in exc.errors()]
    return problem(request, 422, errors=errors)


async def on_unexpected(request: Request, exc: Exception) -> Response:
    # Starlette calls this from ServerErrorMiddleware, outside every other middleware, so the
    # answer echoes the request id itself; the details go to the log only.
    rid = _request_id()
    logger.error("unhandled exception (request_id=%s)", rid, exc_info=exc)
    response = problem(request, 500)
    response.headers["X-Request-ID"] = rid
    return response


# --------------------------------------------------------------------------- the app


def build_assembled(data_dir: Path, *, limiter: LimiterStorage) -> ASGIApp:
    """The demo users API on FastAPI behind the usual libraries.

    Args:
        data_dir: the demo's data directory; prepared like the demo's first start (database,
            API key in `demo-credentials.json`, accounts) and given an ES256 key pair
            (`KEY_FILE`). Call with no event loop running.
        limiter: where slowapi counts requests: `"memory"` (this process) or `"redis"` (the
            server in `$APIFORGE_TEST_REDIS_URL`, default `redis://127.0.0.1:6379/0`).

    Returns:
        The FastAPI app.
    """
    from apiforge.demo.app import DATABASE_FILENAME
    from apiforge.demo.db import UserNotFound, UserRepository

    # The subject -> username map APIForge's pipeline keeps in process, loaded once here: the
    # handlers then make exactly the demo's one query each, and no lookup of the caller.
    usernames = demo_accounts(data_dir)
    users = UserRepository(data_dir / DATABASE_FILENAME)
    users.create_schema_and_seed()
    # Loaded once: a PEM string passed to jwt.decode would be parsed again on every request.
    public_key = _ensure_signing_key(data_dir).public_key()
    api_key_digest = hashlib.sha256(_demo_api_key(data_dir).encode()).digest()

    storage_uri = (
        "memory://" if limiter == "memory" else os.environ.get(REDIS_URL_ENV, DEFAULT_REDIS_URL)
    )
    rate_limiter = Limiter(
        key_func=_rate_limit_key,
        storage_uri=storage_uri,
        # One server's counters never meet another's in a shared Redis.
        key_prefix=f"assembled-{secrets.token_hex(4)}",
        # Counters per route, not per URL: with "url", every /v1/users/{id} gets its own.
        key_style="endpoint",
    )

    api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)
    bearer = HTTPBearer(auto_error=False)

    async def require_api_key(key: Annotated[str | None, Security(api_key_header)]) -> None:
        # Digests first: compare_digest then compares equal lengths, leaking nothing.
        if key is None or not hmac.compare_digest(
            hashlib.sha256(key.encode()).digest(), api_key_digest
        ):
            raise HTTPException(
                401, "A valid API key is required.", headers={"WWW-Authenticate": "ApiKey"}
            )

    async def current_user(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    ) -> str:
        if credentials is None:
            raise HTTPException(
                401, "A bearer token is required.", headers={"WWW-Authenticate": "Bearer"}
            )
        try:
            claims = jwt.decode(
                credentials.credentials,
                public_key,
                algorithms=["ES256"],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub"]},
            )
        except jwt.InvalidTokenError:
            raise HTTPException(
                401,
                "The bearer token is not valid.",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            ) from None
        subject: str = claims["sub"]
        username = usernames.get(subject)
        if username is None:
            raise HTTPException(
                401,
                "The bearer token is not valid.",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        request.state.user = subject  # the rate limit key
        return username

    CurrentUser = Annotated[str, Depends(current_user)]
    router = APIRouter(prefix="/v1/users", dependencies=[Security(require_api_key)])

    @router.get("/me", response_model=UserOut)
    @rate_limiter.limit(RATE_LIMIT)
    async def read_me(request: Request, username: CurrentUser) -> dict[str, object]:
        user = users.get_by_username(username)
        if user is None:
            raise HTTPException(404)
        return user.to_public()

    @router.put("/me", response_model=UserOut)
    @rate_limiter.limit(RATE_LIMIT)
    async def update_me(
        request: Request, update: ProfileUpdate, username: CurrentUser
    ) -> dict[str, object]:
        try:
            user = users.update_profile(
                username, email=update.email, age=update.age, bio=update.bio
            )
        except UserNotFound:
            raise HTTPException(404) from None
        return user.to_public()

    @router.get("/{user_id}", response_model=UserOut)
    @rate_limiter.limit(RATE_LIMIT)
    async def read_user(request: Request, user_id: UserId, _: CurrentUser) -> dict[str, object]:
        user = users.get_by_id(user_id)
        if user is None:
            raise HTTPException(404)
        return user.to_public()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        users.close()

    app = FastAPI(title="users API (assembled)", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.limiter = rate_limiter
    app.include_router(router)
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, on_http_exception)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_unexpected)

    # add_middleware wraps what is already there: the last one added runs first.
    app.add_middleware(
        CORSMiddleware,
        allow_origins=[ALLOWED_ORIGIN],
        allow_credentials=True,
        allow_methods=["GET", "PUT"],
        allow_headers=["Authorization", "Content-Type", "X-API-Key", "X-Request-ID"],
        expose_headers=["X-Request-ID"],
        max_age=600,
    )
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=ALLOWED_HOSTS)
    app.add_middleware(SecureASGIMiddleware, secure=_security_headers())
    app.add_middleware(CorrelationIdMiddleware, header_name="X-Request-ID")
    return app


def _rate_limit_key(request: Request) -> str:
    # Per authenticated user; the address only before authentication has run.
    user: str | None = getattr(request.state, "user", None)
    return f"user:{user}" if user else get_remote_address(request)


def _security_headers() -> Secure:
    """The header set APIForge sends on plain HTTP, with `no-store` for credentialed answers."""
    return Secure(
        csp=ContentSecurityPolicy().default_src("'none'").frame_ancestors("'none'"),
        xcto=XContentTypeOptions().nosniff(),
        xfo=XFrameOptions().deny(),
        referrer=ReferrerPolicy().no_referrer(),
        corp=CrossOriginResourcePolicy().same_origin(),
        coop=CrossOriginOpenerPolicy().same_origin(),
        permissions=PermissionsPolicy()
        .accelerometer()
        .camera()
        .geolocation()
        .gyroscope()
        .microphone()
        .payment()
        .usb(),
        cache=CacheControl().no_store(),
    )
