"""The study driver: ask → run candidate → tell, persistent and resumable.

One Optuna study holds every trial. The driver is the only writer of the storage; a failed
candidate is told as FAIL with its reason (``fail_reason`` user attribute) and the search goes
on. ``budget`` counts evaluated candidates (COMPLETE, and PRUNED rung-0 stops of a multi-fidelity
search), earlier runs included, so the same command resumes.

Constraints (``max_map_drop`` against the FP32 reference trial, ``max_latency_ms``) are set with
``Trial.set_constraint``, so Optuna's samplers prefer feasible plans and ``Study.best_trials``
(the reported front) leaves infeasible trials out; they stay in the study.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import hashlib
import json
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import optuna
import yaml

from yolotune import _yaml
from yolotune._files import whole_file
from yolotune._warn import warn_once
from yolotune.compression import CALIBRATION_FORMAT, PRUNING_FORMAT
from yolotune.compression import ultralytics_adapter as adapter
from yolotune.errors import SearchStopped, StepError, YolotuneError, disk_full
from yolotune.evaluators import LatencyStats, Provenance, needs_reduce_range, target_spec
from yolotune.search._candidate import (
    CandidateResult,
    CandidateSettings,
    drop_intermediates,
    file_digest,
    make_target,
    record_untimed,
    time_candidate,
    time_reference,
)
from yolotune.search._executors import Crashed, Failed, InProcess, RayExecutor, check_ray_address
from yolotune.search._heartbeat import Heartbeat, fail_stale_trials
from yolotune.search._retime import reference_file, retime_front
from yolotune.search._sensitivity import SENSITIVITY_RECOVERY, GroupSensitivity, Sensitivity, scan_sensitivity
from yolotune.search._spaces import load_space

if TYPE_CHECKING:
    from yolotune.evaluators import Target
from yolotune.spaces import MAX_PRUNING_RATIO, CompressionPlan, DefaultSpace, Space
from yolotune.studies._front import fp32_reference
from yolotune.studies._storage import (
    artifact_dir,
    claim_folder,
    default_storage_url,
    open_storage,
    storage_lock,
    study_dir,
)

__all__ = [
    "METRIC_NAMES",
    "SearchConfig",
    "TrialOutcome",
    "constraints_of",
    "open_study",
    "plan_of",
    "preflight",
    "run_search",
    "search_spaces",
]

logger = logging.getLogger(__name__)

METRIC_NAMES = ["mAP50-95", "size MB", "latency ms"]
DIRECTIONS = [
    optuna.study.StudyDirection.MAXIMIZE,
    optuna.study.StudyDirection.MINIMIZE,
    optuna.study.StudyDirection.MINIMIZE,
]


@dataclass(frozen=True, kw_only=True)
class SearchConfig:
    """A study: what to compress, where to time it, how many trials.

    Attributes:
        model: Checkpoint path or asset name.
        data: Data yaml path or asset name.
        budget: Number of candidates the study should hold: COMPLETE trials, and with
            ``multi_fidelity`` the candidates stopped at rung 0 (PRUNED) too.
        settings: Image size, target, calibration budget, seed.
        study_name: Study name (default: derived from model, data, target, image size).
        storage: Optuna storage URL (default: ``sqlite:///<root>/<study>.db``).
        root: Directory of the default storage and of trial artifacts.
        sampler: ``nsga2`` (default), ``tpe`` or ``random`` (a baseline for comparisons).
        population: NSGA-II population size.
        seed: Sampler seed.
        fine: Per-layer search space instead of the coarse one.
        space: A YAML file narrowing the default space, or ``module:callable`` / ``file.py:callable``.
        max_map_drop: Largest mAP50-95 drop (absolute, e.g. 0.01) from the FP32 reference trial.
        max_latency_ms: Largest median latency on the target.
        workers: Candidates built at once (more than 1: Ray tasks on a local instance).
        ray_address: Join this Ray cluster instead of starting a local instance.
        cpus_per_worker: CPUs each candidate's Ray task declares.
        heartbeat_interval: Seconds between heartbeats of running trials (RDB storages); a trial
            silent for three intervals belongs to a dead driver and is failed and retried.
        multi_fidelity: Evaluate every candidate cheaply first (rung 0: post-training recovery
            only, no fine-tuning, ``rung0_val`` validation images) and promote only those near the
            full-fidelity front; the others end PRUNED with their rung-0 numbers recorded.
        rung0_val: Validation images at rung 0 (``None``: all of them).
        promote_margin: A rung-0 candidate is promoted unless a full-fidelity trial is at least as
            small and fast and this much mAP50-95 better, or (with ``max_map_drop``) its mAP is
            more than this below the feasible mAP.
        sensitivity_drop: Before the search, prune each layer group alone by
            ``sensitivity_ratio`` and measure it (``scan_sensitivity``); the default space then
            prunes only groups whose mAP50-95 drop stays within this. ``None``: no scan.
        sensitivity_ratio: Share of channels each group's probe prunes.
        sensitivity_recovery: Post-training recovery of each probe (``bn``, ``bias``, ``ls``). The
            search's pruned plans then recover with this method or ``ls``.
        time_reference: Time the study's FP32 reference file again right after each trial, so its
            speed-up compares two timings taken seconds apart (``reference_ms``; one more timing
            per trial). Off: speed-ups divide by the reference trial's own timing.
        retime_rounds: Once the budget is met, time the feasible trials near the front again, once
            per round with the FP32 reference file, for this many rounds (``retime_front``); the
            front is then found on the median per-round speed-ups. 0: not re-timed.
    """

    model: str
    data: str
    budget: int
    settings: CandidateSettings = field(default_factory=CandidateSettings)
    study_name: str | None = None
    storage: str | None = None
    root: Path = Path("studies")
    sampler: str = "nsga2"
    population: int = 8
    seed: int = 0
    fine: bool = False
    space: str | None = None
    max_map_drop: float | None = None
    max_latency_ms: float | None = None
    workers: int = 1
    ray_address: str | None = None
    cpus_per_worker: int = 1
    heartbeat_interval: int = 10
    multi_fidelity: bool = False
    rung0_val: int | None = None
    promote_margin: float = 0.02
    sensitivity_drop: float | None = None
    sensitivity_ratio: float = 0.25
    sensitivity_recovery: str = "bias"
    time_reference: bool = True
    retime_rounds: int = 11

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))  # a str from a library caller works too
        for name in ("model", "data", "storage", "space"):  # and a Path where a str is declared
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, name, os.fspath(value))
        whole = {
            "budget": self.budget,
            "population": self.population,
            "seed": self.seed,
            "workers": self.workers,
            "retime_rounds": self.retime_rounds,
        }
        for name, value in whole.items():
            if isinstance(value, bool) or not isinstance(value, int):
                raise YolotuneError(f"--{name.replace('_', '-')} must be a whole number; got {value!r}")
        if self.space is not None and not isinstance(self.space, str):
            raise YolotuneError(
                f"space must be a YAML file or 'module:callable' / 'file.py:callable' (a string); got {self.space!r}"
            )
        if self.sensitivity_recovery not in SENSITIVITY_RECOVERY:
            raise YolotuneError(
                f"--sensitivity-recovery must be one of {', '.join(SENSITIVITY_RECOVERY)}; "
                f"got {self.sensitivity_recovery!r}"
            )
        if self.sensitivity_drop is not None and not 0 <= self.sensitivity_drop <= 1:
            raise YolotuneError(f"--sensitivity-drop is an mAP50-95 difference in [0, 1]; got {self.sensitivity_drop}")
        if not 0 < self.sensitivity_ratio <= MAX_PRUNING_RATIO:
            raise YolotuneError(
                f"--sensitivity-ratio must be in (0, {MAX_PRUNING_RATIO}]; got {self.sensitivity_ratio}"
            )
        if self.fine and self.space is not None and not self.space.endswith((".yaml", ".yml")):
            raise YolotuneError(
                f"--fine makes one unit per layer group in the default or a YAML space; the Python space {self.space} "
                "asks for its own parameters: leave out --fine"
            )
        if self.rung0_val is not None and not self.multi_fidelity:
            raise YolotuneError("--rung0-val only applies to a --multi-fidelity search; add --multi-fidelity")
        if self.rung0_val is not None and self.rung0_val < 1:
            raise YolotuneError(f"--rung0-val must be ≥1 validation image; got {self.rung0_val}")
        if not 0 <= self.promote_margin <= 1:
            raise YolotuneError(f"--promote-margin is an mAP50-95 difference in [0, 1]; got {self.promote_margin}")
        if self.retime_rounds < 0:
            raise YolotuneError(f"--retime-rounds must be ≥0 (0: no re-timing); got {self.retime_rounds}")
        if self.workers < 1:
            raise YolotuneError(f"--workers must be ≥1; got {self.workers}")
        if self.heartbeat_interval < 1:
            raise YolotuneError(f"heartbeat interval must be ≥1 s; got {self.heartbeat_interval}")
        if self.max_map_drop is not None and not 0 <= self.max_map_drop <= 1:
            raise YolotuneError(f"--max-map-drop is an mAP50-95 difference in [0, 1]; got {self.max_map_drop}")
        if self.max_latency_ms is not None and not self.max_latency_ms > 0:  # NaN too
            raise YolotuneError(f"--max-latency-ms must be positive; got {self.max_latency_ms}")
        if self.budget <= 0:
            raise YolotuneError(f"--budget must be a positive number of trials; got {self.budget}")
        if self.sampler not in {"nsga2", "tpe", "random"}:
            raise YolotuneError(f"unknown sampler '{self.sampler}'; use nsga2, tpe or random")
        if self.population < 2:
            raise YolotuneError(f"population must be ≥2; got {self.population}")
        if not 0 <= self.seed < 2**32:
            raise YolotuneError(f"--seed must be a whole number from 0 to 2**32 - 1; got {self.seed}")
        if self.cpus_per_worker <= 0:
            raise YolotuneError(f"--cpus-per-worker must be positive; got {self.cpus_per_worker}")
        if self.study_name is not None and (not self.study_name.strip() or any(c in self.study_name for c in "/\\")):
            raise YolotuneError(f"--study names a file under --root: no '/' or '\\' in it; got {self.study_name!r}")

    @property
    def name(self) -> str:
        """The study name."""
        if self.study_name:
            return self.study_name
        stem = Path(self.model).stem
        data_path = Path(self.data)
        # a data yaml is named by its folder (tiny_coco/data.yaml), unless it is a bare asset name (coco8.yaml)
        if self.data.endswith((".yaml", ".yml")):
            data = data_path.parent.name if len(data_path.parts) > 1 else data_path.stem
        else:
            data = data_path.resolve().name if self.data in ("", ".", "./") else data_path.name
        return f"{stem}-{data}-{self.settings.target}-{self.settings.imgsz}"

    @property
    def storage_url(self) -> str:
        """The storage URL in use."""
        return self.storage or default_storage_url(self.root, self.name)


@dataclass(frozen=True, kw_only=True)
class TrialOutcome:
    """One finished trial, as the progress display sees it."""

    number: int
    state: str
    result: CandidateResult | None = None
    reason: str = ""


def _sampler(config: SearchConfig, *, resumed_at: int = 0) -> optuna.samplers.BaseSampler:
    """The study's sampler, seeded by ``config.seed`` and the number of trials already in the study.

    A resumed run must not replay the random draws of the run before it (a sampler seeded the
    same way each run proposes the same first plans again), yet stay reproducible.
    """
    seed = config.seed + 1_000_003 * resumed_at
    if config.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.NSGAIISampler(population_size=config.population, seed=seed)


def search_spaces(config: SearchConfig) -> tuple[Space, DefaultSpace]:
    """The space the study searches, and the model's default space (its reference plans).

    Raises:
        YolotuneError: Missing model or data, unknown target, or a space that cannot be loaded.
    """
    from yolotune.assets import prepare_dataset, resolve_model
    from yolotune.compression import ultralytics_adapter

    target = target_spec(config.settings.target)
    net = ultralytics_adapter.load_model(resolve_model(config.model))
    dataset = prepare_dataset(config.data)
    ultralytics_adapter.check_classes(net, dataset.names, dataset.source)
    layout = ultralytics_adapter.model_layout(net)
    n_train = len(dataset.train_images)
    n_val = len(dataset.val_images)
    if config.multi_fidelity and config.rung0_val is not None and config.rung0_val >= n_val:
        warn_once(
            logger,
            "--rung0-val %d: the data has %d validation images, so rung 0 validates on all of them and saves no "
            "validation time; give fewer",
            config.rung0_val,
            n_val,
        )
    default = DefaultSpace(
        groups=layout.groups,
        precisions=target.precisions,
        activations=target.activations,
        max_calibration_images=min(n_train, 256),
        fine=config.fine,
        # calibration and post-training recovery need images only; fine-tuning needs labels, and
        # no validation image among the training ones
        fine_tune=dataset.train_labels > 0 and not dataset.shared,
    )
    return load_space(config.space, default=default), default


def open_study(config: SearchConfig) -> optuna.Study:
    """Create the study, or load it when it exists (checking it describes the same job).

    The job (model, data, image size, target, space) and the constraints are recorded in the
    study's user attributes; a run that asks for another job or other constraints under the same
    study name is refused, and a run that leaves the constraints out uses the recorded ones.
    """
    return _open_study(config)[0]


def _open_study(
    config: SearchConfig, *, timed_on: dict[str, Any] | None = None
) -> tuple[optuna.Study, bool, optuna.storages.BaseStorage]:
    """``open_study``, also saying whether this call created the study (only its creator seeds it).

    ``timed_on`` (the device that times, and the INT8 weight width built for it) is recorded by the
    run that creates the study; a run on another device is refused, since its latencies would not
    compare. Returns the storage too: Optuna wraps it in a cache inside the study, and heartbeats go to it.
    """
    optuna.logging.set_verbosity(logging.WARNING)
    storage = open_storage(config.storage_url, heartbeat_interval=config.heartbeat_interval)
    created = True
    try:
        study = optuna.create_study(
            study_name=config.name, storage=storage, directions=DIRECTIONS, sampler=_sampler(config)
        )
    except optuna.exceptions.DuplicatedStudyError:
        created = False
        study = optuna.load_study(study_name=config.name, storage=storage, sampler=_sampler(config))
        study.sampler = _sampler(config, resumed_at=len(study.get_trials(deepcopy=False)))
    if study.directions != DIRECTIONS:
        raise YolotuneError(f"study '{config.name}' in {config.storage_url} is not a yolotune study")
    try:  # its trial files go to <root>/<study>: not a folder another storage's study of that name writes
        claim_folder(study, config.root, config.storage_url)
    except YolotuneError:
        if created:  # leave no empty study behind: the same command with --root creates it again
            with contextlib.suppress(Exception):
                optuna.delete_study(study_name=config.name, storage=storage)
                if config.storage is None and not optuna.get_all_study_names(storage=storage):
                    (config.root / f"{config.name}.db").unlink()  # nor the default file made for it
        raise
    from yolotune.assets import resolve_data, resolve_model

    spec = target_spec(config.settings.target)
    model_file = resolve_model(config.model)
    job: dict[str, Any] = {
        "model": _job_name(config.model, model_file),
        "model_digest": file_digest(model_file),
        "data": _job_name(config.data, resolve_data(config.data)),
        "imgsz": config.settings.imgsz,
        "target": config.settings.target,
        "space": config.space or ("default-fine" if config.fine else "default"),
        "space_digest": _space_digest(config.space),
        "fine": config.fine and _fine_applies(config.space),
        "export": adapter.EXPORT_FORMAT,
        "calibration": CALIBRATION_FORMAT,
        "pruning": PRUNING_FORMAT,
        "activations": list(spec.activations),
        "sensitivity": None
        if config.sensitivity_drop is None
        else {
            "max_drop": config.sensitivity_drop,
            "ratio": config.sensitivity_ratio,
            "recovery": config.sensitivity_recovery,
        },
    }
    wanted = {"max_map_drop": config.max_map_drop, "max_latency_ms": config.max_latency_ms}
    recorded = study.user_attrs.get("job")
    if recorded is None:
        study.set_user_attr("job", job)
        if timed_on is not None:
            study.set_user_attr("timed_on", timed_on)
        # how to rebuild the target for `tune export` (a user YAML target may not be loaded there)
        study.set_user_attr("target", {**spec.to_dict(), "device_url": config.settings.device_url})
        study.set_user_attr("constraints", wanted)
        study.set_user_attr("artifact_store", str(artifact_dir(config.root, config.name).resolve()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(METRIC_NAMES)
        return study, created, storage
    if recorded.get("export") != job["export"]:
        was = recorded.get("export", "Ultralytics' plain ONNX export")
        raise YolotuneError(
            f"study '{config.name}' was measured on {was}, this yolotune exports {job['export']}: "
            "latencies would not compare; use another --study name"
        )
    if recorded.get("calibration") != job["calibration"]:
        was = recorded.get("calibration", "onnxruntime's default entropy bins (the same ranges as minmax)")
        raise YolotuneError(
            f"study '{config.name}' was calibrated with {was}, this yolotune calibrates {job['calibration']}: "
            "entropy results would not compare; use another --study name"
        )
    if recorded.get("activations") != job["activations"]:
        if recorded.get("activations"):  # the target's definition (or its default) changed since
            listed = ", ".join(recorded["activations"])
            raise YolotuneError(
                f"study '{config.name}' searched {'/'.join(recorded['activations'])} INT8 activations; target "
                f"{job['target']} now runs {'/'.join(spec.activations)}: give it `activations: [{listed}]` "
                "(--targets-file) to resume the study, or use another --study name"
            )
        raise YolotuneError(  # before activation types were recorded: int8 ones were asymmetric then
            f"study '{config.name}' searched uint8/int8 INT8 activations; target {job['target']} now runs "
            f"{'/'.join(spec.activations)} (and int8 ones are quantized symmetrically): use another --study name"
        )
    if recorded.get("pruning") != job["pruning"]:
        if recorded.get("pruning") is not None or _rounded_down(study):
            was = recorded.get(
                "pruning", "torch-pruning's round_to (kept channels rounded down, 10% of 32 /16 kept 16)"
            )
            raise YolotuneError(
                f"study '{config.name}' was pruned with {was}, this yolotune keeps the nearest multiple "
                f"({job['pruning']}): pruned plans would not compare; use another --study name"
            )
        recorded = {**recorded, "pruning": job["pruning"]}  # no plan of it was rounded: nothing differs
        study.set_user_attr("job", recorded)
    changed = _job_changes(recorded, job)
    if changed:
        raise YolotuneError(
            f"study '{config.name}' was created for another job ({'; '.join(changed)}): run it with the arguments "
            "it was created with to resume it, or pass another --study name"
        )
    # what changes timings (not the agent's address, nor the one-line description)
    was = {k: v for k, v in (study.user_attrs.get("target") or {}).items() if k not in _NOT_TIMING}
    changed = [f"{k}: was {was[k]!r}, now {v!r}" for k, v in spec.to_dict().items() if k in was and was[k] != v]
    if changed:
        raise YolotuneError(
            f"study '{config.name}' was timed on target {spec.name} as defined then ({'; '.join(changed)}): "
            "latencies would not compare; restore that definition or pass another --study name"
        )
    was_on = study.user_attrs.get("timed_on")
    if timed_on is not None and was_on is not None and was_on != timed_on:
        raise YolotuneError(
            f"study '{config.name}' was timed on {_device_words(was_on)}, this run would time on "
            f"{_device_words(timed_on)}: latencies would not compare; resume it there or pass another --study name"
        )
    if timed_on is not None and was_on is None:  # a study from before devices were recorded
        study.set_user_attr("timed_on", timed_on)
    # export re-times on the agent the last run used (an agent may come back at another address)
    study.set_user_attr("target", {**spec.to_dict(), "device_url": config.settings.device_url})
    study.set_user_attr("artifact_store", str(artifact_dir(config.root, config.name).resolve()))
    have = constraints_of(study)
    for key, value in wanted.items():
        if value is not None and value != have.get(key):
            flag = "--" + key.replace("_", "-")
            created_with = f"without {flag}" if have.get(key) is None else f"with {flag} {have.get(key)}"
            raise YolotuneError(
                f"study '{config.name}' was created {created_with}; use another --study name for {flag} {value}"
            )
    return study, created, storage


def _rounded_down(study: optuna.Study) -> bool:
    """Whether a trial of a study made before ``PRUNING_FORMAT`` pruned with ``round_to`` above 1."""
    for t in study.get_trials(deepcopy=False):
        plan = t.user_attrs.get("plan") or {}
        pruning = plan.get("pruning") or {}
        if any(r > 0 for r in (pruning.get("ratios") or {}).values()) and pruning.get("round_to", 1) > 1:
            return True
    return False


def constraints_of(study: optuna.Study) -> dict[str, float | None]:
    """The study's recorded constraints (``max_map_drop``, ``max_latency_ms``; ``None`` when unset)."""
    recorded = study.user_attrs.get("constraints") or {}
    return {"max_map_drop": recorded.get("max_map_drop"), "max_latency_ms": recorded.get("max_latency_ms")}


def _baseline_map(study: optuna.Study) -> float | None:
    base = fp32_reference(study)
    return None if base is None else float(base.values[0])


UNTRAINED_MAP50_95 = 0.001
"""An uncompressed model scoring under this mAP50-95 detects nothing on the data: a search over it measures nothing."""


def untrained(map50_95: float) -> str:
    """Why an uncompressed model's mAP50-95 makes compressing it meaningless (one line), or ``""``."""
    if map50_95 >= UNTRAINED_MAP50_95:
        return ""
    return (
        f"the uncompressed model scores mAP50-95 {map50_95:.3f} on these validation images: it is untrained or "
        "trained for other data, so no plan can be measured against it; pass the trained checkpoint "
        "(runs/detect/<name>/weights/best.pt) and the data it was trained for"
    )


def _untrained_study(study: optuna.Study) -> str:
    """``untrained`` of the study's FP32 reference trial, once it has completed."""
    base = _baseline_map(study)
    return "" if base is None else untrained(base)


class _WaitsForBaseline(YolotuneError):
    """A trial finished before the FP32 reference whose mAP its ``--max-map-drop`` constraint needs."""


_QUEUED_BEHIND_FP32 = "queued again behind the FP32 reference: --max-map-drop needs its mAP"

#: how a full disk, or a folder that cannot be written, reads in a failure's reason, whichever
#: process or library met it (a Ray worker's exception arrives as text)
_UNWRITABLE = (os.strerror(errno.EACCES), os.strerror(errno.EROFS))


def _environment_failure(reason: str) -> str | None:
    """How to fix a candidate's failure that is the machine's, not the plan's, or ``None``.

    Every later candidate would fail the same way, so the search stops rather than spend its budget.
    """
    if disk_full(reason):
        return (
            f"a disk is full ({reason}): free some space, or point --root (trial files, up to about 38 MB per trial "
            "for a YOLOv8n) or YOLOTUNE_TMP (scratch) at a larger disk, then run the same command to resume"
        )
    if any(text in reason for text in _UNWRITABLE):
        return (
            f"a file or folder cannot be accessed ({reason}): fix its permissions (or point --root or YOLOTUNE_TMP "
            "elsewhere), then run the same command to resume"
        )
    return None


def _waits_for_baseline(study: optuna.Study, *, running: bool = False) -> bool:
    """Whether trials should wait for the FP32 reference: needed, not complete, and still to come.

    Needed: ``--max-map-drop`` is set. Still to come: queued (or, with ``running``, being built); a
    reference that failed for good makes nothing wait.
    """
    if constraints_of(study)["max_map_drop"] is None or _baseline_map(study) is not None:
        return False
    states = (optuna.trial.TrialState.WAITING, *((optuna.trial.TrialState.RUNNING,) if running else ()))
    return any(t.user_attrs.get("reference") == "fp32" for t in study.get_trials(deepcopy=False, states=states))


def _baseline_failed(study: optuna.Study) -> str:
    """Why ``--max-map-drop`` cannot be applied in this run (one line), or ``""``.

    The FP32 reference trial failed and no run of it is queued or running: every later candidate
    would be built, timed and then failed for want of its mAP, each naming the wrong cause.
    """
    if constraints_of(study)["max_map_drop"] is None or _baseline_map(study) is not None:
        return ""
    fp32 = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("reference") == "fp32"]
    state = optuna.trial.TrialState
    if not fp32 or any(t.state in (state.WAITING, state.RUNNING) for t in fp32) or fp32[-1].state != state.FAIL:
        return ""
    reason = str(fp32[-1].user_attrs.get("fail_reason", "no reason recorded")).rstrip(".")
    return (
        f"the FP32 reference trial {fp32[-1].number} failed ({reason}), and --max-map-drop measures every plan "
        "against its mAP: fix that and run the same command (the reference runs first), or start another --study "
        "without --max-map-drop"
    )


