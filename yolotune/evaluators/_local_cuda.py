"""``local-cuda``: ONNX Runtime on this machine's GPU (TensorRT execution provider when installed, else CUDA).

Needs ``onnxruntime-gpu``. ONNX Runtime silently falls back to the CPU when a GPU provider cannot
start, so every timed session is checked to run on the provider it asked for.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any

import onnxruntime as ort

from yolotune._artifact import read_float_precision
from yolotune._env import workspace_dir
from yolotune.errors import StepError, YolotuneError
from yolotune.evaluators._base import LatencyStats, Provenance
from yolotune.evaluators._local_cpu import LocalCPUTarget
from yolotune.evaluators._spec import TargetSpec
from yolotune.evaluators._target import Target, register_runtime

__all__ = ["LocalCUDATarget"]

_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def _gpu_name() -> str:
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            return str(torch.cuda.get_device_name(0))
    return "CUDA device"


class LocalCUDATarget(LocalCPUTarget):
    """Time ONNX models with ONNX Runtime's TensorRT (preferred) or CUDA execution provider.

    INT8 (QDQ) models run as INT8 under the TensorRT provider; under the CUDA provider they run
    their QDQ nodes as written, which is what that provider deploys. Float layers run in fp32.
    """

    name = "local-cuda"
    precisions = ("int8", "fp32")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reduce_range = False  # INT8 runs on the GPU, not on the CPU's saturating kernels
        self.available = [p for p in _GPU_PROVIDERS if p in ort.get_available_providers()]

    def check(self) -> None:
        """Refuse to start when this ONNX Runtime build has no GPU provider."""
        if not self.available:
            raise YolotuneError(
                f"target {self.name} needs onnxruntime-gpu with a CUDA device "
                f"(this onnxruntime has {', '.join(ort.get_available_providers())}); "
                "`pip install onnxruntime-gpu` or use --target local-cpu"
            )

    def _providers(self, model_path: Path) -> list[Any]:
        self.check()
        if "TensorrtExecutionProvider" in self.available:
            cache = workspace_dir() / "trt-ep-cache"
            cache.mkdir(parents=True, exist_ok=True)
            options = {
                "trt_int8_enable": read_float_precision(model_path).int8,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(cache),
            }
            return [("TensorrtExecutionProvider", options), "CUDAExecutionProvider"]
        return ["CUDAExecutionProvider"]

    def benchmark(self, model_path: Path, *, imgsz: int) -> LatencyStats:
        """Time on the GPU; fail (rather than time the CPU) when the GPU provider did not start."""
        providers = self._providers(model_path)  # checks first: a machine without the GPU is no file's failure
        wanted_name = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
        try:  # a model the provider rejects fails this trial (re-timing and export drop it), not the whole run
            session = ort.InferenceSession(str(model_path), self._options(), providers=providers)
        except Exception as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise StepError("latency", f"ONNX Runtime could not load the model with {wanted_name}: {reason}") from None
        if wanted_name not in session.get_providers():
            raise StepError(
                "latency", f"{wanted_name} did not start (ONNX Runtime fell back to {session.get_providers()})"
            )
        del session
        return super().benchmark(model_path, imgsz=imgsz)

    def provenance(self, *, imgsz: int) -> Provenance:
        """ONNX Runtime version, GPU, provider."""
        base = super().provenance(imgsz=imgsz)
        provider = self.available[0] if self.available else "none"
        return dataclasses.replace(base, device=_gpu_name(), settings={**base.settings, "provider": provider})


def _from_spec(spec: TargetSpec) -> Target:
    return LocalCUDATarget(threads=spec.threads)


register_runtime("onnxruntime-gpu", _from_spec)
