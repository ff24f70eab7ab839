"""Targets: where a deployable model is timed. One tiny interface, a registry by name."""

from __future__ import annotations

import abc
from collections.abc import Callable
from pathlib import Path

from yolotune.errors import YolotuneError
from yolotune.evaluators._base import LatencyStats, Provenance

__all__ = ["Target", "get_target", "register_target", "target_names"]


class Target(abc.ABC):
    """A place that runs a deployable model and times it.

    Implementations must time one model at a time on their device (timings that overlap on the
    same hardware are wrong), and say in ``provenance`` what measured the number.
    """

    #: Registry name, e.g. ``local-cpu``.
    name: str = ""
    #: Precisions this target runs; the search space and plan checks ask only for these.
    precisions: tuple[str, ...] = ("fp32",)

    @abc.abstractmethod
    def benchmark(self, model_path: Path, *, imgsz: int) -> LatencyStats:
        """Time ``model_path`` at batch 1 and ``imgsz``; return its latency statistics."""

    @abc.abstractmethod
    def provenance(self, *, imgsz: int) -> Provenance:
        """Describe the target, runtime and settings that ``benchmark`` measures with."""


_REGISTRY: dict[str, Callable[[], Target]] = {}


def register_target(name: str, factory: Callable[[], Target]) -> None:
    """Register a target factory under ``name``."""
    _REGISTRY[name] = factory


def target_names() -> list[str]:
    """Names of the registered targets."""
    return sorted(_REGISTRY)


def get_target(name: str) -> Target:
    """Build the target registered as ``name``.

    Raises:
        YolotuneError: Unknown name; the message lists the known ones.
    """
    if name not in _REGISTRY:
        raise YolotuneError(f"unknown target '{name}'; known targets: {', '.join(target_names())}")
    return _REGISTRY[name]()
