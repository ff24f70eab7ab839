"""CPU QAT prototype: fake-quant (ORT-like: uint8 per-tensor MinMax acts on Conv in/out, int8 symmetric
per-channel weights) on a fused YOLOv8, label-free distillation to the FP32 model's raw head outputs,
then (A) torch.onnx.export of the fake-quant graph (QDQ) and (B) re-quantize tuned float weights with yolotune PTQ."""
import sys, time, json, copy, warnings
from pathlib import Path
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F, onnx
import torch.nn.utils.parametrize as P, os
WPT=os.environ.get('WPT')=='1'  # per-tensor weights
warnings.filterwarnings('ignore')
from yolotune.assets import prepare_dataset
from yolotune.compression import ultralytics_adapter as A, quantize
from yolotune.spaces import QuantizationConfig
from yolotune.evaluators import measure_map
torch.set_num_threads(2); torch.manual_seed(0)
name, EPOCHS, LR = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
FQ = len(sys.argv) <= 4 or sys.argv[4] != 'nofq'   # 'nofq': float distillation control
tag = f"{name}_qat_e{EPOCHS}_lr{LR:g}" + ('' if FQ else '_nofq') + ('_wpt' if WPT else '')
IMG=320; out=Path('/tmp/qat'); ds=prepare_dataset('tiny_coco')
teacher=A.load_model(out/f'{name}.pt').fuse(verbose=False).eval()
student=A.load_model(out/f'{name}.pt').fuse(verbose=False).eval()
for p in teacher.parameters(): p.requires_grad_(False)
imgs=[torch.from_numpy(a) for a in A.calibration_images(ds, imgsz=IMG, count=50)]
head=student.model[-1]; thead=teacher.model[-1]
convs=[(n,m) for n,m in student.named_modules() if isinstance(m, nn.Conv2d) and 'dfl' not in n]
# --- calibration: min/max of conv inputs and outputs (32 images, like PTQ)
rng={}
def rec(key):
    def f(t):
        lo,hi=float(t.min()),float(t.max()); a,b=rng.get(key,(0.0,0.0)); rng[key]=(min(a,lo),max(b,hi))
    return f
hs=[]
for n,m in convs:
    hs.append(m.register_forward_pre_hook(lambda mod,i,r=rec(n+':in'): r(i[0])))
    hs.append(m.register_forward_hook(lambda mod,i,o,r=rec(n+':out'): r(o)))
with torch.no_grad():
    for x in imgs[:32]: student(x)
for h in hs: h.remove()
def qparams(key):
    lo,hi=rng[key]; s=max((hi-lo)/255,1e-8); return s, int(round(-lo/s))
class WFQ(nn.Module):  # symmetric int8 per-channel, scale like ORT (2*absmax/255), STE
    def forward(self,w):
        if WPT: return torch.fake_quantize_per_tensor_affine(w, max(float(w.detach().abs().max())*2/255,1e-8), 0, -128, 127)
        s=(w.detach().abs().amax(dim=(1,2,3))*2/255).clamp_min(1e-8)
        return torch.fake_quantize_per_channel_affine(w, s, torch.zeros_like(s,dtype=torch.int32), 0, -128, 127)
hooks=[]
if FQ:
    for n,m in convs:
        si,zi=qparams(n+':in'); so,zo=qparams(n+':out')
        hooks.append(m.register_forward_pre_hook(lambda mod,i,s=si,z=zi: (torch.fake_quantize_per_tensor_affine(i[0],s,z,0,255),)))
        hooks.append(m.register_forward_hook(lambda mod,i,o,s=so,z=zo: torch.fake_quantize_per_tensor_affine(o,s,z,0,255)))
        P.register_parametrization(m,'weight',WFQ())
FULL=os.environ.get('FULL')=='1'   # also emulate ORT's Sigmoid/Mul (SiLU) and Concat quantization
def dynfq(t):
    lo=min(float(t.detach().min()),0.); hi=max(float(t.detach().max()),0.); sc=max((hi-lo)/255,1e-8)
    return torch.fake_quantize_per_tensor_affine(t, sc, int(round(-lo/sc)), 0, 255)
if FQ and FULL:
    tag+='_full'
    for m in student.modules():
        if type(m).__name__=='SiLU':
            m.inplace=False
            hooks.append(m.register_forward_hook(lambda mod,i,o: dynfq(i[0]*torch.fake_quantize_per_tensor_affine(torch.sigmoid(i[0]),1/255,0,0,255))))
        if type(m).__name__=='Concat' or type(m).__name__=='MaxPool2d':
            hooks.append(m.register_forward_hook(lambda mod,i,o: dynfq(o)))
# --- capture raw head outputs (box DFL logits, class logits) per level
def grab(h):
    store={}
    for i in range(h.nl):
        h.cv2[i][-1].register_forward_hook(lambda m,a,o,i=i: store.__setitem__(('b',i),o))
        h.cv3[i][-1].register_forward_hook(lambda m,a,o,i=i: store.__setitem__(('c',i),o))
    return store
