"""``tune``: a thin command line over yolotune's Python API (typer + rich)."""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from yolotune._cli import (
    Interrupts,
    SearchProgress,
    WarningLines,
    consoles,
    export_table,
    noisy_timing,
    one_line_errors,
    results_table,
    show_study,
    where_options,
)
from yolotune.errors import PlanError, SearchStopped, YolotuneError

app = typer.Typer(
    name="tune",
    help="Compress YOLO detectors for a target device: prune, quantize, measure.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(asked: bool) -> None:
    if asked:
        from yolotune import __version__

        consoles.out.print(f"yolotune {__version__}", highlight=False)
        raise typer.Exit


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print yolotune's version and exit."),
    ] = False,
) -> None:
    """Compress YOLO detectors for a target device: prune, quantize, measure."""


ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Checkpoint path or asset name.")]
DataOpt = Annotated[str, typer.Option("--data", "-d", help="Data yaml path or asset name.")]
ImgszOpt = Annotated[int | None, typer.Option("--imgsz", help="Square input size (default: the target's).")]
TargetOpt = Annotated[str, typer.Option("--target", "-t", help="Target that times the model (see `tune targets`).")]
DeviceUrlOpt = Annotated[
    str | None, typer.Option("--device-url", help="Device agent of a device target: http://HOST:8765.")
]
DeviceTokenOpt = Annotated[
    Path | None, typer.Option("--device-token-file", help="File holding the device agent's token.")
]
TargetsFileOpt = Annotated[
    Path | None, typer.Option("--targets-file", help="YAML file adding targets (see `tune targets`).")
]


#: ``--out`` of a one-off measurement: by default ``runs/<command>``, numbered as Ultralytics numbers its runs.
OutDirOpt = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="Output directory (default: runs/<command>, then runs/<command>2, ...)."),
]


def _fresh_run_dir(command: str) -> Path:
    """``runs/<command>``, or the first of ``runs/<command>2``, ... not taken (a one-off never overwrites another)."""
    from yolotune.compression import ultralytics_adapter

    return ultralytics_adapter.run_dir(Path("runs") / command)


def _run(label: str, **kwargs: Any) -> Any:
    from yolotune.search import run_candidate

    with consoles.spinner(
        SpinnerColumn(), TextColumn("{task.description}", style="bold", markup=False), TimeElapsedColumn()
    ) as progress:
        task = progress.add_task(label)
        return run_candidate(on_step=lambda step: progress.update(task, description=f"{label}: {step}"), **kwargs)


def _needs(value: object, flag: str, applies: bool, why: str) -> None:
    """Refuse ``flag`` given where it would change nothing (``why`` says what it needs)."""
    if value is not None and not applies:
        raise YolotuneError(f"{flag} {why}")


def _settings(
    imgsz: int | None,
    target: str,
    device_url: str | None = None,
    device_token_file: Path | None = None,
    targets_file: Path | None = None,
) -> Any:
    """Candidate settings for ``target``, checked: unknown targets and unreachable devices fail here."""
    from yolotune.evaluators import add_target_file, needs_reduce_range, target_spec
    from yolotune.search import CandidateSettings, make_target

    if targets_file is not None:
        add_target_file(targets_file)  # workers get the resolved spec from the driver, not the file
    settings = CandidateSettings(
        imgsz=target_spec(target).imgsz if imgsz is None else imgsz,
        target=target,
        device_url=device_url,
        device_token_file=str(device_token_file) if device_token_file else None,
    )
    checked = make_target(settings)
    checked.check()  # before any work
    # the checked target knows its device's CPU (7-bit INT8 weights where its kernels saturate)
    return dataclasses.replace(settings, int8_reduce_range=needs_reduce_range(checked))


