"""The model repository part of ``ModelManager``: upload, list, get, download, aliases."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from edgeaiforge._errors import EdgeAIForgeError, ModelRejectedError, ValidationTimeoutError
from edgeaiforge._http import HttpClient, Progress
from edgeaiforge._model import Model, ModelMetadata
from schemas.registry import (
    AliasInfo,
    Deleted,
    ModelInfo,
    ModelPage,
    UploadedVersion,
    VersionInfo,
    VersionPage,
    VersionReports,
    VersionStatus,
    WaitUntil,
    undecided,
)
from schemas.reports import CheckOutcome, ValidationReport

__all__ = ["DEFAULT_VALIDATION_TIMEOUT", "MAX_SERVER_WAIT", "RegistryMixin"]

#: Seconds ``add_model`` waits for the validator by default.
DEFAULT_VALIDATION_TIMEOUT = 300.0
#: The longest wait the API grants one upload (``services.api.verdict.MAX_WAIT``).
MAX_SERVER_WAIT = 600.0


def _seg(value: str) -> str:
    # Names are validated server-side; quoting keeps a stray '/' from changing the route.
    return quote(value, safe="")


class RegistryMixin:
    """Methods of ``ModelManager`` that talk to ``/api/v1/models``."""

    _http: HttpClient

    def add_model(
        self,
        model: Model,
        metadata: ModelMetadata,
        *,
        progress: Progress | None = None,
        wait: bool = True,
        timeout: float = DEFAULT_VALIDATION_TIMEOUT,
        until: WaitUntil = "validated",
    ) -> UploadedVersion:
        """Upload ``model``'s file as version ``metadata.version`` (streamed, not loaded)
        and return once the validator has passed it, so it can be deployed.

        Raises ``ModelRejectedError`` with the validator's reasons when it fails, and
        ``ValidationTimeoutError`` when there is no verdict within ``timeout`` seconds (at
        most 600; validation goes on). ``until="analyzed"`` also waits for the analyzer's
        report. ``wait=False`` returns as soon as the bytes are stored (status
        ``validating``). The answer's ``pruned`` names the older versions that retention
        deleted because of this upload.
        """
        seconds = min(max(timeout, 0.0), MAX_SERVER_WAIT) if wait else 0.0
        params = list(metadata.query())
        if wait:
            params += [("wait", f"{seconds:g}"), ("until", until)]
        info = self._http.upload(
            f"/api/v1/models/{_seg(model.name)}/versions/{_seg(metadata.version)}",
            model.path,
            UploadedVersion,
            params=params,
            progress=progress,
            server_wait=seconds,
        )
        if not wait:
            return info
        if info.status is VersionStatus.REJECTED:
            raise ModelRejectedError(info.model, info.version, self._reasons(info))
        if undecided(info.status, until):
            raise ValidationTimeoutError(
                info.model, info.version, info.status.value, seconds, until
            )
        return info

    def _reasons(self, info: VersionInfo) -> list[str]:
        """The failed checks of a rejected version, as ``check: message`` lines."""
        try:
            report = self.get_reports(info.model, info.version).validation or {}
            checks = ValidationReport.model_validate(report).checks
        except (EdgeAIForgeError, ValueError):
            checks = ()
        failed = [f"{c.name}: {c.message}" for c in checks if c.outcome is CheckOutcome.FAILED]
        return failed or ([info.rejection_reason] if info.rejection_reason else [])

    def list_models(
        self,
        *,
        prefix: str | None = None,
        task: str | None = None,
        tag: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> ModelPage:
        params = {"prefix": prefix, "task": task, "tag": tag, "offset": offset, "limit": limit}
        page = self._http.call(
            "GET",
            "/api/v1/models",
            ModelPage,
            params={k: v for k, v in params.items() if v is not None},
        )
        return page

    def get_model(self, name: str) -> ModelInfo:
        info = self._http.call("GET", f"/api/v1/models/{_seg(name)}", ModelInfo)
        return info

    def list_versions(
        self,
        name: str,
        *,
        status: VersionStatus | str | None = None,
        tag: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> VersionPage:
        """Newest first."""
        params = {"status": status, "tag": tag, "offset": offset, "limit": limit}
        page = self._http.call(
            "GET",
            f"/api/v1/models/{_seg(name)}/versions",
            VersionPage,
            params={k: str(v) for k, v in params.items() if v is not None},
        )
        return page

    def get_version(self, name: str, ref: str) -> VersionInfo:
        """A version by number (``1.0.0``) or alias (``production``)."""
        info = self._http.call(
            "GET", f"/api/v1/models/{_seg(name)}/versions/{_seg(ref)}", VersionInfo
        )
        return info

    def download(
        self, name: str, ref: str, dest: str | Path, *, progress: Progress | None = None
    ) -> Path:
        """Save a version (by number or alias) to ``dest`` (a file, or a directory to put
        ``<name>-<version>.onnx`` in); the SHA-256 is checked before the file appears."""
        target = Path(dest).expanduser()
        if target.is_dir():
            version = self.get_version(name, ref)
            target = target / f"{version.model}-{version.version}.onnx"
        path, _ = self._http.download(
            f"/api/v1/models/{_seg(name)}/versions/{_seg(ref)}/artifact",
            target,
            what=f"{name} {ref}",
            progress=progress,
        )
        return path

    def delete_version(self, name: str, version: str) -> Deleted:
        """Delete a version (role admin); refused while an alias or a device needs it."""
        out = self._http.call(
            "DELETE", f"/api/v1/models/{_seg(name)}/versions/{_seg(version)}", Deleted
        )
        return out

    def set_alias(self, name: str, alias: str, version: str) -> AliasInfo:
        """Point ``alias`` (e.g. ``production``) at ``version``, atomically."""
        out = self._http.call(
            "PUT",
            f"/api/v1/models/{_seg(name)}/aliases/{_seg(alias)}",
            AliasInfo,
            json={"version": version},
        )
        return out

    def remove_alias(self, name: str, alias: str) -> None:
        self._http.call("DELETE", f"/api/v1/models/{_seg(name)}/aliases/{_seg(alias)}")

    def update_metadata(
        self,
        name: str,
        version: str,
        *,
        task: str | None = None,
        framework: str | None = None,
        description: str | None = None,
        tags: tuple[str, ...] | list[str] | None = None,
        properties: dict[str, str] | None = None,
        source_url: str | None = None,
    ) -> VersionInfo:
        """Change a version's metadata; arguments left as None stay as they are."""
        fields = {
            "task": task,
            "framework": framework,
            "description": description,
            "tags": list(tags) if tags is not None else None,
            "properties": properties,
            "source_url": source_url,
        }
        out = self._http.call(
            "PATCH",
            f"/api/v1/models/{_seg(name)}/versions/{_seg(version)}",
            VersionInfo,
            json={k: v for k, v in fields.items() if v is not None},
        )
        return out

    def get_reports(self, name: str, ref: str) -> VersionReports:
        """The validation and analysis reports of a version."""
        out = self._http.call(
            "GET", f"/api/v1/models/{_seg(name)}/versions/{_seg(ref)}/reports", VersionReports
        )
        return out