def _check_baseline(study: optuna.Study, trial: optuna.Trial) -> None:
    """Raise ``_WaitsForBaseline`` when ``trial``'s ``--max-map-drop`` constraint needs an FP32 mAP not measured yet."""
    needed = constraints_of(study)["max_map_drop"] is not None and trial.user_attrs.get("reference") != "fp32"
    if needed and _baseline_map(study) is None:
        raise _WaitsForBaseline("--max-map-drop needs the FP32 reference trial, which has not completed")


def _set_constraints(study: optuna.Study, trial: optuna.Trial, result: CandidateResult) -> None:
    limits = constraints_of(study)
    _check_baseline(study, trial)
    if limits["max_map_drop"] is not None:
        is_baseline = trial.user_attrs.get("reference") == "fp32"
        base = result.accuracy.map50_95 if is_baseline else _baseline_map(study)
        assert base is not None  # _check_baseline
        trial.set_constraint("map_drop", (base - result.accuracy.map50_95) - limits["max_map_drop"])
    if limits["max_latency_ms"] is not None:
        trial.set_constraint("latency", result.latency.median_ms - limits["max_latency_ms"])


def _whole_file_store(base: Path) -> Any:
    """Optuna's ``FileSystemArtifactStore`` whose writes leave a whole file or none (a full disk cut one short)."""
    from optuna.artifacts import FileSystemArtifactStore

    class WholeFileStore(FileSystemArtifactStore):
        def write(self, artifact_id: str, content_body: Any) -> None:
            with whole_file(base / artifact_id) as partial, open(partial, "wb") as f:
                shutil.copyfileobj(content_body, f)

    base.mkdir(parents=True, exist_ok=True)
    return WholeFileStore(str(base))


