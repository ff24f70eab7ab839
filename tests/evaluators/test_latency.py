from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from yolotune.evaluators import LocalCPUTarget


def test_latency_stats_are_finite_and_ordered(fp32_onnx_160) -> None:
    target = LocalCPUTarget(threads=2, warmup=3, runs=50)
    stats = target.benchmark(fp32_onnx_160, imgsz=160)
    assert stats.runs == 50 and stats.warmup == 3
    for value in (stats.median_ms, stats.p90_ms, stats.mean_ms, stats.cv):
        assert math.isfinite(value) and value > 0
    assert stats.median_ms <= stats.p90_ms
    assert stats.started_at < stats.ended_at
    prov = target.provenance(imgsz=160)
    assert prov.target == "local-cpu" and prov.runtime == "onnxruntime" and prov.imgsz == 160
    assert prov.settings["intra_op_threads"] == 2


_TIMER = """
import json, sys
from yolotune.evaluators import LocalCPUTarget
t = LocalCPUTarget(threads=1, warmup=2, runs=60)
out = []
for _ in range(3):
    s = t.benchmark(sys.argv[1], imgsz=160)
    out.append([s.started_at, s.ended_at])
print(json.dumps(out))
"""


def test_timings_in_two_processes_never_overlap(fp32_onnx_160, tmp_path: Path) -> None:
    procs = [
        subprocess.Popen([sys.executable, "-c", _TIMER, str(fp32_onnx_160)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    windows = []
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0
        windows += json.loads(out.strip().splitlines()[-1])
    windows.sort()
    assert len(windows) == 6
    for (_, end), (start, _) in itertools.pairwise(windows):
        assert end <= start  # each timed window ends before the next begins


def test_local_cpu_times_at_least_50_runs() -> None:
    with pytest.raises(ValueError):
        LocalCPUTarget(runs=10)


def test_a_disturbed_timing_is_repeated_and_the_least_spread_one_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    from yolotune.evaluators import LatencyStats

    def stats(median: float, p90: float) -> LatencyStats:
        return LatencyStats(
            median_ms=median, p90_ms=p90, mean_ms=median, cv=0.1, runs=50, warmup=10, started_at=0.0, ended_at=1.0
        )

    # the real timings are not under test here: the repeat policy is
    made = iter([stats(10.0, 15.0), stats(9.0, 9.5), stats(8.0, 8.1)])
    target = LocalCPUTarget(max_spread=0.25, attempts=3)
    monkeypatch.setattr(target, "_time_once", lambda model_path, imgsz: next(made))
    kept = target.benchmark(Path("unused.onnx"), imgsz=32)
    assert kept.median_ms == 9.0 and kept.attempts == 2  # 50% spread → timed again; 5.6% → kept
    always_disturbed = iter([stats(10.0, 20.0), stats(12.0, 18.0), stats(11.0, 30.0)])
    monkeypatch.setattr(target, "_time_once", lambda model_path, imgsz: next(always_disturbed))
    kept = target.benchmark(Path("unused.onnx"), imgsz=32)
    assert kept.median_ms == 12.0 and kept.attempts == 3 and kept.spread == pytest.approx(0.5)
