"""Exploratory: where ONNX Runtime CPU time goes in yolov8n-coco at 320 px, and what helps.

1. INT8 op coverage: the unpruned FP32 export quantized by ONNX Runtime (QDQ, per-channel, uint8
   activations, MinMax on 32 train images, DFL/decode left fp32 as yolotune does) with every op
   type (yolotune's setting), with SiLU's Sigmoid/Mul left float, and with Conv only.
2. The DFL rewrite: Ultralytics' plain export against yolotune's (``FastDFL``), FP32 and INT8.

All variants are timed interleaved in one process (2 threads, 5 rounds x 60 runs, median of the
round medians) and validated with yolotune's validator on tiny_coco val. Writes variants.json.

    .venv/bin/python bench/explore/int8speed/variants.py
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from yolotune.assets import prepare_dataset, resolve_model
from yolotune.compression import ultralytics_adapter as adapter
from yolotune.compression._quantize import _Reader
from yolotune.evaluators import measure_map

IMGSZ = 320
HERE = Path(__file__).parent
OUT = HERE / "out"
CONV_AND_SHAPE = ["Conv", "Add", "Concat", "MaxPool", "Resize", "Split", "Reshape", "Transpose", "Slice"]


def _plain_export(ckpt: Path) -> Path:
    """Ultralytics' own export (its DFL), for comparison."""
    from ultralytics import YOLO

    with adapter.quiet():
        return Path(YOLO(str(ckpt), task="detect").export(format="onnx", imgsz=IMGSZ, opset=17, simplify=True))


def _int8(fp32: Path, out: Path, ops: list[str] | None, dataset) -> Path:
    model = onnx.load(str(fp32))
    layout = adapter.model_layout(adapter.load_model(resolve_model("yolov8n-coco.pt")))
    decode = [n.name for n in model.graph.node if layout.group_of_onnx_node(n.name) == "head.decode"]
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_optimization=True)
        reader = _Reader(lambda: adapter.calibration_images(dataset, imgsz=IMGSZ, count=32), model.graph.input[0].name)
        quantize_static(
            str(pre), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=decode, op_types_to_quantize=ops,
        )
    return out


def _time(paths: dict[str, Path], rounds: int = 5, runs: int = 60) -> dict[str, float]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sessions = {k: ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]) for k, p in paths.items()}
    x = np.random.default_rng(0).random((1, 3, IMGSZ, IMGSZ), dtype=np.float32)
    med: dict[str, list[float]] = {k: [] for k in paths}
    for s in sessions.values():
        for _ in range(20):
            s.run(None, {s.get_inputs()[0].name: x})
    for _ in range(rounds):
        for k, s in sessions.items():
            name = s.get_inputs()[0].name
            ts = []
            for _ in range(runs):
                t = time.perf_counter()
                s.run(None, {name: x})
                ts.append(time.perf_counter() - t)
            med[k].append(statistics.median(ts) * 1000)
    return {k: statistics.median(v) for k, v in med.items()}


def main() -> None:
    dataset = prepare_dataset("tiny_coco")
    paths: dict[str, Path] = {}
    for kind in ("plain", "fast"):
        d = OUT / kind
        d.mkdir(parents=True, exist_ok=True)
        ckpt = d / "yolov8n-coco.pt"
        shutil.copy(resolve_model("yolov8n-coco.pt"), ckpt)  # export writes next to the checkpoint
        fp32 = _plain_export(ckpt) if kind == "plain" else adapter.export_onnx(ckpt, imgsz=IMGSZ)
        dfl = "Ultralytics DFL" if kind == "plain" else "FastDFL"
        paths[f"fp32, {dfl}"] = fp32
        paths[f"int8 all ops, {dfl}"] = _int8(fp32, d / "all.onnx", None, dataset)
        if kind == "plain":
            paths[f"int8 SiLU float, {dfl}"] = _int8(fp32, d / "silu.onnx", CONV_AND_SHAPE, dataset)
            paths[f"int8 Conv only, {dfl}"] = _int8(fp32, d / "conv.onnx", ["Conv"], dataset)
    ms = _time(paths)
    base = ms["fp32, Ultralytics DFL"]
    rows = []
    print(f"{'variant':36s} {'ms':>6s} {'vs plain fp32':>13s} {'mAP50-95':>9s}")
    for k, p in paths.items():
        acc = measure_map(p, dataset, imgsz=IMGSZ)
        rows.append({"variant": k, "ms": round(ms[k], 2), "speedup": round(base / ms[k], 2), "map50_95": round(acc.map50_95, 4)})
        print(f"{k:36s} {ms[k]:6.2f} {base / ms[k]:12.2f}x {acc.map50_95:9.4f}")
    (HERE / "variants.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