def _register_artifacts(config: SearchConfig, trial: optuna.Trial, result: CandidateResult) -> dict[str, str]:
    """Upload the deployable model, plan and metrics to the study's Optuna artifact store."""
    from optuna.artifacts import upload_artifact

    store = _whole_file_store(artifact_dir(config.root, config.name))
    out = result.deployable.parent
    ids = {}
    for path in (result.deployable, out / "plan.yaml", out / "metrics.json"):
        ids[path.name] = upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)
    return ids


def _bind(on_step: Callable[[int, str], None] | None, number: int) -> Callable[[str], None] | None:
    if on_step is None:
        return None
    return lambda step: on_step(number, step)


def _complete(study: optuna.Study) -> int:
    """Candidates evaluated: COMPLETE trials, and those that stopped at rung 0 (PRUNED)."""
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def _out_of_reach(study: optuna.Study, map50_95: float, margin: float, *, shown: str = "") -> str:
    """Why a rung-0 mAP can never be promoted (more than ``margin`` under ``--max-map-drop``), or ``""``.

    Fine-tuning is credited with at most ``margin``, so such a candidate stays at rung 0 whatever
    its size and latency: the driver does not time it. ``shown`` words ``map50_95`` when it is an
    estimate (what rung 0 measured on its images, and how it was shifted).
    """
    drop, base = constraints_of(study)["max_map_drop"], _baseline_map(study)
    if drop is not None and base is not None and map50_95 + margin < base - drop:
        said = shown or f"{map50_95:.3f}"
        return f"mAP50-95 {said} is over {margin:g} below --max-map-drop {drop:g} of {base:.3f}: not timed"
    return ""


