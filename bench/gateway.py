"""bench/gateway: an authenticated GET through the gateway to a trivial service endpoint,
beside the same endpoint hit directly, a bare aiohttp-to-aiohttp proxy hop in front of that
service, and a bare aiohttp handler; same run, same load generator (wrk), one after another.

Target (issue 2): gateway req/s >= 0.9 of the bare proxy hop's — session lookup and identity
signing must be nearly free.

    uv run python bench/gateway.py [--seconds 8] [--connections 32]"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, free_port, python_process, scratch_database, wait_for_port, wrk  # noqa: E402

from msp_shared import identity  # noqa: E402
from msp_shared.config import DEV_IDENTITY_SECRET  # noqa: E402

HERE = Path(__file__).parent


async def login(gateway: str) -> str:
    async with aiohttp.ClientSession() as client:
        async with client.post(
            f"{gateway}/api/v1/session", json={"email": "bench@example.test", "password": "x"}, headers={"Origin": gateway}
        ) as answer:
            answer.raise_for_status()
            return answer.cookies["msp_session"].value


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    ports = {name: free_port() for name in ("service", "bare", "proxy", "gateway")}
    procs = []
    async with scratch_database() as dsn:
        try:
            procs.append(python_process([str(HERE / "_stand_ins.py"), "service", str(ports["service"])]))
            procs.append(python_process([str(HERE / "_stand_ins.py"), "bare", str(ports["bare"])]))
            procs.append(
                python_process([str(HERE / "_stand_ins.py"), "proxy", str(ports["proxy"]), f"http://127.0.0.1:{ports['service']}"])
            )
            procs.append(
                python_process(
                    ["-m", "msp_gateway"],
                    env={
                        "MSP_GATEWAY_PORT": str(ports["gateway"]),
                        "MSP_AUTH_URL": f"http://127.0.0.1:{ports['service']}",
                        "MSP_DATABASE_URL": dsn,
                        "MSP_BUS_EXCHANGE": f"msp.bench.{uuid.uuid4().hex[:8]}",
                        "MSP_BUS_QUEUE_TYPE": "classic",
                        "MSP_PUBLIC_URL": f"http://127.0.0.1:{ports['gateway']}",
                        "MSP_LOG_LEVEL": "WARNING",
                    },
                )
            )
            for port in ports.values():
                wait_for_port(port)
            await asyncio.sleep(1)
            gateway = f"http://127.0.0.1:{ports['gateway']}"
            cookie = await login(gateway)
            direct_header = identity.sign(
                identity.Identity(user_id="00000000-0000-4000-8000-000000000001", roles=("member",)),
                secret=DEV_IDENTITY_SECRET.encode(), method="GET", path="/me", now=time.time(), ttl=3600,
            )
            run = dict(seconds=args.seconds, connections=args.connections)
            wrk(f"{gateway}/api/v1/me", seconds=2, connections=8, headers={"Cookie": f"msp_session={cookie}"})  # warm-up
            results = {
                "bare_handler": wrk(f"http://127.0.0.1:{ports['bare']}/me", **run),
                "service_direct": wrk(f"http://127.0.0.1:{ports['service']}/me", headers={identity.HEADER: direct_header}, **run),
                "bare_proxy_hop": wrk(f"http://127.0.0.1:{ports['proxy']}/me", headers={identity.HEADER: direct_header}, **run),
                "gateway_authenticated": wrk(f"{gateway}/api/v1/me", headers={"Cookie": f"msp_session={cookie}"}, **run),
            }
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=20)
    gw, hop = results["gateway_authenticated"]["req_per_s"], results["bare_proxy_hop"]["req_per_s"]
    emit(
        {
            "bench": "gateway",
            "load": {"tool": "wrk", "threads": 1, **run},
            "results": results,
            "ratios": {
                "gateway_vs_bare_proxy_hop": round(gw / hop, 3),
                "gateway_vs_service_direct": round(gw / results["service_direct"]["req_per_s"], 3),
                "service_direct_vs_bare_handler": round(
                    results["service_direct"]["req_per_s"] / results["bare_handler"]["req_per_s"], 3
                ),
            },
            "target": {"gateway_vs_bare_proxy_hop_min": 0.9},
        }
    )


if __name__ == "__main__":
    asyncio.run(main())
