from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from yolotune import CompressionPlan, PlanError, YolotuneError
from yolotune.evaluators import LatencyStats, LocalCPUTarget, Provenance
from yolotune.search import CandidateSettings, run_candidate


class _CountingTarget(LocalCPUTarget):
    """The real local-cpu target, recording which files it timed."""

    def __init__(self) -> None:
        super().__init__(threads=2, warmup=2, runs=50)
        self.timed: list[Path] = []

    def benchmark(self, model_path: Path, *, imgsz: int) -> LatencyStats:
        self.timed.append(Path(model_path))
        return super().benchmark(model_path, imgsz=imgsz)


def test_candidate_builds_and_measures_the_deployable_file(tmp_path: Path) -> None:
    plan = CompressionPlan.from_dict(
        {
            "pruning": {"ratios": {"backbone.7": 0.25, "head.cv2.0": 0.25}, "round_to": 8, "importance": "bn_scale"},
            "quantization": {"default": "int8", "calibration_images": 4},
            "recovery": {"epochs": 1, "lr": 1e-4},
        }
    )
    target = _CountingTarget()
    steps: list[str] = []
    result = run_candidate(
        model="yolov8n-coco.pt",
        data="coco8",
        plan=plan,
        out_dir=tmp_path,
        settings=CandidateSettings(imgsz=160),
        target=target,
        on_step=steps.append,
    )
    assert steps == ["load", "prune", "save", "finetune", "count", "export", "quantize", "validate", "latency"]
    # every number describes the file that is handed out
    assert result.deployable == tmp_path / "model.int8.onnx"
    assert target.timed == [result.deployable]
    assert result.size_bytes == result.deployable.stat().st_size
    assert 0.0 <= result.accuracy.map50_95 <= 1.0 and math.isfinite(result.latency.median_ms)
    assert result.prune is not None and result.prune.params_after < result.prune.params_before
    assert result.quantize is not None and result.quantize.calibration_images == 4
    assert isinstance(result.provenance, Provenance) and result.provenance.imgsz == 160
    assert {"ultralytics", "onnxruntime", "torch-pruning"} <= set(result.versions)
    recorded = json.loads((tmp_path / "metrics.json").read_text())
    assert recorded["map50_95"] == result.accuracy.map50_95
    assert recorded["provenance"]["target"] == "local-cpu"
    assert recorded["finetune"] == {  # what fine-tuning ran, beside the plan that asked for it
        "epochs": 1,
        "images": 4,
        "batch": 4,
        "lr": 1e-4,
        "mosaic": False,
        "device": "cpu",
        "teacher": None,
    }
    assert CompressionPlan.load(tmp_path / "plan.yaml") == plan


def test_baseline_plan_is_the_fp32_export(tmp_path: Path) -> None:
    result = run_candidate(
        model="yolov8n-coco.pt",
        data="coco8",
        plan=CompressionPlan(),
        out_dir=tmp_path,
        settings=CandidateSettings(imgsz=160),
    )
    assert result.deployable == tmp_path / "model.onnx"
    assert result.prune is None and result.quantize is None
    assert result.accuracy.map50_95 > 0.2


def test_plans_the_target_cannot_run_are_refused_before_work(tmp_path: Path) -> None:
    fp16 = CompressionPlan.from_dict({"quantization": {"default": "fp16", "calibration_images": 4}})
    with pytest.raises(PlanError, match="target local-cpu cannot run fp16; it supports int8, fp32"):
        run_candidate(model="yolov8n-coco.pt", data="coco8", plan=fp16, out_dir=tmp_path)
    signed = CompressionPlan.from_dict(
        {"quantization": {"default": "int8", "activation_type": "int8", "calibration_images": 4}}
    )
    with pytest.raises(PlanError, match="local-cpu runs INT8 layers with uint8 activations, not int8; set quant"):
        run_candidate(model="yolov8n-coco.pt", data="coco8", plan=signed, out_dir=tmp_path)
    # a library caller's plan or settings of another type: said as such, not as a failed load
    with pytest.raises(
        YolotuneError, match=r"^plan must be a CompressionPlan \(CompressionPlan.load\(path\) or .*got dict$"
    ):
        run_candidate(model="yolov8n-coco.pt", data="coco8", plan={"quantization": {}}, out_dir=tmp_path)  # type: ignore[arg-type]
    with pytest.raises(YolotuneError, match=r"^settings must be a CandidateSettings .*got dict$"):
        run_candidate(model="yolov8n-coco.pt", data="coco8", plan=fp16, out_dir=tmp_path, settings={"imgsz": 320})  # type: ignore[arg-type]
    assert not (tmp_path / "model.pt").exists()


