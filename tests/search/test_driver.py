from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from yolotune import SearchStopped, YolotuneError
from yolotune.search import CandidateSettings, SearchConfig, plan_of, run_search, search_spaces
from yolotune.search._candidate import file_digest
from yolotune.spaces import CompressionPlan
from yolotune.studies import export_trial, load_study, pareto_front


def _dominates(a: list[float], b: list[float]) -> bool:
    better_or_equal = a[0] >= b[0] and a[1] <= b[1] and a[2] <= b[2]
    return better_or_equal and a != b


def test_search_completes_trials_yields_a_front_and_resumes(coco8_search) -> None:
    config = coco8_search(budget=4)
    opened: list[optuna.Study] = []
    study = run_search(config, on_open=opened.append)
    assert [s.study_name for s in opened] == [study.study_name]
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 4
    assert [t.user_attrs.get("reference") for t in complete[:3]] == ["fp32", "int8", "seeds"]
    assert study.metric_names == ["mAP50-95", "size MB", "latency ms"]
    front = study.best_trials
    assert front
    for t in front:
        assert not any(_dominates(o.values, t.values) for o in complete)
        assert Path(t.user_attrs["artifact"]).is_file()
    # the study records what timed it, and the INT8 weight width its trials were built with for that CPU
    from yolotune.evaluators import int8_saturates
    from yolotune.evaluators._device import cpu_name

    assert study.user_attrs["timed_on"] == {"device": cpu_name(), "int8_weight_bits": 7 if int8_saturates() else 8}
    int8 = json.loads((Path(complete[1].user_attrs["artifact"]).parent / "metrics.json").read_text())
    assert int8["quantize"]["weight_bits"] == study.user_attrs["timed_on"]["int8_weight_bits"]
    # a told trial keeps its deployable file, and a checkpoint only of a plan that pruned or fine-tuned
    kept = {
        t.user_attrs["reference"]: sorted(p.name for p in Path(t.user_attrs["artifact"]).parent.glob("model.*"))
        for t in complete[:3]
    }
    assert kept == {"fp32": ["model.onnx"], "int8": ["model.int8.onnx"], "seeds": ["model.int8.onnx", "model.pt"]}
    # a recorded trial's params rebuild its plan

    space = search_spaces(config)[0]
    for t in complete:
        assert space(optuna.trial.FixedTrial(t.params)) == plan_of(t)

    # the same command with a larger budget resumes the same study
    again = run_search(SearchConfig(**{**config.__dict__, "budget": 5}))
    after = again.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(after) == 5
    assert [t.values for t in after[:4]] == [t.values for t in complete]


def test_refused_candidates_are_recorded_as_failed_and_the_search_goes_on(tmp_path: Path) -> None:
    # a calibration budget no INT8 plan fits: every INT8 candidate is refused, FP32 ones complete
    settings = CandidateSettings(imgsz=160, calibration_memory_gb=0.01)
    config = SearchConfig(model="yolov8n-coco.pt", data="coco8", budget=2, settings=settings, root=tmp_path)
    # ... until too many have failed: then it stops, saying why, with what it measured kept
    last = r"stopped after 2 failed candidate\(s\), 1 of 2 evaluated; the last failed with: .*over the 0\.01 GB budget"
    with pytest.raises(SearchStopped, match=last) as stopped:
        run_search(config, max_failures=2)
    study = stopped.value.study
    failed = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 1 and complete[0].user_attrs["reference"] == "fp32"
    assert len(failed) == 2 and all("over the 0.01 GB budget" in t.user_attrs["fail_reason"] for t in failed)
    assert [t.user_attrs["reference"] for t in failed] == ["int8", "seeds"]
    for t in failed:  # the models they built before failing (FP32 ONNX, checkpoint) are gone: their plan stays
        folder = tmp_path / config.name / "trials" / str(t.number)
        assert [p.name for p in folder.iterdir()] == ["plan.yaml"]
        assert CompressionPlan.load(folder / "plan.yaml").to_dict() == t.user_attrs["plan"]
    # the budget fixed, the same command again: the failed references run first, even past the budget
    fixed = dataclasses.replace(config, settings=CandidateSettings(imgsz=160), retime_rounds=0)
    study = run_search(fixed)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert [t.user_attrs.get("reference") for t in complete] == ["fp32", "int8", "seeds"]
    # and not again once they have completed: the budget is met
    assert len(run_search(fixed).get_trials(deepcopy=False)) == len(study.get_trials(deepcopy=False))


def test_failures_of_the_machine_not_the_plan_are_told_apart_by_their_reason() -> None:
    from yolotune.search._driver import _environment_failure

    # as a Ray worker's failure arrives: text only
    unwritable = _environment_failure("load failed: [Errno 13] Permission denied: '/s/trials/4/plan.yaml'")
    assert unwritable is not None
    assert unwritable.startswith("a file or folder cannot be accessed (load failed: [Errno 13] Permission denied")
    assert _environment_failure("validate failed: (sqlite3.OperationalError) database or disk is full")
    assert _environment_failure("quantize failed: calibration needs 3.1 GB, over the 2 GB budget") is None


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_a_full_disk_stops_the_search_at_once_and_the_same_command_resumes(coco8_search) -> None:
    from yolotune.studies._storage import study_dir

    config = coco8_search(budget=3)
    # the INT8 reference's first file lands on a full disk (writes to /dev/full fail with ENOSPC)
    plan_file = study_dir(config.root, config.name) / "trials" / "1" / "plan.yaml"
    plan_file.parent.mkdir(parents=True)
    plan_file.symlink_to("/dev/full")
    with pytest.raises(SearchStopped, match=r"a disk is full \(.*No space left on device.*\): free some space") as info:
        run_search(config)
    study = info.value.study
    failed = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    # one failure, not the whole budget spent failing the same way; its plan is queued again
    assert [t.number for t in failed] == [1]
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert sorted(t.user_attrs.get("reference") for t in waiting) == ["int8", "seeds"]
    assert not plan_file.parent.exists()  # its partial files went: they only took space on the full disk
    # (the "space freed" here); the same command resumes and runs the INT8 reference
    study = run_search(config)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert sorted(t.user_attrs.get("reference") for t in complete) == ["fp32", "int8", "seeds"]


def test_a_model_that_detects_nothing_stops_the_search_after_its_fp32_reference(tmp_path: Path, coco8_search) -> None:
    import torch
    from ultralytics.nn.tasks import DetectionModel

    from yolotune.compression import ultralytics_adapter as adapter

    torch.manual_seed(0)  # an untrained detector, saved as a checkpoint like a trained one
    checkpoint = adapter.save_checkpoint(DetectionModel("yolov8n.yaml", verbose=False).eval(), tmp_path / "new.pt")
    config = coco8_search(model=str(checkpoint), budget=4)
    with pytest.raises(SearchStopped, match=r"0\.000 .* untrained, trained for other data, or run at an") as info:
        run_search(config)
    study = info.value.study
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert [t.user_attrs["reference"] for t in complete] == ["fp32"]  # measured and kept, nothing built after it
    # the same command again stops before any work
    with pytest.raises(SearchStopped, match="untrained"):
        run_search(config)
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 1
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))


