"""The head deadline over real sockets: slow heads are cut off, normal traffic is not."""

from __future__ import annotations

import asyncio
import select
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import uvicorn

from apiforge.serving import ConnectionLimits, http_protocol_class, tracker_of

IMPLEMENTATIONS = ["httptools", "h11"]
TIMEOUT = 1.0
# A head far too long to finish by trickling within the test: 0.2 s a byte is ~60 s.
SLOW_HEAD = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 256 + b"\r\n\r\n"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/slow":
        await asyncio.sleep(1.5)
    payload = orjson.dumps({"path": scope["path"], "received": len(body)})
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class Server:
    """uvicorn on 127.0.0.1 (an ephemeral port) in a background thread."""

    def __init__(self, http: Any) -> None:
        self.protocol = http
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            http=http,
            lifespan="off",
            log_level="critical",
            access_log=False,
            server_header=False,
            timeout_keep_alive=30,
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

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        return sock


@pytest.fixture(params=IMPLEMENTATIONS)
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    limits = ConnectionLimits(header_timeout=TIMEOUT)
    with Server(http_protocol_class(limits, implementation=request.param)) as running:
        yield running


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Read one Content-Length-framed response; return its status and body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return int(head.split(b" ", 2)[1]), body


def request(server: Server, method: str = "GET", path: str = "/", body: bytes = b"") -> bytes:
    with server.connect() as sock:
        sock.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        status, payload = read_response(sock)
    assert status == 200
    return payload


def wait_closed(sock: socket.socket, within: float) -> tuple[float, bytes]:
    """Wait for the server to close ``sock``; return when (monotonic) and what it sent."""
    received = b""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return time.monotonic(), received
        if not chunk:
            return time.monotonic(), received
        received += chunk
    raise AssertionError(f"server kept the connection open for {within} s")


