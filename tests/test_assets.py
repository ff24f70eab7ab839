from __future__ import annotations

from pathlib import Path

import pytest

from yolotune import YolotuneError
from yolotune.assets import assets_dir, prepare_dataset, resolve_data, resolve_model


def test_bare_names_resolve_in_the_assets_dir() -> None:
    root = assets_dir()
    assert root is not None
    assert resolve_model("yolov8n-coco.pt") == root / "weights" / "yolov8n-coco.pt"
    assert resolve_data("tiny_coco") == root / "datasets" / "tiny_coco" / "data.yaml"
    assert resolve_data(root / "datasets" / "coco8") == root / "datasets" / "coco8" / "data.yaml"


def test_assets_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("YOLOTUNE_ASSETS", str(tmp_path))
    with pytest.raises(YolotuneError) as info:
        resolve_model("yolov8n-coco.pt")
    assert str(tmp_path / "weights" / "yolov8n-coco.pt") in str(info.value)


def test_dataset_working_copy_never_writes_next_to_the_source(tiny_coco) -> None:
    source_root = tiny_coco.source.parent
    assert not list(source_root.rglob("*.cache"))
    assert tiny_coco.yaml_path.parent != source_root
    assert len(tiny_coco.train_images) == 50 and len(tiny_coco.val_images) == 50
    assert prepare_dataset("tiny_coco") == tiny_coco  # built once, reused


def test_adding_or_removing_images_makes_a_new_working_copy(tmp_path: Path) -> None:
    coco8 = resolve_data("coco8").parent
    for split in ("train", "val"):
        for kind in ("images", "labels"):
            (tmp_path / kind / split).mkdir(parents=True)
            for f in sorted((coco8 / kind / split).iterdir())[:2]:
                (tmp_path / kind / split / f.name).symlink_to(f)
    (tmp_path / "data.yaml").write_text("train: images/train\nval: images/val\nnames: {0: person}\n")
    first = prepare_dataset(tmp_path)
    removed = first.val_images[0]
    removed.unlink()  # the data yaml is left as it was
    second = prepare_dataset(tmp_path)
    assert second.yaml_path != first.yaml_path
    linked = sorted(p.resolve() for p in (second.yaml_path.parent / "images" / "val").iterdir())
    assert linked == sorted(p.resolve() for p in second.val_images) and removed not in second.val_images
