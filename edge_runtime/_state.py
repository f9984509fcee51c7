"""The device's state directory: keys, enrolment, installed models, transfer staging.

Layout (everything written atomically: temp file, fsync, rename)::

    device.json        enrolment reply: MQTT credentials, pinned platform key (0600)
    keys.json          after a rotation of the platform key: the key trusted now, its
                       version, and the rotation statements that led there (in order)
    device.key         X25519 private key, raw 32 bytes (0600); never leaves the device
    installed.json     the active and the previous model (paths under models/)
    sequences.json     highest manifest sequence accepted per model (anti-replay)
    outcomes.json      final outcome per deployment id, so a retained manifest is not retried
    status.json        the running runtime's link to the broker (``Connection``), for
                       ``edge-runtime status`` and other processes; a hint, rewritten on change
    models/<artifact_id>.onnx
    staging/<artifact_id>/  model.part, bitmap, manifest.json (the signed bytes)
"""

from __future__ import annotations

import base64
import json
import shutil
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PrivateFormat, PublicFormat

from edge_runtime.errors import NotEnrolledError
from modelkit.durable import atomic_write
from schemas.deployer import EnrollReply
from schemas.keychain import RotationStatement, TrustedKey, public_key_b64
from schemas.transfer import ActiveModel

__all__ = ["Connection", "ConnectionState", "Installed", "StateDir"]


@dataclass(frozen=True, slots=True)
class Installed:
    """The models on disk: what serves now and what a rollback would return to."""

    active: ActiveModel | None = None
    previous: ActiveModel | None = None


class ConnectionState(StrEnum):
    """Where the runtime's link to the broker stands (``status.json``, field ``state``)."""

    #: Started, no answer from the broker yet.
    CONNECTING = "connecting"
    CONNECTED = "connected"
    #: The broker could not be reached or the connection was lost: retrying with back-off.
    DISCONNECTED = "disconnected"
    #: The broker refused the credentials (CONNACK 0x86/0x87, or 4/5 in MQTT 3.1.1): the
    #: device was removed or enrolled again elsewhere. Only a new enrolment lets it in.
    NOT_AUTHORIZED = "not_authorized"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class Connection:
    """The runtime's link to the broker as the running runtime last wrote it."""

    state: ConnectionState
    #: Unix seconds when ``state`` began.
    since: int
    #: The broker's or the network's last word (empty when connected).
    detail: str = ""
    #: The process that wrote it: a ``state`` other than ``stopped`` is stale when it is gone.
    pid: int = 0


