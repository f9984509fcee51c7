"""The service bus: FastStream's NATS broker, the ``EAF`` JetStream stream, typed events.

- ``publish`` sends an event with ``Nats-Msg-Id`` = event id, so the stream stores a
  re-published event once (within the stream's duplicate window).
- ``consumer`` registers a durable pull consumer with explicit acks. A handler that fails
  is redelivered with back-off; after ``max_deliver`` deliveries, or at once when the
  event does not parse, the message moves to ``eaf.dlq.<durable>`` and the events behind
  it keep flowing.
- ``serve`` and ``call`` carry request/reply (each subject declared once as an ``Rpc`` in
  ``schemas``) on core NATS (queue groups, so instances
  share the load), with ``ServiceError`` travelling as an ``RpcErrorReply``.

Request/reply subjects (``eaf.rpc.>``, ``eaf.cmd.>``) are deliberately *not* captured by the
stream: a stream that captured them would answer every request with its own publish ack.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from faststream import AckPolicy
from faststream.nats import (
    ConsumerConfig,
    DeliverPolicy,
    JStream,
    NatsBroker,
    NatsMessage,
    NatsUserPassword,
    PullSub,
)
from nats.js.api import StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError, NotFoundError
from pydantic import BaseModel, ValidationError

from schemas.config import NatsConfig
from schemas.events import Event
from schemas.rpc import Health, HealthRequest, Rpc, RpcError, RpcErrorReply, health_rpc
from services.common.errors import ServiceError, from_code
from services.common.logging import BUS_LOGGER, get_logger

__all__ = ["DLQ_PREFIX", "EVENT_SUBJECTS", "Bus", "BusError"]

EVENT_SUBJECTS = ("eaf.model.>", "eaf.deployment.>", "eaf.device.>", "eaf.dlq.>")
DLQ_PREFIX = "eaf.dlq."
#: Seconds a handler in flight has to finish when the service stops (``Bus.stop``).
HANDLER_GRACE = 0.5
#: Seconds within which the stream recognises a re-published event id.
DUPLICATE_WINDOW = 600.0

E = TypeVar("E", bound=Event)
Req = TypeVar("Req", bound=BaseModel)
Resp = TypeVar("Resp", bound=BaseModel)

log = get_logger(__name__)


class BusError(Exception):
    """The bus could not carry a message (no responder, timeout, bad reply)."""

    def __init__(self, subject: str, reason: str) -> None:
        self.subject = subject
        super().__init__(f"request on {subject} failed: {reason}")


class Bus:
    """One service's connection to the bus. Use ``broker`` for the FastStream app."""

    def __init__(self, config: NatsConfig, *, service: str) -> None:
        self.config = config
        self.service = service
        password = config.password.get_secret_value() if config.password else None
        # Replies come to an inbox under the user's own prefix: the server config lets each
        # user read only ``_INBOX.<user>.>``, so nobody reads another's replies.
        self.inbox_prefix = f"_INBOX.{config.user}" if config.user else "_INBOX"
        self.broker = NatsBroker(
            config.url,
            security=(
                NatsUserPassword(username=config.user, password=password or "")
                if config.user
                else None
            ),
            name=f"eaf-{service}",
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            inbox_prefix=self.inbox_prefix,
            # FastStream's per-message "Received/Processed" lines are debug detail; the
            # services log what matters themselves (structlog).
            log_level=logging.DEBUG,
            # Its records go through the services' own logging (one format, one level);
            # services.common.logging lowers its routine ones (a task ended, an idle pull
            # consumer's fetch timing out) to DEBUG.
            logger=logging.getLogger(BUS_LOGGER),
            # At stop, a handler in flight gets this long to finish, then it is cancelled:
            # its event, not acknowledged, comes again (handlers are idempotent). FastStream's
            # default (15 s) held a stopping service up for as long as a validation took.
            graceful_timeout=HANDLER_GRACE,
        )
        self.stream = JStream(
            name=config.stream,
            subjects=list(EVENT_SUBJECTS),
            duplicate_window=DUPLICATE_WINDOW,
            declare=False,
        )

    async def start(self) -> None:
        """Connect, make sure the stream exists, and start every registered subscriber."""
        await self.broker.connect()
        await self.ensure_stream()
        await self.broker.start()

    async def stop(self) -> None:
        """Stop consuming (handlers in flight get ``HANDLER_GRACE`` seconds) and disconnect."""
        await self.broker.stop()

    async def __aenter__(self) -> Bus:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def js(self) -> JetStreamContext:
        """The underlying nats-py JetStream context (for tools and tests)."""
        return self.broker.connection.jetstream()

    async def ensure_stream(self) -> None:
        """Create the ``EAF`` stream, or bring its subjects up to date."""
        wanted = StreamConfig(
            name=self.config.stream,
            subjects=list(EVENT_SUBJECTS),
            duplicate_window=DUPLICATE_WINDOW,
            storage=StorageType.FILE,
        )
        try:
            info = await self.js.stream_info(self.config.stream)
        except NotFoundError:
            try:
                await self.js.add_stream(wanted)
            except BadRequestError:  # created concurrently by another service
                pass
            return
        if sorted(info.config.subjects or []) != sorted(EVENT_SUBJECTS):
            await self.js.update_stream(wanted)

    # ---- events ---------------------------------------------------------------------

    async def publish(self, event: Event) -> None:
        """Publish ``event`` to the stream and wait for the stream's acknowledgement."""
        await self.broker.publish(
            event.model_dump_json().encode(),
            subject=event.SUBJECT,
            headers={"Nats-Msg-Id": str(event.event_id), "content-type": "application/json"},
            stream=self.config.stream,
        )

    def consumer(
        self, event_type: type[E], *, durable: str
    ) -> Callable[[Callable[[E], Awaitable[None]]], Callable[[E], Awaitable[None]]]:
        """Register ``handler`` as durable consumer ``durable`` of ``event_type``.

        The handler must be idempotent: after a crash before the ack it sees the event again.
        """
        cfg = self.config

        def decorator(
            handler: Callable[[E], Awaitable[None]],
        ) -> Callable[[E], Awaitable[None]]:
            @self.broker.subscriber(
                event_type.SUBJECT,
                stream=self.stream,
                durable=durable,
                pull_sub=PullSub(batch_size=16, timeout=1.0),
                inbox_prefix=f"{self.inbox_prefix}.".encode(),
                config=ConsumerConfig(
                    ack_wait=cfg.ack_wait,
                    max_deliver=-1,
                    deliver_policy=DeliverPolicy.ALL,
                ),
                ack_policy=AckPolicy.MANUAL,
                title=f"{durable}:{event_type.SUBJECT}",
                description=handler.__doc__,
            )
            async def _consume(msg: NatsMessage) -> None:
                body = msg.body
                delivered = _num_delivered(msg)
                try:
                    event = event_type.model_validate_json(body)
                except ValidationError as exc:
                    await self._dead_letter(msg, durable, f"malformed event: {exc.errors()[0]}")
                    return
                if delivered > cfg.max_deliver:
                    await self._dead_letter(
                        msg, durable, f"gave up after {cfg.max_deliver} deliveries"
                    )
                    return
                try:
                    async with _working(msg, cfg.ack_wait):
                        await handler(event)
                except Exception as exc:
                    log.warning(
                        "event handler failed",
                        durable=durable,
                        event_id=str(event.event_id),
                        delivery=delivered,
                        error=repr(exc),
                    )
                    if delivered >= cfg.max_deliver:
                        await self._dead_letter(msg, durable, repr(exc))
                    else:
                        await msg.nack(delay=_backoff(cfg.retry_backoff, delivered))
                    return
                await msg.ack()

            return handler

        return decorator

    async def _dead_letter(self, msg: NatsMessage, durable: str, reason: str) -> None:
        raw = msg.raw_message
        headers = dict(raw.headers or {})
        event_id = headers.get("Nats-Msg-Id", raw.reply or "unknown")
        await self.broker.publish(
            raw.data,
            subject=DLQ_PREFIX + durable,
            headers={
                "Nats-Msg-Id": f"dlq:{durable}:{event_id}",
                "Eaf-Original-Subject": raw.subject,
                "Eaf-Dead-Letter-Reason": reason[:500],
            },
            stream=self.config.stream,
        )
        log.error("event moved to dead-letter subject", durable=durable, reason=reason)
        await msg.ack()

    # ---- request / reply ------------------------------------------------------------

    def serve_health(self, problem: Callable[[], str] | None = None) -> None:
        """Answer ``eaf.rpc.<service>.health``; call before ``start``. ``problem`` says
        what of the service's work is broken (``""``: nothing); then it is ``degraded``."""
        instance = f"{socket.gethostname()}:{os.getpid()}"

        rpc = health_rpc(self.service)

        async def health(_: HealthRequest) -> Health:
            detail = problem() if problem is not None else ""
            status = "degraded" if detail else "ok"
            return Health(service=self.service, instance=instance, status=status, detail=detail)

        self.serve(rpc, health)

    def serve(self, rpc: Rpc[Req, Resp], handler: Callable[[Req], Awaitable[Resp]]) -> None:
        """Answer ``rpc`` (in queue group = service name) with ``handler``."""
        subject, request_type = rpc.subject, rpc.request

        @self.broker.subscriber(
            subject, queue=self.service, title=subject, description=rpc.summary or handler.__doc__
        )
        async def _serve(msg: NatsMessage) -> bytes:
            try:
                request = request_type.model_validate_json(msg.body or b"{}")
            except ValidationError as exc:
                return _error_reply("invalid", 422, _validation_detail(exc))
            try:
                reply = await handler(request)
            except ServiceError as exc:
                return _error_reply(exc.code, exc.status, exc.detail)
            except Exception as exc:
                log.exception("rpc handler failed", subject=subject)
                return _error_reply("internal", 500, f"internal error: {type(exc).__name__}")
            return reply.model_dump_json().encode()

    async def call(
        self, rpc: Rpc[Req, Resp], request: Req, *, timeout: float | None = None
    ) -> Resp:
        """Send ``request`` and parse the reply; a remote ``ServiceError`` is re-raised."""
        return await self.request(rpc.subject, request, rpc.reply, timeout=timeout)

    async def request(
        self,
        subject: str,
        request: BaseModel,
        response_type: type[Resp],
        *,
        timeout: float | None = None,
    ) -> Resp:
        """Send ``request`` to ``subject`` and parse the reply as ``response_type``."""
        try:
            reply = await self.broker.request(
                request.model_dump_json().encode(),
                subject=subject,
                timeout=timeout or self.config.request_timeout,
            )
        except TimeoutError:
            raise BusError(subject, "no reply in time (is the service running?)") from None
        except Exception as exc:
            raise BusError(subject, f"{type(exc).__name__}: {exc}") from None
        return parse_reply(subject, reply.body, response_type)


