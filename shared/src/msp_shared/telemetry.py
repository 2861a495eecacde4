"""OpenTelemetry wiring: one trace from the browser request through the gateway, the service,
the outbox, the broker and the consumer.

How trace context travels (W3C trace-context only: `traceparent`/`tracestate`; baggage is
deliberately not propagated, so a client cannot smuggle data through our services):

    browser ─HTTP─▶ gateway  tracing_middleware: SERVER span, continues an incoming traceparent
            ─HTTP─▶ service  gateway calls inject_http(headers) on the forwarded request;
                             the service's tracing_middleware continues it (SERVER span)
    outbox.add               stores current_carrier() in Envelope.trace, in the transaction
    relay → bus.publish      producer_span(envelope) (PRODUCER, parented on Envelope.trace),
                             inject_amqp(message headers) inside it
    bus consumer             consumer_span(envelope, headers) (CONSUMER, parented on the AMQP
                             headers, else on Envelope.trace)

Spans carry ids and routes only: never query strings, raw paths (they can hold tokens),
bodies, emails, phone numbers, subjects or file names; exceptions are recorded by type,
never by message (a database error can quote the row).

One provider per process. `setup_tracing` sets the global TracerProvider once (OpenTelemetry
refuses to replace it), with one swappable span processor on it; every later call only swaps
what that processor forwards to. So a process (or a test session building several apps) may
call it any number of times: the last call's exporter wins, a repeated call with the same
choice keeps the running exporter, and the resource (service.name) is the first caller's.
In production one process is one service, so that is the right name; tests tell services
apart by span names and kinds."""
from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from aiohttp import web
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from .config import ServiceSettings
    from .events import Envelope

_PROPAGATOR = TraceContextTextMapPropagator()
# A ProxyTracer: it starts delegating to the real provider as soon as one is set globally,
# and until then (a test that never called setup_tracing) it still passes incoming context on.
_tracer = trace.get_tracer("msp_shared.telemetry")


# ---- the process's provider ------------------------------------------------------------


class _SwappableProcessor(SpanProcessor):
    """The one processor on the global provider; forwards to whichever processor the last
    setup_tracing call chose (or to nothing: event and client spans are still created, so
    trace context still flows, but nothing is exported; the HTTP server middleware then only
    passes an incoming context on, see tracing_middleware)."""

    def __init__(self) -> None:
        self.delegate: SpanProcessor | None = None
        self.exporter: SpanExporter | None = None
        self.key: tuple[Any, ...] | None = None

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        delegate = self.delegate
        if delegate is not None:
            delegate.on_start(span, parent_context=parent_context)

    def _on_ending(self, span: Span) -> None:  # the SDK's hook just before a span ends
        delegate = self.delegate
        if delegate is not None:
            delegate._on_ending(span)

    def on_end(self, span: ReadableSpan) -> None:
        delegate = self.delegate
        if delegate is not None:
            delegate.on_end(span)

    def shutdown(self) -> None:
        delegate, self.delegate, self.exporter, self.key = self.delegate, None, None, None
        if delegate is not None:
            delegate.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        delegate = self.delegate
        return delegate.force_flush(timeout_millis) if delegate is not None else True


_lock = threading.Lock()
_switch = _SwappableProcessor()
_provider: TracerProvider | None = None
_foreign_provider = False  # joined a provider someone else set up: it may export on its own


def _spans_wanted() -> bool:
    """Whether a request or an event needs a span of its own: only when something would keep
    it. With exporter "none" on our own provider, or with no provider installed at all (the
    API's proxy makes spans that record nothing), a span is pure cost: nothing reads it and
    logs carry no trace ids, so callers only pass the incoming trace context on."""
    if _provider is None:  # setup_tracing() not called: kept only by a provider someone installed
        return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    return _foreign_provider or _switch.delegate is not None


spans_wanted = _spans_wanted  # public: the gateway's routes and the bus ask it too


def _choice(settings: ServiceSettings, exporter: SpanExporter | None) -> tuple[Any, ...]:
    """What a setup_tracing call asks for; the same choice twice keeps the running exporter."""
    if exporter is not None:
        return ("given", exporter)
    if settings.tracing_exporter == "otlp":
        return ("otlp", settings.otlp_endpoint)
    return (settings.tracing_exporter,)


