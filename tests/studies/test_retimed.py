from __future__ import annotations

import pytest

from yolotune.studies import Retiming


@pytest.mark.parametrize("rounds", [2, 3, 5])
def test_the_quartiles_of_the_per_round_speed_ups_stay_within_the_measured_ones(rounds: int) -> None:
    # a noisy machine: the reference took 5 ms or 25 ms, the trial 6 ms or 5 ms, round after round
    reference = tuple(25.0 if i % 2 else 5.0 for i in range(rounds))
    trial = tuple(5.0 if i % 2 else 6.0 for i in range(rounds))
    point = Retiming(reference_trial=0, trials=(1,), complete=2, reference_ms=reference, timings={1: trial}).point(1)
    assert point is not None and point.rounds == rounds
    ratios = [r / t for r, t in zip(reference, trial, strict=True)]
    assert min(ratios) <= point.q1 <= point.speedup <= point.q3 <= max(ratios)


def test_a_re_timed_front_holds_feasible_trials_only_the_fp32_reference_included() -> None:
    import optuna

    from yolotune.studies import pareto_front
    from yolotune.studies._retimed import RETIMED_ATTR

    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    # under --max-latency-ms 4: the FP32 reference (5 ms) breaks it, the INT8 trial (3 ms) does not
    study.add_trial(
        optuna.trial.create_trial(
            values=[0.35, 12.0, 5.0], user_attrs={"reference": "fp32"}, constraints={"latency": 1.0}
        )
    )
    study.add_trial(optuna.trial.create_trial(values=[0.34, 3.2, 3.0], constraints={"latency": -1.0}))
    assert [t.number for t in study.best_trials] == [1]
    retiming = Retiming(reference_trial=0, trials=(1,), complete=2, reference_ms=(5.0, 5.2), timings={1: (3.0, 2.9)})
    study.set_user_attr(RETIMED_ATTR, retiming.to_dict())
    assert [r.number for r in pareto_front(study)] == [1]  # as before re-timing: the reference stays off