S=grab(head); T=grab(thead)
def loss_fn():
    tot=0.
    for i in range(head.nl):
        tc,sc=T[('c',i)],S[('c',i)]; tp=tc.sigmoid()
        w=tp.amax(1,keepdim=True)  # teacher objectness-like weight
        tot=tot+(F.binary_cross_entropy_with_logits(sc,tp,reduction='mean')-F.binary_cross_entropy_with_logits(tc,tp,reduction='mean'))*100
        tb=T[('b',i)].view(T[("b",i)].shape[0],4,16,*tb_shape(T[('b',i)])); sb=S[('b',i)].view_as(tb)
        kl=(F.softmax(tb,2)*(F.log_softmax(tb,2)-F.log_softmax(sb,2))).sum(2)  # B,4,H,W
        tot=tot+(kl*w).sum()/w.sum().clamp_min(1e-6)
    return tot
def tb_shape(t): return t.shape[-2:]
params=[p for p in student.parameters() if p.requires_grad]
opt=torch.optim.Adam(params, lr=LR)
BS=4; log=[]
for ep in range(EPOCHS):
    t0=time.time(); perm=torch.randperm(len(imgs)); el=0.; steps=0
    for b in range(0,len(imgs),BS):
        x=torch.cat([imgs[j] for j in perm[b:b+BS]])
        if torch.rand(1)<0.5: x=x.flip(-1)
        with torch.no_grad(): teacher(x)
        student(x); L=loss_fn()
        opt.zero_grad(); L.backward(); opt.step(); el+=float(L); steps+=1
    log.append(dict(epoch=ep, loss=el/steps, sec=time.time()-t0)); print(log[-1], flush=True)
res=dict(tag=tag, epochs=log)
meta=onnx.load(str(out/f'{name}.onnx')).metadata_props
# --- route A: export the fake-quant graph directly (fixed weight scales as constants)
if FQ:
    try:
        class WFQc(nn.Module):
            def __init__(s,w):
                super().__init__(); s.register_buffer('s',(w.abs().amax(dim=(1,2,3))*2/255).clamp_min(1e-8))
            def forward(self,w):
                if WPT: return torch.fake_quantize_per_tensor_affine(w, float(self.s.max()), 0, -128, 127)
                return torch.fake_quantize_per_channel_affine(w, self.s, torch.zeros_like(self.s,dtype=torch.int32), 0, -128, 127)
        for n,m in student.named_modules():
            if P.is_parametrized(m,'weight'):
                P.remove_parametrizations(m,'weight',leave_parametrized=False)
                P.register_parametrization(m,'weight',WFQc(m.weight.detach()))
        exp=student; exp.model[-1].export=True; exp.model[-1].format='onnx'
        pa=out/f'{tag}.qdqA.onnx'; t=time.time()
        with torch.no_grad(): torch.onnx.export(exp, (imgs[0],), str(pa), opset_version=17, dynamo=False, input_names=['images'], output_names=['output0'])
        g=onnx.load(str(pa)); del g.metadata_props[:]; g.metadata_props.extend(meta); onnx.save(g,str(pa))
        import collections; res['A_ops']=dict(collections.Counter(n.op_type for n in g.graph.node)); res['A_export_s']=time.time()-t
        res['A_map']=measure_map(pa, ds, imgsz=IMG).map50_95; print('A', res['A_map'], res['A_ops'], flush=True)
    except Exception as e:
        res['A_error']=f'{type(e).__name__}: {str(e)[:400]}'; print(res['A_error'])
# --- route B: tuned float (latent) weights -> checkpoint -> Ultralytics export -> yolotune PTQ
for h in hooks: h.remove()
head.export=False
for p in student.parameters(): p.requires_grad_(True)
for n,m in student.named_modules():
    if P.is_parametrized(m,'weight'): P.remove_parametrizations(m,'weight',leave_parametrized=False)
for m in (head,):
    m._forward_hooks.clear()
    for i in range(head.nl): head.cv2[i][-1]._forward_hooks.clear(); head.cv3[i][-1]._forward_hooks.clear()
ck=A.save_checkpoint(student, out/f'{tag}.pt'); fp32=A.export_onnx(ck, imgsz=IMG)
lay=A.model_layout(A.load_model(out/f'{name}.pt'))
qb=out/f'{tag}.int8.onnx'
quantize(fp32, qb, QuantizationConfig(default='int8', calibration_images=32, per_channel=not WPT), group_of_node=lay.group_of_onnx_node,
         calibration=lambda: A.calibration_images(ds, imgsz=IMG, count=32))
res['B_fp32_map']=measure_map(fp32, ds, imgsz=IMG).map50_95; res['B_int8_map']=measure_map(qb, ds, imgsz=IMG).map50_95
print(res, flush=True); json.dump(res, open(out/f'{tag}.json','w'), indent=1)
