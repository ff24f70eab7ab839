"""``tune``: a thin command line over yolotune's Python API (typer + rich)."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import logging
import os
import shlex
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich import box
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from yolotune.errors import PlanError, SearchStopped, YolotuneError, disk_full

app = typer.Typer(
    name="tune",
    help="Compress YOLO detectors for a target device: prune, quantize, measure.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


class _Consoles:
    """Rich consoles created on use, so they see the streams in use (tests swap them).

    They read no markup: messages carry paths, plan briefs and libraries' reasons, whose brackets
    (``coco[v2]/``, ``[/x]``) rich would take for tags, dropping text or raising. Colour comes from
    styles (``error``, ``warning``, rich ``Text``), never from tags in a string.
    """

    @property
    def out(self) -> Console:
        # a pipe or file gets wide lines rather than rich's 80-column default, unless COLUMNS says otherwise
        wide = sys.stdout.isatty() or "COLUMNS" in os.environ
        return Console(width=None if wide else 160, soft_wrap=True, markup=False)

    @property
    def err(self) -> Console:
        # the run's progress line in a log: as wide as stdout's lines there, not squeezed into 80 columns
        wide = sys.stderr.isatty() or "COLUMNS" in os.environ
        return Console(stderr=True, soft_wrap=True, width=None if wide else 160, markup=False)

    def error(self, message: str) -> None:
        """``error: message`` on stderr, ``error:`` in red."""
        self.err.print(Text.assemble(("error:", "red"), " ", message), highlight=False, soft_wrap=True)

    def warning(self, message: str) -> None:
        """``warning: message`` on stderr, ``warning:`` in yellow."""
        self.err.print(Text.assemble(("warning:", "yellow"), " ", message), highlight=False, soft_wrap=True)

    def spinner(self, *columns: Any) -> Progress:
        """A transient spinner on stderr; none when stderr is not a terminal (rich would leave a blank line)."""
        err = self.err
        return Progress(*columns, console=err, transient=True, disable=not err.is_terminal)


_consoles = _Consoles()

F = TypeVar("F", bound=Callable[..., Any])

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


#: What Ctrl-C leaves behind, per command (others: nothing to resume).
_STOPPED = {
    "run": "interrupted: what was measured is kept (a candidate, scan probe or re-timing round in progress runs "
    "again); run the same command to resume",
    "agent": "agent stopped",
    "dashboard": "dashboard stopped",
    "retime": "interrupted: the rounds done are kept; run the same command to go on",
    "export": "interrupted: nothing of this export was kept; run the same command again",
}


class _Interrupts:
    """Ctrl-C (SIGINT) and SIGTERM (``kill``, ``timeout``, a batch scheduler, a closed terminal), remembered.

    Each raises KeyboardInterrupt, so the search records its running trials as failed and queues
    their plans instead of leaving them RUNNING until their heartbeats go stale, and the dashboard
    and the agent stop. A library can swallow that KeyboardInterrupt (seen: about one SIGTERM in ten
    during a candidate's build went nowhere and the search carried on), so the request is also
    remembered and :meth:`check`, called at every step or between requests, raises it again.
    """

    def __init__(self) -> None:
        self.requested = False

    def _interrupt(self, signum: int, frame: Any) -> None:
        self.requested = True
        raise KeyboardInterrupt

    def check(self) -> None:
        """Raise KeyboardInterrupt again if a stop was asked for."""
        if self.requested:
            raise KeyboardInterrupt

    def _unraisable(self, hook: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """``sys.unraisablehook`` that is silent about the KeyboardInterrupt a finalizer swallowed.

        A signal that lands in a ``__del__`` (Ultralytics' data loaders close their workers there)
        raises where Python can only print it, as a traceback; the request is remembered and
        ``check`` raises it again at the next step.
        """

        def handle(unraisable: Any) -> None:
            if not (self.requested and isinstance(unraisable.exc_value, KeyboardInterrupt)):
                hook(unraisable)

        return handle

    @contextlib.contextmanager
    def installed(self) -> Iterator[_Interrupts]:
        """Handle both signals while the block runs (outside the main thread: leave signals alone)."""
        try:
            previous = {s: signal.signal(s, self._interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread
            yield self
            return
        hook = sys.unraisablehook
        sys.unraisablehook = self._unraisable(hook)
        try:
            yield self
        finally:
            sys.unraisablehook = hook
            for s, handler in previous.items():
                signal.signal(s, handler)


def _storage_failure(exc: Exception) -> bool:
    """Whether Optuna's storage failed underneath (a database that became read-only, or was deleted)."""
    optuna = sys.modules.get("optuna")
    return optuna is not None and isinstance(exc, optuna.exceptions.StorageInternalError)


def _one_line_errors(fn: F) -> F:
    """Report YolotuneError (and anything unexpected) as one line on stderr, exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except YolotuneError as exc:
            _consoles.error(str(exc))
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            _consoles.err.print(_STOPPED.get(fn.__name__, "interrupted"))
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):  # a command's own exit: not an error
            raise
        except Exception as exc:
            if os.environ.get("YOLOTUNE_DEBUG"):
                raise
            if _storage_failure(exc):
                cause = exc.__cause__ or exc.__context__ or exc
                detail = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
                fix = (
                    "free some space on its disk"
                    if disk_full(detail)
                    else "check that the studies folder is writable and its database is still there"
                )
                _consoles.error(
                    f"the study's storage cannot be written ({detail}): {fix}, then run the same command to resume"
                )
                raise typer.Exit(2) from None
            if isinstance(exc, OSError) and exc.filename:
                # a path the user chose cannot be used (unwritable, a file where a folder goes, ...)
                why = exc.strerror or type(exc).__name__
                full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
                _consoles.error(
                    f"cannot use {exc.filename2 or exc.filename}: {why}; "
                    + ("free some space there, or pass a path on another disk" if full else "pass another path")
                )
                raise typer.Exit(2) from None
            msg = str(exc).splitlines()[0] if str(exc) else ""
            _consoles.error(f"unexpected {type(exc).__name__}: {msg} (set YOLOTUNE_DEBUG=1 for the traceback)")
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _fresh_run_dir(command: str) -> Path:
    """``runs/<command>``, or the first of ``runs/<command>2``, ... not taken (a one-off never overwrites another)."""
    from yolotune.compression import ultralytics_adapter

    return ultralytics_adapter.run_dir(Path("runs") / command)


def _run(label: str, **kwargs: Any) -> Any:
    from yolotune.search import run_candidate

    with _consoles.spinner(
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


def _table(rows: list[tuple[str, Any]], baseline: Any | None) -> Table:
    table = Table(show_header=True, header_style="bold")
    for col in ("model", "mAP50-95", "mAP50", "ΔmAP", "ms", "p90", "cv", "speed", "MB", "smaller"):
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
    for name, r in rows:
        lat = r.latency
        if baseline is not None:
            drop = f"{r.accuracy.map50_95 - baseline.accuracy.map50_95:+.3f}"
            speed = f"{baseline.latency.median_ms / lat.median_ms:.2f}×"
            size = f"{baseline.size_bytes / r.size_bytes:.2f}×"
        else:
            drop = speed = size = "–"
        table.add_row(
            name,
            f"{r.accuracy.map50_95:.3f}",
            f"{r.accuracy.map50:.3f}",
            drop,
            f"{lat.median_ms:.2f}",
            f"{lat.p90_ms:.2f}",
            f"{lat.cv:.0%}",
            speed,
            f"{r.size_mb:.2f}",
            size,
        )
    return table


@app.command()
@_one_line_errors
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
    _consoles.out.print(_table([("baseline", result)], None))
    _consoles.out.print(f"artifacts and metrics.json in {out}")
    from yolotune.search import untrained

    if why := untrained(result.accuracy.map50_95):
        _consoles.warning(why)


@app.command("eval")
@_one_line_errors
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
    _consoles.out.print(f"plan: {the_plan.brief(groups=groups)}")
    out = out or _fresh_run_dir("eval")
    base = _run("baseline", model=model, data=data, plan=CompressionPlan(), out_dir=out / "baseline", settings=settings)
    cand = _run("candidate", model=model, data=data, plan=the_plan, out_dir=out / "candidate", settings=settings)
    _consoles.out.print(_table([("baseline", base), ("candidate", cand)], base))
    steps = ", ".join(f"{k} {v:.1f}s" for k, v in cand.step_seconds.items())
    _consoles.out.print(f"candidate steps: {steps}")
    _consoles.out.print(f"deployable: {cand.deployable}\nmetrics: {(out / 'candidate' / 'metrics.json').absolute()}")


@app.command()
@_one_line_errors
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
    from rich.progress import BarColumn, MofNCompleteColumn, TimeRemainingColumn

    from yolotune.search import SearchConfig, preflight, run_search
    from yolotune.studies import open_storage, pareto_front

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
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}", markup=False),
    )
    # shown once the study is opened: a run refused before (another job under this study name,
    # another device) prints its one line and nothing else
    progress = Progress(*columns, console=_consoles.err)
    task = progress.add_task(config.name, total=budget, status="starting")

    with _Interrupts().installed() as interrupts, contextlib.ExitStack() as cleanup:
        cleanup.callback(lambda: progress.stop() if progress.live.is_started else None)  # else: a blank line

        def on_trial(outcome: Any, st: Any) -> None:
            import optuna

            # the budget counts candidates evaluated: COMPLETE trials and rung-0 stops (PRUNED)
            evaluated = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
            done = len(st.get_trials(deepcopy=False, states=evaluated))
            front = pareto_front(st) if done else []
            best_map = max((r.map50_95 for r in front), default=None)
            best_ms = min((r.latency_ms for r in front), default=None)
            if outcome.state == "FAIL":
                progress.console.print(f"trial {outcome.number} failed: {outcome.reason}", highlight=False)
            elif outcome.state == "COMPLETE" and outcome.reason:
                progress.console.print(f"trial {outcome.number}: {outcome.reason}", highlight=False)
            elif outcome.state == "PRUNED":
                why = outcome.reason or f"mAP50-95 {outcome.result.accuracy.map50_95:.3f}"
                progress.console.print(f"trial {outcome.number} stopped at rung 0 ({why})", highlight=False)
            progress.update(
                task,
                completed=done,
                status=f"front {len(front)} · best mAP {best_map:.3f} · fastest {best_ms:.2f} ms"
                if best_map is not None and best_ms is not None
                else "front 0 (no feasible trial yet)",
            )

        def on_step(number: int, step: str) -> None:
            interrupts.check()
            progress.update(task, description=f"trial {number}: {step}")

        def on_open(st: Any) -> None:
            import optuna

            # a resumed study starts where it stopped (at its budget already: only the re-timing runs)
            evaluated = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
            done = len(st.get_trials(deepcopy=False, states=evaluated))
            status = "starting" if not done else ("re-timing the front" if done >= budget else "resuming")
            progress.update(task, completed=min(done, budget), status=status)
            progress.start()

        def on_retime_failed(number: int, reason: str) -> None:
            progress.console.print(f"trial {number} not re-timed: {reason}", highlight=False)

        def on_scan(done: int, total: int, row: Any, group: str) -> None:
            interrupts.check()
            progress.update(task, description=f"sensitivity scan {done}/{total}: {group}")

        try:
            result = run_search(
                config,
                on_trial=on_trial,
                on_step=on_step,
                on_scan=on_scan,
                on_open=on_open,
                on_retime_failed=on_retime_failed,
            )
        except SearchStopped as exc:
            stopped: SearchStopped | None = exc
            result = exc.study
        else:
            stopped = None
    _show(result, where=_where(config.root, config.storage))
    _consoles.out.print(f"study '{config.name}' in {config.storage_url}")
    if stopped is not None:
        raise stopped  # one line, exit code 2, after the front of what was measured


def _queued_caption(trials: list[Any], *, evaluated: int) -> str:
    """What ``tune show`` says of queued (WAITING) trials: when the next ``tune run`` evaluates them.

    Optuna hands out queued trials oldest first, before sampling. The driver runs a reference
    that failed (and has not completed since) whatever the budget, with the trials queued before
    it; the others count toward the budget, which counts evaluated candidates.
    """
    import optuna

    state = optuna.trial.TrialState
    queued = sorted((t for t in trials if t.state == state.WAITING), key=lambda t: t.number)
    if not queued:
        return ""
    done = {t.user_attrs.get("reference") for t in trials if t.state == state.COMPLETE}
    failed = {t.user_attrs.get("reference") for t in trials if t.state == state.FAIL} - done - {None}
    through = max((i + 1 for i, t in enumerate(queued) if t.user_attrs.get("reference") in failed), default=0)
    text = ""
    if through:
        text += (
            f", {through} queued that the next `tune run` evaluates whatever its --budget (a failed reference's retry)"
        )
    if rest := len(queued) - through:
        text += (
            f", {rest} queued that the next `tune run` evaluates before new plans if its --budget is over the "
            f"{evaluated} candidates evaluated"
        )
    return text


def _sensitivity_table(st: Any) -> Table | None:
    """The study's sensitivity scan, when it ran one: each group pruned alone, and which are searched."""
    from yolotune.search import Sensitivity

    recorded = st.user_attrs.get("sensitivity")
    wanted = (st.user_attrs.get("job") or {}).get("sensitivity") or {}
    if not recorded or "max_drop" not in wanted:
        return None
    scan = Sensitivity.from_dict(recorded)
    tolerant = set(scan.tolerant_groups(float(wanted["max_drop"])))
    table = Table(
        title=f"Sensitivity: each group pruned alone by {scan.ratio:.0%} ({scan.recovery} recovery, FP32)",
        caption=f"unpruned: mAP50-95 {scan.baseline_map:.3f}, {scan.baseline_latency_ms:.2f} ms · "
        f"the search prunes the {len(tolerant)} group(s) losing ≤{wanted['max_drop']} · MACs are estimates",
        header_style="bold",
    )
    for col in ("group", "mAP50-95", "ΔmAP", "latency ms", "MACs (est.)", "searched"):
        table.add_column(col, justify="left" if col == "group" else "right")
    for g in scan.groups:
        table.add_row(
            g.group,
            f"{g.map50_95:.3f}",
            f"{-g.map_drop:+.3f}",
            f"{g.latency_ms:.2f}",
            f"{g.macs_ratio:.1%}",
            "prune" if g.group in tolerant else "–",
        )
    return table


#: How many of the latest failed trials ``tune show`` lists under the front, with their reasons.
_FAILURES_SHOWN = 5


def _where(root: Path, storage: str | None) -> str:
    """The options that find a study again from any folder, for the commands a caption suggests."""
    if storage is not None:
        for scheme in ("journal:", "sqlite:///"):  # a file named relative to here: absolute, for anywhere
            rest = storage.removeprefix(scheme)
            if storage.startswith(scheme) and rest and not rest.startswith(("/", ":memory:")):
                storage = scheme + str(Path(rest).resolve())
        return f" --storage {shlex.quote(storage)}"
    return "" if root == Path("studies") else f" --root {shlex.quote(str(root.resolve()))}"


def _show(st: Any, *, where: str = "") -> None:
    import optuna

    from yolotune.search import constraints_of
    from yolotune.studies import Retiming, current_retiming, fp32_reference, pareto_front

    sensitivity = _sensitivity_table(st)
    if sensitivity is not None:
        _consoles.out.print(sensitivity)

    trials = st.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    failed = sum(t.state == optuna.trial.TrialState.FAIL for t in trials)
    rung0 = sum(t.state == optuna.trial.TrialState.PRUNED for t in trials)
    infeasible = sum(any(v > 0 for v in t.constraints.values()) for t in complete)
    limits = {k: v for k, v in constraints_of(st).items() if v is not None}
    caption = f"{len(complete)} complete, {failed} failed"
    if rung0:
        caption += f", {rung0} stopped at rung 0 (the front holds full-fidelity trials only)"
    running = sum(t.state == optuna.trial.TrialState.RUNNING for t in trials)
    if running:
        caption += f", {running} running (if their run was killed, the next run queues them again)"
    caption += _queued_caption(trials, evaluated=len(complete) + rung0)
    if limits:
        caption += f", {infeasible} infeasible under " + ", ".join(f"{k} {v}" for k, v in limits.items())
    measured = {
        f"{p.get('target')} on {p.get('device')} ({p.get('host')})"
        for p in (t.user_attrs.get("provenance") or {} for t in complete)
        if p
    }
    if measured:
        caption += " · latency: " + "; ".join(sorted(measured))
    front = pareto_front(st)
    retiming = current_retiming(st)
    retimed = retiming is not None
    unpaired: set[int] = set()
    disturbed: set[int] = set()
    if retiming is not None:
        caption += (
            " · re-timed after the search (tune run, tune retime): "
            f"{len(retiming.trials)} trial(s) near the front timed in {retiming.rounds} rounds with the FP32 "
            "reference (median); front and speed: the median of each round's ratio to the reference (half the "
            "rounds between the bracketed quartiles)"
        )
        for number, reason in sorted(retiming.failed.items()):
            if number == retiming.reference_trial:
                caption += f" · the FP32 reference could not be timed after round {retiming.rounds} ({reason})"
            else:
                caption += f" · trial {number} not re-timed ({reason}), left out"
    elif any(r.paired for r in front):
        caption += " · speed: against the FP32 reference timed right after each trial"
        # e.g. the reference failed and was retried after other trials: theirs had no reference to pair with
        unpaired = {r.number for r in front if not r.paired and r.speedup is not None and r.reference != "fp32"}
        if unpaired:
            caption += ", † against the reference trial's own timing (not one taken right after it)"
        # a paired reference far from the reference trial's own timing: the machine was loaded then
        reference = fp32_reference(st)
        base = float(reference.values[2]) if reference is not None else None
        paired_ms = {t.number: t.user_attrs.get("reference_ms") for t in trials}
        disturbed = {
            r.number
            for r in front
            if r.paired and base and not 0.5 <= float(paired_ms.get(r.number) or base) / base <= 2
        }
        if disturbed:
            retime = f"tune retime --study {shlex.quote(st.study_name)}{where}"
            caption += (
                ", ‡ its FP32 reference took under half or over twice the reference trial's own time "
                f"(a disturbed machine): `{retime}` times them again"
            )
    if retiming is None and isinstance(recorded := st.user_attrs.get("retimed"), dict) and "trials" in recorded:
        retime = f"tune retime --study {shlex.quote(st.study_name)}{where}"
        started = Retiming.from_dict(recorded)
        if started.complete == len(complete) and (why := started.failed.get(started.reference_trial)):
            caption += f" · the front's re-timing has no round yet (its FP32 reference failed: {why}): `{retime}`"
        else:
            caption += f" · the front's re-timing is out of date (trials completed since): `{retime}` re-times it"
    if front:
        caption += f" · export with `tune export --study {shlex.quote(st.study_name)}{where} --trial N`"
    out = _consoles.out
    # under ~140 columns the plans go below the table, and cells wrap at spaces rather than be cut off
    wide = out.width >= 140
    table = Table(
        title=f"Pareto front of {st.study_name}",
        caption=caption,
        header_style="bold",
        box=box.HEAVY_HEAD if wide else box.SIMPLE_HEAD,
        show_edge=wide,
        pad_edge=wide,
    )
    columns = ("trial", "mAP50-95", "ΔmAP", "latency ms", *(("re-timed ms",) if retimed else ()), "speed")
    columns = (*columns, "size MB", "smaller", *(("plan",) if wide else ()))
    rows = []
    for r in front:
        again = (("–" if r.retimed_ms is None else f"{r.retimed_ms:.2f}"),) if retimed else ()
        rows.append(
            (
                f"{r.number}" + (f" ({r.reference})" if r.reference else ""),
                f"{r.map50_95:.3f}",
                "–" if r.map_drop is None else f"{0.0 - r.map_drop:+.3f}",
                f"{r.latency_ms:.2f}",
                *again,
                "–"
                if r.speedup is None
                else f"{r.speedup:.2f}×"
                + (f" ({r.retimed.q1:.2f}–{r.retimed.q3:.2f})" if r.retimed else "")
                + ("‡" if r.number in disturbed else "†" if r.number in unpaired else ""),
                f"{r.size_mb:.2f}",
                "–" if r.size_ratio is None else f"{r.size_ratio:.2f}×",
                *((r.brief,) if wide else ()),
            )
        )
    for k, col in enumerate(columns):
        words = [w for text in (col, *(row[k] for row in rows)) for w in text.split()]
        table.add_column(
            col,
            justify="left" if col == "plan" else "right",
            no_wrap=wide and col != "plan",
            width=None if wide else max(map(len, words)),  # wrapped at spaces, a number never cut
        )
    for row in rows:
        table.add_row(*row)
    out.print(table)
    if not wide:
        for r in front:
            out.print(f"  trial {r.number}: {r.brief}", highlight=False)
    if not front and complete and limits and infeasible == len(complete):
        out.print(
            f"no trial meets {', '.join(f'{k} {v}' for k, v in limits.items())}: every one of the {len(complete)} "
            "measured breaks it (`tune report` plots them all)",
            highlight=False,
        )
    # a failure whose plan ran again to the end (a retry after Ctrl-C, a lost worker) is done with
    retry_of = {t.number: t.user_attrs.get("retry_of") for t in trials}
    redone: set[int] = set()
    for t in trials:
        if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED):
            n = retry_of.get(t.number)
            while isinstance(n, int) and n not in redone:
                redone.add(n)
                n = retry_of.get(n)
    failures = [t for t in trials if t.state == optuna.trial.TrialState.FAIL and t.number not in redone]
    for t in failures[-_FAILURES_SHOWN:]:  # `tune report` lists them all
        reason = str(t.user_attrs.get("fail_reason", "no reason recorded"))
        _consoles.out.print(f"trial {t.number} failed: {reason[:300]}", highlight=False, soft_wrap=True)


StudyOpt = Annotated[str | None, typer.Option("--study", "-s", help="Study name (may be left out when there is one).")]
StorageOpt = Annotated[str | None, typer.Option("--storage", help="Optuna storage URL (default: SQLite under --root).")]
RootOpt = Annotated[Path, typer.Option("--root", help="Studies directory.")]


@app.command()
@_one_line_errors
def show(study: StudyOpt = None, storage: StorageOpt = None, root: RootOpt = Path("studies")) -> None:
    """Print a study's Pareto front, fastest first (by paired speed-up once re-timed, else by latency)."""
    from yolotune.studies import load_study

    _show(load_study(study=study, storage=storage, root=root), where=_where(root, storage))


@app.command()
@_one_line_errors
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
    _consoles.out.print(f"report: {path}")


@app.command()
@_one_line_errors
def delete(
    study: Annotated[str, typer.Option("--study", "-s", help="The study to delete (always named).")],
    storage: StorageOpt = None,
    root: RootOpt = Path("studies"),
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask first.")] = False,
) -> None:
    """Delete a study: its trials, its folder of trial files, and its SQLite file when it holds no other."""
    import optuna

    from yolotune.studies import delete_study, load_study, recorded_folder, study_folder

    st = load_study(study=study, storage=storage, root=root)
    folder = study_folder(st, root, default_storage=storage is None)
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
        _consoles.err.print("nothing deleted (--yes deletes without asking)")
        raise typer.Exit(1)
    for path in delete_study(study=st.study_name, storage=storage, root=root):
        _consoles.out.print(f"removed {path}", highlight=False)
    if elsewhere is not None and elsewhere.is_dir() and (folder is None or elsewhere.resolve() != folder.resolve()):
        _consoles.err.print(
            f"left {elsewhere}/, the trial files its search recorded: a copy of this study (or the original) may "
            f"use them; delete them yourself if none does (or pass the --root that holds them)",
            highlight=False,
        )


@app.command()
@_one_line_errors
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
    with _Interrupts().installed() as interrupts:
        serve_dashboard(
            storage_url=url,
            artifacts=find_artifact_dir(st, root),
            host=host,
            port=port,
            on_ready=lambda address: _consoles.out.print(f"dashboard of '{st.study_name}': {address}"),
            on_poll=interrupts.check,
        )


@app.command()
@_one_line_errors
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
        _Interrupts().installed() as interrupts,
        _consoles.spinner(SpinnerColumn(), TextColumn("{task.description}")) as bar,
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
        _consoles.err.print(
            f"the FP32 reference trial {retiming.reference_trial} could not be timed ({reason}): the "
            f"{retiming.rounds} round(s) done are kept; the same command goes on from there",
            highlight=False,
        )
    elif before is not None and retiming.rounds == before.rounds and before.rounds >= rounds and not fresh:
        _consoles.err.print(
            f"the front was already timed in {before.rounds} rounds (≥ --rounds {rounds}): nothing added; "
            f"--rounds {before.rounds + rounds} adds {rounds}, --fresh starts again"
        )
    _show(st, where=_where(root, storage))


@app.command()
@_one_line_errors
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
        _Interrupts().installed(),  # `kill` too leaves no half export (export_trial cleans up on KeyboardInterrupt)
        _consoles.spinner(SpinnerColumn(), TextColumn("{task.description}")) as bar,
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
    retimed = res.recorded.get("retimed_rounds")
    caption = (
        f"recorded latency and speed: medians of the front's {retimed:g} re-timing rounds"
        if retimed
        else "recorded latency: the search's timing"
    )
    if "speedup" in res.measured:
        caption += (
            f" · re-measured: medians of {rounds} rounds, each timing the FP32 reference trial's file beside this one"
            f" (speed quartiles {res.measured['speedup_q1']:.2f}–{res.measured['speedup_q3']:.2f})"
        )
    elif res.measured:
        caption += f" · re-measured latency: median of {rounds} timings"
    table = Table(title=f"trial {trial} of {st.study_name}", caption=caption, header_style="bold")
    for col in ("metric", "recorded", "re-measured", "difference"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for key, label, fmt in (
        ("map50_95", "mAP50-95", "{:.4f}"),
        ("map50", "mAP50", "{:.4f}"),
        ("latency_ms", "latency ms", "{:.2f}"),
        ("speedup", "speed vs FP32 (×)", "{:.2f}"),
        ("size_bytes", "size MB", "{:.3f}"),
    ):
        scale = 1e-6 if key == "size_bytes" else 1.0
        rec, new = res.recorded.get(key), res.measured.get(key)
        table.add_row(
            label,
            "–" if rec is None else fmt.format(rec * scale),
            "–" if new is None else fmt.format(new * scale),
            "–" if rec is None or new is None else ("{:+" + fmt[2:]).format((new - rec) * scale),
        )
    _consoles.out.print(table)
    _consoles.out.print(f"model: {res.model}\nrecipe: {res.recipe}\nplan: {res.plan}")
    for line in res.warnings:
        _consoles.warning(line)


@app.command()
@_one_line_errors
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
    _consoles.out.print(table)


@app.command()
@_one_line_errors
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
            _consoles.out.print(f"new token written to {token_file}: copy it to the machine that runs `tune run`")
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
    _consoles.out.print(
        f"agent for {info['device']} ({info['runtime']} {info['runtime_version']}) on {server.url}"
        + ("" if token else " (loopback, no token)"),
        highlight=False,
    )
    with _Interrupts().installed() as interrupts:
        server.serve_forever(on_poll=interrupts.check)


def _prog_name() -> str:
    """``yolotune`` when run by that name (the console script's alias), else ``tune`` (also for ``python -m``)."""
    return "yolotune" if Path(sys.argv[0]).name == "yolotune" else "tune"


class _WarningLines(logging.Handler):
    """yolotune's logged warnings as the CLI's own: ``warning: ...`` on stderr, not the bare message."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _consoles.warning(record.getMessage())
        except Exception:  # pragma: no cover - a closed stream: as logging does
            self.handleError(record)


def main() -> None:
    """Console-script entry point (``tune`` and ``yolotune``).

    A bad option or argument (``--trial abc``, an unknown option) is one line on stderr and exit
    code 2, as yolotune's own errors are, rather than click's framed usage box. yolotune's logged
    warnings print as ``warning: ...`` lines, as the CLI's own do.
    """
    package = logging.getLogger("yolotune")
    if not any(isinstance(h, _WarningLines) for h in package.handlers):
        package.addHandler(_WarningLines(logging.WARNING))
    try:  # typer ≥0.22 raises its own copy of click's exceptions
        from typer._click import exceptions as cli_errors
    except ImportError:  # pragma: no cover - older typer raises click's
        from click import exceptions as cli_errors  # type: ignore[no-redef]

    try:
        code = app(standalone_mode=False, prog_name=_prog_name())
    except getattr(cli_errors, "NoArgsIsHelpError", ()) as exc:  # `tune` alone: the help (typer prints it itself)
        if message := exc.format_message():
            _consoles.out.print(message, highlight=False)
        raise SystemExit(exc.exit_code) from None
    except cli_errors.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "tune"
        _consoles.error(f"{exc.format_message().rstrip('.')}; see `{where} --help`")
        raise SystemExit(exc.exit_code) from None
    except cli_errors.ClickException as exc:
        _consoles.error(exc.format_message())
        raise SystemExit(exc.exit_code) from None
    except typer.Abort:
        _consoles.err.print("aborted", highlight=False)
        raise SystemExit(1) from None
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
