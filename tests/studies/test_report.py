from __future__ import annotations

import json
import re
import statistics
from pathlib import Path
from typing import Any

import optuna
import plotly
import pytest
from optuna.distributions import FloatDistribution
from optuna.study import StudyDirection
from optuna.trial import TrialState, create_trial

from yolotune import YolotuneError
from yolotune.studies import pareto_front, write_report

DIRECTIONS = [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE, StudyDirection.MINIMIZE]
BANNER = f"* plotly.js v{plotly.offline.get_plotlyjs_version()}"
CANDIDATE_PLAN = {
    "pruning": {"ratios": {"backbone.7": 0.25, "neck.16": 0.5}, "importance": "l2", "round_to": 8},
    "quantization": {"default": "int8", "precision": {"head.cv2.0": "fp32"}, "calibration_images": 32},
    "recovery": {"epochs": 0, "lr": 0.0001},
}


def _add(study: optuna.Study, values: list[float] | None, state: TrialState = TrialState.COMPLETE, **attrs: Any) -> int:
    system_attrs = attrs.pop("system_attrs", None)
    study.add_trial(
        create_trial(
            state=state,
            values=values,
            params={"x": 0.5},
            distributions={"x": FloatDistribution(0.0, 1.0)},
            user_attrs=attrs,
            system_attrs=system_attrs,
        )
    )
    return study.get_trials(deepcopy=False)[-1].number


@pytest.fixture
def study(tmp_path: Path) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", study_name="demo", directions=DIRECTIONS)
    st.set_user_attr("job", {"model": "yolov8n.pt", "data": "coco8.yaml", "imgsz": 320, "target": "cpu"})
    st.set_user_attr("constraints", {"max_map_drop": 0.01, "max_latency_ms": 8.0, "max_size_mb": None})
    _add(st, [0.37, 12.0, 20.0], reference="fp32", brief="fp32 baseline", plan={})
    _add(st, [0.36, 3.2, 9.0], reference="int8", brief="int8 everywhere", plan={"quantization": {"default": "int8"}})
    _add(
        st,
        [0.365, 8.0, 12.0],
        reference="seeds",
        brief="seed prune 10%",
        plan={"pruning": {"ratios": {"backbone.2": 0.1, "backbone.10": 0.1}}},
    )
    _add(st, [0.33, 2.5, 6.0], brief="prune <b>bold</b> + int8", plan=CANDIDATE_PLAN)
    _add(st, [0.30, 4.0, 10.0], brief="dominated one", plan=CANDIDATE_PLAN)  # dominated by the int8 reference
    _add(st, None, state=TrialState.FAIL, brief="broken", fail_reason="onnxruntime said <no> & gave up")
    _add(st, [0.31, 2.0, 5.0], brief="too slow", system_attrs={"constraints:latency": 1.0})  # infeasible
    _add(st, [0.34, 2.8, 7.0])  # no user attrs at all
    return st


def _front_table(text: str) -> str:
    match = re.search(r'<table class="front">.*?</table>', text, re.S)
    assert match, "front table missing"
    return match.group(0)


def test_report_is_one_self_contained_page(study: optuna.Study, tmp_path: Path) -> None:
    out = write_report(study, tmp_path / "nested" / "dir" / "report.html")

    assert out == tmp_path / "nested" / "dir" / "report.html"
    assert out.is_file() and [p.name for p in out.parent.iterdir()] == ["report.html"]  # no partial file left
    with pytest.raises(YolotuneError, match=r"cannot write the report to .*/report.html/r.html: File exists; pass"):
        write_report(study, out / "r.html")
    text = out.read_text(encoding="utf-8")
    assert text.count(BANNER) == 1
    assert "<script src" not in text  # nothing fetched when the page opens
    # header: name, states, job, constraints
    assert "<h1>demo</h1>" in text
    assert "COMPLETE 7" in text and "FAIL 1" in text
    assert "yolov8n.pt" in text and "coco8.yaml" in text
    assert "max_latency_ms ≤ 8.0" in text and "max_size_mb" not in text
    for anchor in ("front", "scatter", "objectives-3d", "hypervolume", "groups", "failed"):
        assert f'<section id="{anchor}">' in text


def test_front_table_failures_and_traces(study: optuna.Study, tmp_path: Path) -> None:
    text = write_report(study, tmp_path / "report.html").read_text(encoding="utf-8")
    table = _front_table(text)
    front = {r.number for r in pareto_front(study)}
    assert front == {0, 1, 2, 3, 7}
    for number in front:
        assert f'data-trial="{number}"' in table
    assert 'data-trial="4"' not in table  # dominated
    assert 'data-trial="6"' not in table  # infeasible
    rows = re.findall(r'data-trial="(\d+)"', table)
    assert rows == ["3", "7", "1", "2", "0"]  # sorted by latency
    assert "prune &lt;b&gt;bold&lt;/b&gt; + int8" in table and "<b>bold</b>" not in text
    assert "onnxruntime said &lt;no&gt; &amp; gave up" in text
    for name in ("reference: fp32", "reference: int8", "reference: seeds", "Pareto front", "infeasible"):
        assert f'"name":"{name}"' in text
    # per-group heatmaps: groups sorted backbone → neck → head, numerically
    assert '["backbone.2","backbone.7","backbone.10","neck.16","head.cv2.0","other groups"]' in text
    assert "Reference point: mAP50-95 0, size MB 13.2, latency ms 22." in text


