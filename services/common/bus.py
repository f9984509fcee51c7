"""The service bus: FastStream's NATS broker, the ``EAF`` JetStream stream, typed events.

- ``publish`` sends an event with ``Nats-Msg-Id`` = event id, so the stream stores a
  re-published event once (within the stream's duplicate window).
- A ``ServiceRouter`` (a FastStream ``NatsRouter``) carries a service's subscribers:
  ``consumer`` registers a durable pull consumer with explicit acks, ``rpc`` answers one
  request/reply subject (each declared once as an ``Rpc`` in ``schemas``) on core NATS in
  the service's queue group.
- Two middlewares do the rest for every subscriber of such a router: ``DeadLetters`` acks,
  retries with back-off, keeps a long handler's event from being redelivered meanwhile and
  moves what cannot be handled to ``eaf.dlq.<durable>``; ``RpcReplies`` answers a request
  that does not parse, and turns a ``ServiceError`` into an ``RpcErrorReply``.

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
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from faststream import AckPolicy, BaseMiddleware, ContextRepo, StreamMessage
from faststream.exceptions import AckMessage, NackMessage
from faststream.nats import (
    ConsumerConfig,
    DeliverPolicy,
    JStream,
    NatsBroker,
    NatsRouter,
    NatsUserPassword,
    PullSub,
)
from nats.aio.msg import Msg
from nats.js.api import StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError, NotFoundError
from pydantic import BaseModel, ValidationError

from schemas.config import NatsConfig
from schemas.events import Event
from schemas.rpc import Health, HealthRequest, Rpc, RpcError, RpcErrorReply, health_rpc
from services.common.errors import ServiceError, from_code
from services.common.logging import BUS_LOGGER, get_logger

__all__ = [
    "DLQ_PREFIX",
    "EVENT_SUBJECTS",
    "Bus",
    "BusError",
    "DeadLetters",
    "RpcReplies",
    "ServiceRouter",
    "derived_event_id",
]

EVENT_SUBJECTS = ("eaf.model.>", "eaf.deployment.>", "eaf.device.>", "eaf.dlq.>")
DLQ_PREFIX = "eaf.dlq."
#: Seconds a handler in flight has to finish when the service stops (``Bus.stop``).
HANDLER_GRACE = 0.5
#: Event ids derived from the event they answer (one namespace for every service).
_DERIVED_NAMESPACE = uuid.UUID("6f1d3c1e-4a47-5d0b-9a53-2f0c6b1f9e11")


def derived_event_id(consumer: str, source: uuid.UUID) -> uuid.UUID:
    """The id of the event ``consumer`` publishes in answer to event ``source``: the same
    on every redelivery of ``source``, so the stream stores the answer once."""
    return uuid.uuid5(_DERIVED_NAMESPACE, f"{consumer}:{source}")


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


# ---- middleware -----------------------------------------------------------------------


class DeadLetters:
    """Middleware factory for event consumers: ack, back-off, heartbeats, dead letters.

    A handler that returns acks its event. One that raises is redelivered after
    ``retry_backoff`` (negative ack with delay); after ``max_deliver`` deliveries, or at
    once when the event does not parse, the message moves to ``eaf.dlq.<durable>`` and is
    acked, so the events behind it keep flowing. Request/reply subscribers pass through.
    """

    def __init__(self, config: NatsConfig) -> None:
        self.config = config

    def __call__(self, msg: Any, /, *, context: ContextRepo) -> _DeadLetterMiddleware:
        return _DeadLetterMiddleware(msg, context=context, config=self.config)


class _DeadLetterMiddleware(BaseMiddleware):
    def __init__(self, msg: Any, /, *, context: ContextRepo, config: NatsConfig) -> None:
        super().__init__(msg, context=context)
        self.config = config

    async def consume_scope(
        self, call_next: Callable[[StreamMessage[Any]], Awaitable[Any]], msg: StreamMessage[Any]
    ) -> Any:
        durable = _durable(self.context.get("handler_"))
        if durable is None:  # a request/reply subscriber
            return await call_next(msg)
        cfg, raw = self.config, msg.raw_message
        delivered = _num_delivered(raw)
        if delivered > cfg.max_deliver:
            await self._dead_letter(raw, durable, f"gave up after {cfg.max_deliver} deliveries")
        try:
            async with _working(raw, cfg.ack_wait):
                return await call_next(msg)
        except (AckMessage, NackMessage):
            raise
        except Exception as exc:
            if isinstance(exc, ValidationError) and _is_request_error(exc, self.context):
                await self._dead_letter(raw, durable, f"malformed event: {exc.errors()[0]}")
            log.warning(
                "event handler failed",
                durable=durable,
                event_id=_event_id(raw),
                delivery=delivered,
                error=repr(exc),
            )
            if delivered >= cfg.max_deliver:
                await self._dead_letter(raw, durable, repr(exc))
            raise NackMessage(delay=_backoff(cfg.retry_backoff, delivered)) from None

    async def _dead_letter(self, raw: Msg, durable: str, reason: str) -> None:
        """Publish ``raw`` to ``eaf.dlq.<durable>``, then ack it (raises ``AckMessage``)."""
        broker: NatsBroker = self.context.get("broker")
        await broker.publish(
            raw.data,
            subject=DLQ_PREFIX + durable,
            headers={
                "Nats-Msg-Id": f"dlq:{durable}:{_event_id(raw)}",
                "Eaf-Original-Subject": raw.subject,
                "Eaf-Dead-Letter-Reason": reason[:500],
            },
            stream=self.config.stream,
        )
        log.error("event moved to dead-letter subject", durable=durable, reason=reason)
        raise AckMessage()


class RpcReplies:
    """Middleware factory for request/reply subscribers of one router.

    A request that does not parse as the declared type is answered ``invalid`` (422)
    without calling the handler; a ``ServiceError`` travels as an ``RpcErrorReply``; any
    other failure is logged and answered ``internal`` (500). Event consumers pass through.
    """

    def __init__(self, rpcs: dict[str, Rpc[Any, Any]]) -> None:
        self.rpcs = rpcs  # by subject; filled as the router's subscribers are declared

    def __call__(self, msg: Any, /, *, context: ContextRepo) -> _RpcReplyMiddleware:
        return _RpcReplyMiddleware(msg, context=context, rpcs=self.rpcs)


class _RpcReplyMiddleware(BaseMiddleware):
    def __init__(
        self, msg: Any, /, *, context: ContextRepo, rpcs: dict[str, Rpc[Any, Any]]
    ) -> None:
        super().__init__(msg, context=context)
        self.rpcs = rpcs

    async def consume_scope(
        self, call_next: Callable[[StreamMessage[Any]], Awaitable[Any]], msg: StreamMessage[Any]
    ) -> Any:
        subject = msg.raw_message.subject
        rpc = self.rpcs.get(subject)
        if rpc is None:
            return await call_next(msg)
        if not msg.body:  # an empty request means "all defaults"
            msg.body = b"{}"
            msg.clear_cache()
        try:
            rpc.request.model_validate_json(msg.body)
        except ValidationError as exc:
            return _error_reply("invalid", 422, _validation_detail(exc))
        try:
            reply = await call_next(msg)
        except ServiceError as exc:
            return _error_reply(exc.code, exc.status, exc.detail)
        except Exception as exc:
            log.exception("rpc handler failed", subject=subject)
            return _error_reply("internal", 500, f"internal error: {type(exc).__name__}")
        # The declared reply type's own JSON (FastStream's encoder would differ in detail).
        return reply.model_dump_json().encode() if isinstance(reply, BaseModel) else reply


# ---- router ---------------------------------------------------------------------------


class ServiceRouter(NatsRouter):
    """A service's subscribers, with the bus middleware applied to each of them."""

    def __init__(self, config: NatsConfig, *, service: str) -> None:
        self._rpcs: dict[str, Rpc[Any, Any]] = {}
        super().__init__(middlewares=(DeadLetters(config), RpcReplies(self._rpcs)))
        self.nats = config
        self.service = service
        self._stream = JStream(
            name=config.stream,
            subjects=list(EVENT_SUBJECTS),
            duplicate_window=DUPLICATE_WINDOW,
            declare=False,
        )

    def consumer(
        self, event_type: type[E], *, durable: str
    ) -> Callable[[Callable[[E], Awaitable[None]]], Callable[[E], Awaitable[None]]]:
        """Register the decorated handler as durable consumer ``durable`` of ``event_type``.

        The handler must be idempotent: after a crash before the ack it sees the event again.
        Instances that use the same ``durable`` share the work.
        """
        cfg = self.nats

        def decorator(handler: Callable[[E], Awaitable[None]]) -> Callable[[E], Awaitable[None]]:
            self.subscriber(
                event_type.SUBJECT,
                stream=self._stream,
                durable=durable,
                pull_sub=PullSub(batch_size=16, timeout=1.0),
                inbox_prefix=f"{_inbox_prefix(cfg)}.".encode(),
                config=ConsumerConfig(
                    ack_wait=cfg.ack_wait,
                    # Redelivery is counted here, not by the server: the last delivery
                    # goes to the dead-letter subject instead of vanishing.
                    max_deliver=-1,
                    deliver_policy=DeliverPolicy.ALL,
                ),
                # DeadLetters turns every outcome into an ack or a nack; an error it did not
                # expect (the dead-letter publish failing) makes the event come again.
                ack_policy=AckPolicy.NACK_ON_ERROR,
                title=f"{durable}:{event_type.SUBJECT}",
                description=handler.__doc__,
            )(handler)
            return handler

        return decorator

    def rpc(
        self, rpc: Rpc[Req, Resp]
    ) -> Callable[[Callable[[Req], Awaitable[Resp]]], Callable[[Req], Awaitable[Resp]]]:
        """Answer ``rpc`` with the decorated handler (queue group = service name)."""

        def decorator(
            handler: Callable[[Req], Awaitable[Resp]],
        ) -> Callable[[Req], Awaitable[Resp]]:
            self._rpcs[rpc.subject] = rpc
            self.subscriber(
                rpc.subject,
                queue=self.service,
                title=rpc.subject,
                description=rpc.summary or handler.__doc__,
            )(handler)
            return handler

        return decorator

    def health(self, problem: Callable[[], str] | None = None) -> None:
        """Answer ``eaf.rpc.<service>.health``. ``problem`` says what of the service's
        work is broken (``""``: nothing); then it is ``degraded``."""
        instance = f"{socket.gethostname()}:{os.getpid()}"
        service = self.service

        @self.rpc(health_rpc(service))
        async def health(request: HealthRequest) -> Health:
            detail = problem() if problem is not None else ""
            status = "degraded" if detail else "ok"
            return Health(service=service, instance=instance, status=status, detail=detail)


