"""RFC 9457 problem responses.

Every refusal, ours or the app's, leaves as ``application/problem+json`` with ``type`` (a link
to the code's section of ``docs/errors.md``), ``title``, ``status``, ``code`` and ``request_id``.
The body is built from the error's fixed fields only: no exception text, no echoed input.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from apiforge.errors import ApiError, InternalError

__all__ = ["DEFAULT_TYPE_BASE", "PROBLEM_CONTENT_TYPE", "problem_body", "send_problem"]

PROBLEM_CONTENT_TYPE = b"application/problem+json"
DEFAULT_TYPE_BASE = "https://apiforge.dev/docs/errors.md"

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def problem_body(error: ApiError, request_id: str, type_base: str = DEFAULT_TYPE_BASE) -> bytes:
    """The JSON body of the problem response for ``error``."""
    body: dict[str, object] = {
        "type": f"{type_base}#{error.code}",
        "title": error.title,
        "status": error.status,
        "code": error.code,
        "request_id": request_id,
    }
    body.update(error.extra_members())
    return orjson.dumps(body)


async def send_problem(
    send: Send,
    error: ApiError,
    request_id: str,
    *,
    type_base: str = DEFAULT_TYPE_BASE,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    head: bool = False,
) -> None:
    """Send ``error`` as a complete problem response through ASGI ``send``."""
    if not isinstance(error, ApiError):  # defensive: never render arbitrary exceptions
        error = InternalError()
    body = problem_body(error, request_id, type_base)
    headers = [
        (b"content-type", PROBLEM_CONTENT_TYPE),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
    ]
    headers.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in error.headers)
    if extra_headers:
        headers.extend(extra_headers)
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})
