"""``tensorrt`` runtime: build a TensorRT engine with ``trtexec`` and time it (Jetson, dGPU).

Per-layer precision comes from the model itself: INT8 from its QDQ nodes (explicit quantization),
fp16/fp32 of the other layers from the record the quantize step wrote (``yolotune._artifact``),
passed to ``trtexec`` as ``--fp16`` plus ``--layerPrecisions=<node>:fp32`` with
``--precisionConstraints=obey``. Engines are cached by the hash of the model, the build flags
and the TensorRT version, so a plan timed again is not rebuilt.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

from yolotune._artifact import FloatPrecision, read_float_precision
from yolotune._env import temporary_dir, workspace_dir
from yolotune._files import whole_file
from yolotune.errors import StepError, YolotuneError
from yolotune.evaluators._base import LatencyStats, Provenance
from yolotune.evaluators._lease import timing_lease
from yolotune.evaluators._spec import TargetSpec
from yolotune.evaluators._target import Target, register_runtime

__all__ = ["TensorRTTarget", "build_command", "find_trtexec"]

_JETSON_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"


def find_trtexec() -> str | None:
    """Path of ``trtexec`` (``TRTEXEC``, ``PATH``, or JetPack's ``/usr/src/tensorrt/bin``), or ``None``."""
    for candidate in (os.environ.get("TRTEXEC"), shutil.which("trtexec"), _JETSON_TRTEXEC):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def build_command(trtexec: str, onnx_path: Path, engine_path: Path, precision: FloatPrecision) -> list[str]:
    """``trtexec`` arguments that build ``onnx_path`` into ``engine_path`` honouring ``precision``."""
    cmd = [trtexec, f"--onnx={onnx_path}", f"--saveEngine={engine_path}", "--skipInference"]
    if precision.int8:
        cmd.append("--int8")  # explicit quantization: the QDQ nodes say which layers are INT8
    if precision.fp16:
        cmd.append("--fp16")
        if precision.fp32_nodes:
            layers = ",".join(f"{name}:fp32" for name in precision.fp32_nodes)
            cmd += [f"--layerPrecisions={layers}", "--precisionConstraints=obey"]
    return cmd


@functools.cache
def trtexec_version(trtexec: str) -> str:
    """The TensorRT version ``trtexec`` names in its banner (``[TensorRT v8602]`` → ``8.6.2``), or ``unknown``."""
    try:
        done = subprocess.run([trtexec, "--help"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    found = re.search(r"TensorRT v(\d+)", done.stdout + done.stderr)
    if found is None:
        return "unknown"
    code = int(found.group(1))  # major * 1000 + minor * 100 + patch (8.6.2: 8602; 10.3.0: 100300 in TensorRT 10)
    if code >= 100000:
        return f"{code // 10000}.{code // 100 % 100}.{code % 100}"
    return f"{code // 1000}.{code // 100 % 10}.{code % 100}"


def _one_line(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if "error" in ln.lower()] or output.strip().splitlines()[-1:]
    return (lines[0] if lines else "no output")[:300]


class TensorRTTarget(Target):
    """Build a TensorRT engine with ``trtexec`` and time it with warm-up and ≥50 timed runs.

    Args:
        runs: Timed runs (at least 50).
        warmup_ms: Warm-up time before timing.
        cache_dir: Engine cache (default: yolotune's scratch dir).
        build_timeout_s: Longest an engine build may take.
    """

    name = "tensorrt"
    precisions = ("int8", "fp16", "fp32")

    def __init__(
        self, *, runs: int = 100, warmup_ms: int = 500, cache_dir: Path | None = None, build_timeout_s: int = 1800
    ) -> None:
        if runs < 50:
            raise ValueError("tensorrt times at least 50 runs")
        self.runs = runs
        self.warmup_ms = warmup_ms
        self.cache_dir = Path(cache_dir) if cache_dir else workspace_dir() / "engines"
        self.build_timeout_s = build_timeout_s
        self.trtexec = find_trtexec()

    def check(self) -> None:
        """Refuse to start without ``trtexec``."""
        if self.trtexec is None:
            raise YolotuneError(
                f"target {self.name} needs TensorRT's trtexec (JetPack: {_JETSON_TRTEXEC}); "
                "put it on PATH or set TRTEXEC=/path/to/trtexec"
            )

    def _version(self) -> str:
        """TensorRT's version: its Python module's, else the one ``trtexec`` prints (JetPack venvs lack the module)."""
        try:
            import tensorrt

            return str(tensorrt.__version__)
        except ImportError:
            return trtexec_version(self.trtexec) if self.trtexec else "unknown"

    def engine(self, model_path: Path) -> Path:
        """Build (or reuse from the cache) the engine of ``model_path``; return its path."""
        self.check()
        assert self.trtexec is not None
        precision = read_float_precision(model_path)
        digest = hashlib.sha256(Path(model_path).read_bytes())
        digest.update(json.dumps(build_command("trtexec", Path("m"), Path("e"), precision)).encode())
        digest.update(self._version().encode())
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        engine = self.cache_dir / f"{digest.hexdigest()[:32]}.engine"
        if engine.is_file():
            engine.touch()  # recently used: an agent's cache lets it go last
            return engine
        with whole_file(engine) as partial:  # a failed or timed-out build leaves no engine behind
            cmd = build_command(self.trtexec, Path(model_path), partial, precision)
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=self.build_timeout_s, check=False)
            except subprocess.TimeoutExpired:
                raise StepError("latency", f"TensorRT engine build took over {self.build_timeout_s} s") from None
            if done.returncode != 0 or not partial.is_file():
                reason = _one_line(done.stdout + done.stderr)
                raise StepError("latency", f"trtexec could not build the engine: {reason}")
        return engine

    def benchmark(self, model_path: Path, *, imgsz: int) -> LatencyStats:
        """Build (cached) and time the engine; latencies include host-device copies (``latencyMs``)."""
        engine = self.engine(model_path)
        assert self.trtexec is not None
        with temporary_dir("trtexec") as tmp, timing_lease():
            times = Path(tmp) / "times.json"
            cmd = [
                self.trtexec,
                f"--loadEngine={engine}",
                f"--warmUp={self.warmup_ms}",
                f"--iterations={self.runs}",
                "--duration=0",
                "--avgRuns=1",
                f"--exportTimes={times}",
            ]
            started = time.time()
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
            ended = time.time()
            if done.returncode != 0 or not times.is_file():
                raise StepError("latency", f"trtexec could not time the engine: {_one_line(done.stdout + done.stderr)}")
            records = json.loads(times.read_text())
        samples = [float(r["latencyMs"]) for r in records if "latencyMs" in r]
        stats = LatencyStats.from_samples(samples, warmup=0, started_at=started, ended_at=ended)
        return dataclasses.replace(stats, built_bytes=engine.stat().st_size)

    def provenance(self, *, imgsz: int) -> Provenance:
        """TensorRT version, device, host, trtexec settings."""
        from yolotune.evaluators._device import device_info

        info = device_info()
        return Provenance(
            target=self.name,
            runtime="tensorrt",
            runtime_version=self._version(),
            device=str(info.get("device", "")),
            host=socket.gethostname(),
            imgsz=imgsz,
            settings={
                "tool": "trtexec",
                "runs": self.runs,
                "warmup_ms": self.warmup_ms,
                "batch": 1,
                **{k: v for k, v in info.items() if k in ("power_mode", "clocks_pinned")},
            },
        )


def _from_spec(spec: TargetSpec) -> Target:
    return TensorRTTarget()


register_runtime("tensorrt", _from_spec)