def _rung0_floor(config: SearchConfig, study: optuna.Study) -> float | None:
    """The mAP50-95 on rung 0's images under which a rung-0 candidate is out of reach (``None``: no bound yet).

    What ``_out_of_reach`` refuses, before the shift to every validation image: a rung 0 whose FP32
    export scores under it is not quantized (``build_candidate``'s ``rung0_floor``).
    """
    drop, base = constraints_of(study)["max_map_drop"], _baseline_map(study)
    if drop is None or base is None:
        return None
    if config.rung0_val is None:
        return base - drop - config.promote_margin
    shift = _rung0_shift(config, study, config.rung0_val)[0]
    if str(config.rung0_val) not in study.user_attrs.get("fp32_rung0_map", {}):
        return None  # the FP32 reference could not be validated on the subset: no floor on a guessed scale
    return base - drop - config.promote_margin - shift


def _rung0_shift(config: SearchConfig, study: optuna.Study, images: int) -> tuple[float, str]:
    """What to add to a rung-0 mAP50-95 measured on ``images`` validation images to compare it with full ones.

    A subset scores differently from the whole split (tiny_coco's FP32 at 320: 0.289 on 10 images,
    0.353 on 50), and promotion compares rung-0 mAPs with full-fidelity ones and with ``--max-map-drop``'s
    FP32 baseline. The FP32 reference is validated once on rung 0's subset (recorded in the
    study's ``fp32_rung0_map``; the whole split is recorded as its own score), and the difference
    is the shift: an estimate, said in the note returned with it. ``(0.0, "")`` when rung 0
    validated every image, before FP32 completed, or (with a warning) when FP32 cannot be validated.
    """
    base = fp32_reference(study)
    if base is None or config.rung0_val is None:
        return 0.0, ""
    full = float(base.values[0])
    known: dict[str, float] = dict(study.user_attrs.get("fp32_rung0_map", {}))
    if str(images) not in known:
        from yolotune.assets import prepare_dataset, val_subset
        from yolotune.evaluators import compute_lease, measure_map

        found = reference_file(study)
        try:
            if found is None:
                raise YolotuneError("its file is not on this host")
            dataset = prepare_dataset(config.data)
            if images >= len(dataset.val_images):
                known[str(images)] = full
            else:
                with compute_lease():
                    subset = measure_map(found[1], val_subset(dataset, images), imgsz=config.settings.imgsz)
                known[str(images)] = subset.map50_95
        except Exception as exc:  # the candidate is not at fault: it is compared unshifted
            warn_once(
                logger,
                "rung 0's mAPs on %d images are compared unshifted: the FP32 reference cannot be validated on them "
                "(%s)",
                images,
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )
            return 0.0, ""
        study.set_user_attr("fp32_rung0_map", known)
    part = known[str(images)]
    if part == full:
        return 0.0, ""
    return full - part, f"FP32 scores {part:.3f} on them, {full:.3f} on all"


_PROMOTED_ON_SIZE = "promoted on size and mAP alone (no smaller full-fidelity trial is that much better): timed at full"


def _promote(study: optuna.Study, rung0: CandidateResult, margin: float, *, shift: float = 0.0) -> bool:
    """Whether a rung-0 result is non-dominated by, or within ``margin`` mAP of, the full-fidelity front.

    Size and latency do not change with fine-tuning or more validation images; only mAP can rise.
    Under ``max_map_drop`` a candidate more than ``margin`` below the feasible mAP stays at rung 0
    too (a plan that destroyed the model would otherwise be promoted for being the smallest).
    """
    m = rung0.accuracy.map50_95 + shift  # ``shift``: from rung 0's subset to every validation image
    if _out_of_reach(study, m, margin):
        return False
    latency = rung0.latency.median_ms
    return not any(t.values[2] <= latency for t in _dominators(study, m, rung0.size_mb, margin))


def _dominators(study: optuna.Study, map50_95: float, size_mb: float, margin: float) -> list[optuna.trial.FrozenTrial]:
    """Feasible full-fidelity trials at most ``size_mb`` and at least ``margin`` better in mAP50-95.

    Only these can keep a rung-0 candidate from promotion (if also as fast): with none, it is
    promoted whatever its latency.
    """
    return [
        t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if not any(v > 0 for v in t.constraints.values())
        and t.values[1] <= size_mb
        and t.values[0] >= map50_95 + margin
    ]


@dataclass(eq=False)  # hashed by identity: executors key their tasks by it
class _Pending:
    """A trial handed to an executor."""

    trial: optuna.Trial
    plan: CompressionPlan
    out_dir: Path
    kwargs: dict[str, Any] = field(default_factory=dict)
    # rung 0's timing of its file (its digest, stats), and the reference's timed after it
    timed: tuple[str, LatencyStats, LatencyStats | None] | None = None


def _executor(config: SearchConfig) -> InProcess | RayExecutor:
    if config.workers == 1 and config.ray_address is None:
        return InProcess()
    return RayExecutor(
        workers=config.workers,
        temp_dir=study_dir(config.root, config.name) / "ray",
        address=config.ray_address,
        cpus_per_worker=config.cpus_per_worker,
        gpus_per_worker=config.settings.gpus,
    )


