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
