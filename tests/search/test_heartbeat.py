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


def test_a_journal_shared_by_hosts_fails_a_silent_drivers_trial_by_its_own_heartbeats(tmp_path: Path) -> None:
    from yolotune._env import process_tag
    from yolotune.search._heartbeat import BEAT_ATTR, DRIVER_ATTR, BeatWatch

    storage = open_storage(f"journal:{tmp_path / 'j.log'}")  # Optuna keeps no heartbeats in a journal
    study = optuna.create_study(study_name="s", storage=storage)
    elsewhere = {**process_tag(), "host": "another-host"}  # its pid means nothing here: judged by beats only
    watch = BeatWatch()
    with Heartbeat(storage, interval=1) as heartbeat:
        mine, theirs, asleep, skewed = study.ask(), study.ask(), study.ask(), study.ask()
        for trial in (theirs, asleep, skewed):
            trial.set_user_attr(DRIVER_ATTR, elsewhere)
        heartbeat.add(mine._trial_id)
        heartbeat.add(theirs._trial_id)
        heartbeat.remove(theirs._trial_id)  # its driver, on another host, is killed: no more beats
        # a live driver on a host whose clock runs an hour behind: its beats look old, but they change
        behind = {"at": time.time() - 3600, "grace": 3}
        storage.set_trial_system_attr(skewed._trial_id, BEAT_ATTR, behind)
        assert fail_stale_trials(study, storage, watch=watch) == []  # first seen now
        time.sleep(1.5)
        storage.set_trial_system_attr(skewed._trial_id, BEAT_ATTR, {**behind, "at": behind["at"] + 1.5})
        assert fail_stale_trials(study, storage, watch=watch) == []  # within the grace period (3 intervals)
        beat = study.get_trials()[theirs.number].system_attrs[BEAT_ATTR]
        assert beat["grace"] == 3 and abs(beat["at"] - time.time()) < 3
        time.sleep(2.5)
        storage.set_trial_system_attr(skewed._trial_id, BEAT_ATTR, {**behind, "at": behind["at"] + 4})
        assert fail_stale_trials(study, storage) == []  # without what was seen before, journal beats say nothing
        failed = fail_stale_trials(study, storage, keep=heartbeat.beat_now(), watch=watch)
    assert [(t.number, t.user_attrs["fail_reason"]) for t in failed] == [
        (theirs.number, "its driver stopped (no heartbeat for 3 s)")
    ]
    # the beating drivers' trials stay; one that never beat (an older yolotune's) is not judged
    states = {t.number: t.state for t in study.get_trials()}
    assert states[mine.number] == states[asleep.number] == states[skewed.number] == optuna.trial.TrialState.RUNNING


def test_a_driver_seen_running_on_this_host_keeps_its_trial_however_late_its_beats(tmp_path: Path) -> None:
    import subprocess
    import sys

    from yolotune._env import _started, process_tag
    from yolotune.search._heartbeat import BEAT_ATTR, DRIVER_ATTR, BeatWatch

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a driver whose machine slept
    try:
        time.sleep(0.2)
        studies = []
        for url in (f"sqlite:///{tmp_path / 's.db'}", f"journal:{tmp_path / 'j.log'}"):
            storage = open_storage(url, heartbeat_interval=1)
            study = optuna.create_study(study_name="s", storage=storage)
            trial = study.ask()
            trial.set_user_attr(DRIVER_ATTR, {**process_tag(), "pid": live.pid, "started": _started(live.pid)})
            if hasattr(storage, "record_heartbeat"):
                storage.record_heartbeat(trial._trial_id)
            else:
                storage.set_trial_system_attr(trial._trial_id, BEAT_ATTR, {"at": time.time(), "grace": 3})
            studies.append((study, storage))
        watch = BeatWatch()
        assert [fail_stale_trials(study, storage, watch=watch) for study, storage in studies] == [[], []]
        time.sleep(4.5)  # silent past the grace period
        assert [fail_stale_trials(study, storage, watch=watch) for study, storage in studies] == [[], []]
        live.kill()
        live.wait(timeout=30)
        assert [t.number for t in fail_stale_trials(study, storage)] == [trial.number]  # gone now
    finally:
        live.kill()
        live.wait(timeout=30)
