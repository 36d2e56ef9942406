"""A lean Redis client for the request path: one connection, pipelined, parsed in C.

A rate-limit check is one ``EVALSHA`` per request. Through redis-py's asyncio client that one
command costs more CPU than the rest of a protected request (a connection taken from a pool and
given back, a stream reader, a timeout scope per call). Here every command goes out on one
connection, the commands of one event-loop tick leave in one write, Redis answers them in order,
and hiredis parses the answers: each waiting request is woken with its own reply.

Failures are loud and fast: a refused or broken connection, or a reply later than ``timeout``,
fails every command waiting on that connection with ``ConnectionError`` / ``TimeoutError``, and
the next command connects again. Nothing is retried here: the caller decides (the rate-limit
layer applies the policy's ``on_store_error``).

URLs: ``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]``, ``rediss://...`` (TLS, certificate and
host name verified; ``?ssl_ca_certs=FILE`` names a private CA), and
``redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE[/DB]``: the primary the Sentinels name,
asked again whenever the connection to it is lost.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

from apiforge.stores.urls import redact_url

try:
    import hiredis
except ImportError as exc:  # pragma: no cover - the redis extra installs it
    raise ImportError(
        "Redis stores need hiredis: install apiforge[redis] (pip install 'apiforge[redis]')"
    ) from exc

__all__ = ["Endpoint", "ReplyError", "RespClient", "pack", "parse_url"]

ReplyError = hiredis.ReplyError
"""An error reply of the server (``NOSCRIPT ...``, ``WRONGTYPE ...``): returned, not raised,
so one failed command of a pipeline does not hide the others' replies."""

_pack_command: Any = hiredis.pack_command  # its stub types the argument as a 1-tuple


def pack(*args: str | int | float | bytes) -> bytes:
    """``pack("EVALSHA", sha, 1, key)``: a command as the bytes Redis reads."""
    packed: bytes = _pack_command(args)
    return packed

