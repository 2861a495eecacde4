"""Trace context crosses HTTP and AMQP hops intact, spans carry routes and ids but never
tokens or personal data, and the exporter is the one the settings name."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry import baggage, trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from msp_shared import telemetry
from msp_shared.config import ServiceSettings
from msp_shared.events import Envelope
from msp_shared.web import service_app

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
SECRET_BITS = ("alice@example.com", "+15551234567", "tok_s3cr3t", "Root canal results")


@pytest.fixture(autouse=True)
def no_export_afterwards() -> Iterator[None]:
    """Later tests in this process must not keep feeding an in-memory exporter."""
    yield
    telemetry.setup_tracing(ServiceSettings(tracing_exporter="none"))


@pytest.fixture
def spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    telemetry.setup_tracing(ServiceSettings(service_name="test"), exporter=exporter)
    return exporter


def everything_recorded(span) -> str:  # noqa: ANN001
    """All a span would export, as text, to look for leaks."""
    return span.to_json()


def only(exporter: InMemorySpanExporter, kind: SpanKind):  # noqa: ANN201
    found = [s for s in exporter.get_finished_spans() if s.kind == kind]
    assert len(found) == 1, [(s.name, s.kind) for s in exporter.get_finished_spans()]
    return found[0]


def ids(traceparent: str) -> tuple[int, int, bool]:
    """(trace id, parent span id, sampled) of a W3C traceparent."""
    version, trace_id, span_id, flags = traceparent.split("-")
    assert version == "00"
    return int(trace_id, 16), int(span_id, 16), bool(int(flags, 16) & 1)


def envelope(**trace_carrier: str) -> Envelope:
    return Envelope(type="mail.email.requested", data={"to": SECRET_BITS[0]}, trace=trace_carrier)


# ---- carriers -----------------------------------------------------------------------------


def test_carrier_is_empty_without_an_active_span(spans: InMemorySpanExporter) -> None:
    assert telemetry.current_carrier() == {}
    assert telemetry.inject_http({}) == {}
    assert telemetry.inject_amqp({}) == {}


def test_http_inject_extract_round_trip(spans: InMemorySpanExporter) -> None:
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("caller") as span:
        headers = telemetry.inject_http({"Accept": "application/json"})
    sent = span.get_span_context()
    assert ids(headers["traceparent"]) == (sent.trace_id, sent.span_id, True)
    received = trace.get_current_span(telemetry.extract_http(headers)).get_span_context()
    assert (received.trace_id, received.span_id, received.is_remote) == (sent.trace_id, sent.span_id, True)


def test_amqp_round_trip_accepts_bytes_header_values(spans: InMemorySpanExporter) -> None:
    with trace.get_tracer("test").start_as_current_span("publisher") as span:
        headers = telemetry.inject_amqp({"x-retries": 2})
    assert headers["x-retries"] == 2  # other headers untouched
    as_delivered = {k: v.encode() if isinstance(v, str) else v for k, v in headers.items()}
    received = trace.get_current_span(telemetry.extract_amqp(as_delivered)).get_span_context()
    assert received.trace_id == span.get_span_context().trace_id
    assert received.span_id == span.get_span_context().span_id


@pytest.mark.parametrize(
    "headers",
    [None, {}, {"traceparent": "garbage"}, {"traceparent": f"00-{'0' * 32}-{PARENT_ID}-01"}, {"traceparent": b"\xff\xfe"}],
)
def test_missing_or_forged_amqp_context_gives_no_parent(spans: InMemorySpanExporter, headers) -> None:  # noqa: ANN001
    assert not trace.get_current_span(telemetry.extract_amqp(headers)).get_span_context().is_valid


def test_current_carrier_is_the_active_span(spans: InMemorySpanExporter) -> None:
    with trace.get_tracer("test").start_as_current_span("request") as span:
        carrier = telemetry.current_carrier()
    ctx = span.get_span_context()
    assert set(carrier) == {"traceparent"}
    assert ids(carrier["traceparent"]) == (ctx.trace_id, ctx.span_id, True)
    json.dumps(carrier)  # stored as-is in the outbox row's envelope


def test_baggage_is_not_propagated(spans: InMemorySpanExporter) -> None:
    """A client's baggage must not ride along into our services and events."""
    from opentelemetry import context

    token = context.attach(baggage.set_baggage("email", SECRET_BITS[0]))
    try:
        with trace.get_tracer("test").start_as_current_span("request"):
            headers = telemetry.inject_http({})
            carrier = telemetry.current_carrier()
    finally:
        context.detach(token)
    assert set(headers) == set(carrier) == {"traceparent"}


