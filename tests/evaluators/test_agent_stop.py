"""``tune agent`` as a process: stopping it ends the benchmark it runs."""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from yolotune.evaluators import timing_lease


def _benchmark_children(agent_pid: int) -> list[int]:
    """Processes whose parent is ``agent_pid`` and that run one benchmark (``-m yolotune.evaluators._agent``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = re.search(r"^PPid:\s+(\d+)", status, re.M)
        if ppid and int(ppid.group(1)) == agent_pid and b"yolotune.evaluators._agent" in cmdline:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie has exited)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    state = re.search(r"^State:\s+(\S)", status, re.M)
    return state is not None and state.group(1) not in "ZX"


def _post(url: str, body: bytes) -> None:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request("POST", "/v1/benchmark?imgsz=160", body=body, headers={"Content-Length": str(len(body))})
        conn.getresponse().read()
    except (OSError, http.client.HTTPException):
        pass  # the agent stops while it runs this benchmark
    finally:
        conn.close()


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads /proc")
@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_a_stopped_agent_ends_the_benchmark_it_was_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fp32_onnx_160: Path, signum: str
) -> None:
    # the agent's benchmark waits for the host's timing lease, held here: a benchmark that lasts
    monkeypatch.setenv("YOLOTUNE_TMP", str(tmp_path / "scratch"))  # a lease of its own, not the host's
    tune = Path(sys.executable).parent / "tune"
    args = [str(tune), "agent", "--port", "0", "--runtime", "onnxruntime", "--threads", "1", "--timeout", "600"]
    with timing_lease():
        agent = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ)
        try:
            assert agent.stdout is not None
            first = agent.stdout.readline()
            url = re.search(r"http://\S+:\d+", first)
            assert url, first + agent.stderr.read() if agent.stderr else first
            threading.Thread(target=_post, args=(url.group(0), fp32_onnx_160.read_bytes()), daemon=True).start()
            deadline = time.monotonic() + 20
            while not (children := _benchmark_children(agent.pid)):
                assert time.monotonic() < deadline, "the agent started no benchmark process"
                time.sleep(0.1)
            (child,) = children
            time.sleep(1.0)  # the benchmark is under way (importing, or waiting for the lease)
            assert _alive(child)
            os.kill(agent.pid, getattr(signal, signum))  # `kill <pid>`, or Ctrl-C sent to the agent alone
            _, err = agent.communicate(timeout=15)
        finally:
            agent.kill()
            agent.wait()
        assert "agent stopped" in err
        deadline = time.monotonic() + 5
        while _alive(child):
            assert time.monotonic() < deadline, f"benchmark process {child} outlived the agent"
            time.sleep(0.1)