_SENTINEL_PORT = 26379


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a Redis URL points: a server, or the Sentinels that name the primary."""

    host: str
    port: int
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_file: str | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str | None = None


def parse_url(url: str) -> Endpoint:
    """The endpoint of a ``redis://``, ``rediss://`` or ``redis+sentinel://`` URL.

    Raises:
        ValueError: the URL is not one of those forms; the message shows the expected form.
    """
    parts = urlsplit(url)
    scheme = parts.scheme
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if scheme == "redis+sentinel":
        hosts = parts.netloc.rpartition("@")[2]
        service, _, db = parts.path.strip("/").partition("/")
        if not hosts or not service:
            raise ValueError(
                f"{redact_url(url)!r}: write redis+sentinel://HOST:PORT[,HOST:PORT]/SERVICE/DB")
        nodes = tuple(_host_port(node, _SENTINEL_PORT, url) for node in hosts.split(","))
        return Endpoint(nodes[0][0], nodes[0][1], _db(db, url), username, password,
                        sentinels=nodes, service=service)
    if scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError(f"{redact_url(url)!r}: write redis://HOST:PORT/DB or rediss://HOST:PORT/DB")
    query = parse_qs(parts.query)
    ca_files = query.get("ssl_ca_certs")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError(f"{redact_url(url)!r}: the port is not a number from 0 to 65535") from None
    return Endpoint(parts.hostname, port, _db(parts.path.strip("/"), url), username, password,
                    tls=scheme == "rediss", ca_file=ca_files[0] if ca_files else None)


def _host_port(node: str, default_port: int, url: str) -> tuple[str, int]:
    host, colon, port = node.rpartition(":")
    if not colon or "]" in port:  # no port, or the end of a bare IPv6 address
        host, port = node, ""
    if not port.isdigit() and port:
        raise ValueError(f"{redact_url(url)!r}: {node!r} is not HOST:PORT")
    return host.strip("[]"), int(port) if port else default_port


def _db(text: str, url: str) -> int:
    if not text:
        return 0
    if not text.isdigit():
        raise ValueError(f"{redact_url(url)!r}: the database {text!r} is not a number")
    return int(text)


class _Connection(asyncio.Protocol):
    """One connection: commands written in order, replies matched to them in order."""

    def __init__(self, timeout: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._timeout = timeout
        self._reader = hiredis.Reader()
        self._transport: asyncio.Transport | None = None
        self._waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._outgoing: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None
        self.lost: BaseException | None = None
        """Why the connection is unusable, once it is."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not asyncio.Transport subclasses).
        self._transport = cast(asyncio.Transport, transport)

    def send(self, command: bytes) -> asyncio.Future[Any]:
        """Queue a packed command; the future gets its reply (a ``ReplyError`` included)."""
        if self.lost is not None:
            raise ConnectionError("redis: the connection is closed") from self.lost
        future = self._loop.create_future()
        deadline = self._loop.time() + self._timeout
        self._waiting.append((future, deadline))
        if not self._outgoing:
            # The other commands of this tick join this one write.
            self._loop.call_soon(self._flush)
        self._outgoing.append(command)
        if self._timer is None:
            self._timer = self._loop.call_at(deadline, self._expire)
        return future

    def _flush(self) -> None:
        if self._outgoing and self._transport is not None and self.lost is None:
            self._transport.write(b"".join(self._outgoing))
        self._outgoing.clear()

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiting = self._waiting
        try:
            reply = reader.gets()
            while reply is not False:
                if not waiting:
                    raise ConnectionError("redis: a reply nobody asked for")
                future, _ = waiting.popleft()
                if not future.done():  # its request may have been cancelled meanwhile
                    future.set_result(reply)
                if reply.__class__ is ReplyError and "READONLY" in str(reply):
                    # A failover made this server a replica: connect again, to the primary
                    # (Sentinel names the new one).
                    self._fail(ConnectionError("redis: the server is a read-only replica now"))
                    return
                reply = reader.gets()
        except (hiredis.ProtocolError, ConnectionError) as exc:
            self._fail(ConnectionError(f"redis: unreadable reply ({exc})"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("redis: the server closed the connection"))

    def _expire(self) -> None:
        """A command waited past the timeout: the connection counts as dead."""
        self._timer = None
        if not self._waiting:
            return
        oldest = self._waiting[0][1]
        if self._loop.time() >= oldest:
            self._fail(TimeoutError(f"redis: no reply within {self._timeout} s"))
        else:
            self._timer = self._loop.call_at(oldest, self._expire)

    def _fail(self, error: BaseException) -> None:
        if self.lost is None:
            self.lost = error
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiting:
            future, _ = self._waiting.popleft()
            if not future.done():
                future.set_exception(_for_waiter(error))
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        self._fail(ConnectionError("redis: the client was closed"))


def _for_waiter(error: BaseException) -> Exception:
    """A fresh exception per waiter (one instance raised in many tasks grows one traceback),
    always a ``TimeoutError`` or a ``ConnectionError``, whatever broke the connection."""
    fresh = (TimeoutError(str(error)) if isinstance(error, TimeoutError)
             else ConnectionError(str(error) or type(error).__name__))
    fresh.__cause__ = error
    return fresh


class RespClient:
    """Commands to one Redis server over one pipelined connection, opened when first needed.

    Args:
        endpoint: where the server is (see :func:`parse_url`).
        timeout: seconds a connection attempt, and each command, may take; past it the waiting
            commands fail with ``TimeoutError`` and the connection is dropped.
    """

    def __init__(self, endpoint: Endpoint, *, timeout: float) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._connection: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._closed = False
        self._ssl: ssl.SSLContext | None = None
        if endpoint.tls:
            self._ssl = ssl.create_default_context(cafile=endpoint.ca_file)
            self._ssl.minimum_version = ssl.TLSVersion.TLSv1_2

    @classmethod
    def from_url(cls, url: str, *, timeout: float) -> RespClient:
        return cls(parse_url(url), timeout=timeout)

    def call(self, command: bytes) -> asyncio.Future[Any] | None:
        """The reply's future on an open connection, or ``None``: then use :meth:`execute`.

        The fast path of a command packed in advance (:func:`pack`): no coroutine of its own.
        """
        connection = self._connection
        if connection is None or connection.lost is not None:
            return None
        return connection.send(command)

    async def execute(self, command: bytes) -> Any:
        """Send a packed command (connecting first if needed) and return its reply.

        Raises:
            ConnectionError, OSError: the server cannot be reached or dropped the connection.
            TimeoutError: no connection or reply within ``timeout``.
        """
        future = self.call(command)
        if future is None:
            connection = await self._connect()
            future = connection.send(command)
        return await future

    async def _connect(self) -> _Connection:
        # One attempt at a time, in a task of its own: the requests of a burst share it, and
        # a request cancelled meanwhile (its deadline) cancels only its own wait.
        if self._closed:
            raise ConnectionError("redis: the client was closed")
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
            self._connecting.add_done_callback(self._connected)
        return await asyncio.shield(self._connecting)

    def _connected(self, attempt: asyncio.Future[_Connection]) -> None:
        self._connecting = None
        if not attempt.cancelled():
            attempt.exception()  # retrieved: no "never retrieved" warning when nobody waits

    async def _open(self) -> _Connection:
        try:
            return await self._open_connection()
        except (OSError, TimeoutError):
            raise
        except Exception as exc:  # a malformed Sentinel answer, a bad host name: still "down"
            raise ConnectionError(f"redis: cannot connect ({type(exc).__name__}: {exc})") from exc

    async def _open_connection(self) -> _Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.timeout):
            host, port = await self._primary()
            _, connection = await loop.create_connection(
                lambda: _Connection(self.timeout), host, port, ssl=self._ssl,
                server_hostname=host if self._ssl is not None else None)
            try:
                endpoint = self.endpoint
                setup = []
                if endpoint.password is not None:
                    # AUTH PASSWORD without a user name: older servers know no other form.
                    setup.append(pack("AUTH", endpoint.username, endpoint.password)
                                 if endpoint.username else pack("AUTH", endpoint.password))
                if endpoint.db:
                    setup.append(pack("SELECT", endpoint.db))
                for command in setup:
                    reply = await connection.send(command)
                    if isinstance(reply, ReplyError):
                        raise ConnectionError(f"redis: {reply} (check the URL's credentials"
                                              " and database)")
            except BaseException:
                connection.close()
                raise
        if self._closed:  # closed while connecting: nobody will use or close it
            connection.close()
            raise ConnectionError("redis: the client was closed")
        if self._connection is not None:
            self._connection.close()
        self._connection = connection
        return connection

    async def _primary(self) -> tuple[str, int]:
        """The server's address; with Sentinels, the primary the first that answers names."""
        endpoint = self.endpoint
        if endpoint.service is None:
            return endpoint.host, endpoint.port
        loop = asyncio.get_running_loop()
        errors: list[str] = []
        # Each Sentinel gets its share of the time: one that is down must not use it all.
        share = self.timeout / len(endpoint.sentinels)
        for host, port in endpoint.sentinels:
            try:
                async with asyncio.timeout(share):
                    _, probe = await loop.create_connection(
                        lambda: _Connection(share), host, port)
            except (OSError, TimeoutError) as exc:
                errors.append(f"{host}:{port}: {exc}")
                continue
            try:
                reply = await probe.send(pack("SENTINEL", "get-master-addr-by-name",
                                              endpoint.service))
            except (OSError, TimeoutError) as exc:
                errors.append(f"{host}:{port}: {exc}")
                continue
            finally:
                probe.close()
            if isinstance(reply, list) and len(reply) == 2:
                return reply[0].decode(), int(reply[1])
            errors.append(f"{host}:{port}: no primary named {endpoint.service!r}")
        raise ConnectionError(f"redis: no Sentinel named a primary ({'; '.join(errors)})")

    async def aclose(self) -> None:
        """Close the connection; waiting and later commands fail with ``ConnectionError``."""
        self._closed = True
        if self._connection is not None:
            self._connection.close()
            self._connection = None
