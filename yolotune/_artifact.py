"""What a deployable ONNX file says about its own precision, so any runtime can honour it.

INT8 layers are explicit in the graph (QuantizeLinear/DequantizeLinear pairs). Which of the
remaining float layers a runtime should run in fp16 and which in fp32 is not; the quantize step
records it in the model's metadata under :data:`PRECISION_KEY`, and targets that choose float
precision per layer (TensorRT) read it back. Depends only on ``onnx``: the device agent imports it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PRECISION_KEY", "FloatPrecision", "read_float_precision", "with_float_precision"]

#: Metadata key of the float-layer precision record.
PRECISION_KEY = "yolotune_float_precision"


@dataclass(frozen=True, kw_only=True)
class FloatPrecision:
    """Precision of a model's float (not INT8) layers.

    Attributes:
        int8: The graph holds QDQ (INT8) layers.
        fp16_nodes: ONNX node names to run in fp16.
        fp32_nodes: ONNX node names to keep in fp32.
    """

    int8: bool = False
    fp16_nodes: tuple[str, ...] = ()
    fp32_nodes: tuple[str, ...] = ()

    @property
    def fp16(self) -> bool:
        """True when any layer runs in fp16."""
        return bool(self.fp16_nodes)


def with_float_precision(model: Any, precision: FloatPrecision) -> None:
    """Record ``precision`` in ``model``'s (an ``onnx.ModelProto``) metadata, replacing any earlier record."""
    kept = [p for p in model.metadata_props if p.key != PRECISION_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key = PRECISION_KEY
    entry.value = json.dumps({"fp16": list(precision.fp16_nodes), "fp32": list(precision.fp32_nodes)})


def read_float_precision(model_or_path: Any) -> FloatPrecision:
    """Read a model's precision: INT8 from its QDQ nodes, fp16/fp32 from its metadata.

    A model without a record (a plain FP32 export) runs every float layer in fp32.
    """
    import onnx

    model = (
        onnx.load(str(model_or_path), load_external_data=False)
        if isinstance(model_or_path, (str, Path))
        else model_or_path
    )
    int8 = any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    record = next((p.value for p in model.metadata_props if p.key == PRECISION_KEY), None)
    if record is None:
        return FloatPrecision(int8=int8)
    d = json.loads(record)
    return FloatPrecision(int8=int8, fp16_nodes=tuple(d.get("fp16", ())), fp32_nodes=tuple(d.get("fp32", ())))
