"""Benchmark multi-fidelity search against single fidelity: hypervolume reached against CPU-seconds.

yolov8n-coco / tiny_coco at 320 on local-cpu, NSGA-II over the default space, the same seed.
The single-fidelity search evaluates every candidate fully (post-training recovery, fine-tuning,
every validation image); the multi-fidelity one evaluates each at rung 0 (no fine-tuning,
``--rung0-val`` validation images) and promotes those near the full-fidelity front. Both run
``--budget`` candidates (multi-fidelity: ``--multi-budget``, to let it spend as much), each in one
``run_search`` call as ``tune run`` does (``--interleave``:
alternated one candidate at a time, a call per candidate, so the machine's drift hits both alike
but each call's set-up is counted every time); the CPU-seconds of this process (every step runs
in it) are counted per search. After each
step the hypervolume of the feasible full-fidelity COMPLETE trials (both searches run under the
same ``--max-map-drop``) is recorded, all with one reference
point (mAP 0, 1.1 × the largest size, 1.1 × the largest latency), through Optuna's public
``plot_hypervolume_history``. Prints a table; writes bench/results/fidelity.json.

    PYTHONPATH=. .venv/bin/python bench/fidelity.py [--budget 24] [--multi-budget 36] [--imgsz 320]
        [--rung0-val 16] [--max-map-drop 0.05] [--interleave]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
from search import hypervolume, retime

from yolotune.search import CandidateSettings, SearchConfig, run_search

MODEL, DATA = "yolov8n-coco.pt", "tiny_coco"
#: (objective values, deployable file, is a reference trial)
Point = tuple[list[float], str, bool]


def complete_values(study: optuna.Study) -> list[list[float]]:
    """Objective values of the feasible full-fidelity (COMPLETE) trials."""
    return [v for v, _, _ in complete_points(study)]


def complete_points(study: optuna.Study) -> list[Point]:
    """(values, deployable file, is a reference trial) of the feasible full-fidelity trials."""
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    return [
        (list(t.values), str(t.user_attrs["artifact"]), "reference" in t.user_attrs)
        for t in done
        if not any(v > 0 for v in t.constraints.values())
    ]


def first_reaching(curve: list[tuple[float, float]], level: float) -> float | None:
    """CPU-seconds at which ``curve`` first reaches ``level`` (None: never)."""
    return next((c for c, hv in curve if hv >= level), None)


def run_once(
    name: str,
    config: SearchConfig,
    history: list[tuple[float, list[Point]]],
    t_start: float,
    outcomes: list[tuple[float, str]] | None = None,
) -> tuple[optuna.Study, float, float]:
    """One ``run_search`` call, as ``tune run`` makes; appends (CPU-s so far, points) after each trial.

    ``outcomes`` gets (CPU-s so far, outcome) per trial: ``reference``, ``full``, ``stopped`` or ``failed``.
    Returns the study, its CPU-seconds and wall seconds; the recording itself is not counted.
    """
    outside = 0.0
    c0, t0 = time.process_time(), time.perf_counter()

    def record(outcome: Any, study: optuna.Study) -> None:
        nonlocal outside
        r0 = time.process_time()
        history.append((r0 - c0 - outside, complete_points(study)))
        if outcomes is not None:
            reference = "reference" in study.trials[outcome.number].user_attrs
            kind = {"COMPLETE": "full", "PRUNED": "stopped", "FAIL": "failed"}[outcome.state]
            outcomes.append((r0 - c0 - outside, "reference" if reference else kind))
        outside += time.process_time() - r0
        print(f"[{time.perf_counter() - t_start:7.0f}s] {name}: trial {outcome.number} {outcome.state}", flush=True)

    study = run_search(config, on_trial=record)
    return study, time.process_time() - c0 - outside, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=30, help="candidates per search")
    parser.add_argument(
        "--multi-budget",
        type=int,
        default=None,
        help="multi-fidelity's candidates (default: --budget). Its stops are cheaper, so at equal budgets it "
        "ends on less compute; a larger one lets it spend up to single's, to see when it reaches single's "
        "hypervolume",
    )
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rung0-val", type=int, default=16)
    parser.add_argument("--promote-margin", type=float, default=0.02)
    parser.add_argument("--max-map-drop", type=float, default=0.05, help="both searches' constraint")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved re-timing rounds of every point")
    parser.add_argument(
        "--root", type=Path, default=None, help="studies directory, kept (default: a temp dir, deleted at the end)"
    )
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="alternate the searches one candidate at a time (a run_search call per candidate, whose "
        "set-up is counted each time) instead of one run_search per search",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fidelity.json")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    root = args.root or Path(tempfile.mkdtemp(prefix="yolotune-bench-fidelity-"))
    common: dict[str, Any] = {
        "model": MODEL,
        "data": DATA,
        "budget": args.budget,
        "settings": CandidateSettings(imgsz=args.imgsz),
        "root": root,
        "seed": args.seed,
        "max_map_drop": args.max_map_drop,
        "retime_rounds": 0,  # this script re-times every feasible file itself, after both searches
    }
    configs = {
        "single": SearchConfig(study_name="single", **common),
        "multi": SearchConfig(
            study_name="multi",
            multi_fidelity=True,
            rung0_val=args.rung0_val,
            promote_margin=args.promote_margin,
            **{**common, "budget": args.multi_budget or args.budget},
        ),
    }
    cpu = dict.fromkeys(configs, 0.0)
    wall = dict.fromkeys(configs, 0.0)
    history: dict[str, list[tuple[float, list[Point]]]] = {name: [] for name in configs}
    outcomes: dict[str, list[tuple[float, str]]] = {name: [] for name in configs}
    studies: dict[str, optuna.Study] = {}
    t_start = time.perf_counter()
    if args.interleave:
        for k in range(1, args.budget + 1):
            for name, config in configs.items():
                c0, t0 = time.process_time(), time.perf_counter()
                studies[name] = run_search(SearchConfig(**{**config.__dict__, "budget": k}))
                cpu[name] += time.process_time() - c0
                wall[name] += time.perf_counter() - t0
                history[name].append((cpu[name], complete_points(studies[name])))
            status = {n: f"{len(complete_values(s))} full / {len(s.get_trials())} trials" for n, s in studies.items()}
            print(f"[{time.perf_counter() - t_start:7.0f}s] step {k}: {status}", flush=True)
    else:
        for name, config in configs.items():
            studies[name], cpu[name], wall[name] = run_once(name, config, history[name], t_start, outcomes[name])

    # latencies recorded during the searches move with the machine (the same INT8 plan was timed at
    # 7.7 and 11.2 ms in one earlier run): re-time every feasible file side by side, use those
    files = sorted({f for h in history.values() for _, pts in h for _, f, _ in pts})
    print(f"re-timing {len(files)} files in {args.rounds} interleaved rounds", flush=True)
    timed = retime(files, args.imgsz, args.rounds)

    def values(pts: list[Point], *, searched_only: bool = False) -> list[list[float]]:
        return [[v[0], v[1], timed[f]] for v, f, ref in pts if not (searched_only and ref)]

    everything = [v for h in history.values() for _, pts in h for v in values(pts)]
    ref = [0.0, 1.1 * max(v[1] for v in everything), 1.1 * max(v[2] for v in everything)]

    def curve(h: list[tuple[float, list[Point]]], searched_only: bool) -> list[tuple[float, float]]:
        out = []
        for c, pts in h:
            vs = values(pts, searched_only=searched_only)
            out.append((c, hypervolume(vs, ref) if vs else 0.0))
        return out

    curves = {name: curve(h, False) for name, h in history.items()}
    searched = {name: curve(h, True) for name, h in history.items()}
    final = {name: c[-1][1] for name, c in curves.items()}
    final_searched = {name: c[-1][1] for name, c in searched.items()}
    target = final["multi"]
    reach = first_reaching(curves["single"], 0.98 * target)
    # the goal: multi-fidelity within 2% of single fidelity's final hypervolume, at ≤1/3 its CPU
    multi_reach = first_reaching(curves["multi"], 0.98 * final["single"])
    multi_reach_searched = first_reaching(searched["multi"], 0.98 * final_searched["single"])

    print(f"\nreference point (mAP, MB, ms) = ({ref[0]:.1f}, {ref[1]:.2f}, {ref[2]:.2f})")
    print("| search | candidates | full | stopped at rung 0 | CPU s | wall s | hypervolume | HV, searched only |")
    print("|---|---|---|---|---|---|---|---|")
    result: dict[str, Any] = {"reference_point": ref, "args": {k: str(v) for k, v in vars(args).items()}}
    for name, study in studies.items():
        states = [t.state for t in study.get_trials()]
        n_full = states.count(optuna.trial.TrialState.COMPLETE)
        n_rung0 = states.count(optuna.trial.TrialState.PRUNED)
        result[name] = {
            "candidates": n_full + n_rung0,
            "full": n_full,
            "rung0": n_rung0,
            "failed": states.count(optuna.trial.TrialState.FAIL),
            "cpu_seconds": cpu[name],
            "wall_seconds": wall[name],
            "hypervolume": final[name],
            "hypervolume_searched": final_searched[name],
            "curve": curves[name],
            "curve_searched": searched[name],
        }
        print(
            f"| {name} | {n_full + n_rung0} | {n_full} | {n_rung0} | {cpu[name]:.0f} | {wall[name]:.0f} "
            f"| {final[name]:.3f} | {final_searched[name]:.3f} |"
        )
    ratio = cpu["multi"] / cpu["single"] if cpu["single"] else float("nan")
    hv_ratio = final["multi"] / final["single"] if final["single"] else float("nan")
    print(f"\nmulti / single: CPU {ratio:.2f}×, hypervolume {hv_ratio:.3f}×")
    if reach is None:
        print("single fidelity never came within 2% of the multi-fidelity hypervolume")
    else:
        print(f"single fidelity needed {reach:.0f} CPU s to come within 2% of it (multi used {cpu['multi']:.0f})")
    for label, at in (("all trials", multi_reach), ("searched trials only", multi_reach_searched)):
        share = f"{at / cpu['single']:.2f}× single's CPU" if at is not None else "never"
        print(f"multi-fidelity came within 2% of single's final hypervolume ({label}) at: {share}")
    result["summary"] = {
        "cpu_ratio": ratio,
        "hypervolume_ratio": hv_ratio,
        "single_cpu_to_reach_multi": reach,
        "multi_cpu_to_reach_single": multi_reach,
        "multi_cpu_to_reach_single_searched": multi_reach_searched,
    }
    result["retimed_ms"] = timed
    # what one candidate costs, by how it ended (a stop's CPU is its rung 0; a promoted one's, rung 0 and promotion)
    costs: dict[str, dict[str, list[float]]] = {}
    for name, steps in outcomes.items():
        previous = 0.0
        for at, kind in steps:
            costs.setdefault(name, {}).setdefault(kind, []).append(at - previous)
            previous = at
    if costs:
        print("\n| search | outcome | candidates | median CPU-s each | CPU-s in all |\n|---|---|---|---|---|")
        for name, kinds in costs.items():
            for kind, each in sorted(kinds.items()):
                print(f"| {name} | {kind} | {len(each)} | {statistics.median(each):.1f} | {sum(each):.0f} |")
        result["cpu_per_candidate"] = costs
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    if args.root is None:  # ~1.8 GB of trial folders per run: keep them only where asked to
        shutil.rmtree(root, ignore_errors=True)
        print(f"wrote {args.out}")
    else:
        print(f"wrote {args.out}; studies in {root}")


if __name__ == "__main__":
    main()
