"""One trace id spans the whole path of a user action: gateway → service → outbox → broker →
consumer, on real PostgreSQL and RabbitMQ, with the spans caught by an in-memory exporter.

The "service" is a small app built with service_app that plays auth-service's
`POST /password/forgot` (anonymous, so the gateway forwards it without a session): it writes
an event with outbox.add in its transaction; the relay publishes it; another process's
consumer (bus.subscribe) handles it."""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from msp_shared import bus as bus_module
from msp_shared import identity, outbox, telemetry
from msp_shared.clock import ManualClock
from msp_shared.config import ServiceSettings
from msp_shared.events import Envelope, UserLocked
from msp_shared.web import POOL, service_app

EMAIL = "alice.patient@example.com"  # must not show up in any span


@dataclass
class Seen:
    envelope: Envelope
    span_context: trace.SpanContext


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    telemetry.setup_tracing(ServiceSettings(service_name="trace-test"), exporter=exporter)
    yield exporter
    telemetry.setup_tracing(ServiceSettings(tracing_exporter="none"))  # later tests export nothing


def service_under_test(settings: ServiceSettings, clock: ManualClock) -> web.Application:
    async def forgot(request: web.Request) -> web.Response:
        await request.read()  # the body (an email) is the service's business, never the span's
        async with request.app[POOL].acquire() as conn, conn.transaction():
            await outbox.add(conn, UserLocked(user_id=uuid.uuid4()))
        return web.json_response({"status": "sent_if_known"}, status=202)

    app = service_app(settings, schema="tracesvc", clock=clock)
    app.router.add_post("/password/forgot", forgot)
    app.cleanup_ctx.append(bus_module.bus_ctx())
    app.cleanup_ctx.append(outbox.outbox_relay_ctx)
    return app


@pytest.fixture
async def service(base_env: dict, clock: ManualClock) -> AsyncIterator[TestServer]:
    settings = ServiceSettings(**base_env, service_name="tracesvc")
    server = TestServer(service_under_test(settings, clock))
    await server.start_server()
    yield server
    await server.close()


@pytest.fixture
async def consumed(base_env: dict) -> AsyncIterator[asyncio.Future[Seen]]:
    """Another service's consumer of auth.user.locked; resolves with what it saw."""
    seen: asyncio.Future[Seen] = asyncio.get_running_loop().create_future()

    async def handle(envelope: Envelope) -> None:
        if not seen.done():
            seen.set_result(Seen(envelope, trace.get_current_span().get_span_context()))

    consumer = bus_module.Bus.from_settings(ServiceSettings(**base_env, service_name="trace-consumer"))
    await consumer.connect()
    consumer.subscribe("trace-consumer", [UserLocked.TYPE], handle)
    await consumer.start()
    yield seen
    await consumer.close()


async def wait_for_span(exporter: InMemorySpanExporter, kind: SpanKind) -> ReadableSpan:
    """The consumer span ends just after the handler returns: wait for it to be exported."""
    async with asyncio.timeout(10):
        while True:
            found = [s for s in exporter.get_finished_spans() if s.kind == kind]
            if found:
                assert len(found) == 1, [s.name for s in found]
                return found[0]
            await asyncio.sleep(0.01)


def by_kind_and_name(exporter: InMemorySpanExporter, kind: SpanKind, name: str) -> ReadableSpan:
    found = [s for s in exporter.get_finished_spans() if s.kind == kind and s.name == name]
    assert len(found) == 1, [(s.name, s.kind) for s in exporter.get_finished_spans()]
    return found[0]


def assert_no_personal_data(exporter: InMemorySpanExporter) -> None:
    for span in exporter.get_finished_spans():
        assert EMAIL not in span.to_json(), span.name


