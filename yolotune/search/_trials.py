"""Recording trials: a measured candidate's attributes and artifacts, twins that reuse them, retries."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna

from yolotune._files import whole_file
from yolotune.search._baseline import set_constraints
from yolotune.search._candidate import CandidateResult
from yolotune.search._config import SearchConfig
from yolotune.search._retime import reference_file
from yolotune.spaces import CompressionPlan
from yolotune.studies._storage import DRIVER_ATTR, artifact_dir

__all__ = [
    "evaluated",
    "find_twin",
    "plan_of",
    "queue_failed_references",
    "record_trial",
    "reference_path",
    "retry",
    "reuse_twin",
    "waiting_through_references",
]


def evaluated(study: optuna.Study) -> int:
    """Candidates evaluated, what the budget counts: COMPLETE trials, and those that stopped at rung 0 (PRUNED)."""
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def whole_file_store(base: Path) -> Any:
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

    store = whole_file_store(artifact_dir(config.root, config.name))
    out = result.deployable.parent
    ids = {}
    for path in (result.deployable, out / "plan.yaml", out / "metrics.json"):
        ids[path.name] = upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)
    return ids


def queue_failed_references(study: optuna.Study, references: Sequence[str], params: dict[str, dict[str, Any]]) -> int:
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


def waiting_through_references(study: optuna.Study) -> int:
    """How many queued trials Optuna hands out before the last queued reference, that one included.

    Optuna takes the oldest queued trial first: a budget raised for a lost reference must also
    cover the trials queued before it, or they take its place and it waits for good.
    """
    waiting = sorted(
        study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)), key=lambda t: t.number
    )
    return max((i + 1 for i, t in enumerate(waiting) if t.user_attrs.get("reference")), default=0)


def retry(
    study: optuna.Study, trial: optuna.trial.FrozenTrial | optuna.Trial, reason: str, *, always: bool = False
) -> bool:
    """Queue a trial's plan once more and return whether queued.

    Once only (a retry is not retried), unless ``always``: the plan was not at fault (Ctrl-C, a
    target that went away), so even a retry is queued again. A trial rung 0 had promoted keeps
    what rung 0 measured (``rung0``, ``promoted``): its retry runs at full fidelity at once.
    """
    if "retry_of" in trial.user_attrs and not always:
        return False
    attrs: dict[str, Any] = {"retry_of": trial.number, "retry_reason": reason}
    for kept in ("reference", "promoted", "rung0"):
        if trial.user_attrs.get(kept):
            attrs[kept] = trial.user_attrs[kept]
    study.enqueue_trial(dict(trial.params), user_attrs=attrs, skip_if_exists=False)
    return True


def find_twin(study: optuna.Study, plan: CompressionPlan, *, stops: bool) -> optuna.trial.FrozenTrial | None:
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
_OWN_ATTRS = frozenset({"plan", "brief", "reference", "retry_of", "retry_reason", "fail_reason", DRIVER_ATTR})


def reuse_twin(study: optuna.Study, trial: optuna.Trial, twin: optuna.trial.FrozenTrial) -> None:
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


def _metrics(result: CandidateResult) -> dict[str, Any]:
    record = result.to_dict()
    return {k: record[k] for k in ("map50_95", "map50", "size_bytes", "latency_ms")}


def reference_path(study: optuna.Study) -> Path | None:
    """The FP32 reference trial's deployable file, when it has been measured and is still on this host."""
    found = reference_file(study)
    return found[1] if found else None


def record_trial(config: SearchConfig, study: optuna.Study, trial: optuna.Trial, result: CandidateResult) -> None:
    """Record a measured full-fidelity candidate on its trial: metrics, latency, provenance, constraints, artifacts.

    Constraints are set first, so a trial that must wait for the FP32 reference uploads nothing.
    """
    record: dict[str, Any] = result.to_dict()
    if result.reference_latency is not None:
        trial.set_user_attr("reference_ms", result.reference_latency.median_ms)
    elif config.time_reference and trial.user_attrs.get("reference") != "fp32":
        trial.set_user_attr("unpaired", True)  # wanted, but no reference file yet or its timing failed: † on fronts
    trial.set_user_attr("metrics", _metrics(result))
    trial.set_user_attr("fidelity", "full")
    trial.set_user_attr("latency", record["latency"])
    trial.set_user_attr("provenance", record["provenance"])
    trial.set_user_attr("artifact", str(result.deployable.resolve()))  # found from any working directory
    set_constraints(study, trial, result)  # first: a trial that must wait for the FP32 reference uploads nothing
    trial.set_user_attr("artifacts", _register_artifacts(config, trial, result))


def plan_of(trial: optuna.trial.FrozenTrial) -> CompressionPlan:
    """The plan a recorded trial ran."""
    return CompressionPlan.from_dict(trial.user_attrs["plan"])
