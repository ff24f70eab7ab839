from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from yolotune import YolotuneError
from yolotune.search import CandidateSettings, SearchConfig, plan_of, run_search


def _dominates(a: list[float], b: list[float]) -> bool:
    better_or_equal = a[0] >= b[0] and a[1] <= b[1] and a[2] <= b[2]
    return better_or_equal and a != b


def test_search_completes_trials_yields_a_front_and_resumes(tmp_path: Path) -> None:
    config = SearchConfig(
        model="yolov8n-coco.pt", data="coco8", budget=4, settings=CandidateSettings(imgsz=160), root=tmp_path
    )
    study = run_search(config)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 4
    assert [t.user_attrs.get("reference") for t in complete[:3]] == ["fp32", "int8", "seeds"]
    assert study.metric_names == ["mAP50-95", "size MB", "latency ms"]
    front = study.best_trials
    assert front
    for t in front:
        assert not any(_dominates(o.values, t.values) for o in complete)
        assert Path(t.user_attrs["artifact"]).is_file()
    # a recorded trial's params rebuild its plan
    from yolotune.search._driver import _space

    space = _space(config)
    for t in complete:
        assert space(optuna.trial.FixedTrial(t.params)) == plan_of(t)

    # the same command with a larger budget resumes the same study
    again = run_search(SearchConfig(**{**config.__dict__, "budget": 5}))
    after = again.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(after) == 5
    assert [t.values for t in after[:4]] == [t.values for t in complete]


def test_refused_candidates_are_recorded_as_failed_and_the_search_goes_on(tmp_path: Path) -> None:
    # a calibration budget no INT8 plan fits: every INT8 candidate is refused, FP32 ones complete
    settings = CandidateSettings(imgsz=160, calibration_memory_gb=0.01)
    config = SearchConfig(model="yolov8n-coco.pt", data="coco8", budget=2, settings=settings, root=tmp_path)
    study = run_search(config, max_failures=2)
    failed = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 1 and complete[0].user_attrs["reference"] == "fp32"
    assert len(failed) == 2 and all("over the 0.01 GB budget" in t.user_attrs["fail_reason"] for t in failed)


def test_bad_search_arguments() -> None:
    with pytest.raises(YolotuneError, match="--budget must be a positive number"):
        SearchConfig(model="m.pt", data="coco8", budget=0)
    with pytest.raises(YolotuneError, match="cannot open storage 'nosuchdb://x'"):
        from yolotune.studies import open_storage

        open_storage("nosuchdb://x")
