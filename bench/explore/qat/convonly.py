# ORT PTQ restricted to Conv (the placement the fake-quant prototype uses), same settings otherwise
import sys, contextlib, io, tempfile
from pathlib import Path
import onnx
from onnxruntime.quantization import quantize_static, QuantFormat, QuantType, CalibrationMethod
from onnxruntime.quantization.shape_inference import quant_pre_process
from yolotune.assets import prepare_dataset
from yolotune.compression import ultralytics_adapter as A
from yolotune.compression._quantize import _Reader
from yolotune.evaluators import measure_map
ds=prepare_dataset('tiny_coco')
for name in sys.argv[1:]:
    lay=A.model_layout(A.load_model(f'/tmp/qat/{name}.pt'))
    fp=f'/tmp/qat/{name}.onnx'; m=onnx.load(fp)
    excl=[n.name for n in m.graph.node if lay.group_of_onnx_node(n.name)=='head.decode']
    pre='/tmp/qat/_pre.onnx'; quant_pre_process(fp, pre, skip_optimization=True)
    for pc in (True, False):
        out=f'/tmp/qat/{name}.int8.convonly.pc{int(pc)}.onnx'
        r=_Reader(lambda: A.calibration_images(ds, imgsz=320, count=32), m.graph.input[0].name)
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(pre, out, r, quant_format=QuantFormat.QDQ, per_channel=pc, activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=excl, op_types_to_quantize=['Conv'])
        g=onnx.load(out); del g.metadata_props[:]; g.metadata_props.extend(m.metadata_props); onnx.save(g,out)
        print(name, 'convonly per_channel', pc, measure_map(Path(out), ds, imgsz=320).map50_95, flush=True)
