"""INT8 with one activation range per Concat (``quantization.shared_ranges``) against separate ones.

ONNX Runtime's QLinearConcat requantizes every input whose scale or zero point differs from its
output's, and copies the others. ``shared_ranges`` gives each Concat's inputs and output the union
of their calibrated ranges, so it copies. This builds yolov8n-coco on tiny_coco at 320 px through
``run_candidate`` (FP32; INT8 with MinMax and percentile calibration on 32 images, each with
separate and shared ranges), validates each on all 50 validation images, and times them on
local-cpu (its own timing code, 60 runs after 10 warm-up runs) interleaved: every round times
every model once, in reversed order every other round. Reports the median of the round medians
and the median over rounds of each round's FP32-to-model ratio (pairs timed seconds apart, so
drift on a shared machine cancels).

    PYTHONPATH=. .venv/bin/python bench/shared_ranges.py [--rounds 11]   # writes bench/results/shared_ranges.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from yolotune import CompressionPlan
from yolotune.evaluators import LocalCPUTarget, int8_saturates
from yolotune.evaluators._device import cpu_name
from yolotune.search import CandidateSettings, run_candidate

OUT = Path(__file__).parent / "results" / "shared_ranges.json"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    variants: dict[str, dict[str, object]] = {"fp32": {}}
    for method in ("minmax", "percentile"):
        for shared in (False, True):
            q = {"default": "int8", "calibration_method": method, "calibration_images": 32, "shared_ranges": shared}
            variants[f"int8 {method}" + (" shared" if shared else "")] = {"quantization": q}
    rows: dict[str, dict[str, object]] = {}
    files: dict[str, Path] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (key, plan) in enumerate(variants.items()):
            r = run_candidate(
                model="yolov8n-coco.pt",
                data="tiny_coco",
                plan=CompressionPlan.from_dict(plan),
                out_dir=Path(tmp) / str(i),
                settings=CandidateSettings(imgsz=320),
                target=LocalCPUTarget(),
            )
            files[key] = r.deployable
            q = r.quantize  # what the quantize step counted in the file it wrote
            copying = f"{q.concats_copying}/{q.concats}" if q and q.concats else "—"
            rows[key] = {"map50_95": round(r.accuracy.map50_95, 4), "concats_copying": copying}
            print(key, rows[key], flush=True)
        target = LocalCPUTarget(warmup=10, runs=60)
        ms: dict[str, list[float]] = {k: [] for k in files}
        for rnd in range(args.rounds):
            order = list(files) if rnd % 2 == 0 else list(reversed(files))
            for k in order:
                ms[k].append(target.benchmark(files[k], imgsz=320).median_ms)
    base_map = float(rows["fp32"]["map50_95"])  # type: ignore[arg-type]
    print(f"CPU: {cpu_name()}; int8_saturates: {int8_saturates()}; {args.rounds} rounds")
    print("| model | Concats copying | mAP50-95 | Δ points vs FP32 | ms | vs FP32 (medians) | vs FP32 (paired) |")
    print("|---|---|---|---|---|---|---|")
    for k, row in rows.items():
        med = statistics.median(ms[k])
        paired = statistics.median(f / m for f, m in zip(ms["fp32"], ms[k], strict=True))
        row.update(
            ms=round(med, 2),
            speedup=round(statistics.median(ms["fp32"]) / med, 3),
            speedup_paired=round(paired, 3),
            rounds_ms=[round(v, 3) for v in ms[k]],
        )
        delta = 100 * (float(row["map50_95"]) - base_map)  # type: ignore[arg-type]
        print(
            f"| {k} | {row['concats_copying']} | {row['map50_95']:.4f} | {delta:+.2f} | "
            f"{med:.2f} | {row['speedup']:.2f}× | {paired:.2f}× |"
        )
    result = {"cpu": cpu_name(), "int8_saturates": int8_saturates(), "rounds": args.rounds, "models": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
