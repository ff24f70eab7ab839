from __future__ import annotations

import multiprocessing as mp
import statistics
import threading
import time
from pathlib import Path

from yolotune.evaluators import LocalCPUTarget, compute_lease, timing_lease


def _busy_worker(stop_at: float) -> None:
    """A candidate's compute: short steps on one core, each holding the host's compute lease."""
    while time.time() < stop_at:
        with compute_lease():
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


def test_latency_with_two_busy_workers_matches_latency_alone(fp32_onnx_160: Path) -> None:
    target = LocalCPUTarget(warmup=10, runs=60, attempts=1)
    alone = [target.benchmark(fp32_onnx_160, imgsz=160).median_ms for _ in range(3)]
    ctx = mp.get_context("spawn")
    workers = [ctx.Process(target=_busy_worker, args=(time.time() + 60,)) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        time.sleep(3)  # both workers are busy
        busy = [target.benchmark(fp32_onnx_160, imgsz=160).median_ms for _ in range(3)]
        # control: the same timing without the lease, beside the busy workers
        t0_samples = []
        import numpy as np
        import onnxruntime as ort

        session = ort.InferenceSession(str(fp32_onnx_160), providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: np.zeros((1, 3, 160, 160), np.float32)}
        for _ in range(60):
            t0 = time.perf_counter()
            session.run(None, feed)
            t0_samples.append((time.perf_counter() - t0) * 1e3)
        unleased = statistics.median(t0_samples)
    finally:
        for w in workers:
            w.kill()
            w.join()
    spread = (max(alone) - min(alone)) / statistics.median(alone)
    tolerance = max(spread, 0.15)
    assert abs(statistics.median(busy) / statistics.median(alone) - 1) <= tolerance, (alone, busy)
    # without the lease the busy workers do inflate the number: the test can tell the difference
    assert unleased > statistics.median(alone) * (1 + tolerance), (alone, unleased)
