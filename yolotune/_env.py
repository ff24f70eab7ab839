"""Process-wide settings that keep Ultralytics offline, quiet and out of the home directory.

Import this module before ``ultralytics``: Ultralytics reads its environment at import time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from yolotune._files import whole_file

__all__ = [
    "configure_ultralytics",
    "library_temp_files_in",
    "owner_gone",
    "owner_name",
    "package_versions",
    "pid_alive",
    "process_tag",
    "tag_alive",
    "tag_gone",
    "tag_pid",
    "temporary_dir",
    "workspace_dir",
]

_PACKAGES = ("yolotune", "ultralytics", "torch", "torch-pruning", "onnx", "onnxruntime", "onnxslim", "optuna")

_configured = False


def package_versions() -> dict[str, str]:
    """Versions of the libraries that shape a deployable model and its measurements."""
    from importlib import metadata

    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


_library_temp_lock = threading.Lock()
_system_temp: str | None = None  # the temp dir before ``library_temp_files_in`` pointed it elsewhere


def workspace_dir() -> Path:
    """Return yolotune's private scratch directory (``YOLOTUNE_TMP`` or a per-user temp dir)."""
    root = os.environ.get("YOLOTUNE_TMP")
    path = Path(root) if root else Path(_system_temp or tempfile.gettempdir()) / f"yolotune-{os.getuid()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def temporary_dir(prefix: str) -> Iterator[Path]:
    """A temporary folder in yolotune's scratch dir, removed afterwards, named by this process's id and host.

    A process killed (``kill -9``, out of memory) cannot remove its folder: the next one with the
    same ``prefix`` on the same host removes every folder whose process is gone, so they do not
    pile up. Folders of other hosts (Ray workers sharing ``YOLOTUNE_TMP`` on a network disk) are
    left alone: their process ids mean nothing here.
    """
    parent = workspace_dir() / "tmp"
    parent.mkdir(exist_ok=True)
    for left in parent.glob(f"{prefix}-*"):
        if owner_gone(left.name.removeprefix(f"{prefix}-").split("-")[0]):  # "<pid>@<host>", or "<pid>" before hosts
            shutil.rmtree(left, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=f"{prefix}-{owner_name()}-", dir=parent) as tmp:
        yield Path(tmp)


def owner_name() -> str:
    """This process as a file name records it, ``<pid>@<host>`` (no ``-`` in the host: names split on it)."""
    return f"{os.getpid()}@{socket.gethostname().replace('-', '_')}"


def owner_gone(owner: str) -> bool:
    """Whether ``owner`` (``owner_name``; a bare ``<pid>`` is this host's) names a process of this host that is gone.

    ``False`` for another host's process (its pid means nothing here), for this process, and for a
    name that is not an owner's.
    """
    pid, _, host = owner.partition("@")
    here = socket.gethostname()
    if not pid.isdigit() or host not in ("", here, here.replace("-", "_")):
        return False
    return int(pid) != os.getpid() and not pid_alive(int(pid))


@contextlib.contextmanager
def library_temp_files_in(folder: Path) -> Iterator[None]:
    """Point ``tempfile`` at ``folder`` while a library writes its own temporary files.

    ONNX Runtime's ``quant_pre_process`` and ``quantize_static`` write their models (``pre.quant.*``,
    ``ort.quant.*``, 13 MB for a YOLOv8n) to the system temp dir, past ``YOLOTUNE_TMP``; a killed
    process left them there for good. In ``folder`` (a ``temporary_dir``) they go with it, or with
    the next sweep. ``tempfile.tempdir`` is the process's: one block at a time, and
    ``workspace_dir`` keeps to the system temp dir meanwhile.
    """
    global _system_temp
    with _library_temp_lock:
        _system_temp = tempfile.gettempdir()
        before = tempfile.tempdir
        tempfile.tempdir = str(folder)
        try:
            yield
        finally:
            tempfile.tempdir = before
            _system_temp = None


def _started(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot, ``/proc/<pid>/stat``), ``""`` where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return ""
    fields = stat.rpartition(")")[2].split()  # the command name, in parentheses, may hold spaces
    return fields[19] if len(fields) > 19 else ""  # field 22, counted from the state (field 3)


def _pid_namespace() -> str:
    """This process's PID namespace (containers sharing a host name have their own), ``""`` where unknown."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


def process_tag() -> dict[str, Any]:
    """This process, as a trial records the driver that runs it (``tag_gone``, ``tag_alive``).

    Host, pid, PID namespace and start time: a pid is judged only in the namespace it was taken
    in, and a pid the system has since given to another process is not taken for its driver.
    """
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "pid_ns": _pid_namespace(), "started": _started(pid)}


def tag_pid(tag: object) -> int | None:
    """The pid of a ``process_tag`` of another process this one can see (this host and PID namespace), or ``None``."""
    if not isinstance(tag, dict) or tag.get("host") != socket.gethostname():
        return None
    pid = tag.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid == os.getpid():
        return None
    return pid if tag.get("pid_ns", "") == _pid_namespace() else None


def _runs(tag: dict[str, Any], pid: int) -> bool:
    started = tag.get("started", "")
    return pid_alive(pid) and (not started or _started(pid) in ("", started))


def tag_gone(tag: object) -> bool:
    """Whether ``tag`` (``process_tag``) names a process this one can see that no longer runs.

    ``False`` when it cannot be known (another host's or PID namespace's process, no tag) or it is
    this process. A pid now held by a process started later counts as gone.
    """
    pid = tag_pid(tag)
    return pid is not None and isinstance(tag, dict) and not _runs(tag, pid)


def tag_alive(tag: object) -> bool:
    """Whether ``tag`` (``process_tag``) names another process this one can see that still runs."""
    pid = tag_pid(tag)
    return pid is not None and isinstance(tag, dict) and _runs(tag, pid)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (another user's counts)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError, ValueError):  # no such process, or no such pid at all
        return False
    except PermissionError:  # another user's process
        return True
    return True


def configure_ultralytics() -> None:
    """Set Ultralytics' environment: offline, no auto-install, private config dir, quiet logs.

    Safe to call many times. Must run before ``import ultralytics`` to take full effect.
    """
    global _configured
    if _configured:
        return
    config_dir = workspace_dir() / "ultralytics"
    config_dir.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "False"
    os.environ.setdefault("YOLO_VERBOSE", "False")
    # matplotlib (Ultralytics' plots) caches its font list in ~/.cache unless told otherwise
    os.environ.setdefault("MPLCONFIGDIR", str(workspace_dir() / "matplotlib"))
    # Ultralytics fetches Arial fonts when it checks a dataset; give it a bundled font instead.
    _install_fallback_fonts(config_dir)
    _configured = True
    logging.getLogger("ultralytics").setLevel(logging.WARNING)


def _install_fallback_fonts(config_dir: Path) -> None:
    try:
        import matplotlib

        source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    except ImportError:  # pragma: no cover - matplotlib is an Ultralytics dependency
        return
    if not source.exists():
        return
    for target in (config_dir / "Arial.ttf", config_dir / "Arial.Unicode.ttf"):
        if not target.exists() or target.stat().st_size != source.stat().st_size:  # a copy cut short: again
            with whole_file(target) as partial:
                shutil.copyfile(source, partial)
