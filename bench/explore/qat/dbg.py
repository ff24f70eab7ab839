import torch, warnings; warnings.filterwarnings('ignore')
from yolotune.assets import prepare_dataset
from yolotune.compression import ultralytics_adapter as A
ds=prepare_dataset('tiny_coco'); x=torch.from_numpy(next(iter(A.calibration_images(ds, imgsz=320, count=1))))
def dynfq(t):
    lo=min(float(t.detach().min()),0.); hi=max(float(t.detach().max()),0.); sc=max((hi-lo)/255,1e-8)
    return torch.fake_quantize_per_tensor_affine(t, sc, int(round(-lo/sc)), 0, 255)
m=A.load_model('/tmp/qat/base.pt').fuse(verbose=False).eval()
with torch.no_grad(): ref=m(x)[0]
for kind in ['SiLU-noq','SiLU','Concat','MaxPool2d']:
    hs=[]
    for mod in m.modules():
        if type(mod).__name__==kind.split('-')[0]:
            if kind=='SiLU-noq': hs.append(mod.register_forward_hook(lambda mo,i,o: i[0]*torch.sigmoid(i[0])))
            elif kind=='SiLU': hs.append(mod.register_forward_hook(lambda mo,i,o: dynfq(i[0]*torch.fake_quantize_per_tensor_affine(torch.sigmoid(i[0]),1/255,0,0,255))))
            else: hs.append(mod.register_forward_hook(lambda mo,i,o: dynfq(o)))
    with torch.no_grad(): y=m(x)[0]
    print(kind, len(hs), float((y-ref).abs().max()), float(ref.abs().max()))
    for h in hs: h.remove()
