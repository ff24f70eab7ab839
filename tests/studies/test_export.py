from __future__ import annotations

import json
import shutil
import socket
import statistics
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from yolotune import StepError, YolotuneError
from yolotune.spaces import CompressionPlan
from yolotune.studies import artifact_dir, deployable_file, export_trial, find_artifact_dir, load_study, pareto_front


def _copy_of(study: optuna.Study, **attrs: object) -> optuna.Study:
    """An in-memory study with ``study``'s user attributes, ``attrs`` replacing some (no trials)."""
    copy = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    for key, value in {**study.user_attrs, **attrs}.items():
        copy.set_user_attr(key, value)
    return copy


def test_export_reproduces_the_recorded_map_of_front_trials(small_study: tuple[Path, str, str], tmp_path: Path) -> None:
    root, name, _ = small_study
    study = load_study(study=name, root=root)
    front = pareto_front(study)
    assert front
    for row in front:
        res = export_trial(study, row.number, tmp_path / str(row.number), artifacts=artifact_dir(root, name), rounds=3)
        trial = study.trials[row.number]
        # the file handed out is the file the trial measured
        assert res.model.read_bytes() == Path(trial.user_attrs["artifact"]).read_bytes()
        assert abs(res.measured["map50_95"] - row.map50_95) <= 0.002
        assert res.measured["size_bytes"] == trial.user_attrs["metrics"]["size_bytes"]
        assert res.measured["latency_ms"] > 0
        # the speed-up `tune show` lists (the re-timed median here), and one re-measured beside the FP32 file
        assert res.recorded["speedup"] == pytest.approx(row.speedup) and res.recorded["retimed_rounds"] == 2
        assert res.recorded["latency_ms"] == pytest.approx(row.retimed_ms)
        # re-timed in rounds; each round beside the FP32 reference file, unless this is it
        rounds = json.loads((res.model.parent / "remeasured.json").read_text())
        assert res.measured["rounds"] == 3 and len(rounds["rounds_ms"]) == 3
        assert res.measured["latency_ms"] == pytest.approx(statistics.median(rounds["rounds_ms"]))
        if row.reference == "fp32":
            assert "speedup" not in res.measured and "reference_rounds_ms" not in rounds
        else:
            ratios = [r / t for r, t in zip(rounds["reference_rounds_ms"], rounds["rounds_ms"], strict=True)]
            assert res.measured["speedup"] == pytest.approx(statistics.median(ratios))
            assert min(ratios) <= res.measured["speedup_q1"] <= res.measured["speedup"] <= res.measured["speedup_q3"]
            assert res.measured["reference_ms"] == pytest.approx(statistics.median(rounds["reference_rounds_ms"]))
        recipe = yaml.safe_load(res.recipe.read_text())
        assert recipe["constraints"] == {"max_map_drop": 0.05} and recipe["feasible"] and not res.warnings
        assert recipe["trial"] == row.number and recipe["job"]["data"] == "coco8"
        # the versions of yolotune's steps are apart from the job: no "calibration" that is not the plan's
        assert (
            "calibration" not in recipe["job"]
            and recipe["formats"]["calibration"] == study.user_attrs["job"]["calibration"]
        )
        deploy = recipe["deploy"]  # what running the file needs, read from the file itself
        assert deploy["inputs"] == {"images": {"shape": [1, 3, 160, 160], "type": "float"}}
        assert (
            deploy["classes"][0] == "person" and len(deploy["classes"]) == 80 and res.model.name in deploy["run_with"]
        )
        # the boxes the mAP was measured on: Ultralytics' validator's thresholds and NMS
        post = deploy["postprocess"]
        assert (post["nms"], post["iou"], post["max_detections"], post["confidence_validated"]) == (
            "per class",
            0.7,
            300,
            0.001,
        )
        assert CompressionPlan.from_dict(recipe["plan"]) == CompressionPlan.load(res.plan)
        assert recipe["recorded"]["map50_95"] == row.map50_95 and "onnxruntime" in recipe["versions"]
        assert recipe["recorded"]["fidelity"] == "full" and recipe["recorded"]["rung0"] is None


