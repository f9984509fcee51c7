"""Enrolment: make the device's key pair, register it, pin the platform's key.

``prepare`` creates the X25519 key pair in the state directory (the private key, mode
0600, never leaves it) and builds the request; ``complete`` stores the reply (MQTT
credentials and the platform's Ed25519 key, which is pinned from then on). ``enroll`` does
both around ``POST {api}/api/v1/devices/enroll``.
"""

from __future__ import annotations

import base64
import functools
import os
import platform
from pathlib import Path

import httpx
import onnxruntime as ort
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_runtime._state import StateDir
from edge_runtime.errors import EnrollmentError
from schemas import crypto
from schemas.deployer import Capabilities, EnrollReply, EnrollRequest
from schemas.topics import validate_device_id

__all__ = ["ENROLL_PATH", "capabilities", "complete", "enroll", "prepare"]

ENROLL_PATH = "/api/v1/devices/enroll"
_PROBE_DOMAINS = {"ai.onnx": (7, 40), "ai.onnx.ml": (1, 10), "com.microsoft": (1, 5)}


@functools.cache
def capabilities() -> Capabilities:
    """What this runtime can run: measured by loading tiny models, not guessed from versions."""
    from edge_runtime._reporting import RUNTIME_VERSION

    return Capabilities(
        onnxruntime_version=ort.__version__,
        opsets={d: v for d, (lo, hi) in _PROBE_DOMAINS.items() if (v := _max_opset(d, lo, hi))},
        execution_providers=tuple(ort.get_available_providers()),
        cpu_arch=platform.machine(),
        memory_bytes=_memory_bytes(),
        runtime_version=RUNTIME_VERSION,
    )


def _loads(domain: str, version: int) -> bool:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    imports = [helper.make_opsetid("", 13 if domain != "ai.onnx" else version)]
    if domain != "ai.onnx":
        imports.append(helper.make_opsetid(domain, version))
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = 8
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:
        return False
    return True


def _max_opset(domain: str, lo: int, hi: int) -> int:
    if not _loads(domain, lo):
        return 0
    while lo < hi:  # highest version that loads, by bisection
        mid = (lo + hi + 1) // 2
        if _loads(domain, mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def prepare(state_dir: Path, *, device_id: str, token: str) -> EnrollRequest:
    """Create the key pair (once) and the enrolment request."""
    validate_device_id(device_id)
    state = StateDir(state_dir)
    state.create_key()
    return EnrollRequest(
        token=token,
        device_id=device_id,
        public_key=base64.b64encode(state.public_key_raw()).decode(),
        capabilities=capabilities(),
    )


def complete(state_dir: Path, reply: EnrollReply) -> None:
    """Store the credentials and pin the platform key from ``reply``."""
    try:
        raw = base64.b64decode(reply.platform_public_key, validate=True)
        key = Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise EnrollmentError("the platform key in the reply is not an Ed25519 key") from None
    if crypto.key_id(key) != reply.platform_key_id:
        raise EnrollmentError("the platform key does not match its key id")
    state = StateDir(state_dir)
    state.forget_trust()
    state.save_enrollment(reply)


def enroll(
    api_url: str, *, token: str, device_id: str, state_dir: Path, timeout: float = 30.0
) -> EnrollReply:
    """The whole enrolment against the REST API; raises ``EnrollmentError``."""
    request = prepare(state_dir, device_id=device_id, token=token)
    url = api_url.rstrip("/") + ENROLL_PATH
    try:
        response = httpx.post(url, json=request.model_dump(mode="json"), timeout=timeout)
    except httpx.HTTPError as exc:
        raise EnrollmentError(f"cannot reach {url}: {exc}") from None
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise EnrollmentError(f"{url} answered {response.status_code}: {detail}")
    try:
        reply = EnrollReply.model_validate_json(response.content)
    except ValueError as exc:
        raise EnrollmentError(f"unexpected reply from {url}: {exc}") from None
    complete(state_dir, reply)
    return reply
