"""INT8 plus light pruning of the groups that tolerate it, against FP32, on this machine's CPU.

Exploratory (issue 6's "≥2× at ≤1 point" on local-cpu). Every model is built by ``run_candidate``
(yolov8n-coco, tiny_coco, 320 px; INT8 = u8 activations, per-channel, percentile on 32 images,
decode float; pruning ranked by mean activation, recovered on the 50 training images), validated on
all 50 validation images, then all are timed on local-cpu interleaved (median of round medians).

    PYTHONPATH=. .venv/bin/python bench/explore/zen4/prune_int8.py [--rounds 7]   # writes prune_int8.json here
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from yolotune import CompressionPlan
from yolotune.evaluators import LocalCPUTarget, int8_saturates
from yolotune.evaluators._device import cpu_name
from yolotune.search import CandidateSettings, run_candidate

OUT = Path(__file__).with_name("prune_int8.json")
INT8 = {"default": "int8", "calibration_method": "percentile", "calibration_images": 32}


def pruned(ratios: dict[str, float], method: str, round_to: int = 8, importance: str = "activation") -> dict[str, Any]:
    return {
        "pruning": {"ratios": ratios, "importance": importance, "round_to": round_to},
        "recovery": {"method": method, "images": 50},
        "quantization": INT8,
    }


PLANS: dict[str, dict[str, Any]] = {
    "fp32": {},
    "int8": {"quantization": INT8},
    "int8 + neck.16 25% bias": pruned({"neck.16": 0.25}, "bias"),
    "int8 + backbone.0 25% bias": pruned({"backbone.0": 0.25}, "bias"),
    "int8 + backbone.9 25% bias": pruned({"backbone.9": 0.25}, "bias"),
    "int8 + backbone.7 25% ls": pruned({"backbone.7": 0.25}, "ls"),
    "int8 + head.cv2.0/cv3.0 25% ls": pruned({"head.cv2.0": 0.25, "head.cv3.0": 0.25}, "ls"),
    "int8 + backbone.0/neck.16 12.5% bias": pruned({"backbone.0": 0.125, "neck.16": 0.125}, "bias"),
    "int8 + head.cv3.0 20% ls r16": pruned({"head.cv3.0": 0.2}, "ls", 16),
    "int8 + head.cv2.0/cv3.0 20% ls r16": pruned({"head.cv2.0": 0.2, "head.cv3.0": 0.2}, "ls", 16),
    "int8 + head.cv2.0/cv3.0 25% ls r16 l2": pruned({"head.cv2.0": 0.25, "head.cv3.0": 0.25}, "ls", 16, "l2"),
    "int8 + head.cv3.0/cv3.1 20% ls r16": pruned({"head.cv3.0": 0.2, "head.cv3.1": 0.2}, "ls", 16),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--only", nargs="*", help="plan names to build (default: all)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    plans = {k: v for k, v in PLANS.items() if not args.only or k in args.only or k in ("fp32", "int8")}
    rows: dict[str, dict[str, Any]] = {}
    files: dict[str, Path] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (key, plan) in enumerate(plans.items()):
            r = run_candidate(
                model="yolov8n-coco.pt",
                data="tiny_coco",
                plan=CompressionPlan.from_dict(plan),
                out_dir=Path(tmp) / str(i),
                settings=CandidateSettings(imgsz=320),
                target=LocalCPUTarget(),
            )
            files[key] = r.deployable
            rows[key] = {
                "map50_95": round(r.accuracy.map50_95, 4),
                "macs": r.macs,
                "size_mb": round(r.size_mb, 3),
            }
            print(key, rows[key], flush=True)
        target = LocalCPUTarget(warmup=10, runs=60)
        ms: dict[str, list[float]] = {k: [] for k in files}
        for _ in range(args.rounds):
            for k, f in files.items():
                ms[k].append(target.benchmark(f, imgsz=320).median_ms)
    base_ms = statistics.median(ms["fp32"])
    print(f"CPU: {cpu_name()}; int8_saturates: {int8_saturates()}")
    print("| model | MACs | mAP50-95 | Δ points vs FP32 | ms | vs FP32 |")
    print("|---|---|---|---|---|---|")
    for k, row in rows.items():
        row["macs_ratio"] = round(row["macs"] / rows["fp32"]["macs"], 3)
        row["ms"] = round(statistics.median(ms[k]), 2)
        row["ms_rounds"] = [round(x, 2) for x in ms[k]]
        row["speedup"] = round(base_ms / row["ms"], 2)
        row["drop_points"] = round(100 * (rows["fp32"]["map50_95"] - row["map50_95"]), 2)
        print(
            f"| {k} | {row['macs_ratio']:.3f} | {row['map50_95']:.4f} | {-row['drop_points']:+.2f} "
            f"| {row['ms']:.2f} | {row['speedup']:.2f}x |"
        )
    args.out.write_text(json.dumps({"cpu": cpu_name(), "rounds": args.rounds, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