def _build(settings: ServiceSettings, exporter: SpanExporter | None) -> tuple[SpanExporter | None, SpanProcessor | None]:
    if exporter is not None:  # tests: fed synchronously, so spans are there when a test looks
        return exporter, SimpleSpanProcessor(exporter)
    if settings.tracing_exporter == "console":
        console = ConsoleSpanExporter(service_name=settings.service_name)
        return console, SimpleSpanProcessor(console)
    if settings.tracing_exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        otlp = OTLPSpanExporter(endpoint=settings.otlp_endpoint)
        return otlp, BatchSpanProcessor(otlp)  # network export in batches, off the request path
    return None, None


def setup_tracing(settings: ServiceSettings, *, exporter: SpanExporter | None = None) -> TracerProvider:
    """Install (once) the process's TracerProvider and route its spans to the exporter that
    `settings.tracing_exporter` names ("none", "console", "otlp" to settings.otlp_endpoint),
    or to `exporter` (tests pass an InMemorySpanExporter). Safe to call repeatedly; see the
    module docstring."""
    global _provider, _foreign_provider
    with _lock:
        if _provider is None:
            existing = trace.get_tracer_provider()
            if isinstance(existing, TracerProvider):
                _provider = existing  # someone (e.g. opentelemetry-instrument) set one: join it
                _foreign_provider = True
            else:
                _provider = TracerProvider(resource=Resource.create({SERVICE_NAME: settings.service_name}))
                trace.set_tracer_provider(_provider)
            _provider.add_span_processor(_switch)
        choice = _choice(settings, exporter)
        if choice != _switch.key:
            previous = _switch.delegate
            _switch.exporter, _switch.delegate = _build(settings, exporter)
            _switch.key = choice
            if previous is not None:
                previous.shutdown()  # flushes what it still holds
        return _provider


def active_exporter() -> SpanExporter | None:
    """Where spans currently go (None: created and propagated, but not exported)."""
    return _switch.exporter


def active_span_processor() -> SpanProcessor | None:
    return _switch.delegate


# ---- HTTP ----------------------------------------------------------------------------------


