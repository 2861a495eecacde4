"""The event bus: domain events on one RabbitMQ topic exchange, via aio-pika.

One robust connection per process (it reconnects after a broker restart and re-declares
the exchange, queues, bindings and consumers by itself), one confirmed channel for
publishing and one channel for consuming.

Topology per consumer group `g` on exchange `x`:

    x (topic, durable) --type--> x.g           quorum queue shared by the group's replicas
    x.g  --handler raised-->     x.g.retry.<ms> classic queue, TTL <ms>, dead-letters back to x.g
    x.g  --retries used up-->    x.g.dlq        quorum queue nobody consumes: parked, not lost

A failing message is re-published (confirmed) to the retry queue for its attempt, with the
retry count in the `msp-retries` header, and only then acked; the delay doubles per retry
(`retry_delay_ms * 2**retry`). One retry queue per delay, because a queue expires messages
only at its head: mixing delays in one queue would hold short ones behind long ones. After
`max_retries` retries the message is parked in the DLQ. The quorum queue also has its own
delivery limit and dead-letter target, for messages that never reach our code's verdict
(a consumer that dies mid-handler again and again).

Batches. A handler with a `handle_batch` method (the idempotent inbox, inbox.py) gets the
deliveries of a burst together: whatever arrived while the previous burst was being handled
(at most `prefetch`; under load it waits `burst_linger` for more, a lone event never waits). It returns one verdict per event; a failed event takes the retry/DLQ
path above on its own, the others are done. The burst is then settled with ONE ack
(`multiple=True`, "every delivery up to this one"), which is only right because each
subscription consumes on a channel of its own and its bursts are handled one after the
other, in delivery order: every earlier delivery of the channel is already settled. When
that cannot be shown (a message requeued, a channel restored in between), each message is
settled on its own. Other handlers are called once per message, concurrently.

`per_replica=True` gives every replica its own exclusive, auto-delete queue, so every
replica sees every event (the gateway evicting cached sessions). Such a queue has no retry
queue: a failing handler is retried in process, then the message is parked in the group's
DLQ like any other."""
from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aiohttp import web
from opentelemetry import trace
from pydantic import ValidationError

from . import telemetry
from .config import ServiceSettings
from .events import Envelope
from .web import BUS, READY_CHECKS, SETTINGS

log = logging.getLogger(__name__)

Handler = Callable[[Envelope], Awaitable[None]]
# handle_batch(envelopes, around) -> one verdict per envelope: None (done) or the exception
# its effect raised. `around(envelope)` must wrap that event's work (its CONSUMER span).
BatchHandler = Callable[
    [Sequence[Envelope], Callable[[Envelope], contextlib.AbstractContextManager]],
    Awaitable[Sequence[BaseException | None]],
]

RETRIES_HEADER = "msp-retries"  # retries already made of this message (absent on the first delivery)
ERROR_HEADER = "msp-error"  # on parked messages: the exception type that parked it (never its text)
GROUP_HEADER = "msp-group"  # on parked messages: the consumer group that gave up


class BusNotConnected(RuntimeError):
    """The broker connection is down (or was never opened)."""


@dataclass
class _Subscription:
    group: str
    types: tuple[str, ...]
    handler: Handler
    per_replica: bool
    queue: AbstractQueue | None = None
    consumer_tag: str | None = None
    retry_queues: list[str] = field(default_factory=list)
    batch: BatchHandler | None = None  # the handler's handle_batch, when it has one
    # Batched consumption: deliveries waiting for the worker, which handles them in bursts.
    pending: list[AbstractIncomingMessage] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    worker: asyncio.Task | None = None
    # (channel, delivery tag) of the last message settled, to know when a multiple ack is safe.
    settled: tuple[Any, int] | None = None


