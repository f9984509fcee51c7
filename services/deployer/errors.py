"""The deployer's errors; each travels over RPC as a ``ServiceError`` with an HTTP status."""

from __future__ import annotations

from services.common.errors import BadRequest, Conflict, Forbidden, NotFound, ServiceUnavailable

__all__ = [
    "DeploymentNotFound",
    "DeviceIdTaken",
    "DeviceNotFound",
    "DeviceRemovalIncomplete",
    "DeviceWasRemoved",
    "EnrollmentRefused",
    "IncompatibleDevices",
    "NoTargets",
    "NotDeployable",
    "WrongDeploymentState",
]


class DeviceNotFound(NotFound):
    def __init__(self, device_id: str) -> None:
        super().__init__(f"device {device_id!r} is not enrolled: list devices to see which are")


class DeviceWasRemoved(Conflict):
    def __init__(self, device_id: str, action: str) -> None:
        super().__init__(
            f"device {device_id!r} was removed from the fleet: cannot {action}; enrol it again "
            "with a new token made for it"
        )


class DeviceRemovalIncomplete(ServiceUnavailable):
    def __init__(self, device_id: str, step: str, error: str) -> None:
        super().__init__(
            f"device {device_id!r} is marked removed, but {step} failed ({error}): remove it "
            "again to finish (a repeat is safe)"
        )


class DeploymentNotFound(NotFound):
    def __init__(self, deployment_id: str) -> None:
        super().__init__(f"deployment {deployment_id!r} does not exist")


class EnrollmentRefused(Forbidden):
    def __init__(self, reason: str) -> None:
        super().__init__(f"enrolment refused: {reason}; ask an administrator for a new token")


class DeviceIdTaken(Forbidden):
    """A token without a device id was offered for an id that is enrolled already.

    Forbidden, not a conflict: the token is valid, but only a token made for that id
    carries the right to replace an enrolled device's credentials and key.
    """

    def __init__(self, device_id: str) -> None:
        super().__init__(
            f"enrolment refused: device {device_id!r} is enrolled already and this token was "
            "not made for it (a token without a device id enrols only new device ids). To "
            "re-enrol this device, ask an admin for a token made for this device id "
            f"(edgeaiforge device token --device-id {device_id}); a new device needs an id "
            "that is not taken. The token was not used"
        )


class NotDeployable(Conflict):
    def __init__(self, model: str, version: str, status: str) -> None:
        super().__init__(
            f"{model}@{version} is {status}: only validated or analyzed versions deploy; "
            "wait for validation or pick another version"
        )


class NoTargets(BadRequest):
    def __init__(self, selector: str) -> None:
        super().__init__(
            f"no enrolled device matches {selector}: check the device id, group or labels"
        )


class IncompatibleDevices(Conflict):
    def __init__(self, problems: dict[str, str]) -> None:
        self.problems = problems
        listed = "; ".join(f"{d}: {p}" for d, p in sorted(problems.items())[:10])
        super().__init__(
            f"{len(problems)} device(s) cannot run this model ({listed}); nothing was sent. "
            "Update their runtime, or pass skip_incompatible to leave them out"
        )


class WrongDeploymentState(Conflict):
    def __init__(self, deployment_id: str, status: str, action: str) -> None:
        super().__init__(f"deployment {deployment_id} is {status}: cannot {action} it")
