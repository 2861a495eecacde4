"""The periodic job runner: runs its job again and again, a failing round does not end it,
and the app's cleanup stops it."""
from __future__ import annotations

import asyncio

from aiohttp import web

from msp_shared.periodic import periodic_ctx


async def test_rounds_go_on_after_a_failure_and_stop_with_the_app() -> None:
    rounds: list[int] = []

    async def job(app: web.Application) -> int:
        rounds.append(len(rounds))
        if len(rounds) == 2:
            raise ConnectionError("database away")
        return 1

    app = web.Application()
    app.cleanup_ctx.append(periodic_ctx("test-job", job, every=0.01))
    runner = web.AppRunner(app)
    await runner.setup()  # runs the startup half of the cleanup contexts
    for _ in range(200):
        if len(rounds) >= 4:
            break
        await asyncio.sleep(0.01)
    assert len(rounds) >= 4  # the failed second round did not end the loop
    await runner.cleanup()
    stopped_at = len(rounds)
    await asyncio.sleep(0.05)
    assert len(rounds) == stopped_at