class Bus:
    # Belt and braces: redeliveries a group's quorum queue allows before it dead-letters a
    # message by itself (a handler that crashes its process, channels lost mid-handler). Our
    # retry path acks, so it never counts here. A constant, not derived from settings: queue
    # arguments cannot change once the queue exists.
    delivery_limit = 20

    def __init__(
        self,
        amqp_url: str,
        exchange: str,
        *,
        service: str,
        prefetch: int = 32,
        max_retries: int = 5,
        retry_delay_ms: int = 1000,
        reconnect_interval: float = 1.0,
        close_timeout: float = 10.0,
        publish_timeout: float = 10.0,
        queue_type: str = "quorum",
        burst_linger: float = 0.001,
    ) -> None:
        if queue_type not in ("quorum", "classic"):
            raise ValueError("queue_type is quorum or classic")
        if max_retries < 0 or retry_delay_ms <= 0 or prefetch <= 0:
            raise ValueError("prefetch and retry_delay_ms must be positive, max_retries not negative")
        self.amqp_url = amqp_url
        self.exchange_name = exchange
        self.service = service
        self.prefetch = prefetch
        self.max_retries = max_retries
        self.retry_delay_ms = retry_delay_ms
        self.reconnect_interval = reconnect_interval
        self.close_timeout = close_timeout
        self.publish_timeout = publish_timeout
        self.queue_type = queue_type
        self.burst_linger = burst_linger
        self._connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._consume_channels: list[AbstractChannel] = []
        self._subscriptions: list[_Subscription] = []
        self._started = False
        self._closing = False
        self.bursts = 0  # bursts handled by batch handlers, and the deliveries in them (metrics)
        self.burst_deliveries = 0
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> Bus:
        return cls(
            settings.amqp_url,
            settings.bus_exchange,
            service=settings.service_name,
            prefetch=settings.bus_prefetch,
            max_retries=settings.bus_max_retries,
            retry_delay_ms=settings.bus_retry_delay_ms,
            close_timeout=settings.shutdown_grace_seconds,
            queue_type=settings.bus_queue_type,
        )

    # ---- names ------------------------------------------------------------------------

    def queue_name(self, group: str) -> str:
        return f"{self.exchange_name}.{group}"

    def dlq_name(self, group: str) -> str:
        return f"{self.exchange_name}.{group}.dlq"

    def retry_delay(self, retry: int) -> int:
        """Milliseconds to wait before retry number `retry` (0-based)."""
        return self.retry_delay_ms * 2**retry

    def retry_queue_name(self, group: str, retry: int) -> str:
        # The delay is in the name: a changed setting declares new queues instead of
        # clashing with the old queues' arguments.
        return f"{self.exchange_name}.{group}.retry.{self.retry_delay(retry)}"

    # ---- lifecycle ----------------------------------------------------------------------

    async def connect(self) -> None:
        if self._connection is not None:
            return
        connection = await aio_pika.connect_robust(
            self.amqp_url,
            reconnect_interval=self.reconnect_interval,
            client_properties={"connection_name": self.service},
        )
        try:
            channel = await connection.channel(publisher_confirms=True)
            self._exchange = await channel.declare_exchange(
                self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
            )
        except BaseException:
            await connection.close()
            raise
        self._connection = connection
        self._publish_channel = channel

    def subscribe(
        self, group: str, types: Sequence[str], handler: Handler, *, per_replica: bool = False
    ) -> None:
        """Register `handler` for the event types (routing keys; topic patterns allowed).
        Call before start(). The handler raises to have the message retried. A handler with a
        `handle_batch` method gets bursts of deliveries through it (module docstring), except
        on a per-replica queue."""
        if self._started:
            raise RuntimeError("subscribe() before start()")
        if isinstance(types, str):
            types = [types]
        if not types:
            raise ValueError("subscribe to at least one event type")
        batch = None if per_replica else getattr(handler, "handle_batch", None)
        self._subscriptions.append(_Subscription(group, tuple(types), handler, per_replica, batch=batch))

    async def start(self) -> None:
        """Declare every subscription's queues and bindings, then consume."""
        await self.connect()
        if self._started:
            return
        self._started = True
        if not self._subscriptions:
            return
        assert self._connection is not None
        for sub in self._subscriptions:
            # A channel per subscription: a multiple ack settles deliveries of one channel,
            # and must only cover this subscription's (module docstring).
            channel = await self._connection.channel(publisher_confirms=False)
            self._consume_channels.append(channel)
            await channel.set_qos(prefetch_count=self.prefetch)
            # Declared on this channel too, so a restored channel re-creates it before the bindings.
            exchange = await channel.declare_exchange(self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)
            await channel.declare_queue(
                self.dlq_name(sub.group), durable=True, arguments={"x-queue-type": self.queue_type}
            )
            if sub.per_replica:
                name = f"{self.queue_name(sub.group)}.replica.{uuid.uuid4().hex[:12]}"
                queue = await channel.declare_queue(name, exclusive=True, auto_delete=True)
            else:
                arguments = {
                    "x-queue-type": self.queue_type,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": self.dlq_name(sub.group),
                }
                if self.queue_type == "quorum":
                    arguments["x-delivery-limit"] = self.delivery_limit
                queue = await channel.declare_queue(self.queue_name(sub.group), durable=True, arguments=arguments)
                for retry in range(self.max_retries):
                    name = self.retry_queue_name(sub.group, retry)
                    await channel.declare_queue(
                        name,
                        durable=True,
                        arguments={
                            "x-queue-type": "classic",
                            "x-message-ttl": self.retry_delay(retry),
                            # Back to this group's queue only, not to every group bound to the type.
                            "x-dead-letter-exchange": "",
                            "x-dead-letter-routing-key": self.queue_name(sub.group),
                        },
                    )
                    sub.retry_queues.append(name)
            for type_ in sub.types:
                await queue.bind(exchange, routing_key=type_)
            sub.queue = queue
            if sub.batch is not None:
                sub.worker = asyncio.create_task(self._batch_worker(sub), name=f"bus-batches-{sub.group}")
                sub.consumer_tag = await queue.consume(self._batched_consumer(sub))
            else:
                sub.consumer_tag = await queue.consume(self._consumer(sub))

    async def close(self) -> None:
        """Stop taking messages, let in-flight handlers finish (bounded by close_timeout),
        then close the connection. Unacked messages go back to the queue for another replica."""
        if self._connection is None:
            return
        self._closing = True
        for sub in self._subscriptions:
            if sub.queue is not None and sub.consumer_tag is not None:
                try:
                    await asyncio.wait_for(sub.queue.cancel(sub.consumer_tag), timeout=2)
                except Exception:  # the connection may already be gone; closing it below requeues anyway
                    log.debug("consumer cancel failed", exc_info=True)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=self.close_timeout)
        except TimeoutError:
            log.warning("bus closing with handlers still running", extra={"inflight": self._inflight})
        workers = [sub.worker for sub in self._subscriptions if sub.worker is not None]
        for worker in workers:
            worker.cancel()  # idle by now, or given up on: its messages go back to the queue
        await asyncio.gather(*workers, return_exceptions=True)
        connection, self._connection = self._connection, None
        self._exchange = self._publish_channel = None
        self._consume_channels = []
        await connection.close()

    async def ping(self) -> None:
        """Raise BusNotConnected unless the broker connection is up (readiness check)."""
        connection = self._connection
        if connection is None or connection.is_closed or not connection.connected.is_set():
            raise BusNotConnected("no broker connection")

    # ---- publishing -----------------------------------------------------------------------

    async def publish(self, envelope: Envelope, *, timeout: float | None = None, body: bytes | None = None) -> None:
        """Publish persistently and wait for the broker's confirm. Raises on nack, on a lost
        connection or after `timeout`: the caller (the outbox relay) tries again later.
        `body`: the envelope's JSON when the caller already holds it (the outbox row), so it
        is not serialised again.

        Concurrent calls pipeline: each message is queued for the socket without waiting for
        the previous one to be written (aiormq's `wait=False`; the connection's bounded frame
        queue still pushes back), and only the broker's confirm is awaited."""
        if self._publish_channel is None or self._exchange is None:
            raise BusNotConnected("connect() first")
        if telemetry.spans_wanted():
            span = telemetry.producer_span(envelope, exchange=self.exchange_name)
            headers: dict[str, Any] = {}
        else:
            # No PRODUCER span would be kept: pass the stored trace context on as it is,
            # which is what a span that records nothing would inject.
            span = contextlib.nullcontext()
            headers = {k: v for k, v in envelope.trace.items() if k in _TRACE_KEYS}
        with span:
            if not headers:
                telemetry.inject_amqp(headers)
            properties = aiormq.spec.Basic.Properties(
                headers=headers,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT.value,
                message_id=str(envelope.id),
                timestamp=envelope.occurred_at,
                message_type=envelope.type,
                app_id=self.service,
            )
            if self._publish_channel.is_closed:
                raise BusNotConnected("publish channel closed")
            channel = await self._publish_channel.get_underlay_channel()
            # mandatory=False: an event nobody subscribes to is not an error. A nack raises
            # DeliveryError; a channel closed before the confirm raises too.
            await channel.basic_publish(
                body if body is not None else envelope.model_dump_json().encode(),
                exchange=self.exchange_name,
                routing_key=envelope.type,
                properties=properties,
                mandatory=False,
                timeout=timeout or self.publish_timeout,
                wait=False,
            )

    async def _publish_to_queue(self, queue: str, message: AbstractIncomingMessage, headers: dict[str, Any]) -> None:
        """Confirmed copy of a delivered message, straight to one queue (default exchange)."""
        assert self._publish_channel is not None
        copy = aio_pika.Message(
            message.body,
            headers={**_own_headers(message.headers), **headers},
            content_type=message.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message.message_id,
            timestamp=message.timestamp,
            type=message.type,
            app_id=message.app_id,
        )
        async with asyncio.timeout(self.publish_timeout):
            await self._publish_channel.default_exchange.publish(copy, routing_key=queue, mandatory=False)

    # ---- consuming ----------------------------------------------------------------------

    async def _handed_back(self, message: AbstractIncomingMessage) -> bool:
        """Delivered while we shut down: hand it back for another replica."""
        if not self._closing:
            return False
        with contextlib.suppress(Exception):  # a closed channel requeues it anyway
            await message.reject(requeue=True)
        return True

    def _consumer(self, sub: _Subscription) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
        async def on_message(message: AbstractIncomingMessage) -> None:
            if await self._handed_back(message):
                return
            self._inflight += 1
            self._idle.clear()
            try:
                await self._process(sub, message)
            except Exception as exc:
                # Typically the connection dropped before the ack/reject got out: the broker
                # redelivers the message (and the inbox makes the repeat harmless).
                log.warning("message not settled; the broker will redeliver it",
                            extra={"group": sub.group, "error": type(exc).__name__})
            finally:
                self._inflight -= 1
                if self._inflight == 0:
                    self._idle.set()

        return on_message

    async def _process(self, sub: _Subscription, message: AbstractIncomingMessage) -> None:
        # requeue=True on purpose: we only get here with an exception when the retry path
        # itself failed (broker trouble) or we were cancelled; the message must come back.
        # The handler's own failures are handled inside and end in an ack.
        async with message.process(requeue=True):
            retries = _retries(message)
            try:
                envelope = Envelope.model_validate_json(message.body)
            except ValidationError:
                log.error("unreadable event parked", extra={"group": sub.group, "message_id": message.message_id})
                await self._park(sub, message, retries, "InvalidEnvelope")
                return
            if sub.per_replica:
                await self._handle_in_process(sub, message, envelope)
                return
            try:
                await self._call(sub, envelope, message)
            except Exception as exc:
                await self._after_failure(sub, message, envelope, exc)

    async def _after_failure(
        self, sub: _Subscription, message: AbstractIncomingMessage, envelope: Envelope, exc: BaseException
    ) -> None:
        """The handler failed on this message: re-publish it (confirmed) to the retry queue
        of its next attempt, or park it once its retries are used up. Raises if that publish
        fails: the message must then be requeued, not acked."""
        retries = _retries(message)
        if retries < self.max_retries:
            log.warning(
                "event handler failed, will retry",
                extra={"group": sub.group, "event_type": envelope.type, "event_id": str(envelope.id),
                       "retry": retries + 1, "error": type(exc).__name__},
            )
            await self._publish_to_queue(
                self.retry_queue_name(sub.group, retries), message, {RETRIES_HEADER: retries + 1}
            )
        else:
            log.error(
                "event handler failed, parked in the DLQ",
                extra={"group": sub.group, "event_type": envelope.type, "event_id": str(envelope.id),
                       "retries": retries, "error": type(exc).__name__},
            )
            await self._park(sub, message, retries, type(exc).__name__)

    # ---- batched consuming ----------------------------------------------------------------

    def _batched_consumer(self, sub: _Subscription) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
        async def on_message(message: AbstractIncomingMessage) -> None:
            if await self._handed_back(message):
                return
            # Deliveries are appended in delivery order (aio-pika starts their callbacks in
            # that order); the worker takes them all at once.
            self._inflight += 1
            self._idle.clear()
            sub.pending.append(message)
            sub.wake.set()

        return on_message

    async def _batch_worker(self, sub: _Subscription) -> None:
        """One burst at a time, so a burst's multiple ack never covers a delivery still in hand."""
        last = 1
        while True:
            await sub.wake.wait()
            sub.wake.clear()
            while sub.pending:
                if last > 1 and len(sub.pending) < self.prefetch // 2:
                    # Under load (the last burst was not a lone event), more deliveries are on
                    # their way: a moment's wait makes a bigger burst, for fewer transactions
                    # and acks. A lone event (light load) is handled at once.
                    await asyncio.sleep(self.burst_linger)
                messages, sub.pending = sub.pending, []
                last = len(messages)
                self.bursts += 1
                self.burst_deliveries += len(messages)
                try:
                    await self._process_batch(sub, messages)
                except Exception as exc:
                    # Typically the connection dropped before the ack got out: the broker
                    # redelivers (and the inbox makes the repeat harmless).
                    log.warning("messages not settled; the broker will redeliver them",
                                extra={"group": sub.group, "error": type(exc).__name__, "messages": len(messages)})
                finally:
                    self._inflight -= len(messages)
                    if self._inflight == 0:
                        self._idle.set()

    async def _process_batch(self, sub: _Subscription, messages: list[AbstractIncomingMessage]) -> None:
        assert sub.batch is not None
        requeue: set[int] = set()  # indexes of messages whose retry/park publish failed
        envelopes: list[Envelope] = []
        owner: dict[int, int] = {}  # id(envelope) -> index of its message
        for i, message in enumerate(messages):
            try:
                envelope = Envelope.model_validate_json(message.body)
            except ValidationError:
                log.error("unreadable event parked", extra={"group": sub.group, "message_id": message.message_id})
                try:
                    await self._park(sub, message, _retries(message), "InvalidEnvelope")
                except Exception:
                    requeue.add(i)
                continue
            owner[id(envelope)] = i
            envelopes.append(envelope)

        if envelopes:
            def around(envelope: Envelope) -> contextlib.AbstractContextManager:
                message = messages[owner[id(envelope)]]
                return _consumer_context(envelope, message.headers, sub.group)

            try:
                verdicts = list(await sub.batch(envelopes, around))
                if len(verdicts) != len(envelopes):
                    raise RuntimeError("handle_batch must return one verdict per envelope")
            except Exception as exc:  # the batch handler itself broke: every event failed
                verdicts = [exc] * len(envelopes)
            for envelope, verdict in zip(envelopes, verdicts):
                if verdict is not None:
                    i = owner[id(envelope)]
                    try:
                        await self._after_failure(sub, messages[i], envelope, verdict)
                    except Exception:
                        requeue.add(i)
        await self._settle(sub, messages, requeue)

    async def _settle(self, sub: _Subscription, messages: list[AbstractIncomingMessage], requeue: set[int]) -> None:
        """Ack the burst (one multiple ack when that is provably right), requeue the rest."""
        if not requeue and self._contiguous(sub, messages):
            await messages[-1].ack(multiple=True)
        else:
            for i, message in enumerate(messages):
                if i in requeue:
                    await message.reject(requeue=True)
                else:
                    await message.ack()
        last = messages[-1]
        sub.settled = (last.channel, last.delivery_tag)

    @staticmethod
    def _contiguous(sub: _Subscription, messages: list[AbstractIncomingMessage]) -> bool:
        """Whether the burst's delivery tags follow the last settled one without a gap, on
        one channel: then "every delivery up to the last" is exactly this burst."""
        channel = messages[0].channel  # raises if the channel is closed: nothing can be settled
        if sub.settled is not None and sub.settled[0] is channel:
            expected = sub.settled[1] + 1
        else:
            expected = 1  # a channel's delivery tags start at 1
        for message in messages:
            if message.channel is not channel or message.delivery_tag != expected:
                return False
            expected += 1
        return True

    async def _handle_in_process(self, sub: _Subscription, message: AbstractIncomingMessage, envelope: Envelope) -> None:
        retries = 0
        while True:
            try:
                await self._call(sub, envelope, message)
                return
            except Exception as exc:
                if retries >= self.max_retries or self._closing:
                    log.error(
                        "event handler failed, parked in the DLQ",
                        extra={"group": sub.group, "event_type": envelope.type, "event_id": str(envelope.id),
                               "retries": retries, "error": type(exc).__name__},
                    )
                    await self._park(sub, message, retries, type(exc).__name__)
                    return
                await asyncio.sleep(self.retry_delay(retries) / 1000)
                retries += 1

    async def _park(self, sub: _Subscription, message: AbstractIncomingMessage, retries: int, error: str) -> None:
        await self._publish_to_queue(
            self.dlq_name(sub.group),
            message,
            {RETRIES_HEADER: retries, ERROR_HEADER: error, GROUP_HEADER: sub.group},
        )

    async def _call(self, sub: _Subscription, envelope: Envelope, message: AbstractIncomingMessage) -> None:
        with _consumer_context(envelope, message.headers, sub.group):
            await sub.handler(envelope)