def preflight(config: SearchConfig) -> tuple[Space, DefaultSpace, Target]:
    """Check everything a search needs before the study is touched; return its spaces and target.

    Raises:
        YolotuneError: One line for the first problem: an unreachable Ray address, a model, data
            or space that cannot be loaded, no CUDA device for ``--train-device``, or a target that
            cannot time (a device agent that does not answer).
    """
    if config.ray_address is not None:
        check_ray_address(config.ray_address)
    elif config.workers > 1 and not ("ray" in sys.modules and sys.modules["ray"].is_initialized()):
        cpus = os.cpu_count() or 1  # the local Ray instance gets every CPU of this machine
        if config.workers * config.cpus_per_worker > cpus:
            raise YolotuneError(
                f"--workers {config.workers} needs {config.workers * config.cpus_per_worker} CPUs; this machine "
                f"has {cpus} (use fewer workers, or a Ray cluster: --ray-address)"
            )
    space, default = search_spaces(config)
    if config.settings.gpus and config.workers == 1 and config.ray_address is None:
        import torch

        if not torch.cuda.is_available():
            raise YolotuneError(
                f"--train-device {config.settings.train_device}: no CUDA device on this machine; use --train-device cpu"
            )
    if config.sensitivity_drop is not None and not isinstance(space, DefaultSpace):
        raise YolotuneError(
            "--sensitivity-drop narrows the default space (or a YAML file narrowing it); "
            "a Python space chooses its own groups: drop one of the two"
        )
    target = make_target(config.settings)
    target.check()
    return space, default, target


def _sensitive_space(
    config: SearchConfig,
    study: optuna.Study,
    space: DefaultSpace,
    on_scan: Callable[[int, int, GroupSensitivity | None, str], None] | None,
    *,
    target: Target,
) -> DefaultSpace:
    """``space`` pruning only the groups the study's sensitivity scan found tolerant, up to its ratio.

    The scan runs once per study (its result is a study user attribute, ``sensitivity``), on the
    groups the space may prune; a resumed run reuses it. The scan so far is recorded after each group
    (``sensitivity_partial``), so a scan cut short goes on where it stopped; a probe that failed
    because of the machine (a full disk, a lost target) stops the run rather than leave its group
    unpruned for good, and a model that detects nothing stops it after the baseline. Pruned plans
    recover with the scan's method or ``ls`` (the tolerance was measured with that recovery; ``ls`` is the strongest for
    several groups at once), where the space allows them.
    """
    assert config.sensitivity_drop is not None
    if not space.max_ratio or space.prune_groups == ():
        return space  # the space never prunes: nothing to scan
    recorded = study.user_attrs.get("sensitivity")
    if recorded is None:
        partial = study.user_attrs.get("sensitivity_partial")  # a scan cut short: its rows done are kept

        def record(so_far: Sensitivity) -> None:
            study.set_user_attr("sensitivity_partial", so_far.to_dict())
            if why := untrained(so_far.baseline_map):  # before probing 20-odd groups of a model that detects nothing
                raise SearchStopped(why, study=study)

        def fatal(exc: YolotuneError) -> str | None:
            if fix := _environment_failure(str(exc)):
                return fix
            if isinstance(exc, StepError) and exc.step == "latency" and (lost := _lost(target)):
                return f"the target stopped timing ({lost}); run the same command to go on from there"
            return None

        in_units = {g for members in space.units().values() for g in members}  # groups in no unit stay unpruned
        scan = scan_sensitivity(
            model=config.model,
            data=config.data,
            groups=space.prune_groups
            if space.prune_groups is not None
            else tuple(g for g in space.groups if g in in_units),
            out_dir=study_dir(config.root, config.name) / "sensitivity",
            settings=config.settings,
            ratio=config.sensitivity_ratio,
            recovery=config.sensitivity_recovery,
            images=min(32, space.max_calibration_images),
            on_group=on_scan,
            resume=Sensitivity.from_dict(partial) if isinstance(partial, dict) else None,
            on_row=record,
            fatal=fatal,
        )
        study.set_user_attr("sensitivity", scan.to_dict())
    else:
        scan = Sensitivity.from_dict(recorded)
    methods = tuple(m for m in space.recovery_methods if m in (scan.recovery, "ls")) or space.recovery_methods
    # tolerance was measured at the scan's ratio, one group at a time: never search beyond it
    # (measured: letting tolerant groups go to 60% together took the best pruned plan from 0.35 to 0.26)
    step = Decimal(str(space.ratio_step))
    cap = float(step * int(Decimal(str(scan.ratio)) / step)) or scan.ratio
    return dataclasses.replace(
        space,
        prune_groups=scan.tolerant_groups(config.sensitivity_drop),
        recovery_methods=methods,
        max_ratio=min(space.max_ratio, cap),
        ratio_step=min(space.ratio_step, cap),
    )


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _optuna_warnings_only(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``fn`` with Optuna's logging at WARNING (its INFO line per trial: the callbacks report), then restore it."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(logging.WARNING)
        try:
            return fn(*args, **kwargs)
        finally:
            optuna.logging.set_verbosity(verbosity)

    return wrapper


def _queue_failed_references(study: optuna.Study, references: Sequence[str], params: dict[str, dict[str, Any]]) -> int:
    """Queue again each reference trial that failed and has not completed since, unless queued or running.

    Speed-ups divide by the FP32 reference, and the INT8 and seeds references anchor the front: a
    reference that failed (a bad setting since fixed) or was lost (a killed run whose trial went
    stale) runs again on the next run, even once the budget is met. A reference never tried (a
    budget smaller than the references) counts toward the budget as before. Returns how many
    failed references wait to run.
    """
    trials = study.get_trials(deepcopy=False)
    state = optuna.trial.TrialState

    def named(*states: optuna.trial.TrialState) -> set[str]:
        return {str(t.user_attrs["reference"]) for t in trials if t.state in states and t.user_attrs.get("reference")}

    done, failed = named(state.COMPLETE), named(state.FAIL)
    waiting, running = named(state.WAITING), named(state.RUNNING)
    queued = 0
    for name in references:
        if name not in failed or name in done or name in running:
            continue
        if name not in waiting:
            study.enqueue_trial(params.get(name, {}), user_attrs={"reference": name}, skip_if_exists=False)
        queued += 1
    return queued


def _waiting_through_references(study: optuna.Study) -> int:
    """How many queued trials Optuna hands out before the last queued reference, that one included.

    Optuna takes the oldest queued trial first: a budget raised for a lost reference must also
    cover the trials queued before it, or they take its place and it waits for good.
    """
    waiting = sorted(
        study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)), key=lambda t: t.number
    )
    return max((i + 1 for i, t in enumerate(waiting) if t.user_attrs.get("reference")), default=0)


def _retry(
    study: optuna.Study, trial: optuna.trial.FrozenTrial | optuna.Trial, reason: str, *, always: bool = False
) -> bool:
    """Queue a trial's plan once more and return whether queued.

    Once only (a retry is not retried), unless ``always``: the plan was not at fault (Ctrl-C, a
    target that went away), so even a retry is queued again.
    """
    if "retry_of" in trial.user_attrs and not always:
        return False
    attrs: dict[str, Any] = {"retry_of": trial.number, "retry_reason": reason}
    if trial.user_attrs.get("reference"):
        attrs["reference"] = trial.user_attrs["reference"]
    study.enqueue_trial(dict(trial.params), user_attrs=attrs, skip_if_exists=False)
    return True


