"""Activation and rollback: load a verified model, health-check it, switch, record.

The new model is loaded and checked beside the serving one; only then does it serve
(``ModelHost.switch``), and the installed models and the outcome are written to disk.
A model that does not load or fails its check is rolled back: the old one keeps serving.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from edge_runtime import _faults
from edge_runtime._reporting import Reporting
from edge_runtime._state import Installed
from edge_runtime.errors import InferenceError
from schemas.events import TargetState
from schemas.manifest import Manifest
from schemas.transfer import ActiveModel, Rejection, RejectionCode

__all__ = ["Activation", "active_of"]


class Activation(Reporting):
    """The part of ``EdgeRuntime`` that puts a model on disk into service."""

    async def _activate(self, manifest: Manifest, path: Path) -> None:
        self._set_progress(manifest, TargetState.ACTIVATING)
        info = active_of(manifest)
        try:
            loaded = await self.host.prepare(path, info)
        except InferenceError as exc:
            installed = self.state.installed()
            keep = {m.artifact_id for m in (installed.active, installed.previous) if m}
            if manifest.artifact_id not in keep:
                await asyncio.to_thread(path.unlink, missing_ok=True)
            code = (
                RejectionCode.LOAD_FAILED
                if "does not load" in str(exc)
                else RejectionCode.HEALTH_CHECK
            )
            self._log(f"deployment {manifest.deployment_id} rolled back: {exc}")
            self.state.record_outcome(manifest.deployment_id, "rolled_back")
            self._rejection = Rejection(
                code=code,
                detail=str(exc),
                at=int(time.time()),
                deployment_id=manifest.deployment_id,
            )
            self._set_progress(manifest, TargetState.ROLLED_BACK, detail=str(exc), error_code=code)
            return
        _faults.point("loaded")
        await self._install(loaded.info, path, manifest, loaded=loaded)

    async def _install(
        self,
        info: ActiveModel,
        path: Path,
        manifest: Manifest,
        *,
        loaded: object | None = None,
    ) -> None:
        from edge_runtime._model import LoadedModel

        installed = self.state.installed()
        current = self.host.current
        previous = installed.previous
        if current is not None and current.info.artifact_id != info.artifact_id:
            previous = current.info
        if isinstance(loaded, LoadedModel):
            self.host.switch(loaded)
        elif current is not None:
            self.host.switch(type(current)(info=info, session=current.session, path=path))
        self.state.save_installed(Installed(active=info, previous=previous))
        _faults.point("installed")
        self.state.record_outcome(manifest.deployment_id, "active")
        _faults.point("recorded")
        self._log(f"deployment {manifest.deployment_id}: {info.model}@{info.version} active")
        self._set_progress(manifest, TargetState.ACTIVE)

    async def _load_installed(self) -> None:
        installed = self.state.installed()
        for candidate in (installed.active, installed.previous):
            if candidate is None:
                continue
            try:
                loaded = await self.host.prepare(
                    self.state.model_path(candidate.artifact_id), candidate
                )
            except InferenceError as exc:
                self._log(f"installed model {candidate.model}@{candidate.version}: {exc}")
                continue
            self.host.switch(loaded)
            if candidate is not installed.active:
                self.state.save_installed(Installed(active=candidate, previous=None))
            return

    # ---- reporting -----------------------------------------------------------------------


def active_of(manifest: Manifest) -> ActiveModel:
    return ActiveModel(
        model=manifest.model,
        version=manifest.version,
        sequence=manifest.sequence,
        artifact_id=manifest.artifact_id,
    )
