"""Export a chosen trial: its deployable model, its plan as a recipe, and a re-measurement.

The file handed out is the one the trial measured (copied from the trial directory, or fetched
from the study's Optuna artifact store when that directory is gone). It is then validated for
mAP through the same code path and timed on the same target, so the user sees recorded and
re-measured numbers side by side.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import yaml

from yolotune._env import owner_gone, owner_name, package_versions
from yolotune._files import check_folder
from yolotune._numbers import is_whole
from yolotune.errors import YolotuneError
from yolotune.studies._front import fp32_reference
from yolotune.studies._retimed import Retiming, current_retiming
from yolotune.studies._storage import deployable_file, find_artifact_dir, recorded_folder

if TYPE_CHECKING:
    from yolotune.assets import Dataset
    from yolotune.evaluators import Target

__all__ = ["ExportResult", "export_trial", "study_target"]


@dataclass(frozen=True, kw_only=True)
class ExportResult:
    """What ``export_trial`` wrote and measured.

    Attributes:
        trial: Trial number.
        model: The deployable model in the output directory.
        recipe: ``recipe.yaml``: plan, job, recorded metrics, library versions.
        plan: ``plan.yaml`` (usable with ``tune eval --plan``).
        recorded: Metrics recorded by the search (``map50_95``, ``map50``, ``size_bytes``, ``latency_ms``),
            and, when known, ``speedup`` over the FP32 reference as ``tune show`` gives it; after a
            re-timing of the front, ``latency_ms`` and ``speedup`` are its medians (``retimed_rounds``).
        measured: The same metrics re-measured on the exported file (empty when not re-measured).
            ``latency_ms`` is the median over ``rounds`` timings; when the FP32 reference trial's
            file is on this host, each round times it right after the exported file (in reversed
            order every other round), and ``reference_ms`` and ``speedup`` (the median per-round
            ratio, with quartiles ``speedup_q1``/``speedup_q3``) are given.
        warnings: What the user should know before shipping the file (one line each): the trial
            breaks the study's constraints (``--max-map-drop``, ``--max-latency-ms``; the recipe's
            ``feasible`` is false only then), is a duplicate of another trial, has no re-measured
            speed-up for want of the FP32 reference's file, or was re-timed on another device.
    """

    trial: int
    model: Path
    recipe: Path
    plan: Path
    recorded: dict[str, float]
    measured: dict[str, float]
    warnings: tuple[str, ...] = ()


#: Job keys that record the version of a yolotune step, not a setting of the trial.
FORMAT_KEYS = ("export", "calibration", "pruning")


def _eval_command(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> str:
    """``tune eval`` of a trial's plan on the study's job (model, data, size, target), as far as recorded."""
    import shlex

    folder = recorded_folder(study)  # <root>/<study>, holding trials/
    owner = trial.user_attrs.get("duplicate_of", trial.number)  # a duplicate's plan file is its twin's
    plan = folder / "trials" / str(owner) / "plan.yaml" if folder is not None else None
    job = study.user_attrs.get("job") or {}
    words = ["tune", "eval"]
    for flag, key in (("--model", "model"), ("--data", "data"), ("--imgsz", "imgsz"), ("--target", "target")):
        if isinstance(job.get(key), str | int):
            words += [flag, str(job[key])]
    words += ["--plan", str(plan) if plan is not None and plan.is_file() else "PLAN.yaml"]
    return shlex.join(words)


def _find_trial(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    if not is_whole(number):
        raise YolotuneError(f"a trial number is a whole number (see `tune show`); got {number!r}")
    trials = study.get_trials(deepcopy=False)
    found = next((t for t in trials if t.number == number), None)
    if found is None:
        held = f"trials 0–{len(trials) - 1}" if trials else "no trials yet: run `tune run` first"
        raise YolotuneError(f"study '{study.study_name}' has no trial {number} ({held})")
    if found.state == optuna.trial.TrialState.PRUNED and found.user_attrs.get("fidelity") == "rung0":
        raise YolotuneError(
            f"trial {number} stopped at rung 0 of a multi-fidelity search: it was never evaluated in full; "
            f"export a COMPLETE trial (see `tune show`), or evaluate its plan with `{_eval_command(study, found)}`"
        )
    if found.state != optuna.trial.TrialState.COMPLETE:
        reason = found.user_attrs.get("fail_reason")
        detail = f" ({reason})" if reason else ""
        raise YolotuneError(f"trial {number} is {found.state.name}{detail}; export a COMPLETE trial (see `tune show`)")
    return found


def _fetch(trial: optuna.trial.FrozenTrial, artifacts: Path | None, dest: Path) -> None:
    """Copy the trial's deployable file to ``dest``: from its trial directory, else the artifact store."""
    found = deployable_file(trial, artifacts)
    if found is None:
        raise YolotuneError(
            f"trial {trial.number}'s model is gone ({trial.user_attrs.get('artifact')} and the artifact store); "
            "export from where the study's files are (--root), or rebuild it with `tune eval --plan` on its plan"
        )
    shutil.copy2(found, dest)


