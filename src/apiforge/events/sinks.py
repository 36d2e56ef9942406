"""Where events go, and the bounded queue that takes them there off the request path.

::

    request path                     writer thread (daemon)
    ------------                     ----------------------
    bus.emit(event) --> deque ---->  batch --> to_dict() --> redact() --> every sink.write()
      (never blocks,   (bounded;     (up to batch_size)                   (a failing sink is
       never raises)    full: drop                                         logged and counted)
                        and count)

``emit`` does a length check and an append, and wakes the writer only when it sleeps: no
formatting, no I/O and no lock on the request path. An event that finds the queue full is
dropped and counted in :attr:`EventBus.dropped` (exported as a metric), so an attacker who
floods the API can slow the log but never the API, and the loss is visible.
"""

from __future__ import annotations

import itertools
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, TextIO, runtime_checkable

import orjson

from apiforge.events.redaction import redact

if TYPE_CHECKING:
    from apiforge.events.model import SecurityEvent

__all__ = ["EventBus", "EventSink", "JsonLinesSink", "MemorySink"]

logger = logging.getLogger("apiforge.events")


@runtime_checkable
class EventSink(Protocol):
    """A destination for redacted, JSON-ready events.

    ``write`` is called from the bus's writer thread only, with one batch at a time; it may
    block (file or network I/O) without slowing requests. An exception is logged and counted by
    the bus; the batch is not retried.
    """

    def write(self, events: Sequence[dict[str, object]]) -> None:
        """Write one batch of redacted events."""
        ...

    def close(self) -> None:
        """Release resources; called once, after the last ``write``."""
        ...


class JsonLinesSink:
    """One JSON object per line (JSON Lines), flushed after every batch.

    Args:
        stream: a text stream; standard output by default. The caller keeps ownership:
            :meth:`close` flushes it but does not close it.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout

    def write(self, events: Sequence[dict[str, object]]) -> None:
        """Serialise the batch and write it in one call, so lines from one batch stay together."""
        dumps = orjson.dumps
        option = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS
        payload = b"".join(dumps(event, default=str, option=option) for event in events)
        self._stream.write(payload.decode())
        self._stream.flush()

    def close(self) -> None:
        """Flush the stream (it stays open: it belongs to the caller)."""
        self._stream.flush()


class MemorySink:
    """Keeps every event in :attr:`events`, in order: for tests and the admin console."""

    def __init__(self) -> None:
        self.events: list[dict[str, object]] = []
        self.closed = False

    def write(self, events: Sequence[dict[str, object]]) -> None:
        """Append the batch to :attr:`events`."""
        self.events.extend(events)

    def close(self) -> None:
        """Mark the sink closed; the events stay readable."""
        self.closed = True


class EventBus:
    """A bounded, non-blocking queue from the request path to the sinks.

    Args:
        sinks: every sink receives every event, redacted, in emission order.
        queue_size: most events held before new ones are dropped (and counted). Bounds memory
            under a flood.
        batch_size: most events handed to a sink in one ``write``.

    Attributes:
        sink_errors: failed ``write`` calls (each is also logged on ``apiforge.events``).

    Raises:
        ValueError: if ``queue_size`` or ``batch_size`` is below 1.
    """

    def __init__(
        self, sinks: Sequence[EventSink], *, queue_size: int = 10_000, batch_size: int = 256
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self._sinks: tuple[EventSink, ...] = tuple(sinks)
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._buffer: deque[SecurityEvent] = deque()
        self._wake = threading.Event()
        self._drained = threading.Condition()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        # Written by the writer thread, read by emit: True while the writer sleeps on _wake.
        self._idle = False
        self._busy = False
        self._stopping = False
        self._closed = False
        # next() on itertools.count is one C call under the GIL: an exact count from any number
        # of emitting threads, at a fraction of a lock's cost, on exactly the path a flood hits.
        self._drops = itertools.count()
        self._dropped_unwritten = 0
        self.sink_errors = 0

    @property
    def dropped(self) -> int:
        """Events refused because the queue was full, or left unwritten when the bus closed."""
        # count's repr is "count(<next value>)", which is the number of drops so far.
        return int(repr(self._drops)[6:-1]) + self._dropped_unwritten

    @property
    def pending(self) -> int:
        """Events queued and not yet handed to the sinks."""
        return len(self._buffer)

    def emit(self, event: SecurityEvent) -> None:
        """Queue ``event`` for the sinks. Never blocks, never raises, never formats.

        Before :meth:`start` events are only queued; after :meth:`close` they are dropped.
        """
        buffer = self._buffer
        if len(buffer) >= self._queue_size:
            next(self._drops)
            return
        buffer.append(event)
        if self._idle:
            self._wake.set()

    def start(self) -> None:
        """Start the writer thread. Calling it again does nothing.

        Raises:
            RuntimeError: if the bus was closed.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("the event bus is closed")
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="apiforge-events", daemon=True)
            self._thread.start()

    def flush(self, timeout: float = 2.0) -> bool:
        """Wait until every queued event has been written to the sinks.

        Args:
            timeout: seconds to wait at most.

        Returns:
            ``True`` if the queue is empty and no batch is in flight; ``False`` on timeout, or
            if events are queued but the writer isn't running.
        """
        deadline = time.monotonic() + timeout
        with self._drained:
            while self._buffer or self._busy:
                thread = self._thread
                if thread is None or not thread.is_alive():
                    return False
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._wake.set()
                self._drained.wait(remaining)
        return True

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued (waiting up to ``timeout``), stop the writer, close the sinks.

        Events emitted afterwards are dropped and counted. Calling it again does nothing.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is not None:
            self.flush(timeout)
            self._stopping = True
            self._wake.set()
            thread.join(timeout)
        with self._lock:
            # From now on every emit finds the queue "full": counted, never held in memory. What
            # could not be written in time (or was never started) is counted as dropped too.
            self._queue_size = 0
            self._dropped_unwritten += len(self._buffer)
            self._buffer.clear()
        for sink in self._sinks:
            try:
                sink.close()
            except Exception:
                logger.exception("closing event sink %s failed", type(sink).__name__)

    def _run(self) -> None:
        buffer = self._buffer
        wake = self._wake
        while True:
            if not buffer:
                # Announce idleness before the last look, so an emit racing with us either is
                # seen here or sees _idle and sets the event: no wake-up is lost.
                self._idle = True
                if not buffer:
                    if self._stopping:
                        self._idle = False
                        return
                    wake.wait()
                wake.clear()
                self._idle = False
                continue
            self._busy = True
            batch: list[SecurityEvent] = []
            while buffer and len(batch) < self._batch_size:
                batch.append(buffer.popleft())
            self._deliver(batch)
            with self._drained:
                self._busy = False
                self._drained.notify_all()

    def _deliver(self, batch: list[SecurityEvent]) -> None:
        records: list[dict[str, object]] = []
        for event in batch:
            try:
                record = redact(event.to_dict())
            except Exception:
                # Never write an event we could not redact.
                logger.exception("redacting security event %s failed", event.name)
                self.sink_errors += 1
                continue
            if isinstance(record, dict):
                records.append(record)
        if not records:
            return
        for sink in self._sinks:
            try:
                sink.write(records)
            except Exception:
                self.sink_errors += 1
                logger.exception("event sink %s failed", type(sink).__name__)
