from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from yolotune import CompressionPlan, PlanError, PruningConfig, QuantizationConfig, RecoveryConfig

GROUPS = ("backbone.0", "backbone.4", "neck.15", "head.cv2.0", "head.cv3.0")


def _plan() -> CompressionPlan:
    return CompressionPlan(
        pruning=PruningConfig(ratios={"backbone.4": 0.25, "head.cv2.0": 0.5}, importance="bn_scale", round_to=8),
        quantization=QuantizationConfig(
            default="int8",
            precision={"backbone.0": "fp32"},
            activation_type="int8",
            calibration_method="percentile",
            calibration_images=8,
            per_channel=False,
            shared_ranges=True,
        ),
        recovery=RecoveryConfig(epochs=2, lr=5e-4),
    )


def test_round_trips_through_json_yaml_and_files(tmp_path: Path) -> None:
    plan = _plan()
    assert CompressionPlan.from_json(plan.to_json()) == plan
    assert CompressionPlan.from_yaml(plan.to_yaml()) == plan
    assert CompressionPlan.load(plan.save(tmp_path / "p.json")) == plan
    assert CompressionPlan.load(plan.save(tmp_path / "p.yaml")) == plan
    assert hash(plan) == hash(CompressionPlan.from_json(plan.to_json()))  # frozen and hashable
    # the recipe `tune export` writes beside plan.yaml holds the plan too, among the study's records
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"study": "s", "trial": 3, "job": {"imgsz": 320}, "plan": plan.to_dict()}))
    assert CompressionPlan.load(recipe) == plan


def test_a_plan_file_that_is_not_utf8_text_is_refused_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "plan.yaml"
    bad.write_bytes(b"\xff\xfe\x00quantization: {}")
    with pytest.raises(
        PlanError, match=rf"^plan file {re.escape(str(bad))} cannot be read as UTF-8 text \(UnicodeDecodeError\)"
    ):
        CompressionPlan.load(bad)


def test_plan_is_immutable() -> None:
    plan = _plan()
    with pytest.raises(AttributeError):
        plan.recovery = RecoveryConfig()  # type: ignore[misc]


def test_accessors_and_defaults() -> None:
    plan = _plan()
    assert plan.pruning.ratio("backbone.4") == 0.25
    assert plan.pruning.ratio("neck.15") == 0.0
    assert plan.quantization.precision_of("backbone.0") == "fp32"
    assert plan.quantization.precision_of("neck.15") == "int8"
    # the Detect decode stays float unless the plan names it
    assert plan.quantization.precision_of("head.decode") == "fp32"
    assert QuantizationConfig(default="int8", precision={"head.decode": "int8"}).precision_of("head.decode") == "int8"
    assert not CompressionPlan().pruning.active and not CompressionPlan().quantization.active


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pruning": {"ratios": {"backbone.4": 0.95}}}, "must lie in [0, 0.9]"),
        ({"pruning": {"ratios": {"backbone.4": -0.1}}}, "must lie in [0, 0.9]"),
        ({"pruning": {"ratios": {"head.decode": 0.1}}}, "cannot be pruned"),
        ({"pruning": {"round_to": 4}}, "round_to must be one of 1, 8, 16"),
        ({"pruning": {"round_to": 8.0}}, "round_to must be a whole number, one of 1, 8, 16; got 8.0"),
        ({"pruning": {"round_to": True}}, "round_to must be a whole number, one of 1, 8, 16; got True"),
        ({"pruning": []}, "plan section 'pruning' must be a mapping of its settings (key: value); got []"),
        ({"quantization": "int8"}, "plan section 'quantization' must be a mapping"),
        ({"recovery": 0}, "plan section 'recovery' must be a mapping"),
        ({"pruning": {"importance": "taylor"}}, "importance must be one of"),
        ({"quantization": {"default": "int4"}}, "default precision must be one of"),
        ({"quantization": {"calibration_method": "mse"}}, "calibration_method must be one of"),
        ({"quantization": {"calibration_images": 0}}, "positive integer"),
        ({"quantization": {"shared_ranges": "yes"}}, "shared_ranges must be true or false"),
        ({"recovery": {"epochs": -1}}, "epochs must be an integer"),
        ({"pruning": {"ratio": {}}}, "unknown key(s) ['ratio'] in 'pruning'"),
        ({"prune": {}}, "unknown plan section"),
    ],
)
def test_invalid_plans_fail_at_construction(kwargs: dict, message: str) -> None:
    with pytest.raises(PlanError) as info:
        CompressionPlan.from_dict(kwargs)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_group_lists_the_valid_ones() -> None:
    plan = CompressionPlan.from_dict({"pruning": {"ratios": {"backbone.99": 0.2}}})
    with pytest.raises(PlanError) as info:
        plan.check(groups=GROUPS, n_train_images=50)
    msg = str(info.value)
    assert "'backbone.99'" in msg
    assert "valid groups: backbone.0, backbone.4, neck.15, head.cv2.0, head.cv3.0" in msg


