"""bench/inbox: p50/p99 of listing one page of an Inbox holding 100,000 messages, through
mail-service directly (signed identity header) and through the gateway (session cookie),
beside the raw primitives measured in the same run: the same SQL (mail-service's own
`store.inbox_page`) run directly with asyncpg, and a bare aiohttp handler.

Setup: auth-service, mail-service and gateway as separate processes on a scratch database;
the reader is created with auth's own store functions (_stack.py) and signs in through the
gateway; 100,000 messages are bulk-loaded into mail-service's real tables (messages +
message_recipients, migrations/0010_secure_messages.sql) with one generate_series INSERT
each, then ANALYZEd. Every message is live (expires in 30 days), one second apart.

Load: wrk for every HTTP side (same connections and duration); asyncpg side: the same number
of connections each calling inbox_page in a loop.

Target (issue 4): p99 < 20 ms for one page of a 100k-message Inbox.

    uv run python bench/inbox.py [--messages 100000] [--seconds 8] [--connections 4]"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, free_port, python_process, scratch_database, summary_ms, wait_for_port, wrk  # noqa: E402
from _stack import create_users, services, sign_in  # noqa: E402

import aiohttp  # noqa: E402

from msp_mail.config import MailSettings  # noqa: E402
from msp_mail.messaging import store as mail_store  # noqa: E402
from msp_shared import identity  # noqa: E402
from msp_shared.config import DEV_IDENTITY_SECRET  # noqa: E402

HERE = Path(__file__).parent

LOAD_MESSAGES = """
INSERT INTO messages (id, thread_id, sender_id, sender_practice_id, sender_email, sender_name, sender_practice_name,
                      subject, body, created_at, expires_at)
SELECT s.id, s.id, $1, $2, 'sender@example.test', 'Bench Sender', 'Bench Practice',
       'Bench subject ' || s.g, repeat('Bench body line. ', 20), now() - s.g * interval '1 second',
       now() + interval '30 days'
