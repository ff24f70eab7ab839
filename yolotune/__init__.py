"""yolotune: make YOLO detectors small and fast for a chosen device, measured, not guessed."""

from __future__ import annotations

from yolotune.errors import PlanError, SearchStopped, StepError, YolotuneError
from yolotune.spaces import CompressionPlan, PruningConfig, QuantizationConfig, RecoveryConfig

__version__ = "0.1.0"

__all__ = [
    "CompressionPlan",
    "PlanError",
    "PruningConfig",
    "QuantizationConfig",
    "RecoveryConfig",
    "SearchStopped",
    "StepError",
    "YolotuneError",
    "__version__",
]
