"""Exploratory: does a smaller input size, with INT8, reach issue 6's 2x at <=1 point?

Builds, through ``run_candidate`` (FastDFL export, validation on all tiny_coco val images at the
model's own size), the FP32 model at the reference size and INT8 models (u8 activations,
per-channel, decode float, 32 calibration images) at the reference size and smaller sizes; then
times all of them on local-cpu interleaved (one timing at a time, median of round medians), each
at its own input size.

    PYTHONPATH=. .venv/bin/python bench/explore/resolution/resolution.py   # writes resolution.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from yolotune import CompressionPlan
from yolotune.evaluators import LocalCPUTarget
from yolotune.search import CandidateSettings, run_candidate

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ref", type=int, default=320)
    ap.add_argument("--sizes", type=int, nargs="+", default=[320, 288, 256])
    ap.add_argument("--methods", nargs="+", default=["minmax", "percentile"])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    builds: list[tuple[str, int, dict[str, object]]] = [("fp32", args.ref, {})]
    builds += [("fp32", s, {}) for s in args.sizes if s != args.ref]
    for s in args.sizes:
        for m in args.methods:
            builds.append((f"int8 {m}", s, {"quantization": {"default": "int8", "calibration_method": m}}))
    rows: dict[str, dict[str, float]] = {}
    files: dict[str, tuple[Path, int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, size, plan in builds:
            key = f"{name} @{size}"
            r = run_candidate(
                model="yolov8n-coco.pt",
                data="tiny_coco",
                plan=CompressionPlan.from_dict(plan),
                out_dir=Path(tmp) / key.replace(" ", "_").replace("@", ""),
                settings=CandidateSettings(imgsz=size),
                target=LocalCPUTarget(),
            )
            files[key] = (r.deployable, size)
            rows[key] = {"map50_95": round(r.accuracy.map50_95, 4), "size_mb": round(r.size_mb, 2)}
            print(key, rows[key], flush=True)
        target = LocalCPUTarget(warmup=10, runs=60)
        samples: dict[str, list[float]] = {k: [] for k in files}
        for _ in range(args.rounds):
            for k, (f, size) in files.items():
                samples[k].append(target.benchmark(f, imgsz=size).median_ms)
    ref = f"fp32 @{args.ref}"
    ref_ms = statistics.median(samples[ref])
    print(f"| model | mAP50-95 | Δ points vs {ref} | ms | vs {ref} |")
    print("|---|---|---|---|---|")
    for k in files:
        ms = statistics.median(samples[k])
        rows[k]["ms"] = round(ms, 2)
        rows[k]["speedup"] = round(ref_ms / ms, 2)
        rows[k]["drop_points"] = round(100 * (rows[ref]["map50_95"] - rows[k]["map50_95"]), 2)
        r = rows[k]
        print(f"| {k} | {r['map50_95']:.4f} | {-r['drop_points']:+.2f} | {ms:.2f} | {r['speedup']:.2f}x |")
    result = {"ref": ref, "rounds": args.rounds, "rows": rows}
    (HERE / "resolution.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