class StateDir:
    """Typed access to one device's state directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    # -- paths --
    @property
    def device_file(self) -> Path:
        return self.root / "device.json"

    @property
    def key_file(self) -> Path:
        return self.root / "device.key"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    def model_path(self, artifact_id: str) -> Path:
        return self.models_dir / f"{artifact_id}.onnx"

    def staging(self, artifact_id: str) -> Path:
        return self.root / "staging" / artifact_id

    # -- identity --
    def create_key(self) -> X25519PrivateKey:
        """Make the device key pair (once); the private key is written with mode 0600."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.key_file.exists():
            return self.private_key()
        key = X25519PrivateKey.generate()
        raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, _no_encryption())
        atomic_write(self.key_file, raw, mode=0o600)
        return key

    def private_key(self) -> X25519PrivateKey:
        try:
            return X25519PrivateKey.from_private_bytes(self.key_file.read_bytes())
        except FileNotFoundError:
            raise NotEnrolledError(self.root) from None

    def public_key_raw(self) -> bytes:
        return self.private_key().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def save_enrollment(self, reply: EnrollReply) -> None:
        atomic_write(self.device_file, reply.model_dump_json(indent=2).encode(), mode=0o600)

    def enrollment(self) -> EnrollReply:
        try:
            return EnrollReply.model_validate_json(self.device_file.read_bytes())
        except FileNotFoundError:
            raise NotEnrolledError(self.root) from None

    def platform_key(self) -> Ed25519PublicKey:
        """The platform key trusted now: the enrolment's, or where rotations led from it."""
        return self.trusted_key().public_key

    def trusted_key(self) -> TrustedKey:
        data = self._read_json("keys.json")
        if data.get("key"):
            raw = base64.b64decode(data["key"])
            version = data.get("version")
            return TrustedKey(Ed25519PublicKey.from_public_bytes(raw), version)
        raw = base64.b64decode(self.enrollment().platform_public_key)
        return TrustedKey(Ed25519PublicKey.from_public_bytes(raw), None)

    def key_chain(self) -> list[RotationStatement]:
        """The rotation statements this device followed, oldest first."""
        chain = self._read_json("keys.json").get("chain", [])
        return [RotationStatement.model_validate(s) for s in chain]

    def retired_key_ids(self) -> frozenset[str]:
        """Platform keys this device trusted once and no longer does."""
        return frozenset(s.body().previous_key_id for s in self.key_chain())

    def save_trust(self, trusted: TrustedKey, applied: list[RotationStatement]) -> None:
        """Record a move to ``trusted`` through ``applied`` (written atomically)."""
        chain = [s.model_dump() for s in (*self.key_chain(), *applied)]
        data = {"key": public_key_b64(trusted.public_key), "version": trusted.version}
        atomic_write(self.root / "keys.json", json.dumps({**data, "chain": chain}).encode())

    def forget_trust(self) -> None:
        """A new enrolment pins the platform's key afresh."""
        (self.root / "keys.json").unlink(missing_ok=True)

    # -- installed models --
    def installed(self) -> Installed:
        data = self._read_json("installed.json")
        return Installed(
            active=ActiveModel.model_validate(data["active"]) if data.get("active") else None,
            previous=ActiveModel.model_validate(data["previous"]) if data.get("previous") else None,
        )

    def save_installed(self, installed: Installed) -> None:
        data = {
            "active": installed.active.model_dump() if installed.active else None,
            "previous": installed.previous.model_dump() if installed.previous else None,
        }
        atomic_write(self.root / "installed.json", json.dumps(data).encode())
        # Only the active and the previous model are kept on disk.
        keep = {m.artifact_id for m in (installed.active, installed.previous) if m is not None}
        if self.models_dir.is_dir():
            for path in self.models_dir.glob("*.onnx"):
                if path.stem not in keep:
                    path.unlink(missing_ok=True)
            for pkg in self.models_dir.glob("*.pkg"):
                if pkg.stem not in keep:
                    shutil.rmtree(pkg, ignore_errors=True)

    # -- anti-replay --
    def sequences(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self._read_json("sequences.json").items()}

    def accept_sequence(self, model: str, sequence: int) -> None:
        data = self.sequences()
        data[model] = max(sequence, data.get(model, -1))
        atomic_write(self.root / "sequences.json", json.dumps(data).encode())

    # -- outcomes --
    def outcomes(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self._read_json("outcomes.json").items()}

    def record_outcome(self, deployment_id: str, outcome: str) -> None:
        data = self.outcomes()
        data[deployment_id] = outcome
        # Bounded: only recent deployments matter (their manifests may still be retained).
        if len(data) > 64:
            data = dict(list(data.items())[-64:])
        atomic_write(self.root / "outcomes.json", json.dumps(data).encode())

    # -- connection status --
    @property
    def status_file(self) -> Path:
        return self.root / "status.json"

    def save_connection(self, connection: Connection) -> None:
        """Write ``status.json`` (a hint: after a power loss the previous one may be back)."""
        data = {"connection": {**asdict(connection), "state": connection.state.value}}
        atomic_write(self.status_file, json.dumps(data).encode(), lasting=False)

    def connection(self) -> Connection | None:
        """What ``status.json`` says, or None if no runtime has run here (or it is damaged)."""
        try:
            raw = self._read_json("status.json").get("connection")
        except ValueError:
            return None
        if not isinstance(raw, dict):
            return None
        try:
            return Connection(
                state=ConnectionState(raw["state"]),
                since=int(raw["since"]),
                detail=str(raw.get("detail", "")),
                pid=int(raw.get("pid", 0)),
            )
        except (KeyError, TypeError, ValueError):
            return None

    def clear_staging(self, keep: str | None = None) -> None:
        base = self.root / "staging"
        if not base.is_dir():
            return
        for entry in base.iterdir():
            if entry.name != keep:
                shutil.rmtree(entry, ignore_errors=True)

    def _read_json(self, name: str) -> dict[str, Any]:
        try:
            data = json.loads((self.root / name).read_bytes())
        except FileNotFoundError:
            return {}
        return data if isinstance(data, dict) else {}


def _no_encryption() -> Any:
    from cryptography.hazmat.primitives.serialization import NoEncryption

    return NoEncryption()
