import sys
from pathlib import Path
from yolotune.assets import prepare_dataset
from yolotune.compression import ultralytics_adapter as A, quantize
from yolotune.spaces import QuantizationConfig
from yolotune.evaluators import measure_map
ds=prepare_dataset('tiny_coco')
for name in sys.argv[1:]:
    lay=A.model_layout(A.load_model(f'/tmp/qat/{name}.pt'))
    for pc,meth in ((False,'minmax'),):
        q=Path(f'/tmp/qat/{name}.int8.pt{int(pc)}.{meth}.onnx')
        quantize(Path(f'/tmp/qat/{name}.onnx'), q, QuantizationConfig(default='int8', calibration_images=32, per_channel=pc, calibration_method=meth),
             group_of_node=lay.group_of_onnx_node, calibration=lambda: A.calibration_images(ds, imgsz=320, count=32))
        print(name, 'per_channel', pc, meth, measure_map(q, ds, imgsz=320).map50_95, flush=True)
