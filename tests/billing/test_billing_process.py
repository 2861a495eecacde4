"""billing-service and the local Stripe server as their own processes, the way the up command
runs them: `python -m msp_billing migrate`, `python -m msp_billing` (serve) and
`python -m msp_billing.stripe_local`, talking over real sockets; health endpoints; a purchase
through both; clean exit on SIGTERM."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time

import aiohttp
import asyncpg

from msp_shared import identity
from msp_shared.config import DEV_IDENTITY_SECRET

from billing_kit import UM, eventually, new_user


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _header(user, method: str, path: str) -> dict[str, str]:
    ident = identity.Identity(user_id=user.id, practice_id=user.practice_id, roles=user.roles, ip="198.51.100.2")
    return {identity.HEADER: identity.sign(ident, secret=DEV_IDENTITY_SECRET.encode(), method=method, path=path,
                                           now=time.time(), ttl=30)}


async def _ok(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(url) as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False


async def test_billing_runs_as_its_own_process_with_the_local_stripe_server(
    database_url: str, amqp_url: str, exchange_name: str
) -> None:
    billing_port, stripe_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "MSP_DATABASE_URL": database_url, "MSP_AMQP_URL": amqp_url, "MSP_BUS_EXCHANGE": exchange_name,
        "MSP_BILLING_PORT": str(billing_port), "MSP_STRIPE_LOCAL_PORT": str(stripe_port),
        "MSP_STRIPE_API_BASE": f"http://127.0.0.1:{stripe_port}", "MSP_LOG_FORMAT": "text",
        "MSP_MIGRATE_ON_START": "false", "MSP_SHUTDOWN_GRACE_SECONDS": "2",
    }
    migrate = await asyncio.create_subprocess_exec(sys.executable, "-m", "msp_billing", "migrate", env=env,
                                                   stdout=asyncio.subprocess.PIPE)
    out, _ = await migrate.communicate()
    assert migrate.returncode == 0 and b"migration" in out
    conn = await asyncpg.connect(database_url)
    try:
        names = {r["name"] for r in await conn.fetch("SELECT name FROM billing.schema_migrations")}
    finally:
        await conn.close()
    assert "0001_billing" in names

    procs = [
        await asyncio.create_subprocess_exec(sys.executable, "-m", "msp_billing.stripe_local", env=env,
                                             stdout=asyncio.subprocess.DEVNULL),
        await asyncio.create_subprocess_exec(sys.executable, "-m", "msp_billing", env=env),
    ]
    base = f"http://127.0.0.1:{billing_port}"
    try:
        async with aiohttp.ClientSession() as http:
            await eventually(lambda: _ok(http, f"http://127.0.0.1:{stripe_port}/healthz"), timeout=30,
                             what="local Stripe server up")
            await eventually(lambda: _ok(http, base + "/readyz"), timeout=30, what="billing ready")
            async with http.get(base + "/healthz") as resp:
                assert (await resp.json())["service"] == "billing"

            manager = new_user(roles=UM)
            async with http.put(base + "/billing/card", headers=_header(manager, "PUT", "/billing/card"),
                                json={"payment_method_token": "pm_card_visa", "email": "m@example.test"}) as resp:
                assert resp.status == 200, await resp.text()
            async with http.post(base + "/billing/securemail", json={"user_id": manager.id},
                                 headers=_header(manager, "POST", "/billing/securemail")) as resp:
                assert resp.status == 201, await resp.text()

            async def invoices() -> list:
                async with http.get(base + "/billing/invoices",
                                    headers=_header(manager, "GET", "/billing/invoices")) as resp:
                    return (await resp.json())["invoices"]

            [invoice] = await invoices()
            assert invoice["own"] is True and invoice["amount_cents"] == 1000

            # The server's signed webhooks reached the billing process and were applied once.
            conn = await asyncpg.connect(database_url)
            try:
                await eventually(lambda: conn.fetchval("SELECT count(*) >= 2 FROM billing.stripe_events"),
                                 what="webhooks applied")
                charges = await conn.fetchval("SELECT count(*) FROM billing.ledger WHERE kind = 'charge'")
            finally:
                await conn.close()
            assert charges == 1
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        codes = [await asyncio.wait_for(proc.wait(), 30) for proc in procs]
    assert codes == [0, 0]
