from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState, create_trial

from yolotune.studies import Retiming, summarize, write_report
from yolotune.studies._retimed import RETIMED_ATTR


def _study() -> optuna.Study:
    return optuna.create_study(directions=["maximize", "minimize", "minimize"])


def _add(study: optuna.Study, values: list[float] | None = None, state: TrialState = TrialState.COMPLETE, **attrs: Any):
    study.add_trial(create_trial(state=state, values=values, user_attrs=attrs))


def test_a_summary_counts_by_state_and_lists_only_the_failures_not_run_again() -> None:
    study = _study()
    study.set_user_attr("constraints", {"max_map_drop": 0.05, "max_latency_ms": None})
    int8 = {"quantization": {"default": "int8"}}
    pruned = {"pruning": {"ratios": {"neck.16": 0.25}}}
    _add(study, [0.35, 12.0, 14.0], reference="fp32")  # 0
    _add(study, [0.20, 3.0, 5.0])  # 1: 0.15 under FP32, yet told feasible here (no constraint recorded on it)
    _add(study, state=TrialState.FAIL, fail_reason="quantize: NaN", plan=pruned)  # 2: its plan only stopped at rung 0
    _add(study, state=TrialState.FAIL, fail_reason="interrupted")  # 3
    _add(study, state=TrialState.FAIL, fail_reason="interrupted", retry_of=3)  # 4
    _add(study, [0.1, 2.0, 3.0], state=TrialState.PRUNED, retry_of=4, plan=pruned)  # 5: 3's plan ran again, to rung 0
    _add(study, state=TrialState.FAIL, fail_reason="worker died", reference="seeds")  # 6
    _add(study, state=TrialState.FAIL, fail_reason="out of memory", plan=int8)  # 7: its plan completed later,
    _add(study, state=TrialState.FAIL, fail_reason="calibration memory", reference="int8")  # 8: so did this reference
    # 9: the same plan but for a setting that builds nothing different (no pruning: its criterion is moot)
    _add(study, [0.34, 3.5, 6.0], plan={**int8, "pruning": {"importance": "bn_scale"}})
    _add(study, [0.34, 3.5, 6.5], reference="int8")  # 10
    _add(study, state=TrialState.RUNNING)  # 11
    study.enqueue_trial({}, user_attrs={"retry_of": 2})  # 12: queued before the reference's retry: runs anyway
    study.enqueue_trial({}, user_attrs={"reference": "seeds", "retry_of": 6})  # 13
    study.enqueue_trial({}, user_attrs={"retry_of": 1})  # 14: only under a larger budget
    summary = summarize(study)
    assert (summary.complete, summary.failed, summary.rung0, summary.running) == (4, 6, 1, 1)
    assert summary.evaluated == 5
    assert (summary.queued_anyway, summary.queued) == (2, 1)
    assert summary.limits == {"max_map_drop": 0.05}
    assert summary.failures == ((2, "quantize: NaN"), (6, "worker died"))  # 3, 4, 7, 8: their plan ran again
    assert [r.number for r in summary.front] == [1, 9, 0]  # fastest first
    assert summary.retiming is None and summary.retiming_blocked is None and not summary.retiming_outdated


def test_speed_ups_timed_minutes_apart_are_marked_on_the_front_and_in_the_report(tmp_path: Path) -> None:
    study = _study()
    _add(study, [0.35, 12.0, 14.0], reference="fp32", brief="fp32")
    _add(study, [0.34, 3.5, 7.0], brief="int8")  # ran before its reference's retry: nothing paired
    _add(study, [0.30, 3.0, 5.0], brief="pruned", reference_ms=12.5)
    _add(study, [0.29, 2.9, 2.0], brief="pruned more", reference_ms=40.0)  # its reference took 40 ms, not 14
    front = {r.number: r for r in summarize(study).front}
    assert {n: (r.paired, r.unpaired, r.disturbed) for n, r in front.items()} == {
        0: (False, False, False),  # the reference itself
        1: (False, True, False),
        2: (True, False, False),
        3: (True, False, True),
    }
    assert front[3].speedup == 20.0  # 40 / 2: paired, however disturbed
    page = write_report(study, tmp_path / "r.html").read_text()
    assert ">20.00‡<" in page and ">2.00†<" in page and ">2.50<" in page
    assert "† against the reference trial&#x27;s own timing" in page and "‡ its FP32 reference took under" in page

    # the FP32 reference ran last (a retry): no trial could be paired, and each says so
    late = _study()
    _add(late, [0.34, 3.5, 7.0], unpaired=True)
    _add(late, [0.30, 3.0, 5.0], unpaired=True)
    _add(late, [0.35, 12.0, 14.0], reference="fp32")
    assert [(r.number, r.unpaired) for r in summarize(late).front] == [(1, True), (0, True), (2, False)]
    assert ">2.80†<" in write_report(late, tmp_path / "late.html").read_text()

    unpaired = _study()  # --no-time-reference: every speed-up is against the reference trial, none marked
    _add(unpaired, [0.35, 12.0, 14.0], reference="fp32")
    _add(unpaired, [0.34, 3.5, 7.0])
    assert [(r.unpaired, r.disturbed) for r in summarize(unpaired).front] == [(False, False)] * 2


def test_a_re_timing_older_than_the_trials_is_out_of_date_and_one_without_a_round_says_why() -> None:
    study = _study()
    _add(study, [0.35, 12.0, 14.0], reference="fp32")
    _add(study, [0.34, 3.5, 7.0])
    timed = Retiming(reference_trial=0, trials=(1,), complete=2, reference_ms=(14.0,), timings={1: (7.0,)})
    study.set_user_attr(RETIMED_ATTR, timed.to_dict())
    summary = summarize(study)
    assert summary.retiming is not None and summary.retiming.rounds == 1 and not summary.retiming_outdated
    _add(study, [0.30, 3.0, 5.0])
    summary = summarize(study)
    assert summary.retiming is None and summary.retiming_outdated and summary.retiming_blocked is None

    no_round = Retiming(reference_trial=0, trials=(1, 2), complete=3, failed={0: "file not found"})
    study.set_user_attr(RETIMED_ATTR, no_round.to_dict())
    summary = summarize(study)
    assert summary.retiming is None and summary.retiming_blocked == "file not found"
    assert not summary.retiming_outdated
