"""How to order re-timings so each speed-up pairs well: three schemes, side by side in one run.

The files of a finished study (the FP32 reference and the trials near its front) are timed with
local-cpu's own ``benchmark`` under three orders, each round running all three schemes (their
order rotating from round to round):

- ``round robin``: the reference and each trial once per round, reversed every other round (what
  ``retime_front`` does; n + 1 timings per round);
- ``pairs``: each trial then the reference, back to back, order swapped every other round (2n);
- ``sandwich``: ref, t1, ref, t2, ref, ... ref; each trial against the mean of its two
  neighbours (2n + 1).

Per scheme and trial: the median of the per-round ratios and their p90/p10, the spread that
decides how many rounds a stable median needs.

    PYTHONPATH=. .venv/bin/python bench/explore/pairing/schemes.py --study s4 --root /tmp/studies4 [--rounds 12]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

from yolotune.evaluators import LocalCPUTarget
from yolotune.evaluators._device import cpu_name
from yolotune.studies import current_retiming, load_study

OUT = Path(__file__).parent / "schemes.json"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--study", required=True)
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    study = load_study(study=args.study, root=args.root)
    retiming = current_retiming(study)
    assert retiming is not None, "re-time the study first (tune retime)"
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    ref = Path(trials[retiming.reference_trial].user_attrs["artifact"])
    files = {n: Path(trials[n].user_attrs["artifact"]) for n in retiming.trials}
    briefs = {n: trials[n].user_attrs.get("brief", "") for n in files}
    target = LocalCPUTarget()

    def ms(path: Path) -> float:
        return target.benchmark(path, imgsz=args.imgsz).median_ms

    def round_robin(k: int) -> dict[int, float]:
        order: list[int | None] = [None, *files]
        got = {n: ms(ref if n is None else files[n]) for n in (order if k % 2 == 0 else order[::-1])}
        return {n: got[None] / got[n] for n in files}

    def pairs(k: int) -> dict[int, float]:
        out = {}
        for n in files:
            if k % 2 == 0:
                t, r = ms(files[n]), ms(ref)
            else:
                r, t = ms(ref), ms(files[n])
            out[n] = r / t
        return out

    def sandwich(k: int) -> dict[int, float]:
        order = list(files) if k % 2 == 0 else list(files)[::-1]
        before = ms(ref)
        out = {}
        for n in order:
            t = ms(files[n])
            after = ms(ref)
            out[n] = (before + after) / 2 / t
            before = after
        return out

    schemes = {"round robin": round_robin, "pairs": pairs, "sandwich": sandwich}
    ratios: dict[str, dict[int, list[float]]] = {s: {n: [] for n in files} for s in schemes}
    names = list(schemes)
    for k in range(args.rounds):
        for s in names[k % 3 :] + names[: k % 3]:
            for n, q in schemes[s](k).items():
                ratios[s][n].append(q)
        print(f"round {k + 1}/{args.rounds}", flush=True)
    rows = []
    for s in names:
        for n in files:
            q = np.array(ratios[s][n])
            rows.append(
                {
                    "scheme": s,
                    "trial": n,
                    "plan": briefs[n],
                    "median": round(statistics.median(q), 3),
                    "p10": round(float(np.percentile(q, 10)), 3),
                    "p90": round(float(np.percentile(q, 90)), 3),
                    "p90/p10": round(float(np.percentile(q, 90) / np.percentile(q, 10)), 3),
                    "ratios": [round(float(v), 3) for v in q],
                }
            )
    print(f"CPU: {cpu_name()}; {args.rounds} rounds; study {args.study}")
    print("| scheme | trial | plan | median speed-up | p10 | p90 | p90/p10 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [r["scheme"], r["trial"], r["plan"], f"{r['median']:.2f}×", r["p10"], r["p90"], r["p90/p10"]]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    args.out.write_text(json.dumps({"cpu": cpu_name(), "rounds": args.rounds, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
