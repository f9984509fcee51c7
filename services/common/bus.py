"""The service bus: FastStream's NATS broker, the ``EAF`` JetStream stream, typed events.

- ``publish`` sends an event with ``Nats-Msg-Id`` = event id, so the stream stores a
  re-published event once (within the stream's duplicate window).
- A ``ServiceRouter`` (a FastStream ``NatsRouter``) carries a service's subscribers:
  ``consumer`` registers a durable pull consumer with explicit acks, ``rpc`` answers one
  request/reply subject (each declared once as an ``Rpc`` in ``schemas``) on core NATS in
  the service's queue group.
- Two middlewares (``services.common.middleware``) do the rest for every subscriber of
  such a router: dead letters, back-off and heartbeats; request/reply errors.

Request/reply subjects (``eaf.rpc.>``, ``eaf.cmd.>``) are deliberately *not* captured by the
stream: a stream that captured them would answer every request with its own publish ack.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from faststream import AckPolicy
from faststream.nats import (
    ConsumerConfig,
    DeliverPolicy,
    JStream,
    NatsBroker,
    NatsRouter,
    NatsUserPassword,
    PullSub,
)
from nats.js.api import StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError, NotFoundError
from pydantic import BaseModel, ValidationError

from schemas.config import NatsConfig
from schemas.events import Event
from schemas.rpc import Health, HealthRequest, Rpc, RpcErrorReply, health_rpc
from services.common.errors import from_code
from services.common.logging import BUS_LOGGER, get_logger
from services.common.middleware import DeadLetters, RpcReplies

__all__ = [
    "EVENT_SUBJECTS",
    "Bus",
    "BusError",
    "ServiceRouter",
    "derived_event_id",
]

EVENT_SUBJECTS = ("eaf.model.>", "eaf.deployment.>", "eaf.device.>", "eaf.dlq.>")
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