# ---- producer and consumer spans ------------------------------------------------------------


def test_publish_and_consume_continue_the_trace_stored_in_the_envelope(spans: InMemorySpanExporter) -> None:
    with trace.get_tracer("test").start_as_current_span("request") as request:
        stored = telemetry.current_carrier()
    env = envelope(**stored)

    with telemetry.producer_span(env, exchange="msp.events"):  # the relay: no request around it
        headers = telemetry.inject_amqp({})
    with telemetry.consumer_span(env, headers, group="mail") as consumer:
        assert trace.get_current_span() is consumer  # the handler runs inside it

    publish, process = only(spans, SpanKind.PRODUCER), only(spans, SpanKind.CONSUMER)
    trace_id = request.get_span_context().trace_id
    assert {publish.context.trace_id, process.context.trace_id} == {trace_id}
    assert publish.parent.span_id == request.get_span_context().span_id
    assert process.parent.span_id == publish.context.span_id
    assert publish.name == "publish mail.email.requested"
    assert process.attributes["messaging.message.id"] == str(env.id)
    assert process.attributes["messaging.consumer.group.name"] == "mail"
    assert publish.attributes["messaging.destination.name"] == "msp.events"
    for span in (publish, process):
        assert SECRET_BITS[0] not in everything_recorded(span)


def test_consumer_falls_back_to_the_envelope_trace(spans: InMemorySpanExporter) -> None:
    env = envelope(traceparent=TRACEPARENT)
    with telemetry.consumer_span(env, {"x-other": "1"}):
        pass
    process = only(spans, SpanKind.CONSUMER)
    assert f"{process.context.trace_id:032x}" == TRACE_ID
    assert f"{process.parent.span_id:016x}" == PARENT_ID


def test_consumer_without_any_context_starts_a_new_trace(spans: InMemorySpanExporter) -> None:
    with telemetry.consumer_span(envelope(), None):
        pass
    process = only(spans, SpanKind.CONSUMER)
    assert process.parent is None and process.context.is_valid


def test_a_failing_handler_marks_the_span_without_its_message(spans: InMemorySpanExporter) -> None:
    with pytest.raises(ValueError), telemetry.consumer_span(envelope(), None):
        raise ValueError(f"duplicate key: {SECRET_BITS[0]}")
    process = only(spans, SpanKind.CONSUMER)
    assert process.status.status_code == StatusCode.ERROR
    assert process.attributes["error.type"] == "ValueError"
    assert SECRET_BITS[0] not in everything_recorded(process)
    assert not process.events  # no exception event with the message and stack


# ---- the server middleware ------------------------------------------------------------------


async def thing(request: web.Request) -> web.Response:
    if request.query.get("fail"):
        raise RuntimeError(f"boom for {SECRET_BITS[0]}")
    outgoing = telemetry.inject_http({})
    return web.json_response({"carrier": telemetry.current_carrier(), "outgoing": outgoing})


@pytest.fixture
async def client() -> AsyncIterator[tuple[aiohttp.ClientSession, TestServer]]:
    app = web.Application(middlewares=[telemetry.tracing_middleware])
    app.router.add_get("/things/{thing_id}", thing)
    server = TestServer(app)
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        yield session, server
    await server.close()


async def test_middleware_continues_an_incoming_trace(spans: InMemorySpanExporter, client) -> None:  # noqa: ANN001
    session, server = client
    url = server.make_url(f"/things/{SECRET_BITS[2]}?token={SECRET_BITS[2]}&email={SECRET_BITS[0]}")
    async with session.get(url, headers={"traceparent": TRACEPARENT, "tracestate": "vendor=1"}) as resp:
        assert resp.status == 200
        body = await resp.json()

    span = only(spans, SpanKind.SERVER)
    assert f"{span.context.trace_id:032x}" == TRACE_ID
    assert f"{span.parent.span_id:016x}" == PARENT_ID and span.parent.is_remote
    assert span.name == "GET /things/{thing_id}"
    assert span.attributes["http.route"] == "/things/{thing_id}"
    assert span.attributes["http.request.method"] == "GET"
    assert span.attributes["http.response.status_code"] == 200
    assert span.status.status_code == StatusCode.UNSET
    recorded = everything_recorded(span)
    assert SECRET_BITS[2] not in recorded and SECRET_BITS[0] not in recorded  # no path values, no query
    # Inside the handler the server span is current: what the service stores and sends on.
    own = (int(TRACE_ID, 16), span.context.span_id, True)
    assert ids(body["carrier"]["traceparent"]) == own
    assert ids(body["outgoing"]["traceparent"]) == own and body["outgoing"]["tracestate"] == "vendor=1"