def export_trial(
    study: optuna.Study,
    number: int,
    out_dir: Path | str,
    *,
    artifacts: Path | str | None = None,
    remeasure: bool = True,
    rounds: int = 11,
    device_url: str | None = None,
    device_token: str | None = None,
) -> ExportResult:
    """Write trial ``number``'s deployable model and recipe to ``out_dir`` and re-measure it.

    Args:
        study: The study.
        number: A COMPLETE trial's number.
        out_dir: Output directory (created).
        artifacts: The study's artifact store directory (fallback source of the model).
        remeasure: Re-validate mAP and re-time latency on the study's target.
        rounds: Timings of the exported file, each paired with one of the FP32 reference file when
            it is on this host: as many as ``tune run`` re-times the front with by default, since one
            timing on a shared machine spreads about ±15%.
        device_url: The device agent of a device target (default: the one the study recorded).
        device_token: That agent's token.

    Raises:
        YolotuneError: No such trial, not COMPLETE, its model cannot be found, or the target
            cannot time it (a device target whose agent is unreachable).
    """
    out_dir = Path(out_dir)
    check_folder(out_dir)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise YolotuneError(f"--rounds must be a whole number ≥1; got {rounds!r}")
    trial = _find_trial(study, number)
    number = trial.number  # an int, also for a numpy integer from trials_dataframe()
    job: dict[str, Any] = study.user_attrs.get("job") or {}
    store = Path(artifacts) if artifacts is not None else find_artifact_dir(study)
    _refuse_study_files(out_dir, trial, store)
    target = _target(study, job, device_url=device_url, device_token=device_token) if remeasure else None
    dataset = _dataset(job) if remeasure else None  # both checked before any file is written
    name = Path(str(trial.user_attrs.get("artifact", "model.onnx"))).name
    earlier = _earlier_export(out_dir, writes=(name, *_EXPORT_FILES))
    made = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    # written aside first: Ctrl-C or a failed re-measurement leaves no half export, and an earlier
    # export in the folder stays whole until this one is
    staging = out_dir / f".export-{owner_name()}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        done = _export_files(
            study, trial, staging, name=name, store=store, target=target, dataset=dataset, rounds=rounds
        )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if made and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    written = sorted(
        staging.iterdir(), key=lambda p: p.name == "recipe.yaml"
    )  # the recipe last: it marks a whole export
    for stale in earlier:  # an earlier export's files that this one does not replace: none may pass for this one's
        if not (staging / stale.name).exists():
            stale.unlink(missing_ok=True)
    for path in written:
        os.replace(path, out_dir / path.name)
    staging.rmdir()
    return dataclasses.replace(
        done, model=out_dir / done.model.name, recipe=out_dir / done.recipe.name, plan=out_dir / done.plan.name
    )


#: What an export writes beside its model file.
_EXPORT_FILES = ("plan.yaml", "recipe.yaml", "remeasured.json")


