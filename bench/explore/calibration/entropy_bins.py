"""Exploratory: ONNX Runtime's entropy (KL) calibrator against its histogram bin count.

``quantize_static`` builds the entropy calibrator with 128 bins and 128 quantized bins, which
leaves one candidate threshold (the full range = MinMax). This script runs the calibrator itself
with more bins on yolotune's FP32 export of yolov8n-coco at 320 px (32 tiny_coco training
images), quantizes through ORT's calibration cache, and validates. Prints collect / KL / quantize
seconds and mAP50-95 per bin count.

    PYTHONPATH=. .venv/bin/python bench/explore/calibration/entropy_bins.py 256 512
"""
import shutil, sys, tempfile, time
from pathlib import Path
import onnx
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
from onnxruntime.quantization.shape_inference import quant_pre_process
from yolotune.assets import prepare_dataset, resolve_model
from yolotune.compression import ultralytics_adapter as adapter
from yolotune.compression._quantize import _Reader
from yolotune.evaluators import measure_map
ds = prepare_dataset("tiny_coco")
tmp = Path(tempfile.mkdtemp())
fp32 = adapter.export_onnx(Path(shutil.copy(resolve_model("yolov8n-coco.pt"), tmp / "m.pt")), imgsz=320)
m = onnx.load(str(fp32))
layout = adapter.model_layout(adapter.load_model(resolve_model("yolov8n-coco.pt")))
decode = [n.name for n in m.graph.node if layout.group_of_onnx_node(n.name) == "head.decode"]
pre = tmp / "pre.onnx"
quant_pre_process(str(fp32), str(pre), skip_optimization=True)
ops = list(set(list(QLinearOpsRegistry) + list(QDQRegistry)))
for bins in [int(b) for b in sys.argv[1:]]:
    t0 = time.perf_counter()
    reader = _Reader(lambda: adapter.calibration_images(ds, imgsz=320, count=32), m.graph.input[0].name)
    cal = create_calibrator(pre, ops, augmented_model_path=str(tmp / "aug.onnx"), calibrate_method=CalibrationMethod.Entropy,
                            extra_options={"num_bins": bins, "num_quantized_bins": 128, "symmetric": False})
    cal.collect_data(reader); t1 = time.perf_counter()
    import contextlib, io
    with contextlib.redirect_stdout(io.StringIO()):
        ranges = cal.compute_data()
    t2 = time.perf_counter()
    cache = tmp / f"cache{bins}.json"; save_tensors_data(ranges, cache)
    out = tmp / f"e{bins}.onnx"
    quantize_static(str(pre), str(out), None, quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.Entropy, nodes_to_exclude=decode, calibration_cache_path=cache)
    t3 = time.perf_counter()
    acc = measure_map(out, ds, imgsz=320)
    print(dict(bins=bins, collect=round(t1-t0,1), kl=round(t2-t1,1), quant=round(t3-t2,1), map=round(acc.map50_95,4)), flush=True)
