"""The app served on the plain-HTTP port: it redirects to HTTPS and never serves the API.

* ``GET`` / ``HEAD`` without credentials: ``301`` to ``https://<canonical host>[:port]`` plus
  the request's path and query, with no body. The host is the configured one, never the
  request's ``Host``: echoing ``Host`` would make this listener an open redirect to any site.
* Any other method, or any request carrying ``Authorization``, ``X-API-Key`` or ``Cookie``:
  ``403`` problem (``https_required``) and an event. A redirect would teach the client that
  cleartext works, and for a ``POST`` it would either drop the body or (307/308) make the
  client send it, and its secrets, again. The credential has already crossed the network in
  clear by then: the event says so, so the key can be rotated.

Events (no OWASP vocabulary name fits, hence ``apiforge_`` names):

* ``apiforge_cleartext_credentials`` — credentials were sent over plain HTTP. ``authz_fail``
  would be wrong: nothing was authenticated or authorized; the credential itself must now be
  treated as disclosed. ``key_exposed=True`` when an API key was among them (``CRITICAL``),
  with the key's public id (``afk_<env>_<id>``) when it has our shape; never the secret.
* ``apiforge_cleartext_request`` — a method other than GET/HEAD without credential headers:
  its body may still carry secrets (a login form), which this listener never reads.

This listener never sends ``Strict-Transport-Security``: RFC 6797 section 7.2 forbids it over
plain HTTP, where an attacker could inject or strip it. Every response carries the request id.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import quote

from apiforge.core.client import DNS_NAME, normalize_address
from apiforge.core.context import RequestContext
from apiforge.core.problem import DEFAULT_TYPE_BASE, send_problem
from apiforge.core.request_id import RequestIds
from apiforge.errors import ApiError, BadRequest, ConfigurationError, Forbidden
from apiforge.events import EventBus, make_event

__all__ = ["PlainHttpApp"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# The raw path as sent: visible ASCII only, starting with `/`, no backslash (browsers read `\`
# as `/` in http(s) URLs, so `/\evil.com` could turn into a redirect to another host).
_RAW_PATH = re.compile(rb"/[\x21-\x5b\x5d-\x7e]*\Z")
_RAW_QUERY = re.compile(rb"[\x21-\x7e]*\Z")
# The decoded path: an encoded CR/LF, NUL or backslash is as suspect as a raw one.
_DECODED_BAD = re.compile(r"[\\\x00-\x1f\x7f]")
_API_KEY = re.compile(rb"(?:^|\s)(afk_[A-Za-z0-9]{1,16}_[A-Za-z0-9]{1,64})_[A-Za-z0-9_-]+\s*\Z")
_CREDENTIALS = (b"authorization", b"x-api-key", b"cookie")
_SAFE_METHODS = frozenset({"GET", "HEAD"})
# Characters of a decoded path kept as they are when no raw path is available.
_PATH_SAFE = "/!$&'()*+,;=:@-._~"


class PlainHttpApp:
    """ASGI app for the plain-HTTP listener: redirect to HTTPS, refuse everything else.

    Args:
        canonical_host: the HTTPS host name every redirect points to (``api.example.com``),
            fixed here so a forged ``Host`` can never choose the redirect target.
        https_port: the HTTPS port; added to ``Location`` unless it is 443.
        events: receives ``apiforge_cleartext_credentials`` and ``apiforge_cleartext_request``.
        type_base: base of the problem ``type`` links, as in the policy.

    Raises:
        ConfigurationError: the host is not a bare host name or IP address, or the port is out
            of range.
    """

    def __init__(
        self,
        canonical_host: str,
        https_port: int,
        events: EventBus,
        *,
        type_base: str = DEFAULT_TYPE_BASE,
    ) -> None:
        host = canonical_host.lower().removesuffix(".")
        if not _valid_host(host):
            raise ConfigurationError(
                f"canonical_host {canonical_host!r} must be a bare host name or IP address"
                " (no scheme, port or path), e.g. 'api.example.com'"
            )
        if not 0 < https_port < 65536:
            raise ConfigurationError(f"https_port {https_port!r} must be 1-65535")
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 literal in a URL needs brackets (RFC 3986 3.2.2)
        self.canonical_host = host
        self.https_port = https_port
        self.events = events
        self._type_base = type_base
        authority = host if https_port == 443 else f"{host}:{https_port}"
        self._target = f"https://{authority}".encode("ascii")
        self._ids = RequestIds()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(receive, send)
            return
        if kind != "http":
            if kind == "websocket":  # no cleartext websocket either
                await receive()
                await send({"type": "websocket.close", "code": 1008})
            return

        headers: dict[bytes, bytes] = dict(scope["headers"])
        request_id = self._ids.for_request(headers)
        method: str = scope["method"]
        head = method == "HEAD"
        sent = [name for name in _CREDENTIALS if name in headers]
        if sent or method not in _SAFE_METHODS:
            self._report(scope, headers, request_id, sent)
            await self._problem(send, Forbidden(
                "https_required", "This API is served over HTTPS only; use the https:// URL.",
                reason="cleartext_credentials" if sent else "unsafe_method",
            ), request_id, head)
            return

        raw_path: bytes | None = scope.get("raw_path")
        if raw_path is None:
            raw_path = quote(scope["path"], safe=_PATH_SAFE).encode("ascii")
        query: bytes = scope.get("query_string", b"")
        if (
            not _RAW_PATH.match(raw_path)
            or _DECODED_BAD.search(scope["path"])
            or not _RAW_QUERY.match(query)
        ):
            error = BadRequest("bad_path", "The request path is malformed.",
                               reason="unsafe_redirect_target")
            self.events.emit(make_event("input_validation_fail",
                                        ctx=self._context(scope, headers, request_id),
                                        reason="unsafe_redirect_target", listener="plain_http"))
            await self._problem(send, error, request_id, head)
            return

        # The path keeps its leading `/`, so even `//evil.com` stays a path on our host.
        location = self._target + raw_path + (b"?" + query if query else b"")
        await send({"type": "http.response.start", "status": 301, "headers": [
            (b"location", location),
            (b"content-length", b"0"),
            (b"x-request-id", request_id.encode("ascii")),
        ]})
        await send({"type": "http.response.body", "body": b""})

    async def _problem(self, send: Send, error: ApiError, request_id: str, head: bool) -> None:
        await send_problem(send, error, request_id, type_base=self._type_base,
                           extra_headers=[(b"x-content-type-options", b"nosniff")], head=head)

    def _context(self, scope: Scope, headers: dict[bytes, bytes], request_id: str,
                 ) -> RequestContext:
        peer = scope.get("client")
        client = normalize_address(peer[0]) if peer else "unknown"
        return RequestContext(request_id, client, "http", scope["method"], scope["path"],
                              headers)

    def _report(self, scope: Scope, headers: dict[bytes, bytes], request_id: str,
                sent: list[bytes]) -> None:
        ctx = self._context(scope, headers, request_id)
        if not sent:
            self.events.emit(make_event("apiforge_cleartext_request", ctx=ctx,
                                        reason="unsafe_method", listener="plain_http"))
            return
        key_id = None
        key_exposed = b"x-api-key" in headers
        for name in (b"x-api-key", b"authorization"):
            value = headers.get(name)
            match = _API_KEY.search(value) if value is not None else None
            if match is not None:
                key_exposed = True
                key_id = match.group(1).decode("ascii")
                break
        # Only the key's public id (`afk_<env>_<id>`) is recorded, never its secret part.
        self.events.emit(make_event(
            "apiforge_cleartext_credentials", ctx=ctx,
            level="CRITICAL" if key_exposed else "WARN",
            reason="cleartext_credentials", listener="plain_http",
            credentials=[name.decode("ascii") for name in sent],
            key_exposed=key_exposed, key_id=key_id,
        ))


def _valid_host(host: str) -> bool:
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return DNS_NAME.match(host) is not None
    return True


async def _lifespan(receive: Receive, send: Send) -> None:
    """Complete start-up and shut-down: this app holds no resources."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
