from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from yolotune.cli import app

runner = CliRunner()


def _error(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr  # nothing else, not even a blank line (a spinner stopped off a terminal)
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture
def plan_file(tmp_path: Path):
    def write(plan: dict) -> str:
        path = tmp_path / "plan.yaml"
        path.write_text(yaml.safe_dump(plan))
        return str(path)

    return write


def test_missing_weights(tmp_path: Path) -> None:
    line = _error(["baseline", "--model", "nope.pt", "--data", "coco8"])
    assert "model 'nope.pt' not found; looked at" in line and "weights/nope.pt" in line
    assert line.endswith("; pass a trained Ultralytics .pt checkpoint, or a bundled name: yolov8n-coco.pt")


def test_missing_data_names_what_would_do(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "data.yaml"
    line = _error(["baseline", "--data", str(missing)])
    # a yaml path is looked for as given (not as a folder holding data.yaml), and the bundled names are offered
    assert line == (
        f"error: dataset '{missing}' not found; looked at {missing}; pass a data yaml (train, val, names) as for "
        "Ultralytics, or a bundled name: coco8, tiny_coco"
    )


def test_corrupt_weights(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    assert f"cannot load {bad} as an Ultralytics YOLO detector" in _error(
        ["baseline", "--model", str(bad), "--data", "coco8"]
    )


def test_brackets_in_a_message_are_printed_as_given_not_read_as_markup(tmp_path: Path) -> None:
    """Paths and reasons reach the terminal verbatim: rich tags in them neither crash the CLI nor vanish."""
    closing = tmp_path / "[/x]" / "data.yaml"  # rich raised MarkupError on the closing tag: a traceback, exit 1
    assert f"dataset '{closing}' not found" in _error(["baseline", "--data", str(closing)])
    tagged = tmp_path / "coco[v2]" / "data.yaml"  # rich dropped "[v2]" and named another folder
    assert f"dataset '{tagged}' not found; looked at {tagged}" in _error(["baseline", "--data", str(tagged)])
    space = tmp_path / "space.yaml"
    space.write_text("units: [backbone.0]\n")
    assert "(unit: [group, ...])" in _error(["run", "--space", str(space), "--root", str(tmp_path)])


def test_data_yaml_without_val(tmp_path: Path) -> None:
    data = tmp_path / "data.yaml"
    from yolotune.assets import assets_dir

    train = assets_dir() / "datasets" / "coco8" / "images" / "train"
    data.write_text(yaml.safe_dump({"train": str(train), "names": {0: "a"}}))
    line = _error(["baseline", "--data", str(data)])
    assert "has no 'val' split" in line
    # a second val would silently replace the first
    data.write_text(f"train: {train}\nval: {train}\nval: {train}\nnames: {{0: a}}\n")
    line = _error(["baseline", "--data", str(data)])
    assert f"data yaml {data} is not valid YAML: found duplicate key 'val' at line 3, column 1" in line


def test_data_yaml_with_other_classes_than_the_model(tmp_path: Path) -> None:
    from yolotune.assets import assets_dir

    coco8 = assets_dir() / "datasets" / "coco8" / "images"
    for split in ("train", "val"):  # coco8's images, every box labelled person: a one-class dataset
        for image in (coco8 / split).iterdir():
            (tmp_path / "images" / split).mkdir(parents=True, exist_ok=True)
            (tmp_path / "images" / split / image.name).symlink_to(image)
            (tmp_path / "labels" / split).mkdir(parents=True, exist_ok=True)
            (tmp_path / "labels" / split / image.name).with_suffix(".txt").write_text("0 0.5 0.5 0.2 0.2\n")
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump({"train": "images/train", "val": "images/val", "names": ["person"]}))
    line = _error(["baseline", "--data", str(data)])
    assert line == f"error: data yaml {data} names 1 class(es); the model detects 80: " + (
        "pass the dataset the model was trained on (its data yaml's names)"
    )
    assert "the model detects 80" in _error(["run", "--data", str(data), "--budget", "1", "--root", str(tmp_path)])


def test_unknown_group(plan_file, tmp_path: Path) -> None:
    line = _error(
        [
            "eval",
            "--data",
            "coco8",
            "--imgsz",
            "160",
            "--plan",
            plan_file({"pruning": {"ratios": {"backbone.42": 0.2}}}),
        ]
    )
    assert "unknown pruning group 'backbone.42'; valid groups: backbone.0" in line
    assert line.startswith(f"error: plan file {tmp_path / 'plan.yaml'}: ")  # which file, not only what in it


def test_ratio_out_of_range(plan_file) -> None:
    line = _error(["eval", "--data", "coco8", "--plan", plan_file({"pruning": {"ratios": {"backbone.4": 0.95}}})])
    assert line.endswith("plan.yaml: pruning ratio of 'backbone.4' is 0.95; it must lie in [0, 0.9]")


def test_unknown_target_and_missing_plan(tmp_path: Path) -> None:
    assert "unknown target 'jetson-nano'" in _error(["baseline", "--data", "coco8", "--target", "jetson-nano"])
    assert "--device-url http://DEVICE:8765" in _error(["baseline", "--data", "coco8", "--target", "jetson-orin"])
    assert "plan file not found" in _error(["eval", "--data", "coco8", "--plan", str(tmp_path / "none.yaml")])


def test_eval_refuses_a_plan_before_building_the_baseline(plan_file, tmp_path: Path) -> None:
    out = tmp_path / "out"
    too_many = plan_file({"quantization": {"default": "int8"}})  # the default count, 32, which the user never wrote
    line = _error(["eval", "--data", "coco8", "--plan", too_many, "--out", str(out)])
    assert (
        "quantization.calibration_images is 32 (also the default when unset) but the training split holds 4 images; "
        in line
    )
    assert line.endswith("set quantization.calibration_images to at most 4 in the plan")
    assert not (out / "baseline").exists()  # refused before any work
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    assert "plan file " + str(empty) + " is empty" in _error(["eval", "--data", "coco8", "--plan", str(empty)])
    assert "is a directory" in _error(["eval", "--data", "coco8", "--plan", str(tmp_path)])
    broken = tmp_path / "broken.yaml"
    broken.write_text("pruning: {ratios: [\n")
    assert f"plan file {broken} is not valid YAML: " in _error(["eval", "--data", "coco8", "--plan", str(broken)])
    twice = tmp_path / "twice.yaml"  # the second ratios would silently replace the first
    twice.write_text("pruning:\n  ratios: {backbone.7: 0.25}\n  ratios: {neck.16: 0.25}\n")
    line = _error(["eval", "--data", "coco8", "--plan", str(twice)])
    assert line == f"error: plan file {twice} is not valid YAML: found duplicate key 'ratios' at line 3, column 3"


def test_paths_that_cannot_be_used_are_named_in_one_line(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    line = _error(["baseline", "--data", "coco8", "--imgsz", "160", "--out", str(afile)])
    assert line == f"error: cannot write into the folder {afile}: it is not a folder; pass another path"
    # the Python API says the same, as a YolotuneError: not a FileExistsError from deep inside a step
    from yolotune import YolotuneError
    from yolotune.search import run_candidate
    from yolotune.spaces import CompressionPlan

    with pytest.raises(YolotuneError) as refused:
        run_candidate(model="yolov8n-coco.pt", data="coco8", plan=CompressionPlan(), out_dir=afile / "trial")
    assert (
        str(refused.value)
        == f"cannot write into the folder {afile / 'trial'}: {afile} is not a folder; pass another path"
    )
    missing = tmp_path / "missing.db"
    assert "storage file" in _error(["show", "--storage", f"sqlite:///{missing}"])
    assert not missing.exists()  # a read-only command creates no empty study file
    assert "imgsz must be a multiple of 32" in _error(["baseline", "--data", "coco8", "--imgsz", "0"])
    huge = _error(["baseline", "--data", "coco8", "--imgsz", "100000"])  # refused before any allocation
    assert huge == "error: imgsz must be a multiple of 32 from 32 to 4096; got 100000"
    assert "--seed must be a whole number from 0" in _error(["run", "--seed", "-1", "--root", str(tmp_path)])


def test_eval_prints_the_comparison_and_writes_metrics(plan_file, tmp_path: Path, monkeypatch) -> None:
    plan = plan_file({"quantization": {"precision": {"backbone.0": "int8"}, "calibration_images": 4}})
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    result = runner.invoke(app, ["eval", "--data", "coco8", "--imgsz", "160", "--plan", plan, "--out", "run"])
    assert result.exit_code == 0, result.output
    # both printed paths are absolute, as the deployable's always was: found again from anywhere
    lines = [line for line in result.stdout.splitlines() if line.startswith(("deployable:", "metrics:"))]
    printed = dict(line.split(": ", 1) for line in lines)
    assert Path(printed["metrics"]) == out / "candidate" / "metrics.json"
    assert Path(printed["deployable"]).parent == out / "candidate"
    assert "plan: fp32/int8 u8 minmax×4" in result.stdout  # one group INT8, the rest FP32: a mixed plan
    assert "baseline" in result.stdout and "candidate" in result.stdout and "speed" in result.stdout
    metrics = json.loads((out / "candidate" / "metrics.json").read_text())
    assert metrics["deployable"].endswith("model.int8.onnx")
    # built for the CPU that timed it: 7-bit weights where its INT8 kernels saturate
    from yolotune.evaluators import int8_saturates

    assert metrics["quantize"]["weight_bits"] == (7 if int8_saturates() else 8)
    assert (out / "baseline" / "metrics.json").exists()


def test_eval_says_when_the_uncompressed_model_scores_nothing(plan_file, tmp_path: Path) -> None:
    import torch
    from ultralytics.nn.tasks import DetectionModel

    from yolotune.compression import ultralytics_adapter as adapter

    plan = plan_file({"quantization": {"default": "int8", "calibration_images": 4}})
    torch.manual_seed(0)  # an untrained detector, saved as a checkpoint like a trained one: no plan compares
    checkpoint = adapter.save_checkpoint(DetectionModel("yolov8n.yaml", verbose=False).eval(), tmp_path / "new.pt")
    args = ["eval", "--model", str(checkpoint), "--data", "coco8", "--imgsz", "160", "--plan", plan]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    said = [line for line in result.stderr.splitlines() if line.startswith("warning: the uncompressed")]
    assert said == [
        "warning: the uncompressed model scores mAP50-95 0.000 on these validation images: it is untrained, trained "
        "for other data, or run at an input size far from its training size (--imgsz), so no plan can be measured "
        "against it; pass the trained checkpoint (runs/detect/<name>/weights/best.pt), the data it was trained for, "
        "and an --imgsz near its training size"
    ]


def test_one_off_measurements_never_overwrite_each_other(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.pt").write_bytes(b"\x00garbage")
    for expected in ("runs/baseline", "runs/baseline2"):  # numbered as Ultralytics numbers its runs
        # a model it cannot load is refused before a run folder is taken: no empty runs/baseline
        refused = runner.invoke(app, ["baseline", "--model", "bad.pt", "--data", "coco8", "--imgsz", "160"])
        assert refused.exit_code == 2 and "cannot load" in refused.output
        result = runner.invoke(app, ["baseline", "--data", "coco8", "--imgsz", "160"])
        assert result.exit_code == 0, result.output
        assert f"artifacts and metrics.json in {expected}" in result.stdout
        assert (tmp_path / expected / "metrics.json").is_file()


def test_run_bad_arguments(tmp_path: Path) -> None:
    assert "--budget must be a positive number of trials; got 0" in _error(["run", "--data", "coco8", "--budget", "0"])
    line = _error(["run", "--data", "coco8", "--budget", "1", "--storage", "nosuchdb://x"])
    assert "cannot open storage 'nosuchdb://x'" in line
    assert "unknown target 'jetson-nano'" in _error(["run", "--data", "coco8", "--target", "jetson-nano"])
    assert "is timed on the device" in _error(["run", "--data", "coco8", "--target", "jetson-orin"])
    line = _error(["show", "--root", str(tmp_path)])
    assert "no study in" in line and "run `tune run` first" in line
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "demo.db").write_bytes(b"")  # --root given the project folder, not its studies
    line = _error(["show", "--root", str(tmp_path)])
    assert line.endswith(f"no study in {tmp_path}/; {tmp_path}/studies/ holds some: pass --root {tmp_path}/studies")
    line = _error(["show", "--root", str(tmp_path / "studies"), "--study", "Demo"])
    assert line.endswith("no study 'Demo' in " + f"{tmp_path}/studies/ (it holds demo); did you mean 'demo'?")
    assert "--max-map-drop is an mAP50-95 difference" in _error(
        ["run", "--data", "coco8", "--max-map-drop", "5", "--root", str(tmp_path)]
    )
    assert "no study 'nope'" in _error(["report", "--root", str(tmp_path), "--study", "nope"])
    assert "add --multi-fidelity" in _error(["run", "--data", "coco8", "--rung0-val", "4", "--root", str(tmp_path)])
    assert "--rung0-val must be ≥1" in _error(
        ["run", "--data", "coco8", "--multi-fidelity", "--rung0-val", "0", "--root", str(tmp_path)]
    )
    line = _error(["run", "--data", "coco8", "--workers", "2", "--ray-address", "127.0.0.1:1", "--root", str(tmp_path)])
    assert "cannot reach a Ray cluster at 127.0.0.1:1" in line
    assert "--space must be a .yaml file or module:callable" in _error(
        ["run", "--data", "coco8", "--space", "x", "--root", str(tmp_path)]
    )
    assert "--sensitivity-drop is an mAP50-95 difference" in _error(
        ["run", "--data", "coco8", "--sensitivity-drop", "2", "--root", str(tmp_path)]
    )
    assert "--sensitivity-ratio must be in (0, " in _error(
        ["run", "--data", "coco8", "--sensitivity-drop", "0.02", "--sensitivity-ratio", "0", "--root", str(tmp_path)]
    )
    assert "--sensitivity-recovery must be one of bn, bias, ls; got 'none'" in _error(
        ["run", "--data", "coco8", "--sensitivity-drop", "0.02", "--sensitivity-recovery", "none"]
    )
    space = tmp_path / "myspace.py"
    space.write_text("from yolotune.spaces import CompressionPlan\ndef space(trial):\n    return CompressionPlan()\n")
    line = _error(
        ["run", "--data", "coco8", "--space", f"{space}:space", "--sensitivity-drop", "0.02", "--root", str(tmp_path)]
    )
    assert "a Python space chooses its own groups" in line
    # options that change nothing without another: refused, not ignored
    run = ["run", "--data", "coco8", "--root", str(tmp_path)]
    assert _error([*run, "--promote-margin", "0.05"]) == (
        "error: --promote-margin applies to a --multi-fidelity search; add that"
    )
    assert _error([*run, "--sensitivity-ratio", "0.5"]) == (
        "error: --sensitivity-ratio applies with --sensitivity-drop; add --sensitivity-drop D"
    )
    assert _error([*run, "--sampler", "tpe", "--population", "4"]) == (
        "error: --population sets NSGA-II's population; not --sampler tpe"
    )
    assert "the Python space " in _error([*run, "--space", f"{space}:space", "--fine"])


def test_fine_units_apply_to_a_yaml_space_unless_it_sets_its_own(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from yolotune.search import SearchConfig, search_spaces

    (tmp_path / "narrow.yaml").write_text("max_ratio: 0.3\n")
    (tmp_path / "units.yaml").write_text("units: {stem: [backbone.0, backbone.1]}\n")
    base = {"model": "yolov8n-coco.pt", "data": "coco8", "budget": 1, "root": tmp_path}
    fine, default = search_spaces(SearchConfig(space=str(tmp_path / "narrow.yaml"), fine=True, **base))
    assert fine.units() == {g: (g,) for g in default.groups} and len(default.groups) == 22
    coarse, _ = search_spaces(SearchConfig(space=str(tmp_path / "narrow.yaml"), **base))
    assert len(coarse.units()) == 5
    assert not caplog.records
    own, _ = search_spaces(SearchConfig(space=str(tmp_path / "units.yaml"), fine=True, **base))
    assert own.units() == {"stem": ("backbone.0", "backbone.1")}
    assert [r.getMessage() for r in caplog.records] == [  # ignored, and said so
        f"--fine changes nothing: space {tmp_path / 'units.yaml'} sets its own units (or `fine`); leave out --fine, "
        "or those keys"
    ]


def test_run_show_report_and_export_one_study(small_study: tuple[Path, str, str], tmp_path: Path) -> None:
    import optuna

    from yolotune.studies import current_retiming, load_study, pareto_front

    root, name, output = small_study
    assert "Pareto front of small" in output
    # the command the caption suggests finds the study from any folder (rich wraps the caption anywhere)
    suggested = f"export with `tune export --study small --root {root.resolve()} --trial N`"
    assert "".join(suggested.split()) in "".join(output.split())
    front = [r.number for r in pareto_front(load_study(study=name, root=root))]
    # one study under --root: --study may be left out
    shown = runner.invoke(app, ["show", "--root", str(root)], env={"COLUMNS": "250"})
    assert shown.exit_code == 0, shown.output
    rows = [line for line in shown.stdout.splitlines() if line.startswith("│")]
    assert [int(r.split("│")[1].split()[0]) for r in rows] == front
    assert "infeasible under max_map_drop 0.05" in shown.stdout
    # the search ended by timing the trials near its front again, in two rounds with the FP32 reference
    retiming = current_retiming(load_study(study=name, root=root))
    assert retiming is not None and retiming.rounds == 2 and set(front) <= {*retiming.trials, retiming.reference_trial}
    assert (
        "re-timed ms" in shown.stdout and f"{len(retiming.trials)} trial(s) near the front timed in 2" in shown.stdout
    )
    # an 80-column terminal: the table fits, no number is cut off, and the plans follow it
    narrow = runner.invoke(app, ["show", "--root", str(root)], env={"COLUMNS": "80"})
    assert narrow.exit_code == 0 and "…" not in narrow.stdout
    lines = narrow.stdout.splitlines()
    caption = next(k for k, line in enumerate(lines) if " complete, " in line)  # one long line: rich wraps it
    assert all(len(line) <= 80 for line in lines[:caption])
    assert [int(line.split()[1].rstrip(":")) for line in lines if line.startswith("  trial ")] == front

    html = tmp_path / "report.html"
    reported = runner.invoke(app, ["report", "--root", str(root), "-o", str(html)])
    assert reported.exit_code == 0, reported.output
    page = html.read_text()
    assert all(f'data-trial="{n}"' in page for n in front)
    assert "Re-timed ms" in page

    out = tmp_path / "export"
    args = ["export", "--root", str(root), "--trial", str(front[-1]), "--out", str(out), "--rounds", "3"]
    exported = runner.invoke(app, args, env={"COLUMNS": "250"})
    assert exported.exit_code == 0, exported.output
    assert "re-measured" in exported.stdout and "mAP50-95" in exported.stdout
    assert "re-measured latency: median of 3 timings" in exported.stdout or re.search(
        r"re-measured: medians of 3 rounds, each timing the FP32 reference trial's file beside this one "
        r"\(speed quartiles \d+\.\d\d–\d+\.\d\d\)",
        exported.stdout,
    )
    assert (out / "recipe.yaml").is_file() and any(out.glob("*.onnx"))
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert recipe["recorded"]["retimed"] == retiming.point(front[-1]).to_dict()
    failed = optuna.trial.TrialState.FAIL
    assert not load_study(study=name, root=root).get_trials(states=(failed,))


def test_targets_lists_precisions_and_int8_activation_types() -> None:
    result = runner.invoke(app, ["targets"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 3}
    assert "uint8" in rows["local-cpu"] and "int8, fp32" in rows["local-cpu"]
    assert "uint8" not in rows["jetson-orin"] and "int8, fp16, fp32" in rows["jetson-orin"]
    assert rows["raspberry-pi-5"].split("│")[7].strip() == "4" and rows["local-cpu"].split("│")[7].strip() == "all"


def test_targets_says_which_built_ins_a_file_replaces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("yolotune.evaluators._spec._SPECS", {})
    monkeypatch.setattr("yolotune.evaluators._spec._LOADED", [])
    monkeypatch.delenv("YOLOTUNE_TARGETS", raising=False)
    mine = tmp_path / "mine.yaml"
    mine.write_text("local-cpu:\n  runtime: onnxruntime\n  precisions: [int8, fp32]\n  threads: 1\n")
    result = runner.invoke(app, ["targets", "--targets-file", str(mine)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "replaces the built-in local-cpu" in " ".join(result.output.split())


def test_show_and_export_keep_rung0_stops_apart_from_the_front(tmp_path: Path) -> None:
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from yolotune.studies import default_storage_url

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st = optuna.create_study(
        study_name="mf", storage=default_storage_url(tmp_path, "mf"), directions=["maximize", "minimize", "minimize"]
    )
    common = {"params": {"x": 0.5}, "distributions": {"x": FloatDistribution(0.0, 1.0)}}
    st.add_trial(create_trial(values=[0.35, 3.5, 5.0], user_attrs={"fidelity": "full", "brief": "int8"}, **common))
    stop = {"fidelity": "rung0", "brief": "pruned", "rung0": {"map50_95": 0.1, "latency_ms": 4.0, "size_bytes": 3e6}}
    st.add_trial(create_trial(state=TrialState.PRUNED, user_attrs=stop, **common))

    shown = runner.invoke(app, ["show", "--root", str(tmp_path)], env={"COLUMNS": "250"})
    assert shown.exit_code == 0, shown.output
    rows = [line for line in shown.stdout.splitlines() if line.startswith("│")]
    assert [r.split("│")[1].strip() for r in rows] == ["0"]
    assert "1 complete, 0 failed, 1 stopped at rung 0" in shown.stdout
    line = _error(["export", "--root", str(tmp_path), "--trial", "1", "--out", str(tmp_path / "x")])
    assert line.startswith("error: trial 1 stopped at rung 0 of a multi-fidelity search: it was never evaluated in")
    assert line.endswith(
        "export a COMPLETE trial (see `tune show`), or evaluate its plan with `tune eval --plan PLAN.yaml`"
    )


def test_a_study_timed_on_another_device_is_refused_in_one_line(tmp_path: Path, coco8_search) -> None:
    from yolotune.search._study import open_study_for_run

    open_study_for_run(coco8_search(study_name="moved"), timed_on={"device": "Some Other CPU", "int8_weight_bits": 8})
    args = ["run", "--data", "coco8", "--imgsz", "160", "--budget", "1", "--root", str(tmp_path), "--study", "moved"]
    line = _error(args)  # one line: no progress display before the refusal
    assert "study 'moved' was timed on Some Other CPU with 8-bit INT8 weights, this run would time on" in line
    assert "resume it there or pass another --study name" in line


def test_retime_times_the_front_again_where_the_study_was_searched(tmp_path: Path, coco8_search) -> None:
    from yolotune.search import run_search
    from yolotune.studies import current_retiming

    study = run_search(coco8_search(budget=2, study_name="rt"))  # the fp32 and int8 references, not re-timed
    args = ["retime", "--root", str(tmp_path), "--study", "rt"]
    done = runner.invoke(app, [*args, "--rounds", "2"], env={"COLUMNS": "250"})
    assert done.exit_code == 0, done.output
    retiming = current_retiming(study)
    assert retiming is not None and retiming.rounds == 2
    assert "re-timed ms" in done.stdout and "timed in 2 rounds with the FP32 reference" in done.stdout
    # more rounds go on from those done; --fresh starts again
    assert runner.invoke(app, [*args, "--rounds", "3"]).exit_code == 0
    assert current_retiming(study).reference_ms[:2] == retiming.reference_ms
    # as many rounds as done already: nothing timed, and the way to add rounds said
    again = runner.invoke(app, [*args, "--rounds", "2"])
    assert again.exit_code == 0 and current_retiming(study).rounds == 3
    assert "already timed in 3 rounds (≥ --rounds 2): nothing added; --rounds 5 adds 2" in again.stderr
    assert runner.invoke(app, [*args, "--rounds", "1", "--fresh"]).exit_code == 0
    assert current_retiming(study).rounds == 1
    # while its rounds run, the study's folder is marked as re-timed: `tune delete` waits for them
    from yolotune.search import retime_study
    from yolotune.studies import recorded_folder

    marks = recorded_folder(study) / ".searches"
    seen: list[list[tuple[int, str]]] = []

    def step(number: int, what: str) -> None:
        seen.append(
            [(json.loads(m.read_text())["pid"], json.loads(m.read_text())["use"]) for m in marks.glob("*.json")]
        )

    retime_study(study, rounds=2, on_step=step)
    assert seen and all(marked == [(os.getpid(), "retime")] for marked in seen)
    assert not list(marks.glob("*.json"))  # gone with the rounds

    assert _error([*args, "--rounds", "0"]) == "error: --rounds must be ≥1; got 0"
    study.set_user_attr("timed_on", {"device": "Some Other CPU", "int8_weight_bits": 8})
    line = _error(args)
    assert "study 'rt' was timed on Some Other CPU with 8-bit INT8 weights, this target times on" in line
    assert line.endswith("re-time it where it was searched")


def test_a_signal_landing_in_a_finalizer_prints_no_traceback_and_still_stops() -> None:
    import gc
    import os
    import signal
    import sys
    import time

    from yolotune._cli import Interrupts

    class Loader:  # like Ultralytics' InfiniteDataLoader, which shuts its workers down in __del__
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler runs here, inside the finalizer

    printed: list[BaseException | None] = []  # what Python would print as "Exception ignored in ..."
    before = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: printed.append(unraisable.exc_value)
    try:
        with Interrupts().installed() as interrupts:
            Loader()  # collected at once
            gc.collect()
            assert interrupts.requested
            with pytest.raises(KeyboardInterrupt):
                interrupts.check()  # the next step stops, as if the signal had not been swallowed
    finally:
        sys.unraisablehook = before
    assert printed == []


def test_show_marks_speed_ups_without_a_paired_reference_timing(tmp_path: Path) -> None:
    import optuna

    from yolotune.studies import default_storage_url

    # the FP32 reference failed and its retry ran after trial 1: trial 1 had no reference to pair with
    study = optuna.create_study(
        study_name="s", storage=default_storage_url(tmp_path, "s"), directions=["maximize", "minimize", "minimize"]
    )
    rows = [
        ([0.35, 12.0, 14.0], {"reference": "fp32", "brief": "fp32"}),
        ([0.34, 3.5, 7.0], {"brief": "int8 u8 minmax×32"}),
        ([0.30, 3.0, 5.0], {"brief": "int8 pruned", "reference_ms": 12.5}),
        ([0.29, 2.9, 2.0], {"brief": "int8 pruned more", "reference_ms": 40.0}),  # timed beside a loaded machine
    ]
    for values, attrs in rows:
        study.add_trial(optuna.trial.create_trial(values=values, user_attrs=attrs))
    failed = optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs={"fail_reason": "quantize: NaN"})
    study.add_trial(failed)
    # interrupted twice, then run to the end: done with, not listed among the latest failures
    for n in (5, 6):
        attrs = {"fail_reason": "interrupted", **({"retry_of": 5} if n == 6 else {})}
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs=attrs))
    study.add_trial(optuna.trial.create_trial(values=[0.1, 20.0, 20.0], user_attrs={"retry_of": 6}))
    # queued: a failed reference's retry runs whatever the budget, another plan only under a budget
    # over the 5 evaluated, and so does a reference never tried (a budget smaller than the references)
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs={"reference": "seeds"}))
    study.enqueue_trial({}, user_attrs={"reference": "seeds", "retry_of": 8})
    study.enqueue_trial({}, user_attrs={"retry_of": 3})
    study.enqueue_trial({}, user_attrs={"reference": "int8"})
    shown = runner.invoke(app, ["show", "--root", str(tmp_path)], env={"COLUMNS": "250"})
    assert shown.exit_code == 0, shown.output
    assert "trial 4 failed: quantize: NaN" in shown.stdout  # why, not only how many
    assert "interrupted" not in shown.stdout
    rows = [r.split("│") for r in shown.stdout.splitlines() if r[:1] == "│"]
    speeds = {int(r[1].split()[0]): r[5].strip() for r in rows}
    assert speeds == {0: "1.00×", 1: "2.00×†", 2: "2.50×", 3: "20.00×‡"}
    caption = " ".join(shown.stdout.split())
    assert "† against the reference trial's own timing" in caption
    assert "‡ its FP32 reference took under half or over twice the reference trial's own time" in caption
    assert "1 queued that the next `tune run` evaluates whatever its --budget (a failed reference's retry)" in caption
    assert "2 queued that the next `tune run` evaluates before new plans if its --budget is over the 5" in caption
    # the same, for a script: one JSON object on stdout
    as_json = runner.invoke(app, ["show", "--root", str(tmp_path), "--json"])
    assert as_json.exit_code == 0, as_json.output
    summary = json.loads(as_json.stdout)
    assert summary["study"] == "s" and (summary["complete"], summary["evaluated"]) == (5, 5)
    assert (summary["queued_anyway"], summary["queued"]) == (1, 2)
    assert [(r["number"], r["unpaired"], r["disturbed"]) for r in summary["front"]] == [
        (3, False, True),
        (2, False, False),
        (1, True, False),
        (0, False, False),
    ]
    assert summary["front"][0]["speedup"] == 20.0 and summary["retiming"] is None
    assert summary["failures"][0] == {"trial": 4, "reason": "quantize: NaN"}


def test_suggested_commands_name_storage_files_absolutely(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from yolotune._cli import where_options
    from yolotune.studies import open_storage

    monkeypatch.chdir(tmp_path)
    assert where_options(Path("studies"), None) == ""
    assert where_options(Path("st"), None) == f" --root {tmp_path / 'st'}"
    assert where_options(Path("studies"), "journal:logs/j.log") == f" --storage journal:{tmp_path / 'logs' / 'j.log'}"
    assert where_options(Path("studies"), "sqlite:///s/x.db") == f" --storage sqlite:///{tmp_path / 's' / 'x.db'}"
    assert where_options(Path("studies"), "postgresql+psycopg://u@h/db") == " --storage postgresql+psycopg://u@h/db"
    open_storage("journal:logs/j.log")  # its folder is made, as --root's is
    assert (tmp_path / "logs").is_dir()


def test_a_study_database_deleted_under_a_command_is_named_in_one_line(tmp_path: Path, capsys) -> None:
    import optuna
    import typer

    from yolotune._cli import one_line_errors
    from yolotune.studies import default_storage_url, open_storage

    url = default_storage_url(tmp_path, "gone")
    study = optuna.create_study(study_name="gone", storage=open_storage(url))
    study.set_user_attr("job", {})

    @one_line_errors
    def run() -> None:
        (tmp_path / "gone.db").unlink()  # as `rm studies/gone.db` while a run writes to it
        study.set_user_attr("job", {"again": True})

    with pytest.raises(typer.Exit) as stopped:
        run()
    assert stopped.value.exit_code == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("error: the study's storage cannot be written (") and "readonly database" in line
    assert line.endswith("its database is still there, then run the same command to resume")


def test_a_study_no_trial_of_which_meets_its_constraints_says_so(tmp_path: Path) -> None:
    import optuna

    from yolotune.studies import default_storage_url

    study = optuna.create_study(
        study_name="s", storage=default_storage_url(tmp_path, "s"), directions=["maximize", "minimize", "minimize"]
    )
    study.set_user_attr("constraints", {"max_map_drop": None, "max_latency_ms": 0.001})
    for values in ([0.35, 12.0, 14.0], [0.34, 3.5, 7.0]):
        study.add_trial(optuna.trial.create_trial(values=values, constraints={"latency": values[2] - 0.001}))
    shown = runner.invoke(app, ["show", "--root", str(tmp_path)], env={"COLUMNS": "250"})
    assert shown.exit_code == 0, shown.output
    assert "no trial meets max_latency_ms 0.001: every one of the 2 measured breaks it" in shown.stdout
    html = tmp_path / "r.html"
    reported = runner.invoke(app, ["report", "--root", str(tmp_path), "-o", str(html)])
    assert reported.exit_code == 0 and "nothing to take the hypervolume of" in html.read_text()


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["export", "--trial", "abc"], "error: Invalid value for '--trial' / '-n': "),
        (["show", "--nope"], "error: No such option: --nope; see `tune show --help`"),
        (["nosuch"], "error: No such command 'nosuch'; see `tune --help`"),
    ],
)
def test_bad_options_are_one_line_errors_as_well(argv: list[str], line: str, monkeypatch, capsys) -> None:
    from yolotune.cli import main

    monkeypatch.setattr(sys, "argv", ["tune", *argv])
    with pytest.raises(SystemExit) as stopped:  # the console script's entry point, as `tune` runs it
        main()
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(line), err


