"""Processes the gateway benchmark measures against, each started as
`python bench/_stand_ins.py KIND PORT [UPSTREAM]`:

- service: a trivial service endpoint `GET /me` behind the project's real service stack
  (msp_shared.web.service_app: tracing, error and identity middlewares), plus `POST /session`
  answering auth's login contract so the gateway can open a session;
- bare: a bare aiohttp handler, the floor of what any aiohttp hop costs;
- proxy: a bare aiohttp-to-aiohttp proxy hop (one pooled ClientSession, streamed body), the
  primitive the gateway is bounded by."""
from __future__ import annotations

import sys

import aiohttp
from aiohttp import web

from msp_shared.config import ServiceSettings
from msp_shared.web import service_app


def service(port: int) -> web.Application:
    app = service_app(ServiceSettings(service_name="bench-service", http_port=port, log_format="text"), schema=None)

    async def me(request: web.Request) -> web.Response:
        return web.json_response({"id": "00000000-0000-4000-8000-000000000001", "ok": True})

    async def session(request: web.Request) -> web.Response:
        user = "00000000-0000-4000-8000-000000000001"
        return web.json_response(
            {
                "grant": {"user_id": user, "practice_id": None, "roles": ["member"], "restriction": None},
                "user": {"id": user},
            }
        )

    app.router.add_get("/me", me)
    app.router.add_post("/session", session)
    return app


def bare(port: int) -> web.Application:
    app = web.Application()

    async def me(request: web.Request) -> web.Response:
        return web.json_response({"id": "00000000-0000-4000-8000-000000000001", "ok": True})

    app.router.add_get("/me", me)
    return app


def proxy(port: int, upstream: str) -> web.Application:
    app = web.Application()
    client: dict[str, aiohttp.ClientSession] = {}

    async def ctx(app: web.Application):  # noqa: ANN202
        client["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
        yield
        await client["s"].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        async with client["s"].request(request.method, upstream + request.path, headers=request.headers) as up:
            response = web.StreamResponse(status=up.status, headers={"Content-Type": up.headers.get("Content-Type", "")})
            await response.prepare(request)
            async for chunk in up.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app.cleanup_ctx.append(ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[2])
    app = {"service": lambda: service(port), "bare": lambda: bare(port), "proxy": lambda: proxy(port, sys.argv[3])}[kind]()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)