def test_rung0_runs_least_squares_on_fewer_images_and_promotion_on_the_plans(tmp_path: Path) -> None:
    from yolotune.search import RUNG0_RECOVERY_IMAGES, build_candidate

    plan = CompressionPlan.from_dict(
        {
            "pruning": {"ratios": {"backbone.7": 0.25, "neck.16": 0.25}},
            "recovery": {"method": "ls", "images": 16},
        }
    )
    common = {"model": "yolov8n-coco.pt", "data": "tiny_coco", "plan": plan, "out_dir": tmp_path}
    settings = CandidateSettings(imgsz=160)
    rung0 = build_candidate(**common, settings=settings, stage="rung0", val_images=8)
    assert RUNG0_RECOVERY_IMAGES == 8 and rung0.fidelity == "rung0" and rung0.proxy == "ls×8"
    assert rung0.recover is not None and (rung0.recover.method, rung0.recover.images) == ("ls", 8)
    assert rung0.plan == plan and rung0.accuracy.images == 8
    assert CompressionPlan.load(tmp_path / "plan.yaml") == plan  # the trial's own plan is what is recorded
    full = build_candidate(**common, settings=settings, stage="promote", previous=rung0)
    assert full.fidelity == "full" and not full.proxy
    assert full.recover is not None and (full.recover.method, full.recover.images) == ("ls", 16)
    assert full.accuracy.images == 50  # every tiny_coco validation image
    # rebuilt with the planned recovery: its steps come on top of rung 0's, as they do when a promotion continues
    assert full.step_seconds["recover"] > rung0.step_seconds["recover"] > 0
    assert all(full.step_seconds[k] > rung0.step_seconds[k] > 0 for k in ("load", "prune", "export"))


def test_rung0_calibrates_with_minmax_in_place_of_percentile_and_promotion_calibrates_as_planned(
    tmp_path: Path,
) -> None:
    import onnx
    from onnx import numpy_helper

    from yolotune.search import build_candidate

    plan = CompressionPlan.from_dict(
        {"quantization": {"default": "int8", "calibration_method": "percentile", "calibration_images": 4}}
    )
    settings = CandidateSettings(imgsz=160)

    def scales(path: Path) -> dict[str, list[float]]:
        inits = onnx.load(str(path)).graph.initializer
        return {t.name: numpy_helper.to_array(t).tolist() for t in inits if t.name.endswith("_scale")}

    common = {"model": "yolov8n-coco.pt", "data": "coco8", "plan": plan, "settings": settings}
    rung0 = build_candidate(**common, out_dir=tmp_path / "t", stage="rung0", val_images=2)
    assert rung0.fidelity == "rung0" and rung0.calibration_proxy == "minmax" and not rung0.proxy
    assert rung0.plan == plan  # the trial's own plan is what is recorded
    assert rung0.stand_ins == {"calibration": "minmax"}
    at_rung0 = scales(rung0.deployable)
    full = build_candidate(**common, out_dir=tmp_path / "t", stage="promote", previous=rung0)
    assert full.fidelity == "full" and not full.calibration_proxy and full.accuracy.images == 4
    assert full.step_seconds["export"] == rung0.step_seconds["export"]  # quantized rung 0's export again
    assert full.step_seconds["quantize"] > rung0.step_seconds["quantize"]
    direct = build_candidate(**common, out_dir=tmp_path / "direct")
    assert scales(full.deployable) == scales(direct.deployable) != at_rung0  # calibrated as planned, at last


