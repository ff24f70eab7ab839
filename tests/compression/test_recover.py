from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from yolotune.assets import Dataset
from yolotune.compression import KeptChannels, prune, recover, reestimate_batchnorm, unpruned_copy
from yolotune.compression import ultralytics_adapter as adapter
from yolotune.compression._reconstruct import reconstruct_consumers
from yolotune.search import CandidateSettings, run_candidate
from yolotune.spaces import CompressionPlan, PruningConfig

TOLERANT = ("backbone.7", "neck.16", "head.cv2.0", "head.cv3.0", "head.cv2.1", "head.cv3.1")


def test_bn_reestimation_touches_only_layers_after_the_first_pruned_one(yolov8n, coco8: Dataset) -> None:
    adapter.make_prunable(yolov8n)
    norms = {name: m for name, m in yolov8n.named_modules() if isinstance(m, nn.BatchNorm2d)}
    before = {name: m.running_mean.clone() for name, m in norms.items()}
    momenta = {name: m.momentum for name, m in norms.items()}
    after_first = adapter.modules_from_first(yolov8n, ["backbone.9", "neck.16"])
    report = reestimate_batchnorm(yolov8n, adapter.calibration_images(coco8, imgsz=160, count=4), only=after_first)
    assert report.images == 4 and report.method == "bn"
    chosen = {id(m) for m in after_first}
    changed = {name for name, m in norms.items() if not torch.equal(m.running_mean, before[name])}
    assert changed == {name for name, m in norms.items() if id(m) in chosen}
    assert report.layers == len(changed) > 0
    assert all(name.startswith(("model.9.", "model.1", "model.2")) for name in changed)  # layers 9 and later
    assert not yolov8n.training and all(not m.training for m in norms.values())
    assert {name: m.momentum for name, m in norms.items()} == momenta


def test_bn_reestimation_recovers_accuracy_of_a_pruned_real_model(tiny_coco: Dataset, tmp_path: Path) -> None:
    pruning = {"ratios": {"backbone.9": 0.25}, "importance": "l2", "round_to": 1}
    settings = CandidateSettings(imgsz=320)
    raw = run_candidate(
        model="yolov8n-coco.pt",
        data="tiny_coco",
        plan=CompressionPlan.from_dict({"pruning": pruning}),
        out_dir=tmp_path / "raw",
        settings=settings,
    )
    recovered = run_candidate(
        model="yolov8n-coco.pt",
        data="tiny_coco",
        plan=CompressionPlan.from_dict({"pruning": pruning, "recovery": {"method": "bn", "images": 50}}),
        out_dir=tmp_path / "bn",
        settings=settings,
    )
    assert recovered.recover is not None and recovered.recover.images == 50
    # measured: 0.263 → 0.319 mAP50-95 (FP32 unpruned 0.353); BN statistics of the pruned SPPF
    assert recovered.accuracy.map50_95 > raw.accuracy.map50_95 + 0.03
    assert "recover" in recovered.step_seconds


def test_activation_ranking_keeps_more_accuracy_than_weight_ranking(tiny_coco: Dataset, tmp_path: Path) -> None:
    from yolotune.compression import ultralytics_adapter as adapter

    groups = adapter.model_layout(adapter.load_model(_weights())).groups
    ratios = {g: 0.1 for g in groups if g not in ("backbone.0", "backbone.2")}
    results = {}
    for importance in ("l2", "activation"):
        plan = CompressionPlan.from_dict(
            {
                "pruning": {"ratios": ratios, "importance": importance, "round_to": 1},
                "recovery": {"method": "bn", "images": 50},
            }
        )
        results[importance] = run_candidate(
            model="yolov8n-coco.pt",
            data="tiny_coco",
            plan=plan,
            out_dir=tmp_path / importance,
            settings=CandidateSettings(imgsz=320),
        ).accuracy.map50_95
    # measured: 0.062 (L2) vs 0.139 (activations on the 50 training images), uniform 10% + BN re-estimation
    assert results["activation"] > results["l2"] + 0.04, results


