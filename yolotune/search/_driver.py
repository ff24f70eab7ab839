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
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import optuna

from yolotune._env import process_tag
from yolotune._warn import warn_once
from yolotune.errors import SearchStopped, StepError, YolotuneError, disk_full
from yolotune.evaluators import LatencyStats, needs_reduce_range, target_spec
from yolotune.search._baseline import (
    QUEUED_BEHIND_FP32,
    QUEUED_FOR_PAIRING,
    WaitsForBaseline,
    baseline_failed,
    check_baseline,
    untrained,
    untrained_study,
    waits_for_baseline,
)
from yolotune.search._candidate import (
    BuiltCandidate,
    drop_intermediates,
    file_digest,
    make_target,
    record_untimed,
    time_candidate,
    time_reference,
)
from yolotune.search._config import SearchConfig, TrialOutcome
from yolotune.search._executors import Build, Crashed, Failed, InProcess, RayExecutor, check_ray_address
from yolotune.search._fidelity import judge_rung0, promote, rung0_floor
from yolotune.search._heartbeat import DRIVER_ATTR, BeatWatch, Heartbeat, fail_stale_trials
from yolotune.search._retime import retime_front
from yolotune.search._sensitivity import GroupSensitivity, Sensitivity, scan_sensitivity
from yolotune.search._spaces import load_space
from yolotune.search._study import absolute_files, fine_applies, open_study_for_run, say_setup_changes
from yolotune.search._trials import (
    evaluated,
    find_twin,
    queue_failed_references,
    record_trial,
    reference_path,
    retry,
    reuse_twin,
    waiting_through_references,
)
from yolotune.spaces import CompressionPlan, DefaultSpace, Space
from yolotune.studies._storage import searching, storage_lock, study_dir

if TYPE_CHECKING:
    from yolotune.evaluators import Target

__all__ = ["preflight", "run_search", "search_spaces"]

logger = logging.getLogger(__name__)


