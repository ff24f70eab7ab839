"""Targets: where a deployable model is timed. One tiny interface; named targets built from specs."""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from pathlib import Path

from yolotune.errors import YolotuneError
from yolotune.evaluators._base import LatencyStats, Provenance
from yolotune.evaluators._device import int8_saturates
from yolotune.evaluators._spec import TargetSpec, add_runtime, target_spec, target_specs

__all__ = ["Target", "get_target", "needs_reduce_range", "register_runtime", "target_names"]


class Target(abc.ABC):
    """A place that runs a deployable model and times it.

    Implementations must time one model at a time on their device (timings that overlap on the
    same hardware are wrong), and say in ``provenance`` what measured the number.
    """

    #: Registry name, e.g. ``local-cpu``.
    name: str = ""
    #: Precisions this target runs; the search space and plan checks ask only for these.
    precisions: tuple[str, ...] = ("fp32",)
    #: Activation types of INT8 layers this target runs (the fast one first).
    activations: tuple[str, ...] = ("uint8", "int8")
    #: Quantize INT8 weights to 7 bits (ONNX Runtime's ``reduce_range``): the device's INT8 kernels
    #: would saturate with 8 (x86 CPUs without VNNI, see ``int8_saturates``).
    reduce_range: bool = False

    def check(self) -> None:  # noqa: B027 - optional hook, nothing to check by default
        """Fail fast, before any search, when the target cannot time anything (no device, no runtime).

        Raises:
            YolotuneError: One line saying what is missing and how to provide it.
        """

    @abc.abstractmethod
    def benchmark(self, model_path: Path, *, imgsz: int) -> LatencyStats:
        """Time ``model_path`` at batch 1 and ``imgsz``; return its latency statistics."""

    @abc.abstractmethod
    def provenance(self, *, imgsz: int) -> Provenance:
        """Describe the target, runtime and settings that ``benchmark`` measures with."""


def needs_reduce_range(target: Target | TargetSpec) -> bool:
    """Whether INT8 models for ``target`` need 7-bit weights (see ``Target.reduce_range``).

    A spec without its target instance can only say so for this machine's CPU (an ONNX Runtime CPU
    target timed here); a device target's agent tells its :class:`RemoteTarget` when it is checked.
    """
    if not isinstance(target, TargetSpec):  # a Target, or an object shaped like one (a test's fake)
        return bool(getattr(target, "reduce_range", False))
    return target.runtime == "onnxruntime" and not target.agent and int8_saturates()


_RUNTIMES: dict[str, Callable[[TargetSpec], Target]] = {}


def register_runtime(
    runtime: str,
    factory: Callable[[TargetSpec], Target],
    *,
    precisions: Sequence[str] | None = None,
    activations: Sequence[str] | None = None,
) -> None:
    """Register how targets whose spec names ``runtime`` are built on the machine that times them.

    Register a runtime before loading a targets file (or building a ``TargetSpec``) that names it.

    Args:
        runtime: Name a target's ``runtime`` gives (a built-in name replaces that runtime's factory).
        factory: Builds the runtime's ``Target`` from a spec (``get_target`` then sets its name,
            precisions and activation types from the spec).
        precisions: Precisions the runtime runs (``RUNTIME_PRECISIONS``); a target's precisions must
            be drawn from them. ``None``: a built-in keeps its own; a new runtime runs int8, fp16 and fp32.
        activations: Activation types of INT8 layers the runtime runs, the fast one first: the one a
            target that lists none runs (``RUNTIME_ACTIVATIONS``, ``DEFAULT_ACTIVATIONS``). ``None``:
            a built-in keeps its own; a new runtime runs ``int8``.

    Raises:
        YolotuneError: An empty name, or precisions or activation types yolotune does not know.
    """
    add_runtime(runtime, precisions=precisions, activations=activations)
    _RUNTIMES[runtime] = factory


def target_names() -> list[str]:
    """Names of the known targets (built-in and user YAML)."""
    return [s.name for s in target_specs()]


def get_target(name: str | TargetSpec, *, device_url: str | None = None, device_token: str | None = None) -> Target:
    """Build the target ``name`` (or the given spec).

    A target timed on a device (``agent: true``) talks to ``tune agent`` at ``device_url``; the
    others run here with their runtime.

    Raises:
        YolotuneError: Unknown name (listing the known ones), a device target without a device URL,
            or a runtime this installation lacks.
    """
    spec = name if isinstance(name, TargetSpec) else target_spec(name)
    if spec.agent:
        if not device_url:
            raise YolotuneError(
                f"target {spec.name} is timed on the device: run `tune agent --host 0.0.0.0 --token-file F` on it "
                f"and pass --device-url http://DEVICE:8765 --device-token-file F"
            )
        from yolotune.evaluators._remote import RemoteTarget

        return RemoteTarget(spec=spec, url=device_url, token=device_token)
    if device_url or device_token:
        raise YolotuneError(
            f"target {spec.name} runs on this machine; --device-url and --device-token-file are only for device targets"
        )
    _load_runtimes()
    if spec.runtime not in _RUNTIMES:
        raise YolotuneError(f"target {spec.name}: no runtime '{spec.runtime}' in this installation")
    target = _RUNTIMES[spec.runtime](spec)
    target.name = spec.name
    target.precisions = spec.precisions
    target.activations = spec.activations
    return target


def _load_runtimes() -> None:
    # importing the modules registers their runtimes
    import yolotune.evaluators._local_cpu
    import yolotune.evaluators._local_cuda
    import yolotune.evaluators._tensorrt  # noqa: F401
