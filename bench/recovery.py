"""Benchmark post-training recovery: mAP of pruned yolov8n-coco right after pruning and after each stage.

yolov8n-coco / tiny_coco at 320 px, FP32 ONNX (no quantization, so only pruning and recovery
move the number). For each pruning plan and channel ranking (weight L2, or mean activation on 50
unlabelled training images): no recovery, then BatchNorm re-estimation on 16 and 50 training
images (tiny_coco's training split holds 50). mAP through the same
pipeline the search runs (``run_candidate``: prune → recover → export → validate → time).
Prints a table; writes bench/results/recovery.json.

    .venv/bin/python bench/recovery.py [--imgsz 320]
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
from pathlib import Path
from typing import Any

from yolotune import CompressionPlan
from yolotune.assets import resolve_model
from yolotune.compression import ultralytics_adapter
from yolotune.search import CandidateSettings, run_candidate

TOLERANT = ("backbone.7", "neck.16", "head.cv2.0", "head.cv3.0", "head.cv2.1", "head.cv3.1")


def pruning_plans(groups: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """A few per-layer plans, from one tolerant group to uniform pruning."""
    uniform = {g: 0.1 for g in groups if g not in ("backbone.0", "backbone.2")}
    return {
        "SPPF (backbone.9) 25%": {"ratios": {"backbone.9": 0.25}, "importance": "l2", "round_to": 1},
        "4 tolerant groups 25%": {"ratios": dict.fromkeys(TOLERANT, 0.25), "importance": "l2", "round_to": 1},
        "4 tolerant groups 40%": {"ratios": dict.fromkeys(TOLERANT, 0.4), "importance": "l2", "round_to": 8},
        "uniform 10% (not backbone.0/2)": {"ratios": uniform, "importance": "l2", "round_to": 1},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "recovery.json")
    args = parser.parse_args()

    groups = ultralytics_adapter.model_layout(ultralytics_adapter.load_model(resolve_model("yolov8n-coco.pt"))).groups
    settings = CandidateSettings(imgsz=args.imgsz)
    work = Path(tempfile.mkdtemp(prefix="yolotune-bench-recovery-"))
    rows: list[dict[str, Any]] = []

    def run(name: str, importance: str, recovery: str, plan: CompressionPlan) -> None:
        r = run_candidate(
            model="yolov8n-coco.pt", data="tiny_coco", plan=plan, out_dir=work / str(len(rows)), settings=settings
        )
        rows.append(
            {
                "plan": name,
                "importance": importance,
                "recovery": recovery,
                "map50_95": r.accuracy.map50_95,
                "map50": r.accuracy.map50,
                "latency_ms": r.latency.median_ms,
                "macs_ratio": r.prune.macs_ratio if r.prune else 1.0,
                "recover_s": r.step_seconds.get("recover", 0.0),
                "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            }
        )
        row = rows[-1]
        print(
            f"| {name} | {importance} | {recovery} | {row['map50_95']:.3f} | {row['map50']:.3f} "
            f"| {row['macs_ratio']:.2f} | {row['recover_s']:.1f} | {row['latency_ms']:.2f} |",
            flush=True,
        )

    print("| plan | ranking | recovery | mAP50-95 | mAP50 | MACs after/before (est.) | recover s | latency ms |")
    print("|---|---|---|---|---|---|---|---|")
    run("unpruned", "—", "—", CompressionPlan())
    for name, pruning in pruning_plans(groups).items():
        for importance in ("l2", "activation"):
            ranked = {**pruning, "importance": importance}
            plan = CompressionPlan.from_dict({"pruning": ranked, "recovery": {"images": 50}})
            run(name, importance, "none", plan)
            for n in (16, 50):
                plan = CompressionPlan.from_dict({"pruning": ranked, "recovery": {"method": "bn", "images": n}})
                run(name, importance, f"bn×{n}", plan)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"imgsz": args.imgsz, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
