"""Exploratory: how much does pairing tighten a speed-up measured on a noisy shared machine?

Times the FP32 and INT8 files ``bench/explore/zen4/ortopts.py`` builds (/tmp/zen4models) with
local-cpu's session settings (2 threads), ``--reps`` times each way, and prints how the speed-up
estimates spread over the repetitions:

- sequential: INT8 timed by local-cpu's own code (60 runs after 10 warm-up runs, median), then
  FP32 the same way, as ``time_candidate(reference=...)`` does;
- unpaired: the same sequential timings, but each FP32 median divided by the INT8 median of the
  repetition half a run later (minutes apart, as a reference trial and a late trial);
- interleaved: one FP32 run, one INT8 run, alternately, 60 pairs after 10 warm-up pairs; the
  speed-up is the median over pairs of FP32 time / INT8 time.

    PYTHONPATH=. .venv/bin/python bench/explore/pairing/pairing.py [--reps 15]   # writes pairing.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from yolotune.evaluators import LocalCPUTarget

FILES = {"fp32": "/tmp/zen4models/fp32/model.onnx", "int8": "/tmp/zen4models/int8/model.int8.onnx"}


def _runner(path: str, x: np.ndarray) -> Callable[[], float]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}

    def run() -> float:
        t0 = time.perf_counter()
        session.run(None, feed)
        return (time.perf_counter() - t0) * 1e3

    return run


def _summary(values: list[float]) -> dict[str, float]:
    q = np.percentile(values, [10, 50, 90])
    return {"p10": float(q[0]), "median": float(q[1]), "p90": float(q[2]), "p90/p10": float(q[2] / q[0])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args()
    x = np.random.default_rng(0).random((1, 3, 320, 320), dtype=np.float32)
    fp32, int8 = (_runner(FILES[k], x) for k in ("fp32", "int8"))
    sequential, interleaved, pairs = [], [], []
    target = LocalCPUTarget(warmup=10, runs=60)
    for _ in range(args.reps):
        int8_ms = target.benchmark(Path(FILES["int8"]), imgsz=320).median_ms
        fp32_ms = target.benchmark(Path(FILES["fp32"]), imgsz=320).median_ms
        medians = [fp32_ms, int8_ms]
        sequential.append(fp32_ms / int8_ms)
        pairs.append(medians)
        for _ in range(10):
            fp32(), int8()
        interleaved.append(statistics.median(fp32() / int8() for _ in range(60)))
    n = len(pairs)
    unpaired = [pairs[i][0] / pairs[(i + n // 2) % n][1] for i in range(n)]
    result: dict[str, object] = {"reps": args.reps}
    result.update(sequential=_summary(sequential), unpaired=_summary(unpaired), interleaved=_summary(interleaved))
    result["raw"] = {"sequential_ms": pairs, "interleaved": interleaved}
    for k in ("sequential", "unpaired", "interleaved"):
        s = result[k]
        assert isinstance(s, dict)
        print(f"{k:12s} p10 {s['p10']:.2f}  median {s['median']:.2f}  p90 {s['p90']:.2f}  p90/p10 {s['p90/p10']:.2f}")
    (Path(__file__).parent / "pairing.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
