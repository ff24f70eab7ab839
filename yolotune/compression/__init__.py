"""Compression steps: turn a model and a plan into a deployable artifact.

Exported here: ``prune`` (torch-pruning), ``recover`` / ``reestimate_batchnorm`` (post-training
recovery) and ``quantize`` (ONNX Runtime static QDQ). Fine-tuning (Ultralytics' trainer on the
pruned model) and ONNX export are ``ultralytics_adapter.finetune`` and
``ultralytics_adapter.export_onnx``: all Ultralytics surgery lives in
``yolotune.compression.ultralytics_adapter``.
"""

from __future__ import annotations

from yolotune.compression._prune import PRUNING_FORMAT, KeptChannels, PruneReport, count_macs_params, prune
from yolotune.compression._quantize import (
    CALIBRATION_FORMAT,
    DEFAULT_CALIBRATION_MEMORY_GB,
    CalibrationEstimate,
    QuantizeReport,
    check_calibration_budget,
    estimate_calibration_memory,
    quantize,
)
from yolotune.compression._recover import RecoverReport, recover, reestimate_batchnorm, unpruned_copy

__all__ = [
    "CALIBRATION_FORMAT",
    "DEFAULT_CALIBRATION_MEMORY_GB",
    "PRUNING_FORMAT",
    "CalibrationEstimate",
    "KeptChannels",
    "PruneReport",
    "QuantizeReport",
    "RecoverReport",
    "check_calibration_budget",
    "count_macs_params",
    "estimate_calibration_memory",
    "prune",
    "quantize",
    "recover",
    "reestimate_batchnorm",
    "unpruned_copy",
]