def _weights() -> Path:
    from yolotune.assets import resolve_model

    return resolve_model("yolov8n-coco.pt")


def _pruned(model: nn.Module, ratios: dict[str, float], imgsz: int) -> tuple[nn.Module, dict[str, KeptChannels]]:
    original = unpruned_copy(model)
    kept: dict[str, KeptChannels] = {}
    prune(model, PruningConfig(ratios=ratios, importance="l2"), imgsz=imgsz, kept=kept)
    return original, kept


def _consumer_error(pruned: nn.Module, original: nn.Module, kept: dict[str, KeptChannels], images: list) -> dict:
    """Relative output error of every conv that lost inputs (BN-folded pre-activation), per name."""
    norms, twins = adapter.conv_norms(pruned), adapter.conv_norms(original)
    names = [n for n, k in kept.items() if k.inputs_pruned]
    mods = dict(pruned.named_modules())
    omods = dict(original.named_modules())

    def outputs(model: nn.Module, table: dict, pick: bool) -> dict[str, torch.Tensor]:
        got: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        handles = []
        for n in names:
            conv = table[n]
            after = norms.get(conv) if not pick else twins.get(conv)
            target = after if after is not None else conv  # BN output, or the biased conv output
            idx = list(kept[n].out) if pick else slice(None)
            handles.append(target.register_forward_hook(lambda m, i, o, n=n, idx=idx: got[n].append(o[:, idx])))
        with torch.no_grad():
            for img in images:
                model(torch.from_numpy(img))
        for h in handles:
            h.remove()
        return {n: torch.cat(v) for n, v in got.items()}

    got, want = outputs(pruned, mods, False), outputs(original, omods, True)
    return {n: float((got[n] - want[n]).norm() / want[n].norm()) for n in names}


def test_prune_records_kept_channels_that_index_the_unpruned_weights(yolov8n) -> None:
    groups = adapter.model_layout(yolov8n).groups
    ratios = {g: 0.2 for g in groups if g not in ("backbone.0", "backbone.2")}
    original, kept = _pruned(yolov8n, ratios, 160)
    twins = dict(original.named_modules())
    convs = {n: m for n, m in yolov8n.named_modules() if isinstance(m, nn.Conv2d)}
    assert set(kept) == set(convs) and sum(k.inputs_pruned for k in kept.values()) > 50
    for name, conv in convs.items():
        k = kept[name]
        assert conv.weight.shape[:2] == (len(k.out), len(k.inputs))
        assert torch.equal(conv.weight, twins[name].weight[list(k.out)][:, list(k.inputs)]), name


def test_bias_compensation_changes_only_the_consumers_bias_or_bn_mean(yolov8n, coco8: Dataset) -> None:
    original, kept = _pruned(yolov8n, dict.fromkeys(TOLERANT, 0.25), 160)
    before = {k: v.clone() for k, v in yolov8n.state_dict().items()}
    images = list(adapter.calibration_images(coco8, imgsz=160, count=4))
    report = recover(yolov8n, images, method="bias", pruned_groups=TOLERANT, original=original, kept=kept)
    changed = {k for k, v in yolov8n.state_dict().items() if not torch.equal(v, before[k])}
    consumers = [n for n, k in kept.items() if k.inputs_pruned]
    norm_names = {m: n for n, m in yolov8n.named_modules()}
    convs = dict(yolov8n.named_modules())
    allowed = set()
    for n in consumers:
        bn = adapter.conv_norms(yolov8n).get(convs[n])
        allowed.add(f"{norm_names[bn]}.running_mean" if bn is not None else f"{n}.bias")
    assert report.method == "bias" and report.consumers == len(consumers) == 12
    assert changed == allowed
    assert report.error_after is not None and report.error_before is not None
    assert report.error_after < report.error_before


