"""The response-head writer writes exactly what uvicorn writes, kept lines or not."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from apiforge.serving import ConnectionLimits, heads, http_protocol_class
from apiforge.serving.heads import MAX_KEPT_LINES, HeadWriterCycle
from tests.conftest import LiveServer


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return False


def _cycle(kind: type[RequestResponseCycle], method: str, keep_alive: bool
           ) -> tuple[RequestResponseCycle, _Transport]:
    transport = _Transport()
    cycle = kind(
        scope={"type": "http", "method": method},  # type: ignore[typeddict-item]
        transport=transport,  # type: ignore[arg-type]
        flow=FlowControl(transport),  # type: ignore[arg-type]
        logger=logging.getLogger("test"),
        access_logger=logging.getLogger("test.access"),
        access_log=False,
        default_headers=[(b"date", b"Sat, 28 Nov 2026 10:00:00 GMT")],
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=keep_alive,
        on_response=lambda: None,
    )
    return cycle, transport


def _outcome(kind: type[RequestResponseCycle], status: int, headers: list[Any], method: str,
             keep_alive: bool) -> tuple[Any, ...]:
    cycle, transport = _cycle(kind, method, keep_alive)
    message = {"type": "http.response.start", "status": status, "headers": headers}
    try:
        asyncio.run(cycle.send(message))  # type: ignore[arg-type]
    except Exception as exc:  # the same refusal, with the same text
        error: tuple[str, str] | None = (type(exc).__name__, str(exc))
    else:
        error = None
    return (error, transport.written, cycle.keep_alive, cycle.chunked_encoding,
            cycle.expected_content_length, cycle.response_started)


_NAMES = st.sampled_from([
    b"content-type", b"Content-Type", b"vary", b"VARY", b"x-frame-options", b"cache-control",
    b"content-security-policy", b"ratelimit-policy", b"x-request-id", b"content-length",
    b"Content-Length", b"transfer-encoding", b"connection", b"Connection", b"x-custom",
    b"bad name", b"bad\x00", b"bad:", b"",
])
_VALUES = st.sampled_from([
    b"application/json", b"DENY", b"Origin", b"no-store", b"12", b"0", b"chunked", b"CHUNKED",
    b"close", b"keep-alive, Close", b"keep-alive", b"", b"a\r\nb", b"tab\there", b"nul\x00",
    b"\x7f",
])
_HEADERS = st.lists(st.tuples(_NAMES, _VALUES), max_size=12)


@settings(max_examples=400, deadline=None)
@given(headers=_HEADERS, status=st.sampled_from([200, 204, 304, 404, 500]),
       method=st.sampled_from(["GET", "HEAD", "PUT"]), keep_alive=st.booleans())
def test_writes_what_uvicorn_writes(headers: list[tuple[bytes, bytes]], status: int, method: str,
                                    keep_alive: bool) -> None:
    expected = _outcome(RequestResponseCycle, status, headers, method, keep_alive)
    # Twice: the first run may keep lines, the second writes them from the table.
    assert _outcome(HeadWriterCycle, status, headers, method, keep_alive) == expected
    assert _outcome(HeadWriterCycle, status, headers, method, keep_alive) == expected


def test_list_pairs_and_bytearrays_are_checked_as_uvicorn_checks_them() -> None:
    headers: list[Any] = [[b"content-type", b"text/plain"], (b"vary", bytearray(b"Origin")),
                          (b"content-length", b"2")]
    expected = _outcome(RequestResponseCycle, 200, headers, "GET", True)
    assert _outcome(HeadWriterCycle, 200, headers, "GET", True) == expected


def test_per_request_values_are_not_kept() -> None:
    _outcome(HeadWriterCycle, 200, [(b"x-request-id", b"only-once"), (b"vary", b"Origin")],
             "GET", True)
    assert (b"x-request-id", b"only-once") not in heads._kept
    assert heads._kept[(b"vary", b"Origin")] == b"vary: Origin\r\n"


def test_the_table_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heads, "_kept", {})
    for i in range(MAX_KEPT_LINES + 50):
        _outcome(HeadWriterCycle, 200, [(b"vary", f"X-{i}".encode())], "GET", True)
    assert len(heads._kept) == MAX_KEPT_LINES
    # Past the bound the answer is still right, only not kept.
    assert _outcome(HeadWriterCycle, 200, [(b"vary", b"X-late")], "GET", True)[1] == \
        _outcome(RequestResponseCycle, 200, [(b"vary", b"X-late")], "GET", True)[1]


def test_the_servers_protocol_writes_heads_with_it() -> None:
    """Over a real socket: the cycle is the head writer, and repeated answers stay whole."""
    cycles: list[type] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        cycles.append(type(send.__self__))
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"), (b"content-length", b"2"),
            (b"x-frame-options", b"DENY"), (b"x-request-id", str(len(cycles)).encode())]})
        await send({"type": "http.response.body", "body": b"{}"})

    with LiveServer(app, http=http_protocol_class(ConnectionLimits())) as server, \
            httpx.Client() as client:
        for n in range(1, 4):
            response = client.get(server.url)
            assert response.status_code == 200
            assert response.json() == {}
            assert response.headers["x-frame-options"] == "DENY"
            assert response.headers["x-request-id"] == str(n)
    assert cycles == [HeadWriterCycle] * 3
