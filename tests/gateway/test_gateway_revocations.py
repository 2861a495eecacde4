"""A revocation must not be lost because no gateway was listening when auth-service sent it:
the session rows go through a durable consumer group, not only the replicas' own queues."""
from __future__ import annotations

from datetime import datetime, timezone

import asyncpg

from msp_shared.bus import Bus
from msp_shared.events import SessionsRevoked, make_envelope

from gateway_kit import ALICE, eventually


async def _alice_rows(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval("SELECT count(*) FROM gateway.sessions WHERE user_id = $1", ALICE)
    finally:
        await conn.close()


async def test_a_revocation_sent_while_no_gateway_runs_ends_the_sessions_when_one_starts(
    make_gateway, browsers, database_url, amqp_url, exchange_name
):
    first = await make_gateway()
    alice = browsers(first.url)
    assert (await alice.login()).status == 200
    assert (await alice.get_json("/api/v1/me"))[0] == 200
    decided = datetime.now(timezone.utc)
    # Every replica stops (a deploy, or their broker connections down): no replica queue exists.
    await first.server.close()

    bus = Bus(amqp_url, exchange_name, service="auth-test")
    await bus.connect()
    try:
        await bus.publish(make_envelope(SessionsRevoked(user_id=ALICE, reason="password_changed"), occurred_at=decided))
    finally:
        await bus.close()
    assert await _alice_rows(database_url) == 1  # nobody has consumed it yet

    second = await make_gateway()

    async def rows_gone() -> bool:
        return await _alice_rows(database_url) == 0

    await eventually(rows_gone, what="alice's sessions deleted by the durable consumer")
    alice.base = second.url  # the stolen cookie, tried on the new replica
    status, body, _ = await alice.get_json("/api/v1/me")
    assert status == 401 and body["error"] == "session_expired"
