"""What device this machine is: CPU or GPU model, Jetson model, power mode, pinned clocks."""

from __future__ import annotations

import contextlib
import platform
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["cpu_name", "device_info", "int8_saturates"]


def _cpuinfo(key: str) -> str | None:
    """The value of the first ``key`` line of ``/proc/cpuinfo``, or ``None`` (no such line or file)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    return None


def cpu_name() -> str:
    """CPU model name (``/proc/cpuinfo``), or the platform's processor string."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


#: CPU flags of x86 dot-product instructions that add u8×s8 products without an int16 stage.
_VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def int8_saturates() -> bool:
    """Whether ONNX Runtime's INT8 convolutions can saturate on this CPU, so weights need 7 bits.

    On x86 without VNNI, ONNX Runtime multiplies uint8 activations by int8 weights with
    ``VPMADDUBSW``, whose pairwise int16 sums saturate; ONNX Runtime's documentation advises
    ``reduce_range`` (7-bit weights) there. Measured on an AVX2-only EPYC (BENCHMARKS.md, "INT8 on
    CPUs without VNNI"): yolov8n at 320 lost 3.9 points of mAP50-95 with 8-bit weights, 0.9 with 7.
    Other architectures do not saturate. An x86 CPU whose flags cannot be read is taken to saturate
    (7-bit weights cost little accuracy; saturation costs a lot).
    """
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False
    flags = _cpuinfo("flags")
    return flags is None or not (_VNNI_FLAGS & set(flags.split()))


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
        "int8_saturates": int8_saturates(),
    }
