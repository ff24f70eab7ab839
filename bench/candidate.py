"""Benchmark one candidate pipeline on the real model: yolov8n-coco / tiny_coco at 320 and 640.

Builds and measures, per image size: the FP32 ONNX baseline; INT8 with signed and with
unsigned activations; the seeds' recipe (uniform 30% BN-scale pruning of every group, rounded
to 8 channels, + INT8 PTQ) with 0 and 2 fine-tune epochs. Then re-times every deployable file
side by side in interleaved rounds (this machine drifts: compare only within one run) and
prints a table; writes bench/results/candidate.json.

    .venv/bin/python bench/candidate.py [--imgsz 320 640] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from yolotune import CompressionPlan
from yolotune.assets import resolve_model
from yolotune.compression import ultralytics_adapter
from yolotune.evaluators import LocalCPUTarget
from yolotune.search import CandidateSettings, run_candidate

INT8 = {"default": "int8", "calibration_images": 32, "calibration_method": "minmax"}


def plans(groups: tuple[str, ...]) -> dict[str, CompressionPlan]:
    seeds = {"ratios": dict.fromkeys(groups, 0.3), "importance": "bn_scale", "round_to": 8}
    return {
        "fp32": CompressionPlan(),
        "int8 s8": CompressionPlan.from_dict({"quantization": {**INT8, "activation_type": "int8"}}),
        "int8 u8": CompressionPlan.from_dict({"quantization": {**INT8, "activation_type": "uint8"}}),
        "seeds ft0": CompressionPlan.from_dict({"pruning": seeds, "quantization": INT8}),
        "seeds ft2": CompressionPlan.from_dict(
            {"pruning": seeds, "quantization": INT8, "recovery": {"epochs": 2, "lr": 1e-4}}
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imgsz", type=int, nargs="+", default=[320, 640])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "candidate.json")
    args = parser.parse_args()

    groups = ultralytics_adapter.model_layout(ultralytics_adapter.load_model(resolve_model("yolov8n-coco.pt"))).groups
    target = LocalCPUTarget(warmup=10, runs=60)
    work = Path(tempfile.mkdtemp(prefix="yolotune-bench-"))
    rows: list[dict] = []
    for imgsz in args.imgsz:
        for name, plan in plans(groups).items():
            t0 = time.perf_counter()
            r = run_candidate(
                model="yolov8n-coco.pt",
                data="tiny_coco",
                plan=plan,
                out_dir=work / f"{imgsz}-{name.replace(' ', '_')}",
                settings=CandidateSettings(imgsz=imgsz),
                target=target,
            )
            total = time.perf_counter() - t0
            rows.append(
                {
                    "imgsz": imgsz,
                    "name": name,
                    "plan": plan.brief(),
                    "map50_95": r.accuracy.map50_95,
                    "map50": r.accuracy.map50,
                    "size_bytes": r.size_bytes,
                    "deployable": str(r.deployable),
                    "params": r.params,
                    "macs_estimate": r.macs,
                    "trial_seconds": total,
                    "steps": r.step_seconds,
                }
            )
            print(f"built {imgsz} {name}: mAP50-95 {r.accuracy.map50_95:.3f} in {total:.1f}s", file=sys.stderr)

    # side by side: interleaved rounds, one timing at a time
    samples: dict[int, list[float]] = {i: [] for i in range(len(rows))}
    for _ in range(args.rounds):
        for i, row in enumerate(rows):
            samples[i].append(target.benchmark(Path(row["deployable"]), imgsz=row["imgsz"]).median_ms)
    for i, row in enumerate(rows):
        row["latency_ms_median_of_rounds"] = statistics.median(samples[i])
        row["latency_ms_rounds"] = samples[i]
    base = {r["imgsz"]: r for r in rows if r["name"] == "fp32"}
    cols = ("imgsz", "candidate", "mAP50-95", "ΔmAP", "ms", "speed", "MB", "smaller", "trial s")
    header = " ".join(f"{c:<10}" if c == "candidate" else f"{c:>8}" for c in cols)
    print(header)
    for r in rows:
        b = base[r["imgsz"]]
        r["speedup"] = b["latency_ms_median_of_rounds"] / r["latency_ms_median_of_rounds"]
        r["size_ratio"] = b["size_bytes"] / r["size_bytes"]
        print(
            f"{r['imgsz']:>5} {r['name']:<10} {r['map50_95']:>8.3f} {r['map50_95'] - b['map50_95']:>+7.3f} "
            f"{r['latency_ms_median_of_rounds']:>7.2f} {r['speedup']:>5.2f}× {r['size_bytes'] / 1e6:>6.2f} "
            f"{r['size_ratio']:>6.2f}× {r['trial_seconds']:>7.1f}"
        )
    print("\nstep seconds")
    steps = list(dict.fromkeys(k for r in rows for k in r["steps"]))
    print(f"{'imgsz':>5} {'candidate':<10} " + " ".join(f"{s:>9}" for s in steps))
    for r in rows:
        print(f"{r['imgsz']:>5} {r['name']:<10} " + " ".join(f"{r['steps'].get(s, 0):>9.2f}" for s in steps))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    prov = target.provenance(imgsz=0).to_dict()
    args.out.write_text(json.dumps({"rows": rows, "rounds": args.rounds, "provenance": prov}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
