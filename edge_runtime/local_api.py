"""The local inference endpoint for applications on the device (loopback by default).

``POST /v1/infer`` with ``{"inputs": {"name": nested list}}`` (omit ``inputs`` to run the
model on generated sample inputs) answers ``{"model", "version", "outputs"}``;
``GET /v1/status`` answers the device state as reported on MQTT.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from edge_runtime._model import _DTYPES
from edge_runtime.errors import InferenceError, NoModelError

if TYPE_CHECKING:
    from edge_runtime._runtime import EdgeRuntime

__all__ = ["create_http_app"]


def _problem(status: int, title: str, detail: str) -> JSONResponse:
    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status, "detail": detail},
        status_code=status,
        media_type="application/problem+json",
    )


def create_http_app(runtime: EdgeRuntime) -> Starlette:
    """A Starlette app serving ``runtime``'s model."""

    async def status(_: Request) -> JSONResponse:
        return JSONResponse(runtime.snapshot().model_dump(mode="json"))

    async def infer(request: Request) -> JSONResponse:
        loaded = runtime.host.current
        if loaded is None:
            return _problem(503, "No model", str(NoModelError()))
        try:
            body: Any = await request.json() if await request.body() else {}
        except ValueError:
            return _problem(400, "Bad request", "the body is not JSON")
        raw = body.get("inputs") if isinstance(body, dict) else None
        feeds: dict[str, np.ndarray] | None = None
        if raw is not None:
            if not isinstance(raw, dict):
                return _problem(422, "Bad inputs", "'inputs' must map input names to arrays")
            types = {i.name: i.type for i in loaded.session.get_inputs()}
            unknown = set(raw) - set(types)
            if unknown:
                return _problem(
                    422, "Bad inputs", f"unknown inputs {sorted(unknown)}; expected {sorted(types)}"
                )
            try:
                feeds = {k: np.asarray(v, dtype=_DTYPES.get(types[k])) for k, v in raw.items()}
            except (TypeError, ValueError) as exc:
                return _problem(422, "Bad inputs", str(exc))
        try:
            info, outputs = await runtime.host.run(feeds)
        except NoModelError as exc:
            return _problem(503, "No model", str(exc))
        except InferenceError as exc:
            return _problem(422, "Inference failed", str(exc))
        return JSONResponse(
            {
                "model": info.model,
                "version": info.version,
                "outputs": {k: v.tolist() for k, v in outputs.items()},
            }
        )

    return Starlette(
        routes=[
            Route("/v1/status", status, methods=["GET"]),
            Route("/v1/infer", infer, methods=["POST"]),
        ]
    )
