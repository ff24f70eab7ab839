"""Benchmark ``bias``/``ls`` recovery with and without reusing the final layers' outputs.

yolov8n-coco / tiny_coco at 320 px. Each consumer of pruned channels is fitted on forward passes
that stop right after it; ``whole`` runs every pass from the image (one pass per consumer, the
recovery before this change), ``reused`` serves the outputs of the layers before the consumer's,
final by then (``adapter.layer_reads``). Both fit the same pruned model on the same calibration
images (the first of tiny_coco's training split); the fitted weights must be identical. Repeats
alternate the two, so the machine's drift hits both alike. Prints a table of median CPU-seconds
and wall seconds; writes bench/results/reconstruct_passes.json.

    PYTHONPATH=. .venv/bin/python bench/reconstruct_passes.py [--imgsz 320] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from yolotune.assets import prepare_dataset, resolve_model
from yolotune.compression import prune, unpruned_copy
from yolotune.compression import ultralytics_adapter as adapter
from yolotune.compression._reconstruct import reconstruct_consumers
from yolotune.spaces import PruningConfig

TOLERANT = ("backbone.7", "neck.16", "head.cv2.0", "head.cv3.0", "head.cv2.1", "head.cv3.1")


def plans(groups: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """A few tolerant groups; every group but the stem; a plan the default space drew (trial 13 of a search)."""
    drawn = {g: 0.4 for g in ("backbone.5", "backbone.6", "backbone.7", "backbone.8", "backbone.9")}
    drawn.update({g: 0.5 for g in groups if g.startswith(("neck.", "head.cv3."))})
    drawn.update({g: 0.1 for g in groups if g.startswith("head.cv2.")})
    return {
        "6 tolerant groups 25%": dict.fromkeys(TOLERANT, 0.25),
        "uniform 10% (not backbone.0/2)": {g: 0.1 for g in groups if g not in ("backbone.0", "backbone.2")},
        "backbone.5-9 40%, neck 50%, head 10/50%": drawn,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "reconstruct_passes.json")
    args = parser.parse_args()

    base = adapter.load_model(resolve_model("yolov8n-coco.pt"))
    groups = adapter.model_layout(base).groups
    dataset = prepare_dataset("tiny_coco")
    shots = list(adapter.calibration_images(dataset, imgsz=args.imgsz, count=32))
    rows: list[dict[str, Any]] = []
    print(
        "| plan | method | images | consumers | whole CPU-s | reused CPU-s | ratio | whole wall s | reused wall s "
        "| same weights |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, ratios in plans(groups).items():
        model = copy.deepcopy(base)
        original = unpruned_copy(model)
        kept: dict[str, Any] = {}
        prune(model, PruningConfig(ratios=ratios, importance="l2"), imgsz=args.imgsz, kept=kept)
        for method, images in (("ls", 8), ("ls", 32), ("bias", 32)):
            cpu: dict[str, list[float]] = {"whole": [], "reused": []}
            wall: dict[str, list[float]] = {"whole": [], "reused": []}
            fitted: dict[str, dict[str, torch.Tensor]] = {}
            layers_fitted = 0
            for _ in range(args.repeats):
                for mode in ("whole", "reused"):
                    pruned = copy.deepcopy(model)
                    layers = adapter.layer_reads(pruned) if mode == "reused" else None
                    c0, t0 = time.process_time(), time.perf_counter()
                    report = reconstruct_consumers(
                        pruned,
                        original,
                        kept,
                        shots[:images],
                        norms=adapter.conv_norms(pruned),
                        method=method,
                        layers=layers,
                    )
                    cpu[mode].append(time.process_time() - c0)
                    wall[mode].append(time.perf_counter() - t0)
                    fitted[mode] = pruned.state_dict()
                    layers_fitted = report.layers
            same = all(torch.equal(fitted["whole"][k], fitted["reused"][k]) for k in fitted["whole"])
            row = {
                "plan": name,
                "method": method,
                "images": images,
                "consumers": layers_fitted,
                "cpu_seconds": cpu,
                "wall_seconds": wall,
                "median_cpu": {k: statistics.median(v) for k, v in cpu.items()},
                "median_wall": {k: statistics.median(v) for k, v in wall.items()},
                "same_weights": same,
            }
            rows.append(row)
            mc, mw = row["median_cpu"], row["median_wall"]
            print(
                f"| {name} | {method} | {images} | {layers_fitted} | {mc['whole']:.2f} | {mc['reused']:.2f} "
                f"| {mc['reused'] / mc['whole']:.2f}× | {mw['whole']:.2f} | {mw['reused']:.2f} | {same} |",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
