"""Time the trials near the front again once a search is done, in rounds with the FP32 reference.

During the search each trial is timed once (and the reference right after it). On a shared machine
one timing spreads about ±15% from one second to the next (BENCHMARKS.md, "Timing the FP32
reference alongside each trial"): too much to tell a 2.05× plan from a 1.9× one, or to say which
of two such plans is on the front. So at the end, every feasible trial that noise could put on the
front (``near_front``) is timed once per round, with the reference file, for ``rounds`` rounds, in
reversed order every other round, as ``bench/shared_ranges.py`` does. The front is then found on
the median per-round speed-ups (``pareto_front``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import optuna

from yolotune.errors import SearchStopped, YolotuneError
from yolotune.search._candidate import file_digest
from yolotune.search._study import device_words
from yolotune.studies._front import fp32_reference
from yolotune.studies._retimed import NOISE_BAND, RETIMED_ATTR, Retiming, current_retiming, near_front
from yolotune.studies._storage import deployable_file, find_artifact_dir

if TYPE_CHECKING:
    from yolotune.evaluators import Target

__all__ = ["reference_file", "retime_front", "retime_study"]


def reference_file(study: optuna.Study, *, artifacts: Path | None = None) -> tuple[int, Path] | None:
    """The FP32 reference trial and its deployable file, when measured and on this host.

    ``artifacts``: the study's artifact store, where a file moved or deleted since is found too
    (default: the store the study recorded).
    """
    t = fp32_reference(study)
    if t is None:
        return None
    path = deployable_file(t, artifacts if artifacts is not None else find_artifact_dir(study))
    return (t.number, path) if path is not None else None


def retime_front(
    study: optuna.Study,
    *,
    target: Target,
    imgsz: int,
    rounds: int,
    band: float = NOISE_BAND,
    fresh: bool = False,
    on_step: Callable[[int, str], None] | None = None,
    artifacts: Path | None = None,
) -> Retiming | None:
    """Time the trials near the front ``rounds`` times each, with the FP32 reference file, and record it.

    Each round times the reference and every chosen trial once, in reversed order every other
    round. The record (study user attribute ``retimed``) is written after every round, so an
    interrupted re-timing keeps its rounds and the next call goes on from there while no trial has
    completed since; otherwise the trials are chosen and timed afresh. A round whose reference
    timing fails ends the call; the rounds done are kept, and the next call goes on from them.

    Args:
        study: A yolotune study.
        target: The study's target.
        imgsz: Input size the study times at.
        rounds: Rounds wanted.
        band: A trial is re-timed unless another feasible one, as accurate and as small, is faster
            by more than this (``near_front``).
        fresh: Start afresh even when the recorded re-timing could go on.
        on_step: Called with ``(trial number, "re-timing k/rounds")`` before each timing.
        artifacts: The study's artifact store: a trial whose file was moved or deleted is timed
            from its copy there (default: the store the study recorded).

    Returns:
        The re-timing (``failed`` names trials whose file is not on this host or whose timing
        failed: they are left out of it), or ``None`` when there is nothing to pair with (no FP32
        reference file on this host) or ``rounds`` is 0.

    Raises:
        SearchStopped: The target itself stopped timing (a device agent lost: its ``check()``
            fails); the rounds done are recorded, and no trial is blamed for it.
    """
    if rounds < 1:
        return None
    store = artifacts if artifacts is not None else find_artifact_dir(study)
    found = reference_file(study, artifacts=store)
    if found is None:
        return None
    ref_number, ref_path = found
    near = {t.number: t for t in near_front(study, band=band)}
    near.pop(ref_number, None)
    chosen = {n: deployable_file(t, store) or Path(str(t.user_attrs.get("artifact", ""))) for n, t in near.items()}
    digests = {n: file_digest(p) for n, p in chosen.items() if p.is_file()}
    digests[ref_number] = file_digest(ref_path)
    complete = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    retiming = current_retiming(study)
    if (
        fresh
        or retiming is None
        or retiming.reference_trial != ref_number
        or retiming.trials != tuple(chosen)
        or retiming.digests != digests
    ):
        missing = {
            n: f"its file {p} is not on this host, nor in the study's artifact store"
            for n, p in chosen.items()
            if n not in digests
        }
        retiming = Retiming(
            reference_trial=ref_number,
            trials=tuple(chosen),
            complete=complete,
            timings={n: () for n in chosen if n not in missing},
            digests=digests,
            target=target.name,
            failed=missing,
        )
    elif ref_number in retiming.failed:  # the reference's last timing failed: its rounds done still pair
        retiming = dataclasses.replace(
            retiming, failed={n: why for n, why in retiming.failed.items() if n != ref_number}
        )
        study.set_user_attr(RETIMED_ATTR, retiming.to_dict())
    for k in range(retiming.rounds, rounds):
        alive = [n for n in retiming.trials if n not in retiming.failed]
        order = [ref_number, *alive]
        timed: dict[int, float] = {}
        failed = dict(retiming.failed)
        for n in order if k % 2 == 0 else reversed(order):
            if on_step is not None:
                on_step(n, f"re-timing {k + 1}/{rounds}")
            try:
                timed[n] = target.benchmark(ref_path if n == ref_number else chosen[n], imgsz=imgsz).median_ms
            except YolotuneError as exc:
                try:  # the target itself gone (a device agent lost): not this file's failure
                    target.check()
                except YolotuneError as lost:
                    raise SearchStopped(
                        f"the target stopped timing during re-timing round {k + 1} ({lost}); the {k} round(s) "
                        f"done are kept: run the same command again{' without --fresh' if fresh else ''} to go on",
                        study=study,
                    ) from exc
                failed[n] = str(exc)
                if n == ref_number:
                    break  # nothing to pair this round with: keep the rounds done
        if ref_number in failed:  # the round is dropped, and with it the other failures met in it
            retiming = dataclasses.replace(retiming, failed={**retiming.failed, ref_number: failed[ref_number]})
            study.set_user_attr(RETIMED_ATTR, retiming.to_dict())
            break
        retiming = dataclasses.replace(
            retiming,
            reference_ms=(*retiming.reference_ms, timed[ref_number]),
            timings={n: (*ms, timed[n]) if n in timed else ms for n, ms in retiming.timings.items()},
            failed=failed,
        )
        study.set_user_attr(RETIMED_ATTR, retiming.to_dict())
    return retiming


def retime_study(
    study: optuna.Study,
    *,
    rounds: int,
    fresh: bool = False,
    device_url: str | None = None,
    device_token: str | None = None,
    on_step: Callable[[int, str], None] | None = None,
    artifacts: Path | None = None,
) -> Retiming | None:
    """``retime_front`` on the target the study recorded, after the search (``tune retime``).

    ``artifacts``: the study's artifact store, as ``retime_front`` takes it.

    Raises:
        YolotuneError: The target cannot time, or it is another device than the one that timed
            the study (its timings would not compare).
    """
    from yolotune.studies import recorded_folder, searching, study_target

    job = study.user_attrs.get("job") or {}
    target = study_target(study, device_url=device_url, device_token=device_token)
    imgsz = int(job["imgsz"])
    was = study.user_attrs.get("timed_on")
    now = target.provenance(imgsz=imgsz).device
    if was is not None and was.get("device") != now:
        raise YolotuneError(
            f"study '{study.study_name}' was timed on {device_words(was)}, this target times on {now}: "
            "re-time it where it was searched"
        )
    if device_url:  # an agent back at another address: export and the next retime find it there
        study.set_user_attr("target", {**(study.user_attrs.get("target") or {}), "device_url": device_url})
    with contextlib.ExitStack() as marked:
        if (folder := recorded_folder(study)) is not None:  # `tune delete` waits for the rounds to end
            marked.enter_context(searching(folder, use="retime"))
        return retime_front(
            study, target=target, imgsz=imgsz, rounds=rounds, fresh=fresh, on_step=on_step, artifacts=artifacts
        )
