"""Structured logging (structlog): JSON lines in production, readable lines in a terminal.

Levels: INFO is for what an operator acts on (a service started or is stopping, a
deployment changed state, a message was refused); routine work (each write, each
message handled, each heartbeat) is DEBUG. The libraries' own log records (httpx,
uvicorn, alembic, FastStream) go through the same renderer, with their routine INFO
lines lowered to DEBUG (``_Routine``); ``--log-level DEBUG`` shows them all.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

__all__ = ["BUS_LOGGER", "configure_logging", "get_logger"]

#: The standard-library logger FastStream's broker logs to (``services.common.bus``).
BUS_LOGGER = "eaf.bus"

_SECRET_KEYS = frozenset({"password", "token", "secret", "key", "authorization", "dek"})

#: Loggers whose every INFO line is routine: httpx logs each request (each InfluxDB write
#: of the ingester), uvicorn its start-up and shut-down steps (the runner logs both once).
_ROUTINE_LOGGERS = frozenset({"httpx", "uvicorn.error"})
#: FastStream's supervisor logs this at INFO each time one of its tasks ends (each pull
#: consumer's fetch loop, at every stop): nothing to act on.
_TASK_ENDED = re.compile(r"callback for \S+ is being executed")
#: ... and this, with the traceback, when a task raised and is started again.
_TASK_RETRIED = re.compile(r"\S+ raised an exception, retrying")
#: The fields FastStream passes with its records (which subscriber a line is about).
_BUS_FIELDS = {"subject", "stream", "queue", "message_id"}


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # Secrets must never reach a log line, whoever passes them by mistake.
    for name in list(event):
        if name.lower() in _SECRET_KEYS:
            event[name] = "[redacted]"
    return event


def _idle_fetch_timeout(record: logging.LogRecord) -> bool:
    """FastStream's supervisor reporting that a pull consumer's fetch found nothing in time.

    nats-py 2.16 ends a ``fetch`` that the server answered with nothing before its deadline
    with a bare ``asyncio.TimeoutError``, which FastStream 0.7's pull loop (it suppresses
    only ``nats.errors.TimeoutError``) lets out: the loop ends, the supervisor logs the
    traceback at ERROR and starts the loop again. Nothing is lost; it only means the
    consumer was idle. Neither library has a setting for it, and the logger also carries
    real errors, so this record alone is recognised: by its message, the exception's type
    and the frame it came from.
    """
    if record.name != BUS_LOGGER or not record.exc_info or record.exc_info[1] is None:
        return False
    exc = record.exc_info[1]
    if not isinstance(exc, TimeoutError) or not _TASK_RETRIED.match(record.getMessage()):
        return False
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "_consume_pull":
            return True
        tb = tb.tb_next
    return False


class _Routine(logging.Filter):
    """Lowers the libraries' routine records to DEBUG (and drops them below it)."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.show_debug = level <= logging.DEBUG

    def filter(self, record: logging.LogRecord) -> bool:
        routine = _idle_fetch_timeout(record) or (
            record.levelno == logging.INFO
            and (
                record.name in _ROUTINE_LOGGERS
                or (record.name == BUS_LOGGER and bool(_TASK_ENDED.match(record.getMessage())))
                # Alembic's "Context impl"/"Will assume" lines; a migration it runs stays.
                or (
                    record.name.startswith("alembic")
                    and not record.getMessage().startswith("Running upgrade")
                )
            )
        )
        if routine:
            record.levelno = logging.DEBUG
            record.levelname = "DEBUG"
            return self.show_debug
        return True


def configure_logging(service: str, *, level: str = "INFO", json: bool | None = None) -> None:
    """Configure structlog and the standard library for one process."""
    use_json = (not sys.stderr.isatty()) if json is None else json
    renderer: Any = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}: use DEBUG, INFO, WARNING or ERROR")
    common: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    structlog.configure(
        processors=[*common, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    # The libraries' records become lines like the services' own (JSON in production),
    # with the logger's name.
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(numeric)
    handler.addFilter(_Routine(numeric))
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                *common,
                structlog.stdlib.add_logger_name,
                structlog.stdlib.ExtraAdder(allow=_BUS_FIELDS),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)


def get_logger(name: str) -> Any:
    """A structlog logger named ``name`` (the service's name is bound for the process)."""
    return structlog.get_logger(name)
