"""Idempotent consumers: the event id is recorded in the same transaction as the effect.

`idempotent(pool, "mail.send", handler)` returns a bus handler that opens a transaction,
inserts (consumer, event id) into the inbox and runs `handler(conn, envelope)` only if the
row is new. A redelivered event finds its row and changes nothing. If the handler raises,
the transaction rolls back, the inbox row with it, and the bus retries the event. Two
concurrent deliveries of one event serialise on the inbox's primary key: the second waits
for the first to commit, then sees the conflict and does nothing.

Batches. The bus hands a burst of deliveries to `handle_batch` at once (see bus.py): one
transaction records all their ids with one statement and runs their effects in delivery
order, so a burst costs one BEGIN/COMMIT and one inbox statement instead of one each. If an
effect raises, that transaction rolls back and the batch is done again without the failing
event, each of the others under its own savepoint: they take effect once, and the failing
one is reported to the bus alone, which retries or parks it as for a single event (an
effect may therefore run twice before it commits once, as it does on any retry: effects
are database writes on `conn`, undone by the rollback). The ids are inserted in sorted
order, so two consumers holding overlapping bursts (duplicates) queue on the primary key in
the same order instead of deadlocking."""
from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager

import asyncpg

from .events import Envelope

EffectHandler = Callable[[asyncpg.Connection, Envelope], Awaitable[None]]
# Wraps each event's part of a batch (the bus passes its CONSUMER span).
Around = Callable[[Envelope], AbstractContextManager]

_RECORD_ONE = (
    "INSERT INTO inbox (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING true"
)
_RECORD_MANY = (
    "INSERT INTO inbox (consumer, event_id) SELECT $1, unnest($2::uuid[])"
    " ON CONFLICT DO NOTHING RETURNING event_id"
)


def _no_span(_envelope: Envelope) -> AbstractContextManager:
    return contextlib.nullcontext()


class Idempotent:
    """The handler `idempotent()` returns: call it with one envelope, or let the bus call
    `handle_batch` with a burst."""

    def __init__(self, pool: asyncpg.Pool, consumer: str, handler: EffectHandler) -> None:
        self.pool = pool
        self.consumer = consumer
        self.handler = handler

    async def __call__(self, envelope: Envelope) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            if await conn.fetchval(_RECORD_ONE, self.consumer, envelope.id):
                await self.handler(conn, envelope)

    async def handle_batch(self, envelopes: Sequence[Envelope], around: Around = _no_span) -> list[BaseException | None]:
        """Take effect for every event of the burst that is new; returns, per envelope, None
        (done: its effect is committed, or it had taken effect before) or the exception its
        effect raised (nothing of it was committed: the bus retries it)."""
        results: list[BaseException | None] = [None] * len(envelopes)
        async with self.pool.acquire() as conn:
            failed_at, error = await self._all_at_once(conn, envelopes, around)
            if error is None:
                return results
            if failed_at is not None:
                results[failed_at] = error
            # One by one under savepoints, in one transaction, without the failing event.
            # If an effect did not fail (the insert or the commit did), they all go again.
            try:
                async with conn.transaction():
                    for i, envelope in enumerate(envelopes):
                        if i == failed_at:
                            continue
                        try:
                            async with conn.transaction():  # a savepoint
                                with around(envelope):
                                    if await conn.fetchval(_RECORD_ONE, self.consumer, envelope.id):
                                        await self.handler(conn, envelope)
                        except Exception as exc:
                            results[i] = exc
            except Exception as exc:  # the transaction itself failed: none of it committed
                return [exc if result is None else result for result in results]
        return results

    async def _all_at_once(
        self, conn: asyncpg.Connection, envelopes: Sequence[Envelope], around: Around
    ) -> tuple[int | None, BaseException | None]:
        """One transaction for the whole burst. Returns (None, None) once it has committed,
        else (index of the event whose effect raised, or None, the exception); rolled back."""
        current: int | None = None
        try:
            async with conn.transaction():
                new = {
                    row[0] for row in await conn.fetch(
                        _RECORD_MANY, self.consumer, sorted({envelope.id for envelope in envelopes})
                    )
                }
                for i, envelope in enumerate(envelopes):
                    with around(envelope):
                        if envelope.id in new:
                            new.discard(envelope.id)  # the same event twice in a burst: one effect
                            current = i
                            await self.handler(conn, envelope)
                            current = None
        except Exception as exc:
            return current, exc
        return None, None


def idempotent(pool: asyncpg.Pool, consumer: str, handler: EffectHandler) -> Idempotent:
    return Idempotent(pool, consumer, handler)


__all__ = ["EffectHandler", "Idempotent", "idempotent"]