@app.command()
@one_line_errors
def baseline(
    model: ModelOpt = "yolov8n-coco.pt",
    data: DataOpt = "tiny_coco",
    imgsz: ImgszOpt = None,
    target: TargetOpt = "local-cpu",
    device_url: DeviceUrlOpt = None,
    device_token_file: DeviceTokenOpt = None,
    targets_file: TargetsFileOpt = None,
    out: OutDirOpt = None,
) -> None:
    """Measure the uncompressed model's FP32 ONNX: mAP, size, latency."""
    from yolotune.search import check_candidate
    from yolotune.spaces import CompressionPlan

    settings = _settings(imgsz, target, device_url, device_token_file, targets_file)
    # a model or data it cannot use is refused before a run folder is taken (as `tune eval` does)
    check_candidate(model=model, data=data, plan=CompressionPlan(), settings=settings)
    out = out or _fresh_run_dir("baseline")
    result = _run("baseline", model=model, data=data, plan=CompressionPlan(), out_dir=out, settings=settings)
    consoles.out.print(results_table([("baseline", result)], None))
    consoles.out.print(f"artifacts and metrics.json in {out}")
    from yolotune.search import untrained

    if why := untrained(result.accuracy.map50_95):
        consoles.warning(why)


@app.command("eval")
@one_line_errors
def eval_(
    plan: Annotated[Path, typer.Option("--plan", "-p", help="Compression plan (YAML or JSON).")],
    model: ModelOpt = "yolov8n-coco.pt",
    data: DataOpt = "tiny_coco",
    imgsz: ImgszOpt = None,
    target: TargetOpt = "local-cpu",
    device_url: DeviceUrlOpt = None,
    device_token_file: DeviceTokenOpt = None,
    targets_file: TargetsFileOpt = None,
    out: OutDirOpt = None,
) -> None:
    """Build and measure one candidate, side by side with the FP32 baseline."""
    from yolotune.search import check_candidate
    from yolotune.spaces import CompressionPlan

    the_plan = CompressionPlan.load(plan)
    settings = _settings(imgsz, target, device_url, device_token_file, targets_file)
    # refuse a plan the model, data or target cannot honour before the baseline's minute of work
    try:
        groups = check_candidate(model=model, data=data, plan=the_plan, settings=settings)
    except PlanError as exc:
        raise PlanError(f"plan file {plan}: {exc}") from exc
    consoles.out.print(f"plan: {the_plan.brief(groups=groups)}")
    out = out or _fresh_run_dir("eval")
    base = _run("baseline", model=model, data=data, plan=CompressionPlan(), out_dir=out / "baseline", settings=settings)
    cand = _run("candidate", model=model, data=data, plan=the_plan, out_dir=out / "candidate", settings=settings)
    consoles.out.print(results_table([("baseline", base), ("candidate", cand)], base))
    if warning := noisy_timing([("baseline", base), ("candidate", cand)]):
        consoles.warning(warning)
    from yolotune.search import untrained

    if why := untrained(base.accuracy.map50_95):  # as `tune baseline` says: the comparison measures nothing
        consoles.warning(why)
    steps = ", ".join(f"{k} {v:.1f}s" for k, v in cand.step_seconds.items())
    consoles.out.print(f"candidate steps: {steps}")
    consoles.out.print(f"deployable: {cand.deployable}\nmetrics: {(out / 'candidate' / 'metrics.json').absolute()}")


