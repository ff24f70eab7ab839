"""Errors that yolotune reports to users as one line."""

from __future__ import annotations

__all__ = ["PlanError", "StepError", "YolotuneError"]


class YolotuneError(Exception):
    """A problem the user can fix; its message is one line that says what and how."""


class PlanError(YolotuneError, ValueError):
    """A compression plan is invalid for the model or the data it is applied to."""


class StepError(YolotuneError):
    """A compression or evaluation step failed on a candidate.

    Args:
        step: Name of the step (``prune``, ``export``, ...).
        reason: One-line reason.
    """

    def __init__(self, step: str, reason: str) -> None:
        self.step = step
        self.reason = reason
        super().__init__(f"{step} failed: {reason}")
