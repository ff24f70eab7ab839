"""Heartbeats for the trials a driver runs, and failing the trials of drivers that died.

Optuna records heartbeats only inside ``study.optimize``; the driver uses ask/tell, so it beats
itself through the storage's public ``record_heartbeat``. A RUNNING trial whose heartbeat is
older than the grace period belongs to a driver that died (killed, machine lost): it is failed
with that reason and its plan queued once more. Live drivers keep beating, so their trials are
never touched. Each trial also records its driver (``driver``: ``_env.process_tag``): a trial whose
driver ran on this host and is gone is failed at once, without waiting out the grace period (a
search resumed right after ``kill -9``), on any storage.

Optuna's journal storage has no heartbeats: there the driver records each beat as a trial system
attribute (``BEAT_ATTR``: the beating host's time and the grace period), so a driver on another host,
or in a container since restarted, that died with a trial RUNNING is found on a shared journal file
too. Hosts' clocks differ, so a beat's time is never compared with this host's: a trial is silent
once the beat it records has not changed for its grace period by this process's own clock
(``BeatWatch``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from types import TracebackType

import optuna
from optuna.storages import RDBStorage

from yolotune._env import tag_alive, tag_gone, tag_pid
from yolotune.studies._storage import DRIVER_ATTR

__all__ = ["BEAT_ATTR", "DRIVER_ATTR", "BeatWatch", "Heartbeat", "fail_stale_trials"]

#: The trial system attribute a driver beats in on storages without heartbeats of their own (the
#: journal): ``{"at": <wall-clock seconds>, "grace": <seconds>}``.
BEAT_ATTR = "yolotune_heartbeat"


class Heartbeat:
    """A daemon thread that records a heartbeat for each trial this driver is running.

    Args:
        storage: The study's storage as opened (``open_storage``). An RDB storage beats at its own
            heartbeat interval (none: no beats); another one (the journal) in ``BEAT_ATTR``.
        interval: Seconds between beats on a storage without heartbeats of its own; a trial silent
            for three of them is stale (``None``: no beats there).
    """

    def __init__(self, storage: optuna.storages.BaseStorage, *, interval: float | None = None) -> None:
        self._storage = storage
        if isinstance(storage, RDBStorage):
            rdb = storage.get_heartbeat_interval()
            interval = float(rdb) if rdb else None
        self._interval = interval
        self._trial_ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        if self._interval is not None:
            self._thread = threading.Thread(target=self._run, name="yolotune-heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def add(self, trial_id: int) -> None:
        """Start beating for a trial (and beat once now)."""
        with self._lock:
            self._trial_ids.add(trial_id)
        self._beat({trial_id})

    def beat_now(self) -> frozenset[int]:
        """Beat for every trial this driver runs, now; return their ids.

        Called before looking for stale trials: the thread waits on the monotonic clock, which
        stands still while the machine is suspended, and the storage compares wall-clock times,
        so after a suspend this driver's own trials would look stale until the thread wakes.
        """
        with self._lock:
            ids = frozenset(self._trial_ids)
        self._beat(set(ids))
        return ids

    def remove(self, trial_id: int) -> None:
        """Stop beating for a finished trial."""
        with self._lock:
            self._trial_ids.discard(trial_id)

    def _beat(self, trial_ids: set[int]) -> None:
        if self._interval is None:
            return
        for trial_id in trial_ids:
            with contextlib.suppress(Exception):  # a finished trial, a storage hiccup: next beat
                if isinstance(self._storage, RDBStorage):
                    self._storage.record_heartbeat(trial_id)
                else:
                    beat = {"at": time.time(), "grace": 3 * self._interval}
                    self._storage.set_trial_system_attr(trial_id, BEAT_ATTR, beat)

    def _run(self) -> None:
        assert self._interval is not None
        while not self._stop.wait(self._interval):
            with self._lock:
                ids = set(self._trial_ids)
            self._beat(ids)


class BeatWatch:
    """When this process last saw each trial's ``BEAT_ATTR`` change, by its own monotonic clock.

    Another host's clock may run seconds or minutes apart from this one's, so the time a beat records
    is only compared with the one it recorded before. The monotonic clock stands still while this
    machine sleeps: a watcher that slept judges no one stale for it.
    """

    def __init__(self) -> None:
        self._seen: dict[int, tuple[object, float]] = {}

    def silent(self, trial_id: int, beat: dict[str, object]) -> bool:
        """Whether ``beat`` is the one this watcher saw for ``trial_id`` longer than its grace period ago."""
        now, grace = time.monotonic(), beat.get("grace")
        first = self._seen.get(trial_id)
        if first is None or first[0] != beat.get("at"):
            self._seen[trial_id] = (beat.get("at"), now)
            return False
        return isinstance(grace, (int, float)) and now - first[1] > grace


def fail_stale_trials(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    *,
    keep: frozenset[int] = frozenset(),
    watch: BeatWatch | None = None,
) -> list[optuna.trial.FrozenTrial]:
    """Fail RUNNING trials whose driver stopped beating; return them (still holding their params).

    Each gets ``fail_reason`` before it is failed. The caller queues the retries. A trial whose
    driver is seen running on this host is never failed, however late its beats.

    Args:
        study: The study.
        storage: Its storage as opened (``open_storage``), not the study's cached wrapper.
        keep: Trial ids (``_trial_id``) of the caller's own running trials: never stale to it.
        watch: What the caller saw of the journal beats (``BEAT_ATTR``) in its earlier calls; a
            beat unchanged for its grace period since is stale. ``None``: journal beats not judged.
    """
    stale: dict[int, str] = {}
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for t in running:
        if tag_gone(driver := t.user_attrs.get(DRIVER_ATTR)):
            stale[t._trial_id] = f"its driver stopped (process {tag_pid(driver)} is gone)"
        elif watch and isinstance(beat := t.system_attrs.get(BEAT_ATTR), dict) and watch.silent(t._trial_id, beat):
            stale[t._trial_id] = f"its driver stopped (no heartbeat for {beat['grace']:g} s)"
    # a driver of this host seen running keeps its trials, however late its beats (a machine that slept)
    keep = keep | {t._trial_id for t in running if tag_alive(t.user_attrs.get(DRIVER_ATTR))}
    interval = storage.get_heartbeat_interval() if isinstance(storage, RDBStorage) else None
    if isinstance(storage, RDBStorage) and interval is not None:
        grace = storage.grace_period or 2 * interval
        for trial_id in storage._get_stale_trial_ids(study._study_id):
            stale.setdefault(trial_id, f"its driver stopped (no heartbeat for {grace} s)")
    failed = []
    # Optuna's own fail_stale_trials cannot record a reason: a FAIL trial's attributes are frozen
    for trial_id, reason in stale.items():
        if trial_id in keep:
            continue
        try:
            storage.set_trial_user_attr(trial_id, "fail_reason", reason)
            if storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL):
                failed.append(storage.get_trial(trial_id))
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another driver failed it first
    return failed