def _earlier_export(out_dir: Path, *, writes: tuple[str, ...]) -> list[Path]:
    """The files of an earlier export in ``out_dir``, which this one replaces; refuse to replace anything else.

    An earlier export is known by its ``recipe.yaml`` (``study``, ``trial``, ``model_file``): its
    model file, plan, recipe and re-measurement go, other files stay. Any other file of a name
    this export writes (``writes``) is the user's own: refused, never overwritten. Hidden
    ``.export-<pid>@<host>.partial`` folders of exports killed on this host are removed.

    Raises:
        YolotuneError: ``out_dir`` holds a file of one of those names that no export wrote.
    """
    if not out_dir.is_dir():
        return []
    for partial in out_dir.glob(".export-*.partial"):  # another host's may still be writing: owner_gone says no
        if owner_gone(partial.name.removeprefix(".export-").removesuffix(".partial")):
            shutil.rmtree(partial, ignore_errors=True)  # an export killed mid-way (kill -9) left it
    try:
        recipe = yaml.safe_load((out_dir / "recipe.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        recipe = None
    earlier: list[Path] = []
    if isinstance(recipe, dict) and {"study", "trial", "model_file"} <= recipe.keys():
        earlier = [out_dir / str(Path(str(recipe["model_file"])).name), *(out_dir / f for f in _EXPORT_FILES)]
    taken = [f for f in writes if (out_dir / f).exists() and out_dir / f not in earlier]
    if taken:
        raise YolotuneError(
            f"--out {out_dir} already holds {', '.join(taken)}, not from a `tune export` (no recipe.yaml of one): "
            "the export would replace them; pass a new or empty folder"
        )
    return earlier


def _refuse_study_files(out_dir: Path, trial: optuna.trial.FrozenTrial, store: Path | None) -> None:
    """Refuse an ``out_dir`` among the study's own trial folders or artifact store: the export would overwrite them."""
    own = [store] if store is not None else []
    if trial.user_attrs.get("artifact"):
        own.append(Path(str(trial.user_attrs["artifact"])).parent.parent)  # <root>/<study>/trials
    where = out_dir.resolve()
    for folder in own:
        if where == folder.resolve() or folder.resolve() in where.parents:
            raise YolotuneError(
                f"--out {out_dir} is inside the study's own files ({folder}), which the export would overwrite; "
                "pass another folder"
            )


def _export_files(
    study: optuna.Study,
    trial: optuna.trial.FrozenTrial,
    out_dir: Path,
    *,
    name: str,
    store: Path | None,
    target: Target | None,
    dataset: Dataset | None,
    rounds: int,
) -> ExportResult:
    """``export_trial``'s files: the model, ``plan.yaml``, ``recipe.yaml`` and, re-measured, ``remeasured.json``."""
    from yolotune.spaces import CompressionPlan

    number = trial.number
    job: dict[str, Any] = study.user_attrs.get("job") or {}
    plan = CompressionPlan.from_dict(trial.user_attrs["plan"])
    model, recipe = out_dir / name, out_dir / "recipe.yaml"
    _fetch(trial, store, model)
    plan_path = plan.save(out_dir / "plan.yaml")
    recorded = {k: float(v) for k, v in (trial.user_attrs.get("metrics") or {}).items()}
    if "size_bytes" in recorded:
        recorded["size_bytes"] = int(recorded["size_bytes"])
    retiming = current_retiming(study)
    twin = trial.user_attrs.get("duplicate_of")  # the same plan measured before: its re-timing is this one's
    retimed = retiming.point(int(twin) if twin is not None else number) if retiming else None
    reference = fp32_reference(study)
    constraints = {k: v for k, v in (study.user_attrs.get("constraints") or {}).items() if v is not None}
    warnings = _broken_constraints(trial, reference, constraints)
    feasible = not warnings
    if twin is not None:  # the sampler proposed the plan again: nothing of this trial was built
        warnings = (
            *warnings,
            f"trial {number} is trial {twin}'s plan sampled again: its model file and measurements are trial {twin}'s",
        )
    recipe.write_text(
        yaml.safe_dump(
            {
                "study": study.study_name,
                "trial": number,
                "duplicate_of": twin,
                # the study's job; the versions of how yolotune exports, calibrates and prunes apart,
                # so "calibration: entropy-kl512" is not read as the trial's calibration (that is the plan's)
                "job": {k: v for k, v in job.items() if k not in FORMAT_KEYS},
                "formats": {k: job[k] for k in FORMAT_KEYS if k in job},
                "model_file": name,
                "constraints": constraints or None,
                "feasible": feasible,
                "deploy": _deploy_notes(model, imgsz=job.get("imgsz")),
                "plan": plan.to_dict(),
                "recorded": {
                    **recorded,
                    "fidelity": trial.user_attrs.get("fidelity", "full"),
                    "rung0": trial.user_attrs.get("rung0"),  # what rung 0 measured, for a promoted trial
                    "latency": trial.user_attrs.get("latency"),
                    "provenance": trial.user_attrs.get("provenance"),
                    "retimed": retimed.to_dict() if retimed else None,
                },
                "versions": package_versions(),
            },
            sort_keys=False,
            allow_unicode=True,  # a path of the user's as they wrote it, not \xFC escapes
        ),
        encoding="utf-8",
    )
    # what `tune show` lists for this trial: the re-timed medians, else the search's paired timing
    if retimed is not None:
        recorded.update(latency_ms=retimed.latency_ms, speedup=retimed.speedup, retimed_rounds=retimed.rounds)
    elif reference is not None and recorded.get("latency_ms"):
        paired = trial.user_attrs.get("reference_ms") or reference.values[2]
        recorded["speedup"] = float(paired) / recorded["latency_ms"]
    measured: dict[str, float] = {}
    if target is not None and dataset is not None:
        fp32 = None
        if reference is not None and reference.number != number:
            fp32 = deployable_file(reference, store)
            if fp32 is None:
                warnings = (
                    *warnings,
                    f"speed-up not re-measured: the file of the FP32 reference trial {reference.number} is in neither "
                    "its trial folder nor the study's artifact store on this host",
                )
        try:
            measured, per_round = _remeasure(
                model, dataset, imgsz=int(job["imgsz"]), target=target, reference=fp32, rounds=rounds
            )
        except YolotuneError as exc:  # e.g. the device agent lost while timing
            raise YolotuneError(f"{exc} (or export without re-measuring: --no-remeasure)") from exc
        where = target.provenance(imgsz=int(job["imgsz"]))
        searched_on = (study.user_attrs.get("timed_on") or {}).get("device")
        if searched_on and searched_on != where.device:  # another agent's device: allowed, but said
            warnings = (
                *warnings,
                f"re-timed on {where.device} ({where.host}); the study was timed on {searched_on}: the re-measured "
                "latency and speed-up do not compare with the recorded ones",
            )
        timed_on = {"device": where.device, "host": where.host}
        (out_dir / "remeasured.json").write_text(json.dumps({**measured, **per_round, **timed_on}, indent=2))
    return ExportResult(
        trial=number,
        model=model,
        recipe=recipe,
        plan=plan_path,
        recorded=recorded,
        measured=measured,
        warnings=warnings,
    )


def _broken_constraints(
    trial: optuna.trial.FrozenTrial, reference: optuna.trial.FrozenTrial | None, constraints: dict[str, float]
) -> tuple[str, ...]:
    """One line per study constraint the trial breaks (Optuna's constraint values above 0)."""
    broken = {k for k, v in trial.constraints.items() if v > 0}
    lines = []
    if "map_drop" in broken and reference is not None:
        drop = (reference.values[0] - trial.values[0]) * 100
        lines.append(
            f"trial {trial.number} is off the front: its mAP50-95 {trial.values[0]:.4f} is {drop:.1f} points below "
            f"FP32's, and the study allows {constraints['max_map_drop'] * 100:g} (--max-map-drop)"
        )
    if "latency" in broken:
        lines.append(
            f"trial {trial.number} is off the front: it timed {trial.values[2]:.2f} ms, over the study's "
            f"--max-latency-ms {constraints['max_latency_ms']:g}"
        )
    return tuple(lines)


def _deploy_notes(model: Path, *, imgsz: int | None) -> dict[str, Any] | None:
    """What a user needs to run the exported ONNX file: its input and outputs, classes, and how."""
    if model.suffix != ".onnx":
        return None
    import onnx

    graph = onnx.load(str(model), load_external_data=False)

    def tensors(values: Any) -> dict[str, Any]:
        return {
            v.name: {
                "shape": [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim],
                "type": onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type).lower(),
            }
            for v in values
        }

    from yolotune.compression import ultralytics_adapter

    meta = {p.key: p.value for p in graph.metadata_props}
    try:  # Ultralytics writes the class names as a Python dict literal
        classes = ast.literal_eval(meta["names"])
    except (KeyError, ValueError, SyntaxError):
        classes = None
    post = ultralytics_adapter.postprocessing()
    return {
        "inputs": tensors(graph.graph.input),
        "outputs": tensors(graph.graph.output),
        "input_format": "RGB, NCHW, scaled to 0-1; letterboxed to the input size as Ultralytics does: the longer "
        "side resized to it keeping the aspect ratio, then padded evenly on both sides with value 114",
        "output_format": "per anchor: box centre x, centre y, width, height in input pixels (undo the letterbox: "
        "subtract the padding, divide by the resize scale), then one score per class, already a probability; "
        "no NMS",
        "postprocess": {
            **post,
            "how": f"keep boxes scoring at least the confidence, then NMS {post['nms']} at IoU {post['iou']:g}, at "
            f"most {post['max_detections']} boxes; the mAP was measured at confidence "
            f"{post['confidence_validated']:g} (Ultralytics' validator), Ultralytics' predict keeps "
            f"{post['confidence_predict']:g}",
        },
        "classes": classes,
        "run_with": f"ultralytics: YOLO('{model.name}', task='detect').predict(source, imgsz={imgsz}); or onnxruntime",
    }


def _target(study: optuna.Study, job: dict[str, Any], *, device_url: str | None, device_token: str | None) -> Target:
    """The study's target, checked before any work."""
    try:
        return study_target(study, device_url=device_url, device_token=device_token)
    except YolotuneError as exc:
        raise YolotuneError(f"{exc} (or export without re-measuring: --no-remeasure)") from None


def study_target(study: optuna.Study, *, device_url: str | None = None, device_token: str | None = None) -> Target:
    """The target a study was timed on, rebuilt from what the study recorded, and checked.

    Args:
        study: A yolotune study.
        device_url: The device agent of a device target (default: the one the study recorded).
        device_token: That agent's token.

    Raises:
        YolotuneError: The study does not record its job, or the target cannot time (a device
            target whose agent is unreachable).
    """
    from yolotune.evaluators import TargetSpec, get_target

    job: dict[str, Any] = study.user_attrs.get("job") or {}
    if not {"data", "imgsz", "target"} <= set(job):
        raise YolotuneError("the study does not record its job (data, imgsz, target); cannot re-measure")
    recorded = dict(study.user_attrs.get("target") or {})
    url = device_url or recorded.pop("device_url", None)
    recorded.pop("device_url", None)
    spec = TargetSpec.from_dict(job["target"], recorded) if recorded else job["target"]
    target = get_target(spec, device_url=url, device_token=device_token)
    target.check()
    return target


def _dataset(job: dict[str, Any]) -> Dataset:
    """The study's validation data, checked before any work."""
    from yolotune.assets import DATA_CHANGED, prepare_dataset

    try:
        dataset = prepare_dataset(job["data"])
    except YolotuneError as exc:
        raise YolotuneError(
            f"{exc} (the study recorded data '{job['data']}': export from where `tune run` ran, "
            "or export without re-measuring: --no-remeasure)"
        ) from None
    recorded = job.get("data_digest")
    recorded = recorded if isinstance(recorded, dict) else {}  # none: a study made before data digests
    if recorded.get("val") not in (None, dataset.digests["val"]):  # the split re-measured: the only one compared
        raise YolotuneError(
            f"dataset {job['data']} now holds other images or labels than the study was measured on "
            f"({DATA_CHANGED}): re-measuring there would not compare; export from where `tune run` ran, "
            "or without re-measuring: --no-remeasure"
        )
    return dataset


def _remeasure(
    model: Path, dataset: Dataset, *, imgsz: int, target: Target, reference: Path | None = None, rounds: int = 1
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """mAP, size and latency of ``model`` through the same code path the search used.

    ``model`` is timed ``rounds`` times. With ``reference`` (the FP32 reference trial's file), each
    round times that file too, right after ``model`` (before it every other round, as ``tune
    retime`` does), and the result holds ``reference_ms`` and the median per-round ``speedup``
    with its quartiles.

    Returns:
        The metrics, and the per-round timings (``rounds_ms``, ``reference_rounds_ms``).
    """
    from yolotune.evaluators import compute_lease, measure_map, measure_size

    with compute_lease():  # a search's timings on this host wait for it, as for its own validations
        accuracy = measure_map(model, dataset, imgsz=imgsz)
    ms: list[float] = []
    ref_ms: list[float] = []
    pair = [(model, ms)] if reference is None else [(model, ms), (reference, ref_ms)]
    for k in range(rounds):
        for path, timings in pair if k % 2 == 0 else reversed(pair):
            timings.append(target.benchmark(path, imgsz=imgsz).median_ms)
    measured = {
        "map50_95": accuracy.map50_95,
        "map50": accuracy.map50,
        "size_bytes": measure_size(model),
        "latency_ms": statistics.median(ms),
        "rounds": rounds,
    }
    per_round = {"rounds_ms": ms}
    if reference is not None:
        paired = Retiming(reference_trial=-1, trials=(0,), complete=0, reference_ms=(*ref_ms,), timings={0: (*ms,)})
        point = paired.point(0)  # the statistics `tune retime` gives: median per-round ratio, quartiles
        assert point is not None
        measured.update(
            reference_ms=point.reference_ms, speedup=point.speedup, speedup_q1=point.q1, speedup_q3=point.q3
        )
        per_round["reference_rounds_ms"] = ref_ms
    return measured, per_round
