from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from yolotune import PlanError
from yolotune.compression import check_calibration_budget, quantize, ultralytics_adapter
from yolotune.evaluators import int8_saturates, measure_map
from yolotune.spaces import QuantizationConfig


def _quantize(
    fp32: Path, out: Path, config: QuantizationConfig, dataset, model, *, reduce_range: bool | None = None
) -> Path:
    """Quantize as the search does on this machine: 7-bit weights where its CPU's INT8 kernels saturate."""
    layout = ultralytics_adapter.model_layout(model)
    quantize(
        fp32,
        out,
        config,
        group_of_node=layout.group_of_onnx_node,
        calibration=lambda: ultralytics_adapter.calibration_images(dataset, imgsz=320, count=config.calibration_images),
        reduce_range=int8_saturates() if reduce_range is None else reduce_range,
    )
    return out


def _int8_weights(path: Path) -> list[np.ndarray]:
    model = onnx.load(str(path))
    return [numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]


def test_reduce_range_quantizes_weights_to_7_bits(fp32_onnx_320, coco8, _loaded, tmp_path, monkeypatch) -> None:
    import tempfile

    system_tmp, scratch = tmp_path / "system-tmp", tmp_path / "scratch"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))  # as TMPDIR would
    monkeypatch.setenv("YOLOTUNE_TMP", str(scratch))
    made: list[Path] = []  # every temporary folder made, by yolotune or ONNX Runtime (a spy, not a fake)
    real_mkdtemp = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: made.append(Path(real_mkdtemp(*a, **k))) or str(made[-1]))
    config = QuantizationConfig(default="int8", calibration_images=2)
    full = _quantize(fp32_onnx_320, tmp_path / "s8.onnx", config, coco8, _loaded, reduce_range=False)
    reduced = _quantize(fp32_onnx_320, tmp_path / "s7.onnx", config, coco8, _loaded, reduce_range=True)
    assert max(int(np.abs(w).max()) for w in _int8_weights(full)) == 127
    assert max(int(np.abs(w).max()) for w in _int8_weights(reduced)) == 64
    # ONNX Runtime's temporary models (pre.quant.*, ort.quant.*) went to yolotune's scratch, and went with it
    assert {p.name.split(".")[0] for p in made} >= {"pre", "ort"}
    assert all(p.is_relative_to(scratch) for p in made), made
    assert not list(system_tmp.iterdir()) and not list((scratch / "tmp").iterdir())
    assert tempfile.gettempdir() == str(system_tmp)


@pytest.mark.skipif(not int8_saturates(), reason="this CPU has VNNI: ONNX Runtime's INT8 kernels do not saturate")
def test_on_a_cpu_without_vnni_8_bit_weights_lose_accuracy_that_7_bit_weights_keep(
    fp32_onnx_320, tiny_coco, _loaded, tmp_path
) -> None:
    fp32 = measure_map(fp32_onnx_320, tiny_coco, imgsz=320).map50_95
    config = QuantizationConfig(default="int8", calibration_images=16)
    full = _quantize(fp32_onnx_320, tmp_path / "s8.onnx", config, tiny_coco, _loaded, reduce_range=False)
    reduced = _quantize(fp32_onnx_320, tmp_path / "s7.onnx", config, tiny_coco, _loaded, reduce_range=True)
    lost_full = fp32 - measure_map(full, tiny_coco, imgsz=320).map50_95
    lost_reduced = fp32 - measure_map(reduced, tiny_coco, imgsz=320).map50_95
    # measured on an AVX2-only EPYC: 3.9 points against 0.9
    assert lost_full > 0.025 and lost_reduced < 0.015, (lost_full, lost_reduced)


