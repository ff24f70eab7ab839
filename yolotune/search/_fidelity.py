"""Multi-fidelity promotion: which rung-0 candidates go on to full fidelity.

Optuna's pruners do not work for multi-objective studies, so the driver promotes: a rung-0
result is promoted when no feasible full-fidelity trial is as small, as fast and ``margin``
better in mAP50-95, unless it is out of reach of ``--max-map-drop``. Rung 0 may validate a
subset of the images; its mAP is then shifted by the FP32 reference's difference on that subset.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import optuna

from yolotune._warn import warn_once
from yolotune.errors import YolotuneError
from yolotune.search._baseline import baseline_map
from yolotune.search._candidate import BuiltCandidate, CandidateResult
from yolotune.search._config import SearchConfig
from yolotune.search._retime import reference_file
from yolotune.search._study import constraints_of
from yolotune.studies._front import fp32_reference

__all__ = [
    "PROMOTED_ON_SIZE",
    "Rung0Verdict",
    "judge_rung0",
    "promote",
    "rung0_floor",
]


logger = logging.getLogger(__name__)


def out_of_reach(study: optuna.Study, map50_95: float, margin: float, *, shown: str = "") -> str:
    """Why a rung-0 mAP can never be promoted (more than ``margin`` under ``--max-map-drop``), or ``""``.

    Fine-tuning is credited with at most ``margin``, so such a candidate stays at rung 0 whatever
    its size and latency: the driver does not time it. ``shown`` words ``map50_95`` when it is an
    estimate (what rung 0 measured on its images, and how it was shifted).
    """
    drop, base = constraints_of(study)["max_map_drop"], baseline_map(study)
    if drop is not None and base is not None and map50_95 + margin < base - drop:
        said = shown or f"{map50_95:.3f}"
        fp32 = "" if shown else f" (FP32 scores {base:.3f})"  # an estimate already says it
        return (
            f"mAP50-95 {said} is more than {margin:g} under {base - drop:.3f}, the least --max-map-drop {drop:g} "
            f"allows{fp32}: not timed"
        )
    return ""


def rung0_floor(config: SearchConfig, study: optuna.Study) -> float | None:
    """The mAP50-95 on rung 0's images under which a rung-0 candidate is out of reach (``None``: no bound yet).

    What ``out_of_reach`` refuses, before the shift to every validation image: a rung 0 whose FP32
    export scores under it is not quantized (``build_candidate``'s ``rung0_floor``).
    """
    drop, base = constraints_of(study)["max_map_drop"], baseline_map(study)
    if drop is None or base is None:
        return None
    if config.rung0_val is None:
        return base - drop - config.promote_margin
    shift = rung0_shift(config, study, config.rung0_val)[0]
    if str(config.rung0_val) not in study.user_attrs.get("fp32_rung0_map", {}):
        return None  # the FP32 reference could not be validated on the subset: no floor on a guessed scale
    return base - drop - config.promote_margin - shift


def rung0_shift(config: SearchConfig, study: optuna.Study, images: int) -> tuple[float, str]:
    """What to add to a rung-0 mAP50-95 measured on ``images`` validation images to compare it with full ones.

    A subset scores differently from the whole split (tiny_coco's FP32 at 320: 0.289 on 10 images,
    0.353 on 50), and promotion compares rung-0 mAPs with full-fidelity ones and with ``--max-map-drop``'s
    FP32 baseline. The FP32 reference is validated once on rung 0's subset (recorded in the
    study's ``fp32_rung0_map``; the whole split is recorded as its own score), and the difference
    is the shift: an estimate, said in the note returned with it. ``(0.0, "")`` when rung 0
    validated every image, before FP32 completed, or (with a warning) when FP32 cannot be validated.
    """
    base = fp32_reference(study)
    if base is None or config.rung0_val is None:
        return 0.0, ""
    full = float(base.values[0])
    known: dict[str, float] = dict(study.user_attrs.get("fp32_rung0_map", {}))
    if str(images) not in known:
        from yolotune.assets import prepare_dataset, val_subset
        from yolotune.evaluators import compute_lease, measure_map

        found = reference_file(study)
        try:
            if found is None:
                raise YolotuneError("its file is not on this host")
            dataset = prepare_dataset(config.data)
            if images >= len(dataset.val_images):
                known[str(images)] = full
            else:
                with compute_lease():
                    subset = measure_map(found[1], val_subset(dataset, images), imgsz=config.settings.imgsz)
                known[str(images)] = subset.map50_95
        except Exception as exc:  # the candidate is not at fault: it is compared unshifted
            warn_once(
                logger,
                "rung 0's mAPs on %d images are compared unshifted: the FP32 reference cannot be validated on them "
                "(%s)",
                images,
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )
            return 0.0, ""
        study.set_user_attr("fp32_rung0_map", known)
    part = known[str(images)]
    if part == full:
        return 0.0, ""
    return full - part, f"FP32 scores {part:.3f} on them, {full:.3f} on all"


PROMOTED_ON_SIZE = "promoted on size and mAP alone (no smaller full-fidelity trial is that much better): timed at full"


def promote(study: optuna.Study, rung0: CandidateResult, margin: float, *, shift: float = 0.0) -> bool:
    """Whether a rung-0 result is non-dominated by, or within ``margin`` mAP of, the full-fidelity front.

    Size and latency do not change with fine-tuning or more validation images; only mAP can rise.
    Under ``max_map_drop`` a candidate more than ``margin`` below the feasible mAP stays at rung 0
    too (a plan that destroyed the model would otherwise be promoted for being the smallest).
    """
    m = rung0.accuracy.map50_95 + shift  # ``shift``: from rung 0's subset to every validation image
    if out_of_reach(study, m, margin):
        return False
    latency = rung0.latency.median_ms
    return not any(t.values[2] <= latency for t in dominators(study, m, rung0.size_mb, margin))


def dominators(study: optuna.Study, map50_95: float, size_mb: float, margin: float) -> list[optuna.trial.FrozenTrial]:
    """Feasible full-fidelity trials at most ``size_mb`` and at least ``margin`` better in mAP50-95.

    Only these can keep a rung-0 candidate from promotion (if also as fast): with none, it is
    promoted whatever its latency.
    """
    return [
        t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if not any(v > 0 for v in t.constraints.values())
        and t.values[1] <= size_mb
        and t.values[0] >= map50_95 + margin
    ]


@dataclass(frozen=True, kw_only=True)
class Rung0Verdict:
    """What the driver makes of a rung-0 candidate before timing it.

    Attributes:
        map50_95: The mAP50-95 promotion compares: rung 0's, shifted to every validation image.
        shift: What was added to rung 0's mAP50-95 (0 when it validated every image).
        estimated: Whether ``map50_95`` is such an estimate.
        unreachable: Why it can never be promoted, so is not timed (``""``: it can be).
        on_size: Promoted at any latency (no feasible full-fidelity trial this small is ``margin``
            better), so timed once, at full fidelity.
    """

    map50_95: float
    shift: float
    estimated: bool
    unreachable: str
    on_size: bool

    def record(self, built: BuiltCandidate, timed: CandidateResult | None) -> dict[str, Any]:
        """The trial's ``rung0`` user attribute: what rung 0 measured, and why it was not timed."""
        return {
            "map50_95": built.accuracy.map50_95,
            "map50_95_estimate": self.map50_95 if self.estimated else None,  # what promotion compared
            "map50": built.accuracy.map50,
            "size_bytes": built.size_bytes,
            "latency_ms": timed.latency.median_ms if timed else None,
            "not_timed": self.unreachable or (PROMOTED_ON_SIZE if self.on_size else None),
            "stand_ins": built.stand_ins,  # as in its metrics.json
        }


def judge_rung0(config: SearchConfig, study: optuna.Study, built: BuiltCandidate) -> Rung0Verdict:
    """Whether a rung-0 candidate is out of reach, promoted on size alone, or to be timed and compared.

    Too far under ``--max-map-drop`` to be promoted at any speed: not timed. No full-fidelity trial
    this small is ``promote_margin`` better: promoted at any latency, so timed once, at full
    fidelity (measured: a rung-0 timing is ~2 of a stop's 4.3 CPU-s, and promotion re-times new
    bytes anyway).
    """
    shift, estimate = rung0_shift(config, study, built.accuracy.images)
    m, margin = built.accuracy.map50_95 + shift, config.promote_margin
    # what it measured first, then the estimate compared (not as if it scored that)
    n = built.accuracy.images
    shown = (
        f"{built.accuracy.map50_95:.3f} on rung 0's {n} image{'s' if n != 1 else ''}, so about {m:.3f} on all "
        f"({estimate}),"
        if estimate
        else ""
    )
    unreachable = out_of_reach(study, m, margin, shown=shown)
    if built.unquantized:  # stopped before quantizing: never timed nor promoted
        unreachable = f"{built.unquantized}: not quantized, not timed"
    on_size = not unreachable and not dominators(study, m, built.size_bytes / 1e6, margin)
    return Rung0Verdict(map50_95=m, shift=shift, estimated=bool(estimate), unreachable=unreachable, on_size=on_size)
