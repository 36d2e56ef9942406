"""Request deadlines and slow-body timeouts, for the price of a dict insert per request.

``asyncio.timeout`` schedules a timer per request; here one watcher task per event loop wakes a
few times a second and cancels the tasks of requests that are past their deadline, or whose
body has stalled. Deadlines of seconds don't need millisecond precision.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from contextvars import ContextVar
from typing import Literal

__all__ = ["DeadlineWatch", "Watched", "deadline_passed", "sqlite_progress_handler",
           "time_remaining"]

# The deadline of the request being handled, as a time.monotonic() value. Context variables
# follow the request into the threads it starts (run_in_threadpool copies the context), so
# blocking work in a thread can stop itself when the request's time is up.
_deadline: ContextVar[float] = ContextVar("apiforge_deadline", default=math.inf)


def time_remaining() -> float | None:
    """Seconds left to the current request's deadline; ``None`` outside a request.

    Give it to blocking work as its own timeout: PostgreSQL ``statement_timeout``, a socket
    timeout. Cancelling the request's task does not stop a thread or a query by itself.
    """
    deadline = _deadline.get()
    return None if deadline == math.inf else max(0.0, deadline - time.monotonic())


def deadline_passed() -> bool:
    """Whether the current request is past its deadline."""
    return time.monotonic() >= _deadline.get()


def sqlite_progress_handler() -> int:
    """For ``sqlite3.Connection.set_progress_handler``: interrupts a query past the deadline.

    SQLite calls it every N virtual-machine steps; a non-zero answer aborts the statement with
    ``OperationalError: interrupted``.
    """
    return 1 if time.monotonic() >= _deadline.get() else 0

TICK = 0.1


class Watched:
    """One watched request. ``expired`` says why it was cancelled, if it was."""

    __slots__ = ("deadline", "expired", "idle", "idle_deadline", "task")

    def __init__(self, seconds: float, idle: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.idle = idle
        self.idle_deadline = math.inf
        self.expired: Literal["deadline", "idle"] | None = None
        self.task: asyncio.Task[object] | None = None
        """The request's task, set by :meth:`DeadlineWatch.add`."""

    def reading_body(self) -> None:
        """Body bytes arrived: the slow-body clock starts again."""
        self.idle_deadline = time.monotonic() + self.idle

    def body_done(self) -> None:
        self.idle_deadline = math.inf


# asyncio.current_task() without its two Python-level calls on Python 3.11: the same lookup,
# made directly in the table asyncio keeps (checked to be there). From 3.12 it is C.
_TASKS = getattr(asyncio.tasks, "_current_tasks", None)
_RUNNING_LOOP = getattr(asyncio.events, "_get_running_loop", None)
if sys.version_info >= (3, 12) or not isinstance(_TASKS, dict) or _RUNNING_LOOP is None:
    _TASKS = _RUNNING_LOOP = None


class DeadlineWatch:
    """Cancels requests past their deadline; one watcher task per running event loop."""

    def __init__(self) -> None:
        self._active: set[Watched] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._seen = False
        """A request started since the watcher last woke."""

    def watch(self, seconds: float, idle: float) -> Watched:
        """Watch the current task: cancelled ``seconds`` from now, or ``idle`` seconds after
        the last body bytes while a body is being read."""
        entry = Watched(seconds, idle)
        self.add(entry)
        return entry

    def add(self, entry: Watched) -> None:
        """Watch the current task against ``entry``'s deadlines."""
        task = (_TASKS.get(_RUNNING_LOOP()) if _TASKS is not None and _RUNNING_LOOP is not None
                else asyncio.current_task())
        if task is None:  # pragma: no cover - ASGI servers always run requests in tasks
            raise RuntimeError("requests must run inside an asyncio task")
        entry.task = task
        _deadline.set(entry.deadline)
        self._active.add(entry)
        self._seen = True
        if self._watcher is None:
            loop = self._loop = task.get_loop()
            self._watcher = loop.create_task(self._run())

    def release(self, entry: Watched) -> None:
        self._active.discard(entry)

    async def _run(self) -> None:
        try:
            await self._watch_loop()
        finally:
            self._watcher = None  # the next request starts a new watcher, on its own loop

    async def _watch_loop(self) -> None:
        # Most requests finish without ever yielding, before the watcher first runs: it stays
        # until a whole tick passes with no request, rather than being made again per request.
        while self._active or self._seen:
            self._seen = False
            await asyncio.sleep(TICK)
            now = time.monotonic()
            for entry in list(self._active):
                if entry.expired is not None:
                    continue
                if now >= entry.deadline:
                    entry.expired = "deadline"
                elif now >= entry.idle_deadline:
                    entry.expired = "idle"
                else:
                    continue
                if entry.task is not None:
                    entry.task.cancel()
