"""The deployer's pure rules: wave plans, hawkBit thresholds, preflight, state order."""

from __future__ import annotations

from schemas.deployer import Capabilities
from schemas.events import DeploymentOutcome
from schemas.events import TargetState as S
from schemas.reports import DeviceRequirements
from services.deployer.domain import (
    WaveVerdict,
    advances,
    assign_waves,
    evaluate_wave,
    final_outcome,
    plan_waves,
    preflight,
)


def test_wave_plan_is_cumulative_and_takes_the_rest() -> None:
    assert plan_waves(20, ["1", "10%", "50%", "100%"]) == [1, 2, 10, 20]
    assert plan_waves(3, ["1", "10%", "50%"]) == [1, 2, 3]
    assert plan_waves(1, ["1", "10%", "100%"]) == [1]
    assert plan_waves(5, ["2"]) == [2, 5]


def test_waves_are_assigned_in_a_stable_order() -> None:
    waves = assign_waves(["c", "a", "b", "d"], [1, 3, 4])
    assert waves == {"a": 0, "b": 1, "c": 1, "d": 2}


def test_thresholds() -> None:
    rule = {"success_threshold": 0.5, "error_threshold": 0.25}
    assert (
        evaluate_wave([S.ACTIVE, S.ACTIVE, S.DOWNLOADING, S.PENDING], **rule) is WaveVerdict.ADVANCE
    )
    assert evaluate_wave([S.ACTIVE, S.FAILED, S.DOWNLOADING, S.PENDING], **rule) is WaveVerdict.WAIT
    assert (
        evaluate_wave([S.ROLLED_BACK, S.TIMED_OUT, S.ACTIVE, S.ACTIVE], **rule) is WaveVerdict.STOP
    )
    strict = {"success_threshold": 1.0, "error_threshold": 0.0}
    assert evaluate_wave([S.ACTIVE, S.FAILED], **strict) is WaveVerdict.STOP


def test_reports_never_move_a_target_backwards_or_out_of_a_final_state() -> None:
    assert advances(S.NOTIFIED, S.DOWNLOADING)
    assert advances(S.DOWNLOADING, S.ACTIVE)
    assert not advances(S.VERIFYING, S.DOWNLOADING)
    assert not advances(S.ACTIVE, S.FAILED)
    assert not advances(S.CANCELLED, S.ACTIVE)


def test_preflight_names_what_is_missing() -> None:
    caps = Capabilities(onnxruntime_version="1.16.0", opsets={"ai.onnx": 19, "ai.onnx.ml": 3})
    ok = DeviceRequirements(opsets={"ai.onnx": 17}, operators=("ai.onnx::Add",), ir_version=8)
    assert preflight(caps, ok) is None
    assert preflight(caps, None) is None
    high = DeviceRequirements(opsets={"ai.onnx": 21}, operators=(), ir_version=9)
    assert "opset 21" in (preflight(caps, high) or "")
    custom = DeviceRequirements(
        opsets={"ai.onnx": 17, "com.microsoft": 1}, operators=("com.microsoft::Gelu",), ir_version=8
    )
    assert "com.microsoft" in (preflight(caps, custom) or "")
    assert "older" in (preflight(caps, ok, min_onnxruntime="1.17") or "")


def test_cancelled_targets_of_removed_devices_count_neither_way() -> None:
    strict = {"success_threshold": 1.0, "error_threshold": 0.0}
    assert evaluate_wave([S.ACTIVE, S.CANCELLED], **strict) is WaveVerdict.ADVANCE
    assert evaluate_wave([S.CANCELLED, S.CANCELLED], **strict) is WaveVerdict.ADVANCE
    assert evaluate_wave([S.DOWNLOADING, S.CANCELLED], **strict) is WaveVerdict.WAIT
    assert evaluate_wave([S.FAILED, S.CANCELLED], **strict) is WaveVerdict.STOP
    assert final_outcome([S.ACTIVE, S.CANCELLED]) is DeploymentOutcome.SUCCEEDED
    assert final_outcome([S.ACTIVE, S.FAILED, S.CANCELLED]) is DeploymentOutcome.FAILED
    assert final_outcome([S.CANCELLED]) is DeploymentOutcome.CANCELLED
