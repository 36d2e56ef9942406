"""Reading request bodies in bounded memory and time.

The limit is enforced while the body streams in: the request is refused as soon as the limit
is crossed (a ``Content-Length`` above it is refused before a byte is read), and the rest is
never buffered. Bytes are counted as they arrive, so a lying ``Content-Length`` or a chunked
body gains nothing. Before a refusal is sent, a bounded amount of the unread upload is drained:
a server that closes on a client still uploading makes it see a reset instead of our 413.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from apiforge.errors import BadRequest, PayloadTooLarge

__all__ = ["DRAIN_LIMIT", "declared_length", "drain", "read_body", "replay", "stream_limit"]

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]

DRAIN_LIMIT = 256 * 1024
DRAIN_SECONDS = 1.0


def declared_length(headers: Mapping[bytes, bytes]) -> int | None:
    """The ``Content-Length`` as an int, ``None`` if absent.

    Raises:
        BadRequest: the value is not a plain decimal number (RFC 9110 8.6), e.g. ``+5``,
            ``0x10``, ``5, 5``: parsers that read such values differently enable smuggling.
    """
    raw = headers.get(b"content-length")
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise BadRequest("bad_content_length", "The Content-Length header is malformed.",
                         reason="content_length")
    return int(raw)


async def read_body(
    receive: Receive,
    limit: int,
    progress: Callable[[], None] | None = None,
    stopped: Callable[[], None] | None = None,
) -> bytes:
    """The whole body, refused with 413 the moment it exceeds ``limit`` bytes.

    ``progress`` is called after every chunk and ``stopped`` once reading ends, refused or
    not (the slow-body watch uses them: draining is not the client being slow).
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("client_disconnected", "The client went away.",
                             reason="disconnect_during_body")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                if stopped is not None:
                    stopped()
                await drain(receive)
                raise PayloadTooLarge(reason=f"body_over_{limit}")
            chunks.append(chunk)
        if progress is not None:
            progress()
        if not message.get("more_body", False):
            if stopped is not None:
                stopped()
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def drain(receive: Receive, limit: int = DRAIN_LIMIT, seconds: float = DRAIN_SECONDS) -> None:
    """Read and discard up to ``limit`` bytes or ``seconds`` of the unread body."""
    deadline = time.monotonic() + seconds
    drained = 0
    while drained < limit:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        try:
            message = await asyncio.wait_for(receive(), remaining)
        except TimeoutError:
            return
        if message["type"] != "http.request":
            return
        drained += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that yields ``body`` once, then defers to the real one (disconnects)."""
    sent = False

    async def receive_replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return receive_replayed


def stream_limit(
    receive: Receive,
    limit: int,
    on_refusal: Callable[[PayloadTooLarge], None],
    progress: Callable[[], None] | None = None,
    stopped: Callable[[], None] | None = None,
) -> Receive:
    """Wrap ``receive`` for an app that reads the body itself: refuse past ``limit`` bytes.

    The refusal is handed to ``on_refusal`` before it is raised into the app, because apps
    catch exceptions raised by ``receive`` and turn them into their own 500s; the pipeline
    answers with the recorded refusal instead.
    """
    size = 0

    async def receive_limited() -> Message:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit:
                refusal = PayloadTooLarge(reason=f"body_over_{limit}")
                on_refusal(refusal)
                if stopped is not None:
                    stopped()
                await drain(receive)
                raise refusal
            if not message.get("more_body", False):
                if stopped is not None:
                    stopped()
            elif progress is not None:
                progress()
        return message

    return receive_limited
