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
