"""The target host's lease: compute steps share it, a timing holds it alone.

A latency measured while fine-tuning or validation runs on the same cores is off by 25–40% on a
small machine. Every compute step of a candidate built on the target host holds the lease
*shared*; a timing takes it *exclusively*: it waits for the steps in flight to finish and, while
it waits, blocks new ones (a turnstile), so parallel candidates cannot starve it.

Built on ``flock(2)`` over two files in yolotune's scratch directory: it works across processes
(Ray workers, several drivers) and threads, and the kernel releases the locks of a process that
dies, even by SIGKILL.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from yolotune._env import workspace_dir

__all__ = ["compute_lease", "timing_lease"]


def _paths() -> tuple[Path, Path]:
    root = workspace_dir()
    return root / "lease.turnstile", root / "lease"


@contextlib.contextmanager
def _flock(path: Path, mode: int) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases its lock


@contextlib.contextmanager
def compute_lease() -> Iterator[None]:
    """Hold the host's lease shared (a compute step: prune, fine-tune, export, quantize, validate)."""
    turnstile, lease = _paths()
    with contextlib.ExitStack() as stack:
        with _flock(turnstile, fcntl.LOCK_EX):  # wait behind a timing that is waiting or running
            stack.enter_context(_flock(lease, fcntl.LOCK_SH))
        yield


@contextlib.contextmanager
def timing_lease() -> Iterator[None]:
    """Hold the host's lease alone (a timing): waits for running steps, blocks new ones."""
    turnstile, lease = _paths()
    with _flock(turnstile, fcntl.LOCK_EX), _flock(lease, fcntl.LOCK_EX):
        yield
