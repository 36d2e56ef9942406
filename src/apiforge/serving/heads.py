"""Response heads written with the header lines an API repeats on every answer made once.

uvicorn's httptools protocol checks every response header on every response: two regular
expressions, a lower-casing and a copy per header. A protected API sends the same dozen lines
on every answer (``Content-Security-Policy``, ``X-Content-Type-Options``, ``Vary``,
``RateLimit-Policy``, ...), so most of that work repeats itself. :class:`HeadWriterCycle`
writes exactly the bytes uvicorn writes (a test compares both on generated header lists), but
keeps the checked and serialized line of each repeated ``(name, value)`` pair and writes it as
it is when the same pair comes again. Headers whose value changes on every answer
(``X-Request-ID``, ``RateLimit``) have their name checked once and their value every time.

Only names whose values are fixed by configuration are kept, and none that changes how the
response is framed (``Content-Length``, ``Transfer-Encoding``, ``Connection``), so a kept line
stands for exactly the work it skips. The table is bounded: once full, further pairs are
checked every time, as before. Anything unusual (access log on, a paused or closed transport,
an unknown status) is left to uvicorn's own code.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    RequestResponseCycle,
)

__all__ = ["MAX_KEPT_LINES", "HeadWriterCycle"]

# Header names an app or our layers send with the same value on answer after answer.
_REPEATED_NAMES = frozenset({
    b"content-type", b"vary", b"cache-control", b"content-security-policy",
    b"x-content-type-options", b"x-frame-options", b"referrer-policy",
    b"cross-origin-resource-policy", b"cross-origin-opener-policy",
    b"cross-origin-embedder-policy", b"permissions-policy", b"strict-transport-security",
    b"ratelimit-policy", b"access-control-allow-origin", b"access-control-allow-credentials",
    b"access-control-expose-headers", b"allow", b"www-authenticate",
})
MAX_KEPT_LINES = 1024
"""The most ``(name, value)`` lines kept; a process-wide bound, whatever the answers hold."""

_kept: dict[tuple[bytes, bytes], bytes] = {}
# Names that passed the check, lower-cased, for headers whose values change on every answer
# (X-Request-ID, RateLimit): the name is checked once, the value every time. Names that frame
# the response are never here: they must be read on every answer.
_checked_names: dict[bytes, bytes] = {}
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection"})


class HeadWriterCycle(RequestResponseCycle):
    """uvicorn's request-response cycle, with repeated header lines serialized once."""

    async def send(self, message: Any) -> None:
        if (self.response_started or self.disconnected or self.access_log
                or self.flow.write_paused or message["type"] != "http.response.start"
                or message["status"] not in STATUS_LINE):
            await super().send(message)
            return
        self.response_started = True
        self.waiting_for_100_continue = False
        status_code = message["status"]
        content = [STATUS_LINE[status_code]]
        has_connection_close = False
        kept = _kept
        checked = _checked_names
        for header in (*self.default_headers, *message.get("headers", ())):
            try:
                line = kept.get(header)
            except TypeError:  # a list pair, or a bytearray in it: not kept, checked as usual
                line = None
            if line is not None:
                content.append(line)
                continue
            name, value = header
            lower = checked.get(name) if type(name) is bytes else None
            if lower is not None:
                if HEADER_VALUE_RE.search(value):
                    raise RuntimeError("Invalid HTTP header value.")
                content.append(b"".join((lower, b": ", value, b"\r\n")))
                continue
            if HEADER_RE.search(name):
                raise RuntimeError("Invalid HTTP header name.")
            if HEADER_VALUE_RE.search(value):
                raise RuntimeError("Invalid HTTP header value.")
            lower = name.lower()
            if (lower not in _FRAMING and lower not in _REPEATED_NAMES and type(name) is bytes
                    and len(checked) < MAX_KEPT_LINES):
                checked[name] = lower
            if lower == b"content-length" and self.chunked_encoding is None:
                self.expected_content_length = int(value.decode())
                self.chunked_encoding = False
            elif lower == b"transfer-encoding" and value.lower() == b"chunked":
                self.expected_content_length = 0
                self.chunked_encoding = True
            elif lower == b"connection":
                connection = [token.lower().strip() for token in value.split(b",")]
                if b"close" in connection:
                    self.keep_alive = False
                    has_connection_close = True
            line = b"".join((lower, b": ", value, b"\r\n"))
            content.append(line)
            if (lower in _REPEATED_NAMES and len(kept) < MAX_KEPT_LINES
                    and type(header) is tuple and type(name) is bytes and type(value) is bytes):
                kept[header] = line
        if not self.keep_alive and not has_connection_close:
            content.append(b"connection: close\r\n")
        if (self.chunked_encoding is None and self.scope["method"] != "HEAD"
                and status_code not in (204, 304)):
            self.chunked_encoding = True
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        self.transport.write(b"".join(content))
