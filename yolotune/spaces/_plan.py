"""``CompressionPlan``: the one frozen, validated description of a candidate.

Pure values: no torch, no I/O beyond reading and writing the plan's own JSON/YAML text.
Steps never change a plan; they refuse it with a reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from yolotune import _yaml
from yolotune._numbers import is_real
from yolotune.errors import PlanError, yaml_problem

__all__ = [
    "ACTIVATION_TYPES",
    "CALIBRATION_METHODS",
    "DECODE_GROUP",
    "IMPORTANCE_CRITERIA",
    "MAX_PRUNING_RATIO",
    "PRECISIONS",
    "RECOVERY_METHODS",
    "ROUND_TO",
    "CompressionPlan",
    "PruningConfig",
    "QuantizationConfig",
    "RecoveryConfig",
]

PRECISIONS = ("int8", "fp16", "fp32")
IMPORTANCE_CRITERIA = ("l1", "l2", "bn_scale", "activation")
ROUND_TO = (1, 8, 16)
ACTIVATION_TYPES = ("uint8", "int8")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
#: Post-training recovery: ``bn`` re-estimates BatchNorm statistics; ``bias`` compensates the
#: pruned channels' mean contribution in the layers that consume them; ``ls`` re-fits those
#: layers by ridge least squares (its intercept is the bias compensation).
RECOVERY_METHODS = ("none", "bn", "bias", "ls")
MAX_PRUNING_RATIO = 0.9
#: Quantization-only group: the Detect head's DFL, box decode, sigmoid and final concat.
#: It stays fp32 unless a plan names it explicitly.
DECODE_GROUP = "head.decode"


def _pairs(name: str, value: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> tuple[tuple[str, Any], ...]:
    """``value`` (a mapping, or (group, value) pairs) as sorted pairs; one line on anything else."""
    how = f"{name} must map layer-group names to values ({{'backbone.1': ...}} or [('backbone.1', ...)])"
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise PlanError(f"{how}; got {value!r}")
    else:
        items = list(value)
        if any(not isinstance(pair, tuple | list) or len(pair) != 2 for pair in items):
            raise PlanError(f"{how}; got {value!r}")
    keys = [str(k) for k, _ in items]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise PlanError(f"{name} names {', '.join(repr(k) for k in twice)} more than once; give each group once")
    return tuple(sorted((str(k), v) for k, v in items))


def _choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        raise PlanError(f"{name} must be one of {', '.join(map(str, allowed))}; got {value!r}")


@dataclass(frozen=True, kw_only=True)
class PruningConfig:
    """Structured channel pruning.

    Attributes:
        ratios: Fraction of output channels removed per named layer group (missing groups: 0).
        importance: Channel ranking criterion: ``l1``/``l2`` weight magnitude, ``bn_scale``, or
            ``activation`` (mean activation on ``recovery.images`` training images).
        round_to: Kept channel counts are rounded to a multiple of this (1, 8 or 16).
    """

    ratios: tuple[tuple[str, float], ...] = ()
    importance: str = "l2"
    round_to: int = 1

    if TYPE_CHECKING:  # the signature type checkers see: ``ratios`` is also taken as a mapping

        def __init__(
            self,
            *,
            ratios: Mapping[str, float] | Iterable[tuple[str, float]] = (),
            importance: str = "l2",
            round_to: int = 1,
        ) -> None: ...

    def __post_init__(self) -> None:
        object.__setattr__(self, "ratios", _pairs("pruning ratios", self.ratios))
        for group, ratio in self.ratios:
            if not is_real(ratio):
                raise PlanError(f"pruning ratio of '{group}' must be a number; got {ratio!r}")
            if not 0.0 <= ratio <= MAX_PRUNING_RATIO:
                raise PlanError(f"pruning ratio of '{group}' is {ratio}; it must lie in [0, {MAX_PRUNING_RATIO}]")
        object.__setattr__(self, "ratios", tuple((g, float(r)) for g, r in self.ratios))  # numpy's too, as JSON
        if DECODE_GROUP in dict(self.ratios):
            raise PlanError(f"'{DECODE_GROUP}' (DFL and box decode) cannot be pruned")
        _choice("pruning importance", self.importance, IMPORTANCE_CRITERIA)
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int):
            raise PlanError(
                f"round_to must be a whole number, one of {', '.join(map(str, ROUND_TO))}; got {self.round_to!r}"
            )
        _choice("round_to", self.round_to, ROUND_TO)

    def ratio(self, group: str) -> float:
        """Return the pruning ratio of ``group`` (0 when the plan does not name it)."""
        return float(dict(self.ratios).get(group, 0.0))

    @property
    def active(self) -> bool:
        """True when any group loses channels."""
        return any(r > 0 for _, r in self.ratios)


@dataclass(frozen=True, kw_only=True)
class QuantizationConfig:
    """Post-training static quantization (ONNX Runtime QDQ).

    Attributes:
        default: Precision of every group the plan does not name (``head.decode`` excepted).
        precision: Precision per named layer group.
        activation_type: ``uint8`` (asymmetric; ONNX Runtime's fast path on x86 CPUs) or ``int8``
            (symmetric, zero point 0: the only INT8 TensorRT takes).
        calibration_method: ``minmax``, ``entropy`` or ``percentile``.
        calibration_images: Number of training images used for calibration.
        per_channel: Per-output-channel weight scales.
        shared_ranges: One activation range for every Concat's inputs and output, carried through
            the ops whose output ONNX Runtime quantizes like their input (MaxPool, Resize, Split,
            ...), as TFLite requires. ONNX Runtime's QLinearConcat then copies instead of
            requantizing: measured 2-19% faster on yolov8n at 320 px for 0.2-0.6 points of
            mAP50-95 (BENCHMARKS.md, "Shared Concat ranges").
    """

    default: str = "fp32"
    precision: tuple[tuple[str, str], ...] = ()
    activation_type: str = "uint8"
    calibration_method: str = "minmax"
    calibration_images: int = 32
    per_channel: bool = True
    shared_ranges: bool = False

    if TYPE_CHECKING:  # the signature type checkers see: ``precision`` is also taken as a mapping

        def __init__(
            self,
            *,
            default: str = "fp32",
            precision: Mapping[str, str] | Iterable[tuple[str, str]] = (),
            activation_type: str = "uint8",
            calibration_method: str = "minmax",
            calibration_images: int = 32,
            per_channel: bool = True,
            shared_ranges: bool = False,
        ) -> None: ...

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", _pairs("quantization precision", self.precision))
        _choice("default precision", self.default, PRECISIONS)
        for group, value in self.precision:
            _choice(f"precision of '{group}'", value, PRECISIONS)
        _choice("activation_type", self.activation_type, ACTIVATION_TYPES)
        _choice("calibration_method", self.calibration_method, CALIBRATION_METHODS)
        n = self.calibration_images
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise PlanError(f"calibration_images must be a positive integer; got {n!r}")
        for flag in ("per_channel", "shared_ranges"):
            if not isinstance(getattr(self, flag), bool):
                raise PlanError(f"quantization {flag} must be true or false; got {getattr(self, flag)!r}")

    def precision_of(self, group: str) -> str:
        """Return the precision of ``group``; ``head.decode`` is fp32 unless named."""
        named = dict(self.precision)
        if group in named:
            return str(named[group])
        return "fp32" if group == DECODE_GROUP else self.default

    @property
    def active(self) -> bool:
        """True when any group runs in a precision other than fp32."""
        return self.default != "fp32" or any(p != "fp32" for _, p in self.precision)

    @property
    def precisions(self) -> frozenset[str]:
        """The precisions this plan uses."""
        return frozenset({self.default, *(p for _, p in self.precision)})


@dataclass(frozen=True, kw_only=True)
class RecoveryConfig:
    """Recovering a pruned model's accuracy: post-training (no labels), then fine-tuning.

    Attributes:
        method: Post-training recovery right after pruning (training images, no labels, no
            training loop): ``none``; ``bn`` (re-estimate BatchNorm statistics); ``bias`` (the
            layers that lost input channels get the removed channels' mean contribution back,
            measured through the unpruned model); ``ls`` (those layers re-fitted by ridge least
            squares to the unpruned model's outputs, intercept included).
        images: Training images the post-training recovery sees.
        epochs: Fine-tune epochs on the training split (0: none).
        lr: Initial learning rate.
        distill: Fine-tune with the unpruned model as teacher (Ultralytics' knowledge
            distillation, which projects the student's pruned features to the teacher's widths).
    """

    method: str = "none"
    images: int = 32
    epochs: int = 0
    lr: float = 1e-4
    distill: bool = False

    @property
    def post_training(self) -> bool:
        """Whether a post-training recovery runs (only pruned models have one)."""
        return self.method != "none"

    def __post_init__(self) -> None:
        _choice("recovery method", self.method, RECOVERY_METHODS)
        if isinstance(self.images, bool) or not isinstance(self.images, int) or self.images < 1:
            raise PlanError(f"recovery images must be an integer ≥ 1; got {self.images!r}")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 0:
            raise PlanError(f"fine-tune epochs must be an integer ≥ 0; got {self.epochs!r}")
        if isinstance(self.lr, str):  # YAML 1.1 (PyYAML) reads 1e-4, without a dot, as a string
            raise PlanError(
                f"fine-tune lr must be a number; got the string {self.lr!r} (write it as a number: 1e-4 or 0.0001)"
            )
        if not is_real(self.lr) or not 0 < self.lr < 1:
            raise PlanError(f"fine-tune lr must lie in (0, 1); got {self.lr!r}")
        object.__setattr__(self, "lr", float(self.lr))
        if not isinstance(self.distill, bool):
            raise PlanError(f"recovery distill must be true or false; got {self.distill!r}")
        if self.distill and not self.epochs:
            raise PlanError("recovery distill happens while fine-tuning: set recovery.epochs ≥ 1, or distill: false")


@dataclass(frozen=True, kw_only=True)
class CompressionPlan:
    """How to compress one candidate: pruning, then recovery, then quantization.

    Build one directly, from a dict (``from_dict``) or from a JSON/YAML file (``load``).
    Values are checked on construction; ``check`` adds the checks that need the model's group
    names and the size of the training split.
    """

    pruning: PruningConfig = field(default_factory=PruningConfig)
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)

    def __post_init__(self) -> None:
        for name, kind in (
            ("pruning", PruningConfig),
            ("quantization", QuantizationConfig),
            ("recovery", RecoveryConfig),
        ):
            value = getattr(self, name)
            if not isinstance(value, kind):
                raise PlanError(
                    f"CompressionPlan {name} must be a {kind.__name__}; got {value!r}: build it with "
                    f"{kind.__name__}(...), or the whole plan with CompressionPlan.from_dict({{'{name}': ...}})"
                )

    # ----------------------------------------------------------------- validation
    def check_groups(self, groups: Sequence[str]) -> None:
        """Check that every group the plan names is one of a model's layer groups.

        Raises:
            PlanError: Unknown group names; the message lists the valid ones.
        """
        valid = set(groups)
        for kind, named in (("pruning", self.pruning.ratios), ("precision", self.quantization.precision)):
            allowed = valid | ({DECODE_GROUP} if kind == "precision" else set())
            unknown = sorted(g for g, _ in named if g not in allowed)
            if unknown:
                raise PlanError(
                    f"unknown {kind} group {', '.join(repr(u) for u in unknown)}; valid groups: "
                    + ", ".join(sorted(allowed, key=_group_sort_key))
                )

    def check(self, *, groups: Sequence[str], n_train_images: int) -> None:
        """Check the plan against a model's layer groups and a dataset's training split.

        Args:
            groups: Valid layer group names of the model (``backbone.4``, ``head.cv2.0``, ...).
            n_train_images: Number of images in the training split.

        Raises:
            PlanError: Unknown group names (the message lists the valid ones), or more
                calibration images (of a plan with INT8 layers) or post-training recovery images
                (of a pruned plan) than the training split holds.
        """
        self.check_groups(groups)
        if self.pruning.active and self.recovery.post_training and self.recovery.images > n_train_images:
            default = " (also the default when unset)" if self.recovery.images == RecoveryConfig().images else ""
            raise PlanError(
                f"recovery.images is {self.recovery.images}{default} but the training split holds {n_train_images} "
                f"images; set recovery.images to at most {n_train_images} in the plan"
            )
        n = self.quantization.calibration_images
        if "int8" in self.quantization.precisions and n > n_train_images:  # only INT8 layers calibrate
            default = " (also the default when unset)" if n == QuantizationConfig().calibration_images else ""
            raise PlanError(
                f"quantization.calibration_images is {n}{default} but the training split holds {n_train_images} "
                f"images; set quantization.calibration_images to at most {n_train_images} in the plan"
            )

    # -------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (mappings as dicts) that ``from_dict`` rebuilds."""
        return {
            "pruning": {
                "ratios": dict(self.pruning.ratios),
                "importance": self.pruning.importance,
                "round_to": self.pruning.round_to,
            },
            "quantization": {
                "default": self.quantization.default,
                "precision": dict(self.quantization.precision),
                "activation_type": self.quantization.activation_type,
                "calibration_method": self.quantization.calibration_method,
                "calibration_images": self.quantization.calibration_images,
                "per_channel": self.quantization.per_channel,
                "shared_ranges": self.quantization.shared_ranges,
            },
            "recovery": {
                "method": self.recovery.method,
                "images": self.recovery.images,
                "epochs": self.recovery.epochs,
                "lr": self.recovery.lr,
                "distill": self.recovery.distill,
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompressionPlan:
        """Build a plan from ``to_dict`` output (sections and keys may be omitted).

        Raises:
            PlanError: Unknown sections or keys, or invalid values.
        """
        if not isinstance(data, Mapping):
            raise PlanError("a plan must be a mapping with 'pruning', 'quantization', 'recovery'")
        sections: dict[str, Any] = {
            "pruning": PruningConfig,
            "quantization": QuantizationConfig,
            "recovery": RecoveryConfig,
        }
        unknown = set(data) - set(sections)
        if unknown:
            raise PlanError(f"unknown plan section(s) {sorted(unknown)}; valid: {list(sections)}")
        kwargs: dict[str, Any] = {}
        for name, section_cls in sections.items():
            raw = data.get(name)
            if raw is None:  # omitted, or an empty YAML section
                raw = {}
            if not isinstance(raw, Mapping):
                raise PlanError(f"plan section '{name}' must be a mapping of its settings (key: value); got {raw!r}")
            names = {f.name for f in fields(section_cls)}
            bad = set(raw) - names
            if bad:
                raise PlanError(f"unknown key(s) {sorted(bad)} in '{name}'; valid: {sorted(names)}")
            values = dict(raw)
            for key in ("ratios", "precision"):
                if key in values:
                    if not isinstance(values[key], Mapping):
                        raise PlanError(f"'{name}.{key}' must be a mapping of group name to value")
                    values[key] = _pairs(f"'{name}.{key}'", values[key])
            kwargs[name] = section_cls(**values)
        return cls(**kwargs)

    def to_json(self) -> str:
        """Return the plan as indented JSON."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CompressionPlan:
        """Parse a plan from JSON text."""
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise PlanError(f"plan is not valid JSON: {exc}") from exc

    def to_yaml(self) -> str:
        """Return the plan as YAML."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> CompressionPlan:
        """Parse a plan from YAML (or JSON, which is YAML) text."""
        try:
            return cls.from_dict(_yaml.load(text) or {})
        except yaml.YAMLError as exc:
            raise PlanError(f"plan is not valid YAML: {yaml_problem(exc)}") from exc

    def save(self, path: str | Path) -> Path:
        """Write the plan to ``path`` (JSON for ``.json``, YAML otherwise); missing folders are created."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json() if path.suffix == ".json" else self.to_yaml())
        return path

    @classmethod
    def load(cls, path: str | Path) -> CompressionPlan:
        """Read a plan from a JSON or YAML file, or from the ``plan:`` of a ``recipe.yaml`` that ``tune export`` wrote.

        Raises:
            PlanError: Missing or unreadable file, or invalid plan.
        """
        path = Path(path)
        if not path.is_file():
            raise PlanError(f"plan file {path} is a directory" if path.is_dir() else f"plan file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PlanError(
                f"plan file {path} cannot be read as UTF-8 text ({type(exc).__name__}); give a JSON or YAML plan file"
            ) from None
        try:
            data = json.loads(text) if path.suffix == ".json" else _yaml.load(text)
        except json.JSONDecodeError as exc:
            raise PlanError(f"plan file {path} is not valid JSON: {exc}") from exc
        except yaml.YAMLError as exc:
            raise PlanError(f"plan file {path} is not valid YAML: {yaml_problem(exc)}") from exc
        if data is None:
            raise PlanError(
                f"plan file {path} is empty; give at least one of pruning, quantization, recovery "
                "(the uncompressed model's plan is `{}`)"
            )
        if isinstance(data, dict) and {"study", "trial", "plan"} <= data.keys() and isinstance(data["plan"], dict):
            data = data["plan"]  # an export's recipe: the plan it records (as plan.yaml beside it)
        try:
            return cls.from_dict(data)
        except PlanError as exc:  # which file is wrong, not only what in it
            raise PlanError(f"plan file {path}: {exc}") from exc

    def effective(self) -> CompressionPlan:
        """This plan with every setting that does not change what is built set to its default.

        A group pruned by 0, or named with the precision it gets unnamed, is left out. Without
        pruning, importance, rounding and post-training recovery do nothing (nor do the
        recovery's images without a recovery, unless activations rank the channels); without
        fine-tuning, its learning rate and distillation; without INT8 layers, calibration. Two
        plans with the same ``effective()`` build the same model.
        """
        pruning, quant, recovery = self.pruning, self.quantization, self.recovery
        # a group pruned by 0, or given the precision it would have anyway, is a group left out
        pruning = replace(pruning, ratios=tuple((g, r) for g, r in pruning.ratios if r > 0))
        unnamed = {g: "fp32" if g == DECODE_GROUP else quant.default for g, _ in quant.precision}
        quant = replace(quant, precision=tuple((g, p) for g, p in quant.precision if p != unnamed[g]))
        if not pruning.active:
            pruning = PruningConfig()
        if not pruning.active:
            recovery = replace(recovery, method=RecoveryConfig.method, images=RecoveryConfig.images)
        elif not recovery.post_training and pruning.importance != "activation":  # which ranks on those images
            recovery = replace(recovery, images=RecoveryConfig.images)
        if not recovery.epochs:
            recovery = replace(recovery, lr=RecoveryConfig.lr, distill=RecoveryConfig.distill)
        if "int8" not in quant.precisions:
            quant = QuantizationConfig(default=quant.default, precision=quant.precision)
        return CompressionPlan(pruning=pruning, quantization=quant, recovery=recovery)

    # ---------------------------------------------------------------- summaries
    def brief(self, *, groups: Sequence[str] | None = None) -> str:
        """Return a one-line summary, e.g. ``prune 3 group(s) ≤30% l2/16 · int8 u8 minmax×32 · ls×32 · ft 2ep``.

        Args:
            groups: The model's layer groups. With them, the default precision is listed whenever
                a group is left to it, so a plan that names only some groups ``int8`` (default
                fp32) reads ``fp32/int8 ...``, not like a uniform INT8 plan. Without them, the
                default precision is listed only when it is not fp32 or the plan names no group.
        """
        parts = []
        if self.pruning.active:
            active = [r for _, r in self.pruning.ratios if r > 0]
            parts.append(
                f"prune {len(active)} group(s) ≤{max(active):.0%} {self.pruning.importance}/{self.pruning.round_to}"
            )
        if self.quantization.active:
            q = self.quantization
            act = "u8" if q.activation_type == "uint8" else "s8"
            named = {p for _, p in q.precision}
            if groups is None:
                defaulted = q.default != "fp32" or not named
            else:
                defaulted = not set(groups) <= {g for g, _ in q.precision}
            used = named | ({q.default} if defaulted or not named else set())
            shared = " shared" if q.shared_ranges and "int8" in used else ""
            summary = f"{'/'.join(sorted(used))} {act} {q.calibration_method}×{q.calibration_images}{shared}"
            parts.append("fp32" if used == {"fp32"} else summary)
        else:
            parts.append("fp32")
        if self.pruning.active and self.recovery.post_training:
            parts.append(f"{self.recovery.method}×{self.recovery.images}")
        if self.recovery.epochs:
            parts.append(f"ft {self.recovery.epochs}ep" + (" kd" if self.recovery.distill else ""))
        return " · ".join(parts)


def _group_sort_key(name: str) -> tuple[int, str, int]:
    order = {"backbone": 0, "neck": 1, "head": 2}
    head, _, rest = name.partition(".")
    digits = "".join(c for c in rest if c.isdigit())
    return (order.get(head, 3), rest.rstrip("0123456789"), int(digits) if digits else -1)
