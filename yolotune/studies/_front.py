"""Pareto fronts of a study: feasible COMPLETE trials no other trial dominates."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import optuna

from yolotune.studies._retimed import SIZE_TOLERANCE, RetimedPoint, Retiming, current_retiming

__all__ = ["SIZE_TOLERANCE", "FrontRow", "fp32_reference", "pareto_front", "speed_notes", "speedup_of"]


@dataclass(frozen=True, kw_only=True)
class FrontRow:
    """One point of the front, with ratios against the FP32 reference trial.

    ``latency_ms`` is the trial's own timing, its objective in the study. ``speedup`` divides the
    FP32 reference's latency by this trial's: the median per-round ratio when the front was timed
    again after the search (``retimed``); else the reference timed right after this trial
    (``paired``, the search's ``time_reference``); else the reference trial's own timing.

    Before re-timing, ``unpaired`` marks a point whose search wanted a reference timed right after
    it and had none (the reference failed and ran later, or was still running; for a study from
    before that was recorded: any unpaired point where others are paired), and ``disturbed`` one
    whose paired reference took under half or over twice the
    reference trial's own time (the machine was loaded then): both compare timings minutes apart.
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
    retimed: RetimedPoint | None = None
    unpaired: bool = False
    disturbed: bool = False

    @property
    def retimed_ms(self) -> float | None:
        """Median latency over the re-timing rounds, when the point was re-timed."""
        return self.retimed.latency_ms if self.retimed else None


def fp32_reference(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The study's FP32 reference trial (the uncompressed model), once it has completed."""
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if t.user_attrs.get("reference") == "fp32":
            return t
    return None


def speedup_of(
    trial: optuna.trial.FrozenTrial,
    base: optuna.trial.FrozenTrial | None,
    retiming: Retiming | None = None,
) -> float | None:
    """``trial``'s speed-up over the FP32 reference ``base``, as ``FrontRow.speedup`` gives it.

    The median per-round ratio when ``retiming`` re-timed the trial; else the reference timed right
    after it (``reference_ms``); else the reference trial's own timing; ``None`` without a reference.
    """
    point = retiming.point(trial.number) if retiming is not None else None
    if point is not None:
        return point.speedup
    paired = trial.user_attrs.get("reference_ms")
    reference_ms = float(paired) if paired else (base.values[2] if base else None)
    return reference_ms / trial.values[2] if reference_ms else None


def pareto_front(study: optuna.Study) -> list[FrontRow]:
    """The study's Pareto front, a plan's first trial only, fastest first.

    Once the search has re-timed the trials near the front (``retime_front``) and no trial has
    completed since, the front is found among those, on their re-timed speed-ups (mAP50-95 and size
    as measured). Otherwise it is Optuna's ``best_trials``, sorted by latency.
    """
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    base = fp32_reference(study)
    retiming = current_retiming(study)
    if retiming is not None:
        return _retimed_front(complete, base, retiming)
    # Optuna's front (feasible trials only), less the trials another beats but for a few bytes of size
    best = [t for t in study.best_trials if "duplicate_of" not in t.user_attrs]  # a duplicate reuses listed values
    points = [(t, t.values[0], t.values[1], -t.values[2]) for t in best]
    rows = [
        _row(t, base, speedup=speedup_of(t, base), paired=bool(t.user_attrs.get("reference_ms")))
        for t, *_ in _undominated(points)
    ]
    # a search that pairs timings marks the trials it could not pair (``unpaired``; studies from before that
    # attribute: any trial unpaired where others are); under --no-time-reference none is paired or marked
    wanted = {t.number for t in best if t.user_attrs.get("unpaired")}
    if wanted or any(r.paired for r in rows):
        base_ms = float(base.values[2]) if base is not None else None
        paired_ms = {t.number: float(t.user_attrs.get("reference_ms") or 0.0) for t in best}
        any_paired = any(r.paired for r in rows)
        rows = [
            dataclasses.replace(
                r,
                unpaired=not r.paired
                and r.speedup is not None
                and r.reference != "fp32"
                and (r.number in wanted or any_paired),
                disturbed=r.paired and bool(base_ms) and not 0.5 <= paired_ms[r.number] / (base_ms or 1) <= 2,
            )
            for r in rows
        ]
    return sorted(rows, key=lambda r: r.latency_ms)


def speed_notes(front: Sequence[FrontRow]) -> list[str]:
    """How the speed-ups of a front not re-timed were timed, as ``tune show`` and ``tune report`` say it.

    The first note says they are paired with an FP32 reference timing (none when nothing was
    meant to be, ``--no-time-reference``); then what † (``unpaired``) and ‡ (``disturbed``) mark, when present.
    """
    if not any(r.paired or r.unpaired for r in front):
        return []
    where = "" if any(r.paired for r in front) else " where it could be"
    notes = [f"speed: against the FP32 reference timed right after each trial{where}"]
    if any(r.unpaired for r in front):
        notes.append("† against the reference trial's own timing (none was taken right after it)")
    if any(r.disturbed for r in front):
        notes.append(
            "‡ its FP32 reference took under half or over twice the reference trial's own time (a disturbed "
            "machine): `tune retime` times them again"
        )
    return notes


def _undominated(
    points: list[tuple[optuna.trial.FrozenTrial, float, float, float]],
) -> list[tuple[optuna.trial.FrozenTrial, float, float, float]]:
    """Points ``(trial, mAP, size, speed)`` that no other dominates, sizes within ``SIZE_TOLERANCE`` counting as equal.

    mAP and speed are better higher, size smaller.
    """

    def dominates(a: tuple[object, float, float, float], b: tuple[object, float, float, float]) -> bool:
        _, map_a, size_a, speed_a = a
        _, map_b, size_b, speed_b = b
        no_worse = map_a >= map_b and size_a <= size_b * (1 + SIZE_TOLERANCE) and speed_a >= speed_b
        better = map_a > map_b or size_a < size_b * (1 - SIZE_TOLERANCE) or speed_a > speed_b
        return no_worse and better

    return [a for a in points if not any(dominates(b, a) for b in points)]


def _retimed_front(
    complete: list[optuna.trial.FrozenTrial], base: optuna.trial.FrozenTrial | None, retiming: Retiming
) -> list[FrontRow]:
    # the reference trial is timed in every round whether or not it is feasible: fronts hold feasible trials only
    points = {
        t.number: (t, p)
        for t in complete
        if (p := retiming.point(t.number)) is not None and not any(v > 0 for v in t.constraints.values())
    }

    front = _undominated([(t, t.values[0], t.values[1], p.speedup) for t, p in points.values()])
    rows = []
    for t, *_ in front:
        p = points[t.number][1]
        rows.append(_row(t, base, speedup=p.speedup, paired=bool(t.user_attrs.get("reference_ms")), retimed=p))
    return sorted(rows, key=lambda r: -(r.speedup or 0.0))


def _row(
    t: optuna.trial.FrozenTrial,
    base: optuna.trial.FrozenTrial | None,
    *,
    speedup: float | None,
    paired: bool,
    retimed: RetimedPoint | None = None,
) -> FrontRow:
    m, mb, ms = t.values
    return FrontRow(
        number=t.number,
        map50_95=m,
        size_mb=mb,
        latency_ms=ms,
        brief=str(t.user_attrs.get("brief", "")),
        reference=str(t.user_attrs.get("reference", "")),
        map_drop=(base.values[0] - m) if base else None,
        speedup=speedup,
        size_ratio=(base.values[1] / mb) if base else None,
        paired=paired,
        retimed=retimed,
    )
