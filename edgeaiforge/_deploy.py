"""The deployment part of ``ModelManager``: devices, enrolment tokens, deployments."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from urllib.parse import quote

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from edgeaiforge._errors import ConnectionFailedError, EdgeAIForgeError, ServerError
from edgeaiforge._http import HttpClient
from schemas.deployer import (
    DeploymentInfo,
    DeploymentList,
    DeploymentSpec,
    DeploymentStatus,
    DeploymentStrategy,
    DeviceInfo,
    DeviceList,
    EnrollmentToken,
    TargetSelector,
)

__all__ = ["DeployMixin", "DeploymentTimeoutError"]


class DeploymentTimeoutError(EdgeAIForgeError):
    def __init__(self, deployment_id: str, timeout: float) -> None:
        self.deployment_id = deployment_id
        super().__init__(
            f"deployment {deployment_id} did not finish within {timeout:g} s; it keeps "
            f"running: follow it with `edgeaiforge deployment show {deployment_id}`"
        )


def _seg(value: str) -> str:
    return quote(value, safe="")


#: Attempts of a create or rollback whose answer was lost (the same key on each).
ATTEMPTS = 3


def _lost(exc: BaseException) -> bool:
    """Did the request fail in a way a retry may mend (no answer, or a gateway's 5xx)?"""
    if isinstance(exc, ConnectionFailedError):
        return True
    return isinstance(exc, ServerError) and exc.status in (502, 503, 504)


def new_request_id() -> str:
    """A fresh idempotency key (what the SDK uses when the caller gives none)."""
    return f"sdk:{uuid.uuid4()}"


class DeployMixin:
    """Methods of ``ModelManager`` that talk to ``/api/v1/devices`` and ``/deployments``."""

    _http: HttpClient

    # ---- devices ---------------------------------------------------------------------

    def create_enrollment_token(
        self,
        *,
        device_id: str | None = None,
        group: str | None = None,
        labels: Mapping[str, str] | None = None,
        ttl_seconds: int | None = None,
    ) -> EnrollmentToken:
        """A one-time token for ``edge-runtime enroll`` (admin role)."""
        body = {
            "device_id": device_id,
            "group": group,
            "labels": dict(labels or {}),
            "ttl_seconds": ttl_seconds,
        }
        token = self._http.call(
            "POST", "/api/v1/devices/enrollment-tokens", EnrollmentToken, json=body
        )
        return token

    def list_devices(
        self,
        *,
        group: str | None = None,
        online: bool | None = None,
        labels: Mapping[str, str] | None = None,
        include_removed: bool = False,
    ) -> list[DeviceInfo]:
        """Enrolled devices; with ``include_removed``, those removed too (``removed_at``)."""
        params: dict[str, object] = {"group": group, "online": online}
        if include_removed:
            params["include_removed"] = True
        params["label"] = [f"{k}={v}" for k, v in (labels or {}).items()]
        found = self._http.call(
            "GET",
            "/api/v1/devices",
            DeviceList,
            params={k: v for k, v in params.items() if v not in (None, [])},
        )
        return list(found.devices)

    def get_device(self, device_id: str) -> DeviceInfo:
        device = self._http.call("GET", f"/api/v1/devices/{_seg(device_id)}", DeviceInfo)
        return device

    def set_device_labels(
        self, device_id: str, labels: Mapping[str, str], *, group: str | None = None
    ) -> DeviceInfo:
        device = self._http.call(
            "PUT",
            f"/api/v1/devices/{_seg(device_id)}/labels",
            DeviceInfo,
            json={"labels": dict(labels), "group": group},
        )
        return device

    def remove_device(self, device_id: str, *, reason: str = "") -> DeviceInfo:
        """Remove a device from the fleet (admin role): it is disconnected and refused by
        the broker, its unfinished deployment targets are cancelled, its metrics refused.

        Safe to repeat; the answer is the removed device (``removed_at`` set). Enrol it
        again only with a new token made for its id.
        """
        params = {"reason": reason} if reason else None
        device = self._http.call(
            "DELETE", f"/api/v1/devices/{_seg(device_id)}", DeviceInfo, params=params
        )
        return device

    # ---- deployments -----------------------------------------------------------------

    def deploy_model(
        self,
        model: str,
        device_id: str | None = None,
        *,
        version: str | None = None,
        group: str | None = None,
        labels: Mapping[str, str] | None = None,
        strategy: DeploymentStrategy | str = DeploymentStrategy.ALL_AT_ONCE,
        waves: tuple[str, ...] = ("1", "10%", "50%", "100%"),
        success_threshold: float = 1.0,
        error_threshold: float = 0.0,
        auto_rollback: bool = False,
        skip_incompatible: bool = False,
        wait: bool = False,
        timeout: float = 600.0,
        on_progress: Callable[[DeploymentInfo], None] | None = None,
        request_id: str | None = None,
    ) -> DeploymentInfo:
        """Deploy ``model`` to a device (or ``group=``/``labels=``).

        ``version`` is a version or an alias (``"production"``); by default the newest
        version by upload sequence that is validated or analyzed — never a rejected one,
        nor one still validating (the answer's ``version`` says which). With ``wait=True``
        returns when every target has finished.

        ``request_id`` is the idempotency key (sent as ``Idempotency-Key``): calling again
        with the same key and arguments answers the deployment the first call started. By
        default each call makes one; when an answer is lost (connection error, 502/503/504)
        the call is sent again with its key, up to ``ATTEMPTS`` times, so it starts one
        deployment at most.
        """
        target = TargetSelector(
            device_id=device_id, group=group, labels=dict(labels) if labels is not None else None
        )
        body = DeploymentSpec(
            model=model,
            version=version,
            target=target,
            strategy=DeploymentStrategy(strategy),
            waves=waves,
            success_threshold=success_threshold,
            error_threshold=error_threshold,
            auto_rollback=auto_rollback,
            skip_incompatible=skip_incompatible,
        )
        json = body.model_dump(mode="json")
        created = self._keyed("/api/v1/deployments", request_id, json)
        if wait:
            return self.wait_for_deployment(
                created.deployment_id, timeout=timeout, on_progress=on_progress
            )
        return created

    def get_deployment(self, deployment_id: str) -> DeploymentInfo:
        info = self._http.call("GET", f"/api/v1/deployments/{_seg(deployment_id)}", DeploymentInfo)
        return info

    def list_deployments(
        self,
        *,
        model: str | None = None,
        status: str | None = None,
        device_id: str | None = None,
        limit: int = 100,
    ) -> list[DeploymentInfo]:
        params = {"model": model, "status": status, "device_id": device_id, "limit": limit}
        found = self._http.call(
            "GET",
            "/api/v1/deployments",
            DeploymentList,
            params={k: v for k, v in params.items() if v is not None},
        )
        return list(found.deployments)

    def _keyed(self, path: str, request_id: str | None, json: object = None) -> DeploymentInfo:
        """POST with an idempotency key, again with the same key when the answer is lost."""
        headers = {"Idempotency-Key": request_id or new_request_id()}
        for attempt in Retrying(
            retry=retry_if_exception(_lost),
            stop=stop_after_attempt(ATTEMPTS),
            wait=wait_exponential(multiplier=0.5, max=4),
            reraise=True,
        ):
            with attempt:
                return self._http.call("POST", path, DeploymentInfo, json=json, headers=headers)
        raise AssertionError("unreachable")  # pragma: no cover (reraise=True)

    def _act(self, deployment_id: str, verb: str) -> DeploymentInfo:
        info = self._http.call(
            "POST", f"/api/v1/deployments/{_seg(deployment_id)}/{verb}", DeploymentInfo
        )
        return info

    def pause_deployment(self, deployment_id: str) -> DeploymentInfo:
        return self._act(deployment_id, "pause")

    def resume_deployment(self, deployment_id: str) -> DeploymentInfo:
        return self._act(deployment_id, "resume")

    def cancel_deployment(self, deployment_id: str) -> DeploymentInfo:
        return self._act(deployment_id, "cancel")

    def rollback_deployment(
        self, deployment_id: str, *, request_id: str | None = None
    ) -> DeploymentInfo:
        """Return the deployment's devices to their previous model; the rollback deployment.

        ``request_id`` is the idempotency key, as for ``deploy_model`` (one per call by
        default, kept across the call's own retries)."""
        return self._keyed(f"/api/v1/deployments/{_seg(deployment_id)}/rollback", request_id)

    def wait_for_deployment(
        self,
        deployment_id: str,
        *,
        timeout: float = 600.0,
        interval: float = 0.5,
        on_progress: Callable[[DeploymentInfo], None] | None = None,
    ) -> DeploymentInfo:
        """Poll until the deployment completes; ``on_progress`` sees every poll."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.get_deployment(deployment_id)
            if on_progress is not None:
                on_progress(info)
            if info.status is DeploymentStatus.COMPLETED:
                return info
            if time.monotonic() > deadline:
                raise DeploymentTimeoutError(deployment_id, timeout)
            time.sleep(interval)