def _inbox_prefix(config: NatsConfig) -> str:
    """Where replies come: the server config lets each user read only
    ``_INBOX.<user>.>``, so nobody reads another's replies."""
    return f"_INBOX.{config.user}" if config.user else "_INBOX"


# ---- the connection -------------------------------------------------------------------


class Bus:
    """One service's connection to the bus: publish, call, and the routers it serves.

    ``router`` is the bus's own ``ServiceRouter`` (``consumer``, ``serve``, ``serve_health``
    register on it); a service includes its ``handlers`` router with ``include``.
    """

    def __init__(self, config: NatsConfig, *, service: str) -> None:
        self.config = config
        self.service = service
        password = config.password.get_secret_value() if config.password else None
        self.inbox_prefix = _inbox_prefix(config)
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
        self.router = ServiceRouter(config, service=service)
        self.broker.include_router(self.router)

    def include(self, router: NatsRouter) -> None:
        """Serve ``router``'s subscribers too; call before ``start``."""
        self.broker.include_router(router)

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
        """``ServiceRouter.consumer`` on the bus's own router (tools and tests)."""
        return self.router.consumer(event_type, durable=durable)

    # ---- request / reply ------------------------------------------------------------

    def serve_health(self, problem: Callable[[], str] | None = None) -> None:
        """``ServiceRouter.health`` on the bus's own router; call before ``start``."""
        self.router.health(problem)

    def serve(self, rpc: Rpc[Req, Resp], handler: Callable[[Req], Awaitable[Resp]]) -> None:
        """``ServiceRouter.rpc`` on the bus's own router (tools and tests)."""
        self.router.rpc(rpc)(handler)

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


