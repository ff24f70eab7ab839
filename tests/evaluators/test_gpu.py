"""GPU runtimes: run only where a CUDA device and its runtimes exist (CI has none: skipped)."""

from __future__ import annotations

from pathlib import Path

import pytest

from yolotune.evaluators import LocalCUDATarget, TensorRTTarget

pytestmark = pytest.mark.gpu


def _trt() -> TensorRTTarget:
    target = TensorRTTarget(runs=50)
    if target.trtexec is None:
        pytest.skip("no trtexec (TensorRT) on this machine")
    return target


def test_tensorrt_builds_caches_and_times_an_engine(fp32_onnx_160: Path, tmp_path: Path) -> None:
    target = _trt()
    target.cache_dir = tmp_path
    stats = target.benchmark(fp32_onnx_160, imgsz=160)
    assert stats.runs >= 50 and 0 < stats.median_ms <= stats.p90_ms
    assert stats.built_bytes and stats.built_bytes > 1_000_000
    engines = list(tmp_path.glob("*.engine"))
    assert len(engines) == 1
    built = engines[0].stat().st_mtime
    target.benchmark(fp32_onnx_160, imgsz=160)  # cached: not rebuilt
    assert engines[0].stat().st_mtime == built


def test_tensorrt_honours_the_models_fp16_record(fp32_onnx_160: Path, tmp_path: Path) -> None:
    import onnx

    from yolotune._artifact import FloatPrecision, with_float_precision

    target = _trt()
    target.cache_dir = tmp_path
    model = onnx.load(str(fp32_onnx_160))
    with_float_precision(model, FloatPrecision(fp16_nodes=tuple(n.name for n in model.graph.node)))
    half = tmp_path / "fp16.onnx"
    onnx.save(model, str(half))
    fp32 = target.benchmark(fp32_onnx_160, imgsz=160)
    fp16 = target.benchmark(half, imgsz=160)
    assert fp16.built_bytes is not None and fp32.built_bytes is not None
    assert fp16.built_bytes < 0.75 * fp32.built_bytes  # fp16 weights: a smaller engine


def test_local_cuda_times_on_the_gpu(fp32_onnx_160: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDA execution provider here")
    stats = LocalCUDATarget().benchmark(fp32_onnx_160, imgsz=160)
    assert stats.runs >= 50 and stats.median_ms > 0
