"""ONNX Runtime session settings for yolotune's FP32 and INT8 models, timed side by side.

Exploratory (issue 6): is there INT8 speed left in ORT's session options on this CPU? Builds
yolov8n-coco FP32 and INT8 (u8, per-channel, percentile on 32 images, decode float) at 320 px with
``run_candidate`` into ``--dir`` (reused when there), then times every (model, setting) pair
interleaved: ``--rounds`` rounds, each the median of 60 runs after 10 warm-up runs, 2 threads as
local-cpu. Prints median and min of the round medians.

    PYTHONPATH=. .venv/bin/python bench/explore/zen4/ortopts.py [--dir /tmp/zen4models] [--rounds 11]
        [--settings default "parallel 1x2" ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from yolotune import CompressionPlan
from yolotune.evaluators import LocalCPUTarget
from yolotune.search import CandidateSettings, run_candidate

PLANS = {
    "fp32": {},
    "int8": {"quantization": {"default": "int8", "calibration_method": "percentile", "calibration_images": 32}},
}
LEVELS = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}
SETTINGS: dict[str, tuple[str, dict[str, str]]] = {
    "default": ("all", {}),
    "extended": ("extended", {}),
    "qdq cleanup": ("all", {"session.enable_quant_qdq_cleanup": "1"}),
    "no prepacking": ("all", {"session.disable_prepacking": "1"}),
    "dynamic block 4": ("all", {"session.dynamic_block_base": "4"}),
    "no spinning": ("all", {"session.intra_op.allow_spinning": "0"}),
    # not session config entries: ORT's parallel executor runs independent branches on inter-op threads
    "parallel 1x2": ("all", {"execution_mode": "parallel", "intra": "1", "inter": "2"}),
    "parallel 2x2": ("all", {"execution_mode": "parallel", "intra": "2", "inter": "2"}),
    "1 thread": ("all", {"execution_mode": "sequential", "intra": "1", "inter": "1"}),
}


def build(out: Path) -> dict[str, Path]:
    files = {}
    for name, plan in PLANS.items():
        done = out / name / "done.json"
        if not done.exists():
            r = run_candidate(
                model="yolov8n-coco.pt",
                data="tiny_coco",
                plan=CompressionPlan.from_dict(plan),
                out_dir=out / name,
                settings=CandidateSettings(imgsz=320),
                target=LocalCPUTarget(),
            )
            done.write_text(json.dumps({"file": str(r.deployable), "map50_95": r.accuracy.map50_95}))
        files[name] = Path(json.loads(done.read_text())["file"])
    return files


def time_once(path: Path, level: str, config: dict[str, str], x: np.ndarray) -> float:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = os.cpu_count() or 1
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = LEVELS[level]
    opts.log_severity_level = 3
    config = dict(config)
    mode = config.pop("execution_mode", None)
    if mode is not None:
        parallel = mode == "parallel"
        opts.execution_mode = ort.ExecutionMode.ORT_PARALLEL if parallel else ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = int(config.pop("intra"))
        opts.inter_op_num_threads = int(config.pop("inter"))
    for k, v in config.items():
        opts.add_session_config_entry(k, v)
    s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {s.get_inputs()[0].name: x}
    for _ in range(10):
        s.run(None, feed)
    ms = []
    for _ in range(60):
        t0 = time.perf_counter()
        s.run(None, feed)
        ms.append((time.perf_counter() - t0) * 1e3)
    del s
    gc.collect()
    return statistics.median(ms)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, default=Path("/tmp/zen4models"))
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--settings", nargs="*", default=list(SETTINGS))
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("ortopts.json"))
    args = ap.parse_args()
    files = build(args.dir)
    x = np.random.default_rng(0).random((1, 3, 320, 320), dtype=np.float32)
    keys = [(m, s) for s in args.settings for m in files]
    ms: dict[tuple[str, str], list[float]] = {k: [] for k in keys}
    for _ in range(args.rounds):
        for m, s in keys:
            level, config = SETTINGS[s]
            ms[(m, s)].append(time_once(files[m], level, config, x))
    base = statistics.median(ms[("fp32", "default")])
    print("| model | setting | median ms | min ms | vs FP32 default (median) |")
    print("|---|---|---|---|---|")
    for (m, s), v in ms.items():
        print(f"| {m} | {s} | {statistics.median(v):.2f} | {min(v):.2f} | {base / statistics.median(v):.2f}x |")
    args.out.write_text(json.dumps({f"{m} / {s}": v for (m, s), v in ms.items()}, indent=1) + "\n")


if __name__ == "__main__":
    main()
