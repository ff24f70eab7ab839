import torch, onnx, warnings, time
import numpy as np, onnxruntime as ort
warnings.filterwarnings('ignore')
print(torch.__version__, ort.__version__)
class M(torch.nn.Module):
    def __init__(s):
        super().__init__(); s.c=torch.nn.Conv2d(16,32,3,padding=1); s.c2=torch.nn.Conv2d(32,32,3,padding=1)
    def fq(s,x): return torch.fake_quantize_per_tensor_affine(x, 0.02, 128, 0, 255)
    def fw(s,w):
        sc=(w.abs().amax(dim=(1,2,3))/127).detach()
        return torch.fake_quantize_per_channel_affine(w, sc, torch.zeros_like(sc,dtype=torch.int32), 0, -128, 127)
    def forward(s,x):
        x=torch.nn.functional.conv2d(s.fq(x), s.fw(s.c.weight), s.c.bias, padding=1)
        x=torch.relu(s.fq(x))
        return torch.nn.functional.conv2d(s.fq(x), s.fw(s.c2.weight), s.c2.bias, padding=1)
m=M().eval(); x=torch.randn(1,16,80,80)
for dyn in (False, True):
    try:
        torch.onnx.export(m, (x,), f'/tmp/qat/t_{dyn}.onnx', opset_version=17, dynamo=dyn)
        g=onnx.load(f'/tmp/qat/t_{dyn}.onnx')
        print('dynamo',dyn, [n.op_type for n in g.graph.node])
        s=ort.InferenceSession(f'/tmp/qat/t_{dyn}.onnx', providers=['CPUExecutionProvider'])
        o=s.run(None,{s.get_inputs()[0].name:x.numpy()})[0]
        print('maxdiff', np.abs(o-m(x).detach().numpy()).max())
    except Exception as e: print('dynamo',dyn,'FAIL',type(e).__name__, str(e)[:300])
