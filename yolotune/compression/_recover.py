"""Post-training recovery of a pruned model from unlabelled training images (no training loop).

``bn``: re-estimate every BatchNorm's running statistics. Pruning removes channels the next
layers were normalised against; the stored means and variances no longer describe the pruned
network's activations. A few forward passes in train mode with a cumulative moving average
(``momentum=None``) replace them — seconds on CPU (field notes: one 25% group at 320 px goes
from 0.269 to 0.335 mAP50-95 on yolov8n-coco).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["RecoverReport", "reestimate_batchnorm"]


@dataclass(frozen=True, kw_only=True)
class RecoverReport:
    """What the post-training recovery did."""

    method: str
    layers: int
    images: int
    seconds: float


def reestimate_batchnorm(
    model: nn.Module,
    images: Iterable[np.ndarray],
    *,
    only: Iterable[nn.Module] | None = None,
    batch: int = 8,
) -> RecoverReport:
    """Replace BatchNorm running statistics by those of ``images`` through ``model``.

    Args:
        model: The (pruned) model; left in eval mode, its weights untouched.
        images: 1xCxHxW float arrays, preprocessed as the model sees them.
        only: Re-estimate only the BatchNorms among these modules (those whose inputs pruning
            changed); the others keep their statistics, estimated on far more data, and stay in
            eval mode during the passes. ``None``: every BatchNorm.
        batch: Images per forward pass (the statistics average over batches).

    Returns:
        How many BatchNorm layers and images were used.
    """
    t0 = time.perf_counter()
    pool = model.modules() if only is None else only
    norms = [m for m in pool if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    seen = 0
    model.eval()
    for m in norms:
        m.train()
    try:
        with torch.no_grad():
            chunk: list[np.ndarray] = []
            for img in images:
                chunk.append(img)
                if len(chunk) == batch:
                    model(torch.from_numpy(np.concatenate(chunk)))
                    seen += len(chunk)
                    chunk = []
            if chunk:
                model(torch.from_numpy(np.concatenate(chunk)))
                seen += len(chunk)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.eval()
    return RecoverReport(method="bn", layers=len(norms), images=seen, seconds=time.perf_counter() - t0)
