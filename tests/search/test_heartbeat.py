"""Heartbeats of a driver's own trials, and failing the trials of a driver that died."""

from __future__ import annotations

import time
from pathlib import Path

import optuna

from yolotune.search._heartbeat import Heartbeat, fail_stale_trials
from yolotune.studies import open_storage


def test_a_driver_never_fails_its_own_trials_as_stale_even_after_a_suspend(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=1)
    study = optuna.create_study(study_name="s", storage=storage)
    with Heartbeat(storage) as heartbeat:
        mine, theirs = study.ask(), study.ask()
        heartbeat.add(mine._trial_id)
        storage.record_heartbeat(theirs._trial_id)  # another driver's trial, which then dies
        heartbeat._stop.set()  # the machine sleeps: this driver's thread beats no more
        time.sleep(4.5)  # past the grace period (3 intervals; SQLite counts whole seconds) for both
        keep = heartbeat.beat_now()
        # its beat is recorded: another driver looking for stale trials now finds only the dead one's
        assert storage._get_stale_trial_ids(study._study_id) == [theirs._trial_id]
        failed = fail_stale_trials(study, storage, keep=keep)
    assert [t.number for t in failed] == [theirs.number]
    assert failed[0].user_attrs["fail_reason"] == "its driver stopped (no heartbeat for 3 s)"
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {mine.number: optuna.trial.TrialState.RUNNING, theirs.number: optuna.trial.TrialState.FAIL}
    # without the beat, its own trial would have looked stale too
    time.sleep(4.5)
    assert [t.number for t in fail_stale_trials(study, storage)] == [mine.number]


def test_a_trial_whose_driver_on_this_host_is_gone_is_failed_at_once_on_any_storage(tmp_path: Path) -> None:
    import subprocess
    import sys

    from yolotune._env import process_tag
    from yolotune.search._heartbeat import DRIVER_ATTR

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # another driver, still running
    try:
        from yolotune._env import _started

        time.sleep(0.2)
        ours = process_tag()
        drivers = {
            "dead": {**ours, "pid": int(gone.stdout), "started": "1"},  # killed by SIGKILL: its process has ended
            "reused": {**ours, "pid": live.pid, "started": "1"},  # its pid now another process's, started later
            "live": {**ours, "pid": live.pid, "started": _started(live.pid)},
            "self": ours,
            "elsewhere": {**ours, "host": "another-host"},
            "other-namespace": {**ours, "pid": int(gone.stdout), "pid_ns": "another"},  # a container's pids
            "untagged": None,
        }
        for url in (f"sqlite:///{tmp_path / 's.db'}", f"journal:{tmp_path / 'j.log'}"):  # the journal: no heartbeats
            storage = open_storage(url, heartbeat_interval=60)
            study = optuna.create_study(study_name="s", storage=storage)
            trials = {}
            for name, tag in drivers.items():
                trials[name] = study.ask()
                if tag is not None:
                    trials[name].set_user_attr(DRIVER_ATTR, tag)
                if hasattr(storage, "record_heartbeat"):
                    storage.record_heartbeat(trials[name]._trial_id)  # all beat recently: none stale by heartbeat
            failed = {t.number: t.user_attrs["fail_reason"] for t in fail_stale_trials(study, storage)}
            assert failed == {
                trials["dead"].number: f"its driver stopped (process {int(gone.stdout)} is gone)",
                trials["reused"].number: f"its driver stopped (process {live.pid} is gone)",
            }, url
    finally:
        live.kill()
        live.wait(timeout=30)
