"""Values every evaluator returns: measurements with their provenance."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Accuracy", "LatencyStats", "Provenance"]


@dataclass(frozen=True, kw_only=True)
class Provenance:
    """Where a measurement came from.

    Attributes:
        target: Target name (``local-cpu``, ...).
        runtime: Runtime that ran the artifact (``onnxruntime``).
        runtime_version: Its version.
        device: What it ran on (CPU model, GPU name, device agent).
        host: Host name of the machine that measured.
        imgsz: Square input size.
        settings: Runtime settings that change the number (threads, providers).
    """

    target: str
    runtime: str
    runtime_version: str
    device: str
    host: str
    imgsz: int
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class LatencyStats:
    """Batch-1 latency of one artifact on one target, from repeated timed runs after warm-up.

    Attributes:
        median_ms: Median of the timed runs.
        p90_ms: 90th percentile.
        mean_ms: Mean.
        cv: Coefficient of variation (stdev / mean) of the timed runs.
        runs: Number of timed runs.
        warmup: Number of untimed warm-up runs.
        started_at: Wall-clock start of the timed window (epoch seconds).
        ended_at: Wall-clock end of the timed window (epoch seconds).
        attempts: Timings made (a timing whose spread says it was disturbed is repeated).
        built_bytes: Size of what the runtime built from the model (a TensorRT engine); ``None``
            when it runs the ONNX file as is.
    """

    median_ms: float
    p90_ms: float
    mean_ms: float
    cv: float
    runs: int
    warmup: int
    started_at: float
    ended_at: float
    attempts: int = 1
    built_bytes: int | None = None

    @property
    def spread(self) -> float:
        """Relative spread of the timed runs: ``p90 / median - 1``."""
        return self.p90_ms / self.median_ms - 1 if self.median_ms > 0 else float("inf")

    @classmethod
    def from_samples(
        cls, samples_ms: Sequence[float], *, warmup: int, started_at: float, ended_at: float
    ) -> LatencyStats:
        """Summarise timed samples (milliseconds)."""
        if len(samples_ms) < 2:
            raise ValueError("need at least two timed runs")
        ordered = sorted(samples_ms)
        mean = statistics.fmean(ordered)
        p90 = ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
        return cls(
            median_ms=statistics.median(ordered),
            p90_ms=p90,
            mean_ms=mean,
            cv=statistics.stdev(ordered) / mean if mean > 0 else float("nan"),
            runs=len(ordered),
            warmup=warmup,
            started_at=started_at,
            ended_at=ended_at,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (with the derived ``spread``)."""
        return {**asdict(self), "spread": self.spread}


@dataclass(frozen=True, kw_only=True)
class Accuracy:
    """mAP of a deployable model on a validation split.

    Attributes:
        map50_95: COCO mAP averaged over IoU 0.50:0.95.
        map50: mAP at IoU 0.50.
        images: Number of validation images.
        seconds: Time the validation took.
        note: How the number relates to the target, when it is not measured exactly as the target
            runs the model (e.g. fp16 layers validated in fp32 on the search host).
    """

    map50_95: float
    map50: float
    images: int
    seconds: float
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return asdict(self)