@app.command()
@one_line_errors
def run(
    model: ModelOpt = "yolov8n-coco.pt",
    data: DataOpt = "tiny_coco",
    imgsz: ImgszOpt = None,
    target: TargetOpt = "local-cpu",
    device_url: DeviceUrlOpt = None,
    device_token_file: DeviceTokenOpt = None,
    targets_file: TargetsFileOpt = None,
    budget: Annotated[
        int, typer.Option("--budget", "-b", help="Candidates the study should hold (rung-0 stops count).")
    ] = 12,
    study: Annotated[
        str | None,
        typer.Option("--study", "-s", help="Study name (default: made of the model, data, target and size)."),
    ] = None,
    storage: Annotated[
        str | None, typer.Option("--storage", help="Optuna storage URL (default: SQLite <root>/<study>.db).")
    ] = None,
    root: Annotated[Path, typer.Option("--root", help="Studies directory.")] = Path("studies"),
    sampler: Annotated[str, typer.Option("--sampler", help="nsga2, tpe or random.")] = "nsga2",
    population: Annotated[int | None, typer.Option("--population", help="NSGA-II population (default: 8).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Sampler seed.")] = 0,
    space: Annotated[
        str | None,
        typer.Option("--space", help="YAML file narrowing the default space, or module:callable / file.py:callable."),
    ] = None,
    fine: Annotated[bool, typer.Option("--fine", help="One search unit per layer group.")] = False,
    max_map_drop: Annotated[
        float | None, typer.Option("--max-map-drop", help="Largest mAP50-95 drop from FP32 (e.g. 0.01).")
    ] = None,
    max_latency_ms: Annotated[float | None, typer.Option("--max-latency-ms", help="Largest median latency.")] = None,
    workers: Annotated[int, typer.Option("--workers", "-w", help="Candidates built at once (Ray).")] = 1,
    ray_address: Annotated[
        str | None, typer.Option("--ray-address", help="Join this Ray cluster instead of a local instance.")
    ] = None,
    cpus_per_worker: Annotated[int, typer.Option("--cpus-per-worker", help="CPUs each candidate task takes.")] = 1,
    heartbeat_interval: Annotated[
        int, typer.Option("--heartbeat-interval", help="Seconds between heartbeats of running trials.")
    ] = 10,
    train_device: Annotated[
        str, typer.Option("--train-device", help="Where fine-tuning runs: cpu, N or cuda:N (one GPU per Ray task).")
    ] = "cpu",
    multi_fidelity: Annotated[
        bool,
        typer.Option(
            "--multi-fidelity", help="Rung 0 first (no fine-tuning, --rung0-val images); promote those near the front."
        ),
    ] = False,
    rung0_val: Annotated[
        int | None,
        typer.Option("--rung0-val", help="Validation images at rung 0 (with --multi-fidelity; default: all)."),
    ] = None,
    promote_margin: Annotated[
        float | None,
        typer.Option(
            "--promote-margin", help="mAP50-95 margin within which a rung-0 candidate is promoted (default: 0.02)."
        ),
    ] = None,
    sensitivity_drop: Annotated[
        float | None,
        typer.Option(
            "--sensitivity-drop",
            help="Scan first: prune each group alone; search prunes only groups losing ≤ this mAP50-95.",
        ),
    ] = None,
    sensitivity_ratio: Annotated[
        float | None,
        typer.Option("--sensitivity-ratio", help="Share of channels the scan prunes from each group (default: 0.25)."),
    ] = None,
    sensitivity_recovery: Annotated[
        str | None,
        typer.Option("--sensitivity-recovery", help="Recovery of each scan probe: bn, bias or ls (default: bias)."),
    ] = None,
    time_reference: Annotated[
        bool,
        typer.Option(
            "--time-reference/--no-time-reference",
            help="Time the FP32 reference again after each trial: speed-ups from timings seconds apart.",
        ),
    ] = True,
    retime_rounds: Annotated[
        int,
        typer.Option(
            "--retime-rounds",
            help="At the end, time the trials near the front in this many rounds with the FP32 reference (0: don't).",
        ),
    ] = 11,
) -> None:
    """Search compression plans; the same command resumes the study."""
    from yolotune.search import SearchConfig, preflight, run_search
    from yolotune.studies import open_storage

    # options that only mean something with another one: refused alone rather than ignored
    _needs(population, "--population", sampler == "nsga2", "sets NSGA-II's population; not --sampler " + sampler)
    _needs(promote_margin, "--promote-margin", multi_fidelity, "applies to a --multi-fidelity search; add that")
    for value, flag in ((sensitivity_ratio, "--sensitivity-ratio"), (sensitivity_recovery, "--sensitivity-recovery")):
        _needs(value, flag, sensitivity_drop is not None, "applies with --sensitivity-drop; add --sensitivity-drop D")
    given: dict[str, Any] = {  # the rest take SearchConfig's defaults
        k: v
        for k, v in {
            "population": population,
            "promote_margin": promote_margin,
            "sensitivity_ratio": sensitivity_ratio,
            "sensitivity_recovery": sensitivity_recovery,
        }.items()
        if v is not None
    }
    config = SearchConfig(
        model=model,
        data=data,
        budget=budget,
        settings=dataclasses.replace(
            _settings(imgsz, target, device_url, device_token_file, targets_file), train_device=train_device
        ),
        study_name=study,
        storage=storage,
        root=root,
        sampler=sampler,
        seed=seed,
        space=space,
        fine=fine,
        max_map_drop=max_map_drop,
        max_latency_ms=max_latency_ms,
        workers=workers,
        ray_address=ray_address,
        cpus_per_worker=cpus_per_worker,
        heartbeat_interval=heartbeat_interval,
        multi_fidelity=multi_fidelity,
        rung0_val=rung0_val,
        sensitivity_drop=sensitivity_drop,
        time_reference=time_reference,
        retime_rounds=retime_rounds,
        **given,
    )
    preflight(config)  # bad input fails here in one line, before any display
    open_storage(config.storage_url)  # and so does a storage that cannot be opened
    with Interrupts().installed() as interrupts:
        progress = SearchProgress(name=config.name, budget=budget, interrupts=interrupts)
        try:
            result = run_search(
                config,
                on_trial=progress.on_trial,
                on_step=progress.on_step,
                on_scan=progress.on_scan,
                on_open=progress.on_open,
                on_retime_failed=progress.on_retime_failed,
            )
        except SearchStopped as exc:
            stopped: SearchStopped | None = exc
            result = exc.study
        else:
            stopped = None
        finally:
            progress.stop()
    show_study(result, where=where_options(config.root, config.storage))
    from yolotune.studies import shown_url

    consoles.out.print(f"study '{config.name}' in {shlex.quote(shown_url(config.storage_url))}", highlight=False)
    if stopped is not None:
        raise stopped  # one line, exit code 2, after the front of what was measured


