"""The deployer: device enrolment and registry, rollouts, the MQTT chunk server."""

__all__: list[str] = []
