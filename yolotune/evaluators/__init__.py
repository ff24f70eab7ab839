"""Evaluators: mAP, size and latency of a deployable model; targets that time it."""

from __future__ import annotations

from yolotune.evaluators._base import Accuracy, LatencyStats, Provenance
from yolotune.evaluators._lease import compute_lease, timing_lease
from yolotune.evaluators._local_cpu import LocalCPUTarget, timing_lock
from yolotune.evaluators._metrics import measure_map, measure_size
from yolotune.evaluators._target import Target, get_target, register_target, target_names

__all__ = [
    "Accuracy",
    "LatencyStats",
    "LocalCPUTarget",
    "Provenance",
    "Target",
    "compute_lease",
    "get_target",
    "measure_map",
    "measure_size",
    "register_target",
    "target_names",
    "timing_lease",
    "timing_lock",
]