def test_int8_keeps_map_with_float_decode_and_collapses_without(fp32_onnx_320, tiny_coco, _loaded, tmp_path) -> None:
    fp32 = measure_map(fp32_onnx_320, tiny_coco, imgsz=320).map50_95
    assert fp32 > 0.3  # the real COCO model on real COCO images

    default = QuantizationConfig(default="int8", calibration_images=16)
    int8 = _quantize(fp32_onnx_320, tmp_path / "int8.onnx", default, tiny_coco, _loaded)
    assert abs(measure_map(int8, tiny_coco, imgsz=320).map50_95 - fp32) <= 0.02
    # the decode nodes really are float, and the rest is quantized
    nodes = onnx.load(str(int8)).graph.node
    assert sum(n.op_type == "QuantizeLinear" for n in nodes) > 50
    assert "/model.22/Concat_3" in {n.name for n in nodes}

    # Why the default exists: one int8 scale for box pixels (0-320) and class scores (0-1) in the
    # final concat rounds most scores away (measured on yolov8n-coco/tiny_coco: 0.353 -> 0.126)
    everything = QuantizationConfig(default="int8", precision={"head.decode": "int8"}, calibration_images=16)
    collapsed = _quantize(fp32_onnx_320, tmp_path / "all.onnx", everything, tiny_coco, _loaded)
    assert measure_map(collapsed, tiny_coco, imgsz=320).map50_95 < 0.5 * fp32


def test_fp32_groups_stay_float(fp32_onnx_320, tiny_coco, _loaded, tmp_path) -> None:
    config = QuantizationConfig(default="fp32", precision={"backbone.0": "int8"}, calibration_images=2)
    out = _quantize(fp32_onnx_320, tmp_path / "partial.onnx", config, tiny_coco, _loaded)
    graph = onnx.load(str(out)).graph
    dq_consumers = {n.name for n in graph.node if any("model.0" in i for i in n.input) and n.op_type == "Conv"}
    assert dq_consumers  # backbone.0's conv now reads dequantized tensors
    assert not any(n.op_type == "QuantizeLinear" and "model.8" in n.name for n in graph.node)
    meta = {p.key for p in onnx.load(str(out)).metadata_props}
    assert {"names", "stride", "imgsz"} <= meta  # Ultralytics' metadata survives


def test_int8_activations_are_symmetric_as_tensorrt_requires_and_uint8_ones_are_not(
    fp32_onnx_320, tiny_coco, _loaded, tmp_path
) -> None:
    def activation_zero_points(path: Path) -> dict[str, np.ndarray]:
        graph = onnx.load(str(path)).graph
        weights = {n.output[0] for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] in _inits(graph)}
        inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        return {
            n.input[2]: inits[n.input[2]]
            for n in graph.node
            if n.op_type == "QuantizeLinear" and n.output[0] not in weights and len(n.input) > 2
        }

    signed = QuantizationConfig(default="int8", activation_type="int8", calibration_images=2)
    zps = activation_zero_points(_quantize(fp32_onnx_320, tmp_path / "s8.onnx", signed, tiny_coco, _loaded))
    assert len(zps) > 50 and all(z.dtype == np.int8 and not z.any() for z in zps.values())
    unsigned = dataclasses.replace(signed, activation_type="uint8")
    zps = activation_zero_points(_quantize(fp32_onnx_320, tmp_path / "u8.onnx", unsigned, tiny_coco, _loaded))
    assert all(z.dtype == np.uint8 for z in zps.values()) and any(z.any() for z in zps.values())


def _inits(graph: onnx.GraphProto) -> set[str]:
    return {t.name for t in graph.initializer}