def test_logged_warnings_print_as_the_clis_own_warning_lines(tmp_path: Path, monkeypatch, capsys) -> None:
    import logging

    import torch

    from yolotune.cli import main

    if torch.cuda.is_available():  # the run below stops for want of a CUDA device
        pytest.skip("a CUDA device: --train-device 0 would train")
    monkeypatch.setattr(logging.getLogger("yolotune"), "handlers", [])  # main's handler goes with this test
    (tmp_path / "units.yaml").write_text("units: {stem: [backbone.0, backbone.1]}\n")
    argv = ["run", "--data", "coco8", "--space", str(tmp_path / "units.yaml"), "--fine", "--train-device", "0"]
    monkeypatch.setattr(sys, "argv", ["tune", *argv, "--root", str(tmp_path)])
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"warning: --fine changes nothing: space {tmp_path / 'units.yaml'} sets its own units (or `fine`); leave out "
        "--fine, or those keys",
        "error: --train-device 0: no CUDA device on this machine; use --train-device cpu",
    ]


def test_the_alias_names_itself_in_usage_errors(monkeypatch, capsys) -> None:
    from yolotune.cli import main

    monkeypatch.setattr(sys, "argv", ["/somewhere/bin/yolotune", "show", "--nope"])
    with pytest.raises(SystemExit):
        main()
    assert capsys.readouterr().err == "error: No such option: --nope; see `yolotune show --help`\n"


