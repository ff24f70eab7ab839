import sys, time, numpy as np, onnxruntime as ort, gc, os
ort.set_default_logger_severity(3)
x=np.random.rand(1,3,320,320).astype(np.float32); files=sys.argv[1:]; R={f:[] for f in files}
for rnd in range(3):
    for p in files:
        so=ort.SessionOptions(); so.intra_op_num_threads=2; so.inter_op_num_threads=1
        s=ort.InferenceSession(p, so, providers=['CPUExecutionProvider']); n=s.get_inputs()[0].name
        for _ in range(20): s.run(None,{n:x})
        ts=[]
        for _ in range(80):
            t=time.perf_counter(); s.run(None,{n:x}); ts.append(time.perf_counter()-t)
        R[p].append((np.median(ts)*1e3, np.percentile(ts,10)*1e3)); del s; gc.collect()
for p in files:
    a=np.array(R[p]); print(f"{p:42s} median-of-medians {np.median(a[:,0]):6.2f} ms  best-p10 {a[:,1].min():6.2f} ms  size {os.path.getsize(p)/1e6:.2f} MB")
