"""Heartbeats for the trials a driver runs, and failing the trials of drivers that died.

Optuna records heartbeats only inside ``study.optimize``; the driver uses ask/tell, so it beats
itself through the storage's public ``record_heartbeat``. A RUNNING trial whose heartbeat is
older than the grace period belongs to a driver that died (killed, machine lost): it is failed
with that reason and its plan queued once more. Live drivers keep beating, so their trials are
never touched. Each trial also records its driver (``driver``: ``_env.process_tag``): a trial whose
driver ran on this host and is gone is failed at once, without waiting out the grace period (a
search resumed right after ``kill -9``), and so it is on journal storages, which have no heartbeats.
"""

from __future__ import annotations

import contextlib
import threading
from types import TracebackType

import optuna
from optuna.storages import RDBStorage

from yolotune._env import tag_gone, tag_pid
from yolotune.studies._storage import DRIVER_ATTR

__all__ = ["DRIVER_ATTR", "Heartbeat", "fail_stale_trials"]


class Heartbeat:
    """A daemon thread that records a heartbeat for each trial this driver is running."""

    def __init__(self, storage: optuna.storages.BaseStorage) -> None:
        self._storage = storage if isinstance(storage, RDBStorage) else None
        interval = self._storage.get_heartbeat_interval() if self._storage else None
        self._interval = float(interval) if interval else None
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
        if self._storage is None:
            return
        for trial_id in trial_ids:
            with contextlib.suppress(Exception):  # a finished trial, a storage hiccup: next beat
                self._storage.record_heartbeat(trial_id)

    def _run(self) -> None:
        assert self._interval is not None
        while not self._stop.wait(self._interval):
            with self._lock:
                ids = set(self._trial_ids)
            self._beat(ids)


def fail_stale_trials(
    study: optuna.Study, storage: optuna.storages.BaseStorage, *, keep: frozenset[int] = frozenset()
) -> list[optuna.trial.FrozenTrial]:
    """Fail RUNNING trials whose driver stopped beating; return them (still holding their params).

    Each gets ``fail_reason`` before it is failed. The caller queues the retries.

    Args:
        study: The study.
        storage: Its storage as opened (``open_storage``), not the study's cached wrapper.
        keep: Trial ids (``_trial_id``) of the caller's own running trials: never stale to it.
    """
    stale: dict[int, str] = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if tag_gone(driver := t.user_attrs.get(DRIVER_ATTR)):
            stale[t._trial_id] = f"its driver stopped (process {tag_pid(driver)} is gone)"
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
