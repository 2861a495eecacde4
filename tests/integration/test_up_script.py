"""The README's first command, for real: `bash scripts/up.sh` brings the whole stack up (its own
ports, a database it creates, its own exchange), every process answers /readyz and /healthz,
the printed Support login works through the gateway, and SIGTERM stops every process it
started. And when a process dies during start, up.sh fails loudly and leaves nothing running."""
from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import pytest

REPO = Path(__file__).resolve().parents[2]
PG_ADMIN_DSN = os.environ.get("MSP_TEST_PG_ADMIN_DSN", "postgresql://msp:msp@127.0.0.1:5432/postgres")
SERVICES = {"auth": "auth-service", "verify": "verify-service", "mail": "mail-service",
            "billing": "billing-service", "gateway": "gateway"}
HELPERS = {"devsmtp": "mail-service/src/msp_mail/devsmtp.py",
           "stripe-local": "billing-service/src/msp_billing/stripe_local.py"}

_missing = [f"{folder}/src/msp_{svc}/__main__.py" for svc, folder in SERVICES.items()
            if not (REPO / folder / "src" / f"msp_{svc}" / "__main__.py").exists()]
_missing += [path for path in HELPERS.values() if not (REPO / path).exists()]
pytestmark = [
    pytest.mark.skipif(bool(_missing), reason=f"not every process exists yet: {_missing}"),
    pytest.mark.timeout(300),
]


def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


@dataclass
class Stack:
    env: dict[str, str]
    ports: dict[str, int]
    run_dir: Path
    log_dir: Path

    def pids(self) -> dict[str, int]:
        path = self.run_dir / "up.pids"
        if not path.exists():
            return {}
        return {name: int(pid) for name, pid in (line.split() for line in path.read_text().splitlines() if line.strip())}


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
async def stack(tmp_path: Path, amqp_url: str, exchange_name: str) -> AsyncIterator[Stack]:
    """Settings for one up.sh run: free ports, a database name that does not exist yet (up.sh
    creates it), this run's vhost and a fresh exchange, everything on disk under tmp_path."""
    names = ["gateway", "auth", "verify", "mail", "billing", "smtp", "stripe"]
    ports = dict(zip(names, free_ports(len(names))))
    db_name = f"msp_test_up_{uuid.uuid4().hex[:10]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSP_")}
    env.update({
        "MSP_GATEWAY_PORT": str(ports["gateway"]),
        "MSP_AUTH_PORT": str(ports["auth"]),
        "MSP_VERIFY_PORT": str(ports["verify"]),
        "MSP_MAIL_PORT": str(ports["mail"]),
        "MSP_BILLING_PORT": str(ports["billing"]),
        "MSP_DEV_SMTP_PORT": str(ports["smtp"]),
        "MSP_STRIPE_API_BASE": f"http://127.0.0.1:{ports['stripe']}",
        "MSP_DATABASE_URL": f"{PG_ADMIN_DSN.rsplit('/', 1)[0]}/{db_name}",
        "MSP_AMQP_URL": amqp_url,
        "MSP_BUS_EXCHANGE": exchange_name,
        "MSP_DEV_OUTBOX": str(tmp_path / "outbox"),
        "MSP_UP_LOG_DIR": str(tmp_path / "log"),
        "MSP_UP_RUN_DIR": str(tmp_path / "run"),
        "MSP_UP_TIMEOUT": "120",
        "MSP_HASH_WORKERS": "1",
    })
    stack = Stack(env, ports, tmp_path / "run", tmp_path / "log")
    try:
        yield stack
    finally:
        for pid in stack.pids().values():  # only if the test failed half-way
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        await _admin(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


async def start_up(stack: Stack) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        "bash", "scripts/up.sh", cwd=REPO, env=stack.env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
    )


async def read_until(proc: asyncio.subprocess.Process, pattern: str, timeout: float) -> tuple[re.Match | None, str]:
    """Read up.sh's output until a line matches (or it ends, or time runs out)."""
    seen: list[str] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            raw = await asyncio.wait_for(proc.stdout.readline(), deadline - loop.time())
        except TimeoutError:
            break
        if not raw:
            break
        line = raw.decode(errors="replace")
        seen.append(line)
        if match := re.search(pattern, line):
            return match, "".join(seen)
    return None, "".join(seen)