def test_a_yolo11_model_is_pruned_recovered_and_quantized_like_yolov8(tmp_path: Path) -> None:
    """YOLO11's C3k2 blocks are pruned and reconstructed; its attention block (C2PSA) is left whole."""
    import numpy as np
    import onnxruntime as ort
    import torch
    from ultralytics.nn.tasks import DetectionModel

    from yolotune.assets import prepare_dataset
    from yolotune.compression import ultralytics_adapter as adapter

    torch.manual_seed(0)  # no trained YOLO11 weights offline: a seeded one, with BatchNorm statistics that matter
    model = DetectionModel("yolo11n.yaml", verbose=False).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    checkpoint = adapter.save_checkpoint(model, tmp_path / "yolo11n.pt")
    groups = adapter.model_layout(adapter.load_model(checkpoint)).groups
    assert "backbone.10" not in groups and {"backbone.2", "neck.13", "head.cv3.0"} <= set(groups)  # 10: C2PSA

    pruned = ("backbone.2", "backbone.4", "neck.13", "neck.19", "head.cv2.1", "head.cv3.0")
    plan = CompressionPlan.from_dict(
        {
            "pruning": {"ratios": dict.fromkeys(pruned, 0.25), "importance": "activation", "round_to": 8},
            "quantization": {"default": "int8", "calibration_images": 4, "shared_ranges": True},
            "recovery": {"method": "ls", "images": 4},
        }
    )
    out = tmp_path / "candidate"
    result = run_candidate(
        model=checkpoint, data="coco8", plan=plan, out_dir=out, settings=CandidateSettings(imgsz=160)
    )
    assert result.prune is not None and result.recover is not None and result.quantize is not None
    smaller = {g for g, (before, after) in result.prune.channels.items() if after < before}
    assert smaller == set(pruned)
    assert result.recover.method == "ls" and result.recover.consumers > 0
    assert result.recover.error_before is not None and result.recover.error_after is not None
    # measured: median relative consumer error 0.33 → 0.07
    assert result.recover.error_after < 0.5 * result.recover.error_before
    assert result.quantize.concats_copying == result.quantize.concats > 0
    assert result.deployable == out / "model.int8.onnx" and result.size_bytes == result.deployable.stat().st_size

    # the exported FP32 file computes what the pruned, reconstructed checkpoint computes
    image = next(adapter.calibration_images(prepare_dataset("coco8"), imgsz=160, count=1))
    with torch.no_grad():
        expected = adapter.load_model(out / "model.pt")(torch.from_numpy(image))[0].numpy()
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: image})
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-2)


def test_rung0_quantizes_only_plans_whose_fp32_export_clears_the_floor(tmp_path: Path) -> None:
    from yolotune.search import build_candidate

    int8 = {"default": "int8", "calibration_images": 4, "calibration_method": "minmax"}
    common = {"model": "yolov8n-coco.pt", "data": "coco8", "settings": CandidateSettings(imgsz=160)}
    plan = CompressionPlan.from_dict({"quantization": int8})
    # a floor nothing clears: on 2 of coco8's 4 validation images, rung 0 stops before quantizing
    stopped = build_candidate(**common, plan=plan, out_dir=tmp_path / "a", stage="rung0", val_images=2, rung0_floor=2.0)
    assert stopped.fidelity == "rung0" and stopped.quantize is None
    assert stopped.deployable == tmp_path / "a" / "model.onnx" and not (tmp_path / "a" / "model.int8.onnx").exists()
    assert stopped.unquantized.startswith("its FP32 export scored mAP50-95 ") and stopped.stand_ins == {
        "precision": "fp32"
    }
    assert "quantize" not in stopped.step_seconds and "validate-fp32" in stopped.step_seconds
    # a histogram calibration would have had a MinMax stand-in: none is claimed, since none ran
    slow = CompressionPlan.from_dict({"quantization": {**int8, "calibration_method": "percentile"}})
    stopped = build_candidate(**common, plan=slow, out_dir=tmp_path / "b", stage="rung0", rung0_floor=2.0)
    assert stopped.unquantized and stopped.stand_ins == {"precision": "fp32"}
    # a rung 0 that is the whole plan (every image, no fine-tuning, nothing stood in) is evaluated in full
    full = build_candidate(**common, plan=plan, out_dir=tmp_path / "c", stage="rung0", rung0_floor=2.0)
    assert full.fidelity == "full" and not full.unquantized and full.deployable.name == "model.int8.onnx"
    assert "validate-fp32" not in full.step_seconds
    # a floor the FP32 export clears: quantized as planned, after that one extra validation
    kept = build_candidate(**common, plan=plan, out_dir=tmp_path / "d", stage="rung0", val_images=2, rung0_floor=0.0)
    assert kept.fidelity == "rung0" and not kept.unquantized and kept.deployable.name == "model.int8.onnx"
    assert kept.stand_ins == {} and "validate-fp32" in kept.step_seconds
