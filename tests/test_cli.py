from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from yolotune.cli import app

runner = CliRunner()


def _error(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
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


def test_corrupt_weights(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    assert f"cannot load model {bad}" in _error(["baseline", "--model", str(bad), "--data", "coco8"])


def test_data_yaml_without_val(tmp_path: Path) -> None:
    data = tmp_path / "data.yaml"
    from yolotune.assets import assets_dir

    train = assets_dir() / "datasets" / "coco8" / "images" / "train"
    data.write_text(yaml.safe_dump({"train": str(train), "names": {0: "a"}}))
    line = _error(["baseline", "--data", str(data)])
    assert "has no 'val' split" in line


def test_unknown_group(plan_file) -> None:
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


def test_ratio_out_of_range(plan_file) -> None:
    line = _error(["eval", "--data", "coco8", "--plan", plan_file({"pruning": {"ratios": {"backbone.4": 0.95}}})])
    assert "pruning ratio of 'backbone.4' is 0.95; it must lie in [0, 0.9]" in line


def test_unknown_target_and_missing_plan(tmp_path: Path) -> None:
    assert "unknown target 'jetson-orin'" in _error(["baseline", "--data", "coco8", "--target", "jetson-orin"])
    assert "plan file not found" in _error(["eval", "--data", "coco8", "--plan", str(tmp_path / "none.yaml")])


def test_eval_prints_the_comparison_and_writes_metrics(plan_file, tmp_path: Path) -> None:
    plan = plan_file({"quantization": {"default": "int8", "calibration_images": 4}})
    out = tmp_path / "run"
    result = runner.invoke(app, ["eval", "--data", "coco8", "--imgsz", "160", "--plan", plan, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "baseline" in result.stdout and "candidate" in result.stdout and "speed" in result.stdout
    metrics = json.loads((out / "candidate" / "metrics.json").read_text())
    assert metrics["deployable"].endswith("model.int8.onnx")
    assert (out / "baseline" / "metrics.json").exists()


def test_run_bad_arguments(tmp_path: Path) -> None:
    assert "--budget must be a positive number of trials; got 0" in _error(["run", "--data", "coco8", "--budget", "0"])
    line = _error(["run", "--data", "coco8", "--budget", "1", "--storage", "nosuchdb://x"])
    assert "cannot open storage 'nosuchdb://x'" in line
    assert "unknown target 'jetson-orin'" in _error(["run", "--data", "coco8", "--target", "jetson-orin"])
    assert "0 studies in" in _error(["show", "--root", str(tmp_path)])