StudyOpt = Annotated[str | None, typer.Option("--study", "-s", help="Study name (may be left out when there is one).")]
StorageOpt = Annotated[str | None, typer.Option("--storage", help="Optuna storage URL (default: SQLite under --root).")]
RootOpt = Annotated[Path, typer.Option("--root", help="Studies directory.")]


@app.command()
@one_line_errors
def show(
    study: StudyOpt = None,
    storage: StorageOpt = None,
    root: RootOpt = Path("studies"),
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the study's summary and front as one JSON object instead.")
    ] = False,
) -> None:
    """Print a study's Pareto front, fastest first (by paired speed-up once re-timed, else by latency)."""
    from yolotune.studies import load_study, summarize

    st = load_study(study=study, storage=storage, root=root)
    if as_json:
        print(json.dumps({"study": st.study_name, **summarize(st).to_dict()}, indent=2))
        return
    show_study(st, where=where_options(root, storage))


@app.command()
@one_line_errors
def report(
    study: StudyOpt = None,
    storage: StorageOpt = None,
    root: RootOpt = Path("studies"),
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="HTML file (default: report.html in the study's folder, else ./<study>-report.html)."
        ),
    ] = None,
) -> None:
    """Write a self-contained HTML report of a study (plotly)."""
    from yolotune.studies import load_study, study_dir, study_folder, write_report

    st = load_study(study=study, storage=storage, root=root)
    folder = study_folder(st, root, default_storage=storage is None)
    if folder is not None:
        default = folder / "report.html"
    elif storage is None and not study_dir(root, st.study_name).exists():  # the default file, its folder deleted
        default = study_dir(root, st.study_name) / "report.html"
    else:  # none surely its own: <root>/<study> may be another study's
        default = Path(f"{st.study_name}-report.html")
    path = write_report(st, out or default)
    consoles.out.print(f"report: {path}")


