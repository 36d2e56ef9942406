"""Request deadlines and slow-body timeouts, for the price of a dict insert per request.

``asyncio.timeout`` schedules a timer per request; here one watcher task per event loop wakes a
few times a second and cancels the tasks of requests that are past their deadline, or whose
body has stalled. Deadlines of seconds don't need millisecond precision.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Literal

__all__ = ["DeadlineWatch", "Watched"]

TICK = 0.1


class Watched:
    """One watched request. ``expired`` says why it was cancelled, if it was."""

    __slots__ = ("deadline", "expired", "idle", "idle_deadline", "task")

    def __init__(self, task: asyncio.Task[object], deadline: float, idle: float) -> None:
        self.task = task
        self.deadline = deadline
        self.idle = idle
        self.idle_deadline = math.inf
        self.expired: Literal["deadline", "idle"] | None = None

    def reading_body(self) -> None:
        """Body bytes arrived: the slow-body clock starts again."""
        self.idle_deadline = time.monotonic() + self.idle

    def body_done(self) -> None:
        self.idle_deadline = math.inf


class DeadlineWatch:
    """Cancels requests past their deadline; one watcher task per running event loop."""

    def __init__(self) -> None:
        self._active: dict[int, Watched] = {}
        self._watcher: asyncio.Task[None] | None = None

    def watch(self, seconds: float, idle: float) -> Watched:
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - ASGI servers always run requests in tasks
            raise RuntimeError("requests must run inside an asyncio task")
        entry = Watched(task, time.monotonic() + seconds, idle)
        self._active[id(entry)] = entry
        watcher = self._watcher
        if watcher is None or watcher.done() or watcher.get_loop() is not task.get_loop():
            self._watcher = task.get_loop().create_task(self._run())
        return entry

    def release(self, entry: Watched) -> None:
        self._active.pop(id(entry), None)

    async def _run(self) -> None:
        while self._active:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            for entry in list(self._active.values()):
                if entry.expired is not None:
                    continue
                if now >= entry.deadline:
                    entry.expired = "deadline"
                elif now >= entry.idle_deadline:
                    entry.expired = "idle"
                else:
                    continue
                entry.task.cancel()
