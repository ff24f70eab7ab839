"""Exploratory: INT8 calibration methods and sizes on yolov8n-coco / tiny_coco at 320 px.

The unpruned model, every group INT8 (``head.decode`` float, as yolotune does), per-channel,
uint8 activations; each calibration built by yolotune's own candidate pipeline and validated on
all 50 validation images and (as multi-fidelity rung 0 does) on 16. Reports mAP50-95 and the
seconds of the quantize step. ``entropy`` is yolotune's (ONNX Runtime's KL calibrator given 512
bins); ONNX Runtime's ``quantize_static`` default (128 bins) equals MinMax. Writes results.json.

    PYTHONPATH=. .venv/bin/python bench/explore/calibration/calibration.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from yolotune.search import CandidateSettings, build_candidate
from yolotune.spaces import CompressionPlan

HERE = Path(__file__).parent
CONFIGS = [("minmax", 8), ("minmax", 16), ("minmax", 32), ("percentile", 8), ("percentile", 32), ("entropy", 32)]


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method, n in CONFIGS:
            plan = CompressionPlan.from_dict(
                {"quantization": {"default": "int8", "calibration_method": method, "calibration_images": n}}
            )
            row: dict[str, object] = {"method": method, "images": n}
            for val in (None, 16):
                built = build_candidate(
                    model="yolov8n-coco.pt",
                    data="tiny_coco",
                    plan=plan,
                    out_dir=Path(tmp) / f"{method}-{n}-{val}",
                    settings=CandidateSettings(imgsz=320),
                    stage="rung0" if val else "full",
                    val_images=val,
                )
                row[f"map_val{val or 50}"] = round(built.accuracy.map50_95, 4)
                if val is None:
                    row["quantize_s"] = round(built.step_seconds["quantize"], 1)
            rows.append(row)
            print(row, flush=True)
    (HERE / "results.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