def test_reconstruction_reduces_consumer_error_on_held_out_images(yolov8n, tiny_coco: Dataset) -> None:
    original, kept = _pruned(yolov8n, dict.fromkeys(TOLERANT, 0.4), 192)
    images = list(adapter.calibration_images(tiny_coco, imgsz=192, count=24))
    calibration, held_out = images[:16], images[16:]
    raw = _consumer_error(yolov8n, original, kept, held_out)
    report = recover(yolov8n, calibration, method="ls", pruned_groups=TOLERANT, original=original, kept=kept)
    fitted = _consumer_error(yolov8n, original, kept, held_out)
    assert report.consumers == len(raw) > 0 and report.positions <= 16384 and report.buffer_mb < 256
    # every consumer improves on images the fit never saw (measured: median 0.81 → 0.63 after BN)
    assert all(fitted[n] < raw[n] for n in raw), {n: (raw[n], fitted[n]) for n in raw}
    assert sorted(fitted.values())[len(fitted) // 2] < 0.85 * sorted(raw.values())[len(raw) // 2]


@pytest.mark.parametrize("method", ["ls", "bias"])
def test_passes_that_reuse_final_layers_fit_exactly_what_whole_passes_fit(yolov8n, coco8: Dataset, method: str) -> None:
    # every group but the stem: consumers in the backbone, in the neck behind its concats, in the head
    ratios = {g: 0.25 for g in adapter.model_layout(yolov8n).groups if g not in ("backbone.0", "backbone.1")}
    original, kept = _pruned(yolov8n, ratios, 160)
    twin = copy.deepcopy(yolov8n)
    images = list(adapter.calibration_images(coco8, imgsz=160, count=4))
    runs: dict[str, int] = {}
    capped = copy.deepcopy(yolov8n)
    modes = (
        ("whole", twin, None, 1024.0),
        ("reused", yolov8n, adapter.layer_reads(yolov8n), 1024.0),
        ("capped", capped, adapter.layer_reads(capped), 0.1),  # 0.1 MB: whole passes once over it
    )
    for name, model, layers, cache_mb in modes:
        counted = [
            m.register_forward_hook(lambda *_, name=name: runs.update({name: runs.get(name, 0) + 1}))
            for m in model.modules()
            if isinstance(m, nn.Conv2d)
        ]
        report = reconstruct_consumers(
            model,
            original,
            kept,
            images,
            norms=adapter.conv_norms(model),
            method=method,
            batch=3,
            layers=layers,
            cache_mb=cache_mb,
        )
        for h in counted:
            h.remove()
        assert report.layers > 40
    reference = twin.state_dict()
    for model in (yolov8n, capped):
        fitted = model.state_dict()
        assert fitted.keys() == reference.keys()
        assert all(torch.equal(fitted[k], reference[k]) for k in fitted), [
            k for k in fitted if not torch.equal(fitted[k], reference[k])
        ][:5]
    assert runs["reused"] < runs["whole"] / 4  # convolutions run: a served layer runs none
    assert runs["capped"] == runs["whole"], runs  # over the bound after the first pass


def test_least_squares_recovers_more_map_than_bn_reestimation(tiny_coco: Dataset, tmp_path: Path) -> None:
    pruning = {"ratios": dict.fromkeys(TOLERANT, 0.25), "importance": "l2", "round_to": 1}
    results = {}
    for method in ("bn", "ls"):
        plan = CompressionPlan.from_dict({"pruning": pruning, "recovery": {"method": method, "images": 50}})
        built = run_candidate(
            model="yolov8n-coco.pt",
            data="tiny_coco",
            plan=plan,
            out_dir=tmp_path / method,
            settings=CandidateSettings(imgsz=320),
        )
        assert built.recover is not None and built.recover.method == method
        results[method] = built.accuracy.map50_95
    # measured: bn 0.223, ls 0.288 (unpruned 0.353; field notes: 0.259 / 0.280)
    assert results["ls"] > results["bn"] + 0.03, results
