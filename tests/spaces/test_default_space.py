from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from yolotune import PlanError
from yolotune.spaces import CompressionPlan, DefaultSpace, coarse_units

GROUPS = ("backbone.0", "backbone.1", "backbone.2", "backbone.3", "neck.12", "head.cv2.0", "head.cv3.0")


def test_coarse_units_cover_every_group_once() -> None:
    units = coarse_units(GROUPS)
    assert list(units) == ["backbone.early", "backbone.late", "neck", "head.box", "head.cls"]
    members = [g for gs in units.values() for g in gs]
    assert sorted(members) == sorted(GROUPS)


def test_recorded_params_rebuild_the_plan_exactly() -> None:
    space = DefaultSpace(groups=GROUPS, max_calibration_images=50)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(20):
        trial = study.ask()
        plan = space(trial)
        assert isinstance(plan, CompressionPlan)
        assert space(optuna.trial.FixedTrial(trial.params)) == plan
        assert plan.quantization.calibration_images <= 50
        assert all(0 < r <= 0.6 for _, r in plan.pruning.ratios)
        study.tell(trial, [0.0, 0.0])


def test_space_asks_only_for_the_target_precisions_and_no_pruning_is_a_value() -> None:
    space = DefaultSpace(groups=GROUPS, precisions=("fp32",), fine=True)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    unpruned = 0
    seen_zero = False
    for _ in range(200):
        trial = study.ask()
        plan = space(trial)
        assert plan.quantization.precisions == {"fp32"}
        unpruned += not plan.pruning.active
        if trial.params["prune/enabled"]:
            seen_zero |= any(trial.params[f"prune/{g}"] == 0.0 for g in GROUPS)
        else:
            assert not any(f"prune/{g}" in trial.params for g in GROUPS)
        study.tell(trial, 0.0)
    assert seen_zero
    assert 0.35 <= unpruned / 200 <= 0.65  # about half the plans prune nothing


def test_reference_trials() -> None:
    space = DefaultSpace(groups=GROUPS)
    refs = {name: space(optuna.trial.FixedTrial(p)) for name, p in space.reference_params().items()}
    assert (
        refs["fp32"] == CompressionPlan(quantization=refs["fp32"].quantization)
        and not refs["fp32"].quantization.active
        and not refs["fp32"].pruning.active
    )
    assert refs["int8"].quantization.active and not refs["int8"].pruning.active
    assert not any(r.quantization.shared_ranges for r in refs.values())  # references keep ORT's own ranges
    seeds = refs["seeds"]
    assert all(seeds.pruning.ratio(g) == 0.3 for g in GROUPS) and seeds.pruning.importance == "bn_scale"
    assert seeds.recovery.epochs > 0 and seeds.quantization.active
    # without training labels the seeds' recipe cannot fine-tune: it would score 0.000 for sure, so it is not run
    unlabelled = DefaultSpace(groups=GROUPS, fine_tune=False)
    assert set(unlabelled.reference_params()) == set(unlabelled.reference_plans()) == {"fp32", "int8"}


def test_pruned_plans_sample_every_recovery_method() -> None:
    space = DefaultSpace(groups=GROUPS, max_calibration_images=50)
    params = {"prune/enabled": True, "prune/backbone.late": 0.2}
    methods = set()
    for method in ("none", "bn", "bias", "ls"):
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        study.enqueue_trial({**params, "recover/method": method})
        plan = space(study.ask())
        assert plan.pruning.active and plan.recovery.method == method
        methods.add(plan.recovery.method)
    assert space.recovery_methods == ("none", "bn", "bias", "ls") and len(methods) == 4


def test_prune_groups_limit_pruning_to_those_groups_each_with_its_own_ratio() -> None:

    space = DefaultSpace(groups=GROUPS, prune_groups=("head.cv3.0", "backbone.1"))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    pruned_groups: set[str] = set()
    for _ in range(60):
        trial = study.ask()
        plan = space(trial)
        assert {g for g, _ in plan.pruning.ratios} <= {"head.cv3.0", "backbone.1"}
        pruned_groups |= {g for g, _ in plan.pruning.ratios}
        assert not any(k.startswith("prune/") and k[6:] in ("backbone.early", "neck") for k in trial.params)
        assert {g for g, _ in plan.quantization.precision} == set(GROUPS)  # precision still covers every group
        assert space(optuna.trial.FixedTrial(trial.params)) == plan
        study.tell(trial, 0.0)
    assert pruned_groups == {"head.cv3.0", "backbone.1"}
    # no group tolerates pruning: the space does not even ask whether to prune
    none = DefaultSpace(groups=GROUPS, prune_groups=())
    trial = study.ask()
    assert not none(trial).pruning.active and "prune/enabled" not in trial.params
    with pytest.raises(PlanError, match=r"prune_groups names groups the model lacks: model\.99"):
        DefaultSpace(groups=GROUPS, prune_groups=("model.99",))
    with pytest.raises(PlanError, match="prune_groups must be a list"):
        DefaultSpace.from_options(
            {"prune_groups": "neck.12"}, groups=GROUPS, precisions=("int8",), max_calibration_images=8
        )


