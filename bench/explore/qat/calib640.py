"""PTQ calibration at 640 px: does the calibration choice already close the INT8 gap QAT would target?"""
import shutil
from pathlib import Path
from yolotune.assets import prepare_dataset, resolve_model
from yolotune.compression import quantize, ultralytics_adapter as A
from yolotune.spaces import QuantizationConfig
from yolotune.evaluators import measure_map
ds=prepare_dataset("tiny_coco"); d=Path("/tmp/q640"); d.mkdir(exist_ok=True)
shutil.copy(resolve_model("yolov8n-coco.pt"), d/"m.pt"); fp32=A.export_onnx(d/"m.pt", imgsz=640)
lay=A.model_layout(A.load_model(d/"m.pt"))
print("fp32", round(measure_map(fp32, ds, imgsz=640).map50_95,4), flush=True)
for meth,n in [("minmax",32),("minmax",128),("percentile",32),("entropy",32)]:
    out=d/f"{meth}{n}.onnx"
    quantize(fp32,out,QuantizationConfig(default="int8",calibration_method=meth,calibration_images=n),group_of_node=lay.group_of_onnx_node,calibration=lambda: A.calibration_images(ds,imgsz=640,count=n), budget_gb=20)
    print(meth, n, round(measure_map(out, ds, imgsz=640).map50_95,4), flush=True)
