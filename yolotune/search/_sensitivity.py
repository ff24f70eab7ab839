"""Pruning sensitivity: which layer groups tolerate pruning at all, measured before a search.

Each group is pruned alone by ``ratio`` (weight-L2 ranking, post-training ``recovery`` on the
training images, ``bias`` by default, FP32) and its deployable ONNX is validated and timed like
any candidate (``run_candidate``). On a small, efficient detector most groups do not tolerate it,
and a search that prunes them wastes its budget. Measured on yolov8n-coco / tiny_coco at 320 px
(BENCHMARKS.md): at 25%, bias compensation keeps 8 of 22 groups within 0.03 mAP50-95, BatchNorm
re-estimation only 2, for about 2.5 s more per probe. ``Sensitivity.tolerant_groups`` keeps the
groups whose drop from the unpruned model stays within a bound; the default space then prunes
only those (``DefaultSpace.prune_groups``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from yolotune._files import whole_file
from yolotune.assets import prepare_dataset
from yolotune.errors import PlanError, YolotuneError
from yolotune.search._candidate import CandidateResult, CandidateSettings, run_candidate
from yolotune.spaces import CompressionPlan, PruningConfig, RecoveryConfig

__all__ = ["SENSITIVITY_RECOVERY", "GroupSensitivity", "Sensitivity", "scan_sensitivity"]

#: Post-training recovery methods a probe may use (``none`` would measure raw pruning only).
SENSITIVITY_RECOVERY = ("bn", "bias", "ls")


@dataclass(frozen=True, kw_only=True)
class GroupSensitivity:
    """One group pruned alone: what it cost and what it bought (FP32, measured on the deployable).

    Attributes:
        group: Layer group.
        map50_95: mAP50-95 of the pruned model after the scan's recovery.
        map_drop: Unpruned mAP50-95 minus ``map50_95``.
        latency_ms: Median latency on the target.
        macs_ratio: MACs after / before (an estimate: torch-pruning's counter).
        seconds: Time the candidate took.
    """

    group: str
    map50_95: float
    map_drop: float
    latency_ms: float
    macs_ratio: float
    seconds: float


@dataclass(frozen=True, kw_only=True)
class Sensitivity:
    """A sensitivity scan: the unpruned model's numbers and each group's.

    Attributes:
        ratio: Share of channels pruned from each group alone.
        recovery: Post-training recovery of each probe (``bn``, ``bias`` or ``ls``).
        baseline_map: mAP50-95 of the unpruned FP32 model.
        baseline_latency_ms: Its median latency on the target.
        groups: One row per scanned group, in model order.
        baseline_macs: The unpruned model's MACs (an estimate), for the rows a resumed scan adds.
    """

    ratio: float
    recovery: str
    baseline_map: float
    baseline_latency_ms: float
    groups: tuple[GroupSensitivity, ...]
    baseline_macs: float = 0.0

    def tolerant_groups(self, max_drop: float) -> tuple[str, ...]:
        """Groups whose mAP50-95 drop stays within ``max_drop``, in model order."""
        return tuple(g.group for g in self.groups if g.map_drop <= max_drop)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable record (what a study stores)."""
        return {**asdict(self), "groups": [asdict(g) for g in self.groups]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sensitivity:
        """Rebuild a recorded scan."""
        rows = tuple(GroupSensitivity(**g) for g in data["groups"])
        return cls(
            ratio=float(data["ratio"]),
            recovery=str(data.get("recovery", "bn")),
            baseline_map=float(data["baseline_map"]),
            baseline_latency_ms=float(data["baseline_latency_ms"]),
            groups=rows,
            baseline_macs=float(data.get("baseline_macs", 0.0)),
        )


def _probe(group: str, ratio: float, recovery: str, images: int) -> CompressionPlan:
    return CompressionPlan(
        pruning=PruningConfig(ratios=((group, ratio),), importance="l2", round_to=1),
        recovery=RecoveryConfig(method=recovery, images=images),
    )


def scan_sensitivity(
    *,
    model: str | Path,
    data: str | Path,
    groups: Iterable[str],
    out_dir: Path,
    settings: CandidateSettings | None = None,
    ratio: float = 0.25,
    recovery: str = "bias",
    images: int = 32,
    on_group: Callable[[int, int, GroupSensitivity | None, str], None] | None = None,
    resume: Sensitivity | None = None,
    on_row: Callable[[Sensitivity], None] | None = None,
    fatal: Callable[[YolotuneError], str | None] | None = None,
) -> Sensitivity:
    """Prune each group alone by ``ratio`` and measure it against the unpruned model.

    Args:
        model: Checkpoint path or asset name.
        data: Data yaml path or asset name.
        groups: Layer groups to scan (``ModelLayout.groups`` or a subset).
        out_dir: Where each probe's artifacts go (``<out_dir>/<group>/``).
        settings: Image size and target, as in the search.
        ratio: Share of channels each probe prunes.
        recovery: Post-training recovery of each probe: ``bn``, ``bias`` (default) or ``ls``.
        images: Training images the recovery sees (capped at the training split).
        on_group: Progress: ``(done, total, row, group)``; ``row`` is None for the baseline.
        resume: A scan cut short (what ``on_row`` was last given, same ratio and recovery): its
            baseline and rows are kept, and only the groups it lacks are probed.
        on_row: Called with the scan so far after the baseline and after each group, to record
            it; an exception it raises stops the scan.
        fatal: Says, for a probe's failure, how to fix it when it is the machine's (a full disk,
            a lost target) rather than the group's; the scan then stops with that message
            instead of leaving the group out for good.

    Raises:
        YolotuneError: The unpruned model could not be measured, or ``fatal`` named a failure. A
            group whose probe fails otherwise (a group too small to prune, say) is left out of the
            result, so it is never pruned.
    """
    if recovery not in SENSITIVITY_RECOVERY:
        raise PlanError(f"sensitivity recovery must be one of {', '.join(SENSITIVITY_RECOVERY)}; got {recovery!r}")
    groups = list(groups)
    total = len(groups) + 1
    images = max(1, min(images, len(prepare_dataset(data).train_images)))
    if resume is not None and (resume.ratio, resume.recovery) == (ratio, recovery):
        scan, base_macs = resume, resume.baseline_macs
    else:
        try:
            base = run_candidate(
                model=model, data=data, plan=CompressionPlan(), out_dir=out_dir / "unpruned", settings=settings
            )
        finally:
            _drop_models(out_dir / "unpruned")
        scan = Sensitivity(
            ratio=ratio,
            recovery=recovery,
            baseline_map=base.accuracy.map50_95,
            baseline_latency_ms=base.latency.median_ms,
            groups=(),
            baseline_macs=base.macs,
        )
        base_macs = base.macs
    if on_group:
        on_group(1, total, None, "unpruned")
    if on_row:
        on_row(scan)
    done = {g.group: g for g in scan.groups}
    for k, group in enumerate(groups, start=2):
        if group in done:
            if on_group:
                on_group(k, total, done[group], group)
            continue
        try:
            probe = _probe(group, ratio, recovery, images)
            r: CandidateResult = run_candidate(
                model=model, data=data, plan=probe, out_dir=out_dir / group, settings=settings
            )
        except YolotuneError as exc:
            _drop_models(out_dir / group)
            if fatal is not None and (fix := fatal(exc)):
                raise YolotuneError(f"the sensitivity scan stopped at {group}: {fix}") from exc
            if on_group:
                on_group(k, total, None, f"{group}: {exc}")
            continue
        _drop_models(out_dir / group)
        row = GroupSensitivity(
            group=group,
            map50_95=r.accuracy.map50_95,
            map_drop=scan.baseline_map - r.accuracy.map50_95,
            latency_ms=r.latency.median_ms,
            macs_ratio=r.macs / base_macs if base_macs else 1.0,
            seconds=sum(r.step_seconds.values()),
        )
        order = {g: i for i, g in enumerate(groups)}  # model order, whichever run probed them
        rows = sorted([*scan.groups, row], key=lambda g: order.get(g.group, len(order)))
        scan = replace(scan, groups=tuple(rows))
        if on_row:
            on_row(scan)
        if on_group:
            on_group(k, total, row, group)
    return scan


def _drop_models(folder: Path) -> None:
    """Remove a probe's model files once it is measured (or failed): nothing reads them again.

    About 25 MB a probe for YOLOv8n, one probe per layer group; ``plan.yaml`` and ``metrics.json``
    stay, the latter saying that its ``deployable`` file was removed.
    """
    for path in folder.glob("model.*"):
        with contextlib.suppress(OSError):  # a file that cannot be removed never stops the scan
            path.unlink()
    metrics = folder / "metrics.json"
    with contextlib.suppress(OSError, ValueError):
        record = json.loads(metrics.read_text())
        record["deployable_removed"] = "the sensitivity scan keeps its probes' measurements, not their models"
        with whole_file(metrics) as partial:
            partial.write_text(json.dumps(record, indent=2))
