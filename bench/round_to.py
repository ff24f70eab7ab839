"""What ``round_to`` removes: torch-pruning's round-down against yolotune's nearest multiple.

yolov8n-coco / tiny_coco at 320 px, FP32 ONNX, each row built by ``build_candidate`` (the plan's
recovery included) and validated on all 50 validation images. "down" is torch-pruning's own
rounding of the kept channels (what yolotune did before), reproduced by handing it the plan's
ratio unchanged; "nearest" is yolotune's. Prints a table; writes bench/results/round_to.json.

    PYTHONPATH=. .venv/bin/python bench/round_to.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from unittest import mock

from yolotune import CompressionPlan
from yolotune.assets import resolve_model
from yolotune.compression import ultralytics_adapter as adapter
from yolotune.search import CandidateSettings, build_candidate

TOLERANT = ("backbone.7", "neck.16", "head.cv2.0", "head.cv3.0", "head.cv2.1", "head.cv3.1")


def plans() -> dict[str, dict]:
    groups = adapter.model_layout(adapter.load_model(resolve_model("yolov8n-coco.pt"))).groups
    return {
        "tolerant 25% l2 /8, ls×32": {
            "pruning": {"ratios": dict.fromkeys(TOLERANT, 0.25), "round_to": 8, "importance": "l2"},
            "recovery": {"method": "ls", "images": 32},
        },
        "tolerant 25% l2 /16, ls×32": {
            "pruning": {"ratios": dict.fromkeys(TOLERANT, 0.25), "round_to": 16, "importance": "l2"},
            "recovery": {"method": "ls", "images": 32},
        },
        "tolerant 40% activation /8, ls×32": {
            "pruning": {"ratios": dict.fromkeys(TOLERANT, 0.4), "round_to": 8, "importance": "activation"},
            "recovery": {"method": "ls", "images": 32},
        },
        "seeds: every group 30% bn_scale /8, none": {
            "pruning": {"ratios": dict.fromkeys(groups, 0.3), "round_to": 8, "importance": "bn_scale"},
            "recovery": {"method": "none"},
        },
    }


def _removed(channels: dict[str, list[int]], named: dict[str, float]) -> float:
    """Share of the named groups' output channels removed."""
    before = sum(channels[g][0] for g in named)
    after = sum(channels[g][1] for g in named)
    return 1 - after / before


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in plans().items():
            plan = CompressionPlan.from_dict(spec)
            named = dict(plan.pruning.ratios)
            for rounding in ("down", "nearest"):
                patch = (
                    mock.patch("yolotune.compression._prune._rounded_ratio", lambda c, r, k: r)
                    if rounding == "down"
                    else mock.patch.dict({})  # yolotune as it is
                )
                with patch:
                    built = build_candidate(
                        model="yolov8n-coco.pt",
                        data="tiny_coco",
                        plan=plan,
                        out_dir=Path(tmp) / str(len(rows)),
                        settings=CandidateSettings(imgsz=320),
                    )
                assert built.prune is not None
                channels = {g: list(ba) for g, ba in built.prune.channels.items()}
                row = {
                    "plan": name,
                    "rounding": rounding,
                    "asked": max(named.values()),
                    "removed": _removed(channels, named),
                    "macs_ratio": built.prune.macs_after / built.prune.macs_before,
                    "map50_95": built.accuracy.map50_95,
                    "channels": channels,
                }
                rows.append(row)
                print(
                    f"{name:42s} {rounding:8s} asked {row['asked']:.0%}  removed {row['removed']:.1%}  "
                    f"MACs ×{row['macs_ratio']:.3f}  mAP50-95 {row['map50_95']:.4f}",
                    flush=True,
                )
    out = Path(__file__).parent / "results" / "round_to.json"
    out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
