"""Idempotent consumers: the event id is recorded in the same transaction as the effect.

`idempotent(pool, "mail.send", handler)` returns a bus handler that opens a transaction,
inserts (consumer, event id) into the inbox and runs `handler(conn, envelope)` only if the
row is new. A redelivered event finds its row and changes nothing. If the handler raises,
the transaction rolls back, the inbox row with it, and the bus retries the event. Two
concurrent deliveries of one event serialise on the inbox's primary key: the second waits
for the first to commit, then sees the conflict and does nothing."""
from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg

from .events import Envelope

EffectHandler = Callable[[asyncpg.Connection, Envelope], Awaitable[None]]


def idempotent(pool: asyncpg.Pool, consumer: str, handler: EffectHandler) -> Callable[[Envelope], Awaitable[None]]:
    async def run(envelope: Envelope) -> None:
        async with pool.acquire() as conn, conn.transaction():
            first_time = await conn.fetchval(
                "INSERT INTO inbox (consumer, event_id) VALUES ($1, $2)"
                " ON CONFLICT DO NOTHING RETURNING true",
                consumer,
                envelope.id,
            )
            if first_time:
                await handler(conn, envelope)

    return run


__all__ = ["EffectHandler", "idempotent"]
