"""``tune run``'s progress: one live line on stderr, and a line for each trial that did not simply complete."""

from __future__ import annotations

from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeRemainingColumn,
)

from yolotune._cli._console import consoles
from yolotune._cli._errors import Interrupts

__all__ = ["SearchProgress"]


class SearchProgress:
    """The progress bar of a search and the callbacks ``run_search`` reports through.

    The bar is shown once the study is opened (``on_open``): a run refused before (another job
    under this study name, another device) prints its one line and nothing else. Each step checks
    ``interrupts``, so a stop a library swallowed still stops the search at the next step.
    """

    def __init__(self, *, name: str, budget: int, interrupts: Interrupts) -> None:
        columns = (
            SpinnerColumn(),
            TextColumn("{task.description}", style="bold", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}", markup=False),
        )
        self.budget = budget
        self.interrupts = interrupts
        self.progress = Progress(*columns, console=consoles.err)
        self.task = self.progress.add_task(name, total=budget, status="starting")

    def stop(self) -> None:
        """Take the bar down (if it was shown: stopping one never started leaves a blank line)."""
        if self.progress.live.is_started:
            self.progress.stop()

    def _say(self, line: str) -> None:
        self.progress.console.print(line, highlight=False)

    def on_open(self, study: Any) -> None:
        """Show the bar where the study stands (at its budget already: only the re-timing runs)."""
        from yolotune.search import evaluated

        done = evaluated(study)
        status = "starting" if not done else ("re-timing the front" if done >= self.budget else "resuming")
        self.progress.update(self.task, completed=min(done, self.budget), status=status)
        self.progress.start()

    def on_trial(self, outcome: Any, study: Any) -> None:
        """Say why a trial failed, was reused or stopped at rung 0; move the bar and the front's status on."""
        from yolotune.search import evaluated
        from yolotune.studies import pareto_front

        done = evaluated(study)
        front = pareto_front(study) if done else []
        best_map = max((r.map50_95 for r in front), default=None)
        best_ms = min((r.latency_ms for r in front), default=None)
        if outcome.state == "FAIL":
            self._say(f"trial {outcome.number} failed: {outcome.reason}")
        elif outcome.state == "COMPLETE" and outcome.reason:
            self._say(f"trial {outcome.number}: {outcome.reason}")
        elif outcome.state == "PRUNED":
            why = outcome.reason or f"mAP50-95 {outcome.result.accuracy.map50_95:.3f}"
            self._say(f"trial {outcome.number} stopped at rung 0 ({why})")
        self.progress.update(
            self.task,
            completed=done,
            status=f"front {len(front)} · best mAP {best_map:.3f} · fastest {best_ms:.2f} ms"
            if best_map is not None and best_ms is not None
            else "front 0 (no feasible trial yet)",
        )

    def on_step(self, number: int, step: str) -> None:
        """Name the step trial ``number`` is at."""
        self.interrupts.check()
        self.progress.update(self.task, description=f"trial {number}: {step}")

    def on_scan(self, done: int, total: int, row: Any, group: str) -> None:
        """Name the group the sensitivity scan is at."""
        self.interrupts.check()
        self.progress.update(self.task, description=f"sensitivity scan {done}/{total}: {group}")

    def on_retime_failed(self, number: int, reason: str) -> None:
        """Say which trial could not be re-timed, and why."""
        self._say(f"trial {number} not re-timed: {reason}")
