"""The CLI's consoles: stdout and stderr through rich, read without markup."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.text import Text

__all__ = ["Consoles", "WarningLines", "consoles"]


class Consoles:
    """Rich consoles created on use, so they see the streams in use (tests swap them).

    They read no markup: messages carry paths, plan briefs and libraries' reasons, whose brackets
    (``coco[v2]/``, ``[/x]``) rich would take for tags, dropping text or raising. Colour comes from
    styles (``error``, ``warning``, rich ``Text``), never from tags in a string.
    """

    @property
    def out(self) -> Console:
        # a pipe or file gets wide lines rather than rich's 80-column default, unless COLUMNS says otherwise
        wide = sys.stdout.isatty() or "COLUMNS" in os.environ
        return Console(width=None if wide else 160, soft_wrap=True, markup=False)

    @property
    def err(self) -> Console:
        # the run's progress line in a log: as wide as stdout's lines there, not squeezed into 80 columns
        wide = sys.stderr.isatty() or "COLUMNS" in os.environ
        return Console(stderr=True, soft_wrap=True, width=None if wide else 160, markup=False)

    def error(self, message: str) -> None:
        """``error: message`` on stderr, ``error:`` in red."""
        self.err.print(Text.assemble(("error:", "red"), " ", message), highlight=False, soft_wrap=True)

    def warning(self, message: str) -> None:
        """``warning: message`` on stderr, ``warning:`` in yellow."""
        self.err.print(Text.assemble(("warning:", "yellow"), " ", message), highlight=False, soft_wrap=True)

    def spinner(self, *columns: Any) -> Progress:
        """A transient spinner on stderr; none when stderr is not a terminal (rich would leave a blank line)."""
        err = self.err
        return Progress(*columns, console=err, transient=True, disable=not err.is_terminal)


consoles = Consoles()


class WarningLines(logging.Handler):
    """yolotune's logged warnings as the CLI's own: ``warning: ...`` on stderr, not the bare message."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            consoles.warning(record.getMessage())
        except Exception:  # pragma: no cover - a closed stream: as logging does
            self.handleError(record)
