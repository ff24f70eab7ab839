"""Benchmark the sensitivity scan: what it costs, and whether a search pruning only tolerant groups does better.

yolov8n-coco / tiny_coco at 320 on local-cpu. Two NSGA-II searches over the default space, the
same seed and budget, interleaved trial by trial: ``default`` (pruning ratios per coarse unit)
and ``sensitivity`` (``--sensitivity-drop``: the scan runs first, then only tolerant groups are
pruned, one ratio each). The scan's own cost is counted in the second search's time. Then every
front file of both is re-timed side by side (interleaved rounds) and each hypervolume computed
from its front with those latencies, one reference point for both (as ``bench/search.py``).
Prints the scan table and a comparison; writes bench/results/sensitivity.json.

    PYTHONPATH=. .venv/bin/python bench/sensitivity.py [--budget 30] [--drop 0.03] [--imgsz 320]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
from search import front, hypervolume, points, retime

from yolotune.search import CandidateSettings, SearchConfig, plan_of, run_search

MODEL, DATA = "yolov8n-coco.pt", "tiny_coco"


def best_pruned(study: optuna.Study) -> tuple[float, str] | None:
    """(mAP50-95, brief) of the most accurate COMPLETE trial that prunes something."""
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    pruned = [t for t in done if plan_of(t).pruning.active]
    if not pruned:
        return None
    t = max(pruned, key=lambda t: t.values[0])
    return t.values[0], str(t.user_attrs["brief"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=30)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--drop", type=float, default=0.03, help="--sensitivity-drop of the second search")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "sensitivity.json")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    root = args.root or Path(tempfile.mkdtemp(prefix="yolotune-bench-sensitivity-"))
    common: dict[str, Any] = {
        "model": MODEL,
        "data": DATA,
        "settings": CandidateSettings(imgsz=args.imgsz),
        "root": root,
        "seed": args.seed,
        "budget": 1,
        "retime_rounds": 0,  # what a search costs, without the re-timing at its end
    }
    configs = {
        "default": SearchConfig(study_name="default", **common),
        "sensitivity": SearchConfig(study_name="sensitivity", sensitivity_drop=args.drop, **common),
    }
    seconds = dict.fromkeys(configs, 0.0)
    scan_seconds = 0.0
    studies: dict[str, optuna.Study] = {}
    t_start = time.perf_counter()
    for k in range(1, args.budget + 1):
        for name, config in configs.items():
            t0 = time.perf_counter()
            studies[name] = run_search(SearchConfig(**{**config.__dict__, "budget": k}))
            seconds[name] += time.perf_counter() - t0
            if name == "sensitivity" and k == 1:
                scan_seconds = sum(g["seconds"] for g in studies[name].user_attrs["sensitivity"]["groups"])
        print(f"[{time.perf_counter() - t_start:7.0f}s] step {k}", flush=True)

    recorded = {name: points(s) for name, s in studies.items()}
    fronts = {name: front(pts) for name, pts in recorded.items()}
    files = sorted({f for pts in fronts.values() for _, f in pts})
    print(f"re-timing {len(files)} front files in {args.rounds} interleaved rounds", flush=True)
    timed = retime(files, args.imgsz, args.rounds)
    sets = {name: [[v[0], v[1], timed[f]] for v, f in pts] for name, pts in fronts.items()}
    everything = [v for vs in sets.values() for v in vs] + [v for pts in recorded.values() for v, _ in pts]
    ref = [0.0, 1.1 * max(v[1] for v in everything), 1.1 * max(v[2] for v in everything)]
    hv = {name: hypervolume(vs, ref) for name, vs in sets.items()}

    scan = studies["sensitivity"].user_attrs["sensitivity"]
    tolerant = [g["group"] for g in scan["groups"] if g["map_drop"] <= args.drop]
    print(f"\nscan: baseline mAP50-95 {scan['baseline_map']:.3f}, {scan['baseline_latency_ms']:.2f} ms")
    print("| group | mAP50-95 | drop | latency ms | MACs after/before |")
    print("|---|---|---|---|---|")
    for g in scan["groups"]:
        print(
            f"| {g['group']} | {g['map50_95']:.3f} | {g['map_drop']:+.3f} | {g['latency_ms']:.2f} "
            f"| {g['macs_ratio']:.3f} |"
        )
    print(f"tolerant (drop ≤ {args.drop}): {', '.join(tolerant) or 'none'}; probes took {scan_seconds:.0f} s")
    print("\n| search | trials | pruned trials | best pruned mAP | front | HV re-timed | vs default | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    result: dict[str, Any] = {"reference_point": ref, "scan": scan, "tolerant": tolerant, "searches": {}}
    for name, study in studies.items():
        done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
        n_pruned = sum(plan_of(t).pruning.active for t in done)
        best = best_pruned(study)
        row = {
            "trials": len(done),
            "pruned_trials": n_pruned,
            "best_pruned": best,
            "front_retimed": sets[name],
            "hypervolume": hv[name],
            "vs_default": hv[name] / hv["default"] if hv["default"] else float("nan"),
            "seconds": seconds[name],
        }
        result["searches"][name] = row
        best_txt = f"{best[0]:.3f} ({best[1]})" if best else "–"
        print(
            f"| {name} | {len(done)} | {n_pruned} | {best_txt} | {len(sets[name])} | {hv[name]:.3f} "
            f"| {row['vs_default']:.2f}× | {seconds[name]:.0f} |"
        )
    for name, vs in sets.items():
        pts = "; ".join(f"({v[0]:.3f}, {v[1]:.2f}, {v[2]:.2f})" for v in sorted(vs, key=lambda v: v[2]))
        print(f"\n{name} front (mAP, MB, ms re-timed): {pts}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}; studies in {root}")


if __name__ == "__main__":
    main()
