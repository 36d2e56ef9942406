"""The Host allowlist: refuse any request that names a host this service does not serve.

An app that builds absolute URLs from the ``Host`` header (password-reset links, redirects,
``Location``, cache keys) can be made to point them at an attacker's domain by a forged
``Host`` ("Host header poisoning"), and a browser tricked by DNS rebinding sends an attacker's
host name to a service bound to ``127.0.0.1``. Both are stopped by answering 400 to any ``Host``
outside a fixed list, before anything else runs.

The list is compiled once into a set of exact names and a tuple of suffixes; a request does a
set lookup (and, only for names outside the set, a suffix check). Policy values are names and
``*.`` patterns, never regular expressions: a user regex with an unescaped ``.`` or a missing
anchor is the classic allowlist bypass.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping

from pydantic import Field, field_validator

from apiforge.core.client import DNS_NAME
from apiforge.core.context import RequestContext
from apiforge.core.pipeline import RequestHook, ResponseHook, Scope
from apiforge.core.routing import RoutePlan
from apiforge.errors import BadRequest
from apiforge.policy.base import PolicyModel

__all__ = ["DEFAULT_ALLOWED_HOSTS", "HostLayer", "HostSettings"]

DEFAULT_ALLOWED_HOSTS = ("localhost", "127.0.0.1", "[::1]")
"""Loopback names only: a service deployed without its real name in the policy refuses every
outside request (fail closed, and loudly) instead of accepting any ``Host``."""

# A request's host name, once lower-cased: only DNS characters may precede an allowed suffix,
# so `evil.com/x.example.com` or `a@b.example.com` never match `*.example.com`.
_REQUEST_NAME = re.compile(rb"[a-z0-9-]+(?:\.[a-z0-9-]+)*\Z")
_KNOWN_LIMIT = 1024
_TITLE = "The Host header does not name a host this service answers for."


def _normalize_entry(entry: str) -> str:
    """One ``allowed_hosts`` entry, lower-cased, without trailing dot; ValueError if malformed."""
    if entry == "*":
        return entry
    text = entry.strip().lower()
    if "/" in text or "@" in text:
        raise ValueError(
            f"allowed_hosts: {entry!r}: give the host name only (no scheme, path or user info)"
        )
    name, port = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"allowed_hosts: {entry!r} opens '[' without closing it")
        name, rest = text[: end + 1], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"allowed_hosts: {entry!r}: only ':port' may follow ']'")
            port = rest[1:]
        try:
            ipaddress.IPv6Address(name[1:-1])
        except ValueError:
            raise ValueError(
                f"allowed_hosts: {entry!r} is not an IPv6 address in brackets"
            ) from None
    else:
        if text.count(":") > 1:
            raise ValueError(
                f"allowed_hosts: {entry!r}: write an IPv6 address in brackets, e.g. '[::1]'"
            )
        name, _, port = text.partition(":")
        name = name.removesuffix(".")
        bare = name.removeprefix("*.")
        if "*" in bare:
            raise ValueError(
                f"allowed_hosts: {entry!r}: '*' may only be the whole leftmost label, as in"
                " '*.example.com', or the whole entry '*'"
            )
        if not DNS_NAME.match(bare):
            raise ValueError(
                f"allowed_hosts: {entry!r} is not a host name (letters, digits, '-' and '.';"
                " no scheme, path or user info)"
            )
        if name.startswith("*.") and "." not in bare:
            raise ValueError(
                f"allowed_hosts: {entry!r} would allow every name under a top-level domain;"
                " name your own domain, e.g. '*.example.com'"
            )
    if port:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"allowed_hosts: {entry!r}: the port must be 1-65535")
        return f"{name}:{int(port)}"
    return name


class HostSettings(PolicyModel):
    """Which ``Host`` header values this service answers (DNS rebinding, Host poisoning)."""

    allowed_hosts: list[str] = Field(default_factory=lambda: list(DEFAULT_ALLOWED_HOSTS))
    """Host names this service answers for; any other `Host` gets a 400 before anything else
    runs. An entry is an exact name (`api.example.com`), an IPv4 address, an IPv6 address in
    brackets (`[::1]`) or a pattern `*.example.com`, which matches any name below
    `example.com` at any depth (`a.example.com`, `a.b.example.com`) but never `example.com`
    itself: list both when both are served. Matching ignores case and a trailing dot. An entry
    without a port matches any port; `api.example.com:8443` matches that port only.
    The default allows only loopback names (`localhost`, `127.0.0.1`, `[::1]`): put your
    public names here before deploying. `"*"` allows any host and must be the only entry; it
    is meant for a service that sits behind a proxy which already checks `Host`. A request
    without `Host` is refused, except that with `"*"` an HTTP/1.0 request may omit it."""

    @field_validator("allowed_hosts")
    @classmethod
    def _check_hosts(cls, hosts: list[str]) -> list[str]:
        if not hosts:
            raise ValueError(
                "allowed_hosts is empty, so every request would be refused; list your host"
                " names, or '*' if a proxy in front already checks Host"
            )
        if "*" in hosts and len(hosts) > 1:
            raise ValueError("allowed_hosts: '*' allows every host; use it alone or remove it")
        return [_normalize_entry(entry) for entry in hosts]


class HostLayer:
    """Early hook that refuses a request whose ``Host`` is not allowed, with 400.

    The pipeline turns the ``BadRequest`` it raises into a problem response and emits the
    ``input_validation_fail`` event (reason ``host_not_allowed`` or ``host_missing``), so this
    layer needs no event bus of its own. Place it first among the layers: nothing, not even a
    CORS preflight, should be answered for a host we do not serve.

    Args:
        settings: the allowlist. Its entries are already validated and normalized.
    """

    name = "hosts"

    def __init__(self, settings: HostSettings) -> None:
        self.settings = settings
        self._any = settings.allowed_hosts == ["*"]
        any_port: set[bytes] = set()
        with_port: set[bytes] = set()
        suffixes: list[bytes] = []
        port_suffixes: dict[bytes, list[bytes]] = {}
        for entry in settings.allowed_hosts:
            if entry == "*":
                continue
            if entry.startswith("["):
                name, _, port = entry.partition("]")
                name += "]"
                port = port.removeprefix(":")
            else:
                name, _, port = entry.partition(":")
            raw = name.encode("ascii")
            if raw.startswith(b"*."):
                if port:
                    port_suffixes.setdefault(port.encode(), []).append(raw[1:])
                else:
                    suffixes.append(raw[1:])
            elif port:
                with_port.add(raw + b":" + port.encode())
            else:
                any_port.add(raw)
        self._names = frozenset(any_port)
        # Header values already found allowed, as received: after the first request, a name
        # matched by a pattern or with a port costs one set lookup too. Only allowed values
        # enter it and it is emptied when full, so random names cannot grow it.
        self._known: set[bytes] = set(self._names)
        self._names_with_port = frozenset(with_port)
        self._suffixes = tuple(suffixes)
        self._port_suffixes: Mapping[bytes, tuple[bytes, ...]] = {
            port: tuple(values) for port, values in port_suffixes.items()
        }

    def allows(self, host: bytes) -> bool:
        """Whether a ``Host`` header value (as received, bytes) is allowed.

        The request path runs the same check, with the set lookup inlined.
        """
        if self._any or host in self._known:  # the common case: one set lookup
            return True
        if self._matches(host):
            if len(self._known) >= _KNOWN_LIMIT:
                self._known = set(self._names)
            self._known.add(host)
            return True
        return False

    def _matches(self, host: bytes) -> bool:
        host = host.lower()
        if host.startswith(b"["):
            end = host.find(b"]")
            if end < 0:
                return False
            name, rest = host[: end + 1], host[end + 1 :]
            if rest and not rest.startswith(b":"):
                return False
            port = rest[1:]
        else:
            name, _, port = host.partition(b":")
            # A trailing dot names the same host in DNS (`example.com.`); strip one.
            if name.endswith(b"."):
                name = name[:-1]
        if port:
            if not port.isdigit() or len(port) > 5:
                return False
            port = str(int(port)).encode()  # `:08443` is port 8443
        if name in self._names:
            return True
        if port and name + b":" + port in self._names_with_port:
            return True
        if not _REQUEST_NAME.match(name):
            return False
        if self._suffixes and name.endswith(self._suffixes):
            return True
        by_port = self._port_suffixes.get(port) if port else None
        return by_port is not None and name.endswith(by_port)

    def early_hook(self) -> RequestHook:
        """The per-request check: one set lookup for an allowed exact name."""
        allows = self.allows

        if self._any:
            def any_host(ctx: RequestContext, scope: Scope) -> None:
                # RFC 9112 section 3.2: a server MUST answer 400 to HTTP/1.1 without Host.
                if b"host" not in ctx.headers and scope.get("http_version") != "1.0":
                    raise BadRequest("host_not_allowed", _TITLE, reason="host_missing")

            return any_host

        def check_host(ctx: RequestContext, scope: Scope) -> None:
            host = ctx.headers.get(b"host")
            if host in self._known:  # the common case: one set lookup
                return
            if host is None:
                raise BadRequest("host_not_allowed", _TITLE, reason="host_missing")
            if not allows(host):
                raise BadRequest("host_not_allowed", _TITLE, reason="host_not_allowed")

        return check_host

    def response_hook(self) -> ResponseHook | None:
        """None: the allowlist adds no response headers."""
        return None

    def attach(self, plan: RoutePlan) -> None:
        """Nothing per route: the check runs before routing, for every request."""
        return None
