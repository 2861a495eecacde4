"""Claiming due mails: a claim is exclusive while its lease lasts, and a crashed replica's
claim is taken over once the lease has run out."""
from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from msp_mail.app import MIGRATIONS, SCHEMA
from msp_mail.outbound import store
from msp_shared import db

LEASE = timedelta(minutes=5)


@pytest.fixture
async def pool(database_url):
    await db.migrate(database_url, SCHEMA, MIGRATIONS)
    pool = await db.create_pool(database_url, SCHEMA, max_size=6)
    yield pool
    await pool.close()


async def add(pool, now, n=1):
    ids = []
    for _ in range(n):
        mail_id = uuid.uuid4()
        async with pool.acquire() as conn:
            assert await store.insert_request(conn, id=mail_id, template="password_reset", sealed="x",
                                              params={}, requested_by="test", now=now)
        ids.append(mail_id)
    return ids


async def test_a_request_is_recorded_once(pool, clock):
    [mail_id] = await add(pool, clock.now())
    async with pool.acquire() as conn:
        assert not await store.insert_request(conn, id=mail_id, template="password_reset", sealed="y",
                                              params={}, requested_by="test", now=clock.now())
    assert (await store.get(pool, mail_id))["sealed"] == "x"


async def test_concurrent_claims_never_share_a_mail(pool, clock):
    await add(pool, clock.now(), n=30)
    batches = await asyncio.gather(*(store.claim_due(pool, now=clock.now(), lease=LEASE, limit=7) for _ in range(6)))
    claimed = [due.id for batch in batches for due in batch]
    assert len(claimed) == 30 and len(set(claimed)) == 30


async def test_a_lost_claim_is_taken_over_after_its_lease(pool, clock):
    [mail_id] = await add(pool, clock.now())
    [first] = await store.claim_due(pool, now=clock.now(), lease=LEASE, limit=10)
    assert first.attempts == 1
    clock.advance(minutes=4)
    assert await store.claim_due(pool, now=clock.now(), lease=LEASE, limit=10) == []
    clock.advance(minutes=2)
    [second] = await store.claim_due(pool, now=clock.now(), lease=LEASE, limit=10)
    assert second.id == mail_id and second.attempts == 2
    # The replica that lost its claim can no longer record an outcome for it.
    async with pool.acquire() as conn:
        assert not await store.mark_sent(conn, mail_id, attempts=first.attempts, now=clock.now())
        assert await store.mark_sent(conn, mail_id, attempts=second.attempts, now=clock.now())
    row = await store.get(pool, mail_id)
    assert row["status"] == "sent" and row["sealed"] is None
