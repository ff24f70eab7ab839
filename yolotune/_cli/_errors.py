"""How the CLI stops: one-line errors, and Ctrl-C or SIGTERM turned into a clean stop."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import typer

from yolotune._cli._console import consoles
from yolotune.errors import YolotuneError, disk_full

__all__ = ["STOPPED", "Interrupts", "one_line_errors"]

F = TypeVar("F", bound=Callable[..., Any])


#: What Ctrl-C leaves behind, per command (others: nothing to resume).
STOPPED = {
    "run": "interrupted: what was measured is kept (a candidate, scan probe or re-timing round in progress runs "
    "again); run the same command to resume",
    "agent": "agent stopped",
    "dashboard": "dashboard stopped",
    "retime": "interrupted: the rounds done are kept; run the same command to go on",
    "export": "interrupted: nothing of this export was kept; run the same command again",
}


class Interrupts:
    """Ctrl-C (SIGINT) and SIGTERM (``kill``, ``timeout``, a batch scheduler, a closed terminal), remembered.

    Each raises KeyboardInterrupt, so the search records its running trials as failed and queues
    their plans instead of leaving them RUNNING until their heartbeats go stale, and the dashboard
    and the agent stop. A library can swallow that KeyboardInterrupt (seen: about one SIGTERM in ten
    during a candidate's build went nowhere and the search carried on), so the request is also
    remembered and :meth:`check`, called at every step or between requests, raises it again.
    """

    def __init__(self) -> None:
        self.requested = False

    def _interrupt(self, signum: int, frame: Any) -> None:
        self.requested = True
        raise KeyboardInterrupt

    def check(self) -> None:
        """Raise KeyboardInterrupt again if a stop was asked for."""
        if self.requested:
            raise KeyboardInterrupt

    def _unraisable(self, hook: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """``sys.unraisablehook`` that is silent about the KeyboardInterrupt a finalizer swallowed.

        A signal that lands in a ``__del__`` (Ultralytics' data loaders close their workers there)
        raises where Python can only print it, as a traceback; the request is remembered and
        ``check`` raises it again at the next step.
        """

        def handle(unraisable: Any) -> None:
            if not (self.requested and isinstance(unraisable.exc_value, KeyboardInterrupt)):
                hook(unraisable)

        return handle

    @contextlib.contextmanager
    def installed(self) -> Iterator[Interrupts]:
        """Handle both signals while the block runs (outside the main thread: leave signals alone)."""
        try:
            previous = {s: signal.signal(s, self._interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread
            yield self
            return
        hook = sys.unraisablehook
        sys.unraisablehook = self._unraisable(hook)
        try:
            yield self
        finally:
            sys.unraisablehook = hook
            for s, handler in previous.items():
                signal.signal(s, handler)


def storage_failure(exc: Exception) -> bool:
    """Whether Optuna's storage failed underneath (a database that became read-only, or was deleted)."""
    optuna = sys.modules.get("optuna")
    return optuna is not None and isinstance(exc, optuna.exceptions.StorageInternalError)


def one_line_errors(fn: F) -> F:
    """Report YolotuneError (and anything unexpected) as one line on stderr, exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except YolotuneError as exc:
            consoles.error(str(exc))
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            consoles.err.print(STOPPED.get(fn.__name__, "interrupted"))
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):  # a command's own exit: not an error
            raise
        except Exception as exc:
            if os.environ.get("YOLOTUNE_DEBUG"):
                raise
            if storage_failure(exc):
                cause = exc.__cause__ or exc.__context__ or exc
                detail = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
                fix = (
                    "free some space on its disk"
                    if disk_full(detail)
                    else "check that the studies folder is writable and its database is still there"
                )
                consoles.error(
                    f"the study's storage cannot be written ({detail}): {fix}, then run the same command to resume"
                )
                raise typer.Exit(2) from None
            if isinstance(exc, OSError) and exc.filename:
                # a path the user chose cannot be used (unwritable, a file where a folder goes, ...)
                why = exc.strerror or type(exc).__name__
                full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
                consoles.error(
                    f"cannot use {exc.filename2 or exc.filename}: {why}; "
                    + ("free some space there, or pass a path on another disk" if full else "pass another path")
                )
                raise typer.Exit(2) from None
            msg = str(exc).splitlines()[0] if str(exc) else ""
            consoles.error(f"unexpected {type(exc).__name__}: {msg} (set YOLOTUNE_DEBUG=1 for the traceback)")
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]
