"""Test infrastructure shared by every test: each test gets its own PostgreSQL database, each
run its own RabbitMQ virtual host (and each test its own exchange in it), all dropped at the
end, so runs and tests never see each other's data.

Everything is real: the machine's PostgreSQL and RabbitMQ. Services are built in-process
from their app factories with a ManualClock, and served on real sockets where a test needs
HTTP between them."""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote

import asyncpg
import pytest

from msp_shared.clock import ManualClock

PG_ADMIN_DSN = os.environ.get("MSP_TEST_PG_ADMIN_DSN", "postgresql://msp:msp@127.0.0.1:5432/postgres")
AMQP_BASE = os.environ.get("MSP_TEST_AMQP_BASE", "amqp://guest:guest@127.0.0.1:5672")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def run_id() -> str:
    return secrets.token_hex(4)


async def _admin(sql: str) -> None:
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(sql)
    finally:
        await admin.close()


@pytest.fixture
async def database_url(run_id: str) -> AsyncIterator[str]:
    """A fresh database per test (the outbox and inbox tables must not be shared between
    tests that each run their own relay), dropped afterwards."""
    name = f"msp_test_{run_id}_{uuid.uuid4().hex[:8]}"
    await _admin(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _rabbitmqctl(*args: str, check: bool = True) -> None:
    try:
        subprocess.run(["rabbitmqctl", "-q", *args], check=check, capture_output=True, timeout=120)
    except subprocess.TimeoutExpired:
        if check:
            raise


@pytest.fixture(scope="session")
def amqp_url(run_id: str) -> Iterator[str]:
    """A virtual host of this run's own; without rabbitmqctl (a remote broker), a unique
    exchange name per test keeps runs apart instead."""
    if shutil.which("rabbitmqctl") is None:
        yield f"{AMQP_BASE}/"
        return
    vhost = f"msp-test-{run_id}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    yield f"{AMQP_BASE}/{quote(vhost, safe='')}"
    _rabbitmqctl("delete_vhost", vhost, check=False)  # best effort: a slow broker must not fail the run


@pytest.fixture
def exchange_name() -> str:
    """A fresh exchange per test: tests sharing the run's vhost never see each other's events."""
    return f"msp.test.{uuid.uuid4().hex[:8]}"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def dev_outbox(tmp_path: Path) -> Path:
    path = tmp_path / "outbox"
    (path / "mail").mkdir(parents=True)
    return path


@pytest.fixture
def base_env(database_url: str, amqp_url: str, exchange_name: str, dev_outbox: Path) -> dict[str, str]:
    """Settings every service of one test shares, as keyword arguments for Settings(...)."""
    return {
        "database_url": database_url,
        "amqp_url": amqp_url,
        "bus_exchange": exchange_name,
        "dev_outbox": str(dev_outbox),
        "bus_retry_delay_ms": 50,
        # Service-level tests declare many short-lived groups: classic queues keep the broker
        # light. The bus's own tests (tests/shared/test_bus.py) exercise quorum queues.
        "bus_queue_type": "classic",
        "log_format": "text",
    }
