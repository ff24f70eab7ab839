"""Benchmark the search: NSGA-II vs random search vs a grid of the seeds' recipe, in one run.

yolov8n-coco / tiny_coco at 320 on local-cpu. NSGA-II (the default) and random search each run
``--budget`` COMPLETE trials over the default space (both start with the same three reference
trials); the grid runs the seeds' recipe (uniform BN-scale pruning, round_to 8, 2 fine-tune
epochs) at ratios 0, 10, ..., 50 % × {fp32, int8}. The three are interleaved trial by trial so
the machine's drift hits them alike. Then the deployable file of every point on any of the three
fronts is re-timed side by side in interleaved rounds (the same plan timed at different moments
differs by up to ±30% here, more than INT8 gains at 320 px), and each search's hypervolume is
computed from its front with those re-timed latencies, with one reference point for all:
(mAP 0, 1.1 × the largest size, 1.1 × the largest latency), through Optuna's public
``plot_hypervolume_history``. Hypervolumes from the recorded latencies are reported beside them.
Prints a table; writes bench/results/search.json.

    .venv/bin/python bench/search.py [--budget 50] [--imgsz 320] [--root DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import onnx
import optuna

from yolotune import CompressionPlan
from yolotune.evaluators import LocalCPUTarget
from yolotune.search import CandidateSettings, SearchConfig, run_candidate, run_search, search_spaces

MODEL, DATA = "yolov8n-coco.pt", "tiny_coco"
RATIOS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)


def grid_plans(groups: tuple[str, ...]) -> list[tuple[str, CompressionPlan]]:
    """The seeds' recipe at each uniform ratio, in FP32 and INT8."""
    out = []
    for precision in ("fp32", "int8"):
        for r in RATIOS:
            quant: dict[str, Any] = {"default": precision, "calibration_images": 32, "activation_type": "uint8"}
            plan = {"quantization": quant}
            if r:
                plan["pruning"] = {"ratios": dict.fromkeys(groups, r), "importance": "bn_scale", "round_to": 8}
                plan["recovery"] = {"epochs": 2, "lr": 1e-4}
            out.append((f"grid {int(r * 100)}% {precision}", CompressionPlan.from_dict(plan)))
    return out


def points(study: optuna.Study) -> list[tuple[list[float], str]]:
    """(values, deployable file) of every COMPLETE trial."""
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    return [(list(t.values), str(t.user_attrs["artifact"])) for t in done]


def retime(files: list[str], imgsz: int, rounds: int) -> dict[str, float]:
    """Median over interleaved rounds of each file's median latency (one timing at a time).

    Files with identical graphs (the same plan found by two searches; only the export date in the
    metadata differs) are timed once and share the number.
    """
    target = LocalCPUTarget(warmup=10, runs=60)
    digest = {f: hashlib.sha256(onnx.load(f).graph.SerializeToString()).hexdigest() for f in files}
    unique = {d: f for f, d in digest.items()}
    samples: dict[str, list[float]] = {d: [] for d in unique}
    for _ in range(rounds):
        for d, f in unique.items():
            samples[d].append(target.benchmark(Path(f), imgsz=imgsz).median_ms)
    return {f: statistics.median(samples[digest[f]]) for f in files}


def hypervolume(values: list[list[float]], ref: list[float]) -> float:
    """Hypervolume of a set of (mAP, size, latency) points, via Optuna's public plot function."""
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    for v in values:
        study.add_trial(optuna.trial.create_trial(values=v))
    fig = optuna.visualization.plot_hypervolume_history(study, ref)
    return float(fig.data[0].y[-1])


