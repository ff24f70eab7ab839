"""What a study holds at a glance: its trials by state, its front, its re-timing, its open failures."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import optuna

from yolotune.spaces import CompressionPlan
from yolotune.studies._front import FrontRow, pareto_front
from yolotune.studies._retimed import Retiming, current_retiming

__all__ = ["StudySummary", "constraints_of", "summarize"]

_State = optuna.trial.TrialState


@dataclass(frozen=True, kw_only=True)
class StudySummary:
    """A study's state, as ``tune show`` prints it (``summarize`` builds it).

    Attributes:
        complete: COMPLETE trials (full fidelity).
        failed: FAIL trials, those whose plan ran again included.
        rung0: Trials stopped at rung 0 (PRUNED): evaluated, never on the front.
        running: RUNNING trials (a killed run's, until the next run queues them again).
        queued_anyway: Queued trials the next ``tune run`` evaluates whatever its budget: a failed
            reference's retry, and those queued before it (Optuna hands queued trials out oldest first).
        queued: The other queued trials, evaluated before new plans if the budget is over ``evaluated``.
        infeasible: COMPLETE trials that break a constraint.
        limits: The study's constraints that are set (``max_map_drop``, ``max_latency_ms``).
        timed_on: Where the COMPLETE trials were timed: ``"<target> on <device> (<host>)"``, sorted.
        front: The Pareto front (``pareto_front``).
        retiming: The front's current re-timing, or ``None``.
        retiming_blocked: The reason a re-timing of the current trials has no round yet (its FP32
            reference could not be timed), or ``None``.
        retiming_outdated: A re-timing exists but trials completed since: the front is not re-timed.
        failures: ``(number, reason)`` of the FAIL trials whose plan has not run again to the end
            (a retry after Ctrl-C or a lost worker that completed is done with), oldest first.
    """

    complete: int
    failed: int
    rung0: int
    running: int
    queued_anyway: int
    queued: int
    infeasible: int
    limits: dict[str, float]
    timed_on: tuple[str, ...]
    front: tuple[FrontRow, ...]
    retiming: Retiming | None
    retiming_blocked: str | None
    retiming_outdated: bool
    failures: tuple[tuple[int, str], ...]

    @property
    def evaluated(self) -> int:
        """Candidates evaluated, what ``--budget`` counts: COMPLETE trials and rung-0 stops."""
        return self.complete + self.rung0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (``tune show --json``).

        Front rows are ``FrontRow``'s fields (``retimed``: its ``RetimedPoint`` or ``None``);
        ``retiming`` gives the current re-timing's rounds, trials and failures, not its timings.
        """
        record: dict[str, Any] = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("front", "retiming")
        }
        record["evaluated"] = self.evaluated
        record["timed_on"] = list(self.timed_on)
        record["failures"] = [{"trial": n, "reason": reason} for n, reason in self.failures]
        record["front"] = [dataclasses.asdict(r) for r in self.front]
        retiming = self.retiming
        record["retiming"] = (
            None
            if retiming is None
            else {
                "rounds": retiming.rounds,
                "reference_trial": retiming.reference_trial,
                "trials": list(retiming.trials),
                "failed": {str(k): v for k, v in retiming.failed.items()},
            }
        )
        return record


def constraints_of(study: optuna.Study) -> dict[str, float | None]:
    """The study's recorded constraints (``max_map_drop``, ``max_latency_ms``; ``None`` when unset)."""
    recorded = study.user_attrs.get("constraints") or {}
    return {"max_map_drop": recorded.get("max_map_drop"), "max_latency_ms": recorded.get("max_latency_ms")}


