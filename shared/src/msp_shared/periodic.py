"""Jobs a service runs now and then in every replica (purges of old rows and the like). A
round must be safe to run in several replicas at once; a failed round is logged and tried
again at the next, never ending the loop."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

log = logging.getLogger(__name__)

Job = Callable[[web.Application], Awaitable[int]]  # one round; returns how many things it did


def periodic_ctx(name: str, job: Job, *, every: float) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context running `job(app)` every `every` seconds, the first time at a random
    moment within the first interval (replicas started together do not run it together)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            wait = every * random.random()
            while True:
                await asyncio.sleep(wait)
                wait = every
                try:
                    done = await job(app)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("periodic job failed; it runs again next round", extra={"job": name, "error": type(exc).__name__})
                    continue
                if done:
                    log.info("periodic job done", extra={"job": name, "count": done})

        task = asyncio.create_task(loop(), name=name)
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return ctx