def test_constraints_keep_infeasible_trials_visible_but_off_the_front(small_study: tuple[Path, str, str]) -> None:
    from yolotune.search import constraints_of
    from yolotune.studies import load_study, pareto_front

    root, name, _ = small_study
    study = load_study(study=name, root=root)
    assert constraints_of(study) == {"max_map_drop": 0.05, "max_latency_ms": None}
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 4
    base = next(t for t in complete if t.user_attrs.get("reference") == "fp32").values[0]
    for t in complete:
        assert t.constraints["map_drop"] == pytest.approx((base - t.values[0]) - 0.05)
    infeasible = [t.number for t in complete if t.constraints["map_drop"] > 0]
    # the seeds' recipe destroys this model's accuracy (field notes): it is recorded, not reported
    seeds = next(t for t in complete if t.user_attrs.get("reference") == "seeds")
    assert seeds.number in infeasible
    front = {r.number for r in pareto_front(study)}
    assert front and not front & set(infeasible)


#: A Python space drawing the calibration-set size from 2 or 4 images.
CALIBRATION_SPACE = (
    "from yolotune.spaces import CompressionPlan, QuantizationConfig\n"
    "def space(trial):\n"
    "    n = trial.suggest_categorical('calib/n', [2, 4])\n"
    "    return CompressionPlan(quantization=QuantizationConfig(default='int8', calibration_images=n))\n"
)


def test_a_space_whose_choices_change_between_trials_stops_the_search_in_one_line(tmp_path: Path, coco8_search) -> None:
    from yolotune.search._study import open_study_for_run

    source = tmp_path / "drifting.py"  # the same file, other choices after its first call (the first draw)
    source.write_text(
        "import itertools\n"
        "from yolotune.spaces import CompressionPlan, QuantizationConfig\n"
        "_calls = itertools.count()\n"
        "def space(trial):\n"
        "    choices = [2, 4] if next(_calls) == 0 else [2, 8]\n"
        "    n = trial.suggest_categorical('calib/n', choices)\n"
        "    return CompressionPlan(quantization=QuantizationConfig(default='int8', calibration_images=n))\n"
    )
    config = coco8_search(budget=3, space=f"{source}:space", study_name="drift")
    study, _, _ = open_study_for_run(config)
    dist = {"calib/n": optuna.distributions.CategoricalDistribution([2, 4])}
    study.add_trial(optuna.trial.create_trial(values=[0.3, 3.0, 5.0], params={"calib/n": 2}, distributions=dist))
    with pytest.raises(YolotuneError, match=r"gives a parameter other choices than this study's earlier trials had"):
        run_search(config)
    failed = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert len(failed) == 1 and "keep each parameter's choices fixed" in failed[0].user_attrs["fail_reason"]


