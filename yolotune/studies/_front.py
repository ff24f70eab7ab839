"""Pareto fronts of a study: feasible COMPLETE trials no other trial dominates."""

from __future__ import annotations

from dataclasses import dataclass

import optuna

__all__ = ["FrontRow", "pareto_front"]


@dataclass(frozen=True, kw_only=True)
class FrontRow:
    """One point of the front, with ratios against the FP32 reference trial.

    ``speedup`` divides the FP32 reference's latency by this trial's: the reference timed right
    after this trial (``paired``, the search's ``time_reference``) or else the reference trial's
    own timing.
    """

    number: int
    map50_95: float
    size_mb: float
    latency_ms: float
    brief: str
    reference: str
    map_drop: float | None
    speedup: float | None
    size_ratio: float | None
    paired: bool = False


def pareto_front(study: optuna.Study) -> list[FrontRow]:
    """The study's Pareto front (Optuna's ``best_trials``, a plan's first trial only) sorted by latency."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    base = next((t for t in complete if t.user_attrs.get("reference") == "fp32"), None)
    rows = []
    for t in study.best_trials:
        if "duplicate_of" in t.user_attrs:  # the same plan as a trial listed already, its values reused
            continue
        m, mb, ms = t.values
        paired = t.user_attrs.get("reference_ms")
        reference_ms = float(paired) if paired else (base.values[2] if base else None)
        rows.append(
            FrontRow(
                number=t.number,
                map50_95=m,
                size_mb=mb,
                latency_ms=ms,
                brief=str(t.user_attrs.get("brief", "")),
                reference=str(t.user_attrs.get("reference", "")),
                map_drop=(base.values[0] - m) if base else None,
                speedup=(reference_ms / ms) if reference_ms else None,
                size_ratio=(base.values[1] / mb) if base else None,
                paired=bool(paired),
            )
        )
    return sorted(rows, key=lambda r: r.latency_ms)
