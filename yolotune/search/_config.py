"""What a search is asked to do (``SearchConfig``), the objectives it measures, and how a trial ended."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import optuna

from yolotune.errors import YolotuneError
from yolotune.search._candidate import CandidateResult, CandidateSettings, check_settings
from yolotune.search._sensitivity import SENSITIVITY_RECOVERY
from yolotune.spaces import MAX_PRUNING_RATIO
from yolotune.studies._storage import default_storage_url

__all__ = [
    "DIRECTIONS",
    "METRIC_NAMES",
    "SearchConfig",
    "TrialOutcome",
]


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
        heartbeat_interval: Seconds between heartbeats of running trials (RDB and journal storages); a trial
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
        check_settings(self.settings)
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
        if self.max_latency_ms is not None and not 0 < self.max_latency_ms < math.inf:  # NaN too
            raise YolotuneError(f"--max-latency-ms must be a positive, finite number; got {self.max_latency_ms}")
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
        if self.study_name is not None and not self.study_name.strip():
            raise YolotuneError("--study is empty: give the study a name, or leave out --study for the default one")
        study = self.study_name
        if study is not None and (any(c in study for c in "/\\\0") or study in (".", "..")):
            raise YolotuneError(
                f"--study names a folder under --root: not '.' or '..', no '/' or '\\' in it; got {self.study_name!r}"
            )

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