def test_calibration_memory_budget_refuses_with_a_message(fp32_onnx_320) -> None:
    big = QuantizationConfig(default="int8", calibration_method="entropy", calibration_images=200)
    with pytest.raises(PlanError) as info:
        check_calibration_budget(fp32_onnx_320, big, budget_gb=4.0)
    msg = str(info.value)
    assert "entropy calibration on 200 images needs" in msg and "over the 4 GB budget" in msg
    assert msg.endswith(", minmax, or raise YOLOTUNE_CALIB_MEMORY_GB")
    fits = int(msg.split("use ≤")[1].split()[0])
    assert 0 < fits < 200
    ok = QuantizationConfig(default="int8", calibration_method="entropy", calibration_images=fits)
    assert check_calibration_budget(fp32_onnx_320, ok, budget_gb=4.0).peak_gb <= 4.0
    # MinMax keeps only ranges: its estimate does not grow with the image count
    mm = QuantizationConfig(default="int8", calibration_method="minmax", calibration_images=200)
    assert check_calibration_budget(fp32_onnx_320, mm, budget_gb=4.0).peak_gb < 2.0
    # a budget MinMax itself does not fit: no advice to use what is already used, nor ≤0 images
    with pytest.raises(PlanError) as info:
        check_calibration_budget(fp32_onnx_320, mm, budget_gb=0.01)
    assert str(info.value).endswith("over the 0.01 GB budget; raise YOLOTUNE_CALIB_MEMORY_GB")
    assert "whatever its image count (it holds no images)" in str(info.value) and "per image" not in str(info.value)


def test_float_precision_is_recorded_for_runtimes_that_choose_it_per_layer(
    fp32_onnx_320, tiny_coco, _loaded, tmp_path
) -> None:
    from yolotune._artifact import read_float_precision

    # fp16 everywhere except one INT8 group: QDQ nodes for that group, fp16 names for the rest,
    # and the decode nodes recorded fp32 (the plan does not name head.decode)
    mixed = QuantizationConfig(default="fp16", precision={"backbone.0": "int8"}, calibration_images=2)
    out = _quantize(fp32_onnx_320, tmp_path / "mixed.onnx", mixed, tiny_coco, _loaded)
    rec = read_float_precision(out)
    assert rec.int8 and rec.fp16
    assert any("model.8" in n for n in rec.fp16_nodes)
    assert "/model.22/Concat_3" in rec.fp32_nodes and "/model.22/Concat_3" not in rec.fp16_nodes
    assert not any("model.0/" in n for n in rec.fp16_nodes + rec.fp32_nodes if "Conv" in n)

    # no INT8 group: nothing is calibrated, the graph is the FP32 one, only annotated
    report = quantize(
        fp32_onnx_320,
        tmp_path / "fp16.onnx",
        QuantizationConfig(default="fp16"),
        group_of_node=ultralytics_adapter.model_layout(_loaded).group_of_onnx_node,
        calibration=lambda: pytest.fail("an fp16-only plan must not calibrate"),
    )
    assert report.calibration_images == 0
    graph = onnx.load(str(tmp_path / "fp16.onnx")).graph
    assert not any(n.op_type == "QuantizeLinear" for n in graph.node)
    assert len(graph.node) == len(onnx.load(str(fp32_onnx_320)).graph.node)
    only16 = read_float_precision(tmp_path / "fp16.onnx")
    assert not only16.int8 and len(only16.fp16_nodes) > 100
    # a plain export has no record: every float layer fp32
    assert not read_float_precision(fp32_onnx_320).fp16


def _scales(path: Path) -> dict[str, np.ndarray]:
    return {
        t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer if t.name.endswith("_scale")
    }


def test_entropy_calibration_searches_thresholds_instead_of_repeating_minmax(
    fp32_onnx_320, tiny_coco, _loaded, tmp_path
) -> None:
    # quantize_static's own entropy settings (128 bins, 128 quantized bins) leave one candidate, the
    # full range, so every scale equalled MinMax's; yolotune gives the KL search bins to choose from
    minmax = QuantizationConfig(default="int8", calibration_method="minmax", calibration_images=8)
    entropy = dataclasses.replace(minmax, calibration_method="entropy")
    a = _scales(_quantize(fp32_onnx_320, tmp_path / "minmax.onnx", minmax, tiny_coco, _loaded))
    b_path = _quantize(fp32_onnx_320, tmp_path / "entropy.onnx", entropy, tiny_coco, _loaded)
    b = _scales(b_path)
    assert a.keys() == b.keys()
    clipped = [k for k in a if float(np.max(b[k])) < 0.99 * float(np.max(a[k]))]
    assert len(clipped) > len(a) // 4  # KL clips many activation ranges below their maxima
    assert not any(float(np.max(b[k])) > 1.001 * float(np.max(a[k])) for k in a)  # never wider than MinMax
    fp32 = measure_map(fp32_onnx_320, tiny_coco, imgsz=320).map50_95
    assert abs(measure_map(b_path, tiny_coco, imgsz=320).map50_95 - fp32) <= 0.02


