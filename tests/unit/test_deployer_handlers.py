"""The deployer serves each subject ``schemas.deployer.DeployerRpc`` declares, once."""

from __future__ import annotations

from faststream.nats.subscriber.usecases import LogicSubscriber

from schemas.config import NatsConfig
from schemas.deployer import DeployerRpc
from schemas.rpc import Rpc, health_rpc
from services.common.bus import Bus
from services.deployer.handlers import create_router
from services.deployer.service import Deployer


def test_every_declared_deployer_subject_is_served_once_with_a_description() -> None:
    declared = [v for v in vars(DeployerRpc).values() if isinstance(v, Rpc)]
    bus = Bus(NatsConfig(), service="deployer")  # never started: only the subscriptions
    bus.include(create_router(Deployer.__new__(Deployer), NatsConfig()))
    health = health_rpc("deployer").subject
    served = [
        subject
        for s in bus.broker.subscribers
        if isinstance(s, LogicSubscriber)  # the NATS subscribers, which have a subject
        and (subject := s.subject.broker_address).startswith("eaf.rpc.")
        and subject != health
    ]
    assert sorted(served) == sorted(r.subject for r in declared)
    assert all(r.summary for r in declared)
