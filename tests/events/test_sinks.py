"""The event bus and its sinks: real threads, real streams, nothing blocks the caller."""

from __future__ import annotations

import datetime as dt
import io
import logging
import threading
import time
import timeit
from collections.abc import Sequence

import orjson
import pytest

from apiforge.events import (
    REDACTED,
    EventBus,
    EventSink,
    JsonLinesSink,
    MemorySink,
    SecurityEvent,
)

NOW = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZGEifQ.c2lnbmF0dXJl"


def event(n: int = 0, **details: object) -> SecurityEvent:
    return SecurityEvent("authz_fail", "WARN", NOW, details={"n": n, **details})


def writer_threads() -> int:
    return sum(t.name == "apiforge-events" for t in threading.enumerate())


class BlockingSink:
    """Holds the writer thread inside ``write`` until released."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.events: list[dict[str, object]] = []

    def write(self, events: Sequence[dict[str, object]]) -> None:
        self.entered.set()
        assert self.release.wait(10)
        self.events.extend(events)

    def close(self) -> None:
        self.release.set()


class FailingSink:
    def __init__(self) -> None:
        self.calls = 0
        self.closed = False

    def write(self, events: Sequence[dict[str, object]]) -> None:
        self.calls += 1
        raise OSError("disk full")

    def close(self) -> None:
        self.closed = True
        raise OSError("still full")


def test_sinks_satisfy_the_protocol() -> None:
    for sink in (MemorySink(), JsonLinesSink(io.StringIO()), BlockingSink(), FailingSink()):
        assert isinstance(sink, EventSink)


def test_json_lines_one_object_per_line_redacted() -> None:
    stream = io.StringIO()
    bus = EventBus([JsonLinesSink(stream)])
    bus.start()
    bus.emit(event(1, authorization=f"Bearer {JWT}"))
    bus.emit(event(2, note=f"client sent {JWT} and card 4111 1111 1111 1111"))
    assert bus.flush()
    bus.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (orjson.loads(line) for line in lines)
    assert first["event"] == "authz_fail"
    assert first["appid"] == "apiforge"
    assert first["datetime"] == "2025-01-02T03:04:05+00:00"
    assert first["details"] == {"n": 1, "authorization": REDACTED}
    assert second["details"]["note"] == f"client sent {REDACTED} and card [CARD ****1111]"
    assert JWT not in stream.getvalue()
    assert "4111 1111" not in stream.getvalue()


def test_json_lines_defaults_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    sink = JsonLinesSink()
    sink.write([{"event": "sys_startup"}, {"event": "sys_shutdown"}])
    sink.close()
    assert capsys.readouterr().out == '{"event":"sys_startup"}\n{"event":"sys_shutdown"}\n'


def test_json_lines_close_leaves_the_callers_stream_open() -> None:
    stream = io.StringIO()
    JsonLinesSink(stream).close()
    assert not stream.closed


def test_every_sink_gets_every_event_in_order() -> None:
    a, b = MemorySink(), MemorySink()
    bus = EventBus([a, b], batch_size=7)
    bus.start()
    for i in range(500):
        bus.emit(event(i))
    assert bus.flush()
    bus.close()
    for sink in (a, b):
        assert [e["details"]["n"] for e in sink.events] == list(range(500))  # type: ignore[index]
        assert sink.closed
    assert bus.dropped == 0


def test_emit_before_start_buffers() -> None:
    sink = MemorySink()
    bus = EventBus([sink])
    bus.emit(event(1))
    assert bus.pending == 1
    assert not bus.flush(timeout=0.05)  # nothing is writing yet
    assert sink.events == []
    before = writer_threads()
    bus.start()
    bus.start()  # idempotent: still one writer
    assert bus.flush()
    assert len(sink.events) == 1
    assert writer_threads() == before + 1
    bus.close()
    assert writer_threads() == before


def test_full_queue_drops_and_counts_without_blocking() -> None:
    sink = BlockingSink()
    bus = EventBus([sink], queue_size=5, batch_size=1)
    bus.start()
    bus.emit(event(0))
    assert sink.entered.wait(5)  # the writer holds event 0; the queue is empty again
    for i in range(1, 21):
        bus.emit(event(i))  # returns at once even though the sink is stuck
    assert bus.pending == 5
    assert bus.dropped == 15
    sink.release.set()
    assert bus.flush()
    assert [e["details"]["n"] for e in sink.events] == [0, 1, 2, 3, 4, 5]  # type: ignore[index]
    bus.close()


def test_failing_sink_is_logged_counted_and_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad, good = FailingSink(), MemorySink()
    bus = EventBus([bad, good])
    bus.start()
    with caplog.at_level(logging.ERROR, logger="apiforge.events"):
        bus.emit(event(1))
        assert bus.flush()
        bus.emit(event(2))
        assert bus.flush()
        bus.close()
    assert bad.calls == 2
    assert bus.sink_errors == 2
    assert len(good.events) == 2
    assert bad.closed and good.closed
    failures = [r for r in caplog.records if r.name == "apiforge.events"]
    assert any("FailingSink failed" in r.getMessage() and r.exc_info for r in failures)
    assert any("closing event sink FailingSink" in r.getMessage() for r in failures)


def test_flush_times_out_while_a_sink_is_stuck() -> None:
    sink = BlockingSink()
    bus = EventBus([sink])
    bus.start()
    bus.emit(event(1))
    assert sink.entered.wait(5)
    assert not bus.flush(timeout=0.05)
    sink.release.set()
    assert bus.flush()
    bus.close()


def test_close_writes_what_is_queued_then_drops() -> None:
    sink = MemorySink()
    bus = EventBus([sink])
    before = writer_threads()
    bus.start()
    for i in range(100):
        bus.emit(event(i))
    bus.close()
    assert len(sink.events) == 100
    assert sink.closed
    bus.emit(event(101))
    assert bus.dropped == 1
    assert bus.pending == 0
    bus.close()  # idempotent
    with pytest.raises(RuntimeError):
        bus.start()
    assert writer_threads() == before


def test_close_without_start_counts_the_unwritten() -> None:
    sink = MemorySink()
    bus = EventBus([sink])
    bus.emit(event(1))
    bus.emit(event(2))
    bus.close()
    assert bus.dropped == 2
    assert sink.events == []
    assert sink.closed


def test_many_threads_emit_concurrently() -> None:
    sink = MemorySink()
    bus = EventBus([sink], queue_size=100_000)
    bus.start()

    def work(base: int) -> None:
        for i in range(1000):
            bus.emit(event(base + i))

    threads = [threading.Thread(target=work, args=(k * 1000,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bus.flush(timeout=10)
    bus.close()
    seen = sorted(e["details"]["n"] for e in sink.events)  # type: ignore[index]
    assert seen == list(range(8000))


def test_writer_wakes_up_after_idling() -> None:
    sink = MemorySink()
    bus = EventBus([sink])
    bus.start()
    for i in range(50):
        # No flush here (it wakes the writer itself): emit alone must wake the idle writer.
        bus.emit(event(i))
        deadline = time.monotonic() + 5
        while len(sink.events) < i + 1:
            assert time.monotonic() < deadline, f"writer never woke for event {i}"
            time.sleep(0.001)
    bus.close()


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="queue_size"):
        EventBus([], queue_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        EventBus([], batch_size=0)


def test_dropping_is_exact_across_threads() -> None:
    bus = EventBus([MemorySink()], queue_size=10)
    for i in range(10):
        bus.emit(event(i))

    def flood() -> None:
        for i in range(5000):
            bus.emit(event(i))

    threads = [threading.Thread(target=flood) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bus.dropped == 20_000
    bus.close()
    assert bus.dropped == 20_010  # the ten never written count too


def test_emit_is_cheap() -> None:
    bus = EventBus([MemorySink()], queue_size=1_000_000)
    ev = event(1)
    timer = timeit.Timer("emit(ev)", globals={"emit": bus.emit, "ev": ev})
    per_call = min(timer.repeat(number=20_000, repeat=5)) / 20_000
    bus.close()
    # About 0.2 us where a bare call costs 0.06 us; the bound leaves room for slow CI runners.
    assert per_call < 5e-6