def _durable(subscriber: Any) -> str | None:
    """The durable consumer name of a JetStream subscriber; ``None`` for core NATS."""
    if getattr(subscriber, "stream", None) is None:
        return None
    name = getattr(getattr(subscriber, "config", None), "durable_name", None)
    return name if isinstance(name, str) else None


def _is_request_error(exc: ValidationError, context: ContextRepo) -> bool:
    """Whether ``exc`` is FastStream's failure to parse the message into the handler's
    arguments (its model is named after the handler), not a bug inside the handler."""
    subscriber = context.get("handler_")
    names = {call.name for call in getattr(subscriber, "calls", ())}
    return exc.title in names


def _event_id(raw: Msg) -> str:
    headers = raw.headers or {}
    return headers.get("Nats-Msg-Id") or raw.reply or "unknown"


@contextlib.asynccontextmanager
async def _working(raw: Msg, ack_wait: float) -> AsyncIterator[None]:
    """Tell the server every third of ``ack_wait`` that the handler is still at it.

    Without it a handler that takes longer than ``ack_wait`` (a large model's validation)
    would see its event delivered again, to another instance or to itself, while it still
    works on it. A process that dies stops telling, and the event is redelivered then.
    """

    async def beat() -> None:
        while True:
            await asyncio.sleep(ack_wait / 3)
            with contextlib.suppress(Exception):  # best effort: a lost beat risks a redelivery
                await raw.in_progress()

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _num_delivered(raw: Msg) -> int:
    try:
        return int(raw.metadata.num_delivered)
    except Exception:  # not a JetStream message: treat as first delivery
        return 1


def _backoff(steps: tuple[float, ...], delivered: int) -> float:
    if not steps:
        return 0.0
    return steps[min(delivered - 1, len(steps) - 1)]
