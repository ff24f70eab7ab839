"""The front timed again after a search: the trials near it, in rounds with the FP32 reference.

A study records one re-timing in its ``retimed`` user attribute (a trial cannot be changed once
told): which trials, and every round's timing of each of them and of the reference file. It holds
while the study has as many COMPLETE trials as when it was made; ``pareto_front`` and the reports
read it through ``current_retiming``.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna

__all__ = ["NOISE_BAND", "RETIMED_ATTR", "SIZE_TOLERANCE", "RetimedPoint", "Retiming", "current_retiming", "near_front"]

#: The study user attribute holding the re-timing (``Retiming.to_dict()``).
RETIMED_ATTR = "retimed"

#: How far apart two single timings of equally fast files can be. On a busy 2-core VM one timing
#: spreads about ±15% (p90/p10 1.36 for a pair; BENCHMARKS.md, "Timing the FP32 reference
#: alongside each trial"), so a trial is re-timed unless another is faster by more than this.
NOISE_BAND = 0.3

#: Sizes within this share of each other count as equal on the front: two INT8 plans of one graph
#: differ by a few bytes of quantization parameters, and a plan 1 byte smaller but worse in mAP
#: and speed would otherwise stay on it beside the better one (both read "3.50 MB").
SIZE_TOLERANCE = 0.001


@dataclass(frozen=True, kw_only=True)
class RetimedPoint:
    """One trial's re-timing.

    Attributes:
        trial: The trial.
        rounds: Rounds it was timed in.
        latency_ms: Median of its per-round timings.
        reference_ms: Median of the reference's timings in the same rounds.
        speedup: Median of the per-round ratios reference / trial.
        q1: First quartile of the per-round ratios.
        q3: Third quartile: half the rounds gave a ratio between ``q1`` and ``q3``.
    """

    trial: int
    rounds: int
    latency_ms: float
    reference_ms: float
    speedup: float
    q1: float
    q3: float

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class Retiming:
    """Trials near a study's front, each timed once per round, with the FP32 reference file.

    Attributes:
        reference_trial: The FP32 reference trial, timed in every round.
        trials: The trials re-timed (the reference not among them).
        complete: COMPLETE trials in the study when the trials were chosen.
        reference_ms: The reference's timing in each round.
        timings: Each trial's timing in each round.
        digests: SHA-256 of each file timed, the reference's included.
        target: Target name.
        failed: Trials dropped from the re-timing, with why (their timing failed).
    """

    reference_trial: int
    trials: tuple[int, ...]
    complete: int
    reference_ms: tuple[float, ...] = ()
    timings: dict[int, tuple[float, ...]] = field(default_factory=dict)
    digests: dict[int, str] = field(default_factory=dict)
    target: str = ""
    failed: dict[int, str] = field(default_factory=dict)

    @property
    def rounds(self) -> int:
        """Rounds done."""
        return len(self.reference_ms)

    def point(self, trial: int) -> RetimedPoint | None:
        """``trial``'s re-timing (the reference's own: speed-up 1), or ``None`` when it was not re-timed."""
        if not self.rounds:
            return None
        if trial == self.reference_trial:
            ms = self.reference_ms
        elif trial in self.timings and trial not in self.failed:
            ms = self.timings[trial]
        else:
            return None
        ratios = [ref / t for ref, t in zip(self.reference_ms, ms, strict=True)]
        # "inclusive": quartiles within the measured ratios ("exclusive", the default, extrapolates
        # past them for few rounds: 2 rounds of 0.83 and 5.1 gave -0.24 to 6.2)
        q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else (ratios[0],) * 3
        return RetimedPoint(
            trial=trial,
            rounds=self.rounds,
            latency_ms=statistics.median(ms),
            reference_ms=statistics.median(self.reference_ms),
            speedup=statistics.median(ratios),
            q1=q1,
            q3=q3,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (trial numbers as string keys)."""
        data = asdict(self)
        for key in ("timings", "digests", "failed"):
            data[key] = {str(k): v for k, v in data[key].items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Retiming:
        """Inverse of ``to_dict``."""
        return cls(
            reference_trial=int(data["reference_trial"]),
            trials=tuple(int(n) for n in data["trials"]),
            complete=int(data["complete"]),
            reference_ms=tuple(float(v) for v in data["reference_ms"]),
            timings={int(k): tuple(float(v) for v in vs) for k, vs in data["timings"].items()},
            digests={int(k): str(v) for k, v in data["digests"].items()},
            target=str(data.get("target", "")),
            failed={int(k): str(v) for k, v in (data.get("failed") or {}).items()},
        )


def _complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def current_retiming(study: optuna.Study) -> Retiming | None:
    """The study's re-timing, if it has a round done and no trial has completed since; else ``None``."""
    recorded = study.user_attrs.get(RETIMED_ATTR)
    if not isinstance(recorded, dict) or "trials" not in recorded:
        return None  # never re-timed (or by a yolotune whose record does not read)
    retiming = Retiming.from_dict(recorded)
    return retiming if retiming.rounds and retiming.complete == len(_complete(study)) else None


def near_front(study: optuna.Study, *, band: float = NOISE_BAND) -> list[optuna.trial.FrozenTrial]:
    """Feasible COMPLETE trials that timing noise could put on the front.

    A trial is left out when another feasible trial is at least as accurate and as small (within
    ``SIZE_TOLERANCE``), and
    faster by more than ``band`` (its latency times ``1 + band`` is at most this one's). Trials
    that reuse another's measurements (``duplicate_of``) are left out too.
    """
    feasible = [
        t
        for t in _complete(study)
        if not any(v > 0 for v in t.constraints.values()) and "duplicate_of" not in t.user_attrs
    ]
    return [
        t
        for t in feasible
        if not any(
            o.number != t.number
            and o.values[0] >= t.values[0]
            and o.values[1] <= t.values[1] * (1 + SIZE_TOLERANCE)  # a few bytes apart: as small
            and o.values[2] * (1 + band) <= t.values[2]
            for o in feasible
        )
    ]
