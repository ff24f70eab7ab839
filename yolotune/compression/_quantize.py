"""Static INT8 quantization with ONNX Runtime (QDQ format), per-group precision, memory-bounded.

Per-group precision maps to node exclusions: every node of a group whose precision is not int8
is left out of quantization. Which float nodes should run in fp16 and which in fp32 is recorded
in the model's metadata (``yolotune._artifact``), for runtimes that choose it per layer (TensorRT);
a plan without int8 groups is not calibrated at all, only annotated. The Detect head's DFL, box
decode, sigmoid and final concat (``head.decode``) stay fp32 unless the plan names that group:
the final concat mixes box coordinates (0–imgsz px) and class scores (0–1) under one scale, and
quantizing it destroys mAP.

``shared_ranges`` gives every Concat's inputs and output one activation range (the union of
their calibrated ranges), carried through the ops whose output ONNX Runtime quantizes with their
input's parameters, so ONNX Runtime's QLinearConcat copies instead of requantizing each input.
The ranges come from ONNX Runtime's own calibrator and reach ``quantize_static`` as its
calibration cache.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.calibrate import TensorData, TensorsData, create_calibrator, save_tensors_data
from onnxruntime.quantization.operators.direct_q8 import QDQDirect8BitOp
from onnxruntime.quantization.operators.gather import QDQGather
from onnxruntime.quantization.operators.split import QDQSplit
from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
from onnxruntime.quantization.shape_inference import quant_pre_process

from yolotune._artifact import FloatPrecision, with_float_precision
from yolotune._env import library_temp_files_in, temporary_dir
from yolotune.errors import PlanError, StepError, YolotuneError
from yolotune.spaces import QuantizationConfig

__all__ = [
    "CALIBRATION_FORMAT",
    "DEFAULT_CALIBRATION_MEMORY_GB",
    "CalibrationEstimate",
    "QuantizeReport",
    "estimate_calibration_memory",
    "quantize",
]


#: Default memory budget of one calibration (``YOLOTUNE_CALIB_MEMORY_GB`` overrides it).
def _memory_gb_from_env(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    try:
        value = float(text) if text else default
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise YolotuneError(f"{name} must be a positive number of GB; got {text!r} (or leave it unset: {default:g})")
    return value


DEFAULT_CALIBRATION_MEMORY_GB = _memory_gb_from_env("YOLOTUNE_CALIB_MEMORY_GB", 6.0)
#: Bytes a histogram calibrator holds per image, relative to the model's float intermediate
#: tensors (it records only the tensors it quantizes). Measured on yolov8n at 320 px: 56 MB held
#: per image for 119 MB of intermediates (0.47); 0.6 keeps a margin. Base: the process itself.
_OVERHEAD = 0.6
_BASE_BYTES = 2**30

_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
_ACTIVATIONS = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
#: Entropy (KL) calibration histogram. ``quantize_static`` gives ONNX Runtime's entropy calibrator
#: 128 bins and 128 quantized bins, which leaves one candidate threshold, the full range: there it
#: is MinMax (measured on yolov8n: all 323 scales equal). 512 bins give it 193 thresholds, from a
#: quarter of the range to all of it; the KL search then takes ~15 s on yolov8n at 320 px.
ENTROPY_BINS = 512
ENTROPY_QUANTIZED_BINS = 128
#: How calibration methods are implemented; studies record it (results of another do not compare).
CALIBRATION_FORMAT = f"entropy-kl{ENTROPY_BINS}"
#: The op types ``quantize_static`` quantizes by default (what its calibrator must cover).
_QUANTIZED_OPS = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))
#: Ops whose quantized output ONNX Runtime's QDQ quantizer gives their input's scale and zero
#: point (its ``quantize_output_same_as_input``: MaxPool, Resize, Split, Reshape, ...), read from
#: its registry: a shared range must run through them, or the quantizer overrides it on their output.
_SAME_AS_INPUT = frozenset(
    op for op, quantizer in QDQRegistry.items() if issubclass(quantizer, QDQDirect8BitOp | QDQSplit | QDQGather)
)


@dataclass(frozen=True, kw_only=True)
class CalibrationEstimate:
    """Estimated peak memory of one calibration run."""

    bytes_per_image: int
    images_held: int
    peak_bytes: int

    @property
    def peak_gb(self) -> float:
        """Peak estimate in GiB."""
        return self.peak_bytes / 2**30


@dataclass(frozen=True, kw_only=True)
class QuantizeReport:
    """What quantization did.

    ``concats`` counts the quantized Concats, ``concats_copying`` those whose every input has the
    output's scale and zero point (ONNX Runtime's QLinearConcat copies them; see ``shared_ranges``).
    """

    quantized_nodes: int
    float_nodes: int
    excluded_groups: tuple[str, ...]
    calibration_images: int
    calibration_seconds: float
    estimate_gb: float
    weight_bits: int = 8
    concats: int = 0
    concats_copying: int = 0


def _activation_bytes(model: onnx.ModelProto) -> int:
    """Bytes of every float intermediate tensor for one input (what calibrators record)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    total = 0
    for info in inferred.graph.value_info:
        t = info.type.tensor_type
        if t.elem_type != onnx.TensorProto.FLOAT:
            continue
        dims = [d.dim_value for d in t.shape.dim]
        if dims and all(d > 0 for d in dims):
            total += int(np.prod(dims)) * 4
    return total


