"""The analyzer diffs a version against the one uploaded before it, as the registry and
the tracker order versions; analyses from before uploads carried their sequence fall back
to the highest semantic version below."""

from __future__ import annotations

from services.analyzer.domain import previous_analysis
from services.analyzer.store import AnalysisEntry


def _past(*versions: tuple[str, int | None]) -> list[AnalysisEntry]:
    return [AnalysisEntry(id=i, version=v, sequence=s) for i, (v, s) in enumerate(versions, 1)]


def _previous(past: list[AnalysisEntry], version: str, sequence: int | None) -> str | None:
    found = previous_analysis(past, version=version, sequence=sequence)
    return None if found is None else found.version


def test_a_hotfix_uploaded_after_a_major_is_diffed_against_the_major() -> None:
    past = _past(("1.0.0", 1), ("2.0.0", 2))
    assert _previous(past, "1.0.1", 3) == "2.0.0"


def test_upload_order_is_numeric_and_ignores_later_uploads() -> None:
    past = _past(("1.0.0", 9), ("1.1.0", 10), ("3.0.0", 12))
    # 2.0.0 analysed again (a redelivery) after 3.0.0 came: still against 1.1.0.
    assert _previous(past, "2.0.0", 11) == "1.1.0"
    assert _previous(past, "1.1.0", 10) == "1.0.0"  # its own analysis is not a candidate
    assert _previous(past, "1.2.0", 13) == "3.0.0"


def test_a_first_upload_has_no_previous_version() -> None:
    assert _previous([], "1.0.0", 1) is None
    assert _previous(_past(("1.0.0", 1)), "1.0.0", 1) is None
    assert _previous(_past(("2.0.0", 5)), "1.0.0", 4) is None


def test_analyses_without_a_sequence_count_only_when_no_later_upload_does() -> None:
    # Made before the analyzer recorded sequences: ordered by semantic version.
    old = _past(("1.0.0", None), ("2.0.0", None))
    assert _previous(old, "1.0.1", 3) == "1.0.0"
    assert _previous(old, "3.0.0", 3) == "2.0.0"
    # Once an analysis with a sequence is below, it is the one uploaded just before.
    mixed = [*old, AnalysisEntry(id=3, version="1.5.0", sequence=3)]
    assert _previous(mixed, "1.0.1", 4) == "1.5.0"
    # Only later uploads carry a sequence: the older rule among the older analyses.
    assert _previous(mixed, "1.2.0", 2) == "1.0.0"


def test_an_event_without_a_sequence_uses_the_semver_rule_over_all() -> None:
    past = _past(("1.0.0", 1), ("2.0.0", 2), ("1.0.1", 3))
    assert _previous(past, "1.5.0", None) == "1.0.1"
    assert _previous(past, "0.9.0", None) is None


def test_versions_that_are_not_semantic_fall_back_to_the_last_analysed() -> None:
    past = _past(("b", None), ("a", None))
    assert _previous(past, "c", None) == "a"
