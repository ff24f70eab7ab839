from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

from yolotune.assets import Dataset, assets_dir, prepare_dataset, resolve_model

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


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("YOLOTUNE_DEBUG", "")
