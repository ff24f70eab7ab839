"""The default search space for Ultralytics detectors: an Optuna trial → ``CompressionPlan``.

Pure: only ``trial.suggest_*``; no torch, no I/O. The model's layer groups and the target's
precisions are passed in as plain values, so a recorded trial's params rebuild its plan exactly
(``optuna.trial.FixedTrial(frozen.params)``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from yolotune.errors import PlanError
from yolotune.spaces._plan import (
    ACTIVATION_TYPES,
    CALIBRATION_METHODS,
    IMPORTANCE_CRITERIA,
    MAX_PRUNING_RATIO,
    PRECISIONS,
    RECOVERY_METHODS,
    ROUND_TO,
    CompressionPlan,
    PruningConfig,
    QuantizationConfig,
    RecoveryConfig,
)

__all__ = ["SPACE_OPTIONS", "DefaultSpace", "Space", "TrialLike", "coarse_units"]


class TrialLike(Protocol):
    """What a search space may call on a trial (``optuna.Trial`` and ``FixedTrial`` both fit)."""

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None) -> float: ...

    def suggest_int(self, name: str, low: int, high: int) -> int: ...

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...


class Space(Protocol):
    """A search space: a callable from a trial to a plan (``DefaultSpace`` or a user's function)."""

    def __call__(self, trial: TrialLike) -> CompressionPlan: ...


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


#: Options a YAML space file may set (each one a ``DefaultSpace`` field).
SPACE_OPTIONS = (
    "fine",
    "units",
    "uniform_precision",
    "prune_groups",
    "max_ratio",
    "ratio_step",
    "precisions",
    "importance",
    "round_to",
    "activations",
    "calibration_methods",
    "calibration_sizes",
    "shared_ranges",
    "recovery_methods",
    "epochs",
    "distill",
)


@dataclass(frozen=True, kw_only=True)
class DefaultSpace:
    """Pruning ratio, precision per unit; criterion, rounding, activations, calibration, fine-tune.

    Every choice list can be narrowed (a YAML space file sets these fields, see ``from_options``).

    Attributes:
        groups: The model's layer groups (``ModelLayout.groups``).
        precisions: Precisions the target runs (the space asks only for these).
        max_calibration_images: Bound on the calibration set (training split, memory budget).
        fine: One unit per layer group instead of the coarse buckets.
        units_: Explicit search units as ``(unit, (group, ...))`` pairs (overrides ``fine``; the
            ``units`` option of a space file; ``None``: the default units). ``units()`` gives the
            units searched either way.
        uniform_precision: Whether a plan may give every unit one precision (``quant/uniform``,
            then ``quant/all``) instead of one per unit (choices). Mixed plans pay for the
            Q/DQ pairs between float and INT8 layers, and on a CPU they run at about FP32 speed
            (BENCHMARKS.md), so uniform plans are a first-class value, as no pruning is.
        prune_groups: When set, only these layer groups are pruned, each with its own sampled
            ratio (``prune/<group>``); units then carry precision only. ``()``: no pruning.
        max_ratio: Largest pruning ratio sampled (0 is always a choice).
        ratio_step: Step of the sampled pruning ratios.
        importance: Importance criteria sampled.
        round_to: Channel rounding choices.
        activations: Activation types of INT8 layers: the target's (the fast one first, which the
            reference INT8 plan uses), narrowed by options.
        calibration_methods: Calibration methods sampled. ``entropy`` is left out by default: a
            real KL search costs ~15 s more per candidate for the same mAP as ``percentile`` on
            yolov8n (BENCHMARKS.md); name it to search it.
        calibration_sizes: Calibration-set sizes sampled (bounded by ``max_calibration_images``);
            the post-training recovery samples its image count from the same choices.
        shared_ranges: Whether INT8 plans share one range across each Concat (choices; see
            ``QuantizationConfig.shared_ranges``).
        recovery_methods: Post-training recovery methods of pruned plans.
        epochs: Fine-tune epoch choices.
        fine_tune: Whether the training split has labels to fine-tune on. Without them every plan
            fine-tunes 0 epochs, the reference plans included (``epoch_choices``).
        distill: Whether fine-tunes distil from the unpruned model (choices).
    """

    groups: tuple[str, ...]
    precisions: tuple[str, ...] = ("int8", "fp32")
    max_calibration_images: int = 64
    fine: bool = False
    units_: tuple[tuple[str, tuple[str, ...]], ...] | None = None
    uniform_precision: tuple[bool, ...] = (True, False)
    prune_groups: tuple[str, ...] | None = None
    max_ratio: float = 0.6
    ratio_step: float = 0.1
    importance: tuple[str, ...] = IMPORTANCE_CRITERIA
    round_to: tuple[int, ...] = ROUND_TO
    activations: tuple[str, ...] = ACTIVATION_TYPES
    calibration_methods: tuple[str, ...] = ("minmax", "percentile")
    calibration_sizes: tuple[int, ...] = (8, 16, 32, 64, 128, 256)
    shared_ranges: tuple[bool, ...] = (False, True)
    recovery_methods: tuple[str, ...] = RECOVERY_METHODS
    epochs: tuple[int, ...] = (0, 1, 2)
    distill: tuple[bool, ...] = (False, True)
    fine_tune: bool = True

    def __post_init__(self) -> None:
        # lists given to the constructor become tuples: the space stays immutable and hashable
        for name in _SEQUENCE_FIELDS:
            value = getattr(self, name)
            if value is None and name == "prune_groups":
                continue
            if isinstance(value, str) or not isinstance(value, Sequence):
                raise PlanError(f"space option {name} must be a list; got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if self.units_ is not None:
            object.__setattr__(self, "units_", _frozen_units(self.units_))
        if not all(isinstance(g, str) for g in self.groups):
            raise PlanError(f"space groups must be layer group names (text); got {list(self.groups)}")
        checks: list[tuple[str, Sequence[Any], Sequence[Any]]] = [
            ("importance", self.importance, IMPORTANCE_CRITERIA),
            ("round_to", self.round_to, ROUND_TO),
            ("activations", self.activations, ACTIVATION_TYPES),
            ("calibration_methods", self.calibration_methods, CALIBRATION_METHODS),
            ("recovery_methods", self.recovery_methods, RECOVERY_METHODS),
            ("precisions", self.precisions, PRECISIONS),
        ]
        for name, values, allowed in checks:
            bad = [v for v in values if v not in allowed]
            if not values or bad:
                raise PlanError(
                    f"space option {name} must be a non-empty subset of {list(allowed)}; got {list(values)}"
                )
        numbers = {"max_ratio": self.max_ratio, "ratio_step": self.ratio_step}
        for name, value in numbers.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise PlanError(f"space option {name} must be a number (unquoted); got {value!r}")
        integers = {"epochs": (self.epochs, 0), "calibration_sizes": (self.calibration_sizes, 1)}
        for name, (values, least) in integers.items():
            if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < least for v in values):
                raise PlanError(
                    f"space option {name} must be a non-empty list of whole numbers ≥ {least}; got {list(values)}"
                )
        if not isinstance(self.fine, bool):
            raise PlanError(f"space option fine must be true or false (unquoted); got {self.fine!r}")
        bad_step = self.max_ratio > 0 and not 0 < self.ratio_step <= self.max_ratio
        if not 0 <= self.max_ratio <= MAX_PRUNING_RATIO or bad_step:
            raise PlanError(
                f"space options need 0 ≤ max_ratio ≤ {MAX_PRUNING_RATIO} and 0 < ratio_step ≤ max_ratio; "
                f"got {self.max_ratio}, {self.ratio_step}"
            )
        flag_options = {
            "distill": self.distill,
            "shared_ranges": self.shared_ranges,
            "uniform_precision": self.uniform_precision,
        }
        for name, flags in flag_options.items():
            if not flags or any(not isinstance(f, bool) for f in flags):
                raise PlanError(f"space option {name} must be a non-empty list of true/false; got {list(flags)}")
        if self.units_ is not None:
            _check_units(self.units_)
            unknown = sorted({g for _, gs in self.units_ for g in gs} - set(self.groups))
            if unknown:
                raise PlanError(f"space units name groups the model lacks: {', '.join(unknown[:5])}")
        if self.prune_groups is not None:
            unknown = sorted(set(self.prune_groups) - set(self.groups))
            if unknown:
                raise PlanError(
                    f"space option prune_groups names groups the model lacks: {', '.join(unknown[:5])}; "
                    f"groups: {', '.join(self.groups)}"
                )

    @classmethod
    def from_options(
        cls,
        options: Mapping[str, Any],
        *,
        groups: tuple[str, ...],
        precisions: tuple[str, ...],
        max_calibration_images: int,
        activations: tuple[str, ...] = ACTIVATION_TYPES,
        fine_tune: bool = True,
    ) -> DefaultSpace:
        """A space narrowed by user options (a YAML space file's mapping; keys in ``SPACE_OPTIONS``).

        Precisions and activation types must be among the target's (``precisions``,
        ``activations``); calibration sizes are still bounded by ``max_calibration_images``, and
        epochs by ``fine_tune``.

        Raises:
            PlanError: Unknown option or invalid value, as one line.
        """
        unknown = sorted(set(options) - set(SPACE_OPTIONS))
        if unknown:
            raise PlanError(f"unknown space option(s) {', '.join(unknown)}; known: {', '.join(SPACE_OPTIONS)}")
        kwargs: dict[str, Any] = {}
        for key, value in options.items():
            if key == "units":
                kwargs["units_"] = _units_option(value)
            elif key == "prune_groups":
                if not isinstance(value, list | tuple) or not all(isinstance(g, str) for g in value):
                    raise PlanError("space option prune_groups must be a list of layer group names")
                kwargs[key] = tuple(value)
            elif key in {"fine", "max_ratio", "ratio_step"}:
                kwargs[key] = value
            else:
                kwargs[key] = tuple(value) if isinstance(value, list | tuple) else (value,)
        wanted = kwargs.pop("precisions", precisions)
        missing = [p for p in wanted if p not in precisions]
        if missing:
            raise PlanError(
                f"space asks for {', '.join(missing)}, which the target cannot run ({', '.join(precisions)})"
            )
        kwargs.setdefault("activations", activations)
        odd = [a for a in kwargs["activations"] if a not in activations]
        if odd:
            raise PlanError(
                f"space asks for {', '.join(odd)} activations; the target runs INT8 layers with "
                f"{', '.join(activations)} activations (set activations in its targets file to search others)"
            )
        return cls(
            groups=groups,
            precisions=tuple(wanted),
            max_calibration_images=max_calibration_images,
            fine_tune=fine_tune,
            **kwargs,
        )

    def units(self) -> dict[str, tuple[str, ...]]:
        """Search units and the layer groups each one sets."""
        if self.units_ is not None:
            return dict(self.units_)
        return {g: (g,) for g in self.groups} if self.fine else coarse_units(self.groups)

    def calibration_choices(self) -> tuple[int, ...]:
        """Calibration-set sizes the space samples from."""
        return tuple(n for n in self.calibration_sizes if n <= self.max_calibration_images) or (
            self.max_calibration_images,
        )

    def epoch_choices(self) -> tuple[int, ...]:
        """Fine-tune epochs the space samples from: 0 only when the data has no training labels."""
        return self.epochs if self.fine_tune else (0,)

    def __call__(self, trial: TrialLike) -> CompressionPlan:
        """Sample a plan. Parameter names: ``prune/enabled``, ``prune/<unit>``, ``quant/<unit>``, ``calib/n``, ..."""
        units = self.units()
        ratios: dict[str, float] = {}
        precision: dict[str, str] = {}
        # "no pruning" is a first-class value: on a small, efficient model most plans that prune
        # a whole unit lose it (field notes), so half the budget explores precision and calibration
        can_prune = bool(self.max_ratio) and self.prune_groups != ()
        prune_on = can_prune and trial.suggest_categorical("prune/enabled", [False, True])
        per_group = self.prune_groups is not None
        # one precision for the whole model is a first-class value: mixed plans run at about FP32
        # speed on CPUs (Q/DQ pairs at every float/INT8 boundary), and with five or more units a
        # per-unit draw almost never makes every unit INT8
        can_mix = len(self.precisions) > 1 and len(units) > 1
        uniform = can_mix and trial.suggest_categorical("quant/uniform", list(self.uniform_precision))
        everywhere = trial.suggest_categorical("quant/all", list(self.precisions)) if uniform else None
        for unit, members in units.items():
            r = 0.0
            if prune_on and not per_group:
                r = trial.suggest_float(f"prune/{unit}", 0.0, self.max_ratio, step=self.ratio_step)
            p = everywhere or trial.suggest_categorical(f"quant/{unit}", list(self.precisions))
            for g in members:
                if r > 0:
                    ratios[g] = round(r, 2)
                precision[g] = p
        if prune_on and per_group:
            for g in self.groups:  # model order, whatever order the option listed them in
                if g in (self.prune_groups or ()):
                    r = trial.suggest_float(f"prune/{g}", 0.0, self.max_ratio, step=self.ratio_step)
                    if r > 0:
                        ratios[g] = round(r, 2)
        pruning = PruningConfig(
            ratios=tuple(ratios.items()),
            importance=trial.suggest_categorical("prune/importance", list(self.importance)),
            round_to=trial.suggest_categorical("prune/round_to", list(self.round_to)),
        )
        quant = QuantizationConfig(
            default="fp32",
            precision=tuple(precision.items()),
            activation_type=trial.suggest_categorical("quant/activation", list(self.activations)),
            calibration_method=trial.suggest_categorical("calib/method", list(self.calibration_methods)),
            calibration_images=trial.suggest_categorical("calib/n", list(self.calibration_choices())),
            shared_ranges=bool(trial.suggest_categorical("calib/shared", list(self.shared_ranges))),
        )
        recovery = RecoveryConfig()
        if ratios:
            method = trial.suggest_categorical("recover/method", list(self.recovery_methods))
            images = (
                trial.suggest_categorical("recover/n", list(self.calibration_choices())) if method != "none" else 32
            )
            epochs = trial.suggest_categorical("ft/epochs", list(self.epoch_choices()))
            distill = bool(trial.suggest_categorical("ft/distill", list(self.distill))) if epochs else False
            recovery = RecoveryConfig(method=method, images=images, epochs=epochs, distill=distill)
        return CompressionPlan(pruning=pruning, quantization=quant, recovery=recovery)

    def reference_params(self) -> dict[str, dict[str, Any]]:
        """Params of the reference trials every study starts with, in the full default space.

        ``fp32``: the uncompressed model. ``int8``: INT8 only. ``seeds``: the seeds' recipe,
        uniform 30% BN-scale pruning + INT8 PTQ + a short fine-tune, when the data has training
        labels (``fine_tune``; without its fine-tune the recipe scores 0.000 for sure). ``fp16``:
        every layer in fp16, for targets that run it.
        """
        units = self.units()
        n = 32 if 32 in self.calibration_choices() else self.calibration_choices()[-1]
        common = {
            "prune/importance": "l2",
            "prune/round_to": 1,
            "quant/activation": self.activations[0],
            "calib/method": "minmax",
            "calib/shared": False,
            "quant/uniform": False,  # the references name each unit's precision
        }
        common["calib/n"] = n
        int8 = "int8" if "int8" in self.precisions else self.precisions[0]
        fp32 = {**common, "prune/enabled": False, **{f"quant/{u}": "fp32" for u in units}}
        only_int8 = {**fp32, **{f"quant/{u}": int8 for u in units}}
        seeds = {**only_int8, "prune/enabled": True, **{f"prune/{u}": 0.3 for u in units}}
        seeds.update({"prune/importance": "bn_scale", "prune/round_to": 8, "ft/epochs": max(self.epoch_choices())})
        seeds["ft/distill"] = False
        seeds["recover/method"] = "none"  # the seeds' recipe had no post-training recovery
        refs = {"fp32": fp32, "int8": only_int8}
        if self.fine_tune:
            refs["seeds"] = seeds
        if "fp16" in self.precisions:  # what GPU users deploy by default: every INT8 plan must beat it
            refs["fp16"] = {**fp32, **{f"quant/{u}": "fp16" for u in units}}
        return refs

    def reference_plans(self) -> dict[str, CompressionPlan]:
        """The reference plans (``fp32``, ``int8``, ``seeds`` and ``fp16`` as they apply), in the full default space.

        Only the groups, units and precisions of this space matter: a narrowed space (a YAML
        file) still gets the same references, so every front shows them.
        """
        full = self.full()
        return {name: full(_Fixed(params)) for name, params in full.reference_params().items()}

    def full(self) -> DefaultSpace:
        """This space with every choice list back at its default (same groups, units, precisions, activations)."""
        return DefaultSpace(
            groups=self.groups,
            precisions=self.precisions,
            activations=self.activations,
            max_calibration_images=self.max_calibration_images,
            fine=self.fine,
            units_=self.units_,
            fine_tune=self.fine_tune,
        )


#: ``DefaultSpace`` fields holding a list of values (``units_`` has its own shape: ``_frozen_units``).
_SEQUENCE_FIELDS = tuple(
    f.name for f in dataclasses.fields(DefaultSpace) if str(f.type).startswith("tuple[") and f.name != "units_"
)


def _frozen_units(value: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Explicit search units as nested tuples: from ``(unit, [group, ...])`` pairs or a mapping.

    Raises:
        PlanError: Neither shape, as one line.
    """
    if isinstance(value, Mapping):
        return _units_option(value)
    shape = "space units must be (unit, (group, ...)) pairs"
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise PlanError(f"{shape}; got {value!r}")
    units = []
    for pair in value:
        ok = isinstance(pair, Sequence) and not isinstance(pair, str) and len(pair) == 2
        if not ok or not isinstance(pair[0], str) or isinstance(pair[1], str) or not isinstance(pair[1], Sequence):
            raise PlanError(f"{shape}; got {pair!r}")
        if not all(isinstance(g, str) for g in pair[1]):
            raise PlanError(f"{shape} whose groups are layer group names; unit {pair[0]} has {pair[1]!r}")
        units.append((pair[0], tuple(pair[1])))
    return tuple(units)


#: Names a unit cannot take: its ``quant/<unit>`` or ``prune/<unit>`` param would be one of the space's own.
_RESERVED_UNITS = ("all", "uniform", "activation", "enabled", "importance", "round_to")


def _units_option(value: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The ``units`` option of a space file as ``(unit, (group, ...))`` pairs.

    Raises:
        PlanError: Not a mapping of unit names to lists of layer group names, as one line.
    """
    shape = "space option units must map each unit name to a list of layer groups"
    if not isinstance(value, Mapping):
        raise PlanError(f"{shape} (unit: [group, ...]); got {value!r}")
    units = []
    for unit, groups in value.items():
        if not isinstance(groups, list | tuple) or not all(isinstance(g, str) for g in groups):
            hint = f" (write {unit}: [{groups}])" if isinstance(groups, str) else ""
            raise PlanError(f"{shape}; unit {unit} has {groups!r}{hint}")
        units.append((str(unit), tuple(groups)))
    return tuple(units)


def _check_units(units: Sequence[tuple[str, Sequence[str]]]) -> None:
    """Refuse explicit search units that name no unit, a unit without groups, or a group twice.

    Raises:
        PlanError: What is wrong with the units, as one line.
    """
    if not units:
        raise PlanError(
            "space option units must name at least one unit, each with a non-empty list of layer groups "
            "(leave units out to search the default units)"
        )
    owner: dict[str, str] = {}
    names: set[str] = set()
    for unit, groups in units:
        if unit in names:
            raise PlanError(f"space unit {unit} is named twice; give each unit one name")
        names.add(unit)
        if unit in _RESERVED_UNITS:
            raise PlanError(
                f"space unit name {unit} is reserved (it would clash with the space's own params); rename the unit"
            )
        if not groups:
            raise PlanError(f"space unit {unit} has no layer groups; list at least one or drop the unit")
        for group in groups:
            if owner.get(group) == unit:
                raise PlanError(f"space unit {unit} lists layer group {group} twice; list it once")
            if group in owner:
                raise PlanError(
                    f"space layer group {group} is in both units {owner[group]} and {unit}; put each group in one unit"
                )
            owner[group] = unit


class _Fixed:
    """A trial that answers from fixed params (a pure stand-in for ``optuna.trial.FixedTrial``)."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        self._params = params

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None) -> float:
        return float(self._params[name])

    def suggest_int(self, name: str, low: int, high: int) -> int:
        return int(self._params[name])

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self._params[name]
