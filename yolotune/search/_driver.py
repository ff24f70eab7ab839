"""The study driver: ask → run candidate → tell, persistent and resumable.

One Optuna study holds every trial. The driver is the only writer of the storage; a failed
candidate is told as FAIL with its reason (``fail_reason`` user attribute) and the search goes
on. ``budget`` counts COMPLETE trials, earlier runs included, so the same command resumes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from yolotune.errors import YolotuneError
from yolotune.search._candidate import CandidateResult, CandidateSettings, run_candidate
from yolotune.spaces import CompressionPlan, DefaultSpace
from yolotune.studies._storage import default_storage_url, open_storage, study_dir

__all__ = ["METRIC_NAMES", "SearchConfig", "TrialOutcome", "run_search"]

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
        budget: Number of COMPLETE trials the study should hold.
        settings: Image size, target, calibration budget, seed.
        study_name: Study name (default: derived from model, data, target, image size).
        storage: Optuna storage URL (default: ``sqlite:///<root>/<study>.db``).
        root: Directory of the default storage and of trial artifacts.
        sampler: ``nsga2`` (default) or ``tpe``.
        population: NSGA-II population size.
        seed: Sampler seed.
        fine: Per-layer search space instead of the coarse one.
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

    def __post_init__(self) -> None:
        if self.budget <= 0:
            raise YolotuneError(f"--budget must be a positive number of trials; got {self.budget}")
        if self.sampler not in {"nsga2", "tpe"}:
            raise YolotuneError(f"unknown sampler '{self.sampler}'; use nsga2 or tpe")
        if self.population < 2:
            raise YolotuneError(f"population must be ≥2; got {self.population}")

    @property
    def name(self) -> str:
        """The study name."""
        if self.study_name:
            return self.study_name
        stem = Path(self.model).stem
        data = Path(self.data).parent.name if self.data.endswith(".yaml") else Path(self.data).name
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


def _sampler(config: SearchConfig) -> optuna.samplers.BaseSampler:
    if config.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=config.seed)
    return optuna.samplers.NSGAIISampler(population_size=config.population, seed=config.seed)


def _space(config: SearchConfig) -> DefaultSpace:
    from yolotune.assets import prepare_dataset, resolve_model
    from yolotune.compression import ultralytics_adapter
    from yolotune.evaluators import get_target

    target = get_target(config.settings.target)
    layout = ultralytics_adapter.model_layout(ultralytics_adapter.load_model(resolve_model(config.model)))
    n_train = len(prepare_dataset(config.data).train_images)
    return DefaultSpace(
        groups=layout.groups,
        precisions=target.precisions,
        max_calibration_images=min(n_train, 256),
        fine=config.fine,
    )


def open_study(config: SearchConfig) -> optuna.Study:
    """Create the study, or load it when it exists (checking it describes the same job)."""
    storage = open_storage(config.storage_url)
    study = optuna.create_study(
        study_name=config.name,
        storage=storage,
        directions=DIRECTIONS,
        sampler=_sampler(config),
        load_if_exists=True,
    )
    job = {"model": config.model, "data": config.data, "imgsz": config.settings.imgsz, "target": config.settings.target}
    recorded = study.user_attrs.get("job")
    if recorded is None:
        study.set_user_attr("job", job)
        study.set_metric_names(METRIC_NAMES)
    elif recorded != job:
        raise YolotuneError(f"study '{config.name}' was created for {recorded}; use another --study name for {job}")
    return study


def _bind(on_step: Callable[[int, str], None] | None, number: int) -> Callable[[str], None] | None:
    if on_step is None:
        return None
    return lambda step: on_step(number, step)


def _complete(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def run_search(
    config: SearchConfig,
    *,
    on_trial: Callable[[TrialOutcome, optuna.Study], None] | None = None,
    on_step: Callable[[int, str], None] | None = None,
    max_failures: int | None = None,
) -> optuna.Study:
    """Run trials until the study holds ``config.budget`` COMPLETE trials.

    Reference trials (FP32, INT8 only, the seeds' recipe) are enqueued when the study is new.
    Ctrl-C tells the running trial FAIL (reason ``interrupted``) and re-raises: nothing
    half-done is reported as complete, and the next run picks up.
    """
    optuna.logging.set_verbosity(logging.WARNING)
    study = open_study(config)
    space = _space(config)
    if not study.trials:
        for name, params in space.reference_params().items():
            study.enqueue_trial(params, user_attrs={"reference": name})
    failures = 0
    limit = max_failures if max_failures is not None else max(3, config.budget)
    root = study_dir(config.root, config.name) / "trials"
    while _complete(study) < config.budget and failures < limit:
        trial = study.ask()
        out = root / str(trial.number)
        try:
            plan = space(trial)
            trial.set_user_attr("plan", plan.to_dict())
            result = run_candidate(
                model=config.model,
                data=config.data,
                plan=plan,
                out_dir=out,
                settings=config.settings,
                on_step=_bind(on_step, trial.number),
            )
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        except YolotuneError as exc:
            failures += 1
            trial.set_user_attr("fail_reason", str(exc))
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            if on_trial:
                on_trial(TrialOutcome(number=trial.number, state="FAIL", reason=str(exc)), study)
            continue
        except Exception as exc:  # never let one candidate take the search down
            failures += 1
            reason = f"unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            trial.set_user_attr("fail_reason", reason)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            if on_trial:
                on_trial(TrialOutcome(number=trial.number, state="FAIL", reason=reason), study)
            continue
        record: dict[str, Any] = result.to_dict()
        trial.set_user_attr("metrics", {k: record[k] for k in ("map50_95", "map50", "size_bytes", "latency_ms")})
        trial.set_user_attr("latency", record["latency"])
        trial.set_user_attr("provenance", record["provenance"])
        trial.set_user_attr("artifact", str(result.deployable))
        trial.set_user_attr("brief", plan.brief())
        study.tell(trial, [result.accuracy.map50_95, result.size_mb, result.latency.median_ms])
        if on_trial:
            on_trial(TrialOutcome(number=trial.number, state="COMPLETE", result=result), study)
    return study


def plan_of(trial: optuna.trial.FrozenTrial) -> CompressionPlan:
    """The plan a recorded trial ran."""
    return CompressionPlan.from_dict(trial.user_attrs["plan"])
