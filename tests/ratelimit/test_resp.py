"""The lean Redis client: URLs, pipelining on one connection, order, timeouts and failures.

Against real servers: the shared Redis, a private ``redis-server`` the test may kill or lock
with a password, and plain sockets of the test that answer nothing or answer garbage.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest
import uvloop

from apiforge.stores.resp import Endpoint, ReplyError, RespClient, pack, parse_url
from tests.redis_helpers import REDIS_URL, OwnRedis, redis_or_skip

# --- URLs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "expected"), [
    ("redis://127.0.0.1:6379/0", Endpoint("127.0.0.1", 6379)),
    ("redis://cache", Endpoint("cache", 6379)),
    ("redis://:s%40cret@cache:7000/3", Endpoint("cache", 7000, 3, None, "s@cret")),
    ("redis://app:pw@cache/1", Endpoint("cache", 6379, 1, "app", "pw")),
    ("redis://[::1]:6380/2", Endpoint("::1", 6380, 2)),
    ("rediss://cache:6380/0?ssl_ca_certs=/etc/ca.pem",
     Endpoint("cache", 6380, tls=True, ca_file="/etc/ca.pem")),
    ("redis+sentinel://s1:26379,s2:26380/mymaster/2",
     Endpoint("s1", 26379, 2, sentinels=(("s1", 26379), ("s2", 26380)), service="mymaster")),
    ("redis+sentinel://s1/mymaster",
     Endpoint("s1", 26379, sentinels=(("s1", 26379),), service="mymaster")),
])
def test_urls(url: str, expected: Endpoint) -> None:
    assert parse_url(url) == expected


@pytest.mark.parametrize(("url", "names"), [
    ("http://cache:6379", "redis://HOST:PORT/DB"),
    ("redis://", "redis://HOST:PORT/DB"),
    ("redis://cache:99999/0", "port"),
    ("redis://cache:6379/zero", "database"),
    ("redis+sentinel://s1:26379", "SERVICE"),
    ("redis+sentinel://s1:x/mymaster", "HOST:PORT"),
])
def test_bad_urls_name_the_expected_form(url: str, names: str) -> None:
    with pytest.raises(ValueError, match=names):
        parse_url(url)


# --- the shared server, on both event loops -------------------------------------------------


def on_both_loops(
    test: Callable[[], Coroutine[Any, Any, None]],
) -> Callable[[str], None]:
    """Run ``test`` on asyncio's own loop and on uvloop (the loop APIForge's servers run)."""

    @pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
    def run(loop: str) -> None:
        redis_or_skip().close()
        if loop == "uvloop":
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(test())
        else:
            asyncio.run(test())

    run.__name__ = test.__name__
    run.__doc__ = test.__doc__
    return run


@on_both_loops
async def test_concurrent_commands_share_one_connection_and_get_their_own_replies() -> None:
    client = RespClient.from_url(REDIS_URL, timeout=2.0)
    marker = uuid.uuid4().hex
    try:
        await client.execute(pack("CLIENT", "SETNAME", marker))
        replies = await asyncio.gather(
            *(client.execute(pack("ECHO", f"{marker}:{i}")) for i in range(500)))
        assert replies == [f"{marker}:{i}".encode() for i in range(500)]
        listing = await client.execute(pack("CLIENT", "LIST"))
        assert listing.decode().count(f"name={marker}") == 1
    finally:
        await client.aclose()


@on_both_loops
async def test_error_replies_are_returned_in_their_place() -> None:
    client = RespClient.from_url(REDIS_URL, timeout=2.0)
    try:
        first, failed, last = await asyncio.gather(
            client.execute(pack("ECHO", "a")),
            client.execute(pack("EVALSHA", "0" * 40, 0)),
            client.execute(pack("ECHO", "b")),
        )
        assert (first, last) == (b"a", b"b")
        assert isinstance(failed, ReplyError) and str(failed).startswith("NOSCRIPT")
    finally:
        await client.aclose()


@on_both_loops
async def test_a_cancelled_command_does_not_shift_the_replies_of_the_others() -> None:
    client = RespClient.from_url(REDIS_URL, timeout=2.0)
    try:
        await client.execute(pack("PING"))
        slow = asyncio.ensure_future(client.execute(pack("ECHO", "cancelled")))
        await asyncio.sleep(0)
        slow.cancel()
        assert await client.execute(pack("ECHO", "mine")) == b"mine"
        assert slow.cancelled()
    finally:
        await client.aclose()


# --- a private server: credentials, databases, faults ----------------------------------------


async def test_password_and_database_from_the_url(own_redis: OwnRedis) -> None:
    admin = own_redis.client()
    admin.config_set("requirepass", "s3cret")
    try:
        wrong = RespClient.from_url(f"redis://:nope@127.0.0.1:{own_redis.port}/0", timeout=2.0)
        with pytest.raises(ConnectionError, match="credentials"):
            await wrong.execute(pack("PING"))
        client = RespClient.from_url(f"redis://:s3cret@127.0.0.1:{own_redis.port}/5",
                                     timeout=2.0)
        try:
            assert await client.execute(pack("SET", "where", "five")) == b"OK"
        finally:
            await client.aclose()
        admin.execute_command("AUTH", "s3cret")
        admin.select(5)  # type: ignore[no-untyped-call]
        assert admin.get("where") == b"five"
    finally:
        admin.close()


async def test_a_killed_server_fails_waiters_and_a_restarted_one_is_used_again(
    own_redis: OwnRedis,
) -> None:
    client = RespClient.from_url(own_redis.url, timeout=1.0)
    try:
        assert await client.execute(pack("PING")) == b"PONG"
        own_redis.kill()
        started = time.monotonic()
        with pytest.raises(ConnectionError):
            await client.execute(pack("PING"))
        with pytest.raises(ConnectionError):  # refused at once, no retry loop
            await client.execute(pack("PING"))
        assert time.monotonic() - started < 0.5
        own_redis.start()
        assert await client.execute(pack("PING")) == b"PONG"
    finally:
        await client.aclose()


@pytest.fixture
async def silent_server() -> AsyncIterator[tuple[int, list[int]]]:
    """A server that accepts connections and reads commands, but never answers."""
    accepted: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            while await reader.read(4096):
                pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, accepted
    finally:
        server.close()
        await server.wait_closed()


async def test_no_reply_within_the_timeout_fails_every_waiter_and_reconnects(
    silent_server: tuple[int, list[int]],
) -> None:
    port, accepted = silent_server
    client = RespClient.from_url(f"redis://127.0.0.1:{port}/0", timeout=0.2)
    try:
        started = time.monotonic()
        results = await asyncio.gather(
            *(client.execute(pack("PING")) for _ in range(10)), return_exceptions=True)
        elapsed = time.monotonic() - started
        assert all(isinstance(r, TimeoutError) for r in results), results
        assert 0.15 < elapsed < 1.0
        assert len(accepted) == 1
        with pytest.raises(TimeoutError):
            await client.execute(pack("PING"))
        assert len(accepted) == 2  # the timed-out connection was dropped, a new one opened
    finally:
        await client.aclose()


async def test_a_garbled_reply_breaks_the_connection_not_the_process() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read(4096)
            writer.write(b"?not resp\r\n")
            await writer.drain()
            await reader.read(4096)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = RespClient.from_url(f"redis://127.0.0.1:{port}/0", timeout=1.0)
    try:
        with pytest.raises(ConnectionError, match="unreadable"):
            await client.execute(pack("PING"))
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()


async def test_nothing_listening_is_a_prompt_connection_error() -> None:
    from tests.conftest import free_port

    client = RespClient.from_url(f"redis://127.0.0.1:{free_port()}/0", timeout=1.0)
    started = time.monotonic()
    results = await asyncio.gather(
        *(client.execute(pack("PING")) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results), results
    assert time.monotonic() - started < 0.5
    await client.aclose()


async def test_rediss_verifies_the_server_certificate(own_redis: OwnRedis, tmp_path: Any) -> None:
    """TLS to a redis-server of the test: its CA from the URL is trusted, nothing else is."""
    import subprocess

    from apiforge.tls.certs import write_dev_certificates
    from tests.conftest import free_port

    certs = write_dev_certificates(tmp_path / "tls", ["127.0.0.1"])
    port = free_port()
    server = subprocess.Popen(
        [own_redis.binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(certs.server_cert), "--tls-key-file", str(certs.server_key),
         "--tls-auth-clients", "no", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        trusted = RespClient.from_url(
            f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={certs.ca_cert}", timeout=2.0)
        deadline = time.monotonic() + 5
        while True:
            try:
                assert await trusted.execute(pack("PING")) == b"PONG"
                break
            except ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start with TLS"
                await asyncio.sleep(0.05)
        await trusted.aclose()
        untrusted = RespClient.from_url(f"rediss://127.0.0.1:{port}/0", timeout=2.0)
        with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
            await untrusted.execute(pack("PING"))
        await untrusted.aclose()
    finally:
        server.kill()
        server.wait(timeout=5)


async def test_a_replica_answer_drops_the_connection(own_redis: OwnRedis) -> None:
    """After a failover the old primary answers writes with READONLY: connect again."""
    client = RespClient.from_url(own_redis.url, timeout=2.0)
    admin = own_redis.client()
    try:
        before = await client.execute(pack("CLIENT", "ID"))
        admin.config_set("replica-read-only", "yes")
        admin.replicaof("127.0.0.1", "1")  # a primary that is not there: still read-only
        refused = await client.execute(pack("SET", "k", "v"))
        assert isinstance(refused, ReplyError) and str(refused).startswith("READONLY")
        admin.replicaof("NO", "ONE")
        assert await client.execute(pack("SET", "k", "v")) == b"OK"
        assert await client.execute(pack("CLIENT", "ID")) != before  # a new connection
    finally:
        admin.close()
        await client.aclose()


async def test_a_cancelled_request_does_not_fail_the_others_waiting_to_connect(
    silent_server: tuple[int, list[int]],
) -> None:
    port, _ = silent_server  # accepts, never answers AUTH: the connect is still in progress
    client = RespClient.from_url(f"redis://:pw@127.0.0.1:{port}/0", timeout=0.3)
    first = asyncio.ensure_future(client.execute(pack("PING")))
    second = asyncio.ensure_future(client.execute(pack("PING")))
    await asyncio.sleep(0.05)
    first.cancel()
    result = (await asyncio.gather(second, return_exceptions=True))[0]
    assert isinstance(result, TimeoutError), result  # its own outcome, not the cancellation
    await client.aclose()


async def test_a_closed_client_refuses_commands_and_does_not_reconnect() -> None:
    client = RespClient.from_url(REDIS_URL, timeout=2.0)
    redis_or_skip().close()
    assert await client.execute(pack("PING")) == b"PONG"
    await client.aclose()
    with pytest.raises(ConnectionError, match="closed"):
        await client.execute(pack("PING"))
