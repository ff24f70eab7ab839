"""Bias compensation and ridge least-squares reconstruction of the consumers of pruned channels.

A *consumer* is a convolution that lost input channels. Both stages pair each consumer of the
pruned model with the same-named convolution of an unpruned copy and run calibration images
through both:

``bias``: the removed channels' mean contribution to the consumer's output,
``E[z_unpruned] - E[z_pruned]`` per kept output channel (with zero padding exactly accounted),
is added to the consumer's bias, or subtracted from its BatchNorm's running mean when the
convolution has no bias (Ultralytics' Conv = conv → BN → SiLU).

``ls``: the consumer's weights and an intercept are re-fitted by ridge least squares so that, on
a bounded sample of output positions, the pruned consumer fed with the *pruned* model's
activations reproduces the unpruned consumer's output (Luo et al., ThiNet; He et al., channel
pruning). The intercept subsumes the bias compensation. Memory is bounded by ``positions``:
targets take ``positions × out_channels`` floats per consumer, normal equations
``(in_channels·k² + 1)²`` doubles.

Consumers are corrected one by one in model order, each measured on a forward pass that stops
right after it, so its inputs come from the consumers upstream already corrected (correcting all
at once from one pass over-corrects: upstream fixes change downstream inputs, and on uniform
pruning errors grew layer after layer). Given the model's layers and what each reads
(``layers``), a pass reuses the outputs of the layers before the consumer's, all final by then,
instead of running them again: the consumers of a pruned YOLOv8n then cost a few forward passes,
not one per consumer. The outputs kept are those a later layer still reads, for every calibration
image (counted in the report's ``buffer_mb``, and bounded by ``cache_mb``).
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from yolotune.compression._prune import KeptChannels

__all__ = ["ReconstructReport", "reconstruct_consumers"]


@dataclass(frozen=True, kw_only=True)
class ReconstructReport:
    """What bias compensation or reconstruction did."""

    method: str
    layers: int
    images: int
    positions: int
    buffer_mb: float
    seconds: float
    #: consumer name -> relative output error (||z_pruned - z_unpruned|| / ||z_unpruned||) on the
    #: sampled positions, before and after
    errors: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass(kw_only=True)
class _Consumer:
    name: str
    pruned: nn.Conv2d
    original: nn.Conv2d
    norm: nn.BatchNorm2d | None
    out_idx: torch.Tensor
    picks: dict[int, torch.Tensor] = field(default_factory=dict)
    targets: dict[int, torch.Tensor] = field(default_factory=dict)
    mean_original: torch.Tensor | None = None
    sum_pruned: torch.Tensor | None = None
    count: int = 0
    gram: torch.Tensor | None = None
    cross: torch.Tensor | None = None
    err: float = 0.0
    norm_target: float = 0.0
    base_mean: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.pruned.bias is None and self.norm is not None:
            assert self.norm.running_mean is not None
            self.base_mean = self.norm.running_mean.clone()

    def offset(self) -> torch.Tensor | float:
        """What the BN's running mean adds to the conv output, relative to its value at pruning."""
        if self.base_mean is None or self.norm is None or self.norm.running_mean is None:
            return 0.0
        return (self.base_mean - self.norm.running_mean)[:, None]