@app.command()
@one_line_errors
def delete(
    study: Annotated[str, typer.Option("--study", "-s", help="The study to delete (always named).")],
    storage: StorageOpt = None,
    root: RootOpt = Path("studies"),
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask first.")] = False,
) -> None:
    """Delete a study: its trials, its folder of trial files, and its SQLite file when it holds no other."""
    import optuna

    from yolotune.studies import delete_study, load_study, recorded_folder, refuse_if_searched, study_folder

    st = load_study(study=study, storage=storage, root=root)
    folder = study_folder(st, root, default_storage=storage is None)
    refuse_if_searched(st, doing="delete", folder=folder)  # before asking: the answer would not matter
    elsewhere = recorded_folder(st)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder is not None else 0
    running = len(st.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))
    files = f"{size / 2**20:.0f} MB in {folder}/" if folder is not None else "no folder of trial files found"
    what = f"study '{st.study_name}' ({len(st.trials)} trials, {files})"
    if running:
        what += f", {running} of its trials RUNNING (stop its `tune run` first, unless that run was killed)"
    try:
        sure = yes or typer.confirm(f"delete {what}?", default=False)
    except typer.Abort:  # no answer: stdin closed, or Ctrl-D
        sure = False
    if not sure:
        consoles.err.print("nothing deleted (--yes deletes without asking)")
        raise typer.Exit(1)
    for path in delete_study(study=st.study_name, storage=storage, root=root):
        consoles.out.print(f"removed {path}", highlight=False)
    if elsewhere is not None and elsewhere.is_dir() and (folder is None or elsewhere.resolve() != folder.resolve()):
        consoles.err.print(
            f"left {elsewhere}/, the trial files its search recorded: a copy of this study (or the original) may "
            f"use them; delete them yourself if none does (or pass the --root that holds them)",
            highlight=False,
        )


@app.command()
@one_line_errors
def dashboard(
    study: StudyOpt = None,
    storage: StorageOpt = None,
    root: RootOpt = Path("studies"),
    host: Annotated[str, typer.Option("--host", help="Address to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to serve on.")] = 8080,
) -> None:
    """Serve a study on optuna-dashboard (Ctrl-C stops it)."""
    from yolotune.studies import default_storage_url, find_artifact_dir, load_study, serve_dashboard

    st = load_study(study=study, storage=storage, root=root)
    url = storage or default_storage_url(root, st.study_name)
    with Interrupts().installed() as interrupts:
        serve_dashboard(
            storage_url=url,
            artifacts=find_artifact_dir(st, root),
            host=host,
            port=port,
            on_ready=lambda address: consoles.out.print(f"dashboard of '{st.study_name}': {address}"),
            on_poll=interrupts.check,
        )


@app.command()
@one_line_errors
def retime(
    study: StudyOpt = None,
    storage: StorageOpt = None,
    root: RootOpt = Path("studies"),
    rounds: Annotated[int, typer.Option("--rounds", help="Rounds wanted (rounds already done count).")] = 11,
    fresh: Annotated[bool, typer.Option("--fresh", help="Discard the rounds done and start again.")] = False,
    device_url: DeviceUrlOpt = None,
    device_token_file: DeviceTokenOpt = None,
) -> None:
    """Time the trials near a study's front again, in rounds with its FP32 reference; print the front."""
    from yolotune.evaluators import read_token
    from yolotune.search import retime_study
    from yolotune.studies import current_retiming, find_artifact_dir, fp32_reference, load_study

    if rounds < 1:
        raise YolotuneError(f"--rounds must be ≥1; got {rounds}")
    st = load_study(study=study, storage=storage, root=root)
    before = current_retiming(st)
    with (
        Interrupts().installed() as interrupts,
        consoles.spinner(SpinnerColumn(), TextColumn("{task.description}")) as bar,
    ):
        task = bar.add_task(f"re-timing the front of {st.study_name}")

        def on_step(number: int, step: str) -> None:
            interrupts.check()
            bar.update(task, description=f"trial {number}: {step}")

        retiming = retime_study(
            st,
            rounds=rounds,
            fresh=fresh,
            device_url=device_url,
            device_token=read_token(device_token_file) if device_token_file else None,
            on_step=on_step,
            artifacts=find_artifact_dir(st, root),
        )
    if retiming is None:
        why = (
            "its FP32 reference trial has not completed yet: run `tune run` first"
            if fp32_reference(st) is None
            else "the file of its FP32 reference trial is neither in its trial folder nor in the study's artifact "
            "store on this host: run it where the study's files are (--root)"
        )
        raise YolotuneError(f"nothing to re-time against: {why}")
    if (reason := retiming.failed.get(retiming.reference_trial)) is not None:
        consoles.err.print(
            f"the FP32 reference trial {retiming.reference_trial} could not be timed ({reason}): the "
            f"{retiming.rounds} round(s) done are kept; the same command{' without --fresh' if fresh else ''} goes on "
            "from there",
            highlight=False,
        )
    elif before is not None and retiming.rounds == before.rounds and before.rounds >= rounds and not fresh:
        consoles.err.print(
            f"the front was already timed in {before.rounds} rounds (≥ --rounds {rounds}): nothing added; "
            f"--rounds {before.rounds + rounds} adds {rounds}, --fresh starts again"
        )
    show_study(st, where=where_options(root, storage))


