"""Exploratory (issue 6): is OpenVINO's CPU runtime a faster route to INT8 than ONNX Runtime here?

Times the FP32 and INT8 (QDQ) files that ``ortopts.py`` builds into /tmp/zen4models, with ONNX
Runtime's CPU provider and with OpenVINO (2 threads each, OpenVINO at f32 inference precision with
the LATENCY hint), interleaved: each round the median of 60 runs after 10 warm-up runs. OpenVINO is
not a yolotune dependency, so this runs in a separate environment:

    python3 -m venv /tmp/ovenv && /tmp/ovenv/bin/pip install openvino onnxruntime==1.32.0 numpy
    /tmp/ovenv/bin/python bench/explore/zen4/openvino.py 7
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort
import openvino as ov

FILES = {"fp32": "/tmp/zen4models/fp32/model.onnx", "int8": "/tmp/zen4models/int8/model.int8.onnx"}


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    x = np.random.default_rng(0).random((1, 3, 320, 320), dtype=np.float32)
    core = ov.Core()
    runners: dict[str, Callable[[], object]] = {}
    for name, path in FILES.items():
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        so.inter_op_num_threads = 1
        session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x}
        runners[f"ort {name}"] = lambda s=session, f=feed: s.run(None, f)
        config = {"INFERENCE_NUM_THREADS": 2, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        request = core.compile_model(path, "CPU", config).create_infer_request()
        runners[f"ov {name}"] = lambda r=request: r.infer({0: x})
    medians: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for key, run in runners.items():
            for _ in range(10):
                run()
            times = []
            for _ in range(60):
                t0 = time.perf_counter()
                run()
                times.append((time.perf_counter() - t0) * 1e3)
            medians[key].append(statistics.median(times))
    base = statistics.median(medians["ort fp32"])
    for key, values in medians.items():
        m = statistics.median(values)
        print(f"{key:10s} median {m:6.2f} ms  min {min(values):6.2f}  vs ort fp32 {base / m:4.2f}x")
    print("ov int8 vs ov fp32:", statistics.median(medians["ov fp32"]) / statistics.median(medians["ov int8"]))


if __name__ == "__main__":
    main()