@_optuna_warnings_only
def run_search(
    config: SearchConfig,
    *,
    on_trial: Callable[[TrialOutcome, optuna.Study], None] | None = None,
    on_step: Callable[[int, str], None] | None = None,
    on_scan: Callable[[int, int, GroupSensitivity | None, str], None] | None = None,
    on_open: Callable[[optuna.Study], None] | None = None,
    on_retime_failed: Callable[[int, str], None] | None = None,
    max_failures: int | None = None,
) -> optuna.Study:
    """Run trials until the study holds ``config.budget`` evaluated candidates (COMPLETE, and PRUNED rung-0 stops).

    Stops with ``SearchStopped`` once ``max_failures`` candidates have failed in this run (default
    ``max(3, budget)``): a setting that fails every plan stops early, with its reason.

    Reference trials (FP32, INT8 only, the seeds' recipe) are enqueued when the study is new.
    With ``sensitivity_drop`` set, the study's sensitivity scan runs first (once per study;
    ``on_scan`` reports its progress) and the space prunes only the groups it found tolerant.
    With ``workers > 1`` (or a Ray address) candidates are built as Ray tasks, up to ``workers``
    at once; every timing still happens here, on the target host. A candidate whose worker died
    is failed and its plan retried once; so is a trial left RUNNING by a driver that died (no
    heartbeat). Ctrl-C tells the running trials FAIL (reason ``interrupted``), queues their plans
    again and re-raises: nothing half-done is reported as complete, and the next run picks up.
    ``on_open`` is called once the study is opened and found to be this job's, before any work.
    Once the budget is met, the trials near the front are timed again (``config.retime_rounds``;
    ``on_step`` reports each timing, ``on_retime_failed`` each trial that could not be re-timed and
    is left out of the re-timed front).
    """
    space, default, target = preflight(config)
    config = _absolute_files(config)
    if config.settings.int8_reduce_range is None:  # the checked target knows its device's CPU
        settings = dataclasses.replace(config.settings, int8_reduce_range=needs_reduce_range(target))
        config = dataclasses.replace(config, settings=settings)
    timing = target.provenance(imgsz=config.settings.imgsz)
    timed_on = {"device": timing.device, "int8_weight_bits": 7 if config.settings.int8_reduce_range else 8}
    references = default.reference_plans()
    # two drivers starting a study at once on one SQLite file or PostgreSQL database: one creates it and queues
    # its references
    with storage_lock(config.storage_url):
        study, created, storage = _open_study(config, timed_on=timed_on)
        # every study starts with its references, enqueued before any callback runs (also when a run
        # stopped between creating the study and enqueueing them: it holds no trial)
        # the default space expresses the references in its own params, so the sampler learns from them
        params = default.reference_params() if space == default and config.sensitivity_drop is None else {}
        if created or not study.get_trials(deepcopy=False):
            for name in references:
                study.enqueue_trial(params.get(name, {}), user_attrs={"reference": name})
    _say_setup_changes(study, timing)
    spec = target_spec(config.settings.target)
    if on_open is not None:
        on_open(study)
    if config.sensitivity_drop is not None:
        assert isinstance(space, DefaultSpace)  # preflight
        space = _sensitive_space(config, study, space, on_scan, target=target)
    if why := _untrained_study(study):  # a resumed study whose model detects nothing: no more work
        raise SearchStopped(why, study=study)
    failures = 0
    limit = max_failures if max_failures is not None else max(3, config.budget)
    root = study_dir(config.root, config.name) / "trials"

    open_trials: dict[int, _Pending] = {}  # asked, not yet told

    last_failure = ""

    def fail(trial: optuna.Trial, reason: str) -> None:
        nonlocal last_failure
        last_failure = reason
        why = _environment_failure(reason)  # the machine's fault: stop rather than fail every later plan
        if why and disk_full(reason):
            # first, before the database writes that need the space: the partial files of this trial
            # and of those stopped with it (their plans run again) only take space on the full disk
            for number in {trial.number, *open_trials}:
                shutil.rmtree(root / str(number), ignore_errors=True)
        open_trials.pop(trial.number, None)
        trial.set_user_attr("fail_reason", reason)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        if on_trial:
            on_trial(TrialOutcome(number=trial.number, state="FAIL", reason=reason), study)
        if why:
            _retry(study, trial, reason, always=True)  # nothing is lost: the plan runs on resume
            abandon(f"stopped: {why.split(' (')[0]}")
            raise SearchStopped(why, study=study)

    def defer(trial: optuna.Trial) -> None:
        """Queue a trial's plan behind the FP32 reference (a retry after Ctrl-C put it last): not a failure."""
        open_trials.pop(trial.number, None)
        trial.set_user_attr("fail_reason", _QUEUED_BEHIND_FP32)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        shutil.rmtree(root / str(trial.number), ignore_errors=True)  # its retry builds it again
        _retry(study, trial, _QUEUED_BEHIND_FP32, always=True)

    # the driver beats for its trials itself (Heartbeat), so Optuna's optimize-only note does not apply
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used", category=UserWarning)

    with Heartbeat(storage) as heartbeat, _executor(config) as executor:

        def refill(collected: int) -> None:
            """Keep every worker busy, without asking for more trials than the budget needs."""
            nonlocal failures
            while (
                executor.in_flight < executor.workers
                and _complete(study) + executor.in_flight + collected < config.budget
                and failures < limit
            ):
                with storage_lock(config.storage_url):  # SQLite: two drivers could both take a queued trial
                    trial = study.ask()
                heartbeat.add(trial._trial_id)
                reference = str(trial.user_attrs.get("reference", ""))
                try:
                    use_reference = reference in references and space != default
                    plan = references[reference] if use_reference else space(trial)
                    if not isinstance(plan, CompressionPlan):
                        raise YolotuneError(f"the search space returned {type(plan).__name__}, not a CompressionPlan")
                except Exception as exc:
                    failures += 1
                    heartbeat.remove(trial._trial_id)
                    if _dynamic_choices(exc):  # every later trial would fail the same way: stop here
                        python = config.space is not None and not config.space.endswith((".yaml", ".yml"))
                        fix = (
                            "keep each parameter's choices fixed"
                            if python
                            else "the training split changed size since (it bounds the calibration sizes): restore it"
                        )
                        reason = (
                            f"{f'space {config.space}' if config.space else 'the default space'} gives a parameter "
                            f"other choices than this study's earlier trials had ({exc}); {fix}, or start another "
                            "--study"
                        )
                        fail(trial, reason)
                        raise YolotuneError(reason) from exc
                    fail(trial, str(exc) if isinstance(exc, YolotuneError) else _unexpected(exc))
                    continue
                if reference != "fp32" and _waits_for_baseline(study):
                    heartbeat.remove(trial._trial_id)
                    defer(trial)
                    continue
                trial.set_user_attr("plan", plan.to_dict())
                trial.set_user_attr("brief", plan.brief(groups=default.groups))
                twin = None if reference else _twin(study, plan, stops=config.multi_fidelity)
                if twin is not None:  # samplers propose a plan again, small spaces often: reuse it
                    heartbeat.remove(trial._trial_id)
                    _reuse(study, trial, twin)
                    if on_trial:
                        why = f"the plan of trial {twin.number} again: its measurements are reused"
                        on_trial(TrialOutcome(number=trial.number, state=twin.state.name, reason=why), study)
                    continue
                pending = _Pending(trial=trial, plan=plan, out_dir=root / str(trial.number))
                open_trials[trial.number] = pending
                kwargs: dict[str, Any] = {
                    "model": config.model,
                    "data": config.data,
                    "plan": plan,
                    "out_dir": pending.out_dir,
                    "settings": config.settings,
                    "target": spec,  # a value without secrets: workers need no targets file
                }
                if config.multi_fidelity and not reference:
                    # references are the front's anchors and the --max-map-drop baseline: always full
                    kwargs.update(stage="rung0", val_images=config.rung0_val, rung0_floor=_rung0_floor(config, study))
                if isinstance(executor, InProcess):
                    kwargs["on_step"] = _bind(on_step, trial.number)
                pending.kwargs = kwargs
                executor.submit(pending, kwargs)

        def abandon(reason: str) -> None:
            """Fail the trials still open, with ``reason``, and queue their plans for the next run."""
            executor.cancel_all()
            for pending in list(open_trials.values()):
                with contextlib.suppress(Exception):  # already told, storage gone: nothing more to save
                    pending.trial.set_user_attr("fail_reason", reason)
                    study.tell(pending.trial, state=optuna.trial.TrialState.FAIL)
                    _retry(study, pending.trial, reason, always=True)
                shutil.rmtree(pending.out_dir, ignore_errors=True)  # half built; its retry builds it again
            open_trials.clear()

        def reap() -> None:
            """Fail and queue again the trials a killed driver left RUNNING (their heartbeats stopped)."""
            nonlocal config
            references_lost = 0
            for stale in fail_stale_trials(study, storage, keep=heartbeat.beat_now()):
                _retry(study, stale, stale.user_attrs.get("fail_reason", "driver died"), always=True)
                shutil.rmtree(root / str(stale.number), ignore_errors=True)  # a killed driver's half-built files
                references_lost += bool(stale.user_attrs.get("reference"))
            if references_lost:  # found stale mid-run (the last run ended under 2 heartbeats ago): still run first
                wanted = _complete(study) + executor.in_flight + _waiting_through_references(study)
                config = dataclasses.replace(config, budget=max(config.budget, wanted))

        reap()  # also when the budget is already met: nothing stays RUNNING for good
        with storage_lock(config.storage_url):  # a reference that failed or was lost runs again, budget met or not
            waiting = _queue_failed_references(study, list(references), params)
        if waiting:
            wanted = _complete(study) + _waiting_through_references(study)
            config = dataclasses.replace(config, budget=max(config.budget, wanted))
        try:
            while True:
                reap()  # before the budget check: a reference found stale now raises the budget
                if not (_complete(study) < config.budget and failures < limit):
                    break
                if why := _baseline_failed(study):
                    abandon("the FP32 reference failed: --max-map-drop has no baseline")
                    raise SearchStopped(why, study=study)
                refill(0)
                if executor.in_flight == 0:
                    break
                done = executor.wait()
                if not isinstance(executor, InProcess):
                    refill(len(done))  # workers build the next candidates while this host times these
                for pending, built in done:
                    trial = pending.trial
                    promoted = False
                    try:
                        if isinstance(built, Crashed):
                            failures += 1
                            fail(trial, built.reason)
                            _retry(study, trial, built.reason)
                            continue
                        if isinstance(built, Failed):
                            failures += 1
                            fail(trial, built.reason)
                            continue
                        try:
                            if built.fidelity == "rung0":
                                # too far under --max-map-drop to be promoted at any speed: not timed
                                shift, estimate = _rung0_shift(config, study, built.accuracy.images)
                                m, margin = built.accuracy.map50_95 + shift, config.promote_margin
                                # what it measured first, then the estimate compared (not as if it scored that)
                                n = built.accuracy.images
                                shown = (
                                    f"{built.accuracy.map50_95:.3f} on rung 0's {n} images, so about {m:.3f} on all "
                                    f"({estimate}),"
                                    if estimate
                                    else ""
                                )
                                unreachable = _out_of_reach(study, m, margin, shown=shown)
                                if built.unquantized:  # stopped before quantizing: never timed nor promoted
                                    unreachable = f"{built.unquantized}: not quantized, not timed"
                                # no full-fidelity trial this small is `margin` better: promoted at any
                                # latency, so timed once, at full fidelity (measured: a rung-0 timing is
                                # ~2 of a stop's 4.3 CPU-s, and promotion re-times new bytes anyway)
                                on_size = not unreachable and not _dominators(study, m, built.size_bytes / 1e6, margin)
                                timed = (
                                    None
                                    if unreachable or on_size
                                    else time_candidate(built, target=target, on_step=_bind(on_step, trial.number))
                                )
                                trial.set_user_attr(
                                    "rung0",
                                    {
                                        "map50_95": built.accuracy.map50_95,
                                        "map50_95_estimate": m if estimate else None,  # what promotion compared
                                        "map50": built.accuracy.map50,
                                        "size_bytes": built.size_bytes,
                                        "latency_ms": timed.latency.median_ms if timed else None,
                                        "not_timed": unreachable or (_PROMOTED_ON_SIZE if on_size else None),
                                        "stand_ins": built.stand_ins,  # as in its metrics.json
                                    },
                                )
                                if unreachable:
                                    record_untimed(built, reason=unreachable)
                                promoted = on_size or (
                                    timed is not None and _promote(study, timed, margin, shift=shift)
                                )
                                if promoted:  # continue from what rung 0 built
                                    # a promotion that only re-validates keeps these bytes: reuse their timing,
                                    # paired with the reference's, timed now, seconds after it, as a full trial's is
                                    if timed is not None:
                                        paired = None
                                        # only for bytes the promotion keeps (nothing stood in, no fine-tuning)
                                        keeps = not built.stand_ins and pending.plan.recovery.epochs == 0
                                        ref = _reference_path(study) if config.time_reference and keeps else None
                                        if ref is not None:
                                            step = _bind(on_step, trial.number)
                                            paired = time_reference(ref, target=target, imgsz=built.imgsz, on_step=step)
                                        pending.timed = (file_digest(built.deployable), timed.latency, paired)
                                    executor.submit(pending, {**pending.kwargs, "stage": "promote", "previous": built})
                                    continue
                                trial.set_user_attr("fidelity", "rung0")
                                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                                open_trials.pop(trial.number, None)
                                drop_intermediates(built)
                                if on_trial:
                                    outcome = TrialOutcome(
                                        number=trial.number, state="PRUNED", result=timed, reason=unreachable
                                    )
                                    on_trial(outcome, study)
                                continue
                            _check_baseline(study, trial)  # before timing what would wait for the FP32 reference
                            result = time_candidate(
                                built,
                                target=target,
                                on_step=_bind(on_step, trial.number),
                                timed=pending.timed,
                                reference=_reference_path(study) if config.time_reference else None,
                            )
                            _record(config, study, trial, result)
                        except _WaitsForBaseline as exc:
                            if _waits_for_baseline(study, running=True):  # built before the FP32 reference's retry
                                defer(trial)
                            else:
                                failures += 1
                                fail(trial, str(exc))
                            continue
                        except Exception as exc:
                            failures += 1
                            fail(trial, str(exc) if isinstance(exc, YolotuneError) else _unexpected(exc))
                            if isinstance(exc, StepError) and exc.step == "latency":
                                # the target failed, not the plan: if it is gone, stop rather than fail
                                # every plan on it; the same command resumes once it is back
                                lost = _lost(target)
                                _retry(study, trial, str(exc), always=lost is not None)
                                if lost is not None:
                                    abandon(f"target lost: {lost}")
                                    raise SearchStopped(
                                        f"lost the target during the search ({lost}); the unfinished plans are "
                                        "queued: bring it back and run the same command to resume",
                                        study=study,
                                    ) from None
                            continue
                        study.tell(trial, [result.accuracy.map50_95, result.size_mb, result.latency.median_ms])
                        open_trials.pop(trial.number, None)
                        drop_intermediates(result)
                        if on_trial:
                            on_trial(TrialOutcome(number=trial.number, state="COMPLETE", result=result), study)
                        if trial.user_attrs.get("reference") == "fp32" and (why := untrained(result.accuracy.map50_95)):
                            abandon("the uncompressed model detects nothing on this data")
                            raise SearchStopped(why, study=study)
                    finally:
                        if not promoted:
                            heartbeat.remove(trial._trial_id)
        except KeyboardInterrupt:
            abandon("interrupted")
            raise
        except BaseException as exc:  # a callback's error, a lost storage: nothing stays RUNNING
            if not isinstance(exc, SearchStopped):
                abandon(f"the search stopped: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            raise
    evaluated = _complete(study)
    if evaluated < config.budget:
        raise SearchStopped(
            f"stopped after {failures} failed candidate(s), {evaluated} of {config.budget} evaluated; the last failed "
            f"with: {last_failure.rstrip('.')}. Fix that and run the same command to resume "
            "(`tune show` lists the latest failures, `tune report` all)",
            study=study,
        )
    retiming = retime_front(
        study, target=target, imgsz=config.settings.imgsz, rounds=config.retime_rounds, on_step=on_step
    )
    if retiming is not None and on_retime_failed is not None:
        for number, reason in retiming.failed.items():
            on_retime_failed(number, reason)
    return study


def _twin(study: optuna.Study, plan: CompressionPlan, *, stops: bool) -> optuna.trial.FrozenTrial | None:
    """An earlier trial that measured what ``plan`` builds (``effective()``): COMPLETE, else stopped at rung 0.

    A rung-0 stop (PRUNED) counts only with ``stops`` (a multi-fidelity run): a run without
    multi-fidelity evaluates that plan at full fidelity. Settings that change nothing do not
    count: an unpruned plan is the same whatever its pruning criterion (the default space
    samples one in every plan).
    """
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    builds = plan.effective()
    same = [
        t
        for t in study.get_trials(deepcopy=False, states=states)
        if "duplicate_of" not in t.user_attrs and "plan" in t.user_attrs and plan_of(t).effective() == builds
    ]
    complete = [t for t in same if t.state == optuna.trial.TrialState.COMPLETE]
    return complete[0] if complete else same[0] if same and stops else None


#: A trial's own attributes, which a trial that reuses another's measurements does not take over.
_OWN_ATTRS = frozenset({"plan", "brief", "reference", "retry_of", "retry_reason", "fail_reason"})


def _reuse(study: optuna.Study, trial: optuna.Trial, twin: optuna.trial.FrozenTrial) -> None:
    """Tell ``trial`` what ``twin``, which ran the same plan, measured (Optuna's advice for duplicates).

    It takes over the twin's values, constraints and records (artifact, metrics, provenance,
    fidelity) and says whose they are (``duplicate_of``); fronts list the twin only.
    """
    for key, value in twin.user_attrs.items():
        if key not in _OWN_ATTRS:
            trial.set_user_attr(key, value)
    trial.set_user_attr("duplicate_of", twin.number)
    for name, value in twin.constraints.items():
        trial.set_constraint(name, value)
    if twin.state == optuna.trial.TrialState.COMPLETE:
        study.tell(trial, list(twin.values))
    else:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)


