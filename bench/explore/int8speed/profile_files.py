"""Kernel time per op type of ONNX files, from ONNX Runtime's profiler (CPU, 2 threads, 30 runs).

    .venv/bin/python bench/explore/int8speed/profile_files.py MODEL.onnx [MODEL.int8.onnx ...]

Prints, per file, the profiled total per run and the op types that take the most time.
"""

from __future__ import annotations

import collections
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

RUNS = 30


def main() -> None:
    for path in sys.argv[1:]:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.intra_op_num_threads = 2
        options.profile_file_prefix = str(Path(tempfile.gettempdir()) / "yolotune-opprofile")
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        size = session.get_inputs()[0].shape[-1]
        x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
        name = session.get_inputs()[0].name
        for _ in range(RUNS):
            session.run(None, {name: x})
        trace = Path(session.end_profiling())
        spent: collections.Counter[str] = collections.Counter()
        nodes: collections.Counter[str] = collections.Counter()
        for event in json.loads(trace.read_text()):
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                spent[event["args"]["op_name"]] += event["dur"]
                nodes[event["args"]["op_name"]] += 1
        trace.unlink()
        total = sum(spent.values())
        print(f"{path}: {total / RUNS / 1000:.2f} ms per run profiled")
        for op, us in spent.most_common(12):
            print(f"  {op:28s} {us / RUNS / 1000:6.2f} ms  {100 * us / total:5.1f}%  nodes {nodes[op] // RUNS}")


if __name__ == "__main__":
    main()
