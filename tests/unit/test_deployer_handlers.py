"""The deployer's RPC table serves each subject of ``schemas.deployer`` once."""

from __future__ import annotations

from schemas.deployer import SUBJECTS
from services.deployer.handlers import RPCS


def test_every_deployer_subject_is_served_once_with_a_description() -> None:
    assert sorted(rpc.subject for rpc in RPCS) == sorted(SUBJECTS.values())
    assert all(rpc.doc for rpc in RPCS)
