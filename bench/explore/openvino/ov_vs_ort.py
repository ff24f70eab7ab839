"""The same ONNX files on ONNX Runtime (local-cpu) and on OpenVINO's CPU plugin, timed side by side.

Exploratory: is another CPU runtime a way to ≥2× INT8/FP32 where ORT's quantized SiLU holds INT8 back
(issue 6, goal 1)? OpenVINO is not a yolotune dependency; install it next to the venv first:

    pip install --no-deps --target /tmp/ov openvino openvino-telemetry
    PYTHONPATH=.:/tmp/ov .venv/bin/python bench/explore/openvino/ov_vs_ort.py [--rounds 7]

Builds FP32, INT8 (u8 and s8 activations, MinMax on 32 images) of yolov8n-coco at 320 with
``run_candidate`` (mAP50-95 from ORT, the search's code path), then times every file on both
runtimes in interleaved rounds (2 threads; each round the median of 60 runs). OpenVINO is also run on
the FP32 file with its bf16 inference hint (a different precision: labelled, not an FP32 timing).
Writes bench/explore/openvino/ov_vs_ort.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import openvino as ov

from yolotune import CompressionPlan
from yolotune.evaluators import LocalCPUTarget
from yolotune.search import CandidateSettings, run_candidate

INT8 = {"default": "int8", "calibration_images": 32, "calibration_method": "minmax"}
RUNS = 60


def ov_median(core: ov.Core, path: Path, imgsz: int, precision: str) -> float:
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 2, "INFERENCE_PRECISION_HINT": precision}
    request = core.compile_model(str(path), "CPU", config).create_infer_request()
    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    for _ in range(10):
        request.infer({0: x})
    samples = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        request.infer({0: x})
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="yolotune-ov-"))
    target = LocalCPUTarget(warmup=10, runs=RUNS)
    plans = {
        "fp32": CompressionPlan(),
        "int8 u8": CompressionPlan.from_dict({"quantization": {**INT8, "activation_type": "uint8"}}),
        "int8 s8": CompressionPlan.from_dict({"quantization": {**INT8, "activation_type": "int8"}}),
    }
    files: dict[str, Path] = {}
    maps: dict[str, float] = {}
    for name, plan in plans.items():
        r = run_candidate(
            model="yolov8n-coco.pt",
            data="tiny_coco",
            plan=plan,
            out_dir=work / name.replace(" ", "_"),
            settings=CandidateSettings(imgsz=args.imgsz),
            target=target,
        )
        files[name], maps[name] = r.deployable, r.accuracy.map50_95

    core = ov.Core()
    runs = [(n, "ort", "f32") for n in files] + [(n, "openvino", "f32") for n in files] + [("fp32", "openvino", "bf16")]
    samples: dict[tuple[str, str, str], list[float]] = {k: [] for k in runs}
    for _ in range(args.rounds):
        for name, runtime, precision in runs:
            if runtime == "ort":
                ms = target.benchmark(files[name], imgsz=args.imgsz).median_ms
            else:
                ms = ov_median(core, files[name], args.imgsz, precision)
            samples[(name, runtime, precision)].append(ms)
    rows = []
    for (name, runtime, precision), s in samples.items():
        rows.append({"model": name, "runtime": runtime, "hint": precision, "ms": statistics.median(s), "rounds": s})
    base = {r["runtime"]: r["ms"] for r in rows if r["model"] == "fp32" and r["hint"] == "f32"}
    ort_fp32 = base["ort"]
    print(f"{'model':<8} {'runtime':<9} {'hint':<5} {'mAP(ORT)':>8} {'ms':>7} {'vs own FP32':>11} {'vs ORT FP32':>11}")
    for r in rows:
        r["vs_own_fp32"] = base[r["runtime"]] / r["ms"]
        r["vs_ort_fp32"] = ort_fp32 / r["ms"]
        print(
            f"{r['model']:<8} {r['runtime']:<9} {r['hint']:<5} {maps[r['model']]:>8.4f} {r['ms']:>7.2f} "
            f"{r['vs_own_fp32']:>10.2f}× {r['vs_ort_fp32']:>10.2f}×"
        )
    args.out.write_text(
        json.dumps({"openvino": ov.__version__, "device": core.get_property("CPU", "FULL_DEVICE_NAME"),
                    "maps_ort": maps, "rows": rows}, indent=1)
    )


if __name__ == "__main__":
    main()