def test_export_falls_back_to_the_optuna_artifact_store(small_study: tuple[Path, str, str], tmp_path: Path) -> None:
    root, name, _ = small_study
    study = load_study(study=name, root=root)
    trial = study.trials[1]
    metas = optuna.artifacts.get_all_artifact_meta(trial, storage=study._storage)
    assert {m.filename for m in metas} == {Path(trial.user_attrs["artifact"]).name, "plan.yaml", "metrics.json"}
    # the trial directory is gone: the model comes from the artifact store
    moved = tmp_path / "moved"
    shutil.move(Path(trial.user_attrs["artifact"]).parent, moved)
    try:
        res = export_trial(study, 1, tmp_path / "out", artifacts=artifact_dir(root, name), remeasure=False)
        assert res.model.read_bytes() == (moved / res.model.name).read_bytes()
        # the store the study recorded is found without being named, and re-timing finds the file there too
        found = deployable_file(trial, find_artifact_dir(study))
        assert (
            found is not None
            and found.parent == artifact_dir(root, name)
            and found.read_bytes() == res.model.read_bytes()
        )
        assert export_trial(study, 1, tmp_path / "out1", remeasure=False).model.is_file()
        (tmp_path / "empty").mkdir()
        with pytest.raises(
            YolotuneError, match=r"model is gone .*; export from where the study's files are \(--root\)"
        ):
            export_trial(study, 1, tmp_path / "out2", artifacts=tmp_path / "empty", remeasure=False)
    finally:
        shutil.move(moved, Path(trial.user_attrs["artifact"]).parent)


