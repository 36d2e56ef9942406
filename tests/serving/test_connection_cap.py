"""Connection caps over real sockets, and the counting rules behind them."""

from __future__ import annotations

import asyncio
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

import orjson
import pytest
import uvicorn

from apiforge.serving import (
    ConnectionLimits,
    ConnectionTracker,
    client_key,
    http_protocol_class,
    tracker_of,
)

Implementation = Literal["httptools", "h11"]
IMPLEMENTATIONS: list[Implementation] = ["httptools", "h11"]
OTHER_CLIENT = "127.0.0.2"  # all of 127.0.0.0/8 is loopback on Linux: a second client address


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            pass
        return
    assert scope["type"] == "http"
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/boom":
        raise RuntimeError("handler failure")
    payload = orjson.dumps({"received": len(body)})
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class Server:
    """uvicorn on 127.0.0.1 (an ephemeral port) in a background thread."""

    def __init__(self, limits: ConnectionLimits, implementation: Implementation) -> None:
        self.protocol = http_protocol_class(limits, implementation=implementation)
        self.tracker = tracker_of(self.protocol)
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            http=self.protocol,
            lifespan="off",
            log_level="critical",
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)
        self.port = 0

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 5
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)

    def connect(self, source: str = "127.0.0.1") -> socket.socket:
        return socket.create_connection(
            ("127.0.0.1", self.port), timeout=5, source_address=(source, 0)
        )

    def wait_open(self, expected: int, source: str = "127.0.0.1") -> None:
        """Wait until the server counts ``expected`` connections from ``source``."""
        wait_for(lambda: self.tracker.open_for(source) == expected)


def wait_for(condition: Callable[[], bool], within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


@pytest.fixture(params=IMPLEMENTATIONS)
def implementation(request: pytest.FixtureRequest) -> Implementation:
    value: Implementation = request.param
    return value


@pytest.fixture
def server(implementation: Implementation) -> Iterator[Server]:
    limits = ConnectionLimits(header_timeout=5.0, max_connections_per_client=3, max_connections=5)
    with Server(limits, implementation) as running:
        yield running


def get(sock: socket.socket, path: str = "/", body: bytes = b"") -> dict[str, Any]:
    """One keep-alive request on ``sock``; the decoded JSON answer of a 200."""
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    )
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before the answer"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk
        rest += chunk
    result: dict[str, Any] = orjson.loads(rest)
    return result


def refusal(sock: socket.socket, within: float = 2.0) -> bytes:
    """Everything the server sent before closing ``sock``; fails if it stays open."""
    received = b""
    deadline = time.monotonic() + within
    while True:
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([sock], [], [], max(0.0, remaining))
        assert ready, "the connection over the cap was left open"
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk


def reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashed or hostile client does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.timeout(10)
def test_extra_connections_are_refused_and_counts_are_released(server: Server) -> None:
    first = [server.connect() for _ in range(3)]
    try:
        server.wait_open(3)
        with server.connect() as extra:
            answer = refusal(extra)
        # Best effort: the 429 is written before the close, and no request was sent to race it.
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
        assert b"connection: close" in head and b"retry-after: 1" in head
        assert orjson.loads(body)["code"] == "too_many_connections"
        # The first ones still work, with and without a body.
        for sock in first:
            assert get(sock) == {"received": 0}
        assert get(first[0], body=b"b" * 200_000) == {"received": 200_000}
        assert server.tracker.stats().refused_per_client == 1
    finally:
        for sock in first:
            sock.close()
    server.wait_open(0)
    again = [server.connect() for _ in range(3)]
    try:
        for sock in again:
            assert get(sock) == {"received": 0}
    finally:
        for sock in again:
            sock.close()
    server.wait_open(0)
    assert server.tracker.open_connections == 0


@pytest.mark.timeout(10)
def test_cap_is_per_client_address(server: Server) -> None:
    mine = [server.connect() for _ in range(3)]
    try:
        server.wait_open(3)
        with server.connect(OTHER_CLIENT) as other:
            assert get(other) == {"received": 0}
            assert server.tracker.open_for(OTHER_CLIENT) == 1
        with server.connect() as extra:
            assert refusal(extra).startswith(b"HTTP/1.1 429 ")
    finally:
        for sock in mine:
            sock.close()


@pytest.mark.timeout(10)
def test_global_cap_refuses_with_503(server: Server) -> None:
    socks = [server.connect() for _ in range(3)]
    socks += [server.connect(OTHER_CLIENT) for _ in range(2)]
    try:
        wait_for(lambda: server.tracker.open_connections == 5)
        with server.connect("127.0.0.3") as extra:
            answer = refusal(extra)
        assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert server.tracker.stats().refused_total == 1
        assert get(socks[-1]) == {"received": 0}
    finally:
        for sock in socks:
            sock.close()
    wait_for(lambda: server.tracker.open_connections == 0)


