"""Exploratory: does a stronger recovery per probe make more groups tolerant in the sensitivity scan?

yolov8n-coco / tiny_coco at 320: each group pruned alone by 25% (weight L2), recovered with ``bn``
(what ``--sensitivity-drop`` uses) and with ``bias``, FP32, through ``scan_sensitivity``'s probe and
``run_candidate``. Writes probe_recovery.json next to this file.

    .venv/bin/python bench/explore/sensitivity/probe_recovery.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from yolotune.search import CandidateSettings, run_candidate, search_spaces, SearchConfig
from yolotune.spaces import CompressionPlan, PruningConfig, RecoveryConfig

HERE = Path(__file__).parent
settings = CandidateSettings(imgsz=320)
groups = search_spaces(SearchConfig(model="yolov8n-coco.pt", data="tiny_coco", budget=1, settings=settings))[1].groups
out = Path(tempfile.mkdtemp(prefix="probe-"))
base = run_candidate(model="yolov8n-coco.pt", data="tiny_coco", plan=CompressionPlan(), out_dir=out / "base", settings=settings)
rows = []
for g in groups:
    row = {"group": g}
    for method in ("bn", "bias"):
        plan = CompressionPlan(
            pruning=PruningConfig(ratios=((g, 0.25),), importance="l2", round_to=1),
            recovery=RecoveryConfig(method=method, images=32),
        )
        r = run_candidate(model="yolov8n-coco.pt", data="tiny_coco", plan=plan, out_dir=out / g / method, settings=settings)
        row[method] = round(base.accuracy.map50_95 - r.accuracy.map50_95, 4)
        row[f"{method}_s"] = round(r.step_seconds.get("recover", 0.0), 1)
        row["macs_ratio"] = round(r.macs / base.macs, 4)
    rows.append(row)
    print(row, flush=True)
(HERE / "probe_recovery.json").write_text(json.dumps({"baseline": base.accuracy.map50_95, "rows": rows}, indent=1) + "\n")
