"""Benchmark the search's throughput with 1 and 2 workers, and the driver's per-trial overhead.

yolov8n-coco / tiny_coco at 320 on local-cpu, the same budget and seed for each worker count,
run one after the other in one process. Trials per hour = COMPLETE trials / wall time. A trial's
framework overhead = its wall time in the study (Optuna's start → complete) minus the time its
steps took (load, prune, save, fine-tune, count, export, quantize, validate, latency, from its
metrics.json): asking, planning, Ray scheduling and transfer, recording, artifact upload, telling.
With 2 workers a trial's wall time also holds time spent waiting for the host's lease. Prints a
table; writes bench/results/scale.json.

    .venv/bin/python bench/scale.py [--budget 10] [--workers 1 2] [--imgsz 320]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna

from yolotune.search import CandidateSettings, SearchConfig, run_search


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        assert t.datetime_start is not None and t.datetime_complete is not None
        wall = (t.datetime_complete - t.datetime_start).total_seconds()
        metrics = json.loads((Path(t.user_attrs["artifact"]).parent / "metrics.json").read_text())
        steps = sum(metrics["step_seconds"].values())
        rows.append({"trial": t.number, "wall_s": wall, "steps_s": steps, "overhead_s": wall - steps})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=10)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "scale.json")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    root = Path(tempfile.mkdtemp(prefix="yolotune-bench-scale-"))
    results: dict[str, Any] = {"cpus": os.cpu_count(), "budget": args.budget, "imgsz": args.imgsz, "runs": {}}
    for workers in args.workers:
        config = SearchConfig(
            model="yolov8n-coco.pt",
            data="tiny_coco",
            budget=args.budget,
            settings=CandidateSettings(imgsz=args.imgsz),
            study_name=f"w{workers}",
            root=root,
            seed=args.seed,
            workers=workers,
            retime_rounds=0,  # throughput of the search itself
        )
        t0 = time.perf_counter()
        study = run_search(config)
        wall = time.perf_counter() - t0
        rows = trial_rows(study)
        n = len(rows)
        overhead = [r["overhead_s"] for r in rows]
        share = [r["overhead_s"] / r["wall_s"] for r in rows if r["wall_s"] > 0]
        results["runs"][str(workers)] = {
            "wall_s": wall,
            "complete": n,
            "trials_per_hour": n / wall * 3600,
            "median_trial_s": statistics.median(r["wall_s"] for r in rows),
            "median_overhead_ms": statistics.median(overhead) * 1e3,
            "median_overhead_share": statistics.median(share),
            "trials": rows,
        }
        print(f"workers {workers}: {n} trials in {wall:.0f} s", flush=True)

    print("\n| workers | trials | wall s | trials/hour | median trial s | overhead ms (median) | overhead share |")
    print("|---|---|---|---|---|---|---|")
    for workers, r in results["runs"].items():
        print(
            f"| {workers} | {r['complete']} | {r['wall_s']:.0f} | {r['trials_per_hour']:.0f} "
            f"| {r['median_trial_s']:.1f} | {r['median_overhead_ms']:.0f} | {r['median_overhead_share']:.1%} |"
        )
    runs = results["runs"]
    if "1" in runs and "2" in runs:
        results["speedup_2_vs_1"] = runs["2"]["trials_per_hour"] / runs["1"]["trials_per_hour"]
        print(f"\n2 workers vs 1: {results['speedup_2_vs_1']:.2f}× the throughput")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