def _positions(size: int, count: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(size, generator=gen)[: min(count, size)]


def consumers(
    pruned: nn.Module,
    original: nn.Module,
    kept: Mapping[str, KeptChannels],
    norms: Mapping[nn.Module, nn.BatchNorm2d],
) -> list[_Consumer]:
    """Pair every convolution of ``pruned`` that lost inputs with its unpruned twin, in model order."""
    twins = dict(original.named_modules())
    found = []
    for name, module in pruned.named_modules():
        info = kept.get(name)
        if info is None or not info.inputs_pruned or not isinstance(module, nn.Conv2d):
            continue
        twin = twins.get(name)
        if not isinstance(twin, nn.Conv2d) or module.groups != 1 or isinstance(module.padding, str):
            continue
        found.append(
            _Consumer(
                name=name,
                pruned=module,
                original=twin,
                norm=norms.get(module),
                out_idx=torch.tensor(info.out, dtype=torch.long),
            )
        )
    return found


class _Stop(Exception):
    """Raised by a hook to end a forward pass early: nothing after the layer is needed."""


def _raise_stop(_m: nn.Module, _inputs: Any, _output: Any) -> None:
    raise _Stop


def _run(
    model: nn.Module,
    images: Sequence[np.ndarray],
    hooks: list[tuple[nn.Module, Any]],
    batch: int,
    *,
    stop_after: nn.Module | None = None,
    cache: _LayerCache | None = None,
) -> None:
    """Run ``images`` through ``model`` with forward ``hooks``; stop each pass after ``stop_after``.

    With ``cache`` (inside ``cache.before(...)``), the final layers' outputs are kept and reused per batch.
    """
    handles = [m.register_forward_hook(fn) for m, fn in hooks]
    if stop_after is not None:
        handles.append(stop_after.register_forward_hook(_raise_stop))
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch):
                if cache is not None:
                    cache.batch = start
                with contextlib.suppress(_Stop):
                    model(torch.from_numpy(np.concatenate(images[start : start + batch])))
    finally:
        for h in handles:
            h.remove()


class _LayerCache:
    """Outputs of a model's final layers, served instead of running those layers again.

    Consumers are fitted in model order, each on a pass that stops right after it, so every layer
    before the consumer's is final (its own consumers are fitted). Its output on each batch is kept
    from the first pass that computes it, while a layer not yet final still reads it, and served
    from then on. A served layer that no later layer reads returns ``None``: nothing uses it.
    """

    def __init__(self, layers: Sequence[nn.Module], reads: Sequence[Sequence[int]]) -> None:
        self.layers = list(layers)
        n = len(self.layers)
        #: the last layer that reads each layer's output (itself when none does)
        self.last_read = [max((k for k in range(n) if j in reads[k]), default=j) for j in range(n)]
        self.owner = {id(m): i for i, layer in enumerate(self.layers) for m in layer.modules()}
        self.outputs: dict[int, dict[int, Any]] = {}  # layer -> first image of the batch -> output
        self.final = 0  # layers before this one are served
        self.batch = 0
        self.peak = 0  # bytes of the outputs kept at most

    def layer_of(self, module: nn.Module) -> int | None:
        """Index of the layer holding ``module`` (``None``: no layer does)."""
        return self.owner.get(id(module))

    @contextlib.contextmanager
    def before(self, layer: int) -> Iterator[None]:
        """During the passes inside: serve the final layers, keep what layers from ``layer`` on read."""
        served = self.layers[: self.final]
        own = [module.__dict__.get("forward") for module in served]  # a forward set on the instance itself
        for j, module in enumerate(served):
            module.forward = functools.partial(self._serve, j)  # the instance's, over its class's
        handles = [
            self.layers[j].register_forward_hook(functools.partial(self._keep, j))
            for j in range(self.final, layer)
            if self.last_read[j] >= layer
        ]
        try:
            yield
        finally:
            for module, forward in zip(served, own, strict=True):
                del module.forward
                if forward is not None:
                    module.forward = forward
            for h in handles:
                h.remove()
        self.peak = max(self.peak, self.nbytes())
        self.final = max(self.final, layer)
        for j in [j for j in self.outputs if self.last_read[j] < self.final]:
            del self.outputs[j]

    def nbytes(self) -> int:
        """Bytes of the outputs kept."""
        return sum(t.nbytes for per in self.outputs.values() for t in per.values() if isinstance(t, torch.Tensor))

    def _serve(self, layer: int, *_args: Any, **_kwargs: Any) -> Any:
        kept = self.outputs.get(layer, {}).get(self.batch)
        # a copy: a layer that changed its input in place would otherwise change what later passes get
        return kept.clone() if isinstance(kept, torch.Tensor) else kept

    def _keep(self, layer: int, _m: nn.Module, _inputs: Any, output: Any) -> None:
        self.outputs.setdefault(layer, {})[self.batch] = output