def _lost(target: Target) -> str | None:
    """Why ``target`` cannot time anything any more, or ``None`` while it still can."""
    try:
        target.check()
    except YolotuneError as exc:
        return str(exc)
    return None


def _metrics(result: CandidateResult) -> dict[str, Any]:
    record = result.to_dict()
    return {k: record[k] for k in ("map50_95", "map50", "size_bytes", "latency_ms")}


def _reference_path(study: optuna.Study) -> Path | None:
    """The FP32 reference trial's deployable file, when it has been measured and is still on this host."""
    found = reference_file(study)
    return found[1] if found else None


def _record(config: SearchConfig, study: optuna.Study, trial: optuna.Trial, result: CandidateResult) -> None:
    record: dict[str, Any] = result.to_dict()
    if result.reference_latency is not None:
        trial.set_user_attr("reference_ms", result.reference_latency.median_ms)
    trial.set_user_attr("metrics", _metrics(result))
    trial.set_user_attr("fidelity", "full")
    trial.set_user_attr("latency", record["latency"])
    trial.set_user_attr("provenance", record["provenance"])
    trial.set_user_attr("artifact", str(result.deployable.resolve()))  # found from any working directory
    _set_constraints(study, trial, result)  # first: a trial that must wait for the FP32 reference uploads nothing
    trial.set_user_attr("artifacts", _register_artifacts(config, trial, result))


