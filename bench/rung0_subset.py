"""How a rung-0 validation subset moves mAP50-95, and how well FP32's shift corrects it.

yolov8n-coco / tiny_coco, FP32 ONNX and three compressed plans, each built by ``build_candidate``
and validated on ``val_subset`` of 8, 10, 16 and 25 images (what ``--rung0-val N`` validates) and
on all 50. The search compares a rung-0 mAP with full-fidelity ones after adding FP32's
difference (all − subset) on the same images (``_rung0_shift``); "error" is how far that
estimate lands from the plan's own full mAP. Prints a table; writes bench/results/rung0_subset.json.

    PYTHONPATH=. .venv/bin/python bench/rung0_subset.py [--imgsz 320]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from yolotune import CompressionPlan
from yolotune.assets import prepare_dataset, val_subset
from yolotune.evaluators import measure_map
from yolotune.search import CandidateSettings, build_candidate

SUBSETS = (8, 10, 16, 25)
TOLERANT = ("backbone.7", "neck.16", "head.cv2.0", "head.cv3.0", "head.cv2.1", "head.cv3.1")
PLANS = {
    "fp32": {},
    "int8 percentile×32": {"quantization": {"default": "int8", "calibration_method": "percentile"}},
    "tolerant 25% l2, ls×32, fp32": {
        "pruning": {"ratios": dict.fromkeys(TOLERANT, 0.25), "importance": "l2"},
        "recovery": {"method": "ls", "images": 32},
    },
    "tolerant 40% activation, ls×32, int8": {
        "pruning": {"ratios": dict.fromkeys(TOLERANT, 0.4), "importance": "activation"},
        "recovery": {"method": "ls", "images": 32},
        "quantization": {"default": "int8"},
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imgsz", type=int, default=320)
    args = parser.parse_args()
    dataset = prepare_dataset("tiny_coco")
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in PLANS.items():
            built = build_candidate(
                model="yolov8n-coco.pt",
                data="tiny_coco",
                plan=CompressionPlan.from_dict(spec),
                out_dir=Path(tmp) / str(len(rows)),
                settings=CandidateSettings(imgsz=args.imgsz),
            )
            maps = {"all": built.accuracy.map50_95}
            for n in SUBSETS:
                maps[str(n)] = measure_map(built.deployable, val_subset(dataset, n), imgsz=args.imgsz).map50_95
            rows[name] = maps
            print(name, {k: round(v, 4) for k, v in maps.items()}, flush=True)
    fp32 = rows["fp32"]
    print(f"\nimgsz {args.imgsz}: mAP50-95 on N images; estimate = mAP(N) + FP32's (all − N); error = estimate − all")
    print(f"{'plan':40s} {'all':>7s} " + " ".join(f"{'N=' + str(n):>22s}" for n in SUBSETS))
    table = []
    for name, maps in rows.items():
        cells = []
        for n in SUBSETS:
            raw = maps[str(n)]
            estimate = raw + fp32["all"] - fp32[str(n)]
            cells.append(f"{raw:.3f} → {estimate:.3f} ({estimate - maps['all']:+.3f})")
            table.append({"plan": name, "n": n, "raw": raw, "estimate": estimate, "all": maps["all"]})
        print(f"{name:40s} {maps['all']:7.3f} " + " ".join(f"{c:>22s}" for c in cells))
    out = Path(__file__).parent / "results" / f"rung0_subset-{args.imgsz}.json"
    out.write_text(json.dumps({"imgsz": args.imgsz, "maps": rows, "table": table}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
