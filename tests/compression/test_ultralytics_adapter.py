from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from yolotune import YolotuneError
from yolotune.compression import prune, ultralytics_adapter
from yolotune.spaces import PruningConfig


def test_split_free_c2f_equals_original_on_the_real_model(yolov8n) -> None:
    x = torch.rand(2, 3, 320, 320, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = yolov8n(x)[0]
    assert ultralytics_adapter.make_prunable(yolov8n) == 8  # yolov8n has eight C2f blocks
    assert not any(type(m).__name__ == "C2f" for m in yolov8n.modules())
    with torch.no_grad():
        after = yolov8n(x)[0]
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-4)


def test_fast_dfl_equals_original_on_the_real_model(yolov8n, tiny_coco) -> None:
    x = torch.from_numpy(next(ultralytics_adapter.calibration_images(tiny_coco, imgsz=320, count=1)))
    with torch.no_grad():
        before = yolov8n(x)[0]
    assert ultralytics_adapter.fast_dfl(yolov8n)
    assert not ultralytics_adapter.fast_dfl(yolov8n)  # already replaced
    with torch.no_grad():
        after = yolov8n(x)[0]
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-4)
    assert before[:, 4:].max() > 0.5  # a real image: confident detections, not an all-zero check


def test_export_runs_the_dfl_softmax_without_a_transpose(fp32_onnx_320: Path) -> None:
    import onnx

    dfl = [n for n in onnx.load(str(fp32_onnx_320)).graph.node if "/dfl/" in n.name]
    ops = [n.op_type for n in dfl]
    assert "Transpose" not in ops and "Conv" not in ops
    (softmax,) = (n for n in dfl if n.op_type == "Softmax")
    assert [a.i for a in softmax.attribute if a.name == "axis"] == [2]


def test_split_free_c3k2_equals_original_on_yolo11() -> None:
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolo11n.yaml", verbose=False).eval()
    # give BatchNorm non-trivial statistics so a wrong copy would show
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    x = torch.rand(1, 3, 160, 160)
    with torch.no_grad():
        before = model(x)[0]
    n = ultralytics_adapter.make_prunable(model)
    assert n == 8  # yolo11n: eight C3k2 blocks
    assert ultralytics_adapter.fast_dfl(model)  # YOLO11's head has the same DFL
    with torch.no_grad():
        after = model(x)[0]
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-4)


def test_group_names_are_stable_and_readable(yolov8n) -> None:
    layout = ultralytics_adapter.model_layout(yolov8n)
    assert layout.groups[:3] == ("backbone.0", "backbone.1", "backbone.2")
    assert "neck.15" in layout.groups and "neck.11" not in layout.groups  # Upsample has no convs
    assert layout.groups[-6:] == tuple(f"head.{b}.{k}" for b in ("cv2", "cv3") for k in range(3))
    ultralytics_adapter.make_prunable(yolov8n)
    assert ultralytics_adapter.model_layout(yolov8n) == layout  # surgery keeps the names
    assert layout.group_of_onnx_node("/model.4/m.0/cv1/conv/Conv") == "backbone.4"
    assert layout.group_of_onnx_node("/model.22/cv3.1/cv3.1.2/Conv") == "head.cv3.1"
    assert layout.group_of_onnx_node("/model.22/dfl/conv/Conv") == "head.decode"
    assert layout.group_of_onnx_node("/model.22/Concat_3") == "head.decode"


def test_detect_outputs_and_dfl_are_never_pruned(yolov8n) -> None:
    detect = yolov8n.model[-1]
    ignored = ultralytics_adapter.never_pruned(yolov8n)
    assert detect.dfl in ignored
    for seq in [*detect.cv2, *detect.cv3]:
        assert seq[-1] in ignored