def test_progress_in_a_log_is_as_wide_as_the_lines_around_it(monkeypatch) -> None:
    from yolotune._cli import consoles

    monkeypatch.delenv("COLUMNS", raising=False)
    assert consoles.err.width == consoles.out.width == 160  # pytest's streams are no terminal: a log's width
    monkeypatch.setenv("COLUMNS", "100")
    assert consoles.err.width == consoles.out.width == 100


def test_version_prints_the_packages_version(monkeypatch, capsys) -> None:
    from yolotune import __version__
    from yolotune.cli import main

    monkeypatch.setattr(sys, "argv", ["tune", "--version"])
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 0 and capsys.readouterr().out == f"yolotune {__version__}\n"


def test_eval_warns_when_a_timing_spread_too_widely_to_trust_its_speed_up() -> None:
    from types import SimpleNamespace

    from yolotune._cli import NOISY_CV, noisy_timing
    from yolotune.evaluators import LatencyStats

    def result(samples: list[float]) -> SimpleNamespace:
        return SimpleNamespace(latency=LatencyStats.from_samples(samples, warmup=0, started_at=0.0, ended_at=0.0))

    quiet, busy = result([6.0, 6.1, 5.9, 6.0]), result([6.0, 19.0, 6.1, 30.0])
    assert quiet.latency.cv < NOISY_CV < busy.latency.cv
    assert noisy_timing([("baseline", quiet), ("candidate", quiet)]) is None
    warning = noisy_timing([("baseline", busy), ("candidate", quiet)])
    assert warning is not None and warning.startswith(
        f"the timings spread widely (cv: baseline {busy.latency.cv:.0%}):"
    )