async def test_middleware_starts_a_trace_when_none_or_a_forged_one_comes_in(spans: InMemorySpanExporter, client) -> None:  # noqa: ANN001
    session, server = client
    for headers in ({}, {"traceparent": "00-not-a-trace-01"}, {"traceparent": f"00-{'0' * 32}-{PARENT_ID}-01"}):
        async with session.get(server.make_url("/things/1"), headers=headers) as resp:
            assert resp.status == 200
    server_spans = [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert len(server_spans) == 3
    assert all(s.parent is None and s.context.is_valid for s in server_spans)
    assert len({s.context.trace_id for s in server_spans}) == 3


async def test_without_an_exporter_the_middleware_makes_no_span_but_passes_the_callers_trace_on(client) -> None:  # noqa: ANN001
    telemetry.setup_tracing(ServiceSettings(tracing_exporter="none"))
    session, server = client
    async with session.get(server.make_url("/things/1"), headers={"traceparent": TRACEPARENT, "tracestate": "vendor=1"}) as resp:
        assert resp.status == 200
        body = await resp.json()
    caller = (int(TRACE_ID, 16), int(PARENT_ID, 16), True)
    assert ids(body["carrier"]["traceparent"]) == caller  # what the outbox stores
    assert ids(body["outgoing"]["traceparent"]) == caller and body["outgoing"]["tracestate"] == "vendor=1"
    for headers in ({}, {"traceparent": "00-not-a-trace-01"}, {"traceparent": f"00-{'0' * 32}-{PARENT_ID}-01"}):
        async with session.get(server.make_url("/things/1"), headers=headers) as resp:
            assert await resp.json() == {"carrier": {}, "outgoing": {}}  # nothing made up, nothing forged passed on

    # The choice is read per request: once an exporter is set up, requests get their spans again.
    exporter = InMemorySpanExporter()
    telemetry.setup_tracing(ServiceSettings(), exporter=exporter)
    async with session.get(server.make_url("/things/1"), headers={"traceparent": TRACEPARENT}) as resp:
        body = await resp.json()
    span = only(exporter, SpanKind.SERVER)
    assert ids(body["outgoing"]["traceparent"]) == (int(TRACE_ID, 16), span.context.span_id, True)


async def test_middleware_records_an_unhandled_error_by_type_only(spans: InMemorySpanExporter, client) -> None:  # noqa: ANN001
    session, server = client
    async with session.get(server.make_url("/things/1?fail=1")) as resp:
        assert resp.status == 500
    span = only(spans, SpanKind.SERVER)
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes["error.type"] == "RuntimeError"
    assert SECRET_BITS[0] not in everything_recorded(span) and not span.events


async def test_unmatched_paths_are_named_by_method_only(spans: InMemorySpanExporter, client) -> None:  # noqa: ANN001
    session, server = client
    async with session.get(server.make_url(f"/reset/{SECRET_BITS[2]}")) as resp:
        assert resp.status == 404
    span = only(spans, SpanKind.SERVER)
    assert span.name == "GET"
    assert span.attributes["http.response.status_code"] == 404
    assert span.status.status_code == StatusCode.UNSET  # the client's mistake, not a server fault
    assert SECRET_BITS[2] not in everything_recorded(span)


async def test_service_app_traces_every_request_even_refused_ones(spans: InMemorySpanExporter) -> None:
    app = service_app(ServiceSettings(service_name="svc"), schema=None)
    assert app.middlewares[0] is telemetry.tracing_middleware
    app.router.add_get("/private", thing)
    server = TestServer(app)
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(server.make_url("/healthz"), headers={"traceparent": TRACEPARENT}) as resp:
                assert resp.status == 200
            # no gateway identity header: refused by the identity middleware, still traced
            async with session.get(server.make_url("/private"), headers={"traceparent": TRACEPARENT}) as resp:
                assert resp.status == 401
    finally:
        await server.close()
    ok, refused = sorted(spans.get_finished_spans(), key=lambda s: s.attributes["http.response.status_code"])
    assert (ok.name, refused.name) == ("GET /healthz", "GET /private")
    assert {f"{ok.context.trace_id:032x}", f"{refused.context.trace_id:032x}"} == {TRACE_ID}
    assert refused.attributes["http.response.status_code"] == 401
    assert refused.kind == SpanKind.SERVER and refused.status.status_code == StatusCode.UNSET


def test_client_span_is_the_parent_of_what_it_injects(spans: InMemorySpanExporter) -> None:
    with telemetry.client_span("GET", "auth /me") as span:
        headers = telemetry.inject_http({})
    assert ids(headers["traceparent"])[1] == span.get_span_context().span_id
    assert only(spans, SpanKind.CLIENT).name == "GET auth /me"


# ---- exporter selection and set-up ----------------------------------------------------------


def test_exporter_follows_the_settings_and_repeated_setup_keeps_the_running_one() -> None:
    provider = telemetry.setup_tracing(ServiceSettings(tracing_exporter="none"))
    assert provider is trace.get_tracer_provider()
    assert telemetry.active_exporter() is None and telemetry.active_span_processor() is None
    with trace.get_tracer("test").start_as_current_span("unexported"):
        assert telemetry.current_carrier()  # context still flows to the next service

    assert telemetry.setup_tracing(ServiceSettings(tracing_exporter="console")) is provider
    assert isinstance(telemetry.active_exporter(), ConsoleSpanExporter)
    assert isinstance(telemetry.active_span_processor(), SimpleSpanProcessor)

    telemetry.setup_tracing(ServiceSettings(tracing_exporter="otlp", otlp_endpoint="http://127.0.0.1:9/v1/traces"))
    processor = telemetry.active_span_processor()
    assert isinstance(processor, BatchSpanProcessor)
    telemetry.setup_tracing(ServiceSettings(tracing_exporter="otlp", otlp_endpoint="http://127.0.0.1:9/v1/traces"))
    assert telemetry.active_span_processor() is processor  # idempotent: no second exporter thread

    exporter = InMemorySpanExporter()
    telemetry.setup_tracing(ServiceSettings(), exporter=exporter)
    assert telemetry.active_exporter() is exporter
    assert isinstance(telemetry.active_span_processor(), SimpleSpanProcessor)


class _Collector(BaseHTTPRequestHandler):
    received: list[tuple[str, str, bytes]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, self.headers["Content-Type"], body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[HTTPServer]:
    server = HTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def test_otlp_exporter_sends_spans_to_the_configured_endpoint(collector: HTTPServer) -> None:
    endpoint = f"http://127.0.0.1:{collector.server_port}/v1/traces"
    telemetry.setup_tracing(ServiceSettings(tracing_exporter="otlp", otlp_endpoint=endpoint))
    with telemetry.consumer_span(envelope(traceparent=TRACEPARENT), None):
        pass
    assert telemetry.active_span_processor().force_flush(5000)
    telemetry.setup_tracing(ServiceSettings(), exporter=InMemorySpanExporter())  # detach the OTLP exporter

    (path, content_type, body), *_ = _Collector.received
    assert (path, content_type) == ("/v1/traces", "application/x-protobuf")
    request = ExportTraceServiceRequest.FromString(body)
    exported = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert [s.name for s in exported] == ["process mail.email.requested"]
    assert exported[0].trace_id.hex() == TRACE_ID
    assert SECRET_BITS[0].encode() not in body


def test_first_setup_sets_the_service_name_and_later_calls_do_not_fight_the_global() -> None:
    """A fresh process, as in production: the resource names the service, and calling again
    (a second app in the same process) neither warns nor replaces the provider."""
    code = """
import logging, sys
from opentelemetry import trace
from msp_shared import telemetry
from msp_shared.config import ServiceSettings
logging.basicConfig(stream=sys.stdout, level=logging.WARNING)
first = telemetry.setup_tracing(ServiceSettings(service_name="auth"))
again = telemetry.setup_tracing(ServiceSettings(service_name="auth", tracing_exporter="console"))
assert first is again is trace.get_tracer_provider()
print("service.name=" + first.resource.attributes["service.name"])
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "service.name=auth", result.stdout + result.stderr
