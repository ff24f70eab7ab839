from __future__ import annotations

import torch

from yolotune.compression import prune, ultralytics_adapter
from yolotune.spaces import PruningConfig


def _widths(model) -> dict[str, list[int]]:
    return {
        name: [m.out_channels for m in group.modules() if isinstance(m, torch.nn.Conv2d)]
        for name, group in ultralytics_adapter.group_modules(model).items()
    }


def test_per_group_ratios_prune_exactly_the_named_groups(yolov8n) -> None:
    x = torch.zeros(1, 3, 160, 160)
    with torch.no_grad():
        shape = yolov8n(x)[0].shape
    ultralytics_adapter.make_prunable(yolov8n)
    before = _widths(yolov8n)
    named = {"backbone.4": 0.25, "neck.15": 0.5, "head.cv3.1": 0.5}
    report = prune(yolov8n, PruningConfig(ratios=named, round_to=8), imgsz=160)
    after = _widths(yolov8n)
    for name in before:
        if name in named:
            assert sum(after[name]) < sum(before[name]), name
        else:
            assert after[name] == before[name], name
    # kept widths are multiples of round_to inside the pruned groups (Detect output convs excepted)
    assert all(w % 8 == 0 for name in named for w in after[name])
    # the Detect output convs keep their widths, so the output shape is unchanged
    with torch.no_grad():
        assert yolov8n(x)[0].shape == shape
    assert report.params_after < report.params_before
    assert report.macs_after < report.macs_before
    assert report.channels["neck.15"][1] < report.channels["neck.15"][0]


def test_round_to_keeps_the_nearest_multiple_of_what_the_ratio_keeps(yolov8n) -> None:
    ultralytics_adapter.make_prunable(yolov8n)
    before = _widths(yolov8n)
    named = {"backbone.1": 0.1, "backbone.7": 0.3, "neck.16": 0.4}
    prune(yolov8n, PruningConfig(ratios=named, round_to=16), imgsz=160)
    after = _widths(yolov8n)
    for name, ratio in named.items():
        for b, a in zip(before[name], after[name], strict=True):
            # torch-pruning alone rounds down: 32 channels at 10% kept 16
            assert a == max(16, round(b * (1 - ratio) / 16) * 16), (name, b, a)
    assert after["backbone.1"] == before["backbone.1"]  # 28.8 of 32 kept: 32 is the nearest multiple
    assert after["neck.16"] != before["neck.16"] and after["backbone.7"] != before["backbone.7"]


def test_importance_criteria_choose_different_channels(_loaded) -> None:
    import copy

    kept = {}
    for criterion in ("l1", "bn_scale"):
        model = copy.deepcopy(_loaded)
        prune(model, PruningConfig(ratios={"backbone.8": 0.5}, importance=criterion), imgsz=160)
        kept[criterion] = model.model[8].cv2.conv.weight.detach().clone()
    assert kept["l1"].shape == kept["bn_scale"].shape
    assert not torch.equal(kept["l1"], kept["bn_scale"])


def test_zero_ratios_prune_nothing(yolov8n) -> None:
    ultralytics_adapter.make_prunable(yolov8n)
    before = _widths(yolov8n)
    report = prune(yolov8n, PruningConfig(ratios={"backbone.4": 0.0}), imgsz=160)
    assert _widths(yolov8n) == before
    assert report.params_after == report.params_before


def test_a_yolo11_head_branch_is_pruned_without_the_neck_layer_that_feeds_it() -> None:
    """YOLO11's ``cv3.k`` opens with a depthwise convolution whose channels are the neck's output."""
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolo11n.yaml", verbose=False).eval()
    ultralytics_adapter.make_prunable(model)
    head = model.model[-1]
    opening = head.cv3[0][0][0].conv
    assert opening.groups == opening.in_channels == opening.out_channels  # depthwise, fed by neck.16
    neck = model.model[16].cv2.conv.out_channels
    report = prune(model, PruningConfig(ratios={"head.cv3.0": 0.25}, round_to=8), imgsz=160)
    assert {name for name, (b, a) in report.channels.items() if a < b} == {"head.cv3.0"}
    assert model.model[16].cv2.conv.out_channels == opening.out_channels == neck
    # ... while pruning neck.16 shrinks the depthwise convolution with it: its channels are the neck's
    report = prune(model, PruningConfig(ratios={"neck.16": 0.25}, round_to=8), imgsz=160)
    assert {name for name, (b, a) in report.channels.items() if a < b} == {"neck.16"}
    assert opening.out_channels == model.model[16].cv2.conv.out_channels < neck
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 160, 160))[0].shape[1] == 4 + 80
