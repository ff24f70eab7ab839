"""Errors that yolotune reports to users as one line."""

from __future__ import annotations

import errno
import os
import re
from typing import Any

__all__ = ["PlanError", "SearchStopped", "StepError", "YolotuneError", "disk_full", "out_of_memory", "yaml_problem"]


#: Terminal colour codes (``ESC[...m``).
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


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
        self.reason = _ANSI.sub("", reason)  # Ultralytics colours its messages for a terminal
        super().__init__(f"{step} failed: {self.reason}")


class SearchStopped(YolotuneError):
    """A search stopped before its budget; what it recorded is kept and the same command resumes it.

    Args:
        message: One line: why it stopped and what to do.
        study: The study as it stands (an ``optuna.Study``), for showing its front.
    """

    def __init__(self, message: str, *, study: Any) -> None:
        super().__init__(message)
        self.study = study


def yaml_problem(exc: Exception) -> str:
    """A PyYAML error on one line: its problem and where it is (``line L, column C``)."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


#: how a full disk reads in an error's text, whichever process or library met it (SQLite says
#: "database or disk is full"; a Ray worker's exception arrives as text)
_DISK_FULL = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT), "database or disk is full")


def disk_full(text: str) -> bool:
    """Whether an error's text says a disk is full (``ENOSPC``, ``EDQUOT``, SQLite's wording)."""
    return any(words in text for words in _DISK_FULL)


#: how a failed allocation reads where the library raises no ``MemoryError``: PyTorch's CPU
#: allocator and CUDA (RuntimeError / OutOfMemoryError), ONNX Runtime's arena (``Fail``), C++'s
#: ``std::bad_alloc``
_OUT_OF_MEMORY = ("can't allocate memory", "out of memory", "failed to allocate memory", "bad_alloc", "bad allocation")


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc``, or an exception it was raised from or while handling, is a failed allocation."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, MemoryError) or any(m in str(current).lower() for m in _OUT_OF_MEMORY):
            return True
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return False
