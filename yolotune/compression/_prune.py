"""Structured channel pruning with torch-pruning's dependency graph, one ratio per layer group."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from yolotune.compression import ultralytics_adapter as adapter
from yolotune.errors import StepError
from yolotune.spaces import PruningConfig

__all__ = ["PRUNING_FORMAT", "KeptChannels", "PruneReport", "count_macs_params", "prune"]

#: How ``round_to`` rounds the kept channels (to the nearest multiple). A study records it: trials
#: pruned by torch-pruning's own rounding (down to a multiple) do not compare with these.
PRUNING_FORMAT = "round-nearest"


@dataclass(frozen=True, kw_only=True)
class PruneReport:
    """What pruning did: size before and after (torch-pruning's counters, estimates of compute)."""

    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    channels: dict[str, tuple[int, int]]  # group -> (output channels before, after), summed

    @property
    def macs_ratio(self) -> float:
        """MACs after / before (an estimate: latency is measured, never inferred from it)."""
        return self.macs_after / max(self.macs_before, 1)


@dataclass(frozen=True, kw_only=True)
class KeptChannels:
    """Which of a convolution's channels survived pruning, as indices into its unpruned weight."""

    out: tuple[int, ...]
    inputs: tuple[int, ...]
    out_before: int
    inputs_before: int

    @property
    def inputs_pruned(self) -> bool:
        """True when some of the convolution's input channels were removed."""
        return len(self.inputs) < self.inputs_before


class _KeptRecorder:
    """Follow torch-pruning's groups as they prune, composing each conv's kept-index lists.

    Group indices are relative to the layer as it is when the group prunes (a layer fed by a
    concatenation loses inputs in several groups), so removals are applied in order.
    """

    def __init__(self, model: nn.Module) -> None:
        self.names = {m: n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups == 1}
        self.out = {m: list(range(m.out_channels)) for m in self.names}
        self.inputs = {m: list(range(m.in_channels)) for m in self.names}
        self.before = {m: (m.out_channels, m.in_channels) for m in self.names}

    def record(self, group: Any) -> None:
        for dep, idxs in group:
            module = dep.target.module
            if module not in self.names:
                continue
            fn = dep.pruning_fn
            kept = self.out if fn == tp.function.prune_conv_out_channels else None
            if fn == tp.function.prune_conv_in_channels:
                kept = self.inputs
            if kept is None:
                continue
            drop = {int(getattr(i, "idx", i)) for i in idxs}
            kept[module] = [k for j, k in enumerate(kept[module]) if j not in drop]

    def result(self) -> dict[str, KeptChannels]:
        return {
            name: KeptChannels(
                out=tuple(self.out[m]),
                inputs=tuple(self.inputs[m]),
                out_before=self.before[m][0],
                inputs_before=self.before[m][1],
            )
            for m, name in self.names.items()
        }


class ActivationImportance(tp.importance.GroupMagnitudeImportance):
    """Rank channels by their mean absolute activation on calibration images (not by weights).

    For each BatchNorm in a pruning group with recorded statistics, a channel's score is its mean
    |output| after the block's activation; scores are normalised per layer and averaged over the
    group, like torch-pruning's magnitude importances. Groups without statistics fall back to L2.
    """

    def __init__(self, activations: dict[nn.Module, torch.Tensor]) -> None:
        super().__init__(p=2, group_reduction="mean", normalizer="mean")
        self.activations = activations
        self._fallback = tp.importance.MagnitudeImportance(p=2)

    @torch.no_grad()
    def __call__(self, group: Any) -> torch.Tensor:
        scores, root_idxs = [], []
        for i, (dep, idxs) in enumerate(group):
            stats = self.activations.get(dep.layer)
            if stats is None or dep.pruning_fn != tp.function.prune_batchnorm_out_channels:
                continue
            local = stats[idxs]
            scores.append(local / (local.mean() + 1e-12))
            root_idxs.append(group[i].root_idxs)
        if not scores:
            fallback: torch.Tensor = self._fallback(group)
            return fallback
        reduced: torch.Tensor = self._normalize(self._reduce(scores, root_idxs), self.normalizer)
        return reduced


def _importance(name: str, activations: dict[nn.Module, torch.Tensor] | None = None) -> tp.importance.Importance:
    if name == "activation":
        if activations is None:
            raise StepError("prune", "activation importance needs calibration images")
        return ActivationImportance(activations)
    if name == "l1":
        return tp.importance.MagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.MagnitudeImportance(p=2)
    if name == "bn_scale":
        return tp.importance.BNScaleImportance()
    raise StepError("prune", f"unknown importance criterion {name!r}")


def count_macs_params(model: nn.Module, imgsz: int) -> tuple[int, int]:
    """Return (MACs, parameters) of ``model`` for one ``imgsz`` square image (torch-pruning)."""
    example = torch.zeros(1, 3, imgsz, imgsz)
    macs, params = tp.utils.count_ops_and_params(model, example)
    return int(macs), int(params)


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and 1 < module.groups == module.in_channels == module.out_channels


def _borrowed(model: nn.Module) -> set[nn.Module]:
    """Depthwise convolutions and their BatchNorms: layers whose output channels are their input's.

    Their channels belong to the layer that produces their input. YOLO11's Detect branches open
    with one (``cv3.k``): were it a pruning root, pruning ``head.cv3.0`` would prune ``neck.16``.
    """
    norms = adapter.conv_norms(model)
    borrowed: set[nn.Module] = set()
    for m in model.modules():
        if _is_depthwise(m):
            borrowed.add(m)
            if m in norms:
                borrowed.add(norms[m])
    return borrowed


def _out_channels(module: nn.Module) -> int:
    """Output channels a group owns: those of its convolutions, depthwise ones aside."""
    return sum(m.out_channels for m in module.modules() if isinstance(m, nn.Conv2d) and not _is_depthwise(m))


def _ratio_dict(model: nn.Module, groups: dict[str, nn.Module], config: PruningConfig) -> dict[nn.Module, float]:
    """torch-pruning's per-layer ratios: each layer of a named group but the depthwise ones it borrows.

    With ``round_to``, each layer's ratio is the one that keeps the multiple of ``round_to``
    nearest to what the plan's ratio keeps (``_rounded_ratio``).
    """
    borrowed = _borrowed(model)
    ratios: dict[nn.Module, float] = {}
    for name, _ in config.ratios:
        ratio = config.ratio(name)
        if ratio > 0:
            for m in groups[name].modules():
                if not any(True for _ in m.children()) and m not in borrowed:
                    channels = getattr(m, "out_channels", None) or getattr(m, "num_features", None)
                    layer = _rounded_ratio(channels, ratio, config.round_to) if channels else ratio
                    if layer > 0:
                        ratios[m] = layer
    return ratios


def _rounded_ratio(channels: int, ratio: float, round_to: int) -> float:
    """The ratio that keeps the multiple of ``round_to`` nearest to ``channels × (1 - ratio)``.

    torch-pruning rounds the kept channels *down* to a multiple of ``round_to``: 10% of 32
    channels with ``round_to=16`` would keep 16, half of them. Here the nearest multiple (at least
    ``round_to``, halves rounded up: the plan then removes at most the ratio asked for in such a
    tie) is kept instead, and the ratio handed to torch-pruning keeps exactly that many. ``0``:
    the nearest multiple is every channel.
    """
    if round_to <= 1:
        return ratio
    kept = max(round_to, math.floor(channels * (1 - ratio) / round_to + 0.5) * round_to)
    if kept >= channels:
        return 0.0
    # torch-pruning keeps int(channels × (1 - ratio)): half a channel over ``kept`` floors to it exactly
    return 1 - (kept + 0.5) / channels


def prune(
    model: nn.Module,
    config: PruningConfig,
    *,
    imgsz: int,
    images: Callable[[], Iterable[np.ndarray]] | None = None,
    kept: dict[str, KeptChannels] | None = None,
) -> PruneReport:
    """Prune ``model`` in place: each named group loses its ratio of output channels.

    With ``importance="activation"`` channels are ranked by their activations on ``images``
    (unlabelled training images, preprocessed as the model sees them).
    C2f/C3k2 blocks are first made split-free. Groups the config does not name keep all their
    output channels (their inputs shrink where a pruned producer feeds them, and so do the
    outputs of their depthwise convolutions, which are their inputs' channels). The Detect
    output convolutions and DFL are never pruned, so the output shapes stay the same.
    ``kept``, when given, is filled with each convolution's surviving channel indices (by module
    name), which bias compensation and reconstruction pair with an unpruned copy.

    Raises:
        StepError: torch-pruning failed, or the pruned model no longer runs.
    """
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    macs0, params0 = count_macs_params(model, imgsz)
    adapter.make_prunable(model)
    activations = None
    if config.importance == "activation":
        if images is None:
            raise StepError("prune", "activation importance needs calibration images")
        activations = adapter.activation_statistics(model, images())
    groups = adapter.group_modules(model)
    before = {name: _out_channels(m) for name, m in groups.items()}
    ratios = _ratio_dict(model, groups, config)
    example = torch.zeros(1, 3, imgsz, imgsz)
    try:
        pruner = tp.pruner.MetaPruner(
            model,
            example,
            importance=_importance(config.importance, activations),
            pruning_ratio=0.0,
            pruning_ratio_dict=ratios,
            ignored_layers=adapter.never_pruned(model),
            round_to=config.round_to if config.round_to > 1 else None,
            global_pruning=False,
        )
        recorder = _KeptRecorder(model)
        with torch.no_grad():
            for group in pruner.step(interactive=True):
                recorder.record(group)
                group.prune()
            model(example)
    except Exception as exc:
        raise StepError("prune", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if kept is not None:
        kept.update(recorder.result())
    macs1, params1 = count_macs_params(model, imgsz)
    after = {name: _out_channels(m) for name, m in adapter.group_modules(model).items()}
    return PruneReport(
        params_before=params0,
        params_after=params1,
        macs_before=macs0,
        macs_after=macs1,
        channels={name: (before[name], after[name]) for name in before},
    )
