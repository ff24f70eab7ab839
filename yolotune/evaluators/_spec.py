"""Named targets: what each one runs, the precisions it supports, and where it is timed.

The built-in targets live in ``targets.yaml`` beside this module; users add or replace targets
with YAML files of the same shape (``--targets-file``, or ``YOLOTUNE_TARGETS``: paths separated
by ``os.pathsep``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from yolotune import _yaml
from yolotune._numbers import is_whole
from yolotune.errors import YolotuneError, yaml_problem
from yolotune.spaces import ACTIVATION_TYPES, PRECISIONS

__all__ = [
    "DEFAULT_ACTIVATIONS",
    "MAX_IMGSZ",
    "RUNTIMES",
    "RUNTIME_ACTIVATIONS",
    "RUNTIME_PRECISIONS",
    "TargetSpec",
    "add_runtime",
    "add_target_file",
    "builtin_target_names",
    "target_spec",
    "target_specs",
]

#: Built-in runtimes. A target can also name a runtime added with ``register_runtime`` (the tables
#: below are the registry: a runtime is known when ``RUNTIME_PRECISIONS`` has it).
RUNTIMES = ("onnxruntime", "onnxruntime-gpu", "tensorrt")
_ENV = "YOLOTUNE_TARGETS"
#: Largest image size accepted anywhere: one 4096-px image already needs gigabytes of activations per layer,
#: and a typo like 32000 would ask a device for 12 GB.
MAX_IMGSZ = 4096
_FIELDS = ("runtime", "agent", "precisions", "activations", "imgsz", "threads", "description")
#: INT8 activation types each runtime can run. TensorRT takes only signed INT8 with zero point 0
#: (yolotune quantizes ``int8`` activations symmetrically).
RUNTIME_ACTIVATIONS: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("uint8", "int8"),
    "onnxruntime-gpu": ("int8",),
    "tensorrt": ("int8",),
}
#: What a target that does not list its activation types runs: ONNX Runtime's CPU default is uint8,
#: its fast path on x86 (int8 activations ran 2.1-2.3x slower than FP32 there); a target lists
#: ``[uint8, int8]`` to search both (an ARM board, say).
DEFAULT_ACTIVATIONS: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("uint8",),
    "onnxruntime-gpu": ("int8",),
    "tensorrt": ("int8",),
}
#: Precisions each runtime runs (ONNX Runtime's CPU kernels have no fp16 convolutions).
RUNTIME_PRECISIONS: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("int8", "fp32"),
    "onnxruntime-gpu": ("int8", "fp16", "fp32"),
    "tensorrt": ("int8", "fp16", "fp32"),
}


@dataclass(frozen=True, kw_only=True)
class TargetSpec:
    """A named target.

    Attributes:
        name: Registry name (``jetson-orin``).
        runtime: ``onnxruntime`` (CPU), ``onnxruntime-gpu``, ``tensorrt``, or one added with
            ``register_runtime``.
        precisions: Precisions the target runs; the search space asks only for these.
        activations: Activation types of INT8 layers the target runs, the fast one first; the search
            space asks only for these and plans with another are refused (default:
            ``DEFAULT_ACTIVATIONS`` of its runtime: uint8 on ONNX Runtime's CPU, int8 elsewhere).
        imgsz: Default square input size.
        threads: Intra-op threads of CPU runtimes (``None``: every core). A target timed here may not ask
            for more than this process's CPUs (``LocalCPUTarget.check``); a device target's are the device's.
        agent: Timed on a device through ``tune agent`` rather than on this machine.
        description: One line for ``tune targets``.
    """

    name: str
    runtime: str
    precisions: tuple[str, ...]
    activations: tuple[str, ...] = ()
    imgsz: int = 640
    threads: int | None = None
    agent: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        where = f"target '{self.name}'"
        if self.runtime not in RUNTIME_PRECISIONS:
            raise YolotuneError(
                f"{where}: runtime '{self.runtime}' is not one of {', '.join(RUNTIME_PRECISIONS)} "
                "(add others with yolotune.evaluators.register_runtime before loading the targets)"
            )
        object.__setattr__(self, "precisions", tuple(self.precisions))
        can = RUNTIME_PRECISIONS[self.runtime]
        bad = [p for p in self.precisions if p not in can]
        if bad or not self.precisions or len(set(self.precisions)) < len(self.precisions):
            raise YolotuneError(
                f"{where}: precisions of runtime {self.runtime} must be a non-empty list drawn from "
                f"{', '.join(can)} with no repeats; got {list(self.precisions)}"
            )
        runs = RUNTIME_ACTIVATIONS[self.runtime]
        object.__setattr__(self, "activations", tuple(self.activations) or DEFAULT_ACTIVATIONS[self.runtime])
        if any(a not in runs for a in self.activations) or len(set(self.activations)) < len(self.activations):
            raise YolotuneError(
                f"{where}: activations of runtime {self.runtime} must be a non-empty list drawn from "
                f"{', '.join(runs)} with no repeats; got {list(self.activations)}"
            )
        if not is_whole(self.imgsz):
            raise YolotuneError(
                f"{where}: imgsz must be a whole number (unquoted), a multiple of 32; got {self.imgsz!r}"
            )
        if not 32 <= self.imgsz <= MAX_IMGSZ or self.imgsz % 32:
            raise YolotuneError(f"{where}: imgsz must be a multiple of 32 from 32 to {MAX_IMGSZ}; got {self.imgsz!r}")
        threads: object = self.threads
        if threads == "all":  # as `tune targets` lists null
            object.__setattr__(self, "threads", None)
        if self.threads is not None and (not is_whole(self.threads) or self.threads < 1):
            raise YolotuneError(
                f"{where}: threads must be a positive integer, or null or all (every core); got {self.threads!r}"
            )
        if not isinstance(self.agent, bool):
            raise YolotuneError(f"{where}: agent must be true or false (unquoted); got {self.agent!r}")
        if not isinstance(self.description, str):
            raise YolotuneError(f"{where}: description must be one line of text; got {self.description!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (``from_dict`` reads it back)."""
        d = asdict(self)
        d["precisions"] = list(self.precisions)
        d["activations"] = list(self.activations)
        return d

    @classmethod
    def from_dict(cls, name: str, d: dict[str, Any]) -> TargetSpec:
        """Build from a YAML/JSON mapping.

        Raises:
            YolotuneError: Unknown keys or invalid values, naming the target.
        """
        if not isinstance(d, dict):
            raise YolotuneError(f"target '{name}' must be a mapping of {', '.join(_FIELDS)}")
        unknown = sorted(set(d) - set(_FIELDS) - {"name"})
        if unknown:
            raise YolotuneError(f"target '{name}': unknown keys {', '.join(unknown)}; known: {', '.join(_FIELDS)}")
        if "runtime" not in d or "precisions" not in d:
            raise YolotuneError(f"target '{name}' needs at least runtime and precisions")
        kwargs = {k: d[k] for k in _FIELDS if k in d}
        for key, allowed in (("precisions", PRECISIONS), ("activations", ACTIVATION_TYPES)):
            if key in kwargs:
                if not isinstance(kwargs[key], list) or not kwargs[key]:
                    raise YolotuneError(f"target '{name}': {key} must be a non-empty list of {', '.join(allowed)}")
                kwargs[key] = tuple(kwargs[key])
        return cls(name=name, **kwargs)


def add_runtime(
    runtime: str, *, precisions: Sequence[str] | None = None, activations: Sequence[str] | None = None
) -> None:
    """Record what ``runtime`` runs, so that target specs may name it (``register_runtime`` calls this).

    Args:
        runtime: Runtime name a spec's ``runtime`` gives.
        precisions: Precisions the runtime runs. ``None``: a known runtime keeps its own; a new one
            runs every precision (``int8``, ``fp16``, ``fp32``).
        activations: Activation types of INT8 layers the runtime runs, the fast one first (what a
            target that lists none runs). ``None``: a known runtime keeps its own; a new one runs
            ``int8`` (symmetric, zero point 0: what most INT8 runtimes take).

    Raises:
        YolotuneError: An empty runtime name, or precisions or activation types yolotune does not know.
    """
    if not isinstance(runtime, str) or not runtime:
        raise YolotuneError(f"a runtime needs a non-empty name; got {runtime!r}")
    known = runtime in RUNTIME_PRECISIONS
    if precisions is None:
        precisions = RUNTIME_PRECISIONS[runtime] if known else PRECISIONS
    if activations is None:
        activations = RUNTIME_ACTIVATIONS[runtime] if known else ("int8",)
    checked: dict[str, tuple[str, ...]] = {}
    for key, given, allowed in (("precisions", precisions, PRECISIONS), ("activations", activations, ACTIVATION_TYPES)):
        values = tuple(given) if isinstance(given, list | tuple) else ()
        if not values or any(v not in allowed for v in values) or len(set(values)) < len(values):
            raise YolotuneError(
                f"runtime '{runtime}': {key} must be a non-empty list drawn from {', '.join(allowed)} "
                f"with no repeats; got {given!r}"
            )
        checked[key] = values
    RUNTIME_PRECISIONS[runtime] = checked["precisions"]
    if known and checked["activations"] == RUNTIME_ACTIVATIONS[runtime]:
        return  # a known runtime keeps its default activation type (ONNX Runtime CPU's uint8, say)
    RUNTIME_ACTIVATIONS[runtime] = checked["activations"]
    DEFAULT_ACTIVATIONS[runtime] = checked["activations"][:1]


_SPECS: dict[str, TargetSpec] = {}
_LOADED: list[str] = []


def _read(text: str, source: str) -> dict[str, TargetSpec]:
    try:
        raw = _yaml.load(text) or {}
    except yaml.YAMLError as exc:
        raise YolotuneError(f"{source} is not valid YAML: {yaml_problem(exc)}") from None
    if not isinstance(raw, dict):
        raise YolotuneError(f"{source} must map target names to their settings")
    return {str(name): TargetSpec.from_dict(str(name), d) for name, d in raw.items()}


def _builtin() -> dict[str, TargetSpec]:
    """The targets in the packaged ``targets.yaml``."""
    return _read(resources.files("yolotune.evaluators").joinpath("targets.yaml").read_text(), "built-in targets.yaml")


def _ensure_loaded() -> None:
    if not _LOADED:
        _SPECS.update(_builtin())
        _LOADED.append("builtin")
    for path in filter(None, os.environ.get(_ENV, "").split(os.pathsep)):
        if path not in _LOADED:
            _add(Path(path), f"{_ENV} names targets file {path}, which")


def _add(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise YolotuneError(f"{what} is {'a directory, not a YAML file' if path.is_dir() else 'not found'}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise YolotuneError(f"{what} cannot be read as UTF-8 text ({type(exc).__name__})") from None
    specs = _read(text, str(path))
    _SPECS.update(specs)
    _LOADED.append(str(path))
    return list(specs)


def add_target_file(path: Path) -> list[str]:
    """Add (or replace) targets from a YAML file; return their names.

    Raises:
        YolotuneError: Missing file or invalid entries.
    """
    _ensure_loaded()
    return _add(Path(path), f"targets file {path}")


def builtin_target_names() -> list[str]:
    """Names of the built-in targets (a user entry with one of these names replaces it)."""
    return sorted(_builtin())


def target_specs() -> list[TargetSpec]:
    """Every known target, sorted by name."""
    _ensure_loaded()
    return [_SPECS[k] for k in sorted(_SPECS)]


def target_spec(name: str) -> TargetSpec:
    """The target registered as ``name``.

    Raises:
        YolotuneError: Unknown name; the message lists the known ones.
    """
    _ensure_loaded()
    if name not in _SPECS:
        raise YolotuneError(
            f"unknown target '{name}'; known targets: {', '.join(sorted(_SPECS))} (add your own with --targets-file)"
        )
    return _SPECS[name]
