from __future__ import annotations

import logging
import multiprocessing as mp
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from yolotune.evaluators import LocalCPUTarget, compute_lease, timing_lease


def _busy_worker(stop_at: float, ready: Any, paused: Any) -> None:
    """A candidate's compute: short steps on one core, each holding the host's compute lease."""
    while time.time() < stop_at:
        if paused.is_set():
            time.sleep(0.01)
            continue
        with compute_lease():
            ready.set()
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < 0.2:
                sum(i * i for i in range(2000))


def test_a_timing_waits_for_running_steps_and_blocks_new_ones() -> None:
    events: list[str] = []
    step_running = threading.Event()

    def step(name: str, seconds: float) -> None:
        with compute_lease():
            events.append(f"{name} start")
            step_running.set()
            time.sleep(seconds)
            events.append(f"{name} end")

    def timing() -> None:
        with timing_lease():
            events.append("timing start")
            time.sleep(0.3)
            events.append("timing end")

    first = threading.Thread(target=step, args=("a", 0.5))
    first.start()
    step_running.wait()
    timer = threading.Thread(target=timing)
    timer.start()
    time.sleep(0.1)  # the timing is now waiting for step a
    second = threading.Thread(target=step, args=("b", 0.1))
    second.start()
    for t in (first, timer, second):
        t.join(timeout=10)
    # the timing waited for a, and b (started while the timing waited) ran only after it
    assert events == ["a start", "a end", "timing start", "timing end", "b start", "b end"]


def test_latency_with_two_busy_workers_matches_latency_alone(fp32_onnx_320: Path) -> None:
    import numpy as np
    import onnxruntime as ort

    target = LocalCPUTarget(warmup=10, runs=60, attempts=1)
    ctx = mp.get_context("spawn")
    ready, paused = [ctx.Event() for _ in range(2)], ctx.Event()
    workers = [ctx.Process(target=_busy_worker, args=(time.time() + 180, r, paused)) for r in ready]
    for w in workers:
        w.start()
    alone: list[float] = []
    busy: list[float] = []
    try:
        assert all(r.wait(60) for r in ready)  # both workers started (imports done) and busy
        # interleaved rounds: this machine drifts by ±30% within a minute
        for _ in range(4):
            paused.set()
            time.sleep(0.3)
            alone.append(target.benchmark(fp32_onnx_320, imgsz=320).median_ms)
            paused.clear()
            time.sleep(0.3)
            busy.append(target.benchmark(fp32_onnx_320, imgsz=320).median_ms)
        # control: the same timing without the lease, beside the busy workers
        session = ort.InferenceSession(str(fp32_onnx_320), providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: np.zeros((1, 3, 320, 320), np.float32)}
        for _ in range(10):
            session.run(None, feed)
        samples = []
        for _ in range(60):
            t0 = time.perf_counter()
            session.run(None, feed)
            samples.append((time.perf_counter() - t0) * 1e3)
        unleased = statistics.median(samples)
    finally:
        for w in workers:
            w.kill()
            w.join()
    base = statistics.median(alone)
    spread = (max(alone) - min(alone)) / base  # run-to-run spread of the timing alone
    tolerance = max(spread, 0.2)
    assert abs(statistics.median(busy) / base - 1) <= tolerance, (alone, busy)
    # without the lease the busy workers do inflate the number: the test can tell the difference
    assert unleased > base * (1 + tolerance), (alone, unleased)


_HOLDER = """
import sys
from yolotune.evaluators import timing_lease

with timing_lease():
    print("held", flush=True)
    sys.stdin.read()  # until the test closes it
"""

_WAITER = """
import time
from yolotune.evaluators import timing_lease

t0 = time.monotonic()
with timing_lease():
    print(f"timed after {time.monotonic() - t0:.1f} s", flush=True)
"""


def test_a_timing_that_waits_for_another_process_says_so_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import subprocess
    import sys

    monkeypatch.setenv("YOLOTUNE_TMP", str(tmp_path / "scratch"))  # a lease of its own, not the host's
    script = tmp_path / "holder.py"
    script.write_text(_HOLDER)
    holder = subprocess.Popen(
        [sys.executable, str(script), "--tag", "hold-me"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        assert holder.stdin is not None
        threading.Timer(2.0, holder.stdin.close).start()  # the other timing ends in 2 s
        caplog.set_level(logging.WARNING, logger="yolotune")
        t0 = time.monotonic()
        with timing_lease():
            waited = time.monotonic() - t0
        assert holder.wait(timeout=10) == 0
    finally:
        holder.kill()
        holder.wait()
    assert waited > 1.0
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("yolotune")]
    assert lines == [
        f"waiting for another yolotune timing on this host (pid {holder.pid}: holder.py --tag hold-me) to finish; "
        f"lock file {tmp_path / 'scratch' / 'lease'}"
    ]
    assert (tmp_path / "scratch" / "lease").read_text() == ""  # released: no record left to name a holder


def test_the_wait_is_one_line_on_stderr_without_any_logging_set_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import subprocess
    import sys

    monkeypatch.setenv("YOLOTUNE_TMP", str(tmp_path / "scratch"))
    with timing_lease():  # held by this process while the other one (a `tune export`, say) times
        waiter = subprocess.Popen(
            [sys.executable, "-c", _WAITER], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ
        )
        time.sleep(3.0)
    out, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 0 and out.startswith("timed after"), err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"waiting for another yolotune timing on this host (pid {os.getpid()}: ")
    assert lines[0].endswith(f"; lock file {tmp_path / 'scratch' / 'lease'}")
