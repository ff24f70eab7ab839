"""The search over Ray, and nothing lost when a worker or the driver is killed (for real, by pid)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest

from yolotune import YolotuneError
from yolotune.search import CandidateSettings, SearchConfig, plan_of, run_search
from yolotune.studies import load_study

COMPLETE = optuna.trial.TrialState.COMPLETE
FAIL = optuna.trial.TrialState.FAIL


def _config(root: Path, **kwargs: object) -> SearchConfig:
    base: dict = {
        "model": "yolov8n-coco.pt",
        "data": "coco8",
        "budget": 3,
        "settings": CandidateSettings(imgsz=160),
        "root": root,
        "study_name": "s",
        "retime_rounds": 0,  # re-timing is tested apart
    }
    return SearchConfig(**{**base, **kwargs})


def _wait_for(path: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            pytest.fail(f"{path} never appeared")
        time.sleep(0.1)


def test_a_killed_worker_fails_its_trial_which_is_retried_once(tmp_path: Path) -> None:
    pid_file = tmp_path / "s" / "trials" / "1" / "worker.pid"
    killed: list[int] = []

    def kill_worker_of_trial_1() -> None:
        _wait_for(pid_file)
        time.sleep(0.5)  # mid-candidate
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    killer = threading.Thread(target=kill_worker_of_trial_1, daemon=True)
    killer.start()
    study = run_search(_config(tmp_path, workers=2))
    killer.join(timeout=5)
    assert killed and killed[0] != os.getpid()
    trials = study.get_trials()
    assert trials[1].state == FAIL and "worker died" in trials[1].user_attrs["fail_reason"]
    retries = [t for t in trials if t.user_attrs.get("retry_of") == 1]
    assert len(retries) == 1 and retries[0].state == COMPLETE
    assert plan_of(retries[0]) == plan_of(trials[1])  # the same plan, retried once
    complete = study.get_trials(states=(COMPLETE,))
    assert len(complete) == 3 and {t.user_attrs.get("reference") for t in complete} == {"fp32", "int8", "seeds"}
    # every timing happened in this process (the target host), none in a worker
    assert all(t.user_attrs["provenance"]["host"] == os.uname().nodename for t in complete)
    assert not any((Path(t.user_attrs["artifact"]).parent / "worker.pid").exists() for t in complete)  # told: gone


def test_more_workers_than_the_machine_has_cpus_is_refused_before_anything_runs(tmp_path: Path) -> None:
    cpus = os.cpu_count() or 1
    with pytest.raises(YolotuneError, match=rf"--workers {cpus + 1} needs {cpus + 1} CPUs; this machine has {cpus}"):
        run_search(_config(tmp_path, workers=cpus + 1))
    assert not list(tmp_path.iterdir())  # no study file, no scan, no Ray session


def test_a_killed_driver_leaves_nothing_lost_and_the_same_command_resumes(tmp_path: Path) -> None:
    tune = Path(sys.executable).parent / "tune"
    args = [str(tune), "run", "--data", "coco8", "--imgsz", "160", "--budget", "3", "--root", str(tmp_path)]
    args += ["--retime-rounds", "0"]  # re-timing is tested apart
    args += ["--study", "s", "--heartbeat-interval", "1"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(tmp_path / "s" / "trials" / "1" / "plan.yaml")
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    before = load_study(study="s", root=tmp_path)
    done_before = {t.number: t.values for t in before.get_trials(states=(COMPLETE,))}
    assert done_before and before.trials[1].state == optuna.trial.TrialState.RUNNING
    time.sleep(3.5)  # longer than the grace period (three heartbeats)
    # a run whose budget is already met still fails the dead driver's trial and, a reference, runs it again
    met = [*args]
    met[met.index("--budget") + 1] = "1"
    subprocess.run(met, capture_output=True, text=True, timeout=600, check=True)
    reaped = load_study(study="s", root=tmp_path)
    assert optuna.trial.TrialState.RUNNING not in [t.state for t in reaped.trials]
    assert [t.state for t in reaped.trials if t.user_attrs.get("retry_of") == 1] == [COMPLETE]
    assert not (tmp_path / "s" / "trials" / "1").exists()  # the killed driver's half-built files went with it
    again = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    after = load_study(study="s", root=tmp_path)
    assert after.trials[1].state == FAIL
    assert after.trials[1].user_attrs["fail_reason"] == f"its driver stopped (process {proc.pid} is gone)"
    retry = next(t for t in after.trials if t.user_attrs.get("retry_of") == 1)
    assert retry.state == COMPLETE and plan_of(retry) == plan_of(after.trials[1])
    assert {n: after.trials[n].values for n in done_before} == done_before  # completed trials untouched
    assert len(after.get_trials(states=(COMPLETE,))) == 3
    assert optuna.trial.TrialState.RUNNING not in [t.state for t in after.trials]


@pytest.mark.parametrize("wait_s", [0.0, 3.5], ids=["at-once", "after-grace"])
def test_a_reference_of_a_killed_driver_still_runs_when_the_budget_is_met(tmp_path: Path, wait_s: float) -> None:
    tune = Path(sys.executable).parent / "tune"
    args = [str(tune), "run", "--data", "coco8", "--imgsz", "160", "--budget", "3", "--root", str(tmp_path)]
    args += ["--retime-rounds", "0", "--study", "s", "--heartbeat-interval", "1"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(tmp_path / "s" / "trials" / "1" / "plan.yaml")  # the INT8 reference is running
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    # at once, before its heartbeat goes stale, or after the grace period: found at start (its driver's
    # process is gone), queued behind the seeds reference, and still run although that meets the budget
    time.sleep(wait_s)
    met = [*args]
    met[met.index("--budget") + 1] = "2"
    resumed = subprocess.run(met, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    study = load_study(study="s", root=tmp_path)
    done = [t.user_attrs.get("reference") for t in study.get_trials(states=(COMPLETE,))]
    assert sorted(done) == ["fp32", "int8", "seeds"]
    assert {t.state for t in study.trials} == {COMPLETE, FAIL}  # nothing RUNNING or left WAITING
    assert study.trials[1].user_attrs["fail_reason"] == f"its driver stopped (process {proc.pid} is gone)"


def test_sigterm_stops_a_search_with_ray_workers_as_cleanly_as_one_without(tmp_path: Path) -> None:
    tune = Path(sys.executable).parent / "tune"
    args = [str(tune), "run", "--data", "coco8", "--imgsz", "160", "--budget", "3", "--root", str(tmp_path)]
    args += ["--retime-rounds", "0", "--study", "s", "--workers", "2"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(tmp_path / "s" / "trials" / "1" / "plan.yaml")  # Ray started, candidates building
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    # Ray's own SIGTERM handler (sys.exit, then a core dump and abort) is not the one that runs
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("interrupted: what was measured is kept")
    study = load_study(study="s", root=tmp_path)
    reasons = {t.user_attrs.get("fail_reason") for t in study.get_trials(states=(FAIL,))}
    assert reasons == {"interrupted"}
    assert optuna.trial.TrialState.RUNNING not in [t.state for t in study.trials]


def test_two_drivers_started_together_on_one_new_sqlite_study_share_its_trials(tmp_path: Path) -> None:
    tune = Path(sys.executable).parent / "tune"
    args = [str(tune), "run", "--data", "coco8", "--imgsz", "160", "--budget", "2", "--root", str(tmp_path)]
    args += ["--retime-rounds", "0", "--study", "both"]
    runs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    for run, (_, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, err
    study = load_study(study="both", root=tmp_path)
    # the references were queued once, and no queued trial was taken by both drivers
    references = [t.user_attrs.get("reference") for t in study.trials if t.user_attrs.get("reference")]
    assert sorted(references) == ["fp32", "int8", "seeds"]
    assert not study.get_trials(states=(FAIL,)), [t.user_attrs.get("fail_reason") for t in study.trials]
    assert {"fp32", "int8"} <= {t.user_attrs.get("reference") for t in study.get_trials(states=(COMPLETE,))}


def test_joining_an_existing_ray_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    import tempfile

    from yolotune._env import workspace_dir

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray = Path(sys.executable).parent / "ray"
    token = workspace_dir() / "ray_auth_token"  # the token the local-instance tests use (Ray caches it)
    if not token.exists():
        token.write_text(os.urandom(32).hex())
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    temp = Path(tempfile.mkdtemp(prefix="yt-ray-"))
    head = [str(ray), "start", "--head", f"--port={port}", "--num-cpus=2", f"--temp-dir={temp}"]
    head += ["--include-dashboard=false", "--disable-usage-stats"]
    subprocess.run(head, env=env, check=True, capture_output=True, timeout=120)
    try:
        monkeypatch.setenv("RAY_AUTH_MODE", "token")
        monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
        study = run_search(_config(tmp_path, budget=2, workers=2, ray_address=f"127.0.0.1:{port}"))
        complete = study.get_trials(states=(COMPLETE,))
        assert [t.user_attrs.get("reference") for t in complete] == ["fp32", "int8"]
        assert not (tmp_path / "s" / "ray").exists()  # no local instance was started
    finally:
        subprocess.run([str(ray), "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def test_a_program_that_started_ray_itself_keeps_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    import tempfile

    from yolotune._env import workspace_dir

    token = workspace_dir() / "ray_auth_token"  # the token the local-instance tests use (Ray caches it)
    if not token.exists():
        token.write_text(os.urandom(32).hex())
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # before Ray is imported: it reads them once
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    import ray

    temp = tempfile.mkdtemp(prefix="yt-ray-")  # short: Ray's socket paths
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp)
    try:
        study = run_search(_config(tmp_path, budget=2, workers=2))
        complete = study.get_trials(states=(COMPLETE,))
        assert [t.user_attrs.get("reference") for t in complete] == ["fp32", "int8"]
        assert ray.is_initialized()  # the program's Ray is left to the program
        assert not (tmp_path / "s" / "ray").exists()  # no local instance was started
        with socket.socket() as other:  # a cluster address that answers: this Ray is still the one used
            other.bind(("127.0.0.1", 0))
            other.listen()
            address = f"127.0.0.1:{other.getsockname()[1]}"
            with pytest.raises(YolotuneError, match=r"already called ray.init\(\); leave out --ray-address"):
                run_search(_config(tmp_path, budget=3, workers=2, ray_address=address))
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def test_a_killed_driver_with_ray_workers_is_resumed_too(tmp_path: Path) -> None:
    tune = Path(sys.executable).parent / "tune"
    args = [str(tune), "run", "--data", "coco8", "--imgsz", "160", "--budget", "3", "--root", str(tmp_path)]
    args += ["--retime-rounds", "0"]  # re-timing is tested apart
    args += ["--study", "s", "--heartbeat-interval", "1", "--workers", "2"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(tmp_path / "s" / "trials" / "1" / "worker.pid")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    time.sleep(3.5)  # longer than the grace period
    again = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    study = load_study(study="s", root=tmp_path)
    assert len(study.get_trials(states=(COMPLETE,))) == 3
    assert optuna.trial.TrialState.RUNNING not in [t.state for t in study.trials]
    failed = study.get_trials(states=(FAIL,))
    # a lost FP32 reference runs again first: a reference queued ahead of its retry is put back behind it
    lost = [t for t in failed if not t.user_attrs["fail_reason"].startswith("queued again behind the FP32 reference")]
    assert lost and all("its driver stopped" in t.user_attrs["fail_reason"] for t in lost)
    retried = {t.user_attrs.get("retry_of") for t in study.trials}
    assert all(t.number in retried for t in failed)  # every trial the dead driver left is retried once


def test_fine_tuning_on_cuda_declares_a_gpu_per_task_and_a_cluster_without_one_is_a_clear_error(
    tmp_path: Path,
) -> None:
    import dataclasses

    import torch

    config = _config(tmp_path, workers=2)
    cuda = dataclasses.replace(config, settings=dataclasses.replace(config.settings, train_device="cuda:0"))
    if torch.cuda.is_available():  # pragma: no cover - GPU machines only
        pytest.skip("this machine has a GPU; the refusal is for clusters without one")
    with pytest.raises(YolotuneError, match="fine-tuning on CUDA needs 2 GPUs; the Ray cluster has 0"):
        run_search(cuda)
    one = dataclasses.replace(cuda, workers=1)
    with pytest.raises(YolotuneError, match="no CUDA device on this machine"):
        run_search(one)


def test_a_local_ray_link_left_by_a_deleted_study_is_removed_by_the_next_run(tmp_path: Path) -> None:
    import tempfile

    from yolotune.search._executors import _local_ray_dir

    system_tmp = Path(tempfile.gettempdir())
    gone = system_tmp / f"yolotune-ray-test{os.getpid()}"  # a killed run's link to a study deleted since
    gone.unlink(missing_ok=True)
    gone.symlink_to(tmp_path / "deleted" / "ray", target_is_directory=True)
    alive = system_tmp / f"yolotune-ray-live{os.getpid()}"  # another study's, still there
    (tmp_path / "other").mkdir()
    alive.unlink(missing_ok=True)
    alive.symlink_to(tmp_path / "other", target_is_directory=True)
    try:
        link = _local_ray_dir(tmp_path / "study" / "ray")
        assert link.resolve() == (tmp_path / "study" / "ray").resolve() and len(str(link)) < 60
        assert not gone.is_symlink() and alive.is_symlink()
    finally:
        gone.unlink(missing_ok=True)
        alive.unlink(missing_ok=True)


def test_a_callback_that_raises_with_trials_in_flight_leaves_none_running(tmp_path: Path) -> None:
    optuna.logging.set_verbosity(optuna.logging.DEBUG)  # the caller's, whatever other tests left
    config = _config(tmp_path, workers=2)

    def broken(outcome: object, study: optuna.Study) -> None:
        raise ValueError("my callback broke")

    with pytest.raises(ValueError, match="my callback broke"):
        run_search(config, on_trial=broken)
    study = load_study(study=config.name, root=tmp_path)
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))  # no heartbeat needs to go stale
    failed = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert failed and all(
        t.user_attrs["fail_reason"] == "the search stopped: ValueError: my callback broke" for t in failed
    )
    assert optuna.logging.get_verbosity() == optuna.logging.DEBUG  # the library left Optuna's logging as it was
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    assert len(run_search(config).get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 3  # and it resumes
