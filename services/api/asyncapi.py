"""The bus's public contract as an AsyncAPI 3.0 document: events and commands.

Built by FastStream's own AsyncAPI generation from the code's contracts: every event of
``schemas.events.EVENT_TYPES`` is a channel a service publishes to (stream ``EAF``), every
command of ``schemas.commands.COMMANDS`` a request/reply channel its service answers, with
the reply's schema added (FastStream does not describe replies). The API serves it at
``/asyncapi``; ``docs/asyncapi/asyncapi.json`` is the same document, written by
``make asyncapi``, and a test fails when the two drift apart.
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from faststream.nats import NatsBroker
from faststream.specification import AsyncAPI
from pydantic import BaseModel

from schemas.commands import COMMANDS
from schemas.events import EVENT_TYPES, Event
from schemas.rpc import Rpc, RpcErrorReply

__all__ = ["asyncapi_document", "asyncapi_json", "main"]

TITLE = "EdgeAIForge bus"
VERSION = "1"
DESCRIPTION = """\
Events and commands on the EdgeAIForge bus (NATS with JetStream).

**Events** are stored in the JetStream stream `EAF` (subjects `eaf.model.>`,
`eaf.deployment.>`, `eaf.device.>`); each carries `event_id` (also its `Nats-Msg-Id`
header, so a re-published event is stored once), `occurred_at` and `schema_version`.
Read them live with a core subscription or from the stream with a consumer.

**Commands** are request/reply on core NATS under `eaf.cmd.>`: send the JSON command with
a reply subject (`nats request`); the reply is the result, or
`{"error": {"code", "status", "detail"}}` (`RpcErrorReply`). Only the `integrator` user
of the server's config may send them. See docs/integrators.md.
"""

# Where the producer of each event lives; the services' code publishes exactly these.
_PRODUCERS = {
    "eaf.model.uploaded": "registry",
    "eaf.model.validated": "validator",
    "eaf.model.rejected": "validator",
    "eaf.model.analyzed": "analyzer",
    "eaf.model.version.deleted": "registry",
    "eaf.deployment.created": "deployer",
    "eaf.deployment.target.updated": "deployer",
    "eaf.deployment.completed": "deployer",
    "eaf.device.enrolled": "deployer",
    "eaf.device.online": "deployer",
    "eaf.device.removed": "deployer",
    "eaf.model.performance.regressed": "tracker",
}


def _describe_event(event: type[Event]) -> str:
    doc = inspect.getdoc(event) or ""
    if doc == inspect.getdoc(Event) or doc.startswith("A frozen message"):
        doc = ""  # inherited from the envelope: says nothing about this event
    producer = _PRODUCERS.get(event.SUBJECT, "a service")
    lines = [doc] if doc else []
    lines.append(f"Published by the {producer} to the stream `EAF`.")
    return "\n\n".join(lines)


def _handler(request: type[BaseModel]) -> Callable[..., Awaitable[None]]:
    """A handler whose signature tells FastStream the command's payload schema."""

    async def handler(body: Any) -> None:  # pragma: no cover - never called
        return None

    handler.__annotations__ = {"body": request, "return": None}
    return handler


def _broker() -> NatsBroker:
    broker = NatsBroker(
        "nats://localhost:4222",
        description="The platform's nats-server (nats/nats-server.conf): log in with a user.",
    )
    for event in EVENT_TYPES:
        broker.publisher(
            event.SUBJECT,
            schema=event,
            title=event.SUBJECT,
            description=_describe_event(event),
        )
    for spec in COMMANDS:
        broker.subscriber(
            spec.subject,
            queue=spec.service,
            title=spec.subject,
            description=_describe_command(spec),
        )(_handler(spec.request))
    return broker


def _describe_command(spec: Rpc[Any, Any]) -> str:
    doc = inspect.getdoc(spec.request) or ""
    return (
        f"{spec.summary}. Answered by the {spec.service}.\n\n{doc}\n\n"
        f"Reply: `{spec.reply.__name__}`, or `RpcErrorReply`."
    )


def _add_replies(doc: dict[str, Any]) -> None:
    """Give each command operation its reply (the result or an ``RpcErrorReply``)."""
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    messages = components.setdefault("messages", {})
    channels = doc.setdefault("channels", {})
    for model in {spec.reply for spec in COMMANDS} | {RpcErrorReply}:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in schema.pop("$defs", {}).items():
            schemas.setdefault(name, definition)
        schemas[model.__name__] = schema
        messages[model.__name__] = {
            "title": model.__name__,
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{model.__name__}"},
        }
    for spec in COMMANDS:
        subject = spec.subject
        reply_channel = f"{subject}.reply"
        names = (spec.reply.__name__, RpcErrorReply.__name__)
        channels[reply_channel] = {
            "address": None,
            "description": f"The reply to {subject} (the request's reply subject).",
            "messages": {n: {"$ref": f"#/components/messages/{n}"} for n in names},
        }
        doc["operations"][subject]["reply"] = {
            "channel": {"$ref": f"#/channels/{_escape(reply_channel)}"},
            "messages": [
                {"$ref": f"#/channels/{_escape(reply_channel)}/messages/{n}"} for n in names
            ],
        }


def _escape(name: str) -> str:
    # JSON pointer escaping of a channel name (RFC 6901).
    return name.replace("~", "~0").replace("/", "~1")


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the bus's events and commands."""
    spec = AsyncAPI(
        _broker(), title=TITLE, version=VERSION, description=DESCRIPTION, schema_version="3.0.0"
    )
    doc: dict[str, Any] = spec.to_specification().to_jsonable()
    _add_replies(doc)
    return doc


def asyncapi_json() -> str:
    """The document as the text kept in ``docs/asyncapi/asyncapi.json``."""
    return json.dumps(asyncapi_document(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> None:
    """Print the document (what ``make asyncapi`` writes to the docs)."""
    sys.stdout.write(asyncapi_json())
