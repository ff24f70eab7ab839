"""`tune dashboard` end to end: a real SQLite study, the CLI in a subprocess, its HTTP API and headless Chromium."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from yolotune.studies import artifact_dir, default_storage_url, open_storage

STUDY = "yolov8n-dash"
METRICS = ["mAP50-95", "size MB", "latency ms"]
# (prune ratio, precision) -> (mAP50-95, size MB, latency ms): synthetic, the dashboard is under test.
TRIALS = [
    ({"prune_ratio": 0.0, "precision": "fp32"}, [0.372, 12.2, 9.1]),
    ({"prune_ratio": 0.3, "precision": "int8"}, [0.341, 2.2, 5.4]),
    ({"prune_ratio": 0.6, "precision": "int8"}, [0.298, 1.3, 4.0]),
    ({"prune_ratio": 0.6, "precision": "fp32"}, [0.290, 5.1, 6.2]),
]
SHOT_SIZE = (1280, 900)
READY_TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tune() -> list[str]:
    script = Path(sys.executable).with_name("tune")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "yolotune.cli"]


def _get(url: str) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
    with opener.open(url, timeout=10) as resp:
        return bytes(resp.read())


def _api(url: str) -> Any:
    return json.loads(_get(url))


@dataclass
class Dashboard:
    proc: subprocess.Popen[str]
    url: str  # http://127.0.0.1:<port>/dashboard/

    @property
    def origin(self) -> str:
        return self.url.removesuffix("/dashboard/")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A studies root laid out as `tune run` leaves it: `<root>/<study>.db` plus the artifact store."""
    root = tmp_path_factory.mktemp("studies")
    storage = open_storage(default_storage_url(root, STUDY))
    study = optuna.create_study(study_name=STUDY, storage=storage, directions=["maximize", "minimize", "minimize"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(METRICS)
    dists = {"prune_ratio": FloatDistribution(0.0, 0.8), "precision": CategoricalDistribution(["fp32", "int8"])}
    store = optuna.artifacts.FileSystemArtifactStore(str(artifact_dir(root, STUDY)))
    for i, (params, values) in enumerate(TRIALS):
        # Added running, so that an artifact can be attached (as the tuner does), then told its values.
        running = optuna.trial.create_trial(
            state=TrialState.RUNNING, params=params, distributions=dists, user_attrs={"onnx": f"trial_{i}/model.onnx"}
        )
        study.add_trial(running)
        metrics = root / f"metrics_{i}.json"
        metrics.write_text(json.dumps({"trial": i, "mAP50-95": values[0]}))
        optuna.artifacts.upload_artifact(
            artifact_store=store, file_path=str(metrics), study_or_trial=study.trials[i], storage=storage
        )
        study.tell(i, values)
    return root


def _start(root: Path, port: int, log: Path) -> Dashboard:
    """Start `tune dashboard` and wait for its URL line; the caller must stop the process."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", "NO_COLOR": "1"}
    args = [*_tune(), "dashboard", "--root", str(root), "--study", STUDY, "--port", str(port)]
    with log.open("w") as err:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_pump, args=(proc, lines), daemon=True).start()
    deadline = time.monotonic() + READY_TIMEOUT_S
    try:
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no URL from `tune dashboard` in {READY_TIMEOUT_S:.0f} s; stderr: {log.read_text()}")
            prefix = f"dashboard of '{STUDY}': "
            if line.startswith(prefix):
                return Dashboard(proc, line.removeprefix(prefix).strip())
            if not line:  # end of stdout: it exited
                pytest.fail(f"`tune dashboard` exited with {proc.wait(timeout=10)}; stderr: {log.read_text()}")
    except BaseException:
        _stop(proc)
        raise


def _pump(proc: subprocess.Popen[str], lines: queue.Queue[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.put(line)
    lines.put("")


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def dashboard(root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    dash = _start(root, _free_port(), tmp_path_factory.mktemp("log") / "stderr.txt")
    try:
        yield dash
    finally:
        _stop(dash.proc)


def test_url_line(dashboard: Dashboard) -> None:
    assert dashboard.url.startswith("http://127.0.0.1:")
    assert dashboard.url.endswith("/dashboard/")
    assert b"<html" in _get(dashboard.url).lower()


def test_api_lists_the_study_with_trials_and_metric_names(dashboard: Dashboard) -> None:
    summaries = _api(f"{dashboard.origin}/api/studies")["study_summaries"]
    assert [s["study_name"] for s in summaries] == [STUDY]
    assert summaries[0]["directions"] == ["maximize", "minimize", "minimize"]

    detail = _api(f"{dashboard.origin}/api/studies/{summaries[0]['study_id']}")
    assert detail["name"] == STUDY
    assert detail["objective_names"] == METRICS
    trials = detail["trials"]
    assert [t["number"] for t in trials] == list(range(len(TRIALS)))
    for t, (params, values) in zip(trials, TRIALS, strict=True):
        assert t["state"] == "Complete"
        assert t["values"] == pytest.approx(values)
        assert {p["name"]: p["param_external_value"] for p in t["params"]} == {k: str(v) for k, v in params.items()}
        assert {a["key"]: a["value"] for a in t["user_attrs"]} == {"onnx": f"trial_{t['number']}/model.onnx"}
    # Trial 3 is dominated by trial 2 (lower mAP, bigger, slower): the Pareto front is trials 0-2.
    assert sorted(t["number"] for t in detail["best_trials"]) == [0, 1, 2]


def test_trial_artifacts_are_served_from_the_study_artifact_store(dashboard: Dashboard) -> None:
    detail = _api(f"{dashboard.origin}/api/studies/1")
    for trial, (_, values) in zip(detail["trials"], TRIALS, strict=True):
        [artifact] = trial["artifacts"]
        assert artifact["filename"] == f"metrics_{trial['number']}.json"
        body = _get(f"{dashboard.origin}/artifacts/1/{trial['trial_id']}/{artifact['artifact_id']}")
        assert json.loads(body) == {"trial": trial["number"], "mAP50-95": values[0]}


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def _headless(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    flags = [
        "--headless",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-proxy-server",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--window-size={SHOT_SIZE[0]},{SHOT_SIZE[1]}",
        "--virtual-time-budget=15000",
    ]
    return subprocess.run([browser, *flags, *args], capture_output=True, text=True, timeout=90, check=False)


def test_chromium_renders_the_study_page(dashboard: Dashboard, tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium / chromium-browser on PATH (CI installs Debian's chromium in .ci/run)")
    from PIL import Image

    page = f"{dashboard.url}studies/1"
    dom = _headless(browser, tmp_path / "profile-dom", "--dump-dom", page)
    assert dom.returncode == 0, dom.stderr[-2000:]
    # The SPA renders client-side: these only appear once its JS fetched the study from the API.
    assert f"{STUDY} (id=1)" in dom.stdout  # the app bar's breadcrumb
    assert "Pareto Front" in dom.stdout
    assert "mAP50-95" in dom.stdout

    shot = tmp_path / "study.png"
    run = _headless(browser, tmp_path / "profile-shot", f"--screenshot={shot}", page)
    assert run.returncode == 0, run.stderr[-2000:]
    assert shot.is_file()
    with Image.open(shot) as img:
        assert img.format == "PNG"
        assert img.size == SHOT_SIZE
        colours = img.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50, f"blank-looking screenshot: {len(colours or [])} colours"


def test_busy_port_is_a_one_line_error(root: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = [*_tune(), "dashboard", "--root", str(root), "--study", STUDY, "--port", str(port)]
        result = subprocess.run(args, capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"error: port {port} is in use on 127.0.0.1; pass --port"]
    assert result.stdout == ""


def test_ctrl_c_stops_it_cleanly(root: Path, tmp_path: Path) -> None:
    dash = _start(root, _free_port(), tmp_path / "stderr.txt")
    try:
        dash.proc.send_signal(signal.SIGINT)
        assert dash.proc.wait(timeout=30) == 0
        assert (tmp_path / "stderr.txt").read_text() == ""
    finally:
        _stop(dash.proc)