FROM (SELECT gen_random_uuid() AS id, g FROM generate_series(1, $3::int) AS g) AS s
"""
LOAD_RECIPIENTS = """
INSERT INTO message_recipients (message_id, user_id, email, created_at, read_at)
SELECT m.id, $1, $2, m.created_at, CASE WHEN random() < 0.5 THEN m.created_at END FROM messages m
"""


async def raw_sql(dsn: str, user_id: uuid.UUID, limit: int, seconds: float, connections: int) -> dict:
    pool = await asyncpg.create_pool(dsn, min_size=connections, max_size=connections,
                                     server_settings={"search_path": "mail"})
    latencies: list[float] = []

    async def worker(end: float) -> None:
        async with pool.acquire() as conn:
            while time.perf_counter() < end:
                tick = time.perf_counter()
                rows = await mail_store.inbox_page(conn, str(user_id), datetime.now(UTC), None, limit + 1)
                latencies.append(time.perf_counter() - tick)
                assert len(rows) == limit + 1

    try:
        await asyncio.gather(*(worker(time.perf_counter() + 1) for _ in range(connections)))  # warm-up
        latencies.clear()
        start = time.perf_counter()
        await asyncio.gather(*(worker(start + seconds) for _ in range(connections)))
        elapsed = time.perf_counter() - start
    finally:
        await pool.close()
    return {"req_per_s": round(len(latencies) / elapsed, 1), **summary_ms(latencies)}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=4)
    args = parser.parse_args()
    page = MailSettings().message_page_size
    async with scratch_database() as dsn:
        with services(dsn, ("auth", "mail", "gateway")) as stack:
            reader, = await create_users(dsn, 1, prefix="reader")
            conn = await asyncpg.connect(dsn, server_settings={"search_path": "mail"})
            try:
                load_start = time.perf_counter()
                await conn.execute(LOAD_MESSAGES, uuid.uuid4(), uuid.uuid4(), args.messages)
                await conn.execute(LOAD_RECIPIENTS, reader["id"], reader["email"])
                await conn.execute("ANALYZE messages; ANALYZE message_recipients")
                load_s = time.perf_counter() - load_start
                inbox_size = await conn.fetchval("SELECT count(*) FROM message_recipients WHERE user_id = $1", reader["id"])
                plan = await conn.fetch(
                    "EXPLAIN (FORMAT TEXT) SELECT 1 FROM message_recipients r JOIN messages m ON m.id = r.message_id"
                    " WHERE r.user_id = $1 AND r.deleted_at IS NULL AND m.expires_at > now()"
                    " ORDER BY r.created_at DESC, r.message_id DESC LIMIT 51", reader["id"],
                )
            finally:
                await conn.close()
            gateway = stack.url("gateway")
            async with aiohttp.ClientSession() as client:
                login = await sign_in(client, gateway, reader["email"])
                async with client.get(f"{gateway}/api/v1/messages?folder=inbox",
                                      cookies={"msp_session": login["cookie"]}) as answer:
                    first = await answer.json()
            assert len(first["messages"]) == page and first["next_cursor"], first
            header = identity.sign(
                identity.Identity(user_id=str(reader["id"]), practice_id=str(reader["practice_id"]), roles=("member",)),
                secret=DEV_IDENTITY_SECRET.encode(), method="GET", path="/messages", now=time.time(), ttl=3600,
            )
            bare_port = free_port()
            bare = python_process([str(HERE / "_stand_ins.py"), "bare", str(bare_port)])
            try:
                wait_for_port(bare_port)
                run = dict(seconds=args.seconds, connections=args.connections)
                direct_url = f"{stack.url('mail')}/messages?folder=inbox"
                gateway_url = f"{gateway}/api/v1/messages?folder=inbox"
                wrk(direct_url, seconds=2, connections=args.connections, headers={identity.HEADER: header})  # warm-up
                wrk(gateway_url, seconds=2, connections=args.connections, headers={"Cookie": f"msp_session={login['cookie']}"})
                results = {}
                # One request at a time (the latency a user sees), then `connections` at once.
                for suffix, conns in (("_1_connection", 1), ("", args.connections)):
                    run = dict(seconds=args.seconds, connections=conns)
                    results |= {
                        "raw_sql_asyncpg" + suffix: await raw_sql(dsn, reader["id"], page, args.seconds, conns),
                        "bare_handler" + suffix: wrk(f"http://127.0.0.1:{bare_port}/me", **run),
                        "mail_direct" + suffix: wrk(direct_url, headers={identity.HEADER: header}, **run),
                        "gateway" + suffix: wrk(gateway_url, headers={"Cookie": f"msp_session={login['cookie']}"}, **run),
                    }
            finally:
                bare.terminate()
                bare.wait(timeout=20)
    emit(
        {
            "bench": "inbox",
            "setup": {"inbox_messages": inbox_size, "page_size": page, "bulk_load_seconds": round(load_s, 2),
                      "query_plan": [r[0] for r in plan]},
            "load": {"tool": "wrk (HTTP) / asyncpg loop (SQL)", "threads": 1, "seconds": args.seconds,
                     "connections": [1, args.connections]},
            "results": results,
            "ratios": {
                "mail_direct_vs_bare_handler_rps": round(results["mail_direct"]["req_per_s"] / results["bare_handler"]["req_per_s"], 3),
                "mail_direct_vs_raw_sql_rps": round(results["mail_direct"]["req_per_s"] / results["raw_sql_asyncpg"]["req_per_s"], 3),
                "gateway_vs_mail_direct_rps": round(results["gateway"]["req_per_s"] / results["mail_direct"]["req_per_s"], 3),
            },
            "target": {"p99_ms_max": 20},
            "met": {name: results[name]["p99_ms"] < 20
                    for name in ("mail_direct_1_connection", "gateway_1_connection", "mail_direct", "gateway")},
        }
    )


if __name__ == "__main__":
    asyncio.run(main())
