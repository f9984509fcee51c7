"""The deployer's request/reply subjects (``schemas.deployer.DeployerRpc``), each served
by one use case of the ``Deployer``. The bus parses the request and sends the reply."""

from __future__ import annotations

from schemas.deployer import DeployerRpc as D
from services.common.bus import Bus
from services.deployer.service import Deployer

__all__ = ["register"]


def register(bus: Bus, deployer: Deployer) -> None:
    """Serve every ``eaf.rpc.deployer.*`` subject on ``bus``."""
    d = deployer
    bus.serve(D.CREATE_ENROLLMENT_TOKEN, d.create_enrollment_token)
    bus.serve(D.ENROLL, d.enroll)
    bus.serve(D.LIST_DEVICES, d.list_devices)
    bus.serve(D.GET_DEVICE, lambda r: d.get_device(r.device_id))
    bus.serve(D.SET_LABELS, d.set_labels)
    bus.serve(D.REMOVE_DEVICE, d.remove_device)
    bus.serve(D.CREATE_DEPLOYMENT, d.create_deployment)
    bus.serve(D.LIST_DEPLOYMENTS, d.list_deployments)
    bus.serve(D.GET_DEPLOYMENT, lambda r: d.get_deployment(r.deployment_id))
    bus.serve(D.PAUSE, lambda r: d.pause(r.deployment_id))
    bus.serve(D.RESUME, lambda r: d.resume(r.deployment_id))
    bus.serve(D.CANCEL, lambda r: d.cancel(r.deployment_id))
    bus.serve(D.ROLLBACK, lambda r: d.rollback(r.deployment_id, r.request_id))
    bus.serve(D.VERSIONS_IN_USE, d.versions_in_use)