def assert_chain(exporter: InMemorySpanExporter, root: ReadableSpan, seen: Seen) -> None:
    """service SERVER span → PRODUCER (relay) → CONSUMER, all in root's trace."""
    trace_id = root.context.trace_id
    served = by_kind_and_name(exporter, SpanKind.SERVER, "POST /password/forgot")
    publish = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.PRODUCER]
    assert len(publish) == 1, [s.name for s in publish]
    (publish,) = publish
    process = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CONSUMER]
    assert len(process) == 1
    (process,) = process

    assert {served.context.trace_id, publish.context.trace_id, process.context.trace_id} == {trace_id}
    assert seen.span_context.trace_id == trace_id  # the handler itself ran inside the trace
    assert seen.span_context.span_id == process.context.span_id
    # Parent links: outbox row written inside the request; the relay publishes on its behalf.
    assert publish.parent.span_id == served.context.span_id
    assert process.parent.span_id == publish.context.span_id
    # What the outbox stored is the request's context, not the relay's.
    stored = trace.get_current_span(telemetry.extract_http(seen.envelope.trace)).get_span_context()
    assert (stored.trace_id, stored.span_id) == (trace_id, served.context.span_id)
    assert publish.attributes["messaging.message.id"] == process.attributes["messaging.message.id"] == str(seen.envelope.id)
    assert_no_personal_data(exporter)


async def test_one_trace_from_a_caller_through_service_outbox_broker_and_consumer(
    spans: InMemorySpanExporter, service: TestServer, consumed: asyncio.Future[Seen], base_env: dict, clock: ManualClock
) -> None:
    """The gateway's hop played by a CLIENT span: the service continues the caller's trace."""
    settings = ServiceSettings(**base_env)
    path = "/password/forgot"
    signed = identity.sign(
        identity.Identity(user_id=None, ip="127.0.0.1"),
        secret=settings.identity_secret.get_secret_value().encode(),
        method="POST",
        path=path,
        now=clock.now().timestamp(),
        ttl=settings.identity_ttl_seconds,
    )
    async with aiohttp.ClientSession() as session:
        with telemetry.client_span("POST", "auth /password/forgot"):
            headers = telemetry.inject_http({identity.HEADER: signed})
            async with session.post(service.make_url(path), json={"email": EMAIL}, headers=headers) as resp:
                assert resp.status == 202, await resp.text()
    seen = await asyncio.wait_for(consumed, timeout=15)
    # The publish span ends when the broker's confirm arrives, which may be after the
    # consumer already ran: wait for both to be exported.
    await wait_for_span(spans, SpanKind.CONSUMER)
    await wait_for_span(spans, SpanKind.PRODUCER)

    caller = by_kind_and_name(spans, SpanKind.CLIENT, "POST auth /password/forgot")
    served = by_kind_and_name(spans, SpanKind.SERVER, "POST /password/forgot")
    assert served.parent.span_id == caller.context.span_id and served.parent.is_remote
    assert_chain(spans, caller, seen)


@pytest.fixture
async def gateway(base_env: dict, clock: ManualClock, service: TestServer) -> AsyncIterator[TestServer]:
    from msp_gateway.app import create_app
    from msp_gateway.config import GatewaySettings

    settings = GatewaySettings(**base_env, auth_url=str(service.make_url("/")))
    server = TestServer(create_app(settings, clock=clock))
    await server.start_server()
    yield server
    await server.close()


async def test_one_trace_from_the_browser_through_gateway_service_outbox_broker_and_consumer(
    spans: InMemorySpanExporter, gateway: TestServer, consumed: asyncio.Future[Seen]
) -> None:
    browser_trace, browser_span = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    async with aiohttp.ClientSession() as session:
        async with session.post(
            gateway.make_url("/api/v1/password/forgot"),
            json={"email": EMAIL},
            headers={"Origin": "http://127.0.0.1:8080", "traceparent": f"00-{browser_trace}-{browser_span}-01"},
        ) as resp:
            assert resp.status == 202, await resp.text()
    seen = await asyncio.wait_for(consumed, timeout=15)
    # The publish span ends when the broker's confirm arrives, which may be after the
    # consumer already ran: wait for both to be exported.
    await wait_for_span(spans, SpanKind.CONSUMER)
    await wait_for_span(spans, SpanKind.PRODUCER)

    edge = by_kind_and_name(spans, SpanKind.SERVER, "POST /api/v1/{tail}")
    served = by_kind_and_name(spans, SpanKind.SERVER, "POST /password/forgot")
    assert f"{edge.context.trace_id:032x}" == browser_trace
    assert f"{edge.parent.span_id:016x}" == browser_span  # the browser's request starts the trace
    assert served.parent.span_id == edge.context.span_id and served.parent.is_remote
    assert edge.attributes["http.response.status_code"] == 202
    assert_chain(spans, edge, seen)
