"""The bus's FastStream middleware: what every subscriber of a ``ServiceRouter`` gets.

``DeadLetters`` (event consumers) acks, retries with back-off, tells the server a long
handler is still working, and moves what cannot be handled to ``eaf.dlq.<durable>``;
``RpcReplies`` (request/reply) answers a request that does not parse, and turns a
``ServiceError`` into an ``RpcErrorReply``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from faststream import BaseMiddleware, ContextRepo, StreamMessage
from faststream.exceptions import AckMessage, NackMessage
from faststream.nats import (
    NatsBroker,
)
from nats.aio.msg import Msg
from pydantic import BaseModel, ValidationError

from schemas.config import NatsConfig
from schemas.rpc import Rpc, RpcError, RpcErrorReply
from services.common.errors import ServiceError, validation_detail
from services.common.logging import get_logger

__all__ = ["DLQ_PREFIX", "DeadLetters", "RpcReplies"]

log = get_logger(__name__)

DLQ_PREFIX = "eaf.dlq."


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
            return _error_reply("invalid", 422, validation_detail(exc.errors()))
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


def _error_reply(code: str, status: int, detail: str) -> bytes:
    return (
        RpcErrorReply(error=RpcError(code=code, status=status, detail=detail))
        .model_dump_json()
        .encode()
    )


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