# ---- helpers -------------------------------------------------------------------------------

_TRACE_KEYS = ("traceparent", "tracestate")  # W3C trace context only (telemetry.py)


def _consumer_context(
    envelope: Envelope, headers: dict[str, Any] | None, group: str
) -> contextlib.AbstractContextManager:
    """Around a handler: its CONSUMER span; or, when no span would be kept, its parent context
    made current as it is (the same parent: the AMQP headers', else Envelope.trace), so the
    events the handler writes still continue the trace."""
    if telemetry.spans_wanted():
        return telemetry.consumer_span(envelope, headers, group=group)
    if headers and "traceparent" in headers:
        parent = telemetry.extract_amqp(headers)
        if trace.get_current_span(parent).get_span_context().is_valid:
            return telemetry.attached(parent)
    if envelope.trace:
        return telemetry.attached(telemetry.extract_http(envelope.trace))
    return contextlib.nullcontext()


def _retries(message: AbstractIncomingMessage) -> int:
    value = (message.headers or {}).get(RETRIES_HEADER, 0)
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


def _own_headers(headers: dict[str, Any] | None) -> dict[str, Any]:
    """Headers worth copying onto a retried/parked message: ours and the trace context, not
    the broker's bookkeeping (x-death, x-delivery-count...)."""
    return {k: v for k, v in (headers or {}).items() if not k.startswith("x-")}


# ---- aiohttp wiring ------------------------------------------------------------------------

Subscriber = Callable[[web.Application, Bus], Awaitable[None] | None]


def bus_ctx(subscribe: Subscriber | None = None) -> Callable[[web.Application], AsyncIterator[None]]:
    """Cleanup context owning the process's Bus: connect, store app[BUS], register the
    "broker" readiness check, let `subscribe(app, bus)` add subscriptions, consume; on exit
    finish in-flight messages and close. Append it after the pool's context (handlers use
    the pool, and cleanup runs in reverse, so the bus drains before the pool closes)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        bus = Bus.from_settings(app[SETTINGS])
        await bus.connect()
        app[BUS] = bus
        app[READY_CHECKS].append(("broker", bus.ping))
        try:
            if subscribe is not None:
                result = subscribe(app, bus)
                if inspect.isawaitable(result):
                    await result
            await bus.start()
            yield
        finally:
            await bus.close()

    return ctx


__all__ = ["Bus", "BusNotConnected", "ERROR_HEADER", "GROUP_HEADER", "Handler", "RETRIES_HEADER", "bus_ctx"]
