"""Exploratory: INT8 against FP32 at another input size (does issue 6's 2x depend on resolution?).

Builds the unpruned FP32 export and the INT8 plan the default space's reference uses, but with
percentile calibration (the search's best at 640, see "Quantization-aware recovery" in
BENCHMARKS.md), and with signed symmetric activations, through ``run_candidate`` at ``--imgsz``; times both on local-cpu interleaved
(``bench/search.py``'s ``retime``, one timing at a time) and validates on all tiny_coco val images.

    PYTHONPATH=. .venv/bin/python bench/explore/int8speed/imgsz.py --imgsz 640   # writes imgsz<N>.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # bench/, for search.retime
from search import retime

from yolotune import CompressionPlan
from yolotune.evaluators import LocalCPUTarget
from yolotune.search import CandidateSettings, run_candidate

HERE = Path(__file__).parent
PLANS = {
    "fp32": {},
    "int8 minmax 32": {"quantization": {"default": "int8", "calibration_method": "minmax"}},
    "int8 percentile 32": {"quantization": {"default": "int8", "calibration_method": "percentile"}},
    # signed activations, quantized symmetrically (what TensorRT takes); local-cpu itself refuses them
    "int8 s8 minmax 32": {"quantization": {"default": "int8", "calibration_method": "minmax", "activation_type": "int8"}},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for name, plan in PLANS.items():
            r = run_candidate(
                model="yolov8n-coco.pt",
                data="tiny_coco",
                plan=CompressionPlan.from_dict(plan),
                out_dir=Path(tmp) / name.replace(" ", "_"),
                settings=CandidateSettings(imgsz=args.imgsz),
                target=LocalCPUTarget(),  # ONNX Runtime CPU with either activation type
            )
            files[name] = str(r.deployable)
            rows[name] = {"map50_95": round(r.accuracy.map50_95, 4), "size_mb": round(r.size_mb, 2)}
        ms = retime(list(files.values()), args.imgsz, args.rounds)
    for name, f in files.items():
        rows[name]["ms"] = round(ms[f], 2)
        rows[name]["speedup_vs_fp32"] = round(ms[files["fp32"]] / ms[f], 2)
        rows[name]["map_drop_points"] = round(100 * (rows["fp32"]["map50_95"] - rows[name]["map50_95"]), 2)
        print(name, rows[name])
    (HERE / f"imgsz{args.imgsz}.json").write_text(json.dumps({"imgsz": args.imgsz, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