def test_space_asks_only_for_the_target_activation_types_and_references_use_its_fast_one() -> None:
    space = DefaultSpace(groups=GROUPS, activations=("uint8",))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        assert space(study.ask()).quantization.activation_type == "uint8"
    assert space.reference_plans()["int8"].quantization.activation_type == "uint8"
    tensorrt = DefaultSpace(groups=GROUPS, precisions=("int8", "fp16", "fp32"), activations=("int8",))
    assert tensorrt.reference_plans()["int8"].quantization.activation_type == "int8"
    # a space file asks for activations the target does not run: one line naming both
    common = {"groups": GROUPS, "precisions": ("int8", "fp32"), "max_calibration_images": 8}
    narrowed = DefaultSpace.from_options({}, **common, activations=("uint8",))
    assert narrowed.activations == ("uint8",)
    with pytest.raises(PlanError, match="space asks for int8 activations; the target runs INT8 layers with uint8"):
        DefaultSpace.from_options({"activations": ["uint8", "int8"]}, **common, activations=("uint8",))


def test_space_samples_shared_concat_ranges_unless_narrowed() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space = DefaultSpace(groups=GROUPS)
    seen = {space(study.ask()).quantization.shared_ranges for _ in range(40)}
    assert seen == {False, True}
    narrowed = DefaultSpace.from_options(
        {"shared_ranges": False}, groups=GROUPS, precisions=("int8", "fp32"), max_calibration_images=64
    )
    other = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    assert not any(narrowed(other.ask()).quantization.shared_ranges for _ in range(20))
    with pytest.raises(PlanError, match="shared_ranges must be a non-empty list of true/false"):
        DefaultSpace.from_options(
            {"shared_ranges": "no"}, groups=GROUPS, precisions=("int8",), max_calibration_images=8
        )


def test_one_precision_for_the_whole_model_is_a_first_class_value() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space = DefaultSpace(groups=GROUPS)
    plans = []
    for _ in range(200):
        trial = study.ask()
        plan = space(trial)
        plans.append((trial.params, plan))
        study.tell(trial, 0.0)
    uniform = [(params, plan) for params, plan in plans if params["quant/uniform"]]
    assert 0.35 <= len(uniform) / len(plans) <= 0.65
    for params, plan in uniform:
        assert {p for _, p in plan.quantization.precision} == {params["quant/all"]}
        assert not any(
            k.startswith("quant/") and k not in ("quant/uniform", "quant/all", "quant/activation") for k in params
        )
    # every unit INT8: a quarter of all plans, against 1 in 32 drawn unit by unit over five units
    assert sum({p for _, p in plan.quantization.precision} == {"int8"} for _, plan in plans) >= 40
    # narrowed to per-unit draws, the space never asks
    per_unit = DefaultSpace.from_options(
        {"uniform_precision": [False]}, groups=GROUPS, precisions=("int8", "fp32"), max_calibration_images=64
    )
    other = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = other.ask()
    per_unit(trial)
    assert "quant/all" not in trial.params and "quant/neck" in trial.params


def _from(options: dict[str, object]) -> DefaultSpace:
    return DefaultSpace.from_options(options, groups=GROUPS, precisions=("int8", "fp32"), max_calibration_images=64)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"calibration_sizes": [-4]}, r"calibration_sizes must be a non-empty list of whole numbers ≥ 1; got \[-4\]"),
        ({"calibration_sizes": [0, 8]}, r"calibration_sizes must be .* ≥ 1; got \[0, 8\]"),
        ({"calibration_sizes": []}, r"calibration_sizes must be a non-empty list"),
        ({"calibration_sizes": [8.5]}, r"calibration_sizes must be a non-empty list of whole numbers"),
        ({"epochs": [-1]}, r"epochs must be a non-empty list of whole numbers ≥ 0; got \[-1\]"),
        ({"epochs": []}, r"epochs must be a non-empty list"),
    ],
)
def test_calibration_sizes_are_positive_and_epochs_not_negative(options: dict[str, object], message: str) -> None:
    with pytest.raises(PlanError, match=message):
        _from(options)


def test_epochs_zero_and_one_calibration_image_are_accepted() -> None:
    space = _from({"epochs": [0], "calibration_sizes": [1]})
    assert space.epoch_choices() == (0,) and space.calibration_choices() == (1,)