def test_calibration_count_bounded_by_training_split() -> None:
    plan = CompressionPlan.from_dict({"quantization": {"default": "int8", "calibration_images": 64}})
    with pytest.raises(PlanError, match="training split holds 50 images"):
        plan.check(groups=GROUPS, n_train_images=50)
    plan.check(groups=GROUPS, n_train_images=64)
    # an FP32 plan does not calibrate, so the count does not matter
    CompressionPlan.from_dict({"quantization": {"calibration_images": 64}}).check(groups=GROUPS, n_train_images=4)
    # nor does an FP16 plan: only INT8 layers calibrate (coco8 holds 4 training images)
    CompressionPlan(quantization=QuantizationConfig(default="fp16")).check(groups=GROUPS, n_train_images=4)
    fp16_some = CompressionPlan(quantization=QuantizationConfig(precision={"neck.15": "fp16"}, calibration_images=64))
    fp16_some.check(groups=GROUPS, n_train_images=4)
    mixed = CompressionPlan(quantization=QuantizationConfig(default="fp16", precision={"neck.15": "int8"}))
    with pytest.raises(
        PlanError, match=r"calibration_images is 32 \(also the default when unset\) but the training split"
    ):
        mixed.check(groups=GROUPS, n_train_images=4)


def test_brief_names_the_plan() -> None:
    assert _plan().brief() == "prune 2 group(s) ≤50% bn_scale/8 · fp32/int8 s8 percentile×8 shared · ft 2ep"
    assert CompressionPlan().brief() == "fp32"
    example = CompressionPlan(
        pruning=PruningConfig(ratios={"backbone.0": 0.3, "backbone.4": 0.2, "neck.15": 0.1}, round_to=16),
        quantization=QuantizationConfig(default="int8"),
        recovery=RecoveryConfig(method="ls", epochs=2),
    )
    assert example.brief() == "prune 3 group(s) ≤30% l2/16 · int8 u8 minmax×32 · ls×32 · ft 2ep"  # the docstring's


def test_brief_with_the_models_groups_shows_mixed_precision() -> None:
    uniform = CompressionPlan(quantization=QuantizationConfig(default="int8"))
    some = CompressionPlan(quantization=QuantizationConfig(precision={"neck.15": "int8"}))
    every = CompressionPlan(quantization=QuantizationConfig(precision=dict.fromkeys(GROUPS, "int8")))
    assert uniform.brief(groups=GROUPS) == every.brief(groups=GROUPS) == "int8 u8 minmax×32"
    # every group but neck.15 is fp32: it does not read like the uniform INT8 plan
    assert some.brief(groups=GROUPS) == "fp32/int8 u8 minmax×32"
    all_named_fp32 = CompressionPlan(
        quantization=QuantizationConfig(default="int8", precision=dict.fromkeys(GROUPS, "fp32"))
    )
    assert all_named_fp32.brief(groups=GROUPS) == "fp32"
    assert _plan().brief(groups=GROUPS) == _plan().brief()  # default int8, backbone.0 fp32
    # without the groups, the summary is what it always was
    assert some.brief() == uniform.brief() == "int8 u8 minmax×32"


@pytest.mark.parametrize("method", ["bn", "bias", "ls"])
def test_recovery_methods_round_trip_and_old_plans_still_load(method: str, tmp_path: Path) -> None:
    plan = CompressionPlan.from_dict(
        {"pruning": {"ratios": {"backbone.4": 0.25}}, "recovery": {"method": method, "images": 16}}
    )
    assert plan.recovery.post_training and plan.recovery.method == method
    assert CompressionPlan.from_json(plan.to_json()) == plan
    assert CompressionPlan.load(plan.save(tmp_path / "p.json")) == plan
    assert CompressionPlan.from_yaml(plan.to_yaml()).recovery.method == method
    # a plan recorded before the new methods existed (no images/epochs/lr keys) still loads
    old = CompressionPlan.from_json('{"pruning": {"ratios": {"backbone.4": 0.25}}, "recovery": {"method": "bn"}}')
    assert old.recovery == RecoveryConfig(method="bn")
    with pytest.raises(PlanError, match="recovery method"):
        CompressionPlan.from_dict({"recovery": {"method": "lsq"}})


def test_distillation_is_part_of_the_plan() -> None:
    plan = CompressionPlan.from_dict({"recovery": {"epochs": 2, "distill": True}})
    assert CompressionPlan.from_json(plan.to_json()) == plan and "ft 2ep kd" in plan.brief()
    assert CompressionPlan.from_dict({"recovery": {"epochs": 2}}).recovery.distill is False  # older plans
    with pytest.raises(PlanError, match="distill must be true or false"):
        CompressionPlan.from_dict({"recovery": {"distill": "yes"}})
    with pytest.raises(PlanError, match=r"distill happens while fine-tuning: set recovery.epochs ≥ 1"):
        CompressionPlan.from_dict({"recovery": {"distill": True}})