def front(pts: list[tuple[list[float], str]]) -> list[tuple[list[float], str]]:
    """The non-dominated points, sorted by latency."""

    def dominates(a: list[float], b: list[float]) -> bool:
        return a[0] >= b[0] and a[1] <= b[1] and a[2] <= b[2] and a != b

    kept = [(v, f) for v, f in pts if not any(dominates(o, v) for o, _ in pts)]
    return sorted(kept, key=lambda p: p[0][2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=50)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved re-timing rounds of front points")
    parser.add_argument("--root", type=Path, default=None, help="studies directory (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "search.json")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    root = args.root or Path(tempfile.mkdtemp(prefix="yolotune-bench-search-"))
    settings = CandidateSettings(imgsz=args.imgsz)
    configs = {
        name: SearchConfig(
            model=MODEL,
            data=DATA,
            budget=args.budget,
            settings=settings,
            study_name=name,
            root=root,
            sampler=name,
            seed=args.seed,
            retime_rounds=0,  # run step by step: a re-timing after each step would be timed as search
        )
        for name in ("nsga2", "random")
    }
    groups = search_spaces(configs["nsga2"])[1].groups
    grid = grid_plans(groups)
    grid_points: list[tuple[list[float], str]] = []
    grid_rows: list[dict[str, Any]] = []
    seconds = dict.fromkeys([*configs, "grid"], 0.0)
    studies: dict[str, optuna.Study] = {}
    t_start = time.perf_counter()
    for k in range(1, args.budget + 1):
        for name, config in configs.items():
            t0 = time.perf_counter()
            studies[name] = run_search(SearchConfig(**{**config.__dict__, "budget": k}))
            seconds[name] += time.perf_counter() - t0
        if k <= len(grid):
            label, plan = grid[k - 1]
            t0 = time.perf_counter()
            try:
                r = run_candidate(model=MODEL, data=DATA, plan=plan, out_dir=root / "grid" / str(k), settings=settings)
                grid_points.append(([r.accuracy.map50_95, r.size_mb, r.latency.median_ms], str(r.deployable)))
                grid_rows.append({"plan": label, "values": grid_points[-1][0]})
            except Exception as exc:  # recorded, like a failed trial
                grid_rows.append({"plan": label, "error": str(exc)})
            seconds["grid"] += time.perf_counter() - t0
        done = {n: len(points(s)) for n, s in studies.items()}
        print(f"[{time.perf_counter() - t_start:7.0f}s] step {k}: complete {done}, grid {len(grid_points)}", flush=True)

    recorded = {name: points(s) for name, s in studies.items()}
    recorded["grid"] = grid_points
    # re-time every front point of every search side by side
    fronts = {name: front(pts) for name, pts in recorded.items()}
    files = sorted({f for pts in fronts.values() for _, f in pts})
    print(f"re-timing {len(files)} front files in {args.rounds} interleaved rounds", flush=True)
    timed = retime(files, args.imgsz, args.rounds)
    sets = {name: [[v[0], v[1], timed[f]] for v, f in pts] for name, pts in fronts.items()}
    raw = {name: [v for v, _ in pts] for name, pts in recorded.items()}
    everything = [v for vs in [*sets.values(), *raw.values()] for v in vs]
    ref = [0.0, 1.1 * max(v[1] for v in everything), 1.1 * max(v[2] for v in everything)]
    hv = {name: hypervolume(vs, ref) for name, vs in sets.items()}
    hv_recorded = {name: hypervolume(vs, ref) for name, vs in raw.items()}
    complete = studies["nsga2"].get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    seeds = next((t.values for t in complete if t.user_attrs.get("reference") == "seeds"), None)
    fp32 = next((t.values for t in complete if t.user_attrs.get("reference") == "fp32"), None)

    def dominating_seeds(vs: list[list[float]]) -> list[list[float]]:
        if seeds is None:
            return []
        return [v for v in vs if v[0] >= seeds[0] and v[1] <= seeds[1] and v[2] <= seeds[2] and v != list(seeds)]

    print(f"\nreference point (mAP, MB, ms) = ({ref[0]:.1f}, {ref[1]:.2f}, {ref[2]:.2f}); fp32 = {fp32}")
    print(
        "| search | trials | front | HV re-timed | vs random | HV recorded | vs random | best mAP | fastest ms "
        "| wall s | points dominating seeds |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    result: dict[str, Any] = {"reference_point": ref, "fp32": fp32, "seeds": seeds, "searches": {}}
    for name, vs in sets.items():
        fr = front([(v, "") for v in vs])
        dom = dominating_seeds(raw[name])
        row = {
            "trials": len(raw[name]),
            "front_retimed": [v for v, _ in fr],
            "hypervolume": hv[name],
            "vs_random": hv[name] / hv["random"] if hv["random"] else float("nan"),
            "hypervolume_recorded": hv_recorded[name],
            "vs_random_recorded": hv_recorded[name] / hv_recorded["random"] if hv_recorded["random"] else float("nan"),
            "best_map": max(v[0] for v in raw[name]),
            "fastest_ms": min(v[2] for v in vs),
            "seconds": seconds[name],
            "dominating_seeds": dom,
        }
        result["searches"][name] = row
        print(
            f"| {name} | {row['trials']} | {len(fr)} | {hv[name]:.3f} | {row['vs_random']:.2f}× "
            f"| {hv_recorded[name]:.3f} | {row['vs_random_recorded']:.2f}× | {row['best_map']:.3f} "
            f"| {row['fastest_ms']:.2f} | {seconds[name]:.0f} | {len(dom)} |"
        )
    result["grid"] = grid_rows
    for name in configs:
        failed = studies[name].get_trials(states=(optuna.trial.TrialState.FAIL,))
        result["searches"][name]["failed"] = [t.user_attrs.get("fail_reason") for t in failed]
        best = result["searches"][name]["front_retimed"]
        print(f"\n{name} front (mAP, MB, ms): " + "; ".join(f"({v[0]:.3f}, {v[1]:.2f}, {v[2]:.2f})" for v in best))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}; studies in {root}")


if __name__ == "__main__":
    main()