def test_yaml_space_narrows_the_search_and_references_still_run(tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    # one unit: the stem only; every other layer stays at the plans' default, fp32
    space.write_text(
        "max_ratio: 0.0\nprecisions: [int8]\ncalibration_methods: [minmax]\ncalibration_sizes: [4]\n"
        "units: {stem: [backbone.0]}\n"
    )
    config = SearchConfig(
        model="yolov8n-coco.pt",
        data="coco8",
        budget=4,
        settings=CandidateSettings(imgsz=160),
        root=tmp_path,
        retime_rounds=0,  # re-timing is tested apart
        space=str(space),
        sampler="tpe",
    )
    study = run_search(config)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert [t.user_attrs.get("reference") for t in complete[:3]] == ["fp32", "int8", "seeds"]
    assert plan_of(complete[2]).pruning.active  # the seeds' recipe, though this space never prunes
    searched = plan_of(complete[3])
    assert not searched.pruning.active
    assert dict(searched.quantization.precision) == {"backbone.0": "int8"}
    assert searched.quantization.calibration_method == "minmax"
    # listed as the mixed plan it is, not like the all-INT8 reference
    assert complete[3].user_attrs["brief"].startswith("fp32/int8 ") and complete[1].user_attrs["brief"].startswith(
        "int8 "
    )


def test_a_python_space_edited_since_is_refused_and_older_records_still_resume(tmp_path: Path) -> None:
    from yolotune.search._study import open_study_for_run, space_digest

    source = tmp_path / "my_space.py"
    source.write_text(CALIBRATION_SPACE)
    base = {"model": "yolov8n-coco.pt", "data": "coco8", "budget": 2, "root": tmp_path, "study_name": "py"}
    config = SearchConfig(space=f"{source}:space", settings=CandidateSettings(imgsz=160), **base)
    study, _, _ = open_study_for_run(config)
    assert study.user_attrs["job"]["space_digest"] == space_digest(config.space) is not None
    source.write_text(source.read_text().replace("[2, 4]", "[2, 8]"))
    with pytest.raises(YolotuneError, match=r"another job \(space file .*my_space.py:space has changed since\)"):
        open_study_for_run(config)
    # a study recorded before Python spaces were digested resumes; so does one whose YAML space was digested by bytes
    study.set_user_attr("job", {**study.user_attrs["job"], "space_digest": None})
    open_study_for_run(config)
    yaml_space = tmp_path / "space.yaml"
    yaml_space.write_text("max_ratio: 0.3  # by bytes\n")
    narrowed = dataclasses.replace(config, space=str(yaml_space), study_name="yaml")
    older, _, _ = open_study_for_run(narrowed)
    older.set_user_attr("job", {**older.user_attrs["job"], "space_digest": space_digest(str(yaml_space), raw=True)})
    open_study_for_run(narrowed)
    # --fine: one unit per group in a YAML space too; a Python space has its own parameters
    with pytest.raises(YolotuneError, match=r"--fine makes one unit per layer group .* leave out --fine"):
        dataclasses.replace(config, fine=True)


def test_space_from_a_python_callable(tmp_path: Path) -> None:
    from yolotune.search import load_space
    from yolotune.spaces import DefaultSpace

    source = tmp_path / "my_space.py"
    source.write_text(CALIBRATION_SPACE)
    default = DefaultSpace(groups=("backbone.0",))
    space = load_space(f"{source}:space", default=default)
    plan = space(optuna.trial.FixedTrial({"calib/n": 4}))
    assert plan.quantization.default == "int8" and plan.quantization.calibration_images == 4
    with pytest.raises(YolotuneError, match="has no attribute 'nope'"):
        load_space(f"{source}:nope", default=default)
    with pytest.raises(YolotuneError, match=r"No module named 'my_space' .*name its file, my_space.py:space\)$"):
        load_space("my_space:space", default=default)  # a file elsewhere, named as a module
    # a space that returns something else, or fails, is found by one draw before any trial is recorded
    source.write_text(source.read_text() + "def as_dict(trial):\n    return {'quantization': {}}\n")
    source.write_text(source.read_text() + "def typo(trial):\n    return trial.suggest_int('n', 4)\n")
    with pytest.raises(YolotuneError, match=r"space '.*:as_dict' returned dict, not a CompressionPlan"):
        load_space(f"{source}:as_dict", default=default)
    with pytest.raises(YolotuneError, match=r"space '.*:typo' failed on a first draw: TypeError: "):
        load_space(f"{source}:typo", default=default)
    source.write_text(
        source.read_text() + "def other_model(trial):\n"
        "    return CompressionPlan.from_dict({'pruning': {'ratios': {'model.22': 0.2}}})\n"
    )
    with pytest.raises(
        YolotuneError, match=r"space '.*:other_model' drew a plan for another model: unknown pruning group 'model.22'"
    ):
        load_space(f"{source}:other_model", default=default)  # every trial would fail
    with pytest.raises(YolotuneError, match=r"space file .*missing\.yaml not found"):
        load_space(str(tmp_path / "missing.yaml"), default=default)
    (tmp_path / "bad.yaml").write_text("max_ratio: 0.3\nwidth: 2\n")
    with pytest.raises(YolotuneError, match="unknown space option"):
        load_space(str(tmp_path / "bad.yaml"), default=default)


def test_a_space_file_asking_for_what_the_data_cannot_give_says_what_it_samples(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from yolotune.search import load_space
    from yolotune.spaces import DefaultSpace

    def load(text: str, default: DefaultSpace) -> tuple[DefaultSpace, list[str]]:
        caplog.clear()
        (tmp_path / "space.yaml").write_text(text)
        with caplog.at_level("WARNING", logger="yolotune.search._spaces"):
            space = load_space(str(tmp_path / "space.yaml"), default=default)
        assert isinstance(space, DefaultSpace)
        return space, [r.getMessage() for r in caplog.records]

    default = DefaultSpace(groups=("backbone.0",), max_calibration_images=50)
    space, said = load("calibration_sizes: [16, 64, 128]\n", default)
    assert space.calibration_choices() == (16,) and said == [
        f"space file {tmp_path / 'space.yaml'}: calibration_sizes 64, 128 exceed the 50 images calibration and "
        "recovery can use (the training split, at most 256); the search samples from [16]"
    ]
    assert load("calibration_sizes: [16, 32]\n", default)[1] == []
    # a training split without labels: epochs a space file asks for are said to be dropped
    unlabelled = DefaultSpace(groups=("backbone.0",), max_calibration_images=50, fine_tune=False)
    space, said = load("epochs: [1]\n", unlabelled)
    assert space.epoch_choices() == (0,) and said == [
        f"space file {tmp_path / 'space.yaml'}: epochs [1] are not searched: no plan fine-tunes on this data "
        "(its training split has no labels, or shares images with 'val')"
    ]


def test_a_rung0_subset_as_large_as_the_validation_split_or_too_small_to_decide_is_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = {"model": "yolov8n-coco.pt", "budget": 1, "root": tmp_path, "multi_fidelity": True}
    with caplog.at_level("WARNING", logger="yolotune.search._driver"):
        search_spaces(SearchConfig(data="tiny_coco", rung0_val=16, **base))  # 16 of 50 images: saves time
        search_spaces(SearchConfig(data="coco8", rung0_val=2, **base))  # a split of 4: no 16 to give
        assert caplog.records == []
        search_spaces(SearchConfig(data="coco8", rung0_val=9, **base))
        search_spaces(SearchConfig(data="coco8", rung0_val=9, **base))  # a run loads its space more than once
        search_spaces(SearchConfig(data="tiny_coco", rung0_val=8, **base))
    assert [r.getMessage() for r in caplog.records] == [
        "--rung0-val 9: the data has 4 validation images, so rung 0 validates on all of them and saves no "
        "validation time; give fewer",
        "--rung0-val 8: rung 0's mAP on so few images decides promotions on noise (measured on tiny_coco: shifted "
        "estimates from 8-10 images were up to 0.07 off, from 16 within 0.02); give 16 or more, or leave out "
        "--rung0-val",
    ]


def test_a_plan_sampled_again_reuses_the_first_measurement(tmp_path: Path, coco8_search) -> None:
    from yolotune.studies import pareto_front, study_dir

    source = tmp_path / "one_plan.py"  # a space of one plan: every draw after the first is a duplicate
    source.write_text(
        "from yolotune.spaces import CompressionPlan\n"
        "def space(trial):\n"
        "    ratio = trial.suggest_categorical('neck.16', [0.25])\n"
        "    return CompressionPlan.from_dict({'pruning': {'ratios': {'neck.16': ratio}}})\n"
    )
    config = coco8_search(budget=6, space=f"{source}:space", max_map_drop=0.5)
    told: list[tuple[int, str, str]] = []
    study = run_search(config, on_trial=lambda o, st: told.append((o.number, o.state, o.reason)))
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 6  # three references, the plan, and the plan twice again
    first, *again = complete[3:]
    assert "duplicate_of" not in first.user_attrs
    trials = study_dir(tmp_path, study.study_name) / "trials"
    assert (trials / str(first.number)).is_dir()
    assert [t.user_attrs["duplicate_of"] for t in again] == [first.number, first.number]
    for t in again:
        assert t.values == first.values and t.constraints == first.constraints
        assert t.user_attrs["artifact"] == first.user_attrs["artifact"]  # what `tune export --trial` hands out
        assert not (trials / str(t.number)).exists()  # nothing was built for it
        assert (t.number, "COMPLETE", f"the plan of trial {first.number} again: its measurements are reused") in told
    assert not any(r.number in {t.number for t in again} for r in pareto_front(study))
    exported = export_trial(study, again[0].number, tmp_path / "export", remeasure=False)
    assert yaml.safe_load(exported.recipe.read_text())["feasible"] is True  # a duplicate, not infeasible
    assert exported.warnings == (
        f"trial {again[0].number} is trial {first.number}'s plan sampled again: its model file and measurements "
        f"are trial {first.number}'s",
    )


def test_plans_that_differ_only_in_settings_that_build_nothing_are_duplicates(tmp_path: Path, coco8_search) -> None:
    source = tmp_path / "criteria.py"  # the criterion of a plan that prunes nothing changes nothing
    source.write_text(
        "from yolotune.spaces import CompressionPlan\n"
        "def space(trial):\n"
        "    importance = trial.suggest_categorical('importance', ['l1', 'bn_scale'])\n"
        "    return CompressionPlan.from_dict({'pruning': {'importance': importance},\n"
        "        'quantization': {'default': 'int8', 'calibration_images': 4, 'shared_ranges': True}})\n"
    )
    config = coco8_search(budget=2, space=f"{source}:space")
    study = optuna.create_study(  # created here, so the two queued plans run first
        study_name=config.name, storage=config.storage_url, directions=["maximize", "minimize", "minimize"]
    )
    for importance in ("l1", "bn_scale"):
        study.enqueue_trial({"importance": importance})
    study = run_search(config)
    searched = [t for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)) if "importance" in t.params]
    first, second = sorted(searched, key=lambda t: t.number)
    assert {plan_of(first).pruning.importance, plan_of(second).pruning.importance} == {"l1", "bn_scale"}
    assert "duplicate_of" not in first.user_attrs
    assert second.user_attrs["duplicate_of"] == first.number and second.values == first.values


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_ctrl_c_fails_the_running_trial_and_the_next_run_retries_it(tmp_path: Path, signum: str) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from yolotune.studies import load_study

    tune = Path(sys.executable).parent / "tune"
    args = [str(tune), "run", "--data", "coco8", "--imgsz", "160", "--budget", "3", "--root", str(tmp_path)]
    args += ["--retime-rounds", "0"]  # re-timing is tested apart
    args += ["--study", "s"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # wait until trial 1 (INT8 only) is running, then press Ctrl-C
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if (tmp_path / "s" / "trials" / "1").is_dir():
                break
            time.sleep(0.2)
        else:
            pytest.fail("trial 1 never started")
        os.kill(proc.pid, getattr(signal, signum))  # Ctrl-C, or `kill` / a scheduler's SIGTERM
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    study = load_study(study="s", root=tmp_path)
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states
    # trial 1 (INT8 only) was running; a signal a library swallowed is raised again at the next step,
    # which may be trial 2's first
    failed = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert [t.user_attrs["fail_reason"] for t in failed] == ["interrupted"]
    assert failed[0].number in (1, 2)
    assert not (tmp_path / "s" / "trials" / str(failed[0].number)).exists()  # half built: its retry builds it again
    # the same command again picks up: the interrupted reference is queued again and completes
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    study = load_study(study="s", root=tmp_path)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert sorted(t.user_attrs.get("reference") for t in complete) == ["fp32", "int8", "seeds"]
    retried = [t for t in complete if t.user_attrs.get("retry_of") == failed[0].number]
    assert len(retried) == 1
    assert plan_of(retried[0]) == CompressionPlan.from_dict(failed[0].user_attrs["plan"])


@pytest.mark.parametrize("max_map_drop", [0.05, None])
def test_an_fp32_reference_interrupted_runs_before_the_references_queued_ahead_of_it(
    coco8_search, max_map_drop: float | None
) -> None:
    # with --max-map-drop the others need its mAP; without, their speed-ups are still timed beside its file
    config = coco8_search(budget=3, max_map_drop=max_map_drop, sampler="random")

    def stop_in_the_fp32_reference(number: int, step: str) -> None:
        if number == 0 and step == "export":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(config, on_step=stop_in_the_fp32_reference)
    # its retry is queued behind the INT8 and seeds references: they wait for it
    study = run_search(config)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert [t.user_attrs.get("reference") for t in complete] == ["fp32", "int8", "seeds"]
    assert all("reference_ms" in t.user_attrs and "unpaired" not in t.user_attrs for t in complete[1:])
    reasons = [t.user_attrs["fail_reason"] for t in study.get_trials(states=(optuna.trial.TrialState.FAIL,))]
    why = (
        "--max-map-drop needs its mAP"
        if max_map_drop is not None
        else "its speed-up is timed beside the reference's file"
    )
    assert reasons == ["interrupted", *[f"queued again behind the FP32 reference: {why}"] * 2]
    if max_map_drop is not None:
        assert all(
            not any(v > 0 for v in t.constraints.values()) or t.user_attrs["reference"] == "seeds" for t in complete
        )


def test_a_callback_that_raises_at_open_leaves_the_references_queued(coco8_search) -> None:
    config = coco8_search(budget=2)
    optuna.logging.set_verbosity(optuna.logging.DEBUG)  # the caller's, whatever other tests left

    def broken(study: optuna.Study) -> None:
        raise ValueError("my callback broke")

    with pytest.raises(ValueError, match="my callback broke"):
        run_search(config, on_open=broken)
    # the study was created: its references were queued before the callback ran
    from yolotune.studies import load_study

    study = load_study(study=config.name, root=config.root)
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [t.user_attrs["reference"] for t in waiting] == ["fp32", "int8", "seeds"]

    assert optuna.logging.get_verbosity() == optuna.logging.DEBUG  # the library left Optuna's logging as it was
    optuna.logging.set_verbosity(optuna.logging.WARNING)


class _SizeTarget:
    """A deterministic stand-in for the latency target: 1 ms per MB, or 10 ms divided by the MB with ``inverse``
    (latency is not under test)."""

    name = "local-cpu"
    precisions = ("int8", "fp32")

    def __init__(self, *, inverse: bool = False) -> None:
        self.timed: list[Path] = []
        self.inverse = inverse

    def check(self) -> None:
        return None

    def benchmark(self, model_path: Path, *, imgsz: int):
        from yolotune.evaluators import LatencyStats

        self.timed.append(Path(model_path))
        ms = model_path.stat().st_size / 1e6
        ms = 10 / ms if self.inverse else ms
        return LatencyStats.from_samples([ms, ms * 1.01], warmup=0, started_at=0.0, ended_at=0.0)

    def provenance(self, *, imgsz: int):
        from yolotune.evaluators import LocalCPUTarget

        return LocalCPUTarget().provenance(imgsz=imgsz)


class _DriftingTarget(_SizeTarget):
    """1 ms per MB on a machine that slows down twofold before each new file it is given: a file
    timed again (the FP32 reference after a trial) runs at that trial's speed."""

    def benchmark(self, model_path: Path, *, imgsz: int):
        from yolotune.evaluators import LatencyStats

        self.timed.append(Path(model_path))
        ms = model_path.stat().st_size / 1e6 * 2 ** (len(set(self.timed)) - 1)
        return LatencyStats.from_samples([ms, ms * 1.01], warmup=0, started_at=0.0, ended_at=0.0)


class _NoFP32Target(_SizeTarget):
    """Times INT8 files; an FP32 file (``model.onnx``) fails, as on a device whose runtime lacks an op."""

    def benchmark(self, model_path: Path, *, imgsz: int):
        from yolotune.errors import StepError

        if Path(model_path).name == "model.onnx":
            raise StepError("latency", "the runtime cannot run this model")
        return super().benchmark(model_path, imgsz=imgsz)


def test_an_fp32_reference_failed_for_good_stops_a_search_under_max_map_drop(
    coco8_search, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("yolotune.search._driver.make_target", lambda settings: _NoFP32Target())
    with pytest.raises(
        SearchStopped,
        match=r"the FP32 reference trial \d+ failed \(latency failed: the runtime cannot run this model\), and "
        r"--max-map-drop measures every plan against its mAP: fix that and run the same command",
    ):
        run_search(coco8_search(budget=3, max_map_drop=0.05, sampler="random"))
    study = load_study(study=coco8_search().name, root=coco8_search().root)
    reasons = [str(t.user_attrs.get("fail_reason")) for t in study.get_trials(states=(optuna.trial.TrialState.FAIL,))]
    assert not any("has not completed" in r for r in reasons)  # no plan was built only to fail for want of it
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))


@pytest.mark.parametrize("time_reference", [True, False])
def test_speed_ups_compare_the_reference_timed_right_after_each_trial(
    coco8_search, monkeypatch: pytest.MonkeyPatch, time_reference: bool
) -> None:
    target = _DriftingTarget()
    monkeypatch.setattr("yolotune.search._driver.make_target", lambda settings: target)
    study = run_search(coco8_search(budget=2, time_reference=time_reference))  # the fp32 and int8 references
    fp32, int8 = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    reference_file = Path(fp32.user_attrs["artifact"])
    row = {r.number: r for r in pareto_front(study)}[int8.number]
    metrics = json.loads((Path(int8.user_attrs["artifact"]).parent / "metrics.json").read_text())
    if time_reference:
        # the reference file was timed again right after the INT8 trial, at that trial's (halved) speed
        assert target.timed == [reference_file, Path(int8.user_attrs["artifact"]), reference_file]
        assert int8.user_attrs["reference_ms"] == pytest.approx(2 * fp32.values[2])
        assert metrics["reference_latency"]["median_ms"] == int8.user_attrs["reference_ms"]
        # so the drift cancels: the speed-up is the size ratio, as the target's 1 ms per MB says
        assert row.paired and row.speedup == pytest.approx(fp32.values[1] / int8.values[1], rel=1e-3)
    else:
        assert len(target.timed) == 2 and "reference_ms" not in int8.user_attrs
        assert "reference_latency" not in metrics
        assert not row.paired and row.speedup == pytest.approx(fp32.values[2] / int8.values[2])


