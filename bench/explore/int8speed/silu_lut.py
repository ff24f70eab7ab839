"""Exploratory: the INT8 SiLU as one 256-entry lookup table instead of QLinearSigmoid + QLinearMul.

With uint8 input and output, a quantized SiLU is exactly a function of 256 input codes. This
rewrites each of the INT8 model's SiLUs (DQ → Sigmoid → Q → DQ → Mul → Q) into ``Cast`` (uint8 →
int32) → ``Gather`` from a 256-entry uint8 table built from the surrounding scales and zero
points, the only table lookup standard ONNX has. Profiles (ORT, 2 threads) and times it
interleaved against the FP32 and INT8 models of ``variants.py`` (run that first), and validates
all three.

    PYTHONPATH=. .venv/bin/python bench/explore/int8speed/silu_lut.py   # writes silu_lut.json
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from opprofile import INT8, compare_rewrite

HERE = Path(__file__).parent


def silu_as_lookup(src: Path, dst: Path) -> int:
    """Replace each quantized SiLU by Cast → Gather(table); returns how many were replaced."""
    m = onnx.load(str(src))
    init = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
    producer: dict[str, onnx.NodeProto] = {}
    for n in m.graph.node:
        for i in n.input:
            consumers[i].append(n)
        for o in n.output:
            producer[o] = n

    def only(name: str, op: str) -> onnx.NodeProto | None:
        c = consumers[name]
        return c[0] if len(c) == 1 and c[0].op_type == op else None

    drop: set[int] = set()
    swap: dict[int, list[onnx.NodeProto]] = {}
    tables = []
    for sg in m.graph.node:
        dqa = producer.get(sg.input[0]) if sg.op_type == "Sigmoid" else None
        if dqa is None or dqa.op_type != "DequantizeLinear" or len(consumers[dqa.output[0]]) != 2:
            continue
        qb = only(sg.output[0], "QuantizeLinear")
        dqb = qb and only(qb.output[0], "DequantizeLinear")
        mul = dqb and only(dqb.output[0], "Mul")
        qc = mul and dqa.output[0] in mul.input and only(mul.output[0], "QuantizeLinear")
        if not qc:
            continue
        sx, zx = float(init[dqa.input[1]]), int(init[dqa.input[2]])
        sy, zy = float(init[qc.input[1]]), int(init[qc.input[2]])
        x = sx * (np.arange(256) - zx)
        table = np.clip(np.round(x / (1 + np.exp(-x)) / sy) + zy, 0, 255).astype(np.uint8)
        name = f"silu_lut_{len(tables)}"
        tables.append(numpy_helper.from_array(table, name))
        swap[id(qc)] = [
            helper.make_node("Cast", [dqa.input[0]], [f"{name}_idx"], to=TensorProto.INT32, name=f"{name}_cast"),
            helper.make_node("Gather", [name, f"{name}_idx"], [qc.output[0]], axis=0, name=f"{name}_gather"),
        ]
        drop |= {id(dqa), id(sg), id(qb), id(dqb), id(mul)}
    nodes: list[onnx.NodeProto] = []
    for n in m.graph.node:
        nodes += swap.get(id(n), [] if id(n) in drop else [n])
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    m.graph.initializer.extend(tables)
    onnx.checker.check_model(m)
    onnx.save(m, str(dst))
    return len(tables)


def main() -> None:
    compare_rewrite(
        silu_as_lookup,
        label="int8, SiLU as Cast + Gather table",
        onnx_name="silu_lut.onnx",
        result=HERE / "silu_lut.json",
    )


if __name__ == "__main__":
    main()
