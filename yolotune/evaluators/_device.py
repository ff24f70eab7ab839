"""What device this machine is: CPU or GPU model, Jetson model, power mode, pinned clocks."""

from __future__ import annotations

import contextlib
import platform
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["cpu_name", "device_info"]


def cpu_name() -> str:
    """CPU model name (``/proc/cpuinfo``), or the platform's processor string."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _board() -> str | None:
    with contextlib.suppress(OSError):
        return Path("/proc/device-tree/model").read_text().strip("\x00\n ")  # Jetson, Raspberry Pi
    return None


def _power_mode() -> str | None:
    nvpmodel = shutil.which("nvpmodel")
    if not nvpmodel:
        return None
    with contextlib.suppress(Exception):
        out = subprocess.run([nvpmodel, "-q"], capture_output=True, text=True, timeout=10, check=False).stdout
        for line in out.splitlines():
            if "Power Mode" in line:
                return line.split(":", 1)[1].strip()
    return None


def _clocks_pinned() -> bool | None:
    """True when every CPU core's minimum frequency equals its maximum (``jetson_clocks`` does this)."""
    cores = sorted(Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq"))
    if not cores:
        return None
    with contextlib.suppress(OSError, ValueError):
        return all(
            int((c / "scaling_min_freq").read_text()) == int((c / "scaling_max_freq").read_text()) for c in cores
        )
    return None


def device_info() -> dict[str, Any]:
    """Describe this machine: device, architecture, host, and on Jetson its power mode and clocks."""
    board = _board()
    return {
        "device": board or cpu_name(),
        "cpu": cpu_name(),
        "machine": platform.machine(),
        "host": socket.gethostname(),
        "power_mode": _power_mode(),
        "clocks_pinned": _clocks_pinned(),
    }
