"""Every integer (and number) the API takes is bounded in its schema, and a value at, past
or far past a bound never gets a server error: in range it is served, out of range it is a
422 that names the parameter. Walked from the served ``/openapi.json``, sent to the real API
with the registry, deployer and tracker behind it on real NATS (and SQL). The bus refuses
the same values itself, so a service's request never reaches SQL with them either."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from schemas.deployer import DeployerRpc
from schemas.registry import RegistryRpc
from services.common.bus import Bus

#: Values far outside any bound: one past int64, past uint64, and beyond both.
HUGE = (2**63, -(2**63) - 1, 2**64, -(2**64), 10**20, 2**63 - 1)
#: Random values per parameter, on top of the bounds and HUGE (13 parameters today).
EXAMPLES = 8
MODEL = "bounds-model"

#: A valid value for every path parameter of an operation that takes a number.
PATH_VALUES = {"model": MODEL, "version": "1.0.0"}


def _base_bodies() -> dict[tuple[str, str], dict[str, Any]]:
    """A valid body for every operation whose body holds a number: each number is then
    varied alone, so a 422 can only be about it."""
    return {
        ("post", "/api/v1/devices/enrollment-tokens"): {"group": "bounds"},
        ("post", "/api/v1/devices/enroll"): {
            "token": "x" * 32,  # unknown: an in-range body is refused as unauthorised
            "device_id": "bounds-device",
            "public_key": "CQ" + "A" * 41 + "=",  # 32 bytes, not of small order
            "capabilities": {"onnxruntime_version": "1.18.0", "opsets": {"ai.onnx": 17}},
        },
        ("post", "/api/v1/keys"): {"name": "bounds", "role": "viewer"},
        ("post", "/api/v1/deployments"): {
            "model": MODEL,
            "version": "1.0.0",
            "target": {"device_id": "no-such-device"},
        },
    }


@dataclass(frozen=True)
class Number:
    """One integer or number the API takes: where it goes and its bounds from the schema."""

    method: str
    path: str
    #: ``query``/``path``/``header``, or ``body`` with ``field`` the path into the body.
    where: str
    field: tuple[str, ...]
    kind: str
    low: float | None
    high: float | None
    low_open: bool
    high_open: bool

    @property
    def name(self) -> str:
        return self.field[-1]

    def label(self) -> str:
        return f"{self.method.upper()} {self.path} {self.where}:{'.'.join(self.field)}"

    def inside(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def edges(self) -> list[int | float]:
        """The bounds, one step past each, and the huge values."""
        step = 1
        values: list[int | float] = list(HUGE)
        for bound in (self.low, self.high):
            if bound is not None:
                whole = int(bound) if float(bound).is_integer() else bound
                values += [whole, whole - step, whole + step]
        if self.kind == "number":
            values += [1e20, -1e20, 1.5e308]
        return list(dict.fromkeys(values))


def _numbers(doc: dict[str, Any]) -> list[Number]:
    components = doc.get("components", {}).get("schemas", {})
    found: list[Number] = []

    def walk(schema: dict[str, Any], method: str, path: str, where: str, field: tuple[str, ...]):
        if "$ref" in schema:
            walk(components[schema["$ref"].rsplit("/", 1)[1]], method, path, where, field)
            return
        for key in ("anyOf", "oneOf", "allOf"):
            for sub in schema.get(key, []):
                walk(sub, method, path, where, field)
        if schema.get("type") in ("integer", "number"):
            low, high = schema.get("minimum"), schema.get("maximum")
            low_open = high_open = False
            if "exclusiveMinimum" in schema:
                low, low_open = schema["exclusiveMinimum"], True
            if "exclusiveMaximum" in schema:
                high, high_open = schema["exclusiveMaximum"], True
            found.append(
                Number(method, path, where, field, schema["type"], low, high, low_open, high_open)
            )
        for name, sub in schema.get("properties", {}).items():
            walk(sub, method, path, where, (*field, name))
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            walk(extra, method, path, where, (*field, "ai.onnx"))
        if isinstance(schema.get("items"), dict):
            walk(schema["items"], method, path, where, (*field, "0"))

    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            for param in op.get("parameters", []):
                walk(param["schema"], method, path, param["in"], (param["name"],))
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body:
                walk(body["schema"], method, path, "body", ())
    return found


@pytest.fixture(scope="module")
def numbers(api_platform) -> list[Number]:
    doc = httpx.get(f"{api_platform.url}/openapi.json", timeout=10).json()
    return _numbers(doc)


@pytest.fixture(scope="module")
def with_model(api_platform) -> Iterator[None]:
    # A model with a version, so an in-range page of its versions is really read from SQL.
    with api_platform.client(api_platform.keys["deployer"]) as c:
        r = c.put(
            f"/api/v1/models/{MODEL}/versions/1.0.0",
            content=os.urandom(1000),
            headers={"Content-Type": "application/octet-stream"},
        )
        assert r.status_code in (201, 409), r.text
    yield


def test_every_number_the_api_takes_has_both_bounds_in_the_schema(numbers: list[Number]) -> None:
    assert len(numbers) >= 10  # offsets, limits, ttl, window, thresholds, timeouts, ...
    unbounded = [n.label() for n in numbers if n.low is None or n.high is None]
    assert unbounded == []


def _send(client: httpx.Client, n: Number, value: int | float) -> httpx.Response:
    path = n.path
    for name, sample in PATH_VALUES.items():
        path = path.replace("{" + name + "}", sample)
    assert "{" not in path, f"no sample value for a path parameter of {n.path}"
    if n.where == "query":
        return client.request(n.method, path, params={n.name: json.dumps(value)})
    if n.where == "path":
        return client.request(n.method, path.replace("{" + n.name + "}", json.dumps(value)))
    assert n.where == "body", n.label()
    body = json.loads(json.dumps(_base_bodies()[(n.method, n.path)]))
    node = body
    for key in n.field[:-1]:
        node = node.setdefault(key, {})
    node[n.field[-1]] = value
    # json.dumps, not httpx's json=: it writes 1.5e308 and 2**64 as they are.
    return client.request(
        n.method, path, content=json.dumps(body), headers={"Content-Type": "application/json"}
    )


def _bound(check: Any, client: httpx.Client, n: Number) -> Any:
    # A closure rather than default arguments, which @given refuses.
    def run(value: int | float) -> None:
        check(client, n, value)

    return run


def test_numbers_at_and_beyond_their_bounds_are_never_a_server_error(
    api_platform, numbers: list[Number], with_model: None
) -> None:
    failures: list[str] = []
    sent = 0

    def check(client: httpx.Client, n: Number, value: int | float) -> None:
        nonlocal sent
        sent += 1
        r = _send(client, n, value)
        what = f"{n.label()} = {value!r} -> {r.status_code}: {r.text[:200]}"
        if r.status_code >= 500:
            failures.append(what)
        elif not n.inside(value):
            # Refused by the schema, saying which parameter.
            if r.status_code != 422 or n.name not in r.json().get("detail", ""):
                failures.append(what)
        elif r.status_code == 422 and n.name in r.text:
            failures.append(f"in range but refused: {what}")

    with api_platform.client(api_platform.keys["admin"]) as client:
        for n in numbers:
            low = int(n.low) - 10 if n.low is not None else -(2**70)
            high = int(n.high) + 10 if n.high is not None else 2**70
            values: st.SearchStrategy[int | float] = st.integers(low, high) | st.sampled_from(HUGE)
            if n.kind == "number":
                values = values | st.floats(low, high, allow_nan=False, allow_infinity=False)
            run = given(values)(_bound(check, client, n))
            for edge in n.edges():
                run = example(edge)(run)
            settings(
                max_examples=EXAMPLES,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                derandomize=True,  # the same requests every run: a failure can be replayed
                database=None,
            )(run)()
    assert 100 < sent < 400  # quick: a few hundred requests at most
    assert failures == []


def test_the_bus_refuses_out_of_range_paging_before_sql(api_platform) -> None:
    """The registry's and deployer's own request models hold the bounds: a service calling
    them on NATS gets a 422 naming the field, as REST callers do."""
    asks = [
        (RegistryRpc.LIST_MODELS.subject, {"offset": 2**63}, "offset"),
        (RegistryRpc.LIST_MODELS.subject, {"offset": -1}, "offset"),
        (RegistryRpc.LIST_VERSIONS.subject, {"model": MODEL, "offset": 10**20}, "offset"),
        (RegistryRpc.LIST_VERSIONS.subject, {"model": MODEL, "limit": 2**64}, "limit"),
        (DeployerRpc.LIST_DEPLOYMENTS.subject, {"limit": 2**63}, "limit"),
    ]

    async def main() -> list[dict[str, Any]]:
        replies = []
        async with Bus(api_platform.settings.nats, service=f"bounds-{uuid.uuid4().hex[:6]}") as bus:
            for subject, body, _ in asks:
                msg = await bus.broker.connection.request(
                    subject, json.dumps(body).encode(), timeout=10
                )
                replies.append(json.loads(msg.data))
        return replies

    for (subject, _, field), reply in zip(asks, asyncio.run(main()), strict=True):
        error = reply.get("error") or {}
        assert error.get("status") == 422, (subject, reply)
        assert field in error["detail"], (subject, reply)
    # And the largest offset the schema allows is served (an empty page), not a 500.
    with api_platform.client(api_platform.keys["viewer"]) as c:
        page = c.get("/api/v1/models", params={"offset": 2**31 - 1})
        assert page.status_code == 200 and page.json()["items"] == []