#: Fewer rung-0 validation images than this decide promotions on noise (BENCHMARKS.md, "Rung 0 on a validation subset").
_NOISY_RUNG0_VAL = 16


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
    if config.multi_fidelity and config.rung0_val is not None and config.rung0_val < _NOISY_RUNG0_VAL < n_val:
        warn_once(
            logger,
            "--rung0-val %d: rung 0's mAP on so few images decides promotions on noise (measured on tiny_coco: "
            "shifted estimates from 8-10 images were up to 0.07 off, from 16 within 0.02); give %d or more, or "
            "leave out --rung0-val",
            config.rung0_val,
            _NOISY_RUNG0_VAL,
        )
    if config.fine and not fine_applies(config.space):  # a Python space with --fine is refused by SearchConfig
        warn_once(
            logger,
            "--fine changes nothing: space %s sets its own units (or `fine`); leave out --fine, or those keys",
            config.space,
        )
    if dataset.train_labels == 0 or dataset.shared:
        why = "has no labels" if dataset.train_labels == 0 else "shares images with 'val'"
        warn_once(
            logger,
            "the training split of %s %s: the search does not fine-tune (pruned plans recover from calibration "
            "images only, and the `seeds` reference, which needs its fine-tune, is not run)",
            dataset.source,
            why,
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


def _keep_plan_only(folder: Path, plan: object) -> None:
    """Empty a failed trial's folder but for its plan (``plan``, its recorded dict): nothing reads its models again.

    The plan is written again from the trial's record: the folder's ``plan.yaml`` may be rung 0's
    stand-in. A folder with no plan to keep goes.
    """
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
    if isinstance(plan, dict):
        with contextlib.suppress(Exception):  # clean-up: a plan that cannot be written leaves an empty folder
            CompressionPlan.from_dict(plan).save(folder / "plan.yaml")
            return
    with contextlib.suppress(OSError):
        folder.rmdir()


def _bind(on_step: Callable[[int, str], None] | None, number: int) -> Callable[[str], None] | None:
    if on_step is None:
        return None
    return lambda step: on_step(number, step)


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
    config = absolute_files(config)
    if config.settings.int8_reduce_range is None:  # the checked target knows its device's CPU
        settings = dataclasses.replace(config.settings, int8_reduce_range=needs_reduce_range(target))
        config = dataclasses.replace(config, settings=settings)
    timing = target.provenance(imgsz=config.settings.imgsz)
    timed_on = {"device": timing.device, "int8_weight_bits": 7 if config.settings.int8_reduce_range else 8}
    references = default.reference_plans()
    from yolotune.assets import prepare_dataset

    # hashed before the storage lock: it reads every label file, and other drivers wait on that lock
    data_digests = prepare_dataset(config.data).digests
    with contextlib.ExitStack() as marked:
        # two drivers starting a study at once on one SQLite file or PostgreSQL database: one creates it and queues
        # its references
        with storage_lock(config.storage_url):
            study, created, storage = open_study_for_run(config, timed_on=timed_on, data_digests=data_digests)
            # from here to the end (scan, trials, re-timing) `tune delete` refuses: this process searches it
            marked.enter_context(searching(study_dir(config.root, study.study_name)))
            # every study starts with its references, enqueued before any callback runs (also when a run
            # stopped between creating the study and enqueueing them: it holds no trial)
            # the default space expresses the references in its own params, so the sampler learns from them
            params = default.reference_params() if space == default and config.sensitivity_drop is None else {}
            if created or not study.get_trials(deepcopy=False):
                for name in references:
                    study.enqueue_trial(params.get(name, {}), user_attrs={"reference": name})
        say_setup_changes(study, timing)
        if on_open is not None:
            on_open(study)
        if config.sensitivity_drop is not None:
            assert isinstance(space, DefaultSpace)  # preflight
            space = _sensitive_space(config, study, space, on_scan, target=target)
        if why := untrained_study(study):  # a resumed study whose model detects nothing: no more work
            raise SearchStopped(why, study=study)

        # the driver beats for its trials itself (Heartbeat), so Optuna's optimize-only note does not apply
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used", category=UserWarning)
        with Heartbeat(storage, interval=config.heartbeat_interval) as heartbeat, _executor(config) as executor:
            run = _Run(
                config=config,
                study=study,
                space=space,
                default=default,
                references=references,
                target=target,
                storage=storage,
                heartbeat=heartbeat,
                executor=executor,
                on_trial=on_trial,
                on_step=on_step,
                max_failures=max_failures if max_failures is not None else max(3, config.budget),
            )
            run.until_budget(params)
        done = evaluated(study)
        if done < run.config.budget:
            raise SearchStopped(
                f"stopped after {run.failures} failed candidate(s), {done} of {run.config.budget} evaluated; the "
                f"last failed with: {run.last_failure.rstrip('.')}. Fix that and run the same command to resume "
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


class _Run:
    """One run of the search loop, and the state its steps share: the study, the executor, the trials in flight.

    Trials are asked for while workers are free (``refill``), built by the executor, then timed and
    told here (``collect``): a rung-0 candidate is stopped (PRUNED) or promoted (built again at full
    fidelity), a full-fidelity one is timed with its FP32 reference and told COMPLETE, a failed one
    is told FAIL with its reason. What stops the search (a machine fault, a lost target, Ctrl-C)
    first fails the trials still open and queues their plans again (``abandon``).
    """

    def __init__(
        self,
        *,
        config: SearchConfig,
        study: optuna.Study,
        space: Space,
        default: DefaultSpace,
        references: dict[str, CompressionPlan],
        target: Target,
        storage: optuna.storages.BaseStorage,
        heartbeat: Heartbeat,
        executor: InProcess | RayExecutor,
        on_trial: Callable[[TrialOutcome, optuna.Study], None] | None,
        on_step: Callable[[int, str], None] | None,
        max_failures: int,
    ) -> None:
        self.config = config  # its budget rises when a lost reference must run again
        self.study = study
        self.space = space
        self.default = default
        self.references = references
        self.target = target
        self.spec = target_spec(config.settings.target)  # a value without secrets: workers need no targets file
        self.storage = storage
        self.heartbeat = heartbeat
        self.beats_seen = BeatWatch()  # other drivers' journal beats, by this process's clock
        self.executor = executor
        self.on_trial = on_trial
        self.on_step = on_step
        self.max_failures = max_failures
        self.failures = 0
        self.last_failure = ""
        self.root = study_dir(config.root, config.name) / "trials"
        self.open_trials: dict[int, _Pending] = {}  # asked, not yet told

    def until_budget(self, params: dict[str, dict[str, Any]]) -> None:
        """Run trials until the budget is met, too many failed, or nothing is left to run."""
        self.reap()  # also when the budget is already met: nothing stays RUNNING for good
        # a reference that failed or was lost runs again, budget met or not
        with storage_lock(self.config.storage_url):
            waiting = queue_failed_references(self.study, list(self.references), params)
        if waiting:
            self._raise_budget(evaluated(self.study) + waiting_through_references(self.study))
        try:
            while True:
                self.reap()  # before the budget check: a reference found stale now raises the budget
                if not (evaluated(self.study) < self.config.budget and self.failures < self.max_failures):
                    break
                if why := baseline_failed(self.study):
                    self.abandon("the FP32 reference failed: --max-map-drop has no baseline")
                    raise SearchStopped(why, study=self.study)
                self.refill(0)
                if self.executor.in_flight == 0:
                    break
                done = self.executor.wait()
                if not isinstance(self.executor, InProcess):
                    self.refill(len(done))  # workers build the next candidates while this host times these
                for pending, built in done:
                    promoted = False
                    try:
                        promoted = self.collect(pending, built)
                    finally:
                        if not promoted:
                            self.heartbeat.remove(pending.trial._trial_id)
        except KeyboardInterrupt:
            self.abandon("interrupted")
            raise
        except BaseException as exc:  # a callback's error, a lost storage: nothing stays RUNNING
            if not isinstance(exc, SearchStopped):
                first = str(exc).splitlines()[0] if str(exc) else ""
                self.abandon(f"the search stopped: {type(exc).__name__}: {first}")
            raise

    def _raise_budget(self, wanted: int) -> None:
        """Run at least ``wanted`` evaluated candidates in all (a lost or failed reference runs again)."""
        self.config = dataclasses.replace(self.config, budget=max(self.config.budget, wanted))

    def fail(self, trial: optuna.Trial, reason: str) -> None:
        """Tell ``trial`` FAIL with ``reason``; stop the search when the machine, not the plan, is at fault."""
        self.failures += 1
        self.last_failure = reason
        why = _environment_failure(reason)  # the machine's fault: stop rather than fail every later plan
        if why and disk_full(reason):
            # first, before the database writes that need the space: the partial files of this trial
            # and of those stopped with it (their plans run again) only take space on the full disk
            for number in {trial.number, *self.open_trials}:
                shutil.rmtree(self.root / str(number), ignore_errors=True)
        self.open_trials.pop(trial.number, None)
        trial.set_user_attr("fail_reason", reason)
        self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        _keep_plan_only(self.root / str(trial.number), trial.user_attrs.get("plan"))
        if self.on_trial:
            self.on_trial(TrialOutcome(number=trial.number, state="FAIL", reason=reason), self.study)
        if why:
            retry(self.study, trial, reason, always=True)  # nothing is lost: the plan runs on resume
            self.abandon(f"stopped: {why.split(' (')[0]}")
            raise SearchStopped(why, study=self.study)

    def defer(self, trial: optuna.Trial, reason: str = QUEUED_BEHIND_FP32) -> None:
        """Queue a trial's plan behind the FP32 reference (a retry after Ctrl-C put it last): not a failure."""
        self.open_trials.pop(trial.number, None)
        trial.set_user_attr("fail_reason", reason)
        self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        shutil.rmtree(self.root / str(trial.number), ignore_errors=True)  # its retry builds it again
        retry(self.study, trial, reason, always=True)

    def abandon(self, reason: str) -> None:
        """Fail the trials still open, with ``reason``, and queue their plans for the next run."""
        self.executor.cancel_all()
        for pending in list(self.open_trials.values()):
            with contextlib.suppress(Exception):  # already told, storage gone: nothing more to save
                pending.trial.set_user_attr("fail_reason", reason)
                self.study.tell(pending.trial, state=optuna.trial.TrialState.FAIL)
                retry(self.study, pending.trial, reason, always=True)
            shutil.rmtree(pending.out_dir, ignore_errors=True)  # half built; its retry builds it again
        self.open_trials.clear()

    def reap(self) -> None:
        """Fail and queue again the trials a killed driver left RUNNING (its process gone, or its heartbeats stale)."""
        references_lost = 0
        keep = self.heartbeat.beat_now()
        for stale in fail_stale_trials(self.study, self.storage, keep=keep, watch=self.beats_seen):
            retry(self.study, stale, stale.user_attrs.get("fail_reason", "driver died"), always=True)
            shutil.rmtree(self.root / str(stale.number), ignore_errors=True)  # a killed driver's half-built files
            references_lost += bool(stale.user_attrs.get("reference"))
        if references_lost:  # found stale mid-run (the last run ended under 2 heartbeats ago): still run first
            study = self.study
            self._raise_budget(evaluated(study) + self.executor.in_flight + waiting_through_references(study))

    def refill(self, collected: int) -> None:
        """Keep every worker busy, without asking for more trials than the budget needs."""
        executor, study = self.executor, self.study
        while (
            executor.in_flight < executor.workers
            and evaluated(study) + executor.in_flight + collected < self.config.budget
            and self.failures < self.max_failures
        ):
            with storage_lock(self.config.storage_url):  # SQLite: two drivers could both take a queued trial
                trial = study.ask()
                trial.set_user_attr(DRIVER_ATTR, process_tag())  # a resumed run knows at once if it died
            self.heartbeat.add(trial._trial_id)
            reference = str(trial.user_attrs.get("reference", ""))
            try:
                plan = self._plan(trial, reference)
            except Exception as exc:
                self.heartbeat.remove(trial._trial_id)
                if _dynamic_choices(exc):  # every later trial would fail the same way: stop here
                    reason = self._dynamic_choices_reason(exc)
                    self.fail(trial, reason)
                    raise YolotuneError(reason) from exc
                self.fail(trial, str(exc) if isinstance(exc, YolotuneError) else _unexpected(exc))
                continue
            if reference != "fp32" and waits_for_baseline(study, paired=self.config.time_reference):
                # a retried FP32 reference was queued behind trials taken first: they wait for it, as at the start
                self.heartbeat.remove(trial._trial_id)
                self.defer(trial, QUEUED_BEHIND_FP32 if waits_for_baseline(study) else QUEUED_FOR_PAIRING)
                continue
            trial.set_user_attr("plan", plan.to_dict())
            trial.set_user_attr("brief", plan.brief(groups=self.default.groups))
            twin = None if reference else find_twin(study, plan, stops=self.config.multi_fidelity)
            if twin is not None:  # samplers propose a plan again, small spaces often: reuse it
                self.heartbeat.remove(trial._trial_id)
                reuse_twin(study, trial, twin)
                if self.on_trial:
                    why = f"the plan of trial {twin.number} again: its measurements are reused"
                    self.on_trial(TrialOutcome(number=trial.number, state=twin.state.name, reason=why), study)
                continue
            self._submit(trial, plan, reference)

    def _plan(self, trial: optuna.Trial, reference: str) -> CompressionPlan:
        """The plan ``trial`` runs: its reference plan (in a space other than the default), else the space's draw."""
        use_reference = reference in self.references and self.space != self.default
        plan = self.references[reference] if use_reference else self.space(trial)
        if not isinstance(plan, CompressionPlan):
            raise YolotuneError(f"the search space returned {type(plan).__name__}, not a CompressionPlan")
        return plan

    def _dynamic_choices_reason(self, exc: Exception) -> str:
        """Why a space whose choices changed between trials stops the search, and how to fix it (one line)."""
        space = self.config.space
        python = space is not None and not space.endswith((".yaml", ".yml"))
        fix = (
            "keep each parameter's choices fixed"
            if python
            else "the training split changed size since (it bounds the calibration sizes): restore it"
        )
        return (
            f"{f'space {space}' if space else 'the default space'} gives a parameter other choices than this "
            f"study's earlier trials had ({exc}); {fix}, or start another --study"
        )

    def _submit(self, trial: optuna.Trial, plan: CompressionPlan, reference: str) -> None:
        """Hand ``trial`` to the executor: at rung 0 in a multi-fidelity search (references at full fidelity)."""
        pending = _Pending(trial=trial, plan=plan, out_dir=self.root / str(trial.number))
        self.open_trials[trial.number] = pending
        kwargs: dict[str, Any] = {
            "model": self.config.model,
            "data": self.config.data,
            "plan": plan,
            "out_dir": pending.out_dir,
            "settings": self.config.settings,
            "target": self.spec,
        }
        if self.config.multi_fidelity and not reference and not trial.user_attrs.get("promoted"):
            # references are the front's anchors and the --max-map-drop baseline: always full; a retry of a
            # promoted trial (stopped by Ctrl-C, a lost worker) was judged at rung 0 already
            floor = rung0_floor(self.config, self.study)
            kwargs.update(stage="rung0", val_images=self.config.rung0_val, rung0_floor=floor)
        if isinstance(self.executor, InProcess):
            kwargs["on_step"] = _bind(self.on_step, trial.number)
        pending.kwargs = kwargs
        self.executor.submit(pending, kwargs)

    def collect(self, pending: _Pending, built: Build) -> bool:
        """Time and tell one built candidate, or fail it; return whether it was promoted (still open)."""
        trial = pending.trial
        if isinstance(built, Crashed):
            self.fail(trial, built.reason)
            retry(self.study, trial, built.reason)
            return False
        if isinstance(built, Failed):
            self.fail(trial, built.reason)
            return False
        try:
            if built.fidelity == "rung0":
                return self._at_rung0(pending, built)
            check_baseline(self.study, trial)  # before timing what would wait for the FP32 reference
            result = time_candidate(
                built,
                target=self.target,
                on_step=_bind(self.on_step, trial.number),
                timed=pending.timed,
                reference=reference_path(self.study) if self.config.time_reference else None,
            )
            record_trial(self.config, self.study, trial, result)
        except WaitsForBaseline as exc:
            if waits_for_baseline(self.study, running=True):  # built before the FP32 reference's retry
                self.defer(trial)
            else:
                self.fail(trial, str(exc))
            return False
        except Exception as exc:
            self._failed_to_measure(trial, exc)
            return False
        self.study.tell(trial, [result.accuracy.map50_95, result.size_mb, result.latency.median_ms])
        self.open_trials.pop(trial.number, None)
        drop_intermediates(result)
        if self.on_trial:
            self.on_trial(TrialOutcome(number=trial.number, state="COMPLETE", result=result), self.study)
        if trial.user_attrs.get("reference") == "fp32" and (why := untrained(result.accuracy.map50_95)):
            self.abandon("the uncompressed model detects nothing on this data")
            raise SearchStopped(why, study=self.study)
        return False

    def _failed_to_measure(self, trial: optuna.Trial, exc: Exception) -> None:
        """Fail ``trial``; if the target, not the plan, failed and is gone, stop rather than fail every plan on it."""
        self.fail(trial, str(exc) if isinstance(exc, YolotuneError) else _unexpected(exc))
        if isinstance(exc, StepError) and exc.step == "latency":
            # the same command resumes once the target is back
            lost = _lost(self.target)
            retry(self.study, trial, str(exc), always=lost is not None)
            if lost is not None:
                self.abandon(f"target lost: {lost}")
                raise SearchStopped(
                    f"lost the target during the search ({lost}); the unfinished plans are queued: bring it back "
                    "and run the same command to resume",
                    study=self.study,
                ) from None

    def _at_rung0(self, pending: _Pending, built: BuiltCandidate) -> bool:
        """Stop a rung-0 candidate (PRUNED, with its rung-0 numbers), or promote it; return whether promoted."""
        trial, study = pending.trial, self.study
        verdict = judge_rung0(self.config, study, built)
        timed = (
            None
            if verdict.unreachable or verdict.on_size
            else time_candidate(built, target=self.target, on_step=_bind(self.on_step, trial.number))
        )
        trial.set_user_attr("rung0", verdict.record(built, timed))
        if verdict.unreachable:
            record_untimed(built, reason=verdict.unreachable)
        promoted = verdict.on_size or (
            timed is not None and promote(study, timed, self.config.promote_margin, shift=verdict.shift)
        )
        if promoted:  # continue from what rung 0 built
            trial.set_user_attr("promoted", True)  # a retry of this trial goes straight to full fidelity
            if timed is not None:
                paired = self._paired_reference(pending, built)  # first: seconds after the candidate's timing
                pending.timed = (file_digest(built.deployable), timed.latency, paired)
            self.executor.submit(pending, {**pending.kwargs, "stage": "promote", "previous": built})
            return True
        trial.set_user_attr("fidelity", "rung0")
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        self.open_trials.pop(trial.number, None)
        drop_intermediates(built)
        if self.on_trial:
            outcome = TrialOutcome(number=trial.number, state="PRUNED", result=timed, reason=verdict.unreachable)
            self.on_trial(outcome, study)
        return False

    def _paired_reference(self, pending: _Pending, built: BuiltCandidate) -> LatencyStats | None:
        """The FP32 reference timed now, for a promotion that keeps rung 0's bytes and so its timing.

        A promotion that only re-validates reuses that timing: it is paired with the reference's,
        timed seconds after it, as a full trial's is. A promotion that builds new bytes (a stand-in,
        fine-tuning) is timed at full fidelity with its reference anyway: ``None``.
        """
        keeps = not built.stand_ins and pending.plan.recovery.epochs == 0
        ref = reference_path(self.study) if self.config.time_reference and keeps else None
        if ref is None:
            return None
        step = _bind(self.on_step, pending.trial.number)
        return time_reference(ref, target=self.target, imgsz=built.imgsz, on_step=step)


def _lost(target: Target) -> str | None:
    """Why ``target`` cannot time anything any more, or ``None`` while it still can."""
    try:
        target.check()
    except YolotuneError as exc:
        return str(exc)
    return None


def _dynamic_choices(exc: Exception) -> bool:
    """Whether Optuna refused a categorical parameter whose choices differ from the study's earlier trials."""
    return isinstance(exc, ValueError) and "does not support dynamic value space" in str(exc)


def _unexpected(exc: Exception) -> str:
    return f"unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
