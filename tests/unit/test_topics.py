"""MQTT topic builders refuse ids that would escape their topic level."""

import pytest

from schemas.topics import InvalidIdentifierError, TopicKind, Topics, validate_device_id

T = Topics()
SHA = "ab" * 32


@pytest.mark.parametrize("bad", ["", "a/b", "a+", "#", "dev#1", "+", "../x", " dev", "d" * 129])
def test_bad_device_ids_are_refused(bad: str) -> None:
    with pytest.raises(InvalidIdentifierError):
        T.desired(bad)
    with pytest.raises(InvalidIdentifierError):
        validate_device_id(bad)


def test_builders_and_parser_round_trip() -> None:
    cases = {
        T.desired("cam-01"): (TopicKind.DESIRED, "cam-01"),
        T.state("cam-01"): (TopicKind.STATE, "cam-01"),
        T.online("cam-01"): (TopicKind.ONLINE, "cam-01"),
        T.metrics("cam-01"): (TopicKind.METRICS, "cam-01"),
        T.device_chunks("cam-01"): (TopicKind.DEVICE_CHUNKS, "cam-01"),
        T.artifact_get(SHA): (TopicKind.ARTIFACT_GET, SHA),
        T.artifact_chunks(SHA): (TopicKind.ARTIFACT_CHUNKS, SHA),
    }
    for topic, (kind, ident) in cases.items():
        assert topic.startswith("eaf/v1/")
        parsed = T.parse(topic)
        assert (parsed.kind, parsed.ident) == (kind, ident)
    assert T.desired("cam-01") == "eaf/v1/devices/cam-01/desired"


@pytest.mark.parametrize(
    "topic",
    [
        "other/devices/x/state",
        "eaf/v1/devices/x/unknown",
        "eaf/v1/devices/x/y/state",
        "eaf/v1/artifacts/notasha/get",
        "eaf/v1/devices/+/state",
    ],
)
def test_parser_refuses_foreign_topics(topic: str) -> None:
    with pytest.raises(ValueError):
        T.parse(topic)
