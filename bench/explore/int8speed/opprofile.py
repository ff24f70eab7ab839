"""Exploratory: where the INT8 model's time goes per op type, and what the SiLU costs in INT8.

Run ``variants.py`` first (it writes ``out/fast/yolov8n-coco.onnx``, yolotune's FP32 export, and
``out/fast/all.onnx``, its INT8 QDQ model). Profiles both with ONNX Runtime's profiler (2 threads,
20 runs) and sums kernel time per op type; then rewrites every INT8 SiLU (DQ → Sigmoid → Q → DQ →
Mul, which ORT runs as QLinearSigmoid + QLinearMul) into one float ``com.microsoft.QuickGelu``
(alpha 1, x·sigmoid(x), what ORT fuses the FP32 SiLU into) between a DequantizeLinear and a
QuantizeLinear, and times the three interleaved. Writes opprofile.json.

    .venv/bin/python bench/explore/int8speed/opprofile.py
"""

from __future__ import annotations

import collections
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper
from variants import _time

from yolotune.assets import prepare_dataset
from yolotune.evaluators import measure_map

IMGSZ = 320
HERE = Path(__file__).parent
FP32, INT8 = HERE / "out/fast/yolov8n-coco.onnx", HERE / "out/fast/all.onnx"


def _options(profile: bool = False) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    so.enable_profiling = profile
    return so


def profile_ops(path: Path, runs: int = 20) -> dict[str, float]:
    """Milliseconds per run by op type (ORT's kernel times)."""
    with tempfile.TemporaryDirectory() as tmp:
        so = _options(profile=True)
        so.profile_file_prefix = str(Path(tmp) / "p")
        s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).random((1, 3, IMGSZ, IMGSZ), dtype=np.float32)
        for _ in range(runs):
            s.run(None, {s.get_inputs()[0].name: x})
        events = json.loads(Path(s.end_profiling()).read_text())
    per_op: collections.Counter[str] = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
    return {op: round(us / runs / 1000, 3) for op, us in per_op.most_common()}


def silu_as_quickgelu(src: Path, dst: Path) -> int:
    """Replace each quantized SiLU by DQ → QuickGelu → Q; returns how many were replaced."""
    model = onnx.load(str(src))
    consumers: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
    for n in model.graph.node:
        for i in n.input:
            consumers[i].append(n)

    def only(name: str, op: str) -> onnx.NodeProto | None:
        c = consumers[name]
        return c[0] if len(c) == 1 and c[0].op_type == op else None

    drop: set[int] = set()
    swap: dict[int, onnx.NodeProto] = {}
    for n in model.graph.node:
        if n.op_type != "Sigmoid":
            continue
        q = only(n.output[0], "QuantizeLinear")
        dq = q and only(q.output[0], "DequantizeLinear")
        mul = dq and only(dq.output[0], "Mul")
        if not (q and dq and mul) or n.input[0] not in mul.input:
            continue
        drop |= {id(n), id(q), id(dq)}
        swap[id(mul)] = helper.make_node(
            "QuickGelu", [n.input[0]], [mul.output[0]], name=f"{n.name}_silu", domain="com.microsoft", alpha=1.0
        )
    nodes = [swap.get(id(n), n) for n in model.graph.node if id(n) not in drop]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(dst))
    return len(swap)


def compare(paths: dict[str, Path], *, base: str) -> list[dict]:
    """Profile, time (interleaved, variants.py's timer) and validate each model; print and return rows."""
    profiles = {k: profile_ops(p) for k, p in paths.items()}
    ms = {k: round(v, 2) for k, v in _time(paths).items()}
    dataset = prepare_dataset("tiny_coco")
    rows = []
    for k, p in paths.items():
        prof = profiles[k]
        rows.append(
            {
                "variant": k,
                "ms": ms[k],
                "speedup_vs_fp32": round(ms[base] / ms[k], 2),
                "map50_95": round(measure_map(p, dataset, imgsz=IMGSZ).map50_95, 4),
                "profiled_ms": round(sum(prof.values()), 2),
                "top_ops_ms": dict(list(prof.items())[:8]),
            }
        )
        print(f"{k:36s} {ms[k]:6.2f} ms  {rows[-1]['speedup_vs_fp32']:.2f}x  mAP {rows[-1]['map50_95']:.4f}")
        print("   ", ", ".join(f"{op} {t:.2f}" for op, t in list(prof.items())[:8]))
    return rows


def compare_rewrite(rewrite: Callable[[Path, Path], int], *, label: str, onnx_name: str, result: Path) -> None:
    """Rewrite the INT8 model's SiLUs with ``rewrite`` into ``out/fast/<onnx_name>``, compare it with FP32 and
    INT8 (``compare``), and write ``result`` (JSON)."""
    rewritten = HERE / "out/fast" / onnx_name
    replaced = rewrite(INT8, rewritten)
    paths = {"fp32 (FastDFL)": FP32, "int8 (yolotune)": INT8, label: rewritten}
    rows = compare(paths, base="fp32 (FastDFL)")
    result.write_text(json.dumps({"silu_replaced": replaced, "rows": rows}, indent=1) + "\n")


def main() -> None:
    compare_rewrite(
        silu_as_quickgelu,
        label="int8, SiLU as float QuickGelu",
        onnx_name="silu_quickgelu.onnx",
        result=HERE / "opprofile.json",
    )


if __name__ == "__main__":
    main()
