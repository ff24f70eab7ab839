"""Measure what the sensitivity scan costs per probe, with its default settings.

yolov8n-coco / tiny_coco at 320 on local-cpu: the unpruned baseline, then each prunable group
pruned alone by 25% and recovered with ``bias`` (``tune run --sensitivity-drop``'s defaults),
each a real candidate (prune → recover → export → validate → time). Prints each probe's seconds
(the sum of its steps) and CPU-seconds; writes bench/results/scan_cost.json.

    PYTHONPATH=. .venv/bin/python bench/scan_cost.py [--recovery bias]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from yolotune.assets import resolve_model
from yolotune.compression import ultralytics_adapter as adapter
from yolotune.search import CandidateSettings, scan_sensitivity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recovery", default="bias")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "scan_cost.json")
    args = parser.parse_args()

    groups = adapter.model_layout(adapter.load_model(resolve_model("yolov8n-coco.pt"))).groups
    cpu: list[float] = []
    last = [time.process_time()]

    def on_group(k: int, total: int, row: object, name: str) -> None:
        now = time.process_time()
        cpu.append(now - last[0])
        last[0] = now
        print(f"[{k}/{total}] {name}: {cpu[-1]:.1f} CPU-s", flush=True)

    c0, t0 = time.process_time(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="yolotune-bench-scan-") as tmp:
        scan = scan_sensitivity(
            model="yolov8n-coco.pt",
            data="tiny_coco",
            groups=groups,
            out_dir=Path(tmp),
            settings=CandidateSettings(imgsz=320),
            recovery=args.recovery,
            on_group=on_group,
        )
    wall, total_cpu = time.perf_counter() - t0, time.process_time() - c0
    seconds = [g.seconds for g in scan.groups]
    print(f"\n{len(seconds)} probes + baseline: {wall:.0f} s wall, {total_cpu:.0f} CPU-s in all")
    print(f"probe steps: median {statistics.median(seconds):.1f} s, {min(seconds):.1f}–{max(seconds):.1f} s")
    print(f"probe CPU-s: median {statistics.median(cpu[1:]):.1f}, {min(cpu[1:]):.1f}–{max(cpu[1:]):.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "wall_seconds": wall,
        "cpu_seconds": total_cpu,
        "probe_step_seconds": dict(zip([g.group for g in scan.groups], seconds, strict=True)),
        "cpu_per_callback": cpu,
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
