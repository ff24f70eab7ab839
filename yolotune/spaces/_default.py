"""The default search space for Ultralytics detectors: an Optuna trial → ``CompressionPlan``.

Pure: only ``trial.suggest_*``; no torch, no I/O. The model's layer groups and the target's
precisions are passed in as plain values, so a recorded trial's params rebuild its plan exactly
(``optuna.trial.FixedTrial(frozen.params)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from yolotune.spaces._plan import (
    CALIBRATION_METHODS,
    IMPORTANCE_CRITERIA,
    ROUND_TO,
    CompressionPlan,
    PruningConfig,
    QuantizationConfig,
    RecoveryConfig,
)

__all__ = ["DefaultSpace", "TrialLike", "coarse_units"]


class TrialLike(Protocol):
    """What a search space may call on a trial (``optuna.Trial`` and ``FixedTrial`` both fit)."""

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None) -> float: ...

    def suggest_int(self, name: str, low: int, high: int) -> int: ...

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...


def coarse_units(groups: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Bucket layer groups into a handful of search units.

    ``backbone.early`` (first half of the backbone layers), ``backbone.late``, ``neck``,
    ``head.box`` (``cv2.*``) and ``head.cls`` (``cv3.*``).
    """
    backbone = [g for g in groups if g.startswith("backbone.")]
    half = (len(backbone) + 1) // 2
    units = {
        "backbone.early": tuple(backbone[:half]),
        "backbone.late": tuple(backbone[half:]),
        "neck": tuple(g for g in groups if g.startswith("neck.")),
        "head.box": tuple(g for g in groups if g.startswith("head.cv2.")),
        "head.cls": tuple(g for g in groups if g.startswith("head.cv3.")),
    }
    return {name: members for name, members in units.items() if members}


@dataclass(frozen=True, kw_only=True)
class DefaultSpace:
    """Pruning ratio, precision per unit; criterion, rounding, activations, calibration, fine-tune.

    Attributes:
        groups: The model's layer groups (``ModelLayout.groups``).
        precisions: Precisions the target runs (the space asks only for these).
        max_calibration_images: Bound on the calibration set (training split, memory budget).
        fine: One unit per layer group instead of the coarse buckets.
        max_ratio: Largest pruning ratio sampled (0 is always a choice).
        epochs: Fine-tune epoch choices.
    """

    groups: tuple[str, ...]
    precisions: tuple[str, ...] = ("int8", "fp32")
    max_calibration_images: int = 64
    fine: bool = False
    max_ratio: float = 0.6
    epochs: tuple[int, ...] = (0, 1, 2)

    def units(self) -> dict[str, tuple[str, ...]]:
        """Search units and the layer groups each one sets."""
        return {g: (g,) for g in self.groups} if self.fine else coarse_units(self.groups)

    def calibration_choices(self) -> tuple[int, ...]:
        """Calibration-set sizes the space samples from."""
        return tuple(n for n in (8, 16, 32, 64, 128, 256) if n <= self.max_calibration_images) or (
            self.max_calibration_images,
        )

    def __call__(self, trial: TrialLike) -> CompressionPlan:
        """Sample a plan. Parameter names: ``prune/<unit>``, ``quant/<unit>``, ``calib/n``, ..."""
        units = self.units()
        ratios: dict[str, float] = {}
        precision: dict[str, str] = {}
        for unit, members in units.items():
            r = trial.suggest_float(f"prune/{unit}", 0.0, self.max_ratio, step=0.1)
            p = trial.suggest_categorical(f"quant/{unit}", list(self.precisions))
            for g in members:
                if r > 0:
                    ratios[g] = round(r, 2)
                precision[g] = p
        pruning = PruningConfig(
            ratios=tuple(ratios.items()),
            importance=trial.suggest_categorical("prune/importance", list(IMPORTANCE_CRITERIA)),
            round_to=trial.suggest_categorical("prune/round_to", list(ROUND_TO)),
        )
        quant = QuantizationConfig(
            default="fp32",
            precision=tuple(precision.items()),
            activation_type=trial.suggest_categorical("quant/activation", ["uint8", "int8"]),
            calibration_method=trial.suggest_categorical("calib/method", list(CALIBRATION_METHODS)),
            calibration_images=trial.suggest_categorical("calib/n", list(self.calibration_choices())),
        )
        epochs = trial.suggest_categorical("ft/epochs", list(self.epochs)) if ratios else 0
        return CompressionPlan(pruning=pruning, quantization=quant, recovery=RecoveryConfig(epochs=epochs))

    def reference_params(self) -> dict[str, dict[str, Any]]:
        """Params of the reference trials every study starts with.

        ``fp32``: the uncompressed model. ``int8``: INT8 only. ``seeds``: the seeds' recipe,
        uniform 30% BN-scale pruning + INT8 PTQ + a short fine-tune.
        """
        units = self.units()
        n = 32 if 32 in self.calibration_choices() else self.calibration_choices()[-1]
        common = {"prune/importance": "l2", "prune/round_to": 1, "quant/activation": "uint8", "calib/method": "minmax"}
        common["calib/n"] = n
        int8 = "int8" if "int8" in self.precisions else self.precisions[0]
        fp32 = {**common, **{f"prune/{u}": 0.0 for u in units}, **{f"quant/{u}": "fp32" for u in units}}
        only_int8 = {**fp32, **{f"quant/{u}": int8 for u in units}}
        seeds = {**only_int8, **{f"prune/{u}": 0.3 for u in units}}
        seeds.update({"prune/importance": "bn_scale", "prune/round_to": 8, "ft/epochs": max(self.epochs)})
        return {"fp32": fp32, "int8": only_int8, "seeds": seeds}
