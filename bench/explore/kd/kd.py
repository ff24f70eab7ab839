"""Exploratory: label-free output distillation after post-training recovery.

The pruned, `ls`-recovered student learns to reproduce the unpruned teacher's raw head outputs
(class logits: BCE to the teacher's sigmoid; box DFL bins: KL, weighted by the teacher's class
confidence) on augmented *unlabelled* training images. No labels, so nothing to overfit to
the 465 boxes; BatchNorm statistics stay frozen.

    KD_CFGS='[[10, 1e-4], [20, 1e-4]]' PYTHONPATH=. .venv/bin/python bench/explore/kd/kd.py "8 bias-tolerant 25% ls"
    KD_CFGS='[[10, 1e-5], [20, 3e-5]]' PYTHONPATH=. .venv/bin/python bench/explore/kd/kd.py "8 bias-tolerant 25% ls"

Rows are merged into kd.json by (plan, epochs, lr).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from yolotune import CompressionPlan
from yolotune.assets import prepare_dataset, resolve_model
from yolotune.compression import ultralytics_adapter as adapter
from yolotune.search import CandidateSettings, run_candidate

IMGSZ = 320
HERE = Path(__file__).parent


def augment(batch: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n = batch.shape[0]
    out = []
    for i in range(n):
        x = batch[i : i + 1]
        if torch.rand(1, generator=g) < 0.5:
            x = x.flip(-1)
        s = float(0.6 + 0.8 * torch.rand(1, generator=g))
        size = max(32, int(IMGSZ * s) // 32 * 32)
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        canvas = torch.full((1, 3, IMGSZ, IMGSZ), 114 / 255)
        if size >= IMGSZ:
            ox, oy = (int(torch.randint(0, size - IMGSZ + 1, (1,), generator=g)) for _ in range(2))
            canvas = x[..., oy : oy + IMGSZ, ox : ox + IMGSZ]
        else:
            ox, oy = (int(torch.randint(0, IMGSZ - size + 1, (1,), generator=g)) for _ in range(2))
            canvas[..., oy : oy + size, ox : ox + size] = x
        gain = float(0.7 + 0.6 * torch.rand(1, generator=g))
        out.append((canvas * gain).clamp(0, 1))
    return torch.cat(out)


def raw(model, x):
    y = model(x)[1]  # eval mode: (decoded, {"boxes": (b, 4*16, N), "scores": (b, 80, N), "feats": ...})
    return y["boxes"], y["scores"]


def kd_loss(s_maps, t_maps, reg_max=16):
    (sb, sc), (tb, tc) = s_maps, t_maps
    pt = tc.sigmoid()
    cls = F.binary_cross_entropy_with_logits(sc, pt, reduction="mean")
    w = pt.amax(1, keepdim=True)  # (b,1,N)
    b, _, n = sb.shape
    ls = F.log_softmax(sb.view(b, 4, reg_max, n), 2)
    lt = F.softmax(tb.view(b, 4, reg_max, n), 2)
    kl = (lt * (lt.clamp_min(1e-9).log() - ls)).sum(2)  # (b,4,N)
    box = (kl * w).sum() / w.sum().clamp_min(1e-6) / 4
    return cls + box


def distil(ckpt: Path, teacher_path: Path, images: torch.Tensor, *, epochs: int, lr: float, batch: int, seed: int = 0):
    student = adapter.load_model(ckpt)
    teacher = adapter.load_model(teacher_path).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student.eval()  # frozen BN statistics
    for p in student.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    steps = epochs * ((n + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses = []
    for ep in range(epochs):
        perm = torch.randperm(n, generator=g)
        tot = 0.0
        for i in range(0, n, batch):
            x = augment(images[perm[i : i + batch]], g)
            with torch.no_grad():
                t = raw(teacher, x)
            loss = kd_loss(raw(student, x), t)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * x.shape[0]
        losses.append(tot / n)
    for p in student.parameters():
        p.requires_grad_(False)
    return student, losses


def main() -> None:
    torch.set_num_threads(2)
    dataset = prepare_dataset("tiny_coco")
    teacher = resolve_model("yolov8n-coco.pt")
    images = torch.from_numpy(np.concatenate(list(adapter.calibration_images(dataset, imgsz=IMGSZ, count=50))))
    tolerant8 = ["backbone.0", "backbone.7", "backbone.9", "neck.16", "head.cv2.0", "head.cv3.0", "head.cv2.1", "head.cv3.1"]
    plans = {
        "8 bias-tolerant 25% ls": {"ratios": dict.fromkeys(tolerant8, 0.25), "round_to": 1, "recovery": {"method": "ls"}},
        "uniform 10% act ls": {"ratios": {}, "round_to": 1, "importance": "activation", "recovery": {"method": "ls"}},
    }
    which = sys.argv[1:] or list(plans)
    cfgs = json.loads(os.environ.get("KD_CFGS", "[[10, 1e-4], [20, 1e-4]]"))
    rows = []
    for name in which:
        spec = dict(plans[name])
        rec = spec.pop("recovery")
        if not spec["ratios"]:
            layout = adapter.model_layout(adapter.load_model(teacher))
            spec["ratios"] = {gname: 0.1 for gname in layout.groups if gname not in ("backbone.0", "backbone.2")}
        with tempfile.TemporaryDirectory() as tmp:
            plan = CompressionPlan.from_dict({"pruning": spec, "recovery": rec})
            r = run_candidate(model="yolov8n-coco.pt", data="tiny_coco", plan=plan, out_dir=Path(tmp) / "c",
                              settings=CandidateSettings(imgsz=IMGSZ))
            base = {"plan": name, "macs_ratio": r.prune.macs_ratio, "after_ls": r.accuracy.map50_95}
            print(base, flush=True)
            for epochs, lr in cfgs:
                t0 = time.process_time(); w0 = time.perf_counter()
                net, losses = distil(Path(tmp) / "c/model.pt", teacher, images, epochs=epochs, lr=lr, batch=8)
                cpu, wall = time.process_time() - t0, time.perf_counter() - w0
                ck = adapter.save_checkpoint(net, Path(tmp) / f"kd{epochs}" / "model.pt")
                onnx = adapter.export_onnx(ck, imgsz=IMGSZ)
                m, m50 = adapter.validate_onnx(onnx, dataset, imgsz=IMGSZ)
                row = {**base, "epochs": epochs, "lr": lr, "map50_95": m, "kd_wall_s": round(wall, 1), "kd_cpu_s": round(cpu, 1),
                       "loss": [round(x, 4) for x in losses]}
                print(row, flush=True)
                rows.append(row)
    out = HERE / "kd.json"  # rows of earlier runs (other plans or settings) are kept
    key = lambda r: (r["plan"], r["epochs"], r["lr"])  # noqa: E731
    old = {key(r): r for r in (json.loads(out.read_text()) if out.is_file() else [])}
    old.update({key(r): r for r in rows})
    out.write_text(json.dumps(list(old.values()), indent=1) + "\n")


if __name__ == "__main__":
    main()
