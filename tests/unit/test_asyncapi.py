"""The AsyncAPI document matches the code: the file in docs/ is what the code generates,
every event and command is in it with its schema, and it agrees with the server's ACLs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from edgeaiforge_stack.servers import NATS_CONFIG
from schemas.commands import COMMANDS
from schemas.events import EVENT_TYPES
from services.api import asyncapi
from services.api.app import ROUTERS
from services.api.routes import asyncapi as route

DOC = Path(__file__).resolve().parents[2] / "docs" / "asyncapi" / "asyncapi.json"


def resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    if isinstance(node, dict) and set(node) == {"$ref"}:
        return resolve(doc, node["$ref"])
    return node


def payload_schema(doc: dict[str, Any], subject: str) -> dict[str, Any]:
    channel = doc["channels"][subject]
    (message_ref,) = channel["messages"].values()
    message = resolve(doc, message_ref["$ref"])
    schema: dict[str, Any] = resolve(doc, message["payload"]["$ref"])
    return schema


def test_the_document_in_docs_is_what_the_code_generates() -> None:
    assert DOC.read_text() == asyncapi.asyncapi_json(), (
        "docs/asyncapi/asyncapi.json is out of date: run `make asyncapi` and commit it"
    )


def test_every_event_and_command_is_documented_with_its_schema() -> None:
    doc = asyncapi.asyncapi_document()
    assert doc["asyncapi"] == "3.0.0"
    for event in EVENT_TYPES:
        schema = payload_schema(doc, event.SUBJECT)
        assert schema["title"] == event.__name__
        assert set(schema["properties"]) == set(event.model_fields)
        assert doc["operations"][event.SUBJECT]["action"] == "send"
    for spec in COMMANDS:
        subject = spec.subject
        schema = payload_schema(doc, subject)
        assert schema["title"] == spec.request.__name__
        assert "actor" in schema["required"]
        operation = doc["operations"][subject]
        assert operation["action"] == "receive"
        replies = {resolve(doc, m["$ref"])["title"] for m in operation["reply"]["messages"]}
        assert replies == {spec.reply.__name__, "RpcErrorReply"}
    # Every $ref in the document points at something.
    text = json.dumps(doc)
    for ref in set(re.findall(r'"\$ref": "([^"]+)"', text)):
        assert resolve(doc, ref) is not None, ref


def _role_block(role: str) -> str:
    text = NATS_CONFIG.read_text()
    match = re.search(rf"^  {role.upper()} = \{{\n(.*?)^  \}}", text, re.S | re.M)
    assert match, f"no role {role} in {NATS_CONFIG}"
    return match.group(1)


def test_the_documented_producers_may_publish_and_answer_on_the_bus() -> None:
    """The document names who publishes each event and answers each command; the server's
    config lets exactly that user do it."""
    for event in EVENT_TYPES:
        producer = asyncapi._PRODUCERS[event.SUBJECT]
        publish = _role_block(producer).split("subscribe:")[0]
        assert f'"{event.SUBJECT}"' in publish, (producer, event.SUBJECT)
    for spec in COMMANDS:
        subject = spec.subject
        subscribe = _role_block(spec.service).split("subscribe:")[1]
        prefix = subject.rsplit(".", 1)[0]
        assert f'"{prefix}.>"' in subscribe, (spec.service, subject)
    assert '"eaf.cmd.>"' in _role_block("integrator").split("subscribe:")[0]


async def test_the_api_serves_the_document() -> None:
    assert route.router in ROUTERS
    assert [r.path for r in route.router.routes] == ["/asyncapi"]  # type: ignore[attr-defined]
    response = await route.asyncapi()
    assert response.status_code == 200
    assert json.loads(bytes(response.body)) == json.loads(DOC.read_text())
