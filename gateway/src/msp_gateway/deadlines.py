"""Deadlines for the gateway's waits on services, with one timer for all of them.

A service that never answers must not hold a request forever, so every wait on a service has
a deadline. asyncio.timeout() arms and cancels an event-loop timer per wait, as aiohttp's
sock_read does per read (measured at about 4 µs a request, some 4 % of a proxied GET). Here a
wait only puts its task and deadline in a dict, and one watchdog task wakes every `tick`
seconds to cancel the waits past their deadline. A wait that overruns therefore ends between
its deadline and `tick` later, with TimeoutError, as under asyncio.timeout()."""
from __future__ import annotations

import asyncio
import time
from types import TracebackType


class Deadlines:
    def __init__(self, tick: float) -> None:
        self.tick = tick
        self._due: dict[asyncio.Task, float] = {}  # task → time.monotonic() deadline
        self._expired: set[asyncio.Task] = set()  # cancelled by the watchdog, not yet out of their wait

    def after(self, seconds: float | None) -> Deadline:
        """`with deadlines.after(s):` — the body must be done within s seconds (None: no limit).
        Not reentrant: one deadline per task at a time."""
        return Deadline(self, seconds)

    async def watch(self) -> None:
        """The watchdog: run it as a task for as long as the gateway serves."""
        while True:
            await asyncio.sleep(self.tick)
            now = time.monotonic()
            for task in [t for t, due in self._due.items() if due <= now]:
                del self._due[task]
                self._expired.add(task)
                task.cancel()


class Deadline:
    __slots__ = ("_owner", "_seconds", "_task", "_cancelling")

    def __init__(self, owner: Deadlines, seconds: float | None) -> None:
        self._owner = owner
        self._seconds = seconds
        self._task: asyncio.Task | None = None
        self._cancelling = 0

    def __enter__(self) -> Deadline:
        if self._seconds is not None:
            task = self._task = asyncio.current_task()
            assert task is not None and task not in self._owner._due, "one deadline per task at a time"
            self._cancelling = task.cancelling()
            self._owner._due[task] = time.monotonic() + self._seconds
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        task = self._task
        if task is None:
            return
        owner = self._owner
        owner._due.pop(task, None)
        if task in owner._expired:
            owner._expired.discard(task)
            # The watchdog's cancel, and no one else's, ended the wait: a timeout (what
            # asyncio.timeout() does, down to uncancel()).
            if task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc
