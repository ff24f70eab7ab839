"""Opening a study: resumed only for the same job, device and constraints."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import optuna
import pytest

from yolotune import YolotuneError
from yolotune.search import CandidateSettings, SearchConfig, run_search, search_spaces


def _small_study_config(root: Path, name: str, **fields: Any) -> SearchConfig:
    """The config of the ``small_study`` fixture's run (coco8 at 160 px, budget 4), without re-timing."""
    base: dict[str, Any] = {"model": "yolov8n-coco.pt", "data": "coco8", "budget": 4, "study_name": name}
    return SearchConfig(settings=CandidateSettings(imgsz=160), root=root, retime_rounds=0, **{**base, **fields})


def test_changing_constraints_of_an_existing_study_is_refused(small_study: tuple[Path, str, str]) -> None:
    root, name, _ = small_study
    config = _small_study_config(root, name, max_map_drop=0.2)
    with pytest.raises(YolotuneError, match=r"created with --max-map-drop 0\.05; use another --study name"):
        run_search(config)


def test_resuming_on_the_same_device_under_another_setup_is_said(
    small_study: tuple[Path, str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import shutil

    root, name, _ = small_study
    shutil.copy(root / f"{name}.db", tmp_path / f"{name}.db")  # a copy: the fixture's study stays as it is
    config = _small_study_config(tmp_path, name, max_map_drop=0.05)
    study = optuna.load_study(study_name=name, storage=config.storage_url)
    setup = study.user_attrs["timed_setup"]  # recorded by the run that made it
    assert setup["host"] and setup["runtime_version"]
    with caplog.at_level("WARNING", logger="yolotune.search._study"):
        run_search(config)  # the budget is met: nothing runs, nothing said
        assert caplog.records == []
        study.set_user_attr("timed_setup", {**setup, "host": "other-box", "clocks_pinned": True})
        run_search(config)
    assert [r.getMessage() for r in caplog.records] == [
        f"study '{name}' was timed on the same device with another setup (host other-box → {setup['host']}, "
        f"clocks pinned True → {setup['clocks_pinned']}): its latencies may not compare with this run's; "
        "`tune retime --fresh` times the front again side by side"
    ]
    assert study.user_attrs["timed_setup"] == setup  # this run's setup now: the change is said once


# what older yolotunes recorded in a study's job, and how resuming one is refused
_OLD_JOBS = {
    # before FastDFL: no "export" key
    "plain export": ({}, r"was measured on Ultralytics. plain ONNX export.*another --study name"),
    # before real entropy: its "entropy" plans were calibrated as MinMax
    "minmax entropy": ({"export": True}, r"same ranges as minmax.*calibrates entropy-kl512.*another --study name"),
    # before targets listed activation types: local-cpu searched both (int8 asymmetric)
    "both activations": (
        {"export": True, "calibration": True},
        r"searched uint8/int8 INT8 activations; target local-cpu now runs uint8.*another --study name",
    ),
    # before round_to kept the nearest multiple: torch-pruning rounded the kept channels down
    "round-down pruning": (
        {"export": True, "calibration": True, "activations": True, "rounded": True},
        r"was pruned with torch-pruning's round_to \(kept channels rounded down.*keeps the nearest multiple "
        r"\(round-nearest\).*another --study name",
    ),
}


@pytest.mark.parametrize("era", list(_OLD_JOBS))
def test_a_study_recorded_by_an_older_yolotune_is_not_resumed(tmp_path: Path, coco8_search, era: str) -> None:
    from yolotune.compression import CALIBRATION_FORMAT, ultralytics_adapter
    from yolotune.search._config import DIRECTIONS
    from yolotune.studies import default_storage_url

    config = coco8_search()
    old = optuna.create_study(
        study_name=config.name, storage=default_storage_url(tmp_path, config.name), directions=DIRECTIONS
    )
    keys, message = _OLD_JOBS[era]
    job = {"model": "yolov8n-coco.pt", "data": "coco8", "imgsz": 160, "target": "local-cpu", "space": "default"}
    if keys:
        job["sensitivity"] = None
    if keys.get("export"):
        job["export"] = ultralytics_adapter.EXPORT_FORMAT
    if keys.get("calibration"):
        job["calibration"] = CALIBRATION_FORMAT
    if keys.get("activations"):
        job["activations"] = ["uint8"]
    old.set_user_attr("job", job)
    if keys.get("rounded"):  # a plan it pruned with round_to: torch-pruning rounded it down
        plan = {"pruning": {"ratios": {"neck.16": 0.3}, "round_to": 8}}
        old.add_trial(optuna.trial.create_trial(values=[0.3, 3.0, 5.0], user_attrs={"plan": plan}))
    held = len(old.get_trials())
    with pytest.raises(YolotuneError, match=message):
        run_search(config)
    assert len(old.get_trials()) == held  # nothing was added to it


def test_a_study_timed_on_one_device_is_not_resumed_on_another(coco8_search) -> None:
    from yolotune.search._study import open_study_for_run

    config = coco8_search()
    vnni = {"device": "AMD EPYC", "int8_weight_bits": 8}
    study, created, _ = open_study_for_run(config, timed_on=vnni)
    assert created and study.user_attrs["timed_on"] == vnni
    open_study_for_run(config, timed_on=dict(vnni))  # the same device resumes
    # the same CPU name without VNNI builds 7-bit weights: its INT8 trials would not compare
    with pytest.raises(
        YolotuneError,
        match=r"timed on AMD EPYC with 8-bit INT8 weights, this run would time on "
        r"AMD EPYC with 7-bit INT8 weights: latencies would not compare; resume it there",
    ):
        open_study_for_run(config, timed_on={**vnni, "int8_weight_bits": 7})
    with pytest.raises(YolotuneError, match=r"would time on Intel Xeon with 8-bit"):
        open_study_for_run(config, timed_on={**vnni, "device": "Intel Xeon"})


def test_a_study_resumes_under_other_names_for_the_same_job_and_refuses_another_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from yolotune.assets import resolve_data, resolve_model
    from yolotune.evaluators import add_target_file
    from yolotune.search._study import open_study_for_run

    monkeypatch.setattr("yolotune.evaluators._spec._SPECS", {})
    monkeypatch.setattr("yolotune.evaluators._spec._LOADED", [])
    targets = tmp_path / "targets.yaml"
    targets.write_text("board:\n  runtime: onnxruntime\n  precisions: [int8, fp32]\n  threads: 1\n")
    add_target_file(targets)
    space = tmp_path / "space.yaml"
    space.write_text("max_ratio: 0.3\n")
    settings = CandidateSettings(imgsz=160, target="board")
    base = {"budget": 2, "settings": settings, "root": tmp_path, "study_name": "j"}
    open_study_for_run(SearchConfig(model="yolov8n-coco.pt", data="coco8", space=str(space), **base))
    # the same model, dataset and space, named otherwise: an absolute path, the data yaml, a copy
    (tmp_path / "copy").mkdir()
    copy = tmp_path / "copy" / "space.yaml"
    copy.write_text(space.read_text())
    same = {"model": str(resolve_model("yolov8n-coco.pt")), "data": str(resolve_data("coco8")), "space": str(copy)}
    open_study_for_run(SearchConfig(**same, **base))
    # another job: refused, naming only what differs
    with pytest.raises(YolotuneError, match=r"another job \(data: was 'coco8', now 'tiny_coco'\): run it with"):
        open_study_for_run(SearchConfig(**{**same, "data": "tiny_coco"}, **base))
    copy.write_text("# a comment, and the same option\nmax_ratio:   0.3\n")  # the same options: the same space
    open_study_for_run(SearchConfig(**same, **base))
    copy.write_text("max_ratio: 0.5\n")  # another file: named as such, not as the recorded one changed
    with pytest.raises(
        YolotuneError,
        match=r"another job \(space: was '.*/space.yaml', now '.*/copy/space.yaml', which defines another space\)",
    ):
        open_study_for_run(SearchConfig(**same, **base))
    space.write_text("max_ratio: 0.5\n")  # the recorded file, changed in place
    with pytest.raises(YolotuneError, match=r"another job \(space file .*/space.yaml has changed since\)"):
        open_study_for_run(SearchConfig(**{**same, "space": str(space)}, **base))
    space.write_text("max_ratio: 0.3\n")
    # the target's default image size changed: the study times at its own (160), so it resumes
    targets.write_text("board:\n  runtime: onnxruntime\n  precisions: [int8, fp32]\n  threads: 1\n  imgsz: 256\n")
    add_target_file(targets)
    open_study_for_run(SearchConfig(model="yolov8n-coco.pt", data="coco8", space=str(space), **base))
    # the target redefined (threads): its latencies would not compare
    targets.write_text("board:\n  runtime: onnxruntime\n  precisions: [int8, fp32]\n  threads: 2\n")
    add_target_file(targets)
    with pytest.raises(YolotuneError, match=r"timed on target board as defined then \(threads: was 1, now 2\)"):
        open_study_for_run(SearchConfig(model="yolov8n-coco.pt", data="coco8", space=str(space), **base))
    # listing both activation types (the default was both before it became uint8): the message says how to resume
    targets.write_text("board:\n  runtime: onnxruntime\n  precisions: [int8, fp32]\n  activations: [uint8, int8]\n")
    add_target_file(targets)
    with pytest.raises(
        YolotuneError,
        match=r"searched uint8 INT8 activations; target board now runs uint8/int8: "
        r"give it `activations: \[uint8\]` \(--targets-file\) to resume the study",
    ):
        open_study_for_run(SearchConfig(model="yolov8n-coco.pt", data="coco8", space=str(space), **base))


def test_a_study_made_before_pruning_rounded_to_the_nearest_multiple_resumes_unless_it_rounded(
    tmp_path: Path,
) -> None:
    from yolotune.search._study import open_study_for_run

    base = {"model": "yolov8n-coco.pt", "data": "coco8", "budget": 2, "root": tmp_path}
    config = SearchConfig(settings=CandidateSettings(imgsz=160), study_name="old", **base)
    study, _, _ = open_study_for_run(config)

    def made_before() -> None:  # the job as the version before recorded it
        study.set_user_attr("job", {k: v for k, v in study.user_attrs["job"].items() if k not in ("pruning", "fine")})

    made_before()
    open_study_for_run(config)  # no plan was rounded: resumed, and recorded as this version's
    assert study.user_attrs["job"]["pruning"] == "round-nearest"
    made_before()
    plan = {"pruning": {"ratios": {"neck.16": 0.3}, "round_to": 8}}
    study.add_trial(optuna.trial.create_trial(values=[0.3, 3.0, 5.0], user_attrs={"plan": plan}))
    with pytest.raises(YolotuneError, match=r"was pruned with torch-pruning's round_to \(kept channels rounded down"):
        open_study_for_run(config)
    # --fine with a YAML space: ignored before, so a study made then did not search per group
    narrow = tmp_path / "narrow.yaml"
    narrow.write_text("max_ratio: 0.3\n")
    yaml_config = dataclasses.replace(config, space=str(narrow), fine=True, study_name="yaml")
    older, _, _ = open_study_for_run(yaml_config)
    older.set_user_attr("job", {k: v for k, v in older.user_attrs["job"].items() if k != "fine"})
    with pytest.raises(YolotuneError, match=r"another job \(fine: was False, now True\)"):
        open_study_for_run(yaml_config)
    open_study_for_run(dataclasses.replace(yaml_config, fine=False))
    # one file, two Python spaces: another callable is another space
    spaces = tmp_path / "spaces.py"
    spaces.write_text(
        "from yolotune.spaces import CompressionPlan\n"
        "def small(trial):\n    return CompressionPlan()\n"
        "def large(trial):\n    return CompressionPlan()\n"
    )
    open_study_for_run(dataclasses.replace(config, space=f"{spaces}:small", study_name="py"))
    with pytest.raises(YolotuneError, match=r"space: was '.*spaces.py:small', now '.*spaces.py:large', which defines"):
        open_study_for_run(dataclasses.replace(config, space=f"{spaces}:large", study_name="py"))


def test_a_study_resumes_from_another_directory_and_refuses_a_checkpoint_replaced_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from yolotune.assets import resolve_data, resolve_model
    from yolotune.compression import ultralytics_adapter
    from yolotune.search._study import open_study_for_run

    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(resolve_model("yolov8n-coco.pt"), work / "mine.pt")
    (work / "data").symlink_to(resolve_data("coco8").parent)
    base = {"budget": 2, "settings": CandidateSettings(imgsz=160), "root": tmp_path / "studies", "study_name": "j"}
    monkeypatch.chdir(work)
    study = open_study_for_run(SearchConfig(model="mine.pt", data="data", **base))[0]
    # relative names are recorded as the files they named, so they mean the same from anywhere
    assert study.user_attrs["job"]["model"] == str(work / "mine.pt")
    assert study.user_attrs["job"]["data"] == str(resolve_data(work / "data"))
    monkeypatch.chdir(tmp_path)
    open_study_for_run(SearchConfig(model="work/mine.pt", data=str(work / "data"), **base))
    shutil.copy(work / "mine.pt", tmp_path / "moved.pt")  # the same checkpoint elsewhere: the same job
    open_study_for_run(SearchConfig(model=str(tmp_path / "moved.pt"), data=str(work / "data"), **base))
    # the model retrained (or replaced) at the same path is another job: its trials would not compare
    ultralytics_adapter.save_checkpoint(ultralytics_adapter.load_model(work / "mine.pt"), work / "mine.pt")
    with pytest.raises(YolotuneError, match=r"another job \(model file .*mine.pt holds another checkpoint since"):
        open_study_for_run(SearchConfig(model="work/mine.pt", data=str(work / "data"), **base))


def test_a_study_refuses_data_that_holds_other_images_or_labels_than_it_was_measured_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from yolotune.assets import prepare_dataset, resolve_data
    from yolotune.search._study import open_study_for_run

    coco8 = resolve_data("coco8").parent

    def dataset(folder: Path) -> None:  # coco8's images, its own copy of the labels
        for split in ("train", "val"):
            (folder / "images" / split).mkdir(parents=True)
            shutil.copytree(coco8 / "labels" / split, folder / "labels" / split)
            for image in (coco8 / "images" / split).iterdir():
                (folder / "images" / split / image.name).symlink_to(image)

    dataset(tmp_path / "data")
    names = prepare_dataset("coco8").names
    (tmp_path / "data" / "data.yaml").write_text(f"path: .\ntrain: images/train\nval: images/val\nnames: {names}\n")
    (tmp_path / "work").mkdir()
    base = {"budget": 2, "settings": CandidateSettings(imgsz=160), "root": tmp_path / "studies", "study_name": "d"}
    config = SearchConfig(model="yolov8n-coco.pt", data=str(tmp_path / "data" / "data.yaml"), **base)
    monkeypatch.chdir(tmp_path / "work")  # `path: .` is not here: read from the yaml's folder
    study = open_study_for_run(config)[0]
    assert study.user_attrs["job"]["data_digest"] == prepare_dataset(config.data).digests
    # from a folder that holds splits of its own, Ultralytics reads `path: .` there: other labels, refused
    dataset(tmp_path / "elsewhere")
    label = max((tmp_path / "elsewhere" / "labels" / "val").iterdir(), key=lambda f: len(f.read_text().splitlines()))
    label.write_text(label.read_text().splitlines()[0] + "\n")  # one box left of several
    monkeypatch.chdir(tmp_path / "elsewhere")
    with pytest.raises(YolotuneError) as refused:
        open_study_for_run(config)
    assert str(refused.value) == (
        f"study 'd' was measured on other images or labels than the val split(s) of {config.data} hold now (images "
        "or labels added, removed or edited since, or a relative `path:` in its yaml read from another working "
        "directory): restore them, or run from the folder `tune run` ran in, or pass another --study name"
    )
    monkeypatch.chdir(tmp_path / "work")
    open_study_for_run(config)  # the same data again: resumed
    image = next((tmp_path / "data" / "images" / "val").iterdir())  # a validation image taken out
    image.unlink()
    (tmp_path / "data" / "labels" / "val" / image.with_suffix(".txt").name).unlink()
    with pytest.raises(YolotuneError, match=r"^study 'd' was measured on other images or labels than the val split"):
        open_study_for_run(config)
    # a study made before data digests records them on its next run, and is held to them from then on
    study.set_user_attr("job", {k: v for k, v in study.user_attrs["job"].items() if k != "data_digest"})
    open_study_for_run(config)
    assert study.user_attrs["job"]["data_digest"] == prepare_dataset(config.data).digests
    train = next((tmp_path / "data" / "labels" / "train").iterdir())
    train.write_text("")  # a training label emptied
    with pytest.raises(YolotuneError, match=r"^study 'd' was measured on other images or labels than the train split"):
        open_study_for_run(config)


def test_a_resumed_study_does_not_replay_the_previous_runs_draws(tmp_path: Path) -> None:
    from yolotune.search._study import open_study_for_run

    config = SearchConfig(
        model="yolov8n-coco.pt", data="coco8", budget=5, root=tmp_path, sampler="random", seed=3, study_name="r"
    )
    space = search_spaces(config)[0]
    drawn = []
    for _ in range(3):  # three runs of the same command, one trial each
        study, _, _ = open_study_for_run(config)
        trial = study.ask()
        drawn.append(trial.params if space(trial) else None)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    assert drawn[0] != drawn[1] != drawn[2] != drawn[0]
    # and the same history gives the same draw (reproducible)
    again = SearchConfig(**{**config.__dict__, "root": tmp_path / "again"})
    first, _, _ = open_study_for_run(again)
    t = first.ask()
    space(t)
    assert t.params == drawn[0]