def test_the_search_ends_by_timing_the_trials_near_its_front_again(
    coco8_search, monkeypatch: pytest.MonkeyPatch
) -> None:
    from yolotune.studies import current_retiming

    target = _SizeTarget()
    monkeypatch.setattr("yolotune.search._driver.make_target", lambda settings: target)
    steps: list[tuple[int, str]] = []
    config = coco8_search(budget=2, retime_rounds=3)  # the fp32 and int8 references
    deleting: list[subprocess.CompletedProcess[str]] = []
    root = str(config.root)

    def step(number: int, what: str) -> None:
        steps.append((number, what))
        if what.startswith("re-timing") and not deleting:  # no trial RUNNING now: `tune delete` still refuses
            code = f"from yolotune.studies import delete_study; delete_study(study={config.name!r}, root={root!r})"
            deleting.append(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120))

    study = run_search(config, on_step=step)
    assert deleting[0].returncode == 1 and deleting[0].stderr.strip().splitlines()[-1] == (
        f"yolotune.errors.YolotuneError: study '{config.name}' is being searched by process {os.getpid()} on this "
        "host; stop that `tune run` first (Ctrl-C), then delete"
    )
    assert not list((config.root / config.name / ".searches").iterdir())  # the search's mark went with it
    fp32, int8 = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    ref, cand = Path(fp32.user_attrs["artifact"]), Path(int8.user_attrs["artifact"])
    # the search timed fp32, int8 and fp32 again; then three rounds, in reversed order every other round
    assert target.timed[:3] == [ref, cand, ref] and target.timed[3:] == [ref, cand, cand, ref, ref, cand]
    assert [(n, s) for n, s in steps if s.startswith("re-timing")] == [
        (n, f"re-timing {k}/3") for k, n in [(1, 0), (1, 1), (2, 1), (2, 0), (3, 0), (3, 1)]
    ]
    retiming = current_retiming(study)
    assert retiming is not None and retiming.trials == (int8.number,) and retiming.rounds == 3
    assert retiming.digests == {int8.number: file_digest(cand), fp32.number: file_digest(ref)}
    row = {r.number: r for r in pareto_front(study)}[int8.number]
    assert row.retimed is not None and row.speedup == pytest.approx(fp32.values[1] / int8.values[1])
    # the same command again times nothing; more rounds asked for go on from the rounds done
    run_search(config)
    assert len(target.timed) == 9
    again = run_search(dataclasses.replace(config, retime_rounds=4))
    assert target.timed[9:] == [cand, ref] and current_retiming(again).rounds == 4


def test_a_trial_whose_file_is_gone_is_re_timed_from_the_artifact_store_else_left_out(
    coco8_search, monkeypatch: pytest.MonkeyPatch
) -> None:
    from yolotune.studies import deployable_file, find_artifact_dir

    target = _SizeTarget()
    monkeypatch.setattr("yolotune.search._driver.make_target", lambda settings: target)
    config = coco8_search(budget=2)
    study = run_search(config)
    int8 = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))[1]
    Path(int8.user_attrs["artifact"]).unlink()  # its trial folder cleaned up by hand after the search
    failed: list[tuple[int, str]] = []
    retime = dataclasses.replace(config, retime_rounds=2)
    run_search(retime, on_retime_failed=lambda n, why: failed.append((n, why)))
    assert failed == [] and "int8" in [r.reference for r in pareto_front(study)]  # timed from the store's copy
    stored = deployable_file(int8, find_artifact_dir(study))
    assert stored is not None and stored.parent == find_artifact_dir(study)
    stored.unlink()  # and the copy too: nothing left to time
    run_search(dataclasses.replace(retime, retime_rounds=3), on_retime_failed=lambda n, why: failed.append((n, why)))
    assert failed == [
        (int8.number, f"its file {int8.user_attrs['artifact']} is not on this host, nor in the study's artifact store")
    ]
    assert [r.reference for r in pareto_front(study)] == ["fp32"]  # re-timed: the reference alone
    with pytest.raises(YolotuneError, match=r"--retime-rounds must be ≥0 \(0: no re-timing\); got -1"):
        dataclasses.replace(config, retime_rounds=-1)


def _multi_fidelity_run(tmp_path: Path, plans: dict[str, str], *, fp32_reference: bool = False) -> optuna.Study:
    """A multi-fidelity search over a Python space of ``plans`` (name: expression), run in that order.

    See ``_multi_fidelity_config``.
    """
    return run_search(_multi_fidelity_config(tmp_path, plans, fp32_reference=fp32_reference))


