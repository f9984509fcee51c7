"""Which queued device reports the deployer may replace by a newer one."""

from __future__ import annotations

from schemas.events import TargetState
from schemas.transfer import ActiveModel, DeploymentProgress, DeviceState
from services.deployer.reports import _only_progress


def state(step: TargetState, chunks: int, *, deployment: str = "d1", **kw: object) -> DeviceState:
    progress = DeploymentProgress(
        deployment_id=deployment, state=step, chunks_received=chunks, chunk_count=10
    )
    return DeviceState.model_validate(
        {"device_id": "dev-1", "reported_at": chunks, "deployment": progress, **kw}
    )


def test_more_chunks_of_the_same_step_replace_the_queued_report() -> None:
    assert _only_progress(state(TargetState.DOWNLOADING, 2), state(TargetState.DOWNLOADING, 5))


def test_a_transition_or_another_deployment_is_never_replaced() -> None:
    downloading = state(TargetState.DOWNLOADING, 2)
    assert not _only_progress(downloading, state(TargetState.VERIFYING, 10))
    assert not _only_progress(downloading, state(TargetState.DOWNLOADING, 5, deployment="d2"))
    active = ActiveModel(model="m", version="1", sequence=1, artifact_id="ab" * 32)
    assert not _only_progress(downloading, state(TargetState.DOWNLOADING, 5, active=active))
    no_deployment = DeviceState(device_id="dev-1", reported_at=1)
    assert not _only_progress(no_deployment, no_deployment)
