"""``local-cpu``: ONNX Runtime on this machine's CPU, one timing at a time per machine."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from yolotune.errors import StepError, YolotuneError
from yolotune.evaluators._base import LatencyStats, Provenance
from yolotune.evaluators._device import cpu_name, int8_saturates
from yolotune.evaluators._lease import timing_lease
from yolotune.evaluators._spec import TargetSpec
from yolotune.evaluators._target import Target, register_runtime

__all__ = ["LocalCPUTarget", "available_cpus", "timing_lock"]


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, else the machine's CPU count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


@contextlib.contextmanager
def timing_lock() -> Iterator[None]:
    """Hold this machine's timing lease alone: one timing at a time, and no compute step beside it.

    Overlapping timings on a 2-core machine are off by 25–40%; so is a timing beside a fine-tune.
    See ``yolotune.evaluators._lease``.
    """
    with timing_lease():
        yield


class LocalCPUTarget(Target):
    """Time ONNX models with ONNX Runtime's CPU execution provider on this machine.

    Args:
        threads: Intra-op threads (default: every CPU available to this process, ``available_cpus``);
            ``check`` refuses more.
        warmup: Untimed runs before timing.
        runs: Timed runs (at least 50).
        max_spread: A timing whose ``p90 / median - 1`` exceeds this was disturbed: it is repeated.
        attempts: Timings at most; the least spread one is kept.
    """

    name = "local-cpu"
    precisions = ("int8", "fp32")

    def __init__(
        self,
        *,
        threads: int | None = None,
        warmup: int = 10,
        runs: int = 50,
        max_spread: float = 0.25,
        attempts: int = 3,
    ) -> None:
        if runs < 50:
            raise ValueError("local-cpu times at least 50 runs")
        self.threads = threads or available_cpus()
        self.warmup = warmup
        self.runs = runs
        self.max_spread = max_spread
        self.attempts = max(1, attempts)
        self.reduce_range = int8_saturates()

    def check(self) -> None:
        """Refuse more intra-op threads than this process has CPUs: oversubscribed timings are several times slower.

        Raises:
            YolotuneError: ``threads`` exceeds ``available_cpus()``, as one line.
        """
        cpus = available_cpus()
        if self.threads > cpus:
            raise YolotuneError(
                f"target {self.name} asks for {self.threads} threads but this machine gives this process {cpus} CPUs; "
                f"set its threads to {cpus} or fewer (null uses every CPU) in its targets file"
            )

    def _options(self) -> ort.SessionOptions:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        return opts

    def _providers(self, model_path: Path) -> list[Any]:
        """Execution providers of the timed session (subclasses time on other devices)."""
        return ["CPUExecutionProvider"]

    def benchmark(self, model_path: Path, *, imgsz: int) -> LatencyStats:
        """Time ``model_path``, again when the spread says the timing was disturbed.

        Keeps the least spread of at most ``attempts`` timings, recording how many were made.
        """
        best = self._time_once(model_path, imgsz=imgsz)
        made = 1
        while best.spread > self.max_spread and made < self.attempts:
            again = self._time_once(model_path, imgsz=imgsz)
            made += 1
            if again.spread < best.spread:
                best = again
        return dataclasses.replace(best, attempts=made)

    def _time_once(self, model_path: Path, *, imgsz: int) -> LatencyStats:
        """Warm-up, then ``runs`` timed runs on a fixed random input, holding the host alone.

        Only this session is alive while it times (collected before the lease is released).
        """
        x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
        with timing_lock():
            gc.collect()  # drop idle sessions of this process: their threads spin
            try:
                session = ort.InferenceSession(str(model_path), self._options(), providers=self._providers(model_path))
                feed = {session.get_inputs()[0].name: x}
                for _ in range(self.warmup):
                    session.run(None, feed)
                samples = []
                started = time.time()
                for _ in range(self.runs):
                    t0 = time.perf_counter()
                    session.run(None, feed)
                    samples.append((time.perf_counter() - t0) * 1e3)
                ended = time.time()
            except Exception as exc:
                raise StepError("latency", f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from exc
            finally:
                session = None
                gc.collect()
        return LatencyStats.from_samples(samples, warmup=self.warmup, started_at=started, ended_at=ended)

    def provenance(self, *, imgsz: int) -> Provenance:
        """ONNX Runtime version, CPU model, host, threads."""
        return Provenance(
            target=self.name,
            runtime="onnxruntime",
            runtime_version=ort.__version__,
            device=cpu_name(),
            host=socket.gethostname(),
            imgsz=imgsz,
            settings={
                "provider": "CPUExecutionProvider",
                "intra_op_threads": self.threads,
                "warmup": self.warmup,
                "runs": self.runs,
                "max_spread": self.max_spread,
                "batch": 1,
            },
        )


def _from_spec(spec: TargetSpec) -> Target:
    return LocalCPUTarget(threads=spec.threads)


register_runtime("onnxruntime", _from_spec)
