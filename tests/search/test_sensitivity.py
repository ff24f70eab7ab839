from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from yolotune import YolotuneError
from yolotune.search import CandidateSettings, SearchConfig, _driver, plan_of, run_search, scan_sensitivity


def test_scan_measures_each_group_pruned_alone(tmp_path: Path) -> None:
    # field notes (320 px): the SPPF block keeps most of its mAP at 25%, the first C2f loses it
    scan = scan_sensitivity(
        model="yolov8n-coco.pt",
        data="tiny_coco",
        groups=["backbone.2", "backbone.9"],
        out_dir=tmp_path,
        settings=CandidateSettings(imgsz=160),
    )
    rows = {g.group: g for g in scan.groups}
    assert list(rows) == ["backbone.2", "backbone.9"] and scan.ratio == 0.25 and scan.recovery == "bias"
    assert scan.baseline_map > 0.15  # the real unpruned model at 160 px
    for g in rows.values():
        assert g.map_drop == pytest.approx(scan.baseline_map - g.map50_95)
        assert 0.9 < g.macs_ratio < 1.0 and g.latency_ms > 0
        assert (tmp_path / g.group / "metrics.json").is_file()  # a real candidate, on disk
        assert not list((tmp_path / g.group).glob("model.*"))  # its models are read by nothing again
        assert "deployable_removed" in json.loads((tmp_path / g.group / "metrics.json").read_text())  # and it says so
    assert (tmp_path / "unpruned" / "metrics.json").is_file() and not list((tmp_path / "unpruned").glob("model.*"))
    assert rows["backbone.2"].map_drop > rows["backbone.9"].map_drop + 0.05
    assert scan.tolerant_groups(rows["backbone.9"].map_drop) == ("backbone.9",)
    assert scan.tolerant_groups(-1.0) == ()


