"""The one exception tree of APIForge.

::

    ApiForgeError
    ├── ConfigurationError        a policy or setting is unsafe or malformed (raised at load time)
    ├── StoreError                a backing store failed; the policy decides deny or allow
    └── ApiError                  a request is refused; carries status, code and a safe title
        ├── BadRequest            400  malformed request (bad path, bad header, bad JSON)
        ├── Unauthorized          401  missing or invalid credentials (one generic body)
        ├── Forbidden             403
        ├── NotFound              404  no such route or object
        ├── MethodNotAllowed      405  carries the allowed methods
        ├── RequestTimeout        408
        ├── PayloadTooLarge       413
        ├── UnsupportedMediaType  415
        ├── ValidationFailed      422  carries field errors in our own words
        ├── TooManyRequests       429  carries Retry-After
        ├── HeadersTooLarge       431
        ├── InternalError         500  never carries exception text
        ├── ServiceUnavailable    503
        └── GatewayTimeout        504

An ``ApiError`` is data: the shield renders it as RFC 9457 ``application/problem+json``. Its
``title`` is fixed text chosen by us, never a parser's or a library's message and never the
client's input, so it is safe to show to anyone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "ApiError",
    "ApiForgeError",
    "BadRequest",
    "ConfigurationError",
    "FieldError",
    "Forbidden",
    "GatewayTimeout",
    "HeadersTooLarge",
    "InternalError",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "RequestTimeout",
    "ServiceUnavailable",
    "StoreError",
    "TooManyRequests",
    "Unauthorized",
    "UnsupportedMediaType",
    "ValidationFailed",
]


class ApiForgeError(Exception):
    """Root of every exception APIForge raises."""


class ConfigurationError(ApiForgeError):
    """A policy or setting is malformed or unsafe.

    The message names the key path, the offending value and the fix, so it can be shown to the
    operator as it is.
    """


class StoreError(ApiForgeError):
    """A backing store (SQLite, PostgreSQL, Redis) failed or could not be reached."""


@dataclass(frozen=True, slots=True)
class FieldError:
    """One invalid field: where it is and what is wrong, in our own fixed words."""

    field: str
    message: str


class ApiError(ApiForgeError):
    """A refused request. Subclasses fix ``status``; ``code`` is stable and machine-readable.

    Args:
        code: a stable identifier documented in ``docs/errors.md``; defaults to the class's.
        title: short, fixed, human text; never exception text or echoed input.
        headers: extra response headers (``Allow``, ``Retry-After``, ``WWW-Authenticate``).
        reason: internal detail for the security log only; never sent to the client.
    """

    status: int = 400
    code: str = "bad_request"
    title: str = "The request is malformed."
    event: str | None = "input_validation_fail"
    """The security event the pipeline emits when it refuses with this error; ``None`` where
    the refusing layer emits a better-named event of its own."""

    def __init__(
        self,
        code: str | None = None,
        title: str | None = None,
        *,
        headers: Sequence[tuple[str, str]] = (),
        reason: str | None = None,
    ) -> None:
        if code is not None:
            self.code = code
        if title is not None:
            self.title = title
        self.headers: tuple[tuple[str, str], ...] = tuple(headers)
        self.reason = reason
        super().__init__(self.code)

    def extra_members(self) -> dict[str, object]:
        """Extension members added to the problem body (RFC 9457 section 3.2)."""
        return {}


class BadRequest(ApiError):
    status = 400
    code = "bad_request"
    title = "The request is malformed."


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"
    title = "Authentication is required and was not accepted."
    event = None


class Forbidden(ApiError):
    status = 403
    code = "forbidden"
    title = "You are not allowed to perform this action."
    event = None


class NotFound(ApiError):
    status = 404
    code = "not_found"
    title = "The requested resource was not found."


class MethodNotAllowed(ApiError):
    status = 405
    code = "method_not_allowed"
    title = "The method is not allowed for this resource."

    def __init__(self, allowed: Iterable[str], **kwargs: object) -> None:
        self.allowed = tuple(sorted(allowed))
        super().__init__(headers=(("allow", ", ".join(self.allowed)),), **kwargs)  # type: ignore[arg-type]


class RequestTimeout(ApiError):
    status = 408
    code = "request_timeout"
    title = "The request body arrived too slowly."
    event = "apiforge_body_timeout"


class PayloadTooLarge(ApiError):
    status = 413
    code = "payload_too_large"
    title = "The request body is larger than this endpoint accepts."


class UnsupportedMediaType(ApiError):
    status = 415
    code = "unsupported_media_type"
    title = "The request body must be application/json."


class ValidationFailed(ApiError):
    """422 with field-level errors; each message is fixed text chosen per kind of error."""

    status = 422
    code = "validation_failed"
    title = "The request did not pass validation."

    def __init__(self, errors: Iterable[FieldError], **kwargs: object) -> None:
        self.errors = tuple(errors)
        super().__init__(**kwargs)  # type: ignore[arg-type]

    def extra_members(self) -> dict[str, object]:
        return {"errors": [{"field": e.field, "message": e.message} for e in self.errors]}


class TooManyRequests(ApiError):
    status = 429
    code = "rate_limited"
    title = "Too many requests; retry after the time given in Retry-After."
    event = None


class HeadersTooLarge(ApiError):
    status = 431
    code = "headers_too_large"
    title = "The request headers are larger than this server accepts."


class InternalError(ApiError):
    status = 500
    code = "internal_error"
    title = "The server could not complete the request."
    event = "sys_crash"


class ServiceUnavailable(ApiError):
    status = 503
    code = "service_unavailable"
    title = "The service is temporarily unavailable."
    event = "apiforge_unavailable"


class GatewayTimeout(ApiError):
    status = 504
    code = "deadline_exceeded"
    title = "The request took longer than this endpoint allows."
    event = "apiforge_deadline_exceeded"