def test_pruned_checkpoint_reloads_in_a_fresh_process(yolov8n, tmp_path: Path) -> None:
    prune(yolov8n, PruningConfig(ratios={"backbone.4": 0.5, "neck.18": 0.25}, round_to=8), imgsz=160)
    ckpt = ultralytics_adapter.save_checkpoint(yolov8n, tmp_path / "pruned.pt")
    widths = [m.out_channels for m in yolov8n.modules() if isinstance(m, torch.nn.Conv2d)]
    code = (
        "import sys, torch\n"
        "from ultralytics import YOLO\n"
        "m = YOLO(sys.argv[1]).model\n"
        "print([c.out_channels for c in m.modules() if isinstance(c, torch.nn.Conv2d)])\n"
        "print(tuple(m.float().eval()(torch.zeros(1, 3, 160, 160))[0].shape))\n"
    )
    env = {"YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "False", "PATH": "/usr/bin:/bin"}
    env["YOLO_CONFIG_DIR"] = str(tmp_path / "cfg")
    out = (
        subprocess.run(
            [sys.executable, "-c", "import yolotune\n" + code, str(ckpt)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=True,
        )
        .stdout.strip()
        .splitlines()
    )
    assert out[-2] == str(widths)
    assert out[-1] == "(1, 84, 525)"


def test_load_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(YolotuneError, match="model file not found"):
        ultralytics_adapter.load_model(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(YolotuneError) as info:
        ultralytics_adapter.load_model(corrupt)
    assert str(info.value).startswith(f"cannot load {corrupt} as an Ultralytics YOLO detector")
    assert "\n" not in str(info.value) and "ERROR" not in str(info.value)  # not Ultralytics' own "ERROR ❌️"
    assert str(info.value) == (
        f"cannot load {corrupt} as an Ultralytics YOLO detector: the file is empty, truncated or corrupted: PyTorch "
        "cannot read it; pass a checkpoint saved by Ultralytics (runs/detect/<name>/weights/best.pt)"
    )
    # a dict saved with torch.save: said in yolotune's words, not Ultralytics' advice to run `yolo predict`
    import torch

    plain = tmp_path / "dict.pt"
    torch.save({"a": 1}, plain)
    with pytest.raises(YolotuneError) as info:
        ultralytics_adapter.load_model(plain)
    assert str(info.value) == (
        f"cannot load {plain} as an Ultralytics YOLO detector: the file holds no Ultralytics model (a state dict, or "
        "another library's objects); pass a checkpoint saved by Ultralytics (runs/detect/<name>/weights/best.pt)"
    )
    # another reason is quoted, cut after its first sentence, or a whole word, when long; the path said once
    where = tmp_path / ("a-long-folder-name-" * 8) / "x.pt"
    long = ValueError(f"{where} holds an unexpected layout. " + "Details follow " * 20)
    assert ultralytics_adapter._brief(long, where) == "the file holds an unexpected layout."
    cut = ultralytics_adapter._brief(ValueError("word " * 60), where)
    assert cut.endswith("word …") and len(cut) <= 152
    renamed = tmp_path / "best.PT"  # only the suffix is wrong: said so
    renamed.write_bytes(b"")
    with pytest.raises(YolotuneError) as info:
        ultralytics_adapter.load_model(renamed)
    assert (
        str(info.value)
        == f"model must be an Ultralytics .pt checkpoint; got {renamed} (rename it to best.pt if it is one)"
    )
    # a model yaml is an untrained architecture: compressing random weights would measure nothing
    config = tmp_path / "yolov8n.yaml"
    config.write_text("nc: 80\n")
    with pytest.raises(YolotuneError, match=r"yolov8n.yaml is an architecture without trained weights: pass .*\.pt"):
        ultralytics_adapter.load_model(config)
    # a data yaml given as the model (--model where --data was meant) is named for what it is
    data = tmp_path / "mydata.yaml"
    data.write_text("path: .\ntrain: images/train\nval: images/val\nnames: {0: person}\n")
    with pytest.raises(YolotuneError, match=r"mydata.yaml is a data yaml \(train/val/names\), not a model: pass it as"):
        ultralytics_adapter.load_model(data)


def test_checkpoints_of_other_kinds_say_what_they_are(weights, coco8, tmp_path: Path) -> None:
    from ultralytics.nn.tasks import DetectionModel, OBBModel

    # a module pickled with torch.save rather than by Ultralytics
    module_only = tmp_path / "module_only.pt"
    torch.save(torch.load(weights, map_location="cpu", weights_only=False)["model"], module_only)
    with pytest.raises(
        YolotuneError, match=r"module_only.pt holds a \w+, not an Ultralytics checkpoint: save .*\.save"
    ):
        ultralytics_adapter.load_model(module_only)
    obb = tmp_path / "obb.pt"
    torch.save({"model": OBBModel("yolov8n-obb.yaml", nc=2, verbose=False)}, obb)
    with pytest.raises(YolotuneError, match=r"obb.pt is an OBBModel, not an Ultralytics detection model"):
        ultralytics_adapter.load_model(obb)
    # a detector trained with single_cls=True detects one class, whatever the data yaml names
    single = DetectionModel("yolov8n.yaml", nc=1, verbose=False)
    single.args = {"single_cls": True}
    with pytest.raises(YolotuneError, match=r"trained with single_cls=True .*: give it a data yaml naming one class"):
        ultralytics_adapter.check_classes(single, coco8.names, coco8.source)
    single.args = {}
    with pytest.raises(YolotuneError, match=r"names 80 class\(es\); the model detects 1: pass the dataset"):
        ultralytics_adapter.check_classes(single, coco8.names, coco8.source)


def test_a_data_yaml_naming_the_classes_otherwise_is_said(weights, coco8, caplog: pytest.LogCaptureFixture) -> None:
    net = ultralytics_adapter.load_model(weights)
    with caplog.at_level("WARNING", logger="yolotune.compression.ultralytics_adapter"):
        ultralytics_adapter.check_classes(net, coco8.names, coco8.source)  # the names it was trained with
        assert caplog.records == []
        swapped = {**coco8.names, 0: coco8.names[2], 2: coco8.names[0]}
        ultralytics_adapter.check_classes(net, swapped, coco8.source)
    assert [r.getMessage() for r in caplog.records] == [
        f"data yaml {coco8.source} names 2 of the model's 80 classes otherwise (class 0: 'car', the model's 'person'): "
        "the mAP counts a box of one as the other; pass the data yaml the model was trained with"
    ]


def test_finetune_trains_the_pruned_model_itself(yolov8n, coco8, tmp_path: Path) -> None:
    prune(yolov8n, PruningConfig(ratios={"backbone.7": 0.5}, round_to=8), imgsz=160)
    widths = [m.out_channels for m in yolov8n.modules() if isinstance(m, torch.nn.Conv2d)]
    before = copy.deepcopy(yolov8n.state_dict())
    ckpt = ultralytics_adapter.save_checkpoint(yolov8n, tmp_path / "pruned.pt")
    tuned, report = ultralytics_adapter.finetune(ckpt, coco8, epochs=1, lr=1e-3, imgsz=160, out_dir=tmp_path)
    # what ran: coco8's 4 training images, one batch, no mosaic, no teacher
    assert (report.epochs, report.images, report.batch, report.mosaic, report.teacher) == (1, 4, 4, False, None)
    # same pruned architecture (not rebuilt from the yaml), and the weights moved
    assert [m.out_channels for m in tuned.modules() if isinstance(m, torch.nn.Conv2d)] == widths
    after = tuned.state_dict()
    moved = [k for k in before if before[k].dtype.is_floating_point and not torch.equal(before[k], after[k])]
    assert moved
    # the trainer's own checkpoints are not kept: the model came back in memory
    assert (tmp_path / "finetune" / "args.yaml").is_file() and not (tmp_path / "finetune" / "weights").exists()


def test_finetune_distils_from_the_unpruned_teacher(weights, coco8, tmp_path) -> None:
    net = ultralytics_adapter.load_model(weights)
    prune(net, PruningConfig(ratios={"backbone.7": 0.25, "neck.16": 0.25}), imgsz=160)
    ckpt = ultralytics_adapter.save_checkpoint(net, tmp_path / "model.pt")
    widths = [p.shape for p in net.parameters()]

    def tune(name: str, teacher=None):
        out, report = ultralytics_adapter.finetune(
            ckpt, coco8, epochs=1, lr=1e-4, imgsz=160, out_dir=tmp_path / name, seed=0, teacher=teacher
        )
        assert report.teacher == (None if teacher is None else str(teacher))
        return dict(out.named_parameters())

    plain, again, distilled = tune("a"), tune("b"), tune("kd", teacher=weights)
    # only the pruned student comes back, with its pruned widths
    assert [p.shape for p in distilled.values()] == widths
    # fine-tuning is deterministic, so a difference is the teacher's loss at work
    assert all(torch.equal(plain[k], again[k]) for k in plain)
    assert max((plain[k] - distilled[k]).abs().max().item() for k in plain) > 1e-6


def test_quiet_silences_only_its_own_thread_and_restores_the_streams(capsys: pytest.CaptureFixture[str]) -> None:
    import sys
    import threading

    from yolotune.compression.ultralytics_adapter import quiet

    streams = (sys.stdout, sys.stderr)
    inside, release = threading.Event(), threading.Event()

    def search_in_the_background() -> None:
        with quiet():
            print("from the quiet thread")
            print("to stderr from the quiet thread", file=sys.stderr)
            inside.set()
            release.wait(5)

    worker = threading.Thread(target=search_in_the_background)
    worker.start()
    assert inside.wait(5)
    print("from the main thread")  # while the other thread is inside its block
    with quiet():  # a second, concurrent block (another search's step)
        print("from a quiet block of the main thread")
    release.set()
    worker.join(5)
    out = capsys.readouterr()
    assert out.out == "from the main thread\n" and out.err == ""
    assert (sys.stdout, sys.stderr) == streams  # unwrapped once, by the last block out


def test_a_program_that_imported_ultralytics_first_keeps_its_settings_file(tmp_path: Path) -> None:
    # a pipeline that already uses Ultralytics imports it before yolotune: its own settings file
    # (here in a fake home) must not be rewritten; yolotune's folders apply to this process only
    config = tmp_path / "home" / "cfg"
    code = (
        "import json, sys\n"
        "import ultralytics\n"
        "from ultralytics.utils import SETTINGS\n"
        "from yolotune.assets import resolve_model\n"
        "from yolotune.compression import ultralytics_adapter\n"
        "ultralytics_adapter.load_model(resolve_model('yolov8n-coco.pt'))\n"
        "print(json.dumps({'file': str(SETTINGS.file_path), 'runs_dir': SETTINGS['runs_dir']}))\n"
    )
    env = {"YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "False", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home")}
    env["YOLO_CONFIG_DIR"] = str(config)
    env["YOLOTUNE_TMP"] = str(tmp_path / "scratch")
    if "YOLOTUNE_ASSETS" in os.environ:
        env["YOLOTUNE_ASSETS"] = os.environ["YOLOTUNE_ASSETS"]
    subprocess.run([sys.executable, "-c", "import ultralytics"], env=env, timeout=120, check=True)  # its own file
    (settings,) = config.rglob("settings.json")
    before = settings.read_text()
    assert "scratch" not in before
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen == {"file": str(settings), "runs_dir": str(tmp_path / "scratch" / "runs")}
    assert settings.read_text() == before