@app.command()
@one_line_errors
def export(
    trial: Annotated[int, typer.Option("--trial", "-n", help="Trial number (see `tune show`).")],
    study: StudyOpt = None,
    storage: StorageOpt = None,
    root: RootOpt = Path("studies"),
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output directory (default: export/<study>-<N>).")
    ] = None,
    remeasure: Annotated[bool, typer.Option(help="Re-validate mAP and re-time latency on the target.")] = True,
    rounds: Annotated[
        int,
        typer.Option(
            "--rounds", help="Re-timing rounds, each paired with a timing of the FP32 reference file (median kept)."
        ),
    ] = 11,
    device_url: DeviceUrlOpt = None,
    device_token_file: DeviceTokenOpt = None,
) -> None:
    """Hand out a trial's deployable model and recipe, then re-measure it."""
    from yolotune.evaluators import read_token
    from yolotune.studies import export_trial, find_artifact_dir, load_study

    st = load_study(study=study, storage=storage, root=root)
    dest = out or Path("export") / f"{st.study_name}-{trial}"
    with (
        Interrupts().installed(),  # `kill` too leaves no half export (export_trial cleans up on KeyboardInterrupt)
        consoles.spinner(SpinnerColumn(), TextColumn("{task.description}")) as bar,
    ):
        bar.add_task(f"exporting trial {trial}" + (" and re-measuring it" if remeasure else ""))
        res = export_trial(
            st,
            trial,
            dest,
            artifacts=find_artifact_dir(st, root),
            remeasure=remeasure,
            rounds=rounds,
            device_url=device_url,
            device_token=read_token(device_token_file) if device_token_file else None,
        )
    table = export_table(res, title=f"trial {trial} of {st.study_name}", rounds=rounds)
    consoles.out.print(table)
    consoles.out.print(f"model: {res.model}\nrecipe: {res.recipe}\nplan: {res.plan}")
    for line in res.warnings:
        consoles.warning(line)


@app.command()
@one_line_errors
def targets(targets_file: TargetsFileOpt = None) -> None:
    """List the known targets: runtime, where they are timed, precisions, INT8 activations, image size."""
    from yolotune.evaluators import add_target_file, builtin_target_names, target_specs

    caption = "add your own with --targets-file F (same YAML shape)"
    if targets_file is not None:
        replaced = sorted(set(add_target_file(targets_file)) & set(builtin_target_names()))
        if replaced:
            caption = (
                f"{targets_file} replaces the built-in {', '.join(replaced)} (whole entries: unset keys take defaults)"
            )
    table = Table(header_style="bold", caption=caption)
    for col in ("target", "runtime", "timed on", "precisions", "int8 activations", "imgsz", "threads", "description"):
        table.add_column(col, no_wrap=col != "description")
    for spec in target_specs():
        table.add_row(
            spec.name,
            spec.runtime,
            "device agent" if spec.agent else "this machine",
            ", ".join(spec.precisions),
            ", ".join(spec.activations),
            str(spec.imgsz),
            "all" if spec.threads is None else str(spec.threads),
            spec.description,
        )
    consoles.out.print(table)


