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


def test_a_model_yaml_by_name_is_refused_as_untrained() -> None:
    # Ultralytics builds `yolov8n.yaml` with random weights; nothing of that name exists here
    with pytest.raises(YolotuneError, match=r"'yolov8n.yaml' names an architecture, not trained weights"):
        resolve_model("yolov8n.yaml")


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
    names = prepare_dataset("coco8").names
    (tmp_path / "data.yaml").write_text(f"train: images/train\nval: images/val\nnames: {names}\n")
    first = prepare_dataset(tmp_path)
    removed = first.val_images[0]
    removed.unlink()  # the data yaml is left as it was
    second = prepare_dataset(tmp_path)
    assert second.yaml_path != first.yaml_path
    linked = sorted(p.resolve() for p in (second.yaml_path.parent / "images" / "val").iterdir())
    assert linked == sorted(p.resolve() for p in second.val_images) and removed not in second.val_images


def _coco8_copy(root: Path, *, labels: dict[str, str]) -> Path:
    """coco8's images under ``root``; each split's labels linked (``"linked"``), empty files, or none."""
    coco8 = resolve_data("coco8").parent
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        for f in sorted((coco8 / "images" / split).iterdir()):
            (root / "images" / split / f.name).symlink_to(f)
        if labels[split] == "none":
            continue
        (root / "labels" / split).mkdir(parents=True)
        for f in sorted((coco8 / "labels" / split).iterdir()):
            if labels[split] == "linked":
                (root / "labels" / split / f.name).symlink_to(f)
            else:
                (root / "labels" / split / f.name).write_text("")
    (root / "data.yaml").write_text(f"train: images/train\nval: images/val\nnames: {prepare_dataset('coco8').names}\n")
    return root / "data.yaml"


@pytest.mark.parametrize("val", ["none", "empty"])
def test_a_validation_split_without_labels_is_refused_in_one_line(tmp_path: Path, val: str) -> None:
    data = _coco8_copy(tmp_path, labels={"train": "linked", "val": val})
    with pytest.raises(YolotuneError) as info:
        prepare_dataset(data)
    message = str(info.value)
    assert "'val' split" in message and "has no labels" in message and str(tmp_path / "labels" / "val") in message


