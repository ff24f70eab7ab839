"""One candidate, end to end: model + plan → deployable ONNX → mAP, size, latency.

This is the operation the search calls for every trial. Every number it returns is measured on
the file it leaves in ``out_dir`` (``deployable``): the same file ``tune export`` hands out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from yolotune._env import package_versions
from yolotune._files import check_folder, whole_file
from yolotune._numbers import is_real, is_whole
from yolotune.assets import Dataset, prepare_dataset, resolve_model, val_subset
from yolotune.compression import (
    DEFAULT_CALIBRATION_MEMORY_GB,
    KeptChannels,
    PruneReport,
    QuantizeReport,
    RecoverReport,
    count_macs_params,
    prune,
    quantize,
    recover,
    unpruned_copy,
)
from yolotune.compression import ultralytics_adapter as adapter
from yolotune.compression.ultralytics_adapter import FinetuneReport
from yolotune.errors import PlanError, StepError, YolotuneError
from yolotune.evaluators import (
    MAX_IMGSZ,
    Accuracy,
    LatencyStats,
    Provenance,
    Target,
    TargetSpec,
    compute_lease,
    get_target,
    measure_map,
    measure_size,
    needs_reduce_range,
    read_token,
    target_spec,
)
from yolotune.spaces import CompressionPlan

__all__ = [
    "RUNG0_RECOVERY_IMAGES",
    "BuiltCandidate",
    "CandidateResult",
    "CandidateSettings",
    "build_candidate",
    "make_target",
    "run_candidate",
    "time_candidate",
    "time_reference",
]


#: Post-training recovery methods whose seconds grow with their images: rung 0 runs them on
#: ``RUNG0_RECOVERY_IMAGES`` at most.
_SLOW_RECOVERY = ("bias", "ls")
#: Images of a ``bias``/``ls`` recovery at rung 0. On yolov8n / tiny_coco at 320, ``ls`` on 8 images
#: scored within 0.1-0.8 points of ``ls`` on 32 on 16 validation images for the plans near a front,
#: in about a third of its seconds; BatchNorm re-estimation, rung 0's stand-in before, scored 7
#: points lower, below no recovery at all (BENCHMARKS.md, "Rung 0's recovery").
RUNG0_RECOVERY_IMAGES = 8
#: Histogram calibrations too slow for rung 0 (4-25 s on yolov8n; MinMax on the same images, ~1.5 s,
#: stands in for them: same graph, so the same size and latency, and mAP near enough to promote by).
_SLOW_CALIBRATION = ("entropy", "percentile")


@dataclass(frozen=True, kw_only=True)
class CandidateSettings:
    """How candidates are built and measured (shared by every candidate of a study).

    Attributes:
        imgsz: Square input size of the exported model, validation and timing (default 320 whatever the
            target; `tune` defaults to the target's own, ``target_spec(name).imgsz``).
        target: Registered target name that times the deployable model.
        calibration_memory_gb: Memory budget of one INT8 calibration.
        seed: Seed of fine-tuning.
        device_url: URL of the device agent (``tune agent``) of a device target.
        device_token_file: File holding the agent's token.
        train_device: Where fine-tuning runs: ``cpu``, or a CUDA device (``0``, ``cuda:0``); with
            Ray workers a CUDA device makes each candidate task declare one GPU.
        int8_reduce_range: Quantize INT8 weights to 7 bits; ``None``: as the target needs
            (``yolotune.evaluators.needs_reduce_range``: x86 CPUs without VNNI saturate with 8).
    """

    imgsz: int = 320
    target: str = "local-cpu"
    calibration_memory_gb: float = DEFAULT_CALIBRATION_MEMORY_GB
    seed: int = 0
    device_url: str | None = None
    device_token_file: str | None = None
    train_device: str = "cpu"
    int8_reduce_range: bool | None = None

    def __post_init__(self) -> None:
        if isinstance(self.imgsz, bool) or not isinstance(self.imgsz, int):
            raise YolotuneError(f"imgsz must be a whole number (a multiple of 32); got {self.imgsz!r}")
        if self.imgsz < 32 or self.imgsz % 32 or self.imgsz > MAX_IMGSZ:
            raise YolotuneError(f"imgsz must be a multiple of 32 from 32 to {MAX_IMGSZ}; got {self.imgsz}")
        if self.train_device != "cpu" and not self.train_device.removeprefix("cuda:").isdigit():
            raise YolotuneError(f"--train-device must be cpu, N or cuda:N; got '{self.train_device}'")
        gb = self.calibration_memory_gb
        if not is_real(gb) or not gb > 0:
            raise YolotuneError(f"calibration memory must be a positive number of GB; got {gb!r}")
        if not is_whole(self.seed) or not 0 <= self.seed < 2**32:
            raise YolotuneError(f"--seed must be a whole number from 0 to 2**32 - 1; got {self.seed!r}")
        object.__setattr__(self, "calibration_memory_gb", float(gb))  # numpy's too: the settings go to JSON
        object.__setattr__(self, "seed", int(self.seed))

    @property
    def gpus(self) -> int:
        """GPUs one candidate needs (fine-tuning on a CUDA device takes one)."""
        return 0 if self.train_device == "cpu" else 1


def make_target(settings: CandidateSettings) -> Target:
    """The target ``settings`` name, connected to its device agent when it has one (not contacted yet).

    Raises:
        YolotuneError: Unknown target, a device target without ``device_url``, an unreadable token file.
    """
    token = read_token(settings.device_token_file) if settings.device_token_file else None
    return get_target(settings.target, device_url=settings.device_url, device_token=token)


@dataclass(frozen=True, kw_only=True)
class CandidateResult:
    """Everything measured about one candidate, and where its artifacts are."""

    plan: CompressionPlan
    model: str
    data: str
    imgsz: int
    deployable: Path
    accuracy: Accuracy
    size_bytes: int
    latency: LatencyStats
    provenance: Provenance
    prune: PruneReport | None
    quantize: QuantizeReport | None
    macs: int
    params: int
    step_seconds: dict[str, float] = field(default_factory=dict)
    recover: RecoverReport | None = None
    versions: dict[str, str] = field(default_factory=dict)
    fidelity: str = "full"
    stand_ins: dict[str, str] = field(default_factory=dict)
    reference_latency: LatencyStats | None = None
    finetune: FinetuneReport | None = None

    @property
    def size_mb(self) -> float:
        """Deployable size in MB (10^6 bytes)."""
        return self.size_bytes / 1e6

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable record (what ``metrics.json`` holds)."""
        record = _record(self, latency=self.latency, provenance=self.provenance)
        if self.reference_latency is not None:
            record["reference_latency"] = self.reference_latency.to_dict()
        return record


def _record(
    c: CandidateResult | BuiltCandidate,
    *,
    latency: LatencyStats | None,
    provenance: Provenance | None,
    not_timed: str = "",
) -> dict[str, Any]:
    """What ``metrics.json`` holds, for a timed candidate or a rung-0 one that was not timed."""
    record: dict[str, Any] = {
        "plan": c.plan.to_dict(),
        "model": c.model,
        "data": c.data,
        "imgsz": c.imgsz,
        "deployable": str(c.deployable),
        "fidelity": c.fidelity,
        "stand_ins": c.stand_ins,
        "map50_95": c.accuracy.map50_95,
        "map50": c.accuracy.map50,
        "size_bytes": c.size_bytes,
        "latency_ms": latency.median_ms if latency else None,
        "accuracy": c.accuracy.to_dict(),
        "latency": latency.to_dict() if latency else None,
        "provenance": provenance.to_dict() if provenance else None,
        "prune": asdict(c.prune) if c.prune else None,
        "recover": asdict(c.recover) if c.recover else None,
        "finetune": asdict(c.finetune) if c.finetune else None,
        "quantize": asdict(c.quantize) if c.quantize else None,
        "macs_estimate": c.macs,
        "params": c.params,
        "step_seconds": c.step_seconds,
        "versions": c.versions,
    }
    if not_timed:
        record["not_timed"] = not_timed
    return record


def _write_metrics(out: Path, record: dict[str, Any]) -> None:
    with whole_file(out / "metrics.json") as partial:
        partial.write_text(json.dumps(record, indent=2))


class _Steps:
    """Times steps, reports them to a callback, and turns library exceptions into StepErrors."""

    def __init__(self, on_step: Callable[[str], None] | None, *, lease: bool = True) -> None:
        self.seconds: dict[str, float] = {}
        self._on_step = on_step
        self._lease = lease

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self._on_step:
            self._on_step(name)
        t0 = time.perf_counter()
        try:
            # compute steps share the host; a timing waits for them (see evaluators._lease)
            with compute_lease() if self._lease else contextlib.nullcontext():
                yield
        except YolotuneError:
            raise
        except Exception as exc:
            raise StepError(
                name, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            ) from exc
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


def check_plan(
    plan: CompressionPlan, *, groups: tuple[str, ...], dataset: Dataset, target: Target | TargetSpec
) -> None:
    """Refuse a plan the model, the data or the target cannot honour (before any work).

    Raises:
        PlanError: Unknown groups, too many calibration images, fine-tuning on a training split without
            labels, or precisions or INT8 activation types the target lacks.
    """
    plan.check(groups=groups, n_train_images=len(dataset.train_images))
    if plan.recovery.epochs and dataset.shared:
        raise PlanError(
            f"fine-tuning would train on validation images: {len(dataset.shared)} 'val' image(s) of {dataset.source} "
            f"are 'train' images too (e.g. {dataset.shared[0]}); take them out of one split, or set recovery.epochs: 0"
        )
    if plan.recovery.epochs and not dataset.train_labels:
        raise PlanError(
            f"fine-tuning needs labels and the 'train' split of {dataset.source} has none: "
            "set recovery.epochs: 0, or add one .txt per training image in the labels/ folder"
        )
    quant = plan.quantization
    missing = sorted(p for p in quant.precisions if p not in target.precisions)
    if missing:
        raise PlanError(
            f"target {target.name} cannot run {', '.join(missing)}; it supports {', '.join(target.precisions)}"
        )
    if "int8" in quant.precisions and quant.activation_type not in target.activations:
        raise PlanError(
            f"target {target.name} runs INT8 layers with {', '.join(target.activations)} activations, not "
            f"{quant.activation_type}; set quantization.activation_type: {target.activations[0]}"
        )


def check_settings(settings: object) -> None:
    """Refuse a library caller's settings of another type in one line (not an ``AttributeError`` later)."""
    if not isinstance(settings, CandidateSettings):
        raise YolotuneError(
            f"settings must be a CandidateSettings (CandidateSettings(imgsz=..., target=...)); "
            f"got {type(settings).__name__}"
        )


def _check_arguments(plan: object, settings: object) -> None:
    """Refuse a library caller's plan or settings (when given) of another type in one line."""
    if not isinstance(plan, CompressionPlan):
        raise YolotuneError(
            f"plan must be a CompressionPlan (CompressionPlan.load(path) or CompressionPlan.from_dict(mapping)); "
            f"got {type(plan).__name__}"
        )
    if settings is not None:
        check_settings(settings)


def check_candidate(
    *, model: str | Path, data: str | Path, plan: CompressionPlan, settings: CandidateSettings
) -> tuple[str, ...]:
    """Refuse, before any work, a candidate the model, the data or the settings' target cannot build.

    Returns:
        The model's layer groups, which the plan was checked against (for ``plan.brief(groups=)``).

    Raises:
        YolotuneError: Missing or unloadable model or data, a dataset with other classes than the
            model, or a plan ``check_plan`` refuses.
    """
    _check_arguments(plan, settings)
    net = adapter.load_model(resolve_model(model))
    dataset = prepare_dataset(data)
    adapter.check_classes(net, dataset.names, dataset.source)
    groups = adapter.model_layout(net).groups
    check_plan(plan, groups=groups, dataset=dataset, target=target_spec(settings.target))
    return groups


@dataclass(frozen=True, kw_only=True)
class BuiltCandidate:
    """A candidate built and validated, not yet timed (what a worker hands back to the driver).

    Attributes:
        plan: The plan.
        model: Resolved checkpoint path.
        data: Resolved dataset source.
        imgsz: Input size.
        deployable: The deployable file (on the host that built it).
        accuracy: mAP of the deployable file.
        size_bytes: Its size.
        prune: Pruning report, when pruned.
        recover: Post-training recovery report, when one ran.
        quantize: Quantization report, when quantized.
        macs: Estimated MACs (thop-style count, an estimate).
        params: Parameter count.
        step_seconds: Seconds per step.
        versions: Library versions.
        host: Host name of the machine that built it.
        fidelity: ``full``, or ``rung0`` (no fine-tuning yet, maybe a validation subset).
        proxy: At rung 0, the recovery that stood in for the plan's (``ls×8``: its method on fewer images).
        calibration_proxy: At rung 0, the calibration that stood in for the plan's slow one (``minmax``).
        finetune: What fine-tuning ran, when it ran.
        unquantized: At rung 0, why the plan's quantization did not run (its FP32 export was already
            out of reach): ``deployable`` and ``accuracy`` are then the FP32 export's.
    """

    plan: CompressionPlan
    model: str
    data: str
    imgsz: int
    deployable: Path
    accuracy: Accuracy
    size_bytes: int
    prune: PruneReport | None
    recover: RecoverReport | None
    quantize: QuantizeReport | None
    macs: int
    params: int
    step_seconds: dict[str, float]
    versions: dict[str, str]
    host: str
    fidelity: str = "full"
    proxy: str = ""
    calibration_proxy: str = ""
    finetune: FinetuneReport | None = None
    unquantized: str = ""

    @property
    def stand_ins(self) -> dict[str, str]:
        """What rung 0 ran in place of the plan's slow steps (``{"recovery": "ls×8", ...}``)."""
        named = {"recovery": self.proxy, "calibration": self.calibration_proxy}
        if self.unquantized:
            named["precision"] = "fp32"
        return {step: ran for step, ran in named.items() if ran}


def _rung0_stand_in(plan: CompressionPlan) -> tuple[CompressionPlan, str, str]:
    """The plan rung 0 builds: cheap stand-ins for slow recovery and calibration, and what they are."""
    recovery, calibration = "", ""
    planned = plan.recovery
    if plan.pruning.active and planned.method in _SLOW_RECOVERY and planned.images > RUNG0_RECOVERY_IMAGES:
        recovery = f"{planned.method}×{RUNG0_RECOVERY_IMAGES}"  # its seconds grow with the images
        plan = dataclasses.replace(plan, recovery=dataclasses.replace(planned, images=RUNG0_RECOVERY_IMAGES))
    quant = plan.quantization
    if "int8" in quant.precisions and quant.calibration_method in _SLOW_CALIBRATION:
        calibration = "minmax"
        plan = dataclasses.replace(plan, quantization=dataclasses.replace(quant, calibration_method=calibration))
    return plan, recovery, calibration


def build_candidate(
    *,
    model: str | Path,
    data: str | Path,
    plan: CompressionPlan,
    out_dir: str | Path,
    settings: CandidateSettings | None = None,
    target: Target | TargetSpec | None = None,
    on_step: Callable[[str], None] | None = None,
    stage: str = "full",
    val_images: int | None = None,
    previous: BuiltCandidate | None = None,
    rung0_floor: float | None = None,
) -> BuiltCandidate:
    """Build the deployable model for ``plan`` and validate it; every step holds the compute lease.

    Steps: load → (prune → post-training recovery) → (fine-tune) → export ONNX → (quantize) → mAP → size.
    Artifacts land in ``out_dir``: ``plan.yaml``, checkpoints, ``model.onnx`` (FP32) and
    ``model.int8.onnx`` when quantized (``model.fp16.onnx`` when only annotated for fp16).

    Multi-fidelity search builds in two stages. ``stage="rung0"`` stops before fine-tuning,
    validates on ``val_images`` evenly spaced validation images, runs a ``bias``/``ls`` recovery on
    ``RUNG0_RECOVERY_IMAGES`` images at most and calibrates with MinMax in place of a slow histogram method
    (the result says ``fidelity="rung0"`` and names its stand-ins, unless that is already everything
    the plan asks for). ``stage="promote"`` continues from what rung 0 left in ``out_dir``
    (``previous``): fine-tunes the recovered checkpoint, exports and quantizes again when weights or
    calibration changed, and validates on every validation image. A rung 0 that recovered on fewer
    images is rebuilt with the plan's own recovery (pruning again is deterministic and takes about
    a second; the recovery images rung 0 left out are what it saved).

    ``rung0_floor`` (rung 0 only) is the mAP50-95, on rung 0's validation images, under which the
    plan is out of reach whatever its size and speed (the driver's ``--max-map-drop`` bound less the
    promotion margin). When rung 0 skips something of the plan (fine-tuning, validation images, a
    stand-in), an INT8 plan then validates its FP32 export first, and one under the floor is not
    quantized: the result is the FP32 export's, at rung 0, and ``unquantized`` says why.
    Quantization cannot bring back a model that pruning lost, and it costs most of a hopeless rung
    0's seconds (calibration, then validating the quantized file).

    Raises:
        YolotuneError: Bad input (missing files, invalid plan) or a failed step, as one line.
    """
    if stage not in ("full", "rung0", "promote"):
        raise ValueError(f"unknown stage {stage!r}")
    _check_arguments(plan, settings)
    settings = settings or CandidateSettings()
    out_dir = Path(out_dir).absolute()  # the files a result names stay found after a chdir
    check_folder(out_dir)
    # only the target's name and precisions matter here: its device is not needed to build (the
    # driver passes its TargetSpec, so workers need no registry or targets file of their own)
    runs_on: Target | TargetSpec = target or target_spec(settings.target)
    if settings.int8_reduce_range is None:
        settings = dataclasses.replace(settings, int8_reduce_range=needs_reduce_range(runs_on))
    if stage == "promote":
        rebuild = previous is None or previous.proxy or not (Path(out_dir) / "model.pt").is_file()
        if rebuild:  # rung 0 stood in for the plan's recovery, or ran on another host
            built = build_candidate(
                model=model, data=data, plan=plan, out_dir=out_dir, settings=settings, target=target, on_step=on_step
            )
            if previous is None:
                return built
            # what the candidate cost in all, as when a promotion continues: rung 0's steps, then these
            spent = previous.step_seconds
            total = {k: spent.get(k, 0.0) + built.step_seconds.get(k, 0.0) for k in {**spent, **built.step_seconds}}
            return dataclasses.replace(built, step_seconds=total)
        assert previous is not None
        return _promote(previous, out=Path(out_dir), settings=settings, on_step=on_step)
    common: dict[str, Any] = {
        "model": model,
        "data": data,
        "out_dir": out_dir,
        "settings": settings,
        "runs_on": runs_on,
    }
    if stage == "rung0":
        stand_in, recovery, calibration = _rung0_stand_in(plan)
        if stand_in != plan:
            built = _build(
                **common,
                plan=stand_in,
                on_step=on_step,
                rung0=True,
                stood_in=True,
                val_images=val_images,
                floor=rung0_floor,
            )
            plan.save(Path(out_dir) / "plan.yaml")
            return dataclasses.replace(
                built,
                plan=plan,
                fidelity="rung0",
                proxy=recovery,
                calibration_proxy="" if built.unquantized else calibration,  # none ran at all
            )
    return _build(
        **common,
        plan=plan,
        on_step=on_step,
        rung0=stage == "rung0",
        stood_in=False,
        val_images=val_images,
        floor=rung0_floor,
    )


def _build(
    *,
    model: str | Path,
    data: str | Path,
    plan: CompressionPlan,
    out_dir: Path,
    settings: CandidateSettings,
    runs_on: Target | TargetSpec,
    on_step: Callable[[str], None] | None,
    rung0: bool,
    stood_in: bool,
    val_images: int | None,
    floor: float | None,
) -> BuiltCandidate:
    """Load → (prune → post-training recovery) → save, then ``_finish``; ``build_candidate``'s work.

    At rung 0 (``rung0``) the result is a rung-0 one when it skips something of the plan: fine-tuning,
    validation images, or (``stood_in``) the plan's own recovery or calibration. Only then does
    ``floor`` apply: a rung 0 that is the whole plan is evaluated in full, and quantized.
    """
    steps = _Steps(on_step)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    imgsz = settings.imgsz

    with steps("load"):
        model_path = resolve_model(model)
        dataset = prepare_dataset(data)
        net = adapter.load_model(model_path)
        adapter.check_classes(net, dataset.names, dataset.source)
        layout = adapter.model_layout(net)
        check_plan(plan, groups=layout.groups, dataset=dataset, target=runs_on)
        plan.save(out / "plan.yaml")

    prune_report = None
    recover_report = None
    if plan.pruning.active:
        with steps("prune"):
            original = unpruned_copy(net) if plan.recovery.method in ("bias", "ls") else None
            kept: dict[str, KeptChannels] = {}
            prune_report = prune(
                net,
                plan.pruning,
                imgsz=imgsz,
                images=lambda: adapter.calibration_images(dataset, imgsz=imgsz, count=plan.recovery.images),
                kept=kept,
            )
        if plan.recovery.post_training:
            with steps("recover"):
                recover_report = recover(
                    net,
                    adapter.calibration_images(dataset, imgsz=imgsz, count=plan.recovery.images),
                    method=plan.recovery.method,
                    pruned_groups=[g for g, r in plan.pruning.ratios if r > 0],
                    original=original,
                    kept=kept,
                )
            del original
    with steps("save"):
        checkpoint = adapter.save_checkpoint(net, out / "model.pt", note=plan.to_json())
    subset = val_subset(dataset, val_images) if rung0 and val_images else dataset
    cheap = rung0 and (plan.recovery.epochs > 0 or len(subset.val_images) < len(dataset.val_images))
    return _finish(
        plan,
        checkpoint,
        net,
        model_path=model_path,
        dataset=subset if cheap else dataset,
        source=dataset.source,
        layout=layout,
        settings=settings,
        steps=steps,
        out=out,
        finetune=not cheap,
        reports=(prune_report, recover_report),
        fidelity="rung0" if cheap else "full",
        floor=floor if cheap or stood_in else None,
    )


def _finish(
    plan: CompressionPlan,
    checkpoint: Path,
    net: Any,
    *,
    model_path: Path,
    dataset: Dataset,
    source: Path,
    layout: Any,
    settings: CandidateSettings,
    steps: _Steps,
    out: Path,
    finetune: bool,
    reports: tuple[PruneReport | None, RecoverReport | None],
    fidelity: str,
    deployable: Path | None = None,
    quant_report: QuantizeReport | None = None,
    counts: tuple[int, int] | None = None,
    fp32: Path | None = None,
    floor: float | None = None,
) -> BuiltCandidate:
    """(Fine-tune) → count → export → (quantize) → validate, from a saved checkpoint.

    With ``deployable`` given (promotion of a plan that does not fine-tune), only validation runs;
    with ``fp32`` given (the checkpoint's export, when it was not fine-tuned), no export runs.
    With ``floor`` (rung 0), an INT8 plan validates its FP32 export first and stops there,
    unquantized and at rung 0, when that scores under ``floor``.
    """
    import socket

    def built(deployable: Path, accuracy: Accuracy, **fields: Any) -> BuiltCandidate:
        assert counts is not None
        return BuiltCandidate(
            plan=plan,
            model=str(model_path),
            data=str(source),
            imgsz=imgsz,
            deployable=deployable,
            accuracy=accuracy,
            size_bytes=measure_size(deployable),
            prune=reports[0],
            recover=reports[1],
            quantize=quant_report,
            macs=counts[0],
            params=counts[1],
            step_seconds=dict(steps.seconds),
            versions=package_versions(),
            host=socket.gethostname(),
            fidelity=fidelity,
            finetune=tuned,
            **fields,
        )

    imgsz = settings.imgsz
    tuned = None
    if finetune and plan.recovery.epochs > 0:
        with steps("finetune"):
            net, tuned = adapter.finetune(
                checkpoint,
                dataset,
                epochs=plan.recovery.epochs,
                lr=plan.recovery.lr,
                imgsz=imgsz,
                out_dir=out,
                seed=settings.seed,
                device=settings.train_device,
                teacher=model_path if plan.recovery.distill else None,
            )
            checkpoint = adapter.save_checkpoint(net, out / "model.pt", note=plan.to_json())
        deployable = fp32 = None  # the weights changed: export and quantize again
    if deployable is None:
        if counts is None:  # fine-tuning changes weights, never shapes: a promotion keeps rung 0's
            if net is None:
                net = adapter.load_model(checkpoint)
            with steps("count"):
                counts = count_macs_params(net, imgsz)
        del net
        if fp32 is None:
            with steps("export"):
                fp32 = adapter.export_onnx(checkpoint, imgsz=imgsz)
        deployable = fp32
        quant_report = None
        if "int8" in plan.quantization.precisions and floor is not None:  # calibration: a hopeless stop's most
            with steps("validate-fp32"):
                unquantized = measure_map(fp32, dataset, imgsz=imgsz)
            if unquantized.map50_95 < floor:
                fidelity = "rung0"  # even when rung 0 validated every image: quantization did not run
                why = (
                    f"its FP32 export scored mAP50-95 {unquantized.map50_95:.3f} on {unquantized.images} validation "
                    f"images, under the {floor:.3f} it needs there to be promoted"
                )
                return built(fp32, unquantized, unquantized=why)
        if plan.quantization.active:
            with steps("quantize"):
                deployable = out / ("model.int8.onnx" if "int8" in plan.quantization.precisions else "model.fp16.onnx")
                quant_report = quantize(
                    fp32,
                    deployable,
                    plan.quantization,
                    group_of_node=layout.group_of_onnx_node,
                    calibration=lambda: adapter.calibration_images(
                        dataset, imgsz=imgsz, count=plan.quantization.calibration_images
                    ),
                    budget_gb=settings.calibration_memory_gb,
                    reduce_range=bool(settings.int8_reduce_range),
                )
    assert counts is not None
    with steps("validate"):
        accuracy = measure_map(deployable, dataset, imgsz=imgsz)
    if "fp16" in plan.quantization.precisions:
        accuracy = dataclasses.replace(
            accuracy,
            note="fp16 layers validated in fp32 by ONNX Runtime on the search host (fp16 rounding not modelled)",
        )
    return built(deployable, accuracy)


def _promote(
    previous: BuiltCandidate, *, out: Path, settings: CandidateSettings, on_step: Callable[[str], None] | None
) -> BuiltCandidate:
    """Take a rung-0 candidate to full fidelity, continuing from its checkpoint and files."""
    steps = _Steps(on_step)
    plan = previous.plan
    with steps("load"):
        dataset = prepare_dataset(previous.data)
        layout = adapter.model_layout(adapter.load_model(Path(previous.model)))
    steps.seconds = {k: v + steps.seconds.get(k, 0.0) for k, v in previous.step_seconds.items()}
    # new weights (export and quantize again), or rung 0 calibrated with a stand-in (quantize
    # rung 0's export again)
    fine = plan.recovery.epochs > 0
    again = fine or bool(previous.calibration_proxy) or bool(previous.unquantized)
    export = out / "model.onnx"
    return _finish(
        plan,
        out / "model.pt",
        None,
        model_path=Path(previous.model),
        dataset=dataset,
        source=dataset.source,
        layout=layout,
        settings=settings,
        steps=steps,
        out=out,
        finetune=True,
        reports=(previous.prune, previous.recover),
        fidelity="full",
        deployable=None if again else previous.deployable,
        quant_report=previous.quantize,
        counts=(previous.macs, previous.params),
        fp32=export if not fine and export.is_file() else None,
    )


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (``hashlib.file_digest`` needs Python 3.11; 3.10 is supported)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def time_candidate(
    built: BuiltCandidate,
    *,
    target: Target,
    on_step: Callable[[str], None] | None = None,
    timed: tuple[str, LatencyStats, LatencyStats | None] | None = None,
    reference: Path | None = None,
) -> CandidateResult:
    """Time a built candidate on ``target`` (on this host) and write its ``metrics.json``.

    Args:
        built: The built candidate.
        target: Where to time it.
        on_step: Called with ``latency`` before timing, and ``reference`` before timing that.
        timed: ``(file_digest(f), stats, reference_stats)`` of an earlier timing of a file ``f`` on this
            target (rung 0 of the same trial), and of ``reference`` timed right after it (``None``: not
            timed): both reused when ``built.deployable`` has the same bytes.
        reference: A file to time right after the candidate, the same way (the study's FP32
            reference): the ratio of the two timings, taken seconds apart, is the candidate's
            speed-up even on a machine whose speed drifts (``reference_latency``). Not timed when
            the candidate's timing is reused (``timed``); a failed reference timing leaves it out.

    Raises:
        YolotuneError: The timing failed, as one line.
    """
    steps = _Steps(on_step, lease=False)  # the target takes the timing lease itself
    reference_latency = None
    if timed is not None and timed[0] == file_digest(built.deployable):
        latency, reference_latency = timed[1:]  # a measurement of these very bytes: timing them again adds nothing
    else:
        with steps("latency"):
            latency = target.benchmark(built.deployable, imgsz=built.imgsz)
        if reference is not None:  # only right after a timing of its own: a pair, seconds apart
            reference_latency = _time_reference(steps, reference, target=target, imgsz=built.imgsz)
    result = CandidateResult(
        plan=built.plan,
        model=built.model,
        data=built.data,
        imgsz=built.imgsz,
        deployable=built.deployable,
        accuracy=built.accuracy,
        size_bytes=built.size_bytes,
        latency=latency,
        provenance=target.provenance(imgsz=built.imgsz),
        prune=built.prune,
        recover=built.recover,
        quantize=built.quantize,
        macs=built.macs,
        params=built.params,
        step_seconds={**built.step_seconds, **steps.seconds},
        versions=built.versions,
        fidelity=built.fidelity,
        stand_ins=built.stand_ins,
        reference_latency=reference_latency,
        finetune=built.finetune,
    )
    _write_metrics(built.deployable.parent, result.to_dict())
    return result


def time_reference(
    reference: Path, *, target: Target, imgsz: int, on_step: Callable[[str], None] | None = None
) -> LatencyStats | None:
    """Time the study's FP32 reference file right after a candidate's timing, or ``None`` if that fails.

    As ``time_candidate(reference=...)`` does, for a timing taken apart from it (rung 0's, once
    its candidate is promoted): the pair, seconds apart, gives the speed-up even on a machine
    whose speed drifts.

    Args:
        reference: The reference's deployable file.
        target: Where the candidate was just timed.
        imgsz: The candidate's input size.
        on_step: Called with ``reference`` before timing it.
    """
    return _time_reference(_Steps(on_step, lease=False), reference, target=target, imgsz=imgsz)


def _time_reference(steps: _Steps, reference: Path, *, target: Target, imgsz: int) -> LatencyStats | None:
    """Time ``reference`` as step ``reference``, or ``None`` when that fails.

    The candidate was measured already: its speed-up then divides by the reference trial's own timing.
    """
    try:
        with steps("reference"):
            return target.benchmark(reference, imgsz=imgsz)
    except YolotuneError:
        return None


def drop_intermediates(told: BuiltCandidate | CandidateResult) -> list[Path]:
    """Remove the files of a told trial's folder that nothing reads again; return those removed.

    Once a trial is told (COMPLETE, or stopped at rung 0), only its deployable file, ``plan.yaml``
    and ``metrics.json`` are read again (export, re-timing, reports; a trial built on a Ray worker
    of another host never had more). Removed: the FP32 ``model.onnx`` that an INT8 or FP16
    deployable was quantized from (12.7 MB for YOLOv8n), ``model.pt`` unless the trial pruned or
    fine-tuned it (otherwise a copy of the input model's weights), and a Ray worker's
    ``worker.pid``. A pruned or fine-tuned checkpoint stays: it is the PyTorch model of the plan,
    to fine-tune further with Ultralytics. A file that cannot be removed is left: this is clean-up.

    Args:
        told: What the trial built (a rung-0 stop) or measured (a COMPLETE trial).
    """
    folder = Path(told.deployable).parent
    doomed = [folder / "worker.pid"]
    if Path(told.deployable).name != "model.onnx":
        doomed.append(folder / "model.onnx")
    if not told.plan.pruning.active and told.finetune is None:
        doomed.append(folder / "model.pt")
    removed = []
    for path in doomed:
        with contextlib.suppress(OSError):
            path.unlink()
            removed.append(path)
    return removed


def record_untimed(built: BuiltCandidate, *, reason: str) -> None:
    """Write ``metrics.json`` for a rung-0 candidate the search stopped without timing it.

    Everything measured is recorded; ``latency`` is null and ``not_timed`` says why.
    """
    _write_metrics(built.deployable.parent, _record(built, latency=None, provenance=None, not_timed=reason))


def run_candidate(
    *,
    model: str | Path,
    data: str | Path,
    plan: CompressionPlan,
    out_dir: str | Path,
    settings: CandidateSettings | None = None,
    target: Target | None = None,
    on_step: Callable[[str], None] | None = None,
) -> CandidateResult:
    """Build the deployable model for ``plan`` and measure it (``build_candidate`` + ``time_candidate``).

    Steps: load → (prune) → (fine-tune) → export ONNX → (quantize) → mAP → size → latency.
    Artifacts land in ``out_dir``: ``plan.yaml``, checkpoints, ``model.onnx`` (FP32),
    ``model.int8.onnx`` when quantized, and ``metrics.json``.

    Args:
        model: Checkpoint path or bare asset name.
        data: Data yaml path or bare asset name.
        plan: The compression plan.
        out_dir: Directory for the artifacts.
        settings: Image size, target, calibration budget, seed.
        target: A target instance (overrides ``settings.target``; tests pass fakes).
        on_step: Called with each step's name as it starts (progress display).

    Raises:
        YolotuneError: Bad input (missing files, invalid plan) or a failed step, as one line.
    """
    _check_arguments(plan, settings)
    settings = settings or CandidateSettings()
    target = target or make_target(settings)
    built = build_candidate(
        model=model, data=data, plan=plan, out_dir=out_dir, settings=settings, target=target, on_step=on_step
    )
    return time_candidate(built, target=target, on_step=on_step)