def _multi_fidelity_config(tmp_path: Path, plans: dict[str, str], *, fp32_reference: bool = False) -> SearchConfig:
    """The config of a multi-fidelity search over ``plans`` (name: expression), queued in that order in a new study.

    The expressions may use ``CompressionPlan``, ``PruningConfig``, ``RecoveryConfig`` and ``INT8``
    (INT8 everywhere, MinMax on 4 images: no calibration stand-in at rung 0). With ``fp32_reference``
    the FP32 reference trial runs first (without, the study has no reference trials).
    """
    source = tmp_path / "plans.py"
    source.write_text(
        "from yolotune.spaces import CompressionPlan, PruningConfig, QuantizationConfig, RecoveryConfig\n"
        "INT8 = QuantizationConfig(default='int8', calibration_images=4)\n"
        "PLANS = {\n" + "".join(f"    {name!r}: {expr},\n" for name, expr in plans.items()) + "}\n"
        "def space(trial):\n"
        "    return PLANS[trial.suggest_categorical('k', list(PLANS))]\n"
    )
    config = SearchConfig(
        model="yolov8n-coco.pt",
        data="coco8",
        budget=len(plans) + fp32_reference,
        settings=CandidateSettings(imgsz=160),
        root=tmp_path,
        retime_rounds=0,  # re-timing is tested apart
        space=f"{source}:space",
        multi_fidelity=True,
        rung0_val=2,
    )
    study = optuna.create_study(
        study_name=config.name, storage=config.storage_url, directions=["maximize", "minimize", "minimize"]
    )
    if fp32_reference:
        study.enqueue_trial({}, user_attrs={"reference": "fp32"})
    for name in plans:
        study.enqueue_trial({"k": name})
    return config


def test_multi_fidelity_promotes_only_candidates_near_the_front(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, coco8_search
) -> None:

    from yolotune.studies import pareto_front

    target = _SizeTarget()
    monkeypatch.setattr("yolotune.search._driver.make_target", lambda settings: target)
    from yolotune.compression import ultralytics_adapter

    exports: list[Path] = []
    real_export = ultralytics_adapter.export_onnx

    def counting_export(checkpoint: Path, **kwargs):  # the real export, counted
        exports.append(Path(checkpoint))
        return real_export(checkpoint, **kwargs)

    monkeypatch.setattr(ultralytics_adapter, "export_onnx", counting_export)
    plans = {
        "int8": "CompressionPlan(quantization=INT8)",
        "pruned-fp32-ft": "CompressionPlan(pruning=PruningConfig(ratios={'backbone.2': 0.1, 'backbone.4': 0.1, "
        "'neck.12': 0.1}), recovery=RecoveryConfig(epochs=1))",
        "int8-ft": "CompressionPlan(quantization=INT8, recovery=RecoveryConfig(epochs=1, lr=1e-5))",
    }
    study = _multi_fidelity_run(tmp_path, plans)
    trials = {t.params["k"]: t for t in study.get_trials()}
    assert len(trials) == 3

    # first: nothing to compare with, promoted; no fine-tuning, so only validated again on all images
    first = trials["int8"]
    assert first.state == optuna.trial.TrialState.COMPLETE and first.user_attrs["fidelity"] == "full"
    assert first.user_attrs["rung0"]["latency_ms"] is None  # promoted on size and mAP: not timed at rung 0 ...
    assert first.user_attrs["rung0"]["not_timed"].startswith("promoted on size and mAP alone")
    metrics = json.loads((Path(first.user_attrs["artifact"]).parent / "metrics.json").read_text())
    assert metrics["accuracy"]["images"] == 4  # every coco8 validation image
    first_dir = Path(first.user_attrs["artifact"]).parent
    assert sum(p.parent == first_dir for p in exports) == 1  # promotion continued: no second export
    assert sum(p.parent == first_dir for p in target.timed) == 1  # ... but once, at full fidelity
    # bigger, slower and far less accurate at rung 0 than a full-fidelity trial: stopped there
    stopped = trials["pruned-fp32-ft"]
    assert stopped.state == optuna.trial.TrialState.PRUNED and stopped.user_attrs["fidelity"] == "rung0"
    assert stopped.user_attrs["rung0"]["map50_95"] < first.values[0] - 0.02
    stopped_metrics = json.loads((Path(first_dir).parent / str(stopped.number) / "metrics.json").read_text())
    assert stopped_metrics["fidelity"] == "rung0" and stopped_metrics["accuracy"]["images"] == 2
    assert stopped_metrics["stand_ins"] == {} and stopped_metrics["latency_ms"] > 0  # its plan needed none
    assert stopped.user_attrs["rung0"]["stand_ins"] == stopped_metrics["stand_ins"]  # one record, two places
    assert metrics["fidelity"] == "full" and metrics["stand_ins"] == {}
    assert not (Path(first.user_attrs["artifact"]).parent.parent / str(stopped.number) / "finetune").exists()
    stopped_dir = first_dir.parent / str(stopped.number)
    assert sorted(p.name for p in stopped_dir.glob("model.*")) == [
        "model.onnx",
        "model.pt",
    ]  # pruned: its checkpoint stays
    assert sorted(p.name for p in first_dir.glob("model.*")) == ["model.int8.onnx"]  # its FP32 source went once told
    # as good as the front at rung 0: promoted, and fine-tuned from what rung 0 built
    promoted = trials["int8-ft"]
    assert promoted.state == optuna.trial.TrialState.COMPLETE and promoted.user_attrs["fidelity"] == "full"
    out = Path(promoted.user_attrs["artifact"]).parent
    assert (out / "finetune").is_dir()
    assert sum(p.parent == out for p in exports) == 2  # rung 0's export, then the fine-tuned one's
    assert sum(p.parent == out for p in target.timed) == 1  # promoted on size and mAP: timed after fine-tuning only
    assert json.loads((out / "metrics.json").read_text())["accuracy"]["images"] == 4
    assert sorted(p.name for p in out.glob("model.*")) == ["model.int8.onnx", "model.pt"]  # fine-tuned: it stays
    # the reported front holds full-fidelity results only
    assert {r.number for r in pareto_front(study)} <= {first.number, promoted.number}
    # show and report mark it
    from yolotune.studies import write_report

    page = write_report(study, tmp_path / "r.html").read_text()
    rung0_section = page.split('id="rung0"')[1].split("</section>")[0]
    assert f'data-trial="{stopped.number}"' in rung0_section
    assert "Stand-ins" in rung0_section and '<td class="text">none</td>' in rung0_section  # its plan needed none
    # exporting the stop names the command that evaluates its plan on this study's job
    plan_file = tmp_path / study.study_name / "trials" / str(stopped.number) / "plan.yaml"
    command = f"tune eval --model yolov8n-coco.pt --data coco8 --imgsz 160 --target local-cpu --plan {plan_file}"
    with pytest.raises(YolotuneError, match=re.escape(f"evaluate its plan with `{command}`")):
        export_trial(study, stopped.number, tmp_path / "x")
    # proposed again to a run without multi-fidelity, the stopped plan is evaluated at full fidelity
    config = coco8_search(budget=4, space=f"{tmp_path / 'plans.py'}:space")
    study.enqueue_trial({"k": "pruned-fp32-ft"})
    again = run_search(config).trials[-1]
    assert again.state == optuna.trial.TrialState.COMPLETE and "duplicate_of" not in again.user_attrs
    assert again.user_attrs["fidelity"] == "full"


