"""Measure what a search leaves on disk, and what removing the intermediate files of told trials saves.

yolov8n-coco / tiny_coco at 320 on local-cpu, the default space, NSGA-II with ``--seed``, as
``tune run`` runs it (``--budget`` candidates, no re-timing). Once a trial is told, the driver
removes files nothing reads again (``drop_intermediates``: the FP32 ONNX an INT8 file was
quantized from, an unpruned plan's checkpoint, ``worker.pid``); this script records the size of
each file as it is removed. Prints the bytes kept under ``trials/`` and ``artifacts/`` by kind
and the bytes removed; writes bench/results/footprint.json.

    PYTHONPATH=. .venv/bin/python bench/footprint.py [--budget 12] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from yolotune.search import CandidateSettings, SearchConfig, _driver, run_search


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "footprint.json")
    args = parser.parse_args()

    removed: Counter[str] = Counter()
    real_drop = _driver.drop_intermediates

    def recording_drop(told: Any) -> list[Path]:
        sizes = {p: p.stat().st_size for p in Path(told.deployable).parent.iterdir() if p.is_file()}
        gone = real_drop(told)
        for path in gone:
            removed[path.name] += sizes.get(path, 0)
        return gone

    _driver.drop_intermediates = recording_drop  # type: ignore[assignment]
    root = Path(tempfile.mkdtemp(prefix="yolotune-bench-footprint-"))
    try:
        study = run_search(
            SearchConfig(
                model="yolov8n-coco.pt",
                data="tiny_coco",
                budget=args.budget,
                settings=CandidateSettings(imgsz=320),
                root=root,
                seed=args.seed,
                study_name="footprint",
                retime_rounds=0,
            )
        )
        kept: Counter[str] = Counter()
        for path in (root / "footprint" / "trials").rglob("*"):
            if path.is_file():
                kept[path.name if path.parent.parent.name == "trials" else "fine-tune logs"] += path.stat().st_size
        artifacts = sum(p.stat().st_size for p in (root / "footprint" / "artifacts").rglob("*") if p.is_file())
        trials = len(study.trials)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    total_kept, total_removed = sum(kept.values()), sum(removed.values())
    print(f"{trials} trials; trials/ keeps {total_kept / 1e6:.1f} MB, artifacts/ {artifacts / 1e6:.1f} MB")
    print("| file | kept MB | removed MB |\n|---|---|---|")
    for name in sorted(set(kept) | set(removed)):
        print(f"| {name} | {kept[name] / 1e6:.1f} | {removed[name] / 1e6:.1f} |")
    share = total_removed / (total_kept + total_removed) if total_kept + total_removed else 0.0
    print(f"| all | {total_kept / 1e6:.1f} | {total_removed / 1e6:.1f} ({share:.0%} of what trials/ held) |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "trials": trials,
        "kept_bytes": dict(kept),
        "removed_bytes": dict(removed),
        "artifacts_bytes": artifacts,
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