def test_shared_ranges_let_every_concat_copy_and_keep_map(fp32_onnx_320, tiny_coco, _loaded, tmp_path) -> None:
    separate = QuantizationConfig(default="int8", calibration_method="minmax", calibration_images=8)
    shared = dataclasses.replace(separate, shared_ranges=True)
    layout = ultralytics_adapter.model_layout(_loaded)
    reports = {}
    for name, config in (("separate", separate), ("shared", shared)):
        reports[name] = quantize(
            fp32_onnx_320,
            tmp_path / f"{name}.onnx",
            config,
            group_of_node=layout.group_of_onnx_node,
            calibration=lambda: ultralytics_adapter.calibration_images(tiny_coco, imgsz=320, count=8),
            reduce_range=int8_saturates(),
        )
    # yolov8n: 8 C2f, SPPF and 4 neck Concats are quantized; the Detect decode's stay float
    assert reports["shared"].concats == reports["separate"].concats == 13
    assert reports["shared"].concats_copying == 13
    assert reports["separate"].concats_copying <= 2  # calibrated ranges rarely coincide
    # one range per group, carried through MaxPool/Resize/Split: their input and output scales agree
    a, b = _scales(tmp_path / "separate.onnx"), _scales(tmp_path / "shared.onnx")
    assert a.keys() == b.keys() and len({float(v) for v in b.values() if v.size == 1}) < len(
        {float(v) for v in a.values() if v.size == 1}
    )
    fp32 = measure_map(fp32_onnx_320, tiny_coco, imgsz=320).map50_95
    got = measure_map(tmp_path / "shared.onnx", tiny_coco, imgsz=320).map50_95
    assert abs(got - fp32) <= 0.015


def test_percentile_on_an_activation_that_barely_varies_fails_in_one_line_naming_minmax(tmp_path: Path) -> None:
    """ONNX Runtime's percentile histogram cannot bin a tensor whose values all lie within float32's rounding.

    Found on a freshly initialised YOLO11n, whose class branch sits at sigmoid(≈0) = 0.5 everywhere.
    """
    from onnx import helper

    from yolotune import YolotuneError

    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array((1e-7 * rng.standard_normal((4, 3, 3, 3))).astype(np.float32), "w0"),
        numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), "w1"),
    ]
    nodes = [
        helper.make_node("Conv", ["images", "w0"], ["a"], name="/model.0/conv/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["a"], ["s"], name="/model.0/act/Sigmoid"),
        helper.make_node("Conv", ["s", "w1"], ["out"], name="/model.1/conv/Conv"),
    ]
    graph = helper.make_graph(
        nodes,
        "flat",
        [helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [1, 4, 16, 16])],
        initializer=weights,
    )
    fp32 = tmp_path / "flat.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(fp32))
    images = [rng.random((1, 3, 16, 16), dtype=np.float32) for _ in range(4)]

    def run(method: str) -> None:
        config = QuantizationConfig(default="int8", calibration_method=method, calibration_images=4)
        quantize(fp32, tmp_path / f"{method}.onnx", config, group_of_node=lambda _: "g", calibration=lambda: images)

    run("minmax")  # the model itself quantizes
    with pytest.raises(YolotuneError) as info:
        run("percentile")
    message = str(info.value)
    assert "\n" not in message and "percentile" in message and "minmax" in message, message
