from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from yolotune.assets import Dataset, assets_dir, prepare_dataset, resolve_model
from yolotune.search import CandidateSettings, SearchConfig

if assets_dir() is None:  # pragma: no cover - the project's CI always has them
    pytest.exit("the real assets are missing: set YOLOTUNE_ASSETS (see README)", returncode=2)


@pytest.fixture(scope="session")
def weights() -> Path:
    return resolve_model("yolov8n-coco.pt")


@pytest.fixture(scope="session")
def tiny_coco() -> Dataset:
    return prepare_dataset("tiny_coco")


@pytest.fixture(scope="session")
def coco8() -> Dataset:
    return prepare_dataset("coco8")


@pytest.fixture(scope="session")
def _loaded(weights: Path):
    from yolotune.compression import ultralytics_adapter

    return ultralytics_adapter.load_model(weights)


@pytest.fixture
def yolov8n(_loaded):
    """A fresh copy of the real COCO-pretrained YOLOv8n (fp32, eval)."""
    return copy.deepcopy(_loaded)


@pytest.fixture(scope="session")
def fp32_onnx_320(tmp_path_factory: pytest.TempPathFactory, _loaded) -> Path:
    """The unpruned model exported at 320 px (the FP32 ONNX baseline)."""
    from yolotune.compression import ultralytics_adapter

    out = tmp_path_factory.mktemp("fp32")
    ckpt = ultralytics_adapter.save_checkpoint(_loaded, out / "model.pt")
    return ultralytics_adapter.export_onnx(ckpt, imgsz=320)


@pytest.fixture(scope="session")
def fp32_onnx_160(tmp_path_factory: pytest.TempPathFactory, _loaded) -> Path:
    from yolotune.compression import ultralytics_adapter

    out = tmp_path_factory.mktemp("fp32_160")
    ckpt = ultralytics_adapter.save_checkpoint(_loaded, out / "model.pt")
    return ultralytics_adapter.export_onnx(ckpt, imgsz=160)


@pytest.fixture(scope="session")
def small_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A real study made by ``tune run`` (coco8 at 160 px, budget 4, --max-map-drop 0.05, front re-timed twice).

    Returns the studies root, the study name and the command's output.
    """
    from typer.testing import CliRunner

    from yolotune.cli import app

    root = tmp_path_factory.mktemp("studies")
    args = ["run", "--data", "coco8", "--imgsz", "160", "--budget", "4", "--root", str(root), "--study", "small"]
    result = CliRunner().invoke(app, [*args, "--max-map-drop", "0.05", "--retime-rounds", "2"])
    assert result.exit_code == 0, result.output
    return root, "small", result.output


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("YOLOTUNE_DEBUG", "")


@pytest.fixture
def coco8_search(tmp_path: Path) -> Callable[..., SearchConfig]:
    """Search configs for yolov8n-coco on coco8 at 160 px under ``tmp_path``, one trial by default, no re-timing.

    Keywords override or add ``SearchConfig`` fields.
    """

    def make(**fields: Any) -> SearchConfig:
        base: dict[str, Any] = {
            "model": "yolov8n-coco.pt",
            "data": "coco8",
            "budget": 1,
            "settings": CandidateSettings(imgsz=160),
            "root": tmp_path,
            "retime_rounds": 0,  # re-timing the front has tests of its own
        }
        return SearchConfig(**{**base, **fields})

    return make