class Trickler(threading.Thread):
    """Sends ``head`` one byte every ``interval`` seconds until the server closes the socket."""

    def __init__(self, sock: socket.socket, head: bytes, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.sock, self.head, self.interval = sock, head, interval
        self.sent = 0
        self.closed_at: float | None = None
        self.received = b""
        self.stop = threading.Event()

    def finish(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the server to cut the trickle, then stop trickling."""
        self.join(timeout=timeout)
        self.stop.set()
        self.join(timeout=self.interval + 1)
        assert not self.is_alive()

    def run(self) -> None:
        for index in range(len(self.head)):
            if self.stop.is_set():
                return
            try:
                self.sock.sendall(self.head[index : index + 1])
            except OSError:  # broken pipe or reset: the server is gone
                self.closed_at = time.monotonic()
                return
            self.sent += 1
            ready, _, _ = select.select([self.sock], [], [], self.interval)
            if ready:
                try:
                    chunk = self.sock.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                self.received += chunk
                if not chunk:
                    self.closed_at = time.monotonic()
                    return


@pytest.mark.timeout(10)
def test_slowloris_is_cut_off_while_normal_clients_are_served(server: Server) -> None:
    sock = server.connect()
    started = time.monotonic()
    trickler = Trickler(sock, SLOW_HEAD)
    trickler.start()
    try:
        # Served normally, with and without a body, while the trickle goes on.
        for _ in range(3):
            assert orjson.loads(request(server))["path"] == "/"
            time.sleep(0.15)
        assert orjson.loads(request(server, "POST", "/echo", b"x" * 70_000))["received"] == 70_000
        assert trickler.closed_at is None, "the trickler was cut before the deadline"
    finally:
        trickler.finish(timeout=4)
        sock.close()
    assert trickler.closed_at is not None, "the slow head was never cut off"
    elapsed = trickler.closed_at - started
    assert TIMEOUT - 0.1 <= elapsed <= TIMEOUT + 1.0, elapsed
    assert trickler.sent < len(SLOW_HEAD)
    # The 408 is best effort: a byte in flight when the server closes turns the close into a reset.
    assert trickler.received == b"" or trickler.received.startswith(b"HTTP/1.1 408 ")
    assert tracker_of(server.protocol).stats().header_timeouts == 1


@pytest.mark.timeout(10)
def test_without_the_protocol_a_trickled_head_holds_the_connection() -> None:
    # The attack this module exists for: uvicorn's own protocol never cuts the trickle.
    with Server("httptools") as plain, plain.connect() as sock:
        trickler = Trickler(sock, SLOW_HEAD)
        trickler.start()
        trickler.finish(timeout=TIMEOUT + 1.5)
        assert trickler.closed_at is None
        assert trickler.sent >= 10


@pytest.mark.timeout(10)
def test_partial_head_then_silence_gets_408_problem(server: Server) -> None:
    with server.connect() as sock:
        started = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n")
        closed_at, received = wait_closed(sock, within=TIMEOUT + 1.0)
    assert closed_at - started >= TIMEOUT - 0.1
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"connection: close" in head.lower()
    assert b"content-type: application/problem+json" in head.lower()
    problem = orjson.loads(body)
    assert problem["status"] == 408
    assert problem["code"] == "request_timeout"


@pytest.mark.timeout(10)
def test_idle_new_connection_is_closed_silently(server: Server) -> None:
    with server.connect() as sock:
        started = time.monotonic()
        closed_at, received = wait_closed(sock, within=TIMEOUT + 1.0)
    assert received == b""
    assert TIMEOUT - 0.1 <= closed_at - started <= TIMEOUT + 1.0


@pytest.mark.timeout(10)
def test_idle_keep_alive_connection_is_closed_after_the_deadline(server: Server) -> None:
    # uvicorn's own keep-alive timeout is 30 s here: the deadline is what closes it.
    with server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(sock)[0] == 200
        answered = time.monotonic()
        closed_at, received = wait_closed(sock, within=TIMEOUT + 1.0)
    assert received == b""
    assert TIMEOUT - 0.1 <= closed_at - answered <= TIMEOUT + 1.0


@pytest.mark.timeout(10)
def test_trickle_after_a_good_request_is_cut_off(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(sock)[0] == 200
        answered = time.monotonic()
        trickler = Trickler(sock, SLOW_HEAD)
        trickler.start()
        trickler.finish(timeout=TIMEOUT + 2.0)
    assert trickler.closed_at is not None, "the slow second head was never cut off"
    assert TIMEOUT - 0.1 <= trickler.closed_at - answered <= TIMEOUT + 1.0
    assert trickler.sent >= 3  # the trickle had started: the deadline did not move with it
    assert trickler.received == b"" or trickler.received.startswith(b"HTTP/1.1 408 ")


@pytest.mark.timeout(10)
def test_busy_keep_alive_connection_outlives_the_deadline(server: Server) -> None:
    # Each head arrives promptly, so a connection used for longer than header_timeout stays.
    with server.connect() as sock:
        started = time.monotonic()
        count = 0
        while time.monotonic() - started < 2.5 * TIMEOUT:
            sock.sendall(b"GET /n HTTP/1.1\r\nHost: t\r\n\r\n")
            assert read_response(sock)[0] == 200
            count += 1
            time.sleep(0.3)
        assert count >= 7


@pytest.mark.timeout(10)
def test_slow_handler_is_not_cut_by_the_head_deadline(server: Server) -> None:
    # The deadline covers the head only: a handler may take longer than header_timeout.
    with server.connect() as sock:
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        status, body = read_response(sock)
        assert status == 200
        assert orjson.loads(body)["path"] == "/slow"
        sock.sendall(b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(sock)[0] == 200


@pytest.mark.timeout(10)
def test_pipelined_requests_are_all_answered(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\n")
        buffered = _SocketReader(sock)
        assert orjson.loads(buffered.response())["path"] == "/a"
        assert orjson.loads(buffered.response())["path"] == "/b"
        answered = time.monotonic()
        closed_at, received = wait_closed(sock, within=TIMEOUT + 1.0)
    assert received == b""
    assert closed_at - answered <= TIMEOUT + 1.0


class _SocketReader:
    """Reads Content-Length-framed responses that may share one recv()."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def response(self) -> bytes:
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            assert chunk
            self.buffer += chunk
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(rest) < length:
            chunk = self.sock.recv(65536)
            assert chunk
            rest += chunk
        self.buffer = rest[length:]
        return rest[:length]