@pytest.mark.timeout(10)
def test_counts_are_released_on_every_way_a_connection_ends(implementation: Implementation) -> None:
    limits = ConnectionLimits(header_timeout=0.5, max_connections_per_client=3)
    with Server(limits, implementation) as server:
        # A client reset in the middle of a head.
        sock = server.connect()
        sock.sendall(b"GET / HTTP/1.1\r\nHo")
        server.wait_open(1)
        reset(sock)
        server.wait_open(0)
        # A client reset right after a response, on a kept-alive connection.
        sock = server.connect()
        assert get(sock) == {"received": 0}
        reset(sock)
        server.wait_open(0)
        # A malformed request: the server answers 400 and closes.
        with server.connect() as sock:
            sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            assert refusal(sock).startswith(b"HTTP/1.1 400 ")
        server.wait_open(0)
        # A handler that fails: the server answers 500 and closes.
        with server.connect() as sock:
            sock.sendall(b"GET /boom HTTP/1.1\r\nHost: t\r\n\r\n")
            assert refusal(sock).startswith(b"HTTP/1.1 500 ")
        server.wait_open(0)
        # The head deadline.
        with server.connect() as sock:
            server.wait_open(1)
            refusal(sock, within=2.0)
        server.wait_open(0)
        # A refused connection never took a slot, so closing it gives none back.
        held = [server.connect() for _ in range(3)]
        server.wait_open(3)
        with server.connect() as extra:
            refusal(extra)
        server.wait_open(3)
        for sock in held:
            sock.close()
        server.wait_open(0)
        assert server.tracker.open_connections == 0
        assert server.tracker.stats().clients == 0


@pytest.mark.timeout(10)
def test_websocket_keeps_its_slot_until_it_closes(implementation: Implementation) -> None:
    limits = ConnectionLimits(header_timeout=0.5, max_connections_per_client=2)
    with Server(limits, implementation) as server, server.connect() as sock:
        sock.sendall(
            b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            assert chunk
            data += chunk
        assert data.startswith(b"HTTP/1.1 101 ")
        # Past the head deadline: the upgraded connection is not cut, and still counted.
        time.sleep(1.0)
        assert server.tracker.open_for("127.0.0.1") == 1
        ready, _, _ = select.select([sock], [], [], 0)
        assert not ready, "the upgraded connection was closed"
        sock.close()
        server.wait_open(0)


def test_client_key_normalizes_addresses() -> None:
    assert client_key("203.0.113.7") == "203.0.113.7"
    assert client_key("::ffff:203.0.113.7") == "203.0.113.7"
    assert (
        client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    )
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("2001:db8::1", ipv6_prefix_length=128) == "2001:db8::1"
    assert client_key("2001:DB8:0:0::1", ipv6_prefix_length=48) == "2001:db8::/48"
    assert client_key("/run/apiforge.sock") == "/run/apiforge.sock"


def test_tracker_counts_and_refuses() -> None:
    tracker = ConnectionTracker(ConnectionLimits(max_connections_per_client=2, max_connections=3))
    assert [tracker.acquire("a"), tracker.acquire("a"), tracker.acquire("a")] == [0, 0, 429]
    assert tracker.acquire("b") == 0
    assert tracker.acquire("c") == 503
    assert tracker.acquire(None) == 503
    tracker.release("a")
    assert tracker.acquire(None) == 0  # no address: only the global cap applies
    tracker.release(None)
    tracker.release("nobody")  # never acquired: no effect, never negative
    stats = tracker.stats()
    assert stats.open_connections == 2 and stats.clients == 2
    assert (stats.refused_per_client, stats.refused_total) == (1, 2)
    tracker.release("a")
    tracker.release("b")
    tracker.release("b")
    assert tracker.stats().open_connections == 0 and tracker.stats().clients == 0


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"header_timeout": 0}, "header_timeout"),
        ({"header_timeout": float("nan")}, "header_timeout"),
        ({"max_connections_per_client": 0}, "max_connections_per_client"),
        ({"max_connections": True}, "max_connections"),
        ({"max_connections_per_client": 10, "max_connections": 5}, "max_connections_per_client"),
        ({"ipv6_prefix_length": 129}, "ipv6_prefix_length"),
    ],
)
def test_limits_refuse_unsafe_values(settings: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ConnectionLimits(**settings)


def test_protocol_class_choice_and_tracker_sharing() -> None:
    from uvicorn.protocols.http.h11_impl import H11Protocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    limits = ConnectionLimits()
    assert issubclass(http_protocol_class(limits), HttpToolsProtocol)
    assert issubclass(http_protocol_class(limits, implementation="h11"), H11Protocol)
    shared = ConnectionTracker(limits)
    first = http_protocol_class(limits, tracker=shared)
    second = http_protocol_class(limits, implementation="h11", tracker=shared)
    assert tracker_of(first) is tracker_of(second) is shared
    assert tracker_of(http_protocol_class(limits)) is not shared
    with pytest.raises(ValueError, match="other ConnectionLimits"):
        http_protocol_class(ConnectionLimits(header_timeout=1), tracker=shared)
    with pytest.raises(TypeError):
        tracker_of(H11Protocol)
