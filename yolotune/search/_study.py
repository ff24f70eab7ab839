"""Opening a study for a search: create it, or resume it only for the same job.

A study records its job (model, data, image size, target, space, export and calibration
formats), its constraints and the device that times it; a run that asks for another job under
the same study name is refused in one line, and a run on the same device under another setup is
warned about.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import yaml

from yolotune import _yaml
from yolotune._warn import warn_once
from yolotune.compression import CALIBRATION_FORMAT, PRUNING_FORMAT
from yolotune.compression import ultralytics_adapter as adapter
from yolotune.errors import YolotuneError
from yolotune.evaluators import Provenance, target_spec
from yolotune.search._candidate import file_digest
from yolotune.search._config import DIRECTIONS, METRIC_NAMES, SearchConfig
from yolotune.studies import constraints_of
from yolotune.studies._storage import (
    artifact_dir,
    claim_folder,
    open_storage,
)

__all__ = [
    "absolute_files",
    "constraints_of",
    "device_words",
    "fine_applies",
    "open_study",
    "open_study_for_run",
    "say_setup_changes",
    "space_digest",
]


logger = logging.getLogger(__name__)


def _sampler(config: SearchConfig, *, resumed_at: int = 0) -> optuna.samplers.BaseSampler:
    """The study's sampler, seeded by ``config.seed`` and the number of trials already in the study.

    A resumed run must not replay the random draws of the run before it (a sampler seeded the
    same way each run proposes the same first plans again), yet stay reproducible.
    """
    seed = config.seed + 1_000_003 * resumed_at
    if config.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.NSGAIISampler(population_size=config.population, seed=seed)


def open_study(config: SearchConfig) -> optuna.Study:
    """Create the study, or load it when it exists (checking it describes the same job).

    The job (model, data, image size, target, space) and the constraints are recorded in the
    study's user attributes; a run that asks for another job or other constraints under the same
    study name is refused, and a run that leaves the constraints out uses the recorded ones.
    """
    return open_study_for_run(config)[0]


def open_study_for_run(
    config: SearchConfig, *, timed_on: dict[str, Any] | None = None, data_digests: dict[str, str] | None = None
) -> tuple[optuna.Study, bool, optuna.storages.BaseStorage]:
    """``open_study``, also saying whether this call created the study (only its creator seeds it).

    ``timed_on`` (the device that times, and the INT8 weight width built for it) is recorded by the
    run that creates the study; a run on another device is refused, since its latencies would not
    compare. ``data_digests`` (``Dataset.digests`` of ``config.data``, worked out here when not
    given) is compared with the study's, or recorded. Returns the storage too: Optuna wraps it in a
    cache inside the study, and heartbeats go to it.
    """
    optuna.logging.set_verbosity(logging.WARNING)
    storage = open_storage(config.storage_url, heartbeat_interval=config.heartbeat_interval)
    created = True
    try:
        study = optuna.create_study(
            study_name=config.name, storage=storage, directions=DIRECTIONS, sampler=_sampler(config)
        )
    except optuna.exceptions.DuplicatedStudyError:
        created = False
        study = optuna.load_study(study_name=config.name, storage=storage, sampler=_sampler(config))
        study.sampler = _sampler(config, resumed_at=len(study.get_trials(deepcopy=False)))
    if study.directions != DIRECTIONS:
        raise YolotuneError(f"study '{config.name}' in {config.storage_url} is not a yolotune study")
    try:  # its trial files go to <root>/<study>: not a folder another storage's study of that name writes
        claim_folder(study, config.root, config.storage_url)
    except YolotuneError:
        if created:  # leave no empty study behind: the same command with --root creates it again
            with contextlib.suppress(Exception):
                optuna.delete_study(study_name=config.name, storage=storage)
                if config.storage is None and not optuna.get_all_study_names(storage=storage):
                    (config.root / f"{config.name}.db").unlink()  # nor the default file made for it
        raise
    from yolotune.assets import prepare_dataset, resolve_data, resolve_model

    spec = target_spec(config.settings.target)
    model_file = resolve_model(config.model)
    job: dict[str, Any] = {
        "model": _job_name(config.model, model_file),
        "model_digest": file_digest(model_file),
        "data": _job_name(config.data, resolve_data(config.data)),
        "data_digest": data_digests or prepare_dataset(config.data).digests,
        "imgsz": config.settings.imgsz,
        "target": config.settings.target,
        "space": config.space or ("default-fine" if config.fine else "default"),
        "space_digest": space_digest(config.space),
        "fine": config.fine and fine_applies(config.space),
        "export": adapter.EXPORT_FORMAT,
        "calibration": CALIBRATION_FORMAT,
        "pruning": PRUNING_FORMAT,
        "activations": list(spec.activations),
        "sensitivity": None
        if config.sensitivity_drop is None
        else {
            "max_drop": config.sensitivity_drop,
            "ratio": config.sensitivity_ratio,
            "recovery": config.sensitivity_recovery,
        },
    }
    wanted = {"max_map_drop": config.max_map_drop, "max_latency_ms": config.max_latency_ms}
    recorded = study.user_attrs.get("job")
    if recorded is None:
        study.set_user_attr("job", job)
        if timed_on is not None:
            study.set_user_attr("timed_on", timed_on)
        # how to rebuild the target for `tune export` (a user YAML target may not be loaded there)
        study.set_user_attr("target", {**spec.to_dict(), "device_url": config.settings.device_url})
        study.set_user_attr("constraints", wanted)
        study.set_user_attr("artifact_store", str(artifact_dir(config.root, config.name).resolve()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(METRIC_NAMES)
        return study, created, storage
    if recorded.get("export") != job["export"]:
        was = recorded.get("export", "Ultralytics' plain ONNX export")
        raise YolotuneError(
            f"study '{config.name}' was measured on {was}, this yolotune exports {job['export']}: "
            "latencies would not compare; use another --study name"
        )
    if recorded.get("calibration") != job["calibration"]:
        was = recorded.get("calibration", "onnxruntime's default entropy bins (the same ranges as minmax)")
        raise YolotuneError(
            f"study '{config.name}' was calibrated with {was}, this yolotune calibrates {job['calibration']}: "
            "entropy results would not compare; use another --study name"
        )
    if recorded.get("activations") != job["activations"]:
        if recorded.get("activations"):  # the target's definition (or its default) changed since
            listed = ", ".join(recorded["activations"])
            raise YolotuneError(
                f"study '{config.name}' searched {'/'.join(recorded['activations'])} INT8 activations; target "
                f"{job['target']} now runs {'/'.join(spec.activations)}: give it `activations: [{listed}]` "
                "(--targets-file) to resume the study, or use another --study name"
            )
        raise YolotuneError(  # before activation types were recorded: int8 ones were asymmetric then
            f"study '{config.name}' searched uint8/int8 INT8 activations; target {job['target']} now runs "
            f"{'/'.join(spec.activations)} (and int8 ones are quantized symmetrically): use another --study name"
        )
    if recorded.get("pruning") != job["pruning"]:
        if recorded.get("pruning") is not None or _rounded_down(study):
            was = recorded.get(
                "pruning", "torch-pruning's round_to (kept channels rounded down, 10% of 32 /16 kept 16)"
            )
            raise YolotuneError(
                f"study '{config.name}' was pruned with {was}, this yolotune keeps the nearest multiple "
                f"({job['pruning']}): pruned plans would not compare; use another --study name"
            )
        recorded = {**recorded, "pruning": job["pruning"]}  # no plan of it was rounded: nothing differs
        study.set_user_attr("job", recorded)
    changed = _job_changes(recorded, job)
    if changed:
        raise YolotuneError(
            f"study '{config.name}' was created for another job ({'; '.join(changed)}): run it with the arguments "
            "it was created with to resume it, or pass another --study name"
        )
    was_data = recorded.get("data_digest")
    if was_data is None:  # a study made before data digests: from now on, its data is held to these
        study.set_user_attr("job", {**recorded, "data_digest": job["data_digest"]})
        was_data = job["data_digest"]
    if edited := [split for split, digest in job["data_digest"].items() if was_data.get(split, digest) != digest]:
        from yolotune.assets import DATA_CHANGED

        raise YolotuneError(
            f"study '{config.name}' was measured on other images or labels than the {' and '.join(edited)} split(s) "
            f"of {job['data']} hold now ({DATA_CHANGED}): restore them, or run from the folder `tune run` ran in, "
            "or pass another --study name"
        )
    # what changes timings (not the agent's address, the one-line description, nor the default image size)
    was = {k: v for k, v in (study.user_attrs.get("target") or {}).items() if k not in _NOT_TIMING}
    changed = [f"{k}: was {was[k]!r}, now {v!r}" for k, v in spec.to_dict().items() if k in was and was[k] != v]
    if changed:
        raise YolotuneError(
            f"study '{config.name}' was timed on target {spec.name} as defined then ({'; '.join(changed)}): "
            "latencies would not compare; restore that definition or pass another --study name"
        )
    was_on = study.user_attrs.get("timed_on")
    if timed_on is not None and was_on is not None and was_on != timed_on:
        raise YolotuneError(
            f"study '{config.name}' was timed on {device_words(was_on)}, this run would time on "
            f"{device_words(timed_on)}: latencies would not compare; resume it there or pass another --study name"
        )
    if timed_on is not None and was_on is None:  # a study from before devices were recorded
        study.set_user_attr("timed_on", timed_on)
    # export re-times on the agent the last run used (an agent may come back at another address)
    study.set_user_attr("target", {**spec.to_dict(), "device_url": config.settings.device_url})
    study.set_user_attr("artifact_store", str(artifact_dir(config.root, config.name).resolve()))
    have = constraints_of(study)
    for key, value in wanted.items():
        if value is not None and value != have.get(key):
            flag = "--" + key.replace("_", "-")
            created_with = f"without {flag}" if have.get(key) is None else f"with {flag} {have.get(key)}"
            raise YolotuneError(
                f"study '{config.name}' was created {created_with}; use another --study name for {flag} {value}"
            )
    return study, created, storage


def _rounded_down(study: optuna.Study) -> bool:
    """Whether a trial of a study made before ``PRUNING_FORMAT`` pruned with ``round_to`` above 1."""
    for t in study.get_trials(deepcopy=False):
        plan = t.user_attrs.get("plan") or {}
        pruning = plan.get("pruning") or {}
        if any(r > 0 for r in (pruning.get("ratios") or {}).values()) and pruning.get("round_to", 1) > 1:
            return True
    return False


def _job_changes(recorded: dict[str, Any], job: dict[str, Any]) -> list[str]:
    """What differs between a study's recorded job and this run's, as ``key: was X, now Y``.

    A model or dataset named two ways (an asset name, a relative or an absolute path) is the same
    when both resolve to the same file, and a model or YAML space is the same when its SHA-256 is;
    keys an older yolotune did not record are not compared.
    """
    from yolotune.assets import resolve_data, resolve_model

    resolvers: dict[str, Callable[[str], Path]] = {"model": resolve_model, "data": resolve_data}
    changes = []
    changed: set[str] = set()
    # a digest changes with its file's path: only a file changed in place is reported as changed
    for key, now in sorted(job.items(), key=lambda item: item[0].endswith("_digest")):
        if key == "data_digest":
            continue  # the same data that holds other files is said on its own (open_study_for_run)
        if key.endswith("_digest") and key.removesuffix("_digest") in changed:
            continue
        was = recorded.get(key, now) if key in _JOB_KEYS_ADDED else recorded.get(key)
        if key == "fine" and key not in recorded:  # before it was recorded, only the default space honoured --fine
            was = recorded.get("space") == "default-fine"
        if was == now:
            continue
        if key in ("space", "model") and job[f"{key}_digest"] and recorded.get(f"{key}_digest") == job[f"{key}_digest"]:
            continue  # the same YAML space or checkpoint, named by another path
        if key == "space" and _same_space_as_before(job, recorded):
            continue
        if key == "space_digest" and (was is None or _same_space_as_before(job, recorded)):
            continue  # a study made before Python spaces were digested, or before YAML ones were parsed
        if key in resolvers:
            with contextlib.suppress(YolotuneError):  # gone since: compare the names
                if resolvers[key](str(was)) == resolvers[key](str(now)):
                    continue
        if key == "space_digest":
            changes.append(f"space file {job['space']} has changed since")
        elif key == "model_digest":
            changes.append(f"model file {job['model']} holds another checkpoint since (its SHA-256 differs)")
        elif key == "space" and job["space_digest"] and recorded.get("space_digest"):
            changes.append(f"space: was {was!r}, now {now!r}, which defines another space")
            changed.add("space_digest")
        else:
            changes.append(f"{key}: was {was!r}, now {now!r}")
        changed.add(key)
    return changes


def _same_space_as_before(job: dict[str, Any], recorded: dict[str, Any]) -> bool:
    """A YAML space recorded by the bytes of its file (older studies), and those bytes are unchanged."""
    space = str(job.get("space", ""))
    return space.endswith((".yaml", ".yml")) and recorded.get("space_digest") == space_digest(space, raw=True)


#: Recorded target fields that do not change how a target times. ``imgsz`` is only the default of
#: ``--imgsz``: the size a study times at is its job's, compared with the job.
_NOT_TIMING = frozenset({"device_url", "description", "name", "imgsz"})


#: Job keys recorded since studies were first made; older studies lack them.
_JOB_KEYS_ADDED = frozenset({"space_digest", "model_digest", "data_digest", "fine"})


def absolute_files(config: SearchConfig) -> SearchConfig:
    """``config`` naming its model and data as its job records them, its study name kept, its root absolute.

    Candidates then find the files, and write theirs, wherever they run (a Ray worker's working
    directory is not the driver's).
    """
    from yolotune.assets import resolve_data, resolve_model

    return dataclasses.replace(
        config,
        study_name=config.name,
        root=Path(config.root).resolve(),
        model=_job_name(config.model, resolve_model(config.model)),
        data=_job_name(config.data, resolve_data(config.data)),
    )


def _job_name(given: str, resolved: Path) -> str:
    """How a job records a model or dataset: an absolute path, or the bare name of an asset.

    A relative path would mean another file when the study is resumed or exported from another
    directory; an asset name stays valid wherever the assets live.
    """
    return str(resolved) if Path(given).expanduser().exists() else given


def space_digest(space: str | None, *, raw: bool = False) -> str | None:
    """SHA-256 of a space's definition, or ``None`` for the default space.

    A YAML space is digested by its options (comments, key order and layout do not count); with
    ``raw``, by its bytes, as studies made before recorded it. A Python space is digested by the
    source file that defines it (``file.py:attr``, or the module of ``module:attr``) and the name
    of the callable.
    """
    if not space:
        return None
    if space.endswith((".yaml", ".yml")):
        path = Path(space)
        if not path.is_file():
            return None
        if raw:
            return hashlib.sha256(path.read_bytes()).hexdigest()
        try:
            options = _yaml.load(path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError):
            return hashlib.sha256(path.read_bytes()).hexdigest()
        return hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()
    source = _space_source(space)
    if source is None:
        return None
    attr = space.rpartition(":")[2]  # the same file names several spaces
    return hashlib.sha256(source.read_bytes() + f"\n:{attr}".encode()).hexdigest()


def fine_applies(space: str | None) -> bool:
    """Whether ``--fine`` changes ``space``: the default one, or a YAML file setting neither ``fine`` nor ``units``."""
    if not space:
        return True
    if not space.endswith((".yaml", ".yml")):
        return False  # a Python space is refused with --fine
    try:
        options = _yaml.load(Path(space).read_text()) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return True
    return not isinstance(options, dict) or not {"fine", "units"} & set(options)  # not a mapping: load_space says


def _space_source(space: str) -> Path | None:
    """The source file of a Python space (``file.py:attr`` or ``module:attr``), when it can be found."""
    module, _, _ = space.rpartition(":")
    if module.endswith(".py"):
        return Path(module) if Path(module).is_file() else None
    import importlib.util

    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    origin = found.origin if found is not None else None
    return Path(origin) if origin and Path(origin).is_file() else None


#: What else changes timings on the same device, said in a warning when a run differs from the first.
_SETUP_WORDS = {
    "host": "host",
    "runtime_version": "runtime",
    "power_mode": "power mode",
    "clocks_pinned": "clocks pinned",
}


def say_setup_changes(study: optuna.Study, timing: Provenance) -> None:
    """Warn when this run times on the same device under another setup (host, runtime, power mode, clocks).

    A study is refused on another device (``timed_on``); the same CPU or board on another host, or
    a Jetson after a reboot that undid ``jetson_clocks``, is allowed but said, since its latencies
    may not compare. The setup is recorded (``timed_setup``) by the first run and again after a
    change, so each change is said once; older studies start recording now.
    """
    now = {
        "host": timing.host,
        "runtime_version": timing.runtime_version,
        "power_mode": timing.settings.get("power_mode"),
        "clocks_pinned": timing.settings.get("clocks_pinned"),
    }
    was = study.user_attrs.get("timed_setup")
    if not isinstance(was, dict):
        study.set_user_attr("timed_setup", now)
        return
    changed = [f"{_SETUP_WORDS[k]} {was[k]} → {v}" for k, v in now.items() if k in was and was[k] != v]
    if changed:
        study.set_user_attr("timed_setup", now)  # said once per change, not on every resume after it
        warn_once(
            logger,
            "study '%s' was timed on the same device with another setup (%s): its latencies may not compare with "
            "this run's; `tune retime --fresh` times the front again side by side",
            study.study_name,
            ", ".join(changed),
        )


def device_words(timed_on: dict[str, Any]) -> str:
    """``AMD EPYC with 8-bit INT8 weights``: a recorded ``timed_on`` in words."""
    return f"{timed_on.get('device') or 'an unnamed device'} with {timed_on.get('int8_weight_bits')}-bit INT8 weights"