def test_rung0_maps_on_a_subset_are_shifted_by_what_fp32_scores_on_it_before_promotion(coco8_search) -> None:
    from yolotune.assets import prepare_dataset, val_subset
    from yolotune.evaluators import measure_map

    # a subset scores otherwise than the whole split: compared raw with full-fidelity mAPs and the
    # --max-map-drop baseline, good plans were stopped (FP32 itself: 0.289 on 10 tiny_coco images, 0.353 on 50)
    study = run_search(coco8_search(budget=4, multi_fidelity=True, rung0_val=2))
    fp32 = next(t for t in study.trials if t.user_attrs.get("reference") == "fp32")
    on_two = measure_map(Path(fp32.user_attrs["artifact"]), val_subset(prepare_dataset("coco8"), 2), imgsz=160)
    assert study.user_attrs["fp32_rung0_map"] == {"2": pytest.approx(on_two.map50_95)}  # validated once
    searched = study.trials[3].user_attrs["rung0"]
    shift = fp32.values[0] - on_two.map50_95
    assert searched["map50_95_estimate"] == pytest.approx(searched["map50_95"] + shift)


def test_a_candidate_timed_at_rung0_and_promoted_unchanged_keeps_that_timing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = _SizeTarget(inverse=True)  # smaller is slower: a smaller, better full trial does not dominate
    monkeypatch.setattr("yolotune.search._driver.make_target", lambda settings: target)
    plans = {
        "int8": "CompressionPlan(quantization=INT8)",
        "pruned-fp32": "CompressionPlan(pruning=PruningConfig(ratios={'backbone.2': 0.3, 'neck.12': 0.3}))",
    }
    study = _multi_fidelity_run(tmp_path, plans, fp32_reference=True)
    trials = {t.params.get("k", t.user_attrs.get("reference")): t for t in study.get_trials()}
    small, big = trials["int8"], trials["pruned-fp32"]
    # the smaller INT8 trial is far better: rung 0 had to time the pruned one, which is faster, so promoted
    assert big.user_attrs["rung0"]["map50_95"] < small.values[0] - 0.02
    assert big.state == optuna.trial.TrialState.COMPLETE and big.user_attrs["fidelity"] == "full"
    assert big.user_attrs["rung0"]["latency_ms"] == pytest.approx(big.values[2])
    out = Path(big.user_attrs["artifact"]).parent
    assert sum(p.parent == out for p in target.timed) == 1  # nothing stood in: the same bytes, timed once
    # promoted, it is paired with the FP32 reference as a full trial is: timed right after rung 0's timing
    reference = Path(trials["fp32"].user_attrs["artifact"])
    after = target.timed[target.timed.index(Path(big.user_attrs["artifact"])) + 1]
    assert after == reference and big.user_attrs["reference_ms"] == pytest.approx(trials["fp32"].values[2])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["reference_latency"]["median_ms"] == big.user_attrs["reference_ms"]


#: An INT8 plan, then a pruned FP32 plan that fine-tunes: faster under ``_SizeTarget(inverse=True)``, so promoted.
_FINE_TUNED_PROMOTION = {
    "int8": "CompressionPlan(quantization=INT8)",
    "pruned-fp32-ft": "CompressionPlan(pruning=PruningConfig(ratios={'backbone.2': 0.3, 'neck.12': 0.3}), "
    "recovery=RecoveryConfig(epochs=1))",
}


def test_a_promotion_that_fine_tunes_times_the_reference_beside_its_new_file_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = _SizeTarget(inverse=True)  # as above: rung 0 times the pruned plan, and promotes it
    monkeypatch.setattr("yolotune.search._driver.make_target", lambda settings: target)
    study = _multi_fidelity_run(tmp_path, _FINE_TUNED_PROMOTION, fp32_reference=True)
    trials = {t.params.get("k", t.user_attrs.get("reference")): t for t in study.get_trials()}
    big, reference = trials["pruned-fp32-ft"], Path(trials["fp32"].user_attrs["artifact"])
    assert big.state == optuna.trial.TrialState.COMPLETE and big.user_attrs["rung0"]["latency_ms"] is not None
    out = Path(big.user_attrs["artifact"]).parent
    ours = [i for i, p in enumerate(target.timed) if p.parent == out]
    assert len(ours) == 2  # rung 0's file, then the fine-tuned one: new bytes, timed again
    # the reference is timed beside the fine-tuned file, which the trial keeps, not beside rung 0's as well
    assert target.timed[ours[0] + 1] != reference and target.timed[ours[1] + 1] == reference
    assert big.user_attrs["reference_ms"] == pytest.approx(trials["fp32"].values[2])


def test_a_promoted_trial_stopped_by_ctrl_c_runs_again_at_full_fidelity_without_rung0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = _SizeTarget(inverse=True)  # as above: rung 0 times the pruned plan, and promotes it
    monkeypatch.setattr("yolotune.search._driver.make_target", lambda settings: target)
    config = _multi_fidelity_config(tmp_path, _FINE_TUNED_PROMOTION, fp32_reference=True)

    def stop_in_the_promotion(number: int, step: str) -> None:
        if step == "finetune":  # only at full fidelity: rung 0 stops before fine-tuning
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(config, on_step=stop_in_the_promotion)
    study = optuna.load_study(study_name=config.name, storage=config.storage_url)
    (stopped,) = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert stopped.user_attrs["fail_reason"] == "interrupted" and stopped.user_attrs["promoted"]
    timed_before = len(target.timed)
    study = run_search(config)
    (again,) = [t for t in study.get_trials() if t.user_attrs.get("retry_of") == stopped.number]
    assert again.state == optuna.trial.TrialState.COMPLETE and again.user_attrs["fidelity"] == "full"
    assert again.user_attrs["rung0"] == stopped.user_attrs["rung0"]  # what rung 0 measured of this plan, kept
    out = Path(again.user_attrs["artifact"]).parent
    assert [p.parent for p in target.timed[timed_before:]].count(out) == 1  # its fine-tuned file only: no rung 0
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == config.budget


def test_multi_fidelity_runs_the_reference_trials_at_full_fidelity_only(tmp_path: Path) -> None:
    config = SearchConfig(
        model="yolov8n-coco.pt",
        data="coco8",
        budget=2,
        settings=CandidateSettings(imgsz=160),
        root=tmp_path,
        retime_rounds=0,  # re-timing is tested apart
        multi_fidelity=True,
        rung0_val=2,
    )
    study = run_search(config)
    ran = study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
    refs = [t for t in ran if "reference" in t.user_attrs]
    assert [t.user_attrs["reference"] for t in refs] == ["fp32", "int8"]
    for t in refs:
        assert t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs["fidelity"] == "full"
        assert "rung0" not in t.user_attrs  # never evaluated at rung 0 first
        metrics = json.loads((Path(t.user_attrs["artifact"]).parent / "metrics.json").read_text())
        assert metrics["accuracy"]["images"] == 4  # every coco8 validation image


#: Early groups that, pruned by 60% with no recovery, destroy yolov8n.
_DESTROYING = ["backbone.2", "backbone.4", "backbone.6", "neck.12"]