@contextlib.contextmanager
def killed_on_failure(proc: asyncio.subprocess.Process) -> Iterator[None]:
    try:
        yield
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


async def test_up_starts_everything_and_sigterm_stops_it(stack: Stack) -> None:
    proc = await start_up(stack)
    with killed_on_failure(proc):
        match, output = await read_until(proc, r"SecurePractice is up: (http://\S+)", timeout=240)
        assert match, f"up.sh never printed the URL:\n{output}"
        url = match.group(1)
        assert url == f"http://127.0.0.1:{stack.ports['gateway']}"
        login, rest = await read_until(proc, r"Support login:\s+(\S+) / (\S+)", timeout=10)
        assert login, f"no Support login printed:\n{output}{rest}"
        email, password = login.group(1), login.group(2)

        pids = stack.pids()
        assert set(pids) == {"devsmtp", "stripe-local", *SERVICES}
        assert all(alive(pid) for pid in pids.values())

        async with aiohttp.ClientSession() as http:
            for name in SERVICES:
                base = f"http://127.0.0.1:{stack.ports[name]}"
                async with http.get(f"{base}/readyz") as resp:
                    assert resp.status == 200, (name, await resp.text())
                    assert (await resp.json())["status"] == "ready"
                async with http.get(f"{base}/healthz") as resp:
                    assert resp.status == 200, name
            # The printed login is real: it signs in through the gateway, against the database
            # up.sh created and the seed auth-service applied.
            async with http.post(f"{url}/api/v1/session", json={"email": email, "password": password},
                                 headers={"Origin": url}) as resp:
                assert resp.status == 200, await resp.text()
                body = await resp.json()
                assert "support" in body["user"]["roles"]
            async with http.post(f"{url}/api/v1/session", json={"email": email, "password": password + "x"},
                                 headers={"Origin": url}) as resp:
                assert resp.status == 401

        # Mail lands in this run's outbox folder, nowhere else.
        assert (Path(stack.env["MSP_DEV_OUTBOX"]) / "mail").is_dir()

        proc.send_signal(signal.SIGTERM)
        rest = (await asyncio.wait_for(proc.stdout.read(), timeout=60)).decode(errors="replace")
        assert await asyncio.wait_for(proc.wait(), timeout=10) == 0, rest
    still_running = {name: pid for name, pid in pids.items() if alive(pid)}
    assert not still_running, f"left running after SIGTERM: {still_running}\n{rest}"
    assert not (stack.run_dir / "up.pids").exists()
    for name in SERVICES:
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", stack.ports[name]), timeout=1).close()


async def test_a_process_dying_at_start_fails_loudly(stack: Stack) -> None:
    """The gateway cannot bind its port (something else listens there): up.sh exits non-zero,
    names the gateway, shows the end of its log, and stops every process it had started."""
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", stack.ports["gateway"]))
    blocker.listen()
    try:
        proc = await start_up(stack)
        with killed_on_failure(proc):
            output = (await asyncio.wait_for(proc.stdout.read(), timeout=240)).decode(errors="replace")
            status = await asyncio.wait_for(proc.wait(), timeout=30)
    finally:
        blocker.close()
    assert status != 0, output
    assert "gateway EXITED" in output
    assert "gateway.log" in output and "address already in use" in output  # the tail of its log
    assert "SecurePractice is up" not in output
    started = re.search(r"starting gateway", output)
    assert started, output
    # Nothing of the half-started stack is left behind.
    assert not (stack.run_dir / "up.pids").exists()
    async with aiohttp.ClientSession() as http:
        for name in ("auth", "verify", "mail", "billing"):
            with pytest.raises(aiohttp.ClientConnectionError):
                async with http.get(f"http://127.0.0.1:{stack.ports[name]}/healthz"):
                    pass
