"""The FP32 reference trial as a baseline: ``--max-map-drop`` constraints, and models that detect nothing."""

from __future__ import annotations

import optuna

from yolotune.errors import YolotuneError
from yolotune.search._candidate import CandidateResult
from yolotune.search._study import constraints_of
from yolotune.studies._front import fp32_reference

__all__ = [
    "QUEUED_BEHIND_FP32",
    "QUEUED_FOR_PAIRING",
    "UNTRAINED_MAP50_95",
    "WaitsForBaseline",
    "baseline_failed",
    "baseline_map",
    "check_baseline",
    "set_constraints",
    "untrained",
    "untrained_study",
    "waits_for_baseline",
]


def baseline_map(study: optuna.Study) -> float | None:
    """The FP32 reference trial's mAP50-95, once it has completed (``None`` before)."""
    base = fp32_reference(study)
    return None if base is None else float(base.values[0])


UNTRAINED_MAP50_95 = 0.001
"""An uncompressed model scoring under this mAP50-95 detects nothing on the data: a search over it measures nothing."""


def untrained(map50_95: float) -> str:
    """Why an uncompressed model's mAP50-95 makes compressing it meaningless (one line), or ``""``."""
    if map50_95 >= UNTRAINED_MAP50_95:
        return ""
    return (
        f"the uncompressed model scores mAP50-95 {map50_95:.3f} on these validation images: it is untrained, "
        "trained for other data, or run at an input size far from its training size (--imgsz), so no plan can be "
        "measured against it; pass the trained checkpoint (runs/detect/<name>/weights/best.pt), the data it was "
        "trained for, and an --imgsz near its training size"
    )


def untrained_study(study: optuna.Study) -> str:
    """``untrained`` of the study's FP32 reference trial, once it has completed."""
    base = baseline_map(study)
    return "" if base is None else untrained(base)


class WaitsForBaseline(YolotuneError):
    """A trial finished before the FP32 reference whose mAP its ``--max-map-drop`` constraint needs."""


QUEUED_BEHIND_FP32 = "queued again behind the FP32 reference: --max-map-drop needs its mAP"
#: Why a trial asked for before a queued FP32 reference waits for it when speed-ups are paired (``time_reference``).
QUEUED_FOR_PAIRING = "queued again behind the FP32 reference: its speed-up is timed beside the reference's file"


def waits_for_baseline(study: optuna.Study, *, running: bool = False, paired: bool = False) -> bool:
    """Whether trials should wait for the FP32 reference: needed, not complete, and still to come.

    Needed: ``--max-map-drop`` is set, or (``paired``) each trial's speed-up is timed beside the
    reference's file. Still to come: queued (or, with ``running``, being built); a reference that
    failed for good makes nothing wait.
    """
    needed = paired or constraints_of(study)["max_map_drop"] is not None
    if not needed or baseline_map(study) is not None:
        return False
    states = (optuna.trial.TrialState.WAITING, *((optuna.trial.TrialState.RUNNING,) if running else ()))
    return any(t.user_attrs.get("reference") == "fp32" for t in study.get_trials(deepcopy=False, states=states))


def baseline_failed(study: optuna.Study) -> str:
    """Why ``--max-map-drop`` cannot be applied in this run (one line), or ``""``.

    The FP32 reference trial failed and no run of it is queued or running: every later candidate
    would be built, timed and then failed for want of its mAP, each naming the wrong cause.
    """
    if constraints_of(study)["max_map_drop"] is None or baseline_map(study) is not None:
        return ""
    fp32 = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("reference") == "fp32"]
    state = optuna.trial.TrialState
    if not fp32 or any(t.state in (state.WAITING, state.RUNNING) for t in fp32) or fp32[-1].state != state.FAIL:
        return ""
    reason = str(fp32[-1].user_attrs.get("fail_reason", "no reason recorded")).rstrip(".")
    return (
        f"the FP32 reference trial {fp32[-1].number} failed ({reason}), and --max-map-drop measures every plan "
        "against its mAP: fix that and run the same command (the reference runs first), or start another --study "
        "without --max-map-drop"
    )


def check_baseline(study: optuna.Study, trial: optuna.Trial) -> None:
    """Raise ``WaitsForBaseline`` when ``trial``'s ``--max-map-drop`` constraint needs an FP32 mAP not measured yet."""
    needed = constraints_of(study)["max_map_drop"] is not None and trial.user_attrs.get("reference") != "fp32"
    if needed and baseline_map(study) is None:
        raise WaitsForBaseline("--max-map-drop needs the FP32 reference trial, which has not completed")


def set_constraints(study: optuna.Study, trial: optuna.Trial, result: CandidateResult) -> None:
    """Set ``trial``'s Optuna constraints (``map_drop``, ``latency``: feasible when ≤ 0) from the study's limits.

    Raises:
        WaitsForBaseline: ``--max-map-drop`` needs the FP32 reference's mAP, not measured yet.
    """
    limits = constraints_of(study)
    check_baseline(study, trial)
    if limits["max_map_drop"] is not None:
        is_baseline = trial.user_attrs.get("reference") == "fp32"
        base = result.accuracy.map50_95 if is_baseline else baseline_map(study)
        assert base is not None  # check_baseline
        trial.set_constraint("map_drop", (base - result.accuracy.map50_95) - limits["max_map_drop"])
    if limits["max_latency_ms"] is not None:
        trial.set_constraint("latency", result.latency.median_ms - limits["max_latency_ms"])
