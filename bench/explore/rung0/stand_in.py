"""Which post-training recovery should rung 0 run in place of a plan's `ls`? (exploratory)

yolov8n-coco / tiny_coco at 320 px, FP32 ONNX, each row a `run_candidate` validated on all 50
validation images (and on the 16 rung 0 validates by default). For a few pruned plans: the plan's
own `ls` on 32 images, `ls` on 8 images, `bias` on 8, and `bn` on 32 (the stand-in rung 0 used),
with the seconds of the recovery step. Prints a table; writes stand_in.json beside this file.

    PYTHONPATH=. .venv/bin/python bench/explore/rung0/stand_in.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from yolotune import CompressionPlan
from yolotune.assets import prepare_dataset, resolve_model, val_subset
from yolotune.compression import ultralytics_adapter as adapter
from yolotune.evaluators import measure_map
from yolotune.search import CandidateSettings, build_candidate

TOLERANT = ("backbone.7", "neck.16", "head.cv2.0", "head.cv3.0", "head.cv2.1", "head.cv3.1")
VARIANTS = {"ls×32": ("ls", 32), "ls×8": ("ls", 8), "bias×8": ("bias", 8), "bn×32": ("bn", 32), "none": ("none", 32)}


def plans() -> dict[str, dict]:
    groups = adapter.model_layout(adapter.load_model(resolve_model("yolov8n-coco.pt"))).groups
    uniform = {g: 0.1 for g in groups if g not in ("backbone.0", "backbone.2")}
    return {
        "tolerant 25% l2": {"ratios": dict.fromkeys(TOLERANT, 0.25), "round_to": 8, "importance": "l2"},
        "tolerant 40% activation": {"ratios": dict.fromkeys(TOLERANT, 0.4), "round_to": 8, "importance": "activation"},
        "uniform 10% activation": {"ratios": uniform, "round_to": 8, "importance": "activation"},
        "neck+head 30% bn_scale": {
            "ratios": {g: 0.3 for g in groups if g.startswith(("neck.", "head."))},
            "round_to": 8,
            "importance": "bn_scale",
        },
    }


def main() -> None:
    data = prepare_dataset("tiny_coco")
    sub = val_subset(data, 16)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, pruning in plans().items():
            for variant, (method, images) in VARIANTS.items():
                plan = CompressionPlan.from_dict({"pruning": pruning, "recovery": {"method": method, "images": images}})
                out = Path(tmp) / f"{len(rows)}"
                built = build_candidate(
                    model="yolov8n-coco.pt",
                    data="tiny_coco",
                    plan=plan,
                    out_dir=out,
                    settings=CandidateSettings(imgsz=320),
                )
                m16 = measure_map(built.deployable, sub, imgsz=320).map50_95
                row = {
                    "plan": name,
                    "recovery": variant,
                    "map50_95": built.accuracy.map50_95,
                    "map50_95_val16": m16,
                    "recover_s": built.step_seconds.get("recover", 0.0),
                }
                rows.append(row)
                print(
                    f"{name:28s} {variant:8s} mAP {row['map50_95']:.4f}  val16 {m16:.4f}  "
                    f"recover {row['recover_s']:.1f} s",
                    flush=True,
                )
    Path(__file__).with_name("stand_in.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
