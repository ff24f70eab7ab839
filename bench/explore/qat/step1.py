import sys, time, shutil, json
from pathlib import Path
import torch
from yolotune.assets import prepare_dataset, resolve_model
from yolotune.compression import ultralytics_adapter as A, prune, recover, unpruned_copy, quantize
from yolotune.spaces import QuantizationConfig, PruningConfig
from yolotune.evaluators import measure_map
torch.set_num_threads(2)
IMG=320
ds=prepare_dataset('tiny_coco'); mp=resolve_model('yolov8n-coco.pt')
print('val imgs', len(ds.val_images), 'train', len(getattr(ds,'train_images',[])))
out=Path('/tmp/qat'); res={}
def do(name, net):
    ck=A.save_checkpoint(net, out/f'{name}.pt')
    fp32=A.export_onnx(ck, imgsz=IMG)
    lay=A.model_layout(A.load_model(ck))
    q=out/f'{name}.int8.onnx'
    t=time.time()
    quantize(fp32, q, QuantizationConfig(default='int8', calibration_images=32), group_of_node=lay.group_of_onnx_node,
             calibration=lambda: A.calibration_images(ds, imgsz=IMG, count=32))
    tq=time.time()-t
    a=measure_map(fp32, ds, imgsz=IMG); b=measure_map(q, ds, imgsz=IMG)
    res[name]=dict(fp32=a.map50_95, int8=b.map50_95, fp32_50=a.map50, int8_50=b.map50, qsec=tq)
    print(name, res[name], flush=True)
net=A.load_model(mp)
print(A.model_layout(net).groups)
do('base', net)
method=sys.argv[1] if len(sys.argv)>1 else 'ls'
net=A.load_model(mp)
groups=['backbone.7','neck.16','head.cv2.0','head.cv3.0','head.cv2.1','head.cv3.1']
orig=unpruned_copy(net) if method in ('ls','bias') else None
kept={}
pc=PruningConfig(ratios=tuple((g,0.25) for g in groups))
t=time.time()
pr=prune(net, pc, imgsz=IMG, kept=kept)
rr=recover(net, A.calibration_images(ds, imgsz=IMG, count=32), method=method, pruned_groups=groups, original=orig, kept=kept)
print('prune+recover s', time.time()-t, pr, rr)
do('pruned_'+method, net)
json.dump(res, open(out/'step1.json','w'), indent=1)