def test_a_training_split_without_labels_calibrates_but_does_not_fine_tune(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from yolotune import CompressionPlan, PlanError
    from yolotune.evaluators import target_spec
    from yolotune.search import SearchConfig, check_plan, search_spaces

    data = _coco8_copy(tmp_path, labels={"train": "none", "val": "linked"})
    dataset = prepare_dataset(data)
    assert dataset.train_labels == 0 and prepare_dataset("coco8").train_labels == 4
    groups = ("backbone.7",)
    calibrated = CompressionPlan.from_dict({"quantization": {"default": "int8", "calibration_images": 4}})
    check_plan(calibrated, groups=groups, dataset=dataset, target=target_spec("local-cpu"))
    fine_tuned = CompressionPlan.from_dict({"recovery": {"epochs": 1}})
    with pytest.raises(PlanError) as info:
        check_plan(fine_tuned, groups=groups, dataset=dataset, target=target_spec("local-cpu"))
    assert "fine-tuning needs labels" in str(info.value) and "recovery.epochs: 0" in str(info.value)
    # the search's default space leaves fine-tuning out, and the seeds' reference, which needs it (it scored 0.000)
    with caplog.at_level("WARNING", logger="yolotune.search._driver"):
        default = search_spaces(SearchConfig(model="yolov8n-coco.pt", data=str(data), budget=1, root=tmp_path))[1]
    assert default.epoch_choices() == (0,) and set(default.reference_plans()) == {"fp32", "int8"}
    assert [r.getMessage() for r in caplog.records] == [
        f"the training split of {data} has no labels: the search does not fine-tune (pruned plans recover from "
        "calibration images only, and the `seeds` reference, which needs its fine-tune, is not run)"
    ]


def test_a_relative_path_key_is_read_as_ultralytics_reads_it_and_from_the_yaml_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    coco8 = resolve_data("coco8").parent
    (tmp_path / "mydata").symlink_to(coco8)
    (tmp_path / "cfg").mkdir()
    data = tmp_path / "cfg" / "data.yaml"
    data.write_text(f"path: mydata\ntrain: images/train\nval: images/val\nnames: {prepare_dataset('coco8').names}\n")
    monkeypatch.chdir(tmp_path)  # Ultralytics: relative to the working directory
    assert prepare_dataset(data).val_images == prepare_dataset("coco8").val_images
    beside = tmp_path / "mydata.yaml"  # ... and a yaml beside its folder works from anywhere
    beside.write_text(data.read_text())
    monkeypatch.chdir(tmp_path / "cfg")
    assert prepare_dataset(beside).val_images == prepare_dataset("coco8").val_images
    with pytest.raises(YolotuneError, match=r"'train' folder of .*cfg/data.yaml not found: .*cfg/mydata/images/train"):
        prepare_dataset(data)


def test_image_lists_in_txt_files_are_read_as_ultralytics_reads_them(tmp_path: Path) -> None:
    coco8 = prepare_dataset("coco8")
    data = _coco8_copy(tmp_path, labels={"train": "linked", "val": "linked"})
    train = sorted((tmp_path / "images" / "train").iterdir())
    (tmp_path / "train.txt").write_text("".join(f"{p}\n" for p in train))  # absolute paths
    (tmp_path / "val.txt").write_text("./images/val/" + "\n./images/val/".join(p.name for p in coco8.val_images[:3]))
    data.write_text(
        data.read_text().replace("train: images/train", "train: train.txt").replace("images/val", "val.txt")
    )
    listed = prepare_dataset(data)
    assert listed.train_images == tuple(train) and len(listed.val_images) == 3
    assert [p.name for p in listed.val_images] == [p.name for p in coco8.val_images[:3]]
    (tmp_path / "val.txt").write_text("./images/val/missing.jpg\n")
    with pytest.raises(YolotuneError, match=r"'val' list .*val.txt line 1 names an image that does not exist"):
        prepare_dataset(data)


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("85 0.5 0.5 0.2 0.2", r"line 2: class 85, but .*data.yaml names 80 class\(es\) \(0–79\)"),
        ("0 0.5 0.5", r"line 2 has 3 values; a box is 'class x y w h'"),
        ("0 1.7 0.5 0.2 0.2", r"line 2 has coordinates outside 0–1"),
        ("person 0.5 0.5 0.2 0.2", r"line 2 is not numbers"),
        ("0 0.1 0.1 0.2 0.1 0.2 0.2", r"mixes boxes and polygons \(lines 1 and 2\)"),
        ("0 0.5 0.5 0.2 0.2 0.9", r"line 2 has 6 values; a box is 'class x y w h'"),  # not a polygon
    ],
)
def test_a_label_line_ultralytics_would_drop_its_image_for_is_refused(tmp_path: Path, line: str, says: str) -> None:
    data = _coco8_copy(tmp_path, labels={"train": "linked", "val": "linked"})
    label = sorted((tmp_path / "labels" / "val").iterdir())[0]
    text = label.read_text().splitlines()
    label.unlink()  # a file of its own, not the link to coco8's
    label.write_text("\n".join([text[0], line, *text[1:]]) + "\n")
    with pytest.raises(YolotuneError, match=rf"label file {label} {says}") as info:
        prepare_dataset(data)
    assert "\n" not in str(info.value)
    label.write_text("\n".join(text) + "\n")  # fixed: accepted
    assert len(prepare_dataset(data).val_images) == 4


def test_an_image_ultralytics_would_skip_is_refused_and_a_jpeg_it_restores_is_not(tmp_path: Path) -> None:
    data = _coco8_copy(tmp_path, labels={"train": "linked", "val": "linked"})
    image = sorted((tmp_path / "images" / "val").iterdir())[0]
    whole = image.read_bytes()
    image.unlink()  # a file of its own, not the link to coco8's
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (20, 20)).save(buffer, format="GIF")
    gif = buffer.getvalue()
    for broken, says in (
        (whole[:3000], "image file is truncated"),
        (b"", "the file is empty"),
        (b"GIF89a not really", "not an image format PIL can read"),
        (gif, "a GIF image, which Ultralytics does not read"),  # named .jpg, but a GIF
    ):
        image.write_bytes(broken)
        with pytest.raises(
            YolotuneError, match=rf"image {image} \('val' split of {data}\) cannot be read: .*{says}"
        ) as info:
            prepare_dataset(data)
        assert str(info.value).endswith("; Ultralytics would skip it and change the mAP: replace it or take it out")
    image.write_bytes(whole + b"\0\0")  # bytes after the end marker: Ultralytics re-saves it and validates it
    assert len(prepare_dataset(data).val_images) == 4
    train = sorted((tmp_path / "images" / "train").iterdir())[0]  # in the training split it is no mAP's business
    train.unlink()
    train.write_bytes(b"")
    with pytest.raises(YolotuneError) as info:
        prepare_dataset(data)
    assert str(info.value) == (
        f"image {train} ('train' split of {data}) cannot be read: the file is empty; Ultralytics would skip it and "
        "change calibration and fine-tuning: replace it or take it out"
    )


