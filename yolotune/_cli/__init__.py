"""The pieces of ``tune`` (``yolotune.cli``) that are not commands: consoles, errors, progress, tables."""

from __future__ import annotations

from yolotune._cli._console import Consoles, WarningLines, consoles
from yolotune._cli._errors import STOPPED, Interrupts, one_line_errors
from yolotune._cli._progress import SearchProgress
from yolotune._cli._tables import (
    FAILURES_SHOWN,
    NOISY_CV,
    export_table,
    front_caption,
    noisy_timing,
    results_table,
    show_study,
    where_options,
)

__all__ = [
    "FAILURES_SHOWN",
    "NOISY_CV",
    "STOPPED",
    "Consoles",
    "Interrupts",
    "SearchProgress",
    "WarningLines",
    "consoles",
    "export_table",
    "front_caption",
    "noisy_timing",
    "one_line_errors",
    "results_table",
    "show_study",
    "where_options",
]