def _job_changes(recorded: dict[str, Any], job: dict[str, Any]) -> list[str]:
    """What differs between a study's recorded job and this run's, as ``key: was X, now Y``.

    A model or dataset named two ways (an asset name, a relative or an absolute path) is the same
    when both resolve to the same file, and a model or YAML space is the same when its SHA-256 is;
    keys an older yolotune did not record are not compared.
    """
    from yolotune.assets import resolve_data, resolve_model

    resolvers: dict[str, Callable[[str], Path]] = {"model": resolve_model, "data": resolve_data}
    changes = []
    changed: set[str] = set()
    # a digest changes with its file's path: only a file changed in place is reported as changed
    for key, now in sorted(job.items(), key=lambda item: item[0].endswith("_digest")):
        if key.endswith("_digest") and key.removesuffix("_digest") in changed:
            continue
        was = recorded.get(key, now) if key in _JOB_KEYS_ADDED else recorded.get(key)
        if key == "fine" and key not in recorded:  # before it was recorded, only the default space honoured --fine
            was = recorded.get("space") == "default-fine"
        if was == now:
            continue
        if key in ("space", "model") and job[f"{key}_digest"] and recorded.get(f"{key}_digest") == job[f"{key}_digest"]:
            continue  # the same YAML space or checkpoint, named by another path
        if key == "space" and _same_space_as_before(job, recorded):
            continue
        if key == "space_digest" and (was is None or _same_space_as_before(job, recorded)):
            continue  # a study made before Python spaces were digested, or before YAML ones were parsed
        if key in resolvers:
            with contextlib.suppress(YolotuneError):  # gone since: compare the names
                if resolvers[key](str(was)) == resolvers[key](str(now)):
                    continue
        if key == "space_digest":
            changes.append(f"space file {job['space']} has changed since")
        elif key == "model_digest":
            changes.append(f"model file {job['model']} holds another checkpoint since (its SHA-256 differs)")
        elif key == "space" and job["space_digest"] and recorded.get("space_digest"):
            changes.append(f"space: was {was!r}, now {now!r}, which defines another space")
            changed.add("space_digest")
        else:
            changes.append(f"{key}: was {was!r}, now {now!r}")
        changed.add(key)
    return changes


def _same_space_as_before(job: dict[str, Any], recorded: dict[str, Any]) -> bool:
    """A YAML space recorded by the bytes of its file (older studies), and those bytes are unchanged."""
    space = str(job.get("space", ""))
    return space.endswith((".yaml", ".yml")) and recorded.get("space_digest") == _space_digest(space, raw=True)


#: Recorded target fields that do not change how a target times.
_NOT_TIMING = frozenset({"device_url", "description", "name"})

#: Job keys recorded since studies were first made; older studies lack them.
_JOB_KEYS_ADDED = frozenset({"space_digest", "model_digest", "fine"})


def _absolute_files(config: SearchConfig) -> SearchConfig:
    """``config`` naming its model and data as its job records them, its study name kept, its root absolute.

    Candidates then find the files, and write theirs, wherever they run (a Ray worker's working
    directory is not the driver's).
    """
    from yolotune.assets import resolve_data, resolve_model

    return dataclasses.replace(
        config,
        study_name=config.name,
        root=Path(config.root).resolve(),
        model=_job_name(config.model, resolve_model(config.model)),
        data=_job_name(config.data, resolve_data(config.data)),
    )


def _job_name(given: str, resolved: Path) -> str:
    """How a job records a model or dataset: an absolute path, or the bare name of an asset.

    A relative path would mean another file when the study is resumed or exported from another
    directory; an asset name stays valid wherever the assets live.
    """
    return str(resolved) if Path(given).expanduser().exists() else given


def _dynamic_choices(exc: Exception) -> bool:
    """Whether Optuna refused a categorical parameter whose choices differ from the study's earlier trials."""
    return isinstance(exc, ValueError) and "does not support dynamic value space" in str(exc)


def _space_digest(space: str | None, *, raw: bool = False) -> str | None:
    """SHA-256 of a space's definition, or ``None`` for the default space.

    A YAML space is digested by its options (comments, key order and layout do not count); with
    ``raw``, by its bytes, as studies made before recorded it. A Python space is digested by the
    source file that defines it (``file.py:attr``, or the module of ``module:attr``) and the name
    of the callable.
    """
    if not space:
        return None
    if space.endswith((".yaml", ".yml")):
        path = Path(space)
        if not path.is_file():
            return None
        if raw:
            return hashlib.sha256(path.read_bytes()).hexdigest()
        try:
            options = _yaml.load(path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError):
            return hashlib.sha256(path.read_bytes()).hexdigest()
        return hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()
    source = _space_source(space)
    if source is None:
        return None
    attr = space.rpartition(":")[2]  # the same file names several spaces
    return hashlib.sha256(source.read_bytes() + f"\n:{attr}".encode()).hexdigest()


def _fine_applies(space: str | None) -> bool:
    """Whether ``--fine`` changes ``space``: the default one, or a YAML file setting neither ``fine`` nor ``units``."""
    if not space:
        return True
    if not space.endswith((".yaml", ".yml")):
        return False  # a Python space is refused with --fine
    try:
        options = _yaml.load(Path(space).read_text()) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return True
    return isinstance(options, dict) and not {"fine", "units"} & set(options)


def _space_source(space: str) -> Path | None:
    """The source file of a Python space (``file.py:attr`` or ``module:attr``), when it can be found."""
    module, _, _ = space.rpartition(":")
    if module.endswith(".py"):
        return Path(module) if Path(module).is_file() else None
    import importlib.util

    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    origin = found.origin if found is not None else None
    return Path(origin) if origin and Path(origin).is_file() else None


#: What else changes timings on the same device, said in a warning when a run differs from the first.
_SETUP_WORDS = {
    "host": "host",
    "runtime_version": "runtime",
    "power_mode": "power mode",
    "clocks_pinned": "clocks pinned",
}


def _say_setup_changes(study: optuna.Study, timing: Provenance) -> None:
    """Warn when this run times on the same device under another setup (host, runtime, power mode, clocks).

    A study is refused on another device (``timed_on``); the same CPU or board on another host, or
    a Jetson after a reboot that undid ``jetson_clocks``, is allowed but said, since its latencies
    may not compare. The setup is recorded (``timed_setup``) by the first run and again after a
    change, so each change is said once; older studies start recording now.
    """
    now = {
        "host": timing.host,
        "runtime_version": timing.runtime_version,
        "power_mode": timing.settings.get("power_mode"),
        "clocks_pinned": timing.settings.get("clocks_pinned"),
    }
    was = study.user_attrs.get("timed_setup")
    if not isinstance(was, dict):
        study.set_user_attr("timed_setup", now)
        return
    changed = [f"{_SETUP_WORDS[k]} {was[k]} → {v}" for k, v in now.items() if k in was and was[k] != v]
    if changed:
        study.set_user_attr("timed_setup", now)  # said once per change, not on every resume after it
        warn_once(
            logger,
            "study '%s' was timed on the same device with another setup (%s): its latencies may not compare with "
            "this run's; `tune retime --fresh` times the front again side by side",
            study.study_name,
            ", ".join(changed),
        )


def _device_words(timed_on: dict[str, Any]) -> str:
    """``AMD EPYC with 8-bit INT8 weights``: a recorded ``timed_on`` in words."""
    return f"{timed_on.get('device') or 'an unnamed device'} with {timed_on.get('int8_weight_bits')}-bit INT8 weights"


def _unexpected(exc: Exception) -> str:
    return f"unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def plan_of(trial: optuna.trial.FrozenTrial) -> CompressionPlan:
    """The plan a recorded trial ran."""
    return CompressionPlan.from_dict(trial.user_attrs["plan"])