def inject_http(headers: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Add `traceparent` (and `tracestate`) of the current span to outgoing HTTP headers."""
    _PROPAGATOR.inject(headers)
    return headers


def extract_http(headers: Mapping[str, str]) -> Context:
    return _PROPAGATOR.extract(headers)


def _route(request: web.Request) -> str | None:
    """The route template ("/invitations/{token}"), never the concrete path: paths can carry
    tokens."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else None


def _record_error(span: trace.Span, exc: BaseException) -> None:
    span.set_attribute("error.type", type(exc).__qualname__)
    span.set_status(StatusCode.ERROR)


def _set_http_status(span: trace.Span, status: int) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= 500:  # a 4xx is the client's problem, not a failed server span (semconv)
        span.set_status(StatusCode.ERROR)


@web.middleware
async def tracing_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """SERVER span per request, continuing the caller's traceparent. Put it first, so the
    span also covers the error and identity middlewares.

    When nothing exports spans (tracing_exporter "none"), no span is made: an incoming
    traceparent is made current as it is, so the services and events downstream still
    continue the caller's trace, at the cost of one header lookup per request."""
    if not _spans_wanted():
        if "traceparent" not in request.headers:
            return await handler(request)
        token = otel_context.attach(_PROPAGATOR.extract(request.headers))
        try:
            return await handler(request)
        finally:
            otel_context.detach(token)
    route = _route(request)
    name = f"{request.method} {route}" if route else request.method
    with _tracer.start_as_current_span(
        name,
        context=_PROPAGATOR.extract(request.headers),
        kind=SpanKind.SERVER,
        record_exception=False,  # the message could quote user data; the type is enough
        set_status_on_exception=False,
    ) as span:
        if span.is_recording():
            attributes = {"http.request.method": request.method, "url.scheme": request.scheme}
            if route:
                attributes["http.route"] = route
            span.set_attributes(attributes)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            _set_http_status(span, exc.status)
            raise
        except BaseException as exc:
            _record_error(span, exc)
            raise
        _set_http_status(span, response.status)
        return response


@contextmanager
def client_span(method: str, target: str, **attributes: str | int) -> Iterator[trace.Span]:
    """CLIENT span for an outgoing HTTP call; inject_http() inside it so the callee's SERVER
    span is its child. `target` is a route or service name, never a URL with tokens."""
    with _tracer.start_as_current_span(
        f"{method} {target}", kind=SpanKind.CLIENT, record_exception=False, set_status_on_exception=False
    ) as span:
        if span.is_recording():
            span.set_attributes({"http.request.method": method, **attributes})
        try:
            yield span
        except BaseException as exc:
            _record_error(span, exc)
            raise


# ---- events: outbox and AMQP ---------------------------------------------------------------


def current_carrier() -> dict[str, str]:
    """The current trace context as a plain dict (stored in Envelope.trace by the outbox);
    empty when no span is active."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier


class _AmqpGetter(Getter[Mapping[str, Any]]):
    """AMQP header values may arrive as bytes (a long string the codec did not decode)."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            return None
        if isinstance(value, (bytes, bytearray)):
            value = value.decode("ascii", "replace")
        return [str(value)]

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return list(carrier.keys())


_amqp_getter = _AmqpGetter()


def inject_amqp(headers: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Add the current trace context to an AMQP message's headers (call inside producer_span)."""
    _PROPAGATOR.inject(headers)
    return headers


def extract_amqp(headers: Mapping[str, Any] | None) -> Context:
    """The trace context carried by an AMQP message's headers (an empty Context if none)."""
    return _PROPAGATOR.extract(headers or {}, getter=_amqp_getter)


def _has_parent(ctx: Context) -> bool:
    return trace.get_current_span(ctx).get_span_context().is_valid


def _event_attributes(envelope: Envelope, operation: str) -> dict[str, str]:
    return {
        "messaging.system": "rabbitmq",
        "messaging.operation.type": operation,
        "messaging.message.id": str(envelope.id),
        "messaging.rabbitmq.destination.routing_key": envelope.type,
        "msp.event.type": envelope.type,
        "msp.event.version": str(envelope.version),
    }


@contextmanager
def producer_span(envelope: Envelope, *, exchange: str | None = None) -> Iterator[trace.Span]:
    """PRODUCER span for publishing `envelope`, parented on the context stored in
    Envelope.trace when it was written (the relay runs outside any request), else on the
    current context. Call inject_amqp(headers) inside it."""
    parent = extract_http(envelope.trace) if envelope.trace else None
    with _tracer.start_as_current_span(
        f"publish {envelope.type}",
        context=parent,
        kind=SpanKind.PRODUCER,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        if span.is_recording():
            attributes = _event_attributes(envelope, "publish")
            if exchange:
                attributes["messaging.destination.name"] = exchange
            span.set_attributes(attributes)
        try:
            yield span
        except BaseException as exc:
            _record_error(span, exc)
            raise


@contextmanager
def consumer_span(
    envelope: Envelope, headers: Mapping[str, Any] | None = None, *, group: str | None = None
) -> Iterator[trace.Span]:
    """CONSUMER span for handling `envelope`: parented on the AMQP headers' context (the
    publish span), else on Envelope.trace (the request that wrote the event). Current while
    the handler runs, so events it writes to the outbox continue the same trace."""
    parent = extract_amqp(headers)
    if not _has_parent(parent) and envelope.trace:
        parent = extract_http(envelope.trace)
    with _tracer.start_as_current_span(
        f"process {envelope.type}",
        context=parent,
        kind=SpanKind.CONSUMER,
        record_exception=False,  # exception messages can quote user data: record the type only
        set_status_on_exception=False,
    ) as span:
        if span.is_recording():
            attributes = _event_attributes(envelope, "process")
            if group:
                attributes["messaging.consumer.group.name"] = group
            span.set_attributes(attributes)
        try:
            yield span
        except BaseException as exc:
            _record_error(span, exc)
            raise


@contextmanager
def attached(ctx: Context) -> Iterator[None]:
    """Make `ctx` current for a block (e.g. a background task continuing a stored trace)."""
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)


__all__ = [
    "active_exporter", "active_span_processor", "attached", "client_span", "consumer_span", "current_carrier",
    "extract_amqp", "extract_http", "inject_amqp", "inject_http", "producer_span",
    "setup_tracing", "tracing_middleware",
]