def test_export_refuses_missing_and_failed_trials(small_study: tuple[Path, str, str], tmp_path: Path) -> None:
    root, name, _ = small_study
    study = load_study(study=name, root=root)
    with pytest.raises(YolotuneError, match="has no trial 99"):
        export_trial(study, 99, tmp_path)
    failed = optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs={"fail_reason": "export failed"})
    scratch = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    scratch.add_trial(failed)
    with pytest.raises(YolotuneError, match=r"trial 0 is FAIL \(export failed\); export a COMPLETE trial"):
        export_trial(scratch, 0, tmp_path)
    # data that cannot be found: refused before any file is written, with the way out
    moved = _copy_of(study, job={**study.user_attrs["job"], "data": str(tmp_path / "gone" / "data.yaml")})
    moved.add_trial(study.trials[1])
    with pytest.raises(YolotuneError, match=r"dataset .*gone.* not found.*export without re-measuring: --no-remeasure"):
        export_trial(moved, 0, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # data that holds other images or labels than the study measured (edited since): re-measuring would not compare
    digests = study.user_attrs["job"]["data_digest"]
    moved.set_user_attr("job", {**study.user_attrs["job"], "data_digest": {**digests, "train": "0" * 64}})
    export_trial(moved, 0, tmp_path / "train-edited", rounds=1)  # training labels edited: validation is the same
    moved.set_user_attr("job", {**study.user_attrs["job"], "data_digest": {**digests, "val": "0" * 64}})
    with pytest.raises(YolotuneError, match=r"dataset .* now holds other images or labels than the study was measured"):
        export_trial(moved, 0, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(YolotuneError, match="--rounds must be a whole number ≥1; got 0"):
        export_trial(study, 1, tmp_path / "out", rounds=0)
    (tmp_path / "afile").write_text("")  # a file where the folder goes: one line, not a FileExistsError
    with pytest.raises(YolotuneError) as refused:
        export_trial(study, 1, tmp_path / "afile", remeasure=False)
    afile = tmp_path / "afile"
    assert str(refused.value) == f"cannot write into the folder {afile}: it is not a folder; pass another path"
    with pytest.raises(YolotuneError, match=r"a trial number is a whole number \(see `tune show`\); got '1'"):
        export_trial(study, "1", tmp_path / "out")  # type: ignore[arg-type]
    import numpy as np

    assert export_trial(study, np.int64(1), tmp_path / "np", remeasure=False).trial == 1  # type: ignore[arg-type]
    # the study's own folders: the export would overwrite (then, failing, delete) the trials' files
    own = Path(study.trials[1].user_attrs["artifact"]).parent
    before = sorted(p.name for p in own.iterdir())
    for into in (own, own.parent / "0", artifact_dir(root, name)):
        with pytest.raises(YolotuneError, match=r"--out .* is inside the study's own files .*; pass another folder"):
            export_trial(study, 1, into, remeasure=False)
    assert sorted(p.name for p in own.iterdir()) == before


def test_an_export_re_timed_on_another_device_says_so(small_study: tuple[Path, str, str], tmp_path: Path) -> None:
    root, name, _ = small_study
    study = load_study(study=name, root=root)
    elsewhere = _copy_of(study, timed_on={**study.user_attrs["timed_on"], "device": "Raspberry Pi 5 Model B Rev 1.0"})
    trial = study.trials[1]
    elsewhere.add_trial(trial)
    res = export_trial(elsewhere, 0, tmp_path / "out", artifacts=artifact_dir(root, name), rounds=1)
    from yolotune.evaluators._device import cpu_name

    assert list(res.warnings) == [
        f"re-timed on {cpu_name()} ({json.loads((tmp_path / 'out' / 'remeasured.json').read_text())['host']}); the "
        "study was timed on Raspberry Pi 5 Model B Rev 1.0: the re-measured latency and speed-up do not compare "
        "with the recorded ones"
    ]
    assert json.loads((tmp_path / "out" / "remeasured.json").read_text())["device"] == cpu_name()


def test_exporting_a_trial_that_breaks_the_study_constraints_says_so(
    small_study: tuple[Path, str, str], tmp_path: Path
) -> None:
    root, name, _ = small_study
    study = load_study(study=name, root=root)
    base = next(t for t in study.trials if t.user_attrs.get("reference") == "fp32")
    other = next(t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.number != base.number)
    scratch = _copy_of(study)
    scratch.add_trial(base)
    # the other trial's file and plan, recorded 8 points below FP32: over the study's 5
    drop = base.values[0] - 0.08
    scratch.add_trial(
        optuna.trial.create_trial(
            values=[drop, other.values[1], other.values[2]],
            user_attrs=other.user_attrs,
            constraints={"map_drop": 0.03},
        )
    )
    res = export_trial(scratch, 1, tmp_path / "out", remeasure=False)
    assert res.warnings == (
        f"trial 1 is off the front: its mAP50-95 {drop:.4f} is 8.0 points below FP32's, and the study allows 5 "
        "(--max-map-drop)",
    )
    recipe = yaml.safe_load(res.recipe.read_text())
    assert recipe["feasible"] is False and recipe["constraints"] == {"max_map_drop": 0.05}


def test_an_export_whose_fp32_reference_file_is_gone_says_why_it_has_no_speed_up(
    small_study: tuple[Path, str, str], tmp_path: Path
) -> None:
    root, name, _ = small_study
    study = load_study(study=name, root=root)
    fp32 = next(t for t in study.trials if t.user_attrs.get("reference") == "fp32")
    int8 = next(t.number for t in study.trials if t.user_attrs.get("reference") == "int8")
    folder = Path(fp32.user_attrs["artifact"]).parent
    shutil.move(folder, tmp_path / "moved")
    (tmp_path / "empty").mkdir()  # and no artifact store to fall back on
    try:
        res = export_trial(study, int8, tmp_path / "out", artifacts=tmp_path / "empty", rounds=1)
    finally:
        shutil.move(tmp_path / "moved", folder)
    assert "speedup" not in res.measured and "latency_ms" in res.measured
    assert res.warnings == (
        f"speed-up not re-measured: the file of the FP32 reference trial {fp32.number} is in neither its trial "
        "folder nor the study's artifact store on this host",
    )


def test_an_export_over_an_earlier_one_leaves_none_of_its_files(
    small_study: tuple[Path, str, str], tmp_path: Path
) -> None:
    root, name, _ = small_study
    study = load_study(study=name, root=root)
    int8 = next(t.number for t in study.trials if t.user_attrs.get("reference") == "int8")
    fp32 = next(t.number for t in study.trials if t.user_attrs.get("reference") == "fp32")
    out = tmp_path / "export"
    export_trial(study, int8, out, artifacts=artifact_dir(root, name))
    assert {p.name for p in out.iterdir()} == {"model.int8.onnx", "plan.yaml", "recipe.yaml", "remeasured.json"}
    export_trial(study, fp32, out, artifacts=artifact_dir(root, name), remeasure=False)
    assert {p.name for p in out.iterdir()} == {"model.onnx", "plan.yaml", "recipe.yaml"}  # no INT8 file, no old numbers
    assert yaml.safe_load((out / "recipe.yaml").read_text())["trial"] == fp32


def test_an_export_never_replaces_files_no_export_wrote_and_clears_a_killed_exports_leftovers(
    small_study: tuple[Path, str, str], tmp_path: Path
) -> None:
    root, name, _ = small_study
    study = load_study(study=name, root=root)
    fp32 = next(t.number for t in study.trials if t.user_attrs.get("reference") == "fp32")
    out = tmp_path / "mine"
    out.mkdir()
    own = {"model.onnx": "my own model", "plan.yaml": "my plan", "notes.txt": "kept"}
    for file, text in own.items():
        (out / file).write_text(text)
    with pytest.raises(YolotuneError, match=r"already holds model\.onnx, plan\.yaml, not from a `tune export`"):
        export_trial(study, fp32, out, artifacts=artifact_dir(root, name), remeasure=False)
    assert {p.name: p.read_text() for p in out.iterdir()} == own  # nothing touched
    (out / "recipe.yaml").write_text("cake: true\n")  # a recipe, but not an export's
    with pytest.raises(YolotuneError, match=r"recipe\.yaml"):
        export_trial(study, fp32, out, artifacts=artifact_dir(root, name), remeasure=False)
    # beside files of other names it writes; an export killed by SIGKILL (no such process) left its staging
    other = tmp_path / "other"
    host = socket.gethostname()
    killed = other / f".export-999999999@{host}.partial"
    killed.mkdir(parents=True)
    (killed / "model.onnx").write_bytes(b"half")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # an export still writing
    try:
        (other / f".export-{live.pid}@{host}.partial").mkdir()
        (other / ".export-999999999@another-host.partial").mkdir()  # on a shared disk: its pid means nothing here
        (other / "notes.txt").write_text("kept")
        export_trial(study, fp32, other, artifacts=artifact_dir(root, name), remeasure=False)
    finally:
        live.kill()
        live.wait(timeout=30)
    assert {p.name for p in other.iterdir()} == {
        "notes.txt",
        "model.onnx",
        "plan.yaml",
        "recipe.yaml",
        f".export-{live.pid}@{host}.partial",
        ".export-999999999@another-host.partial",
    }
    # an earlier export's folder: its files are replaced, but not a file of the user's beside them
    int8 = next(t.number for t in study.trials if t.user_attrs.get("reference") == "int8")
    (other / "model.int8.onnx").write_text("the user's own")
    with pytest.raises(YolotuneError, match=r"already holds model\.int8\.onnx"):
        export_trial(study, int8, other, artifacts=artifact_dir(root, name), remeasure=False)


def test_an_export_interrupted_while_remeasuring_keeps_none_of_its_files(
    small_study: tuple[Path, str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from yolotune.studies import _export

    root, name, _ = small_study
    study = load_study(study=name, root=root)
    int8 = next(t.number for t in study.trials if t.user_attrs.get("reference") == "int8")
    out = tmp_path / "export"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file")

    def ctrl_c(*args: object, **kwargs: object) -> None:  # the user presses Ctrl-C during the timing rounds
        staged = list(out.glob(".export-*.partial"))
        assert len(staged) == 1 and {"model.int8.onnx", "recipe.yaml"} <= {p.name for p in staged[0].iterdir()}
        raise KeyboardInterrupt

    monkeypatch.setattr(_export, "_remeasure", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        export_trial(study, int8, out, artifacts=artifact_dir(root, name))
    assert [p.name for p in out.iterdir()] == ["notes.txt"]  # no model and recipe that look like a whole export
    # an earlier, whole export in the folder stays as it was when the next one is interrupted
    fp32 = next(t.number for t in study.trials if t.user_attrs.get("reference") == "fp32")
    export_trial(study, fp32, out, artifacts=artifact_dir(root, name), remeasure=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(KeyboardInterrupt):
        export_trial(study, int8, out, artifacts=artifact_dir(root, name))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    def agent_lost(*args: object, **kwargs: object) -> None:
        raise StepError("latency", "device agent at http://pi:8765 unreachable (Connection refused)")

    monkeypatch.setattr(_export, "_remeasure", agent_lost)
    with pytest.raises(YolotuneError, match=r"unreachable \(Connection refused\) \(or export without re-measuring"):
        export_trial(study, int8, tmp_path / "new", artifacts=artifact_dir(root, name))
    assert not (tmp_path / "new").exists()  # the folder it made is gone too
