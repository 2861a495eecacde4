"""The idempotent inbox on real PostgreSQL: one event at a time, and bursts handled in one
transaction where a failing effect is reported alone and the others take effect once."""
from __future__ import annotations

import contextlib

import asyncpg

from bus_testkit import ThingHappened, demo_pool, effect_counts, record_effect, thing  # noqa: F401
from msp_shared.events import Envelope
from msp_shared.inbox import idempotent


class Poisoned(Exception):
    pass


def _failing_on(*bad: int, calls: list[int] | None = None):  # noqa: ANN202
    """An effect that records the event, then raises for the given numbers (after its write,
    so a missing rollback would show)."""

    async def effect(conn: asyncpg.Connection, envelope: Envelope) -> None:
        if calls is not None:
            calls.append(envelope.data["n"])
        await record_effect(conn, envelope)
        if envelope.data["n"] in bad:
            raise Poisoned(f"event {envelope.data['n']}")

    return effect


async def _effect_numbers(pool: asyncpg.Pool) -> list[int]:
    return [r["n"] for r in await pool.fetch("SELECT n FROM effects ORDER BY n")]


async def _inbox_count(pool: asyncpg.Pool) -> int:
    return await pool.fetchval("SELECT count(*) FROM inbox")


async def test_a_single_event_takes_effect_once(demo_pool: asyncpg.Pool) -> None:
    handler = idempotent(demo_pool, "demo", record_effect)
    envelope = thing(1)
    await handler(envelope)
    await handler(envelope)  # redelivered
    assert await effect_counts(demo_pool) == (1, 1)


async def test_a_burst_takes_effect_once_per_event_in_delivery_order(demo_pool: asyncpg.Pool) -> None:
    calls: list[int] = []
    handler = idempotent(demo_pool, "demo", _failing_on(calls=calls))
    envelopes = [thing(n) for n in (5, 3, 9, 1)]

    assert await handler.handle_batch(envelopes) == [None] * 4
    assert calls == [5, 3, 9, 1]
    assert await _effect_numbers(demo_pool) == [1, 3, 5, 9]
    assert await _inbox_count(demo_pool) == 4


async def test_a_burst_skips_events_already_done_and_duplicates_within_it(demo_pool: asyncpg.Pool) -> None:
    handler = idempotent(demo_pool, "demo", record_effect)
    done, new = thing(1), thing(2)
    await handler(done)

    # `done` again, and `new` twice in the same burst (a relay republished it).
    assert await handler.handle_batch([done, new, new]) == [None, None, None]
    assert await effect_counts(demo_pool) == (2, 2)
    assert await _effect_numbers(demo_pool) == [1, 2]


async def test_one_poisoned_event_fails_alone_and_the_others_take_effect_once(demo_pool: asyncpg.Pool) -> None:
    calls: list[int] = []
    handler = idempotent(demo_pool, "demo", _failing_on(3, calls=calls))
    envelopes = [thing(n) for n in range(1, 6)]

    verdicts = await handler.handle_batch(envelopes)

    assert [type(v).__name__ if v else None for v in verdicts] == [None, None, "Poisoned", None, None]
    assert await _effect_numbers(demo_pool) == [1, 2, 4, 5]  # each once; nothing of event 3
    assert await effect_counts(demo_pool) == (4, 4)
    # Event 3 left no inbox row: its retry will take effect.
    assert await demo_pool.fetchval("SELECT count(*) FROM inbox WHERE event_id = $1", envelopes[2].id) == 0
    # The first pass stopped at event 3 and was rolled back; the second skipped it.
    assert calls == [1, 2, 3, 1, 2, 4, 5]

    retry = idempotent(demo_pool, "demo", record_effect)
    await retry(envelopes[2])
    assert await effect_counts(demo_pool) == (5, 5)


async def test_several_failing_events_in_a_burst_are_each_reported(demo_pool: asyncpg.Pool) -> None:
    handler = idempotent(demo_pool, "demo", _failing_on(2, 4))
    envelopes = [thing(n) for n in range(1, 6)]

    verdicts = await handler.handle_batch(envelopes)

    assert [v is None for v in verdicts] == [True, False, True, False, True]
    assert await _effect_numbers(demo_pool) == [1, 3, 5]


async def test_a_burst_whose_transaction_fails_reports_every_event(demo_pool: asyncpg.Pool) -> None:
    # The effects succeed, but the transaction cannot commit (a deferred constraint fails at
    # COMMIT): nothing took effect, so every event must be retried.
    await demo_pool.execute(
        "CREATE TABLE picky (n integer PRIMARY KEY);"
        "CREATE TABLE picky_ref (n integer REFERENCES picky (n) DEFERRABLE INITIALLY DEFERRED)"
    )

    async def effect(conn: asyncpg.Connection, envelope: Envelope) -> None:
        await record_effect(conn, envelope)
        await conn.execute("INSERT INTO picky_ref (n) VALUES ($1)", envelope.data["n"])  # no such picky row

    handler = idempotent(demo_pool, "demo", effect)
    verdicts = await handler.handle_batch([thing(1), thing(2)])

    assert all(isinstance(v, asyncpg.ForeignKeyViolationError) for v in verdicts)
    assert await effect_counts(demo_pool) == (0, 0)
    assert await _inbox_count(demo_pool) == 0


async def test_around_wraps_each_event_of_the_burst(demo_pool: asyncpg.Pool) -> None:
    wrapped: list[int] = []

    @contextlib.contextmanager
    def around(envelope: Envelope):  # noqa: ANN202
        wrapped.append(envelope.data["n"])
        yield

    handler = idempotent(demo_pool, "demo", record_effect)
    await handler.handle_batch([thing(1), thing(2)], around)
    assert wrapped == [1, 2]