@torch.no_grad()
def reconstruct_consumers(
    pruned: nn.Module,
    original: nn.Module,
    kept: Mapping[str, KeptChannels],
    images: Sequence[np.ndarray],
    *,
    norms: Mapping[nn.Module, nn.BatchNorm2d],
    method: str,
    positions: int = 16384,
    ridge: float = 1e-2,
    memory_mb: float = 256.0,
    batch: int = 8,
    layers: Sequence[tuple[nn.Module, Sequence[int]]] | None = None,
    cache_mb: float = 1024.0,
) -> ReconstructReport:
    """Correct the consumers of pruned channels in ``pruned`` (in place) against ``original``.

    Args:
        pruned: The pruned model.
        original: An unpruned copy, module names matching ``pruned`` (read only).
        kept: Surviving channel indices per convolution name (``prune(..., kept=...)``).
        images: 1xCxHxW calibration arrays, preprocessed as the model sees them.
        norms: The BatchNorm that follows each convolution of ``pruned`` (none: conv bias).
        method: ``bias`` (mean compensation) or ``ls`` (ridge least-squares reconstruction).
        positions: Output positions sampled per consumer, spread over the images (``ls``).
        ridge: Ridge term, relative to the mean diagonal of the inputs' Gram matrix (``ls``).
        memory_mb: Bound on the sampled targets of all consumers (fewer positions when needed).
        batch: Images per forward pass.
        layers: ``pruned``'s top-level layers in the order its forward pass runs each of them once,
            with the indices of the earlier layers whose outputs each one reads; the passes then
            reuse the outputs of the layers before each consumer's (the same numbers, fewer
            passes). ``None``: every pass runs the whole model up to the consumer.
        cache_mb: Bound on the layer outputs kept for ``layers`` (beyond it, whole passes again).

    Returns:
        Layer count, sample size, buffer memory, time and each consumer's relative output error.
    """
    if method not in ("bias", "ls"):
        raise ValueError(f"unknown reconstruction method {method!r}")
    t0 = time.perf_counter()
    found = consumers(pruned, original, kept, norms)
    n = len(images)
    channels = sum(len(c.out_idx) for c in found)
    per_image = max(1, min(math.ceil(positions / max(n, 1)), int(memory_mb * 2**20 / 4 / max(n * channels, 1))))
    offsets = {id(c.pruned): 0 for c in found}

    def original_hook(c: _Consumer) -> Any:
        def hook(_m: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            z = output[:, c.out_idx].flatten(2)  # B, C, L
            total = z.sum(dim=(0, 2)).double()
            c.mean_original = total if c.mean_original is None else c.mean_original + total
            c.count += z.shape[0] * z.shape[2]
            for b in range(z.shape[0]):
                i = offsets[id(c.pruned)] + b
                pick = _positions(z.shape[2], per_image, seed=i * 7919 + len(c.name))
                c.picks[i] = pick
                c.targets[i] = z[b][:, pick].T.contiguous()  # m, C
            offsets[id(c.pruned)] += z.shape[0]

        return hook

    def pruned_hook(c: _Consumer, *, fit: bool) -> Any:
        conv = c.pruned
        padding = conv.padding
        assert not isinstance(padding, str)  # consumers() skips padding="same"

        def hook(_m: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            z = output.flatten(2) + c.offset()
            if fit:
                total = z.sum(dim=(0, 2)).double()
                c.sum_pruned = total if c.sum_pruned is None else c.sum_pruned + total
            cols = None
            if method == "ls" and fit:
                cols = F.unfold(
                    inputs[0], conv.kernel_size, dilation=conv.dilation, padding=padding, stride=conv.stride
                )  # B, d, L
            for b in range(z.shape[0]):
                i = offsets[id(c.pruned)] + b
                pick, target = c.picks[i], c.targets[i]
                c.err += float(((z[b][:, pick].T - target) ** 2).sum())
                c.norm_target += float((target**2).sum())
                if cols is None:
                    continue
                x = cols[b][:, pick].T.double()
                x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
                gram, cross = x.T @ x, x.T @ target.double()
                c.gram = gram if c.gram is None else c.gram + gram
                c.cross = cross if c.cross is None else c.cross + cross
            offsets[id(c.pruned)] += z.shape[0]

        return hook

    _run(original, images, [(c.original, original_hook(c)) for c in found], batch)
    for c in found:
        assert c.mean_original is not None
        c.mean_original = c.mean_original / max(c.count, 1)

    def measure() -> dict[str, float]:
        for c in found:
            c.err, c.norm_target = 0.0, 0.0
        offsets.update((id(c.pruned), 0) for c in found)
        _run(pruned, images, [(c.pruned, pruned_hook(c, fit=False)) for c in found], batch)
        return {c.name: math.sqrt(c.err / max(c.norm_target, 1e-30)) for c in found}

    before = measure()
    buffer = sum(_buffer_bytes(c) for c in found)
    cache = _LayerCache([m for m, _ in layers], [r for _, r in layers]) if layers else None
    for c in found:  # in model order: each consumer sees the ones before it corrected
        c.sum_pruned, c.gram, c.cross = None, None, None
        offsets[id(c.pruned)] = 0
        at = cache.layer_of(c.pruned) if cache is not None else None
        if cache is not None and (at is None or at < cache.final):
            cache = None  # a consumer outside the layers, or out of order: whole passes from here on
        with cache.before(at) if cache is not None and at is not None else contextlib.nullcontext():
            _run(pruned, images, [(c.pruned, pruned_hook(c, fit=True))], batch, stop_after=c.pruned, cache=cache)
        cached = cache.peak if cache is not None else 0
        buffer = max(buffer, sum(_buffer_bytes(c) for c in found) + cached)
        if cache is not None and cache.peak > cache_mb * 2**20:
            cache = None  # too many images or too large a model to keep them: whole passes from here on
        if method == "bias":
            assert c.sum_pruned is not None and c.mean_original is not None
            _shift(c, (c.mean_original - c.sum_pruned / max(c.count, 1)).float())
        else:
            _solve(c, ridge)
        c.gram, c.cross = None, None
    after = measure()
    return ReconstructReport(
        method=method,
        layers=len(found),
        images=n,
        positions=per_image * n if found else 0,
        buffer_mb=buffer / 2**20,
        seconds=time.perf_counter() - t0,
        errors={name: (round(before[name], 4), round(after[name], 4)) for name in before},
    )


def _buffer_bytes(c: _Consumer) -> int:
    """Bytes held for one consumer: sampled targets (float32) and normal equations (float64)."""
    held = sum(t.numel() for t in c.targets.values()) * 4
    return held + sum(t.numel() * 8 for t in (c.gram, c.cross) if t is not None)


def _shift(c: _Consumer, delta: torch.Tensor) -> None:
    """Add ``delta`` to the consumer's pre-activation output: conv bias, else BN running mean."""
    conv = c.pruned
    if conv.bias is not None:
        conv.bias.add_(delta)
    elif c.norm is not None:
        assert c.norm.running_mean is not None
        c.norm.running_mean.sub_(delta)
    else:
        conv.bias = nn.Parameter(delta.clone())


def _solve(c: _Consumer, ridge: float) -> None:
    """Ridge least squares for the consumer's weights and intercept (intercept unregularised)."""
    assert c.gram is not None and c.cross is not None
    d = c.gram.shape[0] - 1
    reg = torch.zeros(d + 1, dtype=c.gram.dtype)
    reg[:d] = ridge * float(torch.diagonal(c.gram)[:d].mean())
    solution = torch.linalg.solve(c.gram + torch.diag(reg), c.cross)  # d+1, C
    conv = c.pruned
    weight = solution[:d].T.reshape(conv.weight.shape).to(conv.weight.dtype)
    intercept = solution[d].to(conv.weight.dtype)
    conv.weight.copy_(weight)
    if conv.bias is not None:
        conv.bias.copy_(intercept)
    elif c.norm is not None and c.base_mean is not None:
        assert c.norm.running_mean is not None
        c.norm.running_mean.copy_(c.base_mean - intercept)
    else:
        conv.bias = nn.Parameter(intercept.clone())