def _destroying_search(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, space: str
) -> tuple[dict[str, Any], _SizeTarget]:
    """SearchConfig fields of a multi-fidelity search under --max-map-drop 0.05 (2 rung-0 images, sizes as
    latencies) over a space pruning the ``_DESTROYING`` groups by 60% or not at all, plus ``space``'s options;
    and the target that times its candidates.
    """
    target = _SizeTarget()
    monkeypatch.setattr("yolotune.search._driver.make_target", lambda settings: target)
    options = tmp_path / "space.yaml"
    options.write_text(
        f"prune_groups: {_DESTROYING}\nmax_ratio: 0.6\nratio_step: 0.6\nrecovery_methods: [none]\nepochs: [0]\n"
        "importance: [l1]\nround_to: [1]\n" + space
    )
    fields = {
        "model": "yolov8n-coco.pt",
        "data": "coco8",
        "settings": CandidateSettings(imgsz=160),
        "root": tmp_path,
        "space": str(options),
        "multi_fidelity": True,
        "rung0_val": 2,
        "max_map_drop": 0.05,
        "retime_rounds": 0,
    }
    return fields, target


def test_multi_fidelity_does_not_time_a_candidate_no_fine_tune_could_bring_within_the_map_drop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    common, target = _destroying_search(tmp_path, monkeypatch, "precisions: [fp32]\n")
    study = run_search(SearchConfig(**common, budget=2))  # the reference trials
    references = len(study.get_trials())
    # 60% of four backbone/neck groups, no recovery: the model is destroyed
    study.enqueue_trial({"prune/enabled": True, **{f"prune/{g}": 0.6 for g in _DESTROYING}})
    study = run_search(SearchConfig(**common, budget=references + 1))
    stopped = study.get_trials(states=(optuna.trial.TrialState.PRUNED,))
    assert len(stopped) == 1
    rung0 = stopped[0].user_attrs["rung0"]
    assert rung0["map50_95"] < 0.05 and rung0["latency_ms"] is None
    fp32 = next(t for t in study.get_trials() if t.user_attrs.get("reference") == "fp32").values[0]
    bound = f"is more than 0.02 under {fp32 - 0.05:.3f}, the least --max-map-drop 0.05 allows: not timed"
    assert rung0["not_timed"].endswith(bound), rung0["not_timed"]
    # it says what rung 0 measured, then the estimate compared: not as if the model scored the estimate
    measured, estimate = rung0["map50_95"], rung0["map50_95_estimate"]
    said = f"mAP50-95 {measured:.3f} on rung 0's 2 images, so about {estimate:.3f} on all (FP32 scores "
    assert rung0["not_timed"].startswith(said), rung0["not_timed"]
    folder = tmp_path / study.study_name / "trials" / str(stopped[0].number)
    assert (folder / "model.onnx").is_file()  # built
    metrics = json.loads((folder / "metrics.json").read_text())  # what was measured is on disk too
    assert metrics["fidelity"] == "rung0" and metrics["latency_ms"] is None and metrics["latency"] is None
    assert metrics["not_timed"] == rung0["not_timed"] and metrics["map50_95"] == rung0["map50_95"]
    assert all(p.parent.name != str(stopped[0].number) for p in target.timed)  # ... and never timed
    assert len({p.parent for p in target.timed}) == references


def test_multi_fidelity_does_not_quantize_a_candidate_whose_fp32_export_is_already_out_of_reach(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    common, _ = _destroying_search(
        tmp_path, monkeypatch, "precisions: [int8]\ncalibration_methods: [minmax]\ncalibration_sizes: [4]\n"
    )
    study = run_search(SearchConfig(**common, budget=2))  # the reference trials
    references = len(study.get_trials())
    # 60% of four backbone/neck groups, no recovery: the model is destroyed before it is quantized
    study.enqueue_trial({"prune/enabled": True, **{f"prune/{g}": 0.6 for g in _DESTROYING}})
    study.enqueue_trial({"prune/enabled": False})  # INT8 alone: within reach, so quantized as planned
    study = run_search(SearchConfig(**common, budget=references + 2))
    destroyed, unpruned = study.trials[references], study.trials[references + 1]
    assert destroyed.state == optuna.trial.TrialState.PRUNED
    rung0 = destroyed.user_attrs["rung0"]
    assert rung0["stand_ins"] == {"precision": "fp32"} and rung0["latency_ms"] is None
    assert rung0["not_timed"].startswith("its FP32 export scored mAP50-95 ")
    assert rung0["not_timed"].endswith("to be promoted: not quantized, not timed")
    folder = tmp_path / study.study_name / "trials" / str(destroyed.number)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert "quantize" not in metrics["step_seconds"] and metrics["quantize"] is None  # calibration never ran
    assert metrics["deployable"] == str(folder / "model.onnx") and metrics["map50_95"] == rung0["map50_95"]
    assert not (folder / "model.int8.onnx").exists()
    from yolotune.studies import write_report

    page = write_report(study, tmp_path / "r.html").read_text()
    row = page.split(f'data-trial="{destroyed.number}"')[1].split("</tr>")[0]
    assert "fp32 precision" in row  # its Stand-ins cell
    # the FP32 export of a plan within reach was validated too, and the plan quantized all the same
    assert "precision" not in unpruned.user_attrs["rung0"]["stand_ins"]
    kept = json.loads((tmp_path / study.study_name / "trials" / str(unpruned.number) / "metrics.json").read_text())
    assert "validate-fp32" in kept["step_seconds"]
    if unpruned.state == optuna.trial.TrialState.COMPLETE:
        assert unpruned.user_attrs["artifact"].endswith("model.int8.onnx")
    else:
        assert (tmp_path / study.study_name / "trials" / str(unpruned.number) / "model.int8.onnx").is_file()


def test_a_study_of_the_same_name_in_another_storage_never_writes_over_the_first_ones_trial_files(
    coco8_search, tmp_path: Path
) -> None:
    from yolotune.studies import open_storage

    first = run_search(coco8_search())  # the default SQLite file under tmp_path
    model = Path(first.trials[0].user_attrs["artifact"])
    measured = model.read_bytes()
    journal = f"journal:{tmp_path / 'other.log'}"
    # the same study name (model-data-target-imgsz) in another storage, the same --root: its trial 0
    # would have been written over the first study's, and exporting the first would hand out the other's
    with pytest.raises(YolotuneError, match=r"holds the trial files of another study named .* --root DIR"):
        run_search(coco8_search(storage=journal))
    assert model.read_bytes() == measured
    assert optuna.get_all_study_names(storage=open_storage(journal)) == []  # no empty study left behind
    other = run_search(coco8_search(storage=journal, root=tmp_path / "other"))  # its own folder: it runs
    assert Path(other.trials[0].user_attrs["artifact"]).is_relative_to(tmp_path / "other")
    assert run_search(coco8_search()).study_name == first.study_name  # the first still resumes
    # the other way round: a new study in the default SQLite file, refused, leaves no empty file behind
    with pytest.raises(YolotuneError, match=r"another study named .* \(in journal:"):
        run_search(coco8_search(root=tmp_path / "other"))
    assert not (tmp_path / "other" / f"{first.study_name}.db").exists()