@app.command()
@one_line_errors
def agent(
    host: Annotated[str, typer.Option("--host", help="Address to bind (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to serve on.")] = 8765,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file", help="Token file; created with a random token when missing. Required off loopback."
        ),
    ] = None,
    runtime: Annotated[
        str | None, typer.Option("--runtime", help="onnxruntime or tensorrt (default: tensorrt when trtexec is found).")
    ] = None,
    max_upload_mb: Annotated[int, typer.Option("--max-upload-mb", help="Largest ONNX file accepted.")] = 256,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds one benchmark (engine build included) may take.")
    ] = 900,
    threads: Annotated[int | None, typer.Option("--threads", help="Intra-op threads of CPU runtimes.")] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir",
            help="Where received models and built engines are kept (default: agent/ in yolotune's scratch dir).",
        ),
    ] = None,
    cache_mb: Annotated[
        int, typer.Option("--cache-mb", help="Models and engines kept at most; the least recently used go first.")
    ] = 2048,
) -> None:
    """Serve this device's latency to `tune run --device-url` (run it on the device; Ctrl-C stops it)."""
    from yolotune.evaluators import AgentConfig, AgentServer, read_token
    from yolotune.evaluators._tensorrt import find_trtexec

    token = None
    if token_file is not None:
        created = not token_file.exists()
        token = read_token(token_file, create=True)
        if created:
            consoles.out.print(f"new token written to {token_file}: copy it to the machine that runs `tune run`")
    config = AgentConfig(
        host=host,
        port=port,
        token=token,
        runtime=runtime or ("tensorrt" if find_trtexec() else "onnxruntime"),
        max_upload_bytes=max_upload_mb * 2**20,
        timeout_s=timeout,
        threads=threads,
        cache_dir=cache_dir,
        max_cache_bytes=cache_mb * 2**20,
    )
    server = AgentServer(config=config)
    info = server.info
    consoles.out.print(
        f"agent for {info['device']} ({info['runtime']} {info['runtime_version']}) on {server.url}"
        + ("" if token else " (loopback, no token)"),
        highlight=False,
    )
    with Interrupts().installed() as interrupts:
        server.serve_forever(on_poll=interrupts.check)


def _prog_name() -> str:
    """``yolotune`` when run by that name (the console script's alias), else ``tune`` (also for ``python -m``)."""
    return "yolotune" if Path(sys.argv[0]).name == "yolotune" else "tune"


def main() -> None:
    """Console-script entry point (``tune`` and ``yolotune``).

    A bad option or argument (``--trial abc``, an unknown option) is one line on stderr and exit
    code 2, as yolotune's own errors are, rather than click's framed usage box. yolotune's logged
    warnings print as ``warning: ...`` lines, as the CLI's own do.
    """
    package = logging.getLogger("yolotune")
    if not any(isinstance(h, WarningLines) for h in package.handlers):
        package.addHandler(WarningLines(logging.WARNING))
    try:  # typer ≥0.22 raises its own copy of click's exceptions
        from typer._click import exceptions as cli_errors
    except ImportError:  # pragma: no cover - older typer raises click's
        from click import exceptions as cli_errors  # type: ignore[no-redef]

    try:
        code = app(standalone_mode=False, prog_name=_prog_name())
    except getattr(cli_errors, "NoArgsIsHelpError", ()) as exc:  # `tune` alone: the help (typer prints it itself)
        if message := exc.format_message():
            consoles.out.print(message, highlight=False)
        raise SystemExit(exc.exit_code) from None
    except cli_errors.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "tune"
        consoles.error(f"{exc.format_message().rstrip('.')}; see `{where} --help`")
        raise SystemExit(exc.exit_code) from None
    except cli_errors.ClickException as exc:
        consoles.error(exc.format_message())
        raise SystemExit(exc.exit_code) from None
    except typer.Abort:
        consoles.err.print("aborted", highlight=False)
        raise SystemExit(1) from None
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
