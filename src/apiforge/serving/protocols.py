"""Connection-level protections for the HTTP/1.1 protocols of uvicorn.

The ASGI app, and so every APIForge layer, first sees a request once its head (request line and
headers) has been parsed. Two attacks never get that far and have to be stopped in the protocol:

* **Slow headers (slowloris).** uvicorn has no header-read timeout: its keep-alive timer is
  cancelled by the first byte of a request and is not armed again until a response completes
  (uvicorn #157), so a client that trickles a header byte every few seconds holds its connection
  forever. A few hundred such clients hold every file descriptor of the server.
* **Connection floods.** Nothing limits how many connections one address opens; each costs a
  descriptor, buffers and a protocol object even if it never sends a byte.

:func:`http_protocol_class` returns a subclass of uvicorn's httptools or h11 protocol that adds:

* a **head deadline**: from the moment a connection opens, and on a keep-alive connection from
  the moment the previous response completed, the whole request head must arrive within
  ``header_timeout`` seconds. The deadline is fixed when it starts; bytes arriving do not move
  it, so trickling buys nothing. When it passes, a connection that holds part of a head gets a
  ``408 Request Timeout`` (``Connection: close``, a short ``application/problem+json`` body) and
  is closed; a connection that sent nothing since it opened or since its last response is closed
  without an answer, as an idle keep-alive connection is (clients that reuse it retry).
* **connection caps**: at most ``max_connections_per_client`` open connections per client
  address and ``max_connections`` in all. A connection over a cap is closed as soon as it is
  accepted, after a best-effort ``429`` (per-client cap, with ``Retry-After``) or ``503``
  (global cap), both ``Connection: close`` with a problem body: the client may already have sent
  its request and then sees a reset rather than the answer; either way nothing of the request is
  read. IPv4-mapped IPv6 peers count as their IPv4 address, and IPv6 peers are grouped by their
  ``/64`` (``ipv6_prefix_length``), since one IPv6 subscriber is usually handed a whole ``/64``.

Cost on the normal path: one timer per connection, re-armed lazily (the deadline is a float that
a response stores; the timer, when it fires, moves itself to the stored deadline), and no work
per byte. Per request, the httptools variant adds two short method calls (head complete, response
complete), the h11 variant one per received chunk and one per response; per connection, one
dictionary update on open and one on close.

Scope and limits of what is protected:

* The counts are those of one event loop (one server process). With several worker processes
  each has its own tracker, so a client may hold ``workers * max_connections_per_client``.
* The client address is the TCP peer. Behind a reverse proxy every connection comes from the
  proxy, so raise ``max_connections_per_client`` to the proxy's pool size there.
* Over TLS, asyncio calls ``connection_made`` once the handshake is done, so the head deadline
  starts after it; the handshake itself is bounded by the event loop's TLS handshake timeout.
* Request bodies are not timed here: the pipeline reads bodies with its own limits and deadline.
* A connection upgraded to WebSocket leaves the head deadline (the WebSocket protocol has its own
  timeouts) but keeps its slot in the counts until it closes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal, cast

import h11
import orjson
from uvicorn.protocols.http.h11_impl import H11Protocol

from apiforge.core.client import address_group
from apiforge.core.problem import DEFAULT_TYPE_BASE, PROBLEM_CONTENT_TYPE

__all__ = [
    "ConnectionLimits",
    "ConnectionStats",
    "ConnectionTracker",
    "client_key",
    "http_protocol_class",
    "tracker_of",
]

logger = logging.getLogger("apiforge.serving")

Implementation = Literal["auto", "httptools", "h11"]

# asyncio may run a timer up to its clock resolution early; a deadline this close counts as
# passed instead of being re-armed for a few microseconds.
_DEADLINE_SLACK = 0.001


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Connection-level limits of one server.

    Attributes:
        header_timeout: Seconds a request head (request line and headers) may take to arrive,
            counted from the connection's opening or from the end of the previous response.
        max_connections_per_client: Open connections allowed per client address (an IPv6
            client is its ``/ipv6_prefix_length`` network).
        max_connections: Open connections allowed in all on this server.
        ipv6_prefix_length: How many leading bits of an IPv6 address identify one client.
    """

    header_timeout: float = 10.0
    max_connections_per_client: int = 64
    max_connections: int = 2048
    ipv6_prefix_length: int = 64

    def __post_init__(self) -> None:
        if not self.header_timeout > 0:  # also refuses NaN
            raise ValueError(
                f"header_timeout must be a positive number of seconds, got {self.header_timeout!r}"
            )
        for name in ("max_connections_per_client", "max_connections"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer of at least 1, got {value!r}")
        if self.max_connections_per_client > self.max_connections:
            raise ValueError(
                "max_connections_per_client must not exceed max_connections, got "
                f"{self.max_connections_per_client} > {self.max_connections}"
            )
        prefix = self.ipv6_prefix_length
        if isinstance(prefix, bool) or not isinstance(prefix, int) or not 1 <= prefix <= 128:
            raise ValueError(f"ipv6_prefix_length must be between 1 and 128, got {prefix!r}")


@dataclass(frozen=True, slots=True)
class ConnectionStats:
    """A snapshot of a :class:`ConnectionTracker`, for metrics.

    Attributes:
        open_connections: Connections currently holding a slot.
        clients: Distinct client keys with at least one open connection.
        refused_per_client: Connections closed at once because their client was at its cap.
        refused_total: Connections closed at once because the server was at its global cap.
        header_timeouts: Connections closed because a request head did not arrive in time.
    """

    open_connections: int
    clients: int
    refused_per_client: int
    refused_total: int
    header_timeouts: int


client_key = address_group
"""The key a peer address is counted under (see :func:`apiforge.core.client.address_group`)."""


class ConnectionTracker:
    """Open-connection counts per client and in all, shared by the connections of one server.

    Every method runs on the server's event loop thread, so no lock is taken; a tracker must not
    be shared between event loops.

    Args:
        limits: The caps to enforce.
    """

    __slots__ = (
        "_per_client",
        "_total",
        "header_timeouts",
        "limits",
        "refused_per_client",
        "refused_total",
    )

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self._per_client: dict[str | None, int] = {}
        self._total = 0
        self.refused_per_client = 0
        self.refused_total = 0
        self.header_timeouts = 0

    def acquire(self, key: str | None) -> int:
        """Take a slot for a new connection from ``key``.

        Args:
            key: The client key (see :func:`client_key`); ``None`` when the peer has no address
                (a Unix socket), which only the global cap applies to.

        Returns:
            ``0`` if the connection may stay open (the caller must :meth:`release` it later),
            else the HTTP status to refuse it with: ``503`` at the global cap, ``429`` at the
            client's cap.
        """
        if self._total >= self.limits.max_connections:
            self.refused_total += 1
            return 503
        count = self._per_client.get(key, 0)
        if key is not None and count >= self.limits.max_connections_per_client:
            self.refused_per_client += 1
            return 429
        self._per_client[key] = count + 1
        self._total += 1
        return 0

    def release(self, key: str | None) -> None:
        """Give back the slot a successful :meth:`acquire` for ``key`` took."""
        count = self._per_client.get(key, 0)
        if count <= 0:  # a release without an acquire: keep the counts honest, never negative
            return
        if count == 1:
            del self._per_client[key]  # idle clients leave no entry behind
        else:
            self._per_client[key] = count - 1
        self._total -= 1

    def open_for(self, host: str) -> int:
        """Open connections counted for the client at ``host``."""
        return self._per_client.get(client_key(host, self.limits.ipv6_prefix_length), 0)

    @property
    def open_connections(self) -> int:
        """Open connections counted in all."""
        return self._total

    def stats(self) -> ConnectionStats:
        """A snapshot of the counts."""
        return ConnectionStats(
            open_connections=self._total,
            clients=len(self._per_client),
            refused_per_client=self.refused_per_client,
            refused_total=self.refused_total,
            header_timeouts=self.header_timeouts,
        )


def _raw_problem(status: int, reason: str, code: str, title: str, extra: bytes = b"") -> bytes:
    body = orjson.dumps(
        {"type": f"{DEFAULT_TYPE_BASE}#{code}", "title": title, "status": status, "code": code}
    )
    return b"".join(
        [
            f"HTTP/1.1 {status} {reason}\r\n".encode("ascii"),
            b"content-type: " + PROBLEM_CONTENT_TYPE + b"\r\n",
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
            extra,
            b"connection: close\r\n\r\n",
            body,
        ]
    )


# Written straight to the transport, bypassing the HTTP state machines: the connection is closed
# right after, so no parser or h11 state needs to agree with them. Built once at import.
_RESPONSE_408 = _raw_problem(
    408, "Request Timeout", "request_timeout", "The request headers arrived too slowly."
)
_RESPONSE_429 = _raw_problem(
    429,
    "Too Many Requests",
    "too_many_connections",
    "Too many open connections from this client.",
    b"retry-after: 1\r\n",
)
_RESPONSE_503 = _raw_problem(
    503,
    "Service Unavailable",
    "service_unavailable",
    "The service is temporarily unavailable.",
    b"retry-after: 1\r\n",
)
_REFUSALS = {429: _RESPONSE_429, 503: _RESPONSE_503}


class _ConnectionGuard:
    """The head deadline and the connection caps, mixed into a uvicorn HTTP protocol.

    The mixin comes first in the bases so that its ``super()`` calls reach uvicorn's methods.
    Its per-connection state has class-level defaults, so uvicorn's ``__init__`` stays untouched.
    """

    # Set on the configured subclass built by http_protocol_class().
    _tracker: ClassVar[ConnectionTracker]
    _header_timeout: ClassVar[float]
    _ipv6_prefix_length: ClassVar[int]

    # Provided by uvicorn's protocol classes.
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    client: tuple[str, int] | None

    # 0.0 while no head is awaited (a request is being handled); else the loop time by which
    # the awaited head must be complete.
    _head_deadline: float = 0.0
    _head_timer: asyncio.TimerHandle | None = None
    _slot_held: bool = False
    _slot_key: str | None = None

    def _admit(self) -> None:
        """Count the new connection, or refuse it at once; start the head deadline."""
        client = self.client
        key = client_key(client[0], self._ipv6_prefix_length) if client else None
        refusal = self._tracker.acquire(key)
        if refusal:
            logger.debug("connection from %s refused: %d", key, refusal)
            self.transport.write(_REFUSALS[refusal])
            self.transport.close()
            return
        self._slot_key = key
        self._slot_held = True
        self._await_head()

    def _await_head(self) -> None:
        """Start the head deadline now; arm the timer only if none is pending."""
        deadline = self.loop.time() + self._header_timeout
        self._head_deadline = deadline
        if self._head_timer is None:
            self._head_timer = self.loop.call_at(deadline, self._on_head_timer)

    def _on_head_timer(self) -> None:
        self._head_timer = None
        deadline = self._head_deadline
        if not deadline or self.transport.is_closing():
            return  # a request is in progress: the next response completion re-arms
        if self.loop.time() < deadline - _DEADLINE_SLACK:
            # The deadline moved forward since this timer was set (a later response).
            self._head_timer = self.loop.call_at(deadline, self._on_head_timer)
            return
        self._head_deadline = 0.0
        self._tracker.header_timeouts += 1
        if self._head_partially_received():
            self.transport.write(_RESPONSE_408)
        logger.debug("connection from %s closed: request head not complete in time", self.client)
        self.transport.close()

    def _head_partially_received(self) -> bool:
        raise NotImplementedError

    def _stop_head_timer(self) -> None:
        self._head_deadline = 0.0
        timer = self._head_timer
        if timer is not None:
            self._head_timer = None
            timer.cancel()

    def _release_slot(self) -> None:
        if self._slot_held:
            self._slot_held = False
            self._tracker.release(self._slot_key)

    def _hand_slot_to_upgraded_protocol(self) -> None:
        """Keep the slot of a connection upgraded to WebSocket until that connection closes.

        uvicorn swaps the transport's protocol on upgrade, so this protocol's
        ``connection_lost`` never runs: the release moves to the new protocol's.
        """
        protocol = self.transport.get_protocol()
        this: object = self
        if protocol is this or not self._slot_held:
            return
        self._slot_held = False
        release: Callable[[], None] = _once(self._tracker.release, self._slot_key)
        original = protocol.connection_lost

        def connection_lost(exc: Exception | None) -> None:
            release()
            original(exc)

        protocol.connection_lost = connection_lost  # type: ignore[method-assign]


def _once(release: Callable[[str | None], None], key: str | None) -> Callable[[], None]:
    done = False

    def run() -> None:
        nonlocal done
        if not done:
            done = True
            release(key)

    return run


class _GuardedH11Protocol(_ConnectionGuard, H11Protocol):
    """uvicorn's h11 protocol with the head deadline and connection caps."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._admit()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        self._release_slot()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        # h11 has no head-complete callback; uvicorn makes a new cycle for each request head.
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:
            self._head_deadline = 0.0

    def on_response_complete(self) -> None:
        # Before uvicorn's: it may parse an already buffered pipelined head, which clears this.
        if not self.transport.is_closing():
            self._await_head()
        super().on_response_complete()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._stop_head_timer()
        super().handle_websocket_upgrade(event)
        self._hand_slot_to_upgraded_protocol()

    def _head_partially_received(self) -> bool:
        return bool(self.conn.trailing_data[0])


@functools.cache
def _httptools_protocol() -> type[_ConnectionGuard]:
    # Imported on demand: uvicorn's httptools module fails to import without httptools.
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

    from apiforge.serving.heads import HeadWriterCycle

    class _GuardedHttpToolsProtocol(_ConnectionGuard, HttpToolsProtocol):
        """uvicorn's httptools protocol with the head deadline and connection caps, writing
        repeated response header lines once (:mod:`apiforge.serving.heads`)."""

        # The scope uvicorn's on_message_begin had made when the head deadline started: a new
        # one means a new request line has begun, i.e. part of a head is in the parser.
        _scope_at_deadline: object = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._admit()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_head_timer()
            self._release_slot()
            super().connection_lost(exc)

        def on_headers_complete(self) -> None:
            self._head_deadline = 0.0
            super().on_headers_complete()
            cycle = getattr(self, "cycle", None)
            if type(cycle) is RequestResponseCycle:
                # Same state, one method more: the request's task looks `send` up only once
                # it runs, after this.
                cycle.__class__ = HeadWriterCycle

        def on_response_complete(self) -> None:
            # A queued pipelined request already has its head; uvicorn starts it right away.
            if not self.pipeline and not self.transport.is_closing():
                self._scope_at_deadline = self.scope
                self._await_head()
            super().on_response_complete()

        def handle_websocket_upgrade(self) -> None:
            self._stop_head_timer()
            super().handle_websocket_upgrade()
            self._hand_slot_to_upgraded_protocol()

        def _head_partially_received(self) -> bool:
            return self.scope is not self._scope_at_deadline

    return _GuardedHttpToolsProtocol


def _base_protocol(implementation: Implementation) -> type[_ConnectionGuard]:
    if implementation == "h11":
        return _GuardedH11Protocol
    try:
        return _httptools_protocol()
    except ImportError:
        if implementation == "httptools":
            raise
        return _GuardedH11Protocol


def http_protocol_class(
    limits: ConnectionLimits,
    *,
    implementation: Implementation = "auto",
    tracker: ConnectionTracker | None = None,
) -> type[asyncio.Protocol]:
    """A uvicorn HTTP protocol class that enforces ``limits``.

    Pass the result as ``uvicorn.Config(app, http=...)``. Every connection of a server made from
    one returned class shares one :class:`ConnectionTracker`; call this once per server (and
    per process), or pass the same ``tracker`` to share counts between listeners of one loop.

    Args:
        limits: The head deadline and connection caps.
        implementation: ``"httptools"`` or ``"h11"``; ``"auto"`` picks httptools when it is
            installed, as uvicorn does.
        tracker: Counts to use; a new tracker for ``limits`` when omitted. Its limits must
            equal ``limits``.

    Returns:
        A subclass of uvicorn's ``HttpToolsProtocol`` or ``H11Protocol``.

    Raises:
        ValueError: ``tracker`` was made for other limits.
        ImportError: ``implementation="httptools"`` and httptools is not installed.
    """
    if tracker is None:
        tracker = ConnectionTracker(limits)
    elif tracker.limits != limits:
        raise ValueError("the tracker was made for other ConnectionLimits")
    base = _base_protocol(implementation)
    namespace = {
        "_tracker": tracker,
        "_header_timeout": float(limits.header_timeout),
        "_ipv6_prefix_length": limits.ipv6_prefix_length,
        "__module__": __name__,
        "__doc__": base.__doc__,
    }
    name = "Limited" + base.__name__.removeprefix("_Guarded")
    return cast("type[asyncio.Protocol]", type(name, (base,), namespace))


def tracker_of(protocol_class: type[asyncio.Protocol]) -> ConnectionTracker:
    """The :class:`ConnectionTracker` of a class made by :func:`http_protocol_class`.

    Raises:
        TypeError: ``protocol_class`` was not made by :func:`http_protocol_class`.
    """
    tracker = getattr(protocol_class, "_tracker", None)
    if not isinstance(tracker, ConnectionTracker):
        raise TypeError(f"{protocol_class.__name__} was not made by http_protocol_class()")
    return tracker
