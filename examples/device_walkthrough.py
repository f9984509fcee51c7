"""A device written from docs/device-protocol.md alone: paho-mqtt and `cryptography`.

It enrols over HTTPS, connects to the broker, verifies the signed manifest, opens the
sealed data key, pulls and decrypts the chunks, checks the SHA-256, stores the model and
reports every step on its state topic. It does not run the model (a real device loads it
and runs a health inference before it reports ``active``) and keeps its transfer in
memory (a real device stages it on disk with a bitmap, see the protocol's section 5).
Section numbers in the comments point into the protocol document.

    python examples/device_walkthrough.py --api http://127.0.0.1:8000 --token TOKEN \\
        --device-id cam-0042 --state-dir ./cam-0042 [--once]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import queue
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

CONTEXT = b"EdgeAIForge manifest v1\x00"  # section 1
SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
MAX_SKEW = 300
FINAL = ("active", "failed", "rolled_back")


class Refused(Exception):
    """A manifest or transfer the device will not accept: a protocol refusal code."""

    def __init__(self, code: str, detail: str) -> None:
        self.code = code
        self.detail = detail
        super().__init__(f"{code}: {detail}")


def enroll(api: str, token: str, device_id: str, state: Path) -> dict[str, Any]:
    """Section 2: make the key pair, enrol, pin the platform key."""
    state.mkdir(parents=True, exist_ok=True)
    key = X25519PrivateKey.generate()
    (state / "device.key").write_bytes(key.private_bytes_raw())
    (state / "device.key").chmod(0o600)
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    body = {
        "token": token,
        "device_id": device_id,
        "public_key": base64.b64encode(public).decode(),
        "capabilities": {
            "onnxruntime_version": "none",
            "opsets": {"": 21, "ai.onnx.ml": 5},
            "runtime_version": "device-walkthrough 1",
        },
    }
    request = urllib.request.Request(  # noqa: S310 - the operator gives the API URL
        f"{api}/api/v1/devices/enroll",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        reply: dict[str, Any] = json.loads(response.read())
    platform = base64.b64decode(reply["platform_public_key"])
    if hashlib.sha256(platform).hexdigest()[:16] != reply["platform_key_id"]:
        raise Refused("malformed", "the platform key does not match its key id")
    (state / "device.json").write_text(json.dumps(reply))
    (state / "device.json").chmod(0o600)
    return reply


class Device:
    """One enrolled device: its keys, its MQTT session, at most one transfer."""

    def __init__(self, state: Path, *, once: bool = False) -> None:
        self.state = state
        self.config = json.loads((state / "device.json").read_text())
        self.id: str = self.config["device_id"]
        self.key = X25519PrivateKey.from_private_bytes((state / "device.key").read_bytes())
        self.platform = Ed25519PublicKey.from_public_bytes(
            base64.b64decode(self.config["platform_public_key"])
        )
        prefix = self.config["mqtt"]["topic_prefix"]
        self.topic = {
            k: f"{prefix}/devices/{self.id}/{k}" for k in ("desired", "state", "online", "chunks")
        }
        self.prefix = prefix
        self.once = once
        self.inbox: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.report: dict[str, Any] = {
            "schema_version": 1, "device_id": self.id, "reported_at": 0, "active": None,
            "previous": None, "deployment": None, "rejection": None,
            "runtime_version": "device-walkthrough 1",
        }  # fmt: skip
        self.job: dict[str, Any] | None = None
        self.done = False

    # ---- section 3: the session -----------------------------------------------------

    def run(self, timeout: float) -> None:
        m = self.config["mqtt"]
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=m["client_id"], protocol=mqtt.MQTTv5
        )
        client.username_pw_set(m["username"], m["password"])
        client.will_set(self.topic["online"], b"0", qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_message = lambda _c, _u, msg: self.inbox.put(msg)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client = client
        client.connect(m["host"], m["port"], keepalive=30, clean_start=True)
        client.loop_start()
        deadline = time.monotonic() + timeout
        try:
            while not self.done and time.monotonic() < deadline:
                try:
                    msg = self.inbox.get(timeout=0.5)
                except queue.Empty:
                    self._stalled()
                    continue
                if msg.topic == self.topic["desired"]:
                    self.on_desired(msg.payload)
                else:
                    self.on_chunk(msg)
        finally:
            client.publish(self.topic["online"], b"0", qos=1, retain=True).wait_for_publish(5)
            client.disconnect()
            client.loop_stop()

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            print(f"broker refused the connection: {rc}", file=sys.stderr)
            return
        client.subscribe(self.topic["desired"], qos=1)
        client.subscribe(self.topic["chunks"], qos=1)
        client.publish(self.topic["online"], b"1", qos=1, retain=True)
        self.publish_state()

    def publish_state(self) -> None:
        """Section 7: the whole state, retained."""
        self.report["reported_at"] = int(time.time())
        self.client.publish(self.topic["state"], json.dumps(self.report).encode(), 1, True)

    def progress(self, state: str, error_code: str | None = None, detail: str = "") -> None:
        m = self.job["manifest"] if self.job else {}
        got = self.job["chunks"] if self.job else {}
        self.report["deployment"] = {
            "deployment_id": m.get("deployment_id", ""), "state": state,
            "model": m.get("model", ""), "version": m.get("version", ""),
            "sequence": m.get("sequence", 0), "chunks_received": len(got),
            "chunk_count": m.get("chunk_count", 0),
            "bytes_received": sum(len(c) for c in got.values()),
            "detail": detail, "error_code": error_code,
        }  # fmt: skip
        self.publish_state()
        if state in FINAL and self.once:
            self.done = True

    # ---- section 4: the manifest ----------------------------------------------------

    def check(self, payload: bytes) -> dict[str, Any]:
        try:
            envelope = json.loads(payload)
            body = base64.b64decode(envelope["signed"], validate=True)
            signature = base64.b64decode(envelope["signature"], validate=True)
        except (ValueError, KeyError, TypeError) as exc:
            raise Refused("malformed", f"not a signed manifest: {exc}") from None
        try:  # check 2, over the exact bytes received; parse only afterwards
            self.platform.verify(signature, CONTEXT + body)
        except InvalidSignature:
            raise Refused("signature", "does not verify with the pinned key") from None
        try:
            m: dict[str, Any] = json.loads(body)
            expected_count = max(1, math.ceil(m["size"] / m["chunk_size"]))
            consistent = m["chunk_count"] == expected_count and m["expires_at"] > m["issued_at"]
        except (ValueError, KeyError, TypeError, ZeroDivisionError) as exc:
            raise Refused("malformed", f"manifest body: {exc!r}") from None
        if not consistent:
            raise Refused("malformed", "inconsistent chunk_count or expiry")
        if m["device_id"] != self.id:
            raise Refused("wrong_device", f"for {m['device_id']}")
        now = time.time()
        if m["expires_at"] <= now:
            raise Refused("expired", f"expired at {m['expires_at']}")
        if m["issued_at"] > now + MAX_SKEW:
            raise Refused("clock_skew", "issued in this device's future: set the clock")
        if m["sequence"] < self.sequences().get(m["model"], -1):
            raise Refused("replay", f"sequence {m['sequence']} is older than accepted")
        return m

    def sequences(self) -> dict[str, int]:
        path = self.state / "sequences.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def on_desired(self, payload: bytes) -> None:
        if not payload:
            return  # nothing desired
        try:
            m = self.check(payload)
            if self.report["deployment"] and (
                self.report["deployment"]["deployment_id"] == m["deployment_id"]
            ):
                if self.report["deployment"]["state"] in FINAL:
                    self.publish_state()  # a re-issue: say the outcome again
                return
            info = f"EdgeAIForge dek v1|{self.id}|{m['artifact_id']}".encode()
            try:  # check 7: HPKE base mode, bound to this device and this artifact
                dek = SUITE.decrypt(base64.b64decode(m["sealed_key"]), self.key, info=info)
            except Exception:
                raise Refused("sealed_key", "the data key does not open") from None
        except Refused as refusal:
            self.report["rejection"] = {
                "code": refusal.code, "detail": refusal.detail, "at": int(time.time()),
                "deployment_id": "",
            }  # fmt: skip
            self.publish_state()
            return
        seq = self.sequences()
        seq[m["model"]] = m["sequence"]
        (self.state / "sequences.json").write_text(json.dumps(seq))
        prefix = base64.b64decode(m["nonce_prefix"])
        self.job = {"manifest": m, "dek": dek, "prefix": prefix, "chunks": {}, "failures": {}}
        self.job["last_seen"] = time.monotonic()
        self.progress("downloading")
        self.request_missing()

    # ---- section 5: the transfer ----------------------------------------------------

    def request_missing(self) -> None:
        job = self.job
        assert job is not None
        m = job["manifest"]
        window = self.config.get("window_size", 16)
        missing = [i for i in range(m["chunk_count"]) if i not in job["chunks"]][:window]
        if not missing:
            return
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.topic["chunks"]
        props.CorrelationData = m["deployment_id"].encode()
        body = {"device_id": self.id, "deployment_id": m["deployment_id"], "indexes": missing}
        topic = f"{self.prefix}/artifacts/{m['artifact_id']}/get"
        self.client.publish(topic, json.dumps(body).encode(), qos=1, properties=props)

    def _stalled(self) -> None:
        job = self.job
        stall = self.config.get("stall_timeout", 5.0)
        if job is not None and time.monotonic() - job["last_seen"] > stall:
            job["last_seen"] = time.monotonic()
            self.request_missing()

    def on_chunk(self, msg: mqtt.MQTTMessage) -> None:
        job = self.job
        if job is None or self.report["deployment"]["state"] != "downloading":
            return
        m = job["manifest"]
        props = dict(getattr(msg.properties, "UserProperty", []) or [])
        index = int(props.get("index", "-1"))
        if props.get("artifact") != m["artifact_id"] or not 0 <= index < m["chunk_count"]:
            return  # foreign or out of range: ignored
        job["last_seen"] = time.monotonic()
        if index in job["chunks"]:
            return  # duplicate
        last = index == m["chunk_count"] - 1
        plain_len = m["size"] - index * m["chunk_size"] if last else m["chunk_size"]
        nonce = job["prefix"] + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")
        try:
            if len(msg.payload) != plain_len + 16:
                raise Refused("chunk_size", f"chunk {index} has the wrong length")
            try:
                job["chunks"][index] = AESGCM(job["dek"]).decrypt(nonce, msg.payload, None)
            except InvalidTag:
                raise Refused("chunk_integrity", f"chunk {index} fails authentication") from None
        except Refused as refusal:
            job["failures"][index] = job["failures"].get(index, 0) + 1
            if job["failures"][index] >= 3:
                self.progress("failed", refusal.code, refusal.detail)
                self.job = None
            return
        if len(job["chunks"]) < m["chunk_count"]:
            self.request_missing()
            return
        self.finish()

    def finish(self) -> None:
        job = self.job
        assert job is not None
        m = job["manifest"]
        self.progress("verifying")
        data = b"".join(job["chunks"][i] for i in range(m["chunk_count"]))
        if len(data) != m["size"]:
            self.progress("failed", "size_mismatch", "wrong size")
            return
        if hashlib.sha256(data).hexdigest() != m["artifact_id"]:
            self.progress("failed", "digest_mismatch", "SHA-256 differs from the manifest")
            return
        models = self.state / "models"
        models.mkdir(exist_ok=True)
        (models / f"{m['artifact_id']}.onnx").write_bytes(data)
        # Section 6: a real device loads the model and runs a health inference here.
        self.progress("activating")
        self.report["previous"] = self.report["active"]
        self.report["active"] = {
            "model": m["model"], "version": m["version"], "sequence": m["sequence"],
            "artifact_id": m["artifact_id"],
        }  # fmt: skip
        self.progress("active")
        self.job = None


def main(argv: Sequence[str] | None = None) -> int:
    """Enrol (once) and run the device; the process's exit status."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--api", help="REST API base URL (for enrolment)")
    p.add_argument("--token", help="one-time enrolment token")
    p.add_argument("--device-id", help="this device's id")
    p.add_argument("--state-dir", type=Path, required=True)
    p.add_argument("--once", action="store_true", help="exit after the first deployment ends")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds to run")
    args = p.parse_args(argv)
    if not (args.state_dir / "device.json").exists():
        if not (args.api and args.token and args.device_id):
            p.error("not enrolled yet: give --api, --token and --device-id")
        enroll(args.api, args.token, args.device_id, args.state_dir)
    device = Device(args.state_dir, once=args.once)
    device.run(args.timeout)
    return 0 if not args.once or device.report["active"] is not None else 1


if __name__ == "__main__":
    sys.exit(main())
