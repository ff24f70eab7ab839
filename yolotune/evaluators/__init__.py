"""Evaluators: mAP, size and latency of a deployable model; targets that time it."""

from __future__ import annotations

from yolotune.evaluators._agent import AgentConfig, AgentServer, read_token
from yolotune.evaluators._base import Accuracy, LatencyStats, Provenance
from yolotune.evaluators._device import int8_saturates
from yolotune.evaluators._lease import compute_lease, timing_lease
from yolotune.evaluators._local_cpu import LocalCPUTarget, timing_lock
from yolotune.evaluators._local_cuda import LocalCUDATarget
from yolotune.evaluators._metrics import measure_map, measure_size
from yolotune.evaluators._remote import RemoteTarget
from yolotune.evaluators._spec import (
    MAX_IMGSZ,
    TargetSpec,
    add_target_file,
    builtin_target_names,
    target_spec,
    target_specs,
)
from yolotune.evaluators._target import Target, get_target, needs_reduce_range, register_runtime, target_names
from yolotune.evaluators._tensorrt import TensorRTTarget

__all__ = [
    "MAX_IMGSZ",
    "Accuracy",
    "AgentConfig",
    "AgentServer",
    "LatencyStats",
    "LocalCPUTarget",
    "LocalCUDATarget",
    "Provenance",
    "RemoteTarget",
    "Target",
    "TargetSpec",
    "TensorRTTarget",
    "add_target_file",
    "builtin_target_names",
    "compute_lease",
    "get_target",
    "int8_saturates",
    "measure_map",
    "measure_size",
    "needs_reduce_range",
    "read_token",
    "register_runtime",
    "target_names",
    "target_spec",
    "target_specs",
    "timing_lease",
    "timing_lock",
]