def parse_reply(subject: str, body: bytes, response_type: type[Resp]) -> Resp:
    """A reply body as ``response_type``, or the ``ServiceError`` it carries."""
    try:
        data = json.loads(body)
    except ValueError:
        raise BusError(subject, "reply is not JSON") from None
    if isinstance(data, dict) and set(data) == {"error"}:
        err = RpcErrorReply.model_validate(data).error
        raise from_code(err.code, err.status, err.detail)
    try:
        return response_type.model_validate(data)
    except ValidationError as exc:
        raise BusError(subject, f"unexpected reply: {exc.errors()[0]['msg']}") from None


def _error_reply(code: str, status: int, detail: str) -> bytes:
    return (
        RpcErrorReply(error=RpcError(code=code, status=status, detail=detail))
        .model_dump_json()
        .encode()
    )


def _validation_detail(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors()[:5]:
        loc = ".".join(str(p) for p in e["loc"]) or "body"
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)


@contextlib.asynccontextmanager
async def _working(msg: NatsMessage, ack_wait: float) -> AsyncIterator[None]:
    """Tell the server every third of ``ack_wait`` that the handler is still at it.

    Without it a handler that takes longer than ``ack_wait`` (a large model's validation)
    would see its event delivered again, to another instance or to itself, while it still
    works on it. A process that dies stops telling, and the event is redelivered then.
    """

    async def beat() -> None:
        while True:
            await asyncio.sleep(ack_wait / 3)
            with contextlib.suppress(Exception):  # best effort: a lost beat risks a redelivery
                await msg.raw_message.in_progress()

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _num_delivered(msg: NatsMessage) -> int:
    try:
        return int(msg.raw_message.metadata.num_delivered)
    except Exception:  # not a JetStream message: treat as first delivery
        return 1


def _backoff(steps: tuple[float, ...], delivered: int) -> float:
    if not steps:
        return 0.0
    return steps[min(delivered - 1, len(steps) - 1)]