def summarize(study: optuna.Study) -> StudySummary:
    """Summarize ``study``: counts by state, the front, the re-timing, the failures still open."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == _State.COMPLETE]
    limits = {k: v for k, v in constraints_of(study).items() if v is not None}
    provenances = (t.user_attrs.get("provenance") or {} for t in complete)
    timed_on = sorted({f"{p.get('target')} on {p.get('device')} ({p.get('host')})" for p in provenances if p})
    retiming = current_retiming(study)
    blocked, outdated = None, False
    recorded = study.user_attrs.get("retimed")
    if retiming is None and isinstance(recorded, dict) and "trials" in recorded:
        started = Retiming.from_dict(recorded)
        why = started.failed.get(started.reference_trial)
        if started.complete == len(complete) and why:
            blocked = why
        else:
            outdated = True
    anyway, rest = _queued(trials)
    return StudySummary(
        complete=len(complete),
        failed=sum(t.state == _State.FAIL for t in trials),
        rung0=sum(t.state == _State.PRUNED for t in trials),
        running=sum(t.state == _State.RUNNING for t in trials),
        queued_anyway=anyway,
        queued=rest,
        infeasible=sum(any(v > 0 for v in t.constraints.values()) for t in complete),
        limits=limits,
        timed_on=tuple(timed_on),
        front=tuple(pareto_front(study)),
        retiming=retiming,
        retiming_blocked=blocked,
        retiming_outdated=outdated,
        failures=_open_failures(trials),
    )


def _queued(trials: list[optuna.trial.FrozenTrial]) -> tuple[int, int]:
    """Queued (WAITING) trials the next run evaluates whatever its budget, and the others.

    Optuna hands out queued trials oldest first, before sampling. The driver runs a reference that
    failed (and has not completed since) whatever the budget, with the trials queued before it; the
    others count toward the budget.
    """
    queued = sorted((t for t in trials if t.state == _State.WAITING), key=lambda t: t.number)
    done = {t.user_attrs.get("reference") for t in trials if t.state == _State.COMPLETE}
    failed = {t.user_attrs.get("reference") for t in trials if t.state == _State.FAIL} - done - {None}
    through = max((i + 1 for i, t in enumerate(queued) if t.user_attrs.get("reference") in failed), default=0)
    return through, len(queued) - through


def _open_failures(trials: list[optuna.trial.FrozenTrial]) -> tuple[tuple[int, str], ...]:
    """``(number, reason)`` of the FAIL trials whose plan was not evaluated later.

    Done with: a trial a retry of which (``retry_of``, followed back) was evaluated, a reference
    trial whose reference completed later, and a trial whose plan a later trial completed.
    """
    retry_of: dict[int, Any] = {t.number: t.user_attrs.get("retry_of") for t in trials}
    redone: set[int] = set()
    evaluated = [t for t in trials if t.state in (_State.COMPLETE, _State.PRUNED)]
    for t in evaluated:
        n = retry_of.get(t.number)
        while isinstance(n, int) and n not in redone:
            redone.add(n)
            n = retry_of.get(n)
    # a plan completed later (a reference run again, the same plan sampled again): at full fidelity only
    completed = [t for t in evaluated if t.state == _State.COMPLETE]
    for t in trials:
        if t.state != _State.FAIL or t.number in redone:
            continue
        reference, builds = t.user_attrs.get("reference"), _builds(t)
        if any(
            e.number > t.number
            and ((reference and e.user_attrs.get("reference") == reference) or (builds and _builds(e) == builds))
            for e in completed
        ):
            redone.add(t.number)
    return tuple(
        (t.number, str(t.user_attrs.get("fail_reason", "no reason recorded")))
        for t in trials
        if t.state == _State.FAIL and t.number not in redone
    )


def _builds(trial: optuna.trial.FrozenTrial) -> CompressionPlan | None:
    """What the trial's recorded plan builds (``effective()``: settings that change nothing left out), if it has one."""
    plan = trial.user_attrs.get("plan")
    if not isinstance(plan, dict):
        return None
    try:
        return CompressionPlan.from_dict(plan).effective()
    except Exception:  # a plan of an older yolotune that no longer loads: compared by nothing
        return None