def test_report_of_a_study_with_too_few_trials(tmp_path: Path) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", directions=DIRECTIONS)
    text = write_report(st, tmp_path / "empty.html").read_text(encoding="utf-8")
    assert text.count(BANNER) == 1
    assert "Needs at least 2 COMPLETE trials." in text and "No failed trial." in text

    _add(st, [0.3, 3.0, 5.0])
    text = write_report(st, tmp_path / "one.html").read_text(encoding="utf-8")
    assert 'data-trial="0"' in _front_table(text)
    assert "Needs at least 2 COMPLETE trials." in text
    # the versions of yolotune's steps a job records are labelled as such, not as settings of the trials
    st.set_user_attr("job", {"imgsz": 320, "calibration": "entropy-kl512", "pruning": "round-nearest"})
    text = write_report(st, tmp_path / "formats.html").read_text(encoding="utf-8")
    assert "<dt>calibration format</dt><dd>entropy-kl512</dd>" in text and "<dt>calibration</dt>" not in text
    assert "<dt>pruning format</dt><dd>round-nearest</dd>" in text and "<dt>imgsz</dt><dd>320</dd>" in text


def test_rung0_table_names_the_stand_ins_and_what_was_not_timed(tmp_path: Path) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", directions=DIRECTIONS)
    stand_ins = {"recovery": "bn", "calibration": "minmax"}
    rung0 = {"map50_95": 0.2, "latency_ms": 6.1, "size_bytes": 2_000_000, "stand_ins": stand_ins}
    _add(st, None, TrialState.PRUNED, fidelity="rung0", rung0=rung0, brief="ls + percentile")
    untimed = {"map50_95": 0.0, "latency_ms": None, "size_bytes": 2_000_000, "stand_ins": {}, "not_timed": "far"}
    _add(st, None, TrialState.PRUNED, fidelity="rung0", rung0=untimed, brief="destroyed")
    older = {"map50_95": 0.1, "latency_ms": 7.0, "size_bytes": 2_000_000, "recovery_proxy": "bn"}  # before stand_ins
    _add(st, None, TrialState.PRUNED, fidelity="rung0", rung0=older, brief="older study")
    section = write_report(st, tmp_path / "r.html").read_text(encoding="utf-8").split('id="rung0"')[1]
    rows = dict(re.findall(r'data-trial="(\d+)">(.*?)</tr>', section.split("</section>")[0], re.S))
    assert "bn recovery, minmax calibration" in rows["0"]
    assert ">none<" in rows["1"] and ">—<" in rows["1"]  # not timed: no latency
    assert "bn recovery" in rows["2"]


def _figures(text: str) -> dict[str, list[dict[str, Any]]]:
    """Each plotly figure's traces, by title."""
    figures = {}
    decoder = json.JSONDecoder()
    for call in re.finditer(r'Plotly\.newPlot\(\s*"[^"]+",\s*', text):
        data, end = decoder.raw_decode(text, call.end())
        layout, _ = decoder.raw_decode(text, re.compile(r",\s*").match(text, end).end())
        figures[layout["title"]["text"]] = data
    return figures


def test_the_front_is_plotted_on_what_it_was_found_on(study: optuna.Study, tmp_path: Path) -> None:
    from yolotune.studies import Retiming
    from yolotune.studies._retimed import RETIMED_ATTR

    # before any re-timing the front is found on the trials' own latencies: plotted on them
    figures = _figures(write_report(study, tmp_path / "before.html").read_text(encoding="utf-8"))
    assert "mAP50-95 against latency ms" in figures and "mAP50-95 against speed vs FP32 ×" not in figures
    # re-timed, the front is found on the median per-round speed-ups: plotted on those
    retiming = Retiming(
        reference_trial=0,
        trials=(1, 3),
        complete=7,
        reference_ms=(20.0, 20.0),
        timings={1: (9.0, 9.0), 3: (6.0, 7.0)},
    )
    study.set_user_attr(RETIMED_ATTR, retiming.to_dict())
    figures = _figures(write_report(study, tmp_path / "after.html").read_text(encoding="utf-8"))
    speed = figures["mAP50-95 against speed vs FP32 ×"]
    plotted = {n: x for trace in speed for (n, _), x in zip(trace["customdata"], trace["x"], strict=True)}
    assert plotted[3] == pytest.approx(statistics.median([20 / 6, 20 / 7])) and plotted[1] == pytest.approx(20 / 9)
    assert plotted[7] == pytest.approx(20 / 7.0)  # not re-timed: the reference trial's own timing
    assert set(plotted) == {0, 1, 2, 3, 4, 6, 7}  # every COMPLETE trial
    assert "mAP50-95 against latency ms" not in figures and "mAP50-95 against size MB" in figures