def test_search_prunes_only_tolerant_groups_and_scans_once(tmp_path: Path, monkeypatch) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("prune_groups: [backbone.2, neck.21]\nepochs: [0]\ncalibration_sizes: [4]\n")
    config = SearchConfig(
        model="yolov8n-coco.pt",
        data="coco8",
        budget=8,
        settings=CandidateSettings(imgsz=160),
        root=tmp_path,
        retime_rounds=0,  # re-timing is tested apart
        space=str(space),
        sampler="random",
        sensitivity_drop=0.1,
        sensitivity_recovery="bn",
    )
    study = run_search(config)
    recorded = study.user_attrs["sensitivity"]
    drops = {g["group"]: g["map_drop"] for g in recorded["groups"]}
    assert set(drops) == {"backbone.2", "neck.21"}  # only the groups the space may prune were scanned
    assert drops["backbone.2"] > 0.1 >= drops["neck.21"]  # coco8 at 160: the first C2f does not tolerate it
    searched = [
        t for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)) if "reference" not in t.user_attrs
    ]
    pruned = [dict(plan_of(t).pruning.ratios) for t in searched if plan_of(t).pruning.active]
    assert pruned, "the random sampler drew no pruned plan; choose another seed"
    assert all(set(p) == {"neck.21"} for p in pruned)
    assert all(0 < r <= 0.2 for p in pruned for r in p.values())  # up to the scan's 25%, on the 0.1 grid
    # tolerance was measured with bn: pruned plans recover with it or with ls, never less
    assert {plan_of(t).recovery.method for t in searched if plan_of(t).pruning.active} <= {"bn", "ls"}

    # a resumed run reuses the recorded scan
    def no_scan(**_: object) -> None:
        raise AssertionError("scanned again")

    monkeypatch.setattr(_driver, "scan_sensitivity", no_scan)
    again = run_search(SearchConfig(**{**config.__dict__, "budget": 9}))
    assert len(again.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 9
    with pytest.raises(YolotuneError, match="was created for"):
        run_search(SearchConfig(**{**config.__dict__, "sensitivity_drop": 0.2}))

    from yolotune.cli import app

    shown = CliRunner().invoke(app, ["show", "--root", str(tmp_path), "--study", config.name])
    assert shown.exit_code == 0, shown.output
    assert "Sensitivity: each group pruned alone by 25% (bn recovery, FP32)" in shown.output
    assert "the search prunes the 1 group(s) losing ≤0.1" in shown.output
    from yolotune.studies import write_report

    page = write_report(again, tmp_path / "report.html").read_text()
    section = page.split('id="sensitivity"')[1].split("</section>")[0]
    assert 'data-group="neck.21" data-searched="1"' in section
    assert 'data-group="backbone.2" data-searched="0"' in section


def test_no_scan_when_the_space_never_prunes(tmp_path: Path, monkeypatch, coco8_search) -> None:
    def no_scan(**_: object) -> None:
        raise AssertionError("scanned a space that never prunes")

    monkeypatch.setattr(_driver, "scan_sensitivity", no_scan)
    space = tmp_path / "space.yaml"
    space.write_text("max_ratio: 0.0\n")
    study = run_search(coco8_search(space=str(space), sensitivity_drop=0.03))
    assert "sensitivity" not in study.user_attrs
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 1


def test_a_space_of_explicit_units_scans_only_the_groups_in_them(tmp_path: Path, monkeypatch, coco8_search) -> None:
    scanned: list[tuple[str, ...]] = []

    class Scanned(Exception):
        pass

    def record(**kwargs: object) -> None:  # the scan itself is tested above: here, which groups it is given
        scanned.append(tuple(kwargs["groups"]))  # type: ignore[arg-type]
        raise Scanned

    monkeypatch.setattr(_driver, "scan_sensitivity", record)
    space = tmp_path / "space.yaml"
    space.write_text("units:\n  stem: [backbone.0, backbone.1]\n  sppf: [backbone.9]\n")
    with pytest.raises(Scanned):
        run_search(coco8_search(space=str(space), sensitivity_drop=0.03))
    assert scanned == [("backbone.0", "backbone.1", "backbone.9")]  # groups in no unit stay fp32, unpruned


def test_a_scan_cut_short_goes_on_where_it_stopped_and_a_machine_failure_stops_it(tmp_path: Path) -> None:
    from yolotune.search import Sensitivity

    common = {"model": "yolov8n-coco.pt", "data": "coco8", "settings": CandidateSettings(imgsz=160), "images": 4}
    recorded: list[Sensitivity] = []

    def ctrl_c_after_one_group(so_far: Sensitivity) -> None:
        recorded.append(so_far)
        if so_far.groups:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        scan_sensitivity(groups=["backbone.9", "neck.21"], out_dir=tmp_path, on_row=ctrl_c_after_one_group, **common)
    partial = Sensitivity.from_dict(recorded[-1].to_dict())  # as the study keeps it
    assert [g.group for g in partial.groups] == ["backbone.9"] and not (tmp_path / "neck.21").exists()
    (tmp_path / "unpruned").rename(tmp_path / "unpruned.first")
    scan = scan_sensitivity(groups=["backbone.9", "neck.21"], out_dir=tmp_path, resume=partial, **common)
    assert [g.group for g in scan.groups] == ["backbone.9", "neck.21"]
    assert scan.groups[0] == partial.groups[0] and scan.baseline_map == partial.baseline_map
    assert not (tmp_path / "unpruned").exists()  # the baseline was not measured again
    assert 0.9 < scan.groups[1].macs_ratio < 1.0
    # a probe that fails for the machine's reason (here: any) stops the scan rather than drop the group
    with pytest.raises(YolotuneError, match=r"the sensitivity scan stopped at backbone.99: free some space"):
        scan_sensitivity(
            groups=["backbone.99"], out_dir=tmp_path, resume=scan, fatal=lambda exc: "free some space", **common
        )
    # without that, the group is left out
    assert scan_sensitivity(groups=["backbone.99"], out_dir=tmp_path, resume=scan, **common).groups == scan.groups
