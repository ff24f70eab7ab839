"""Benchmark post-training recovery: mAP of pruned yolov8n-coco right after pruning and after each stage.

yolov8n-coco / tiny_coco at 320 px, FP32 ONNX (no quantization, so only pruning and recovery
move the number). For each pruning plan and channel ranking (weight L2, or mean activation on the
50 unlabelled training images): no recovery, ``bn`` (BatchNorm re-estimation), ``bias`` (bias
compensation of the pruned layers' consumers) and ``ls`` (ridge least-squares reconstruction of
those consumers), all on the 50 training images (tiny_coco's training split). mAP through the same
pipeline the search runs (``run_candidate``: prune → recover → export → validate → time).

Each candidate runs in a fresh process, so its peak RSS is its own: ``rss before recover`` is the
peak up to the end of pruning, ``rss after recover`` the peak once recovery is done.
Prints a table; writes bench/results/recovery.json.

    .venv/bin/python bench/recovery.py [--imgsz 320]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import tempfile
from pathlib import Path
from typing import Any

TOLERANT = ("backbone.7", "neck.16", "head.cv2.0", "head.cv3.0", "head.cv2.1", "head.cv3.1")
METHODS = ("none", "bn", "bias", "ls")


def pruning_plans(groups: tuple[str, ...]) -> dict[str, tuple[dict[str, Any], tuple[str, ...]]]:
    """Per-layer plans, from one tolerant group to uniform pruning, with the rankings measured."""
    uniform = {g: 0.1 for g in groups if g not in ("backbone.0", "backbone.2")}
    return {
        "SPPF (backbone.9) 25%": ({"ratios": {"backbone.9": 0.25}, "round_to": 1}, ("l2",)),
        "4 tolerant groups 25%": ({"ratios": dict.fromkeys(TOLERANT, 0.25), "round_to": 1}, ("l2",)),
        "4 tolerant groups 40% (round 8)": (
            {"ratios": dict.fromkeys(TOLERANT, 0.4), "round_to": 8},
            ("l2", "activation"),
        ),
        "uniform 10% (not backbone.0/2)": ({"ratios": uniform, "round_to": 1}, ("l2", "activation")),
    }


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def _one(job: tuple[dict[str, Any], int, str]) -> dict[str, Any]:
    """Run one candidate in this (fresh) process; return its figures."""
    from yolotune import CompressionPlan
    from yolotune.search import CandidateSettings, run_candidate

    plan_dict, imgsz, out_dir = job
    peaks: dict[str, float] = {}
    r = run_candidate(
        model="yolov8n-coco.pt",
        data="tiny_coco",
        plan=CompressionPlan.from_dict(plan_dict),
        out_dir=Path(out_dir),
        settings=CandidateSettings(imgsz=imgsz),
        on_step=lambda step: peaks.setdefault(step, _peak_gb()),
    )
    rec = r.recover
    return {
        "map50_95": r.accuracy.map50_95,
        "map50": r.accuracy.map50,
        "latency_ms": r.latency.median_ms,
        "macs_ratio": r.prune.macs_ratio if r.prune else 1.0,
        "prune_s": r.step_seconds.get("prune", 0.0),
        "recover_s": r.step_seconds.get("recover", 0.0),
        "rss_before_recover_gb": peaks.get("recover", peaks.get("save", 0.0)),
        "rss_after_recover_gb": peaks.get("save", 0.0),
        "consumers": rec.consumers if rec else 0,
        "positions": rec.positions if rec else 0,
        "buffer_mb": rec.buffer_mb if rec else 0.0,
        "error_before": rec.error_before if rec else None,
        "error_after": rec.error_after if rec else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--images", type=int, default=50, help="recovery images (training split)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "recovery.json")
    args = parser.parse_args()

    from yolotune.assets import resolve_model
    from yolotune.compression import ultralytics_adapter

    groups = ultralytics_adapter.model_layout(ultralytics_adapter.load_model(resolve_model("yolov8n-coco.pt"))).groups
    work = Path(tempfile.mkdtemp(prefix="yolotune-bench-recovery-"))
    rows: list[dict[str, Any]] = []
    ctx = multiprocessing.get_context("spawn")

    def run(name: str, importance: str, recovery: str, plan: dict[str, Any]) -> None:
        with ctx.Pool(1, maxtasksperchild=1) as pool:
            figures = pool.map(_one, [(plan, args.imgsz, str(work / str(len(rows))))])[0]
        rows.append({"plan": name, "importance": importance, "recovery": recovery, **figures})
        row = rows[-1]
        err = f"{row['error_before']:.2f} → {row['error_after']:.2f}" if row["error_before"] is not None else "—"
        print(
            f"| {name} | {importance} | {recovery} | {row['map50_95']:.3f} | {row['map50']:.3f} "
            f"| {row['macs_ratio']:.2f} | {row['recover_s']:.1f} | {row['rss_before_recover_gb']:.2f} "
            f"| {row['rss_after_recover_gb']:.2f} | {row['buffer_mb']:.0f} | {err} |",
            flush=True,
        )

    print(
        "| plan | ranking | recovery | mAP50-95 | mAP50 | MACs after/before (est.) | recover s "
        "| peak RSS before recover GB | peak RSS after GB | LS buffers MB | consumer error (median) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    run("unpruned", "—", "—", {})
    for name, (pruning, rankings) in pruning_plans(groups).items():
        for importance in rankings:
            for method in METHODS:
                plan = {
                    "pruning": {**pruning, "importance": importance},
                    "recovery": {"method": method, "images": args.images},
                }
                run(name, importance, method, plan)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"imgsz": args.imgsz, "images": args.images, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
