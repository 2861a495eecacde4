"""The real services as separate processes for the login, upload and inbox benchmarks, all on
one scratch database (each service in its own schema) and a unique bus exchange, plus the
honest ways to set up their data:

- users: created with auth-service's own store functions and password hashing, exactly as
  its Support seeding does (msp_auth.seed.seed_support), in one practice, verified, no 2-step;
- paid SecureMail: mail-service's own `store.grant_securemail` (what its
  billing.securemail.granted handler calls)."""
from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp
import asyncpg

from _common import free_port, python_process, wait_for_port

from msp_auth import store as auth_store
from msp_auth.config import AuthSettings
from msp_auth.hashing import Argon2Params, hash_password

PASSWORD = "Bench-Harbor-Lantern-73!"
UNLIMITED = "1000000000"

# Gateway rate limits raised for the benchmarks only: a load generator signs in from one IP
# far more often than the production limits (50/IP, 10/account per 15 min) allow. Hits are
# still counted in PostgreSQL as in production; the window is cut to 1 s so that each count
# covers about as many rows as production's limits allow (under 50), not every hit of the run.
RATE_LIMITS_RAISED = {
    "MSP_RATE_LIMIT_WINDOW_SECONDS": "1",
    "MSP_RATE_LIMIT_LOGIN_PER_IP": UNLIMITED,
    "MSP_RATE_LIMIT_LOGIN_PER_ACCOUNT": UNLIMITED,
    "MSP_RATE_LIMIT_SENSITIVE_PER_IP": UNLIMITED,
    "MSP_RATE_LIMIT_SENSITIVE_PER_ACCOUNT": UNLIMITED,
}


def auth_params() -> Argon2Params:
    s = AuthSettings()
    return Argon2Params(s.argon2_time_cost, s.argon2_memory_kib, s.argon2_parallelism, s.argon2_hash_len, s.argon2_salt_len)


@dataclass
class Stack:
    dsn: str
    ports: dict[str, int]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"


@contextlib.contextmanager
def services(dsn: str, names: tuple[str, ...], extra_env: dict[str, dict[str, str]] | None = None) -> Iterator[Stack]:
    """Start the named services (auth, mail, gateway) as `python -m msp_<name>`."""
    ports = {name: free_port() for name in names}
    stack = Stack(dsn, ports)
    common = {
        "MSP_DATABASE_URL": dsn,
        "MSP_BUS_EXCHANGE": f"msp.bench.{uuid.uuid4().hex[:8]}",
        "MSP_BUS_QUEUE_TYPE": "classic",
        "MSP_LOG_LEVEL": "WARNING",
        "MSP_LOG_FORMAT": "text",
        "MSP_AUTH_URL": f"http://127.0.0.1:{ports.get('auth', 1)}",
        "MSP_MAIL_URL": f"http://127.0.0.1:{ports.get('mail', 1)}",
    }
    port_env = {"auth": "MSP_AUTH_PORT", "mail": "MSP_MAIL_PORT", "gateway": "MSP_GATEWAY_PORT"}
    try:
        for name in names:  # one after another: each migrates its own schema at start
            env = {**common, port_env[name]: str(ports[name]), **((extra_env or {}).get(name, {}))}
            if name == "gateway":
                env = {"MSP_PUBLIC_URL": stack.url("gateway"), **RATE_LIMITS_RAISED, **env}
            # MSP_BENCH_PROFILE=<name>: run that service under cProfile (stats written at its
            # graceful exit to /tmp/msp-bench-<name>.prof) to find out where its time goes.
            profile = ["-m", "cProfile", "-o", f"/tmp/msp-bench-{name}.prof"] if os.environ.get("MSP_BENCH_PROFILE") == name else []
            stack.procs[name] = python_process([*profile, "-m", f"msp_{name}"], env=env)
            wait_for_port(ports[name], timeout=60)
        yield stack
    finally:
        for proc in stack.procs.values():
            proc.terminate()
        for proc in stack.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


async def create_users(dsn: str, count: int, *, prefix: str = "bench") -> list[dict]:
    """`count` verified members of one practice with password PASSWORD, through auth's store
    functions (hashes made in parallel with auth's own hash function and parameters)."""
    params = auth_params()
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor() as pool:
        hashes = await asyncio.gather(*(loop.run_in_executor(pool, hash_password, params, PASSWORD) for _ in range(count)))
    now = datetime.now(UTC)
    conn = await asyncpg.connect(dsn, server_settings={"search_path": "auth"})
    users = []
    try:
        async with conn.transaction():
            practice = await auth_store.create_practice(conn, name="Bench Practice", address="1 Bench St",
                                                        phone="+15555550100", identifiers={}, now=now)
            for i, password_hash in enumerate(hashes):
                email = f"{prefix}{i}@example.test"
                user = await auth_store.create_user(
                    conn, email=email, practice_id=practice["id"], invited_by_practice=None, first_name="Bench",
                    last_name=str(i), roles=("member",), two_step_required=False, time_zone="America/New_York", now=now,
                )
                await auth_store.update_user(conn, user["id"], {"status": "verified", "registered_at": now}, now)
                await auth_store.set_password(conn, user["id"], password_hash, now)
                users.append({"id": user["id"], "email": email, "practice_id": practice["id"]})
    finally:
        await conn.close()
    return users


async def sign_in(client: aiohttp.ClientSession, gateway: str, email: str) -> dict:
    """A real login through the gateway: returns the cookie and the CSRF token."""
    async with client.post(f"{gateway}/api/v1/session", json={"email": email, "password": PASSWORD},
                           headers={"Origin": gateway}) as answer:
        answer.raise_for_status()
        body = await answer.json()
        return {"cookie": answer.cookies["msp_session"].value, "csrf_token": body["csrf_token"]}


def _children(pid: int) -> list[int]:
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                found += [int(c) for c in fh.read().split()]
    except OSError:
        pass
    return found


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo += _children(current)
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes, all their threads (from /proc/<pid>/stat)."""
    return _ticks([f"/proc/{pid}/stat" for pid in pids])


def main_thread_cpu_seconds(pid: int) -> float:
    """CPU time of the process's main thread only: a service's event loop."""
    return _ticks([f"/proc/{pid}/task/{pid}/stat"])


def _ticks(stat_files: list[str]) -> float:
    total = 0
    for path in stat_files:
        try:
            with open(path) as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total / os.sysconf("SC_CLK_TCK")


async def backend_pids(dsn: str) -> list[int]:
    """PostgreSQL backends connected to this (scratch) database."""
    conn = await asyncpg.connect(dsn)
    try:
        name = dsn.rsplit("/", 1)[1]
        me = await conn.fetchval("SELECT pg_backend_pid()")
        return [r["pid"] for r in await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", name) if r["pid"] != me]
    finally:
        await conn.close()
