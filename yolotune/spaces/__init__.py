"""Search spaces: turn an Optuna trial into a ``CompressionPlan``.

Pure: no torch; the only I/O is ``CompressionPlan.load`` / ``save``.
"""

from __future__ import annotations

from yolotune.spaces._default import SPACE_OPTIONS, DefaultSpace, Space, TrialLike, coarse_units
from yolotune.spaces._plan import (
    ACTIVATION_TYPES,
    CALIBRATION_METHODS,
    DECODE_GROUP,
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

__all__ = [
    "ACTIVATION_TYPES",
    "CALIBRATION_METHODS",
    "DECODE_GROUP",
    "IMPORTANCE_CRITERIA",
    "MAX_PRUNING_RATIO",
    "PRECISIONS",
    "RECOVERY_METHODS",
    "ROUND_TO",
    "SPACE_OPTIONS",
    "CompressionPlan",
    "DefaultSpace",
    "PruningConfig",
    "QuantizationConfig",
    "RecoveryConfig",
    "Space",
    "TrialLike",
    "coarse_units",
]
