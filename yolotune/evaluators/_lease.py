"""The target host's lease: compute steps share it, a timing holds it alone.

A latency measured while fine-tuning or validation runs on the same cores is off by 25–40% on a
small machine. Every compute step of a candidate built on the target host holds the lease
*shared*; a timing takes it *exclusively*: it waits for the steps in flight to finish and, while
it waits, blocks new ones (a turnstile), so parallel candidates cannot starve it.

Built on ``flock(2)`` over two files in yolotune's scratch directory: it works across processes
(Ray workers, several drivers) and threads, and the kernel releases the locks of a process that
dies, even by SIGKILL. A timing writes its process id and command into the lease file while it
holds it, so a timing that has to wait for another can say so: one line, once per holder and
process, as a warning of the ``yolotune.evaluators._lease`` logger (which Python prints on stderr
when the application configures no logging).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from yolotune._env import pid_alive, workspace_dir

__all__ = ["compute_lease", "timing_lease"]

logger = logging.getLogger(__name__)

#: Seconds a timing waits quietly before it says what it waits for (a compute step takes the
#: turnstile for an instant; a timing waiting that long is not worth a line).
_QUIET_S = 0.5
_reported: set[int] = set()  # timings (pids) this process has already named
_reported_lock = threading.Lock()


def _paths() -> tuple[Path, Path]:
    root = workspace_dir()
    return root / "lease.turnstile", root / "lease"


@contextlib.contextmanager
def _flock(path: Path, mode: int) -> Iterator[int]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, mode)
        yield fd
    finally:
        os.close(fd)  # closing the descriptor releases its lock


def _try_flock(fd: int, mode: int, wait_s: float) -> bool:
    """Try to take ``mode`` on ``fd`` for up to ``wait_s`` seconds without blocking; return whether it was taken."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)


def _command() -> str:
    args = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else ["python"]
    return " ".join(args)[:200]


def _holder(lease: Path) -> tuple[int, str] | None:
    """The timing recorded in the lease file, when it names a live process."""
    try:
        record = json.loads(lease.read_text() or "null")
        pid, command = int(record["pid"]), str(record["command"])
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if not pid_alive(pid):
        return None  # a timing killed by SIGKILL left its record behind
    return pid, command


def _report_wait(lease: Path) -> None:
    holder = _holder(lease)
    if holder is None:  # compute steps (a search's own workers): waiting for them is the lease's job
        return
    with _reported_lock:
        if holder[0] in _reported:
            return
        _reported.add(holder[0])
    logger.warning(
        "waiting for another yolotune timing on this host (pid %d: %s) to finish; lock file %s", *holder, lease
    )


def _record(fd: int) -> None:
    data = json.dumps({"pid": os.getpid(), "command": _command()}).encode()
    with contextlib.suppress(OSError):  # the record only names the holder to whoever waits
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))


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
    """Hold the host's lease alone (a timing): waits for running steps, blocks new ones.

    When another timing holds the lease for over half a second, a warning names it (its pid and
    command, and the lock file), once per holder; waiting for compute steps is not reported.
    """
    turnstile, lease = _paths()
    gate_fd = os.open(turnstile, os.O_RDWR | os.O_CREAT, 0o600)
    lease_fd: int | None = None
    try:
        reported = False
        if not _try_flock(gate_fd, fcntl.LOCK_EX, _QUIET_S):
            _report_wait(lease)
            reported = True
            fcntl.flock(gate_fd, fcntl.LOCK_EX)
        lease_fd = os.open(lease, os.O_RDWR | os.O_CREAT, 0o600)
        if not _try_flock(lease_fd, fcntl.LOCK_EX, 0 if reported else _QUIET_S):
            if not reported:
                _report_wait(lease)
            fcntl.flock(lease_fd, fcntl.LOCK_EX)
        _record(lease_fd)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(lease_fd, 0)  # no stale record once released
    finally:
        if lease_fd is not None:
            os.close(lease_fd)  # closing a descriptor releases its lock
        os.close(gate_fd)