def estimate_calibration_memory(model_path: Path, config: QuantizationConfig) -> CalibrationEstimate:
    """Estimate the peak memory ONNX Runtime's calibrator needs for this model and config.

    MinMax keeps only per-tensor minima and maxima; entropy and percentile keep every activation
    of every image until histograms are built, so they grow linearly with the number of images.
    (ONNX Runtime's ``CalibMaxIntermediateOutputs`` would bound that, but in 1.32 it discards the
    collected chunks instead of folding them, so it is not used.)
    """
    per_image = _activation_bytes(onnx.load(str(model_path), load_external_data=False))
    n = config.calibration_images
    # MinMax records per-tensor minima/maxima (ReduceMin/ReduceMax), a few bytes per image
    held = 0 if config.calibration_method == "minmax" else n
    peak = _BASE_BYTES + int(per_image * held * _OVERHEAD)
    return CalibrationEstimate(bytes_per_image=per_image, images_held=held, peak_bytes=peak)


def check_calibration_budget(model_path: Path, config: QuantizationConfig, *, budget_gb: float) -> CalibrationEstimate:
    """Refuse a calibration whose estimated peak memory exceeds ``budget_gb``.

    Raises:
        PlanError: With the estimate, the largest image count that fits, and the alternatives.
    """
    est = estimate_calibration_memory(model_path, config)
    if est.peak_gb > budget_gb and not est.images_held:  # MinMax: the process itself is over budget
        raise PlanError(
            f"{config.calibration_method} calibration needs ≈{est.peak_gb:.1f} GB whatever its image count (it "
            "holds no images), "
            f"over the {budget_gb:g} GB budget; raise YOLOTUNE_CALIB_MEMORY_GB"
        )
    if est.peak_gb > budget_gb:
        per = est.bytes_per_image * _OVERHEAD
        fits = max(0, int((budget_gb * 2**30 - _BASE_BYTES) // per))
        ways = [f"use ≤{fits} images"] if fits else []
        if config.calibration_method != "minmax":
            ways.append("minmax")
        ways.append("raise YOLOTUNE_CALIB_MEMORY_GB")
        raise PlanError(
            f"{config.calibration_method} calibration on {config.calibration_images} images needs "
            f"≈{est.peak_gb:.1f} GB ({per / 2**20:.0f} MB per image), over the {budget_gb:g} GB "
            f"budget; {' or '.join(ways) if len(ways) < 3 else ', '.join(ways[:-1]) + ', or ' + ways[-1]}"
        )
    return est


class _Reader(CalibrationDataReader):  # type: ignore[misc]
    def __init__(self, make: Callable[[], Iterable[np.ndarray]], input_name: str) -> None:
        self._make = make
        self._input = input_name
        self._it: Iterator[np.ndarray] = iter(make())
        self.count = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        if batch is None:
            return None
        self.count += 1
        return {self._input: batch}

    def rewind(self) -> None:
        self._it = iter(self._make())


def _quantize_static(
    fp32_path: Path,
    out_path: Path,
    config: QuantizationConfig,
    *,
    exclude: list[str],
    reader: _Reader,
    reduce_range: bool,
) -> None:
    with temporary_dir("quantize") as tmp, library_temp_files_in(tmp):
        pre = Path(tmp) / "pre.onnx"
        ranges: Path | None = None
        try:
            # shape inference only: graph optimisation would rename nodes and break exclusions
            quant_pre_process(str(fp32_path), str(pre), skip_optimization=True)
            # ORT's histogram calibrators print their bin counts: keep the console for progress
            with contextlib.redirect_stdout(io.StringIO()):
                if config.calibration_method == "entropy" or config.shared_ranges:
                    data = _calibrate(pre, reader, config.calibration_method, work=Path(tmp))
                    if config.shared_ranges:
                        data = _share_concat_ranges(onnx.load(str(pre)), data, exclude=set(exclude))
                    ranges = Path(tmp) / "ranges.json"
                    save_tensors_data(data, ranges)
                quantize_static(
                    str(pre),
                    str(out_path),
                    reader if ranges is None else None,
                    quant_format=QuantFormat.QDQ,
                    per_channel=config.per_channel,
                    activation_type=_ACTIVATIONS[config.activation_type],
                    weight_type=QuantType.QInt8,
                    reduce_range=reduce_range,
                    calibrate_method=_METHODS[config.calibration_method],
                    nodes_to_exclude=exclude,
                    calibration_cache_path=ranges,
                    # signed activations get zero point 0: TensorRT takes no other INT8
                    extra_options={"ActivationSymmetric": config.activation_type == "int8"},
                )
        except PlanError:
            raise
        except Exception as exc:
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            if isinstance(exc, ValueError) and "Too many bins" in str(exc):
                # ORT's histogram runs on float32 |x| over [min, max]: an activation whose values all lie
                # within float32's rounding (sigmoid(≈0) everywhere, in an untrained head) has no bins
                reason = (
                    f"{config.calibration_method} calibration cannot histogram an activation whose values barely "
                    "vary (ONNX Runtime: too many bins for its data range); calibrate this model with minmax"
                )
            raise StepError("quantize", reason) from exc


def _calibrate(model_path: Path, reader: _Reader, method: str, *, work: Path) -> TensorsData:
    """Activation ranges from ONNX Runtime's own calibrator, as ``quantize_static`` would compute them.

    Entropy gets enough bins to search thresholds (``ENTROPY_BINS``); the other methods get
    ``quantize_static``'s defaults. The result is written as ONNX Runtime's calibration cache,
    which ``quantize_static`` then reads.
    """
    extra = {"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS} if method == "entropy" else {}
    calibrator = create_calibrator(
        model_path,
        _QUANTIZED_OPS,
        augmented_model_path=str(work / "augmented.onnx"),
        calibrate_method=_METHODS[method],
        extra_options=extra,
    )
    calibrator.collect_data(reader)
    return calibrator.compute_data()


def _share_concat_ranges(model: onnx.ModelProto, data: TensorsData, *, exclude: Collection[str] = ()) -> TensorsData:
    """Give each Concat's inputs and output one range: the union of their calibrated ranges.

    Tensors joined by a Concat, or by an op in ``_SAME_AS_INPUT`` (input and outputs), form one
    group; every tensor of a group with a calibrated range gets the group's lowest and highest.
    Nodes named in ``exclude`` stay float and join nothing.

    Args:
        model: The FP32 model that was calibrated.
        data: Its calibrated ranges (``compute_data()`` of an ONNX Runtime calibrator); changed in place.
        exclude: Names of nodes left float.

    Returns:
        ``data``, with shared ranges.
    """
    parent: dict[str, str] = {}

    def root(t: str) -> str:
        parent.setdefault(t, t)
        while parent[t] != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    skip = set(exclude)
    for node in model.graph.node:
        if node.name in skip or not node.input:
            continue
        if node.op_type == "Concat":
            joined = [*node.input, node.output[0]]
        elif node.op_type in _SAME_AS_INPUT:
            joined = [node.input[0], *node.output]
        else:
            continue
        for t in joined[1:]:
            parent[root(t)] = root(joined[0])
    groups: dict[str, list[str]] = {}
    for t in parent:
        if t in data:
            groups.setdefault(root(t), []).append(t)
    for members in groups.values():
        if len(members) < 2:
            continue
        lows = [float(np.min(data[t].range_value[0])) for t in members]
        highs = [float(np.max(data[t].range_value[1])) for t in members]
        shared = TensorData(lowest=np.float32(min(lows)), highest=np.float32(max(highs)))
        for t in members:
            data[t] = shared
    return data


def quantize(
    fp32_path: Path,
    out_path: Path,
    config: QuantizationConfig,
    *,
    group_of_node: Callable[[str], str],
    calibration: Callable[[], Iterable[np.ndarray]],
    budget_gb: float = DEFAULT_CALIBRATION_MEMORY_GB,
    reduce_range: bool = False,
) -> QuantizeReport:
    """Quantize ``fp32_path`` to a QDQ model at ``out_path`` following ``config``.

    Args:
        fp32_path: The exported FP32 ONNX model.
        out_path: Where to write the quantized model.
        config: Per-group precision, activation type, calibration method and size.
        group_of_node: Maps an ONNX node name to its layer group.
        calibration: Returns a fresh iterable of preprocessed training images (1x3xHxW float32).
        budget_gb: Memory budget of the calibration.
        reduce_range: Quantize weights to 7 bits, for devices whose INT8 kernels saturate with 8
            (``yolotune.evaluators.int8_saturates``).

    Raises:
        PlanError: The calibration would exceed the memory budget.
        StepError: ONNX Runtime failed.
    """
    model = onnx.load(str(fp32_path))
    input_name = model.graph.input[0].name
    excluded_groups: set[str] = set()
    exclude: list[str] = []
    fp16: list[str] = []
    for node in model.graph.node:
        group = group_of_node(node.name)
        precision = config.precision_of(group)
        if precision != "int8":
            exclude.append(node.name)
            excluded_groups.add(group)
            if precision == "fp16":
                fp16.append(node.name)
    halves = set(fp16)
    floats = FloatPrecision(fp16_nodes=tuple(fp16), fp32_nodes=tuple(n for n in exclude if n not in halves))
    reader: _Reader | None = None
    t0 = time.perf_counter()
    est: CalibrationEstimate | None = None
    if len(exclude) == len(model.graph.node):  # float only (fp16/fp32): nothing to calibrate
        quantized = model
    else:
        est = check_calibration_budget(fp32_path, config, budget_gb=budget_gb)
        reader = _Reader(calibration, input_name)
        _quantize_static(fp32_path, out_path, config, exclude=exclude, reader=reader, reduce_range=reduce_range)
        quantized = onnx.load(str(out_path))
        # keep Ultralytics' metadata (class names, stride, image size) on the deployable file
        del quantized.metadata_props[:]
        quantized.metadata_props.extend(model.metadata_props)
    seconds = time.perf_counter() - t0
    with_float_precision(quantized, floats)
    onnx.save(quantized, str(out_path))
    n_q = sum(1 for n in quantized.graph.node if n.op_type == "QuantizeLinear")
    concats, copying = _concats_copying(quantized.graph)
    return QuantizeReport(
        quantized_nodes=len(model.graph.node) - len(exclude),
        float_nodes=len(exclude),
        excluded_groups=tuple(sorted(excluded_groups)),
        calibration_images=reader.count if n_q and reader is not None else 0,
        calibration_seconds=seconds,
        estimate_gb=est.peak_gb if est is not None else 0.0,
        weight_bits=7 if reduce_range and n_q else 8,
        concats=concats,
        concats_copying=copying,
    )


def _concats_copying(graph: onnx.GraphProto) -> tuple[int, int]:
    """(Quantized Concats, those whose every input is dequantized with the output's scale and zero point)."""
    consts = {t.name: t for t in graph.initializer}

    def params(node: onnx.NodeProto) -> tuple[float, ...] | None:
        named = [consts.get(name) for name in node.input[1:3]]
        if len(named) < 2 or any(t is None for t in named):
            return None
        return tuple(float(v) for t in named if t is not None for v in numpy_helper.to_array(t).ravel())

    producer = {out: n for n in graph.node for out in n.output}
    quantized_by = {n.input[0]: n for n in graph.node if n.op_type == "QuantizeLinear"}
    total = copying = 0
    for node in graph.node:
        q = quantized_by.get(node.output[0]) if node.op_type == "Concat" else None
        if q is None:
            continue
        total += 1
        inputs = [producer.get(name) for name in node.input]
        copying += all(
            d is not None and d.op_type == "DequantizeLinear" and params(d) == params(q) and params(q) is not None
            for d in inputs
        )
    return total, copying
