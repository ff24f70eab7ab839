"""INT8 with 8-bit against 7-bit weights (ONNX Runtime's ``reduce_range``) on this machine's CPU.

On x86 CPUs without VNNI, ONNX Runtime's u8×s8 convolutions sum products pairwise in int16 and
can saturate; yolotune then quantizes weights to 7 bits (``yolotune.evaluators.int8_saturates``).
This builds yolov8n-coco on tiny_coco at 320 px through ``run_candidate`` (FP32, and INT8 with each
calibration and both weight widths), validates each on all 50 validation images, and times them on
local-cpu interleaved (median of round medians).

    PYTHONPATH=. .venv/bin/python bench/reduce_range.py    # writes bench/results/reduce_range.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from yolotune import CompressionPlan
from yolotune.evaluators import LocalCPUTarget, int8_saturates
from yolotune.evaluators._device import cpu_name
from yolotune.search import CandidateSettings, run_candidate

OUT = Path(__file__).parent / "results" / "reduce_range.json"
CALIBRATIONS = (("minmax", 16), ("minmax", 32), ("percentile", 32))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    variants: dict[str, tuple[dict[str, object], bool]] = {"fp32": ({}, False)}
    for method, n in CALIBRATIONS:
        q = {"default": "int8", "calibration_method": method, "calibration_images": n}
        for bits in (8, 7):
            variants[f"int8 {method} {n} img, {bits}-bit weights"] = ({"quantization": q}, bits == 7)
    rows: dict[str, dict[str, float]] = {}
    files: dict[str, Path] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (key, (plan, reduced)) in enumerate(variants.items()):
            r = run_candidate(
                model="yolov8n-coco.pt",
                data="tiny_coco",
                plan=CompressionPlan.from_dict(plan),
                out_dir=Path(tmp) / str(i),
                settings=CandidateSettings(imgsz=320, int8_reduce_range=reduced),
                target=LocalCPUTarget(),
            )
            files[key] = r.deployable
            rows[key] = {"map50_95": round(r.accuracy.map50_95, 4)}
            print(key, rows[key], flush=True)
        target = LocalCPUTarget(warmup=10, runs=60)
        ms: dict[str, list[float]] = {k: [] for k in files}
        for _ in range(args.rounds):
            for k, f in files.items():
                ms[k].append(target.benchmark(f, imgsz=320).median_ms)
    base_ms = statistics.median(ms["fp32"])
    print(f"CPU: {cpu_name()}; int8_saturates: {int8_saturates()}")
    print("| model | mAP50-95 | Δ points vs FP32 | ms | vs FP32 |")
    print("|---|---|---|---|---|")
    for k, row in rows.items():
        row["ms"] = round(statistics.median(ms[k]), 2)
        row["speedup"] = round(base_ms / row["ms"], 2)
        row["drop_points"] = round(100 * (rows["fp32"]["map50_95"] - row["map50_95"]), 2)
        print(f"| {k} | {row['map50_95']:.4f} | {-row['drop_points']:+.2f} | {row['ms']:.2f} | {row['speedup']:.2f}x |")
    result = {"cpu": cpu_name(), "int8_saturates": int8_saturates(), "rounds": args.rounds, "rows": rows}
    OUT.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