def test_plans_recorded_before_shared_ranges_load_with_separate_ranges() -> None:
    old = CompressionPlan.from_json('{"quantization": {"default": "int8", "per_channel": true}}')
    assert old.quantization.shared_ranges is False
    assert "shared" not in old.brief()
    # an FP32 plan has no ranges to share, and its summary says nothing about them
    assert CompressionPlan.from_dict({"quantization": {"shared_ranges": True}}).brief() == "fp32"


def test_effective_plans_drop_settings_that_change_nothing_built() -> None:
    unpruned = CompressionPlan.from_dict(
        {"pruning": {"importance": "bn_scale", "round_to": 16}, "recovery": {"method": "ls", "images": 8, "lr": 0.01}}
    )
    assert unpruned.effective() == CompressionPlan()
    fp32 = CompressionPlan.from_dict({"quantization": {"calibration_method": "percentile", "shared_ranges": True}})
    assert fp32.effective() == CompressionPlan()
    # what does change the model is kept
    for plan in (
        _plan(),
        CompressionPlan.from_dict({"quantization": {"default": "int8", "shared_ranges": True}}),
        CompressionPlan.from_dict({"pruning": {"ratios": {"backbone.4": 0.2}, "importance": "activation"}}),
        CompressionPlan.from_dict({"recovery": {"epochs": 1, "distill": True}}),
    ):
        assert plan.effective() == plan
    pruned = CompressionPlan.from_dict({"pruning": {"ratios": {"backbone.4": 0.2}}, "recovery": {"images": 8}})
    assert pruned.effective().recovery.images == 32  # no recovery and L2 ranking: the images are unused
    ranked = CompressionPlan.from_dict(
        {"pruning": {"ratios": {"backbone.4": 0.2}, "importance": "activation"}, "recovery": {"images": 8}}
    )
    assert ranked.effective().recovery.images == 8  # activation ranking looks at them
    # a group pruned by 0, or named with the precision it has unnamed, builds what leaving it out builds
    named = CompressionPlan(
        pruning=PruningConfig(ratios={"backbone.0": 0.0, "backbone.4": 0.2}),
        quantization=QuantizationConfig(default="int8", precision={"neck.15": "int8", "head.decode": "fp32"}),
    )
    left_out = CompressionPlan(
        pruning=PruningConfig(ratios={"backbone.4": 0.2}), quantization=QuantizationConfig(default="int8")
    )
    assert named != left_out and named.effective() == left_out.effective()
    decode_int8 = QuantizationConfig(default="int8", precision={"head.decode": "int8"})
    assert CompressionPlan(quantization=decode_int8).effective().quantization == decode_int8


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: PruningConfig(ratios="backbone.1"), "pruning ratios must map layer-group names to values"),
        (lambda: PruningConfig(ratios=None), "pruning ratios must map layer-group names to values"),
        (lambda: PruningConfig(ratios=[("backbone.1", 0.1, 2)]), "pruning ratios must map layer-group names"),
        (lambda: QuantizationConfig(precision=["neck.12"]), "quantization precision must map layer-group names"),
        (lambda: PruningConfig(ratios=[("neck.12", 0.1), ("neck.12", 0.5)]), "names 'neck.12' more than once"),
        (lambda: CompressionPlan(pruning={"ratios": {"neck.12": 0.2}}), "pruning must be a PruningConfig"),
        (lambda: CompressionPlan(recovery="bn"), "recovery must be a RecoveryConfig; got 'bn'"),
        (lambda: RecoveryConfig(lr="1e-4"), "got the string '1e-4' (write it as a number: 1e-4 or 0.0001)"),
    ],
)
def test_sections_built_by_hand_are_checked_in_one_line(build: Any, message: str) -> None:
    with pytest.raises(PlanError) as info:
        build()
    assert message in str(info.value) and "\n" not in str(info.value)


def test_numpy_numbers_and_yaml_exponents_are_numbers() -> None:
    import numpy as np

    plan = CompressionPlan(
        pruning=PruningConfig(ratios={"backbone.4": np.float32(0.25), "neck.15": np.float64(0.5)}),
        recovery=RecoveryConfig(epochs=1, lr=np.float32(0.001)),
    )
    assert all(type(r) is float for _, r in plan.pruning.ratios) and type(plan.recovery.lr) is float
    assert CompressionPlan.from_json(plan.to_json()) == plan
    # YAML 1.2 (and JSON) read 1e-4 as a number; PyYAML's YAML 1.1 alone would read a string
    assert CompressionPlan.from_yaml("recovery: {epochs: 1, lr: 1e-4}\n").recovery.lr == 1e-4
    assert CompressionPlan.from_yaml("recovery: {epochs: 1, lr: 1.0e-4}\n").recovery.lr == 1e-4
    assert CompressionPlan.from_yaml("recovery: {epochs: 1, lr: .5E-3}\n").recovery.lr == 5e-4