@pytest.mark.parametrize(
    ("units", "message"),
    [
        ({}, r"units must name at least one unit, each with a non-empty list of layer groups"),
        ({"a": []}, r"space unit a has no layer groups"),
        ({"a": ["backbone.0"], "b": ["backbone.0"]}, r"layer group backbone\.0 is in both units a and b"),
        ({"a": ["backbone.0", "backbone.0"]}, r"unit a lists layer group backbone\.0 twice"),
        ({"a": "backbone.0"}, r"units must map each unit name to a list of layer groups; unit a has 'backbone\.0'"),
        ({"a": ["backbone.0", 3]}, r"units must map each unit name to a list of layer groups"),
        (["backbone.0"], r"units must map each unit name to a list of layer groups"),
        ({"uniform": ["backbone.0"], "b": ["neck.12"]}, r"space unit name uniform is reserved"),
        ({"a": ["backbone.99"]}, r"space units name groups the model lacks: backbone\.99"),
    ],
)
def test_explicit_units_name_each_group_once(units: object, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        _from({"units": units})


def test_explicit_units_are_searched_and_the_same_checks_hold_without_a_file() -> None:
    space = _from({"units": {"early": ["backbone.0", "backbone.1"], "head": ["head.cv3.0"]}})
    assert space.units() == {"early": ("backbone.0", "backbone.1"), "head": ("head.cv3.0",)}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    plan = space(trial)
    assert {g for g, _ in plan.quantization.precision} == {"backbone.0", "backbone.1", "head.cv3.0"}
    assert space(optuna.trial.FixedTrial(trial.params)) == plan
    with pytest.raises(PlanError, match=r"layer group neck\.12 is in both units a and b"):
        DefaultSpace(groups=GROUPS, units_=(("a", ("neck.12",)), ("b", ("neck.12",))))
    with pytest.raises(PlanError, match="units must name at least one unit"):
        DefaultSpace(groups=GROUPS, units_=())
    with pytest.raises(PlanError, match="space unit a is named twice"):
        DefaultSpace(groups=GROUPS, units_=(("a", ("neck.12",)), ("a", ("backbone.0",))))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("calibration_sizes: [-4]\n", r"calibration_sizes must be a non-empty list of whole numbers ≥ 1; got \[-4\]"),
        ("calibration_sizes: [0]\n", r"calibration_sizes must be .* ≥ 1; got \[0\]"),
        ("units: {}\n", "units must name at least one unit"),
        ("units: {a: [backbone.0], b: [backbone.0]}\n", r"layer group backbone\.0 is in both units a and b"),
        ("units: {a: backbone.0}\n", r"units must map each unit name to a list of layer groups; unit a has"),
    ],
)
def test_space_files_refuse_meaningless_options_up_front(tmp_path: Path, text: str, message: str) -> None:
    from yolotune.search import load_space

    f = tmp_path / "space.yaml"
    f.write_text(text)
    with pytest.raises(PlanError, match=message):
        load_space(str(f), default=DefaultSpace(groups=GROUPS, max_calibration_images=64))


def test_list_arguments_become_tuples_so_the_space_is_hashable_and_immutable() -> None:
    space = DefaultSpace(
        groups=["backbone.0", "neck.12"],  # type: ignore[arg-type]
        precisions=["int8", "fp32"],  # type: ignore[arg-type]
        prune_groups=["neck.12"],  # type: ignore[arg-type]
        calibration_sizes=[8, 16],  # type: ignore[arg-type]
        units_=[("a", ["backbone.0"]), ("b", ["neck.12"])],  # type: ignore[arg-type]
    )
    same = DefaultSpace(
        groups=("backbone.0", "neck.12"),
        precisions=("int8", "fp32"),
        prune_groups=("neck.12",),
        calibration_sizes=(8, 16),
        units_=(("a", ("backbone.0",)), ("b", ("neck.12",))),
    )
    assert space == same and hash(space) == hash(same)
    assert space.precisions == ("int8", "fp32") and space.units() == {"a": ("backbone.0",), "b": ("neck.12",)}
    with pytest.raises(AttributeError):  # a tuple: no append that would bypass the checks
        space.precisions.append("int4")  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        space.precisions = ("int4",)  # type: ignore[misc]
    assert DefaultSpace(groups=GROUPS, units_={"a": ["neck.12"]}).units() == {"a": ("neck.12",)}  # type: ignore[arg-type]
    # what the tuples hold is still checked, and a bare string is not a list
    with pytest.raises(PlanError, match=r"precisions must be a non-empty subset of .*got \['int4'\]"):
        DefaultSpace(groups=GROUPS, precisions=["int4"])  # type: ignore[arg-type]
    with pytest.raises(PlanError, match=r"^space option precisions must be a list; got 'int8'$"):
        DefaultSpace(groups=GROUPS, precisions="int8")  # type: ignore[arg-type]
    with pytest.raises(PlanError, match=r"space units must be \(unit, \(group, \.\.\.\)\) pairs; got 'a'"):
        DefaultSpace(groups=GROUPS, units_=["a"])  # type: ignore[arg-type]


def test_the_docstring_names_the_fields_it_documents() -> None:
    import dataclasses

    doc = DefaultSpace.__doc__ or ""
    for f in dataclasses.fields(DefaultSpace):
        assert f"        {f.name}: " in doc, f.name
