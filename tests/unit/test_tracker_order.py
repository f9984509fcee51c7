"""The tracker orders versions as the registry uploaded them, never as strings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.tracker.domain import order_versions

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_upload_order_wins_over_string_and_semver_order() -> None:
    # 1.10.0 sorts before 1.9.0 as a string; the hotfix 1.0.1 came after 2.0.0.
    sequence = {"1.9.0": 1, "1.10.0": 2, "2.0.0": 3, "1.0.1": 4}
    assert order_versions(["1.0.1", "1.10.0", "2.0.0", "1.9.0"], sequence) == [
        "1.9.0",
        "1.10.0",
        "2.0.0",
        "1.0.1",
    ]


def test_versions_the_registry_forgot_come_first_by_their_first_point() -> None:
    first = {"0.9.0": T0 + timedelta(minutes=5), "0.8.0": T0, "1.0.0": T0}
    ordered = order_versions(first, {"1.0.0": 7}, first)
    assert ordered == ["0.8.0", "0.9.0", "1.0.0"]


def test_without_an_order_versions_are_listed_by_name_once_each() -> None:
    assert order_versions(["b", "a", "b"], {}) == ["a", "b"]
