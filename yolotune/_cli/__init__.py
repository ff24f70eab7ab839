"""The pieces of ``tune`` (``yolotune.cli``) that are not commands: consoles, errors, progress, tables."""

from __future__ import annotations

from yolotune._cli._console import Consoles, WarningLines, consoles
from yolotune._cli._errors import STOPPED, Interrupts, one_line_errors
from yolotune._cli._progress import SearchProgress
from yolotune._cli._tables import FAILURES_SHOWN, export_table, front_caption, results_table, show_study, where_options

__all__ = [
    "FAILURES_SHOWN",
    "STOPPED",
    "Consoles",
    "Interrupts",
    "SearchProgress",
    "WarningLines",
    "consoles",
    "export_table",
    "front_caption",
    "one_line_errors",
    "results_table",
    "show_study",
    "where_options",
]