def test_data_yaml_mistakes_are_named_in_one_line(tmp_path: Path) -> None:
    data = _coco8_copy(tmp_path, labels={"train": "linked", "val": "linked"})
    good = data.read_text()
    data.write_text(good + "nc: 3\n")
    with pytest.raises(YolotuneError, match=r"says nc: 3 but 'names' lists 80: make them agree"):
        prepare_dataset(data)
    data.write_text(good.replace("train: images/train", "train: 5"))
    with pytest.raises(YolotuneError, match=r"'train' of .* must be a folder or a .txt list of images .*got 5"):
        prepare_dataset(data)
    data.write_text(good.replace("41: 'cup'", "81: 'cup'"))  # a gap at 41
    with pytest.raises(YolotuneError, match=r"'names' keys must be the class indices 0–79 with no gaps; got 0, 1, 2"):
        prepare_dataset(data)
    data.write_text(good + "nc: '80'\n")
    with pytest.raises(YolotuneError, match=r"nc must be a whole number \(unquoted\); got '80'"):
        prepare_dataset(data)
    data.write_text("train: images/train\nval: images/val\nnames: person\n")
    with pytest.raises(YolotuneError, match=r"has no class 'names': add 'names:' as a list of class names"):
        prepare_dataset(data)
    with pytest.raises(YolotuneError, match=rf"dataset folder {tmp_path / 'images'} has no data.yaml: pass the data"):
        prepare_dataset(tmp_path / "images")
    data.write_text("train: images/train\nval: images/val\nnc: 80\n")  # no names: Ultralytics makes them up
    assert prepare_dataset(data).names[79] == "class_79"


def test_validation_images_that_are_training_images_too_are_said_and_never_fine_tuned_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from yolotune.errors import PlanError
    from yolotune.evaluators import target_spec
    from yolotune.search import check_plan
    from yolotune.spaces import CompressionPlan

    data = _coco8_copy(tmp_path / "linked", labels={"train": "linked", "val": "linked"})
    assert prepare_dataset(data).shared == ()  # coco8's splits are disjoint
    # the same file listed in both splits
    val = sorted((tmp_path / "linked" / "images" / "val").iterdir())
    (tmp_path / "linked" / "train.txt").write_text(
        "".join(f"{p}\n" for p in sorted((tmp_path / "linked" / "images" / "train").iterdir())) + f"{val[1]}\n"
    )
    data.write_text(data.read_text().replace("train: images/train", "train: train.txt"))
    with caplog.at_level("WARNING", logger="yolotune.assets"):
        listed = prepare_dataset(data)
    assert listed.shared == (val[1],)
    assert [r.getMessage() for r in caplog.records] == [
        f"data yaml {data}: 1 'val' image(s) are 'train' images too (e.g. {val[1]}): calibration and recovery see "
        "them, so the mAP may read high, and no plan fine-tunes; take them out of one split to fine-tune"
    ]
    fine_tune = CompressionPlan.from_dict({"pruning": {"ratios": {"neck.16": 0.25}}, "recovery": {"epochs": 1}})
    target = target_spec("local-cpu")
    with pytest.raises(PlanError, match=r"fine-tuning would train on validation images: 1 'val' image\(s\)"):
        check_plan(fine_tune, groups=("neck.16",), dataset=listed, target=target)
    # a copy of a validation image under another name in the training folder: found by its bytes
    copied = _coco8_copy(tmp_path / "copied", labels={"train": "linked", "val": "linked"})
    source = sorted((tmp_path / "copied" / "images" / "val").iterdir())[0]
    (tmp_path / "copied" / "images" / "train" / "copy.jpg").write_bytes(source.read_bytes())
    assert prepare_dataset(copied).shared == (source,)


def test_a_validation_subset_is_a_split_of_its_own_with_its_own_label_cache(fp32_onnx_160: Path) -> None:
    import yaml

    from yolotune.assets import val_subset
    from yolotune.evaluators import measure_map

    whole = prepare_dataset("coco8")
    subset = val_subset(whole, 2)
    root = whole.yaml_path.parent
    assert yaml.safe_load(subset.yaml_path.read_text())["val"] == "images/val2"
    assert len(subset.val_images) == 2 and len(list((root / "images" / "val2").iterdir())) == 2
    assert len(list((root / "labels" / "val2").glob("*.txt"))) == 2
    measure_map(fp32_onnx_160, whole, imgsz=160)
    cache = root / "labels" / "val.cache"
    before = cache.stat().st_mtime_ns
    on_two = measure_map(fp32_onnx_160, subset, imgsz=160)
    # Ultralytics cached the subset's labels apart: the whole split's cache was neither rescanned nor rewritten
    assert (root / "labels" / "val2.cache").is_file() and cache.stat().st_mtime_ns == before
    assert 0 < on_two.map50_95 <= 1 and val_subset(whole, 2).yaml_path == subset.yaml_path  # made once
