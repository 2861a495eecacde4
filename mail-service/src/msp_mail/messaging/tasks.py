"""The periodic sweep of secure messages, against the app's clock (tests call `sweep()`
after moving a ManualClock instead of waiting):

1. messages past their expiry are deleted for everyone, with their attachments' wrapped data
   keys, in one transaction that also queues their blobs for deletion;
2. queued blobs are deleted from storage (retried next sweep if storage is down);
3. senders get one digest a few days before their messages with attachments expire.

Replicas share the work: rows are claimed with FOR UPDATE SKIP LOCKED."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
from aiohttp import web

from msp_shared.clock import Clock
from msp_shared.mailer import request_email
from msp_shared.seal import Sealer
from msp_shared.web import CLOCK, POOL, SETTINGS

from . import expiry, store
from .keys import BLOBS, SEALER, SWEEPER

log = logging.getLogger(__name__)

BATCH = 200


@dataclass
class SweepResult:
    expired: int = 0
    blobs_deleted: int = 0
    digests: int = 0


class Sweeper:
    def __init__(self, pool: asyncpg.Pool, blobs, sealer: Sealer, settings, clock: Clock) -> None:  # noqa: ANN001
        self.pool = pool
        self.blobs = blobs
        self.sealer = sealer
        self.settings = settings
        self.clock = clock
        self._stop = asyncio.Event()

    async def sweep(self) -> SweepResult:
        result = SweepResult()
        result.expired = await self.expire()
        result.blobs_deleted = await self.delete_blobs()
        result.digests = await self.send_digests()
        return result

    async def expire(self) -> int:
        total = 0
        while True:
            now = self.clock.now()
            async with self.pool.acquire() as conn, conn.transaction():
                ids = await store.claim_expired(conn, now, BATCH)
                if ids:
                    await store.destroy_messages(conn, ids, now)
            total += len(ids)
            if len(ids) < BATCH:
                break
        if total:
            log.info("expired messages deleted", extra={"count": total})
        return total

    async def delete_blobs(self) -> int:
        deleted = 0
        async with self.pool.acquire() as conn:
            keys = await store.queued_blob_deletions(conn, 1000)
        done = []
        for key in keys:
            try:
                await self.blobs.delete(key)
                done.append(key)
            except Exception as exc:  # storage down: the row stays queued for the next sweep
                log.warning("blob deletion failed; will retry", extra={"error": type(exc).__name__})
        if done:
            async with self.pool.acquire() as conn:
                await store.blob_deleted(conn, done)
            deleted = len(done)
        return deleted

    async def send_digests(self) -> int:
        now = self.clock.now()
        days = self.settings.message_digest_days_before
        sent = 0
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await store.claim_digests(conn, now, expiry.digest_window(now, days))
            by_sender: dict = defaultdict(list)
            for row in rows:
                by_sender[(row["sender_id"], row["sender_email"])].append(row)
            for (_sender, address), messages in by_sender.items():
                count = len(messages)
                noun = "message" if count == 1 else "messages"
                await request_email(
                    conn, self.sealer, template="generic_notice", to=address,
                    params={
                        "title": "Secure messages with attachments expire soon",
                        "text": f"{count} of your sent secure {noun} with attachments will expire within {days} days, "
                                "and their attachments will be deleted. Sign in to see which.",
                        "link": self.settings.public_url.rstrip("/") + "/#/sent"  # the web app's Sent folder,
                    },
                    requested_by="mail",
                )
                sent += 1
        return sent

    async def run(self) -> None:
        interval = self.settings.message_sweep_interval_seconds
        while not self._stop.is_set():
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # database or storage trouble: next round
                log.warning("message sweep failed", extra={"error": type(exc).__name__})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=interval)

    def stop(self) -> None:
        self._stop.set()


async def sweeper_ctx(app: web.Application) -> AsyncIterator[None]:
    sweeper = Sweeper(app[POOL], app[BLOBS], app[SEALER], app[SETTINGS], app[CLOCK])
    app[SWEEPER] = sweeper
    task = asyncio.create_task(sweeper.run(), name="message-sweeper")
    yield
    sweeper.stop()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
