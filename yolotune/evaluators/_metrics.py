"""mAP and size of a deployable ONNX file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from yolotune.evaluators._base import Accuracy

if TYPE_CHECKING:
    from yolotune.assets import Dataset

__all__ = ["measure_map", "measure_size"]


def measure_map(model_path: Path, dataset: Dataset, *, imgsz: int) -> Accuracy:
    """mAP50-95 and mAP50 of the ONNX file through Ultralytics' validator on the val split."""
    from yolotune.compression import ultralytics_adapter

    t0 = time.perf_counter()
    m, m50 = ultralytics_adapter.validate_onnx(model_path, dataset, imgsz=imgsz)
    return Accuracy(map50_95=m, map50=m50, images=len(dataset.val_images), seconds=time.perf_counter() - t0)


def measure_size(model_path: Path) -> int:
    """Bytes of the deployable file."""
    return Path(model_path).stat().st_size
