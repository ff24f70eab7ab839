"""What the CLI prints as tables: a study's front and its caption, one-off measurements."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich import box
from rich.table import Table

from yolotune._cli._console import consoles

if TYPE_CHECKING:
    import optuna

    from yolotune.studies import StudySummary

__all__ = [
    "FAILURES_SHOWN",
    "NOISY_CV",
    "export_table",
    "front_caption",
    "noisy_timing",
    "results_table",
    "show_study",
    "where_options",
]


#: A coefficient of variation of one timing's runs above which ``tune eval`` says its speed-up may be far off.
NOISY_CV = 0.25


def noisy_timing(rows: list[tuple[str, Any]]) -> str | None:
    """A warning when one of ``rows``' timings spread over ``NOISY_CV`` (a busy machine), else ``None``."""
    noisy = [(name, r.latency.cv) for name, r in rows if r.latency.cv > NOISY_CV]
    if not noisy:
        return None
    spread = ", ".join(f"{name} {cv:.0%}" for name, cv in noisy)
    return (
        f"the timings spread widely (cv: {spread}): the machine was busy, so the speed-up may be far off; run "
        "again, or search and export with `tune export --rounds N`, which times the FP32 reference beside it"
    )


def results_table(rows: list[tuple[str, Any]], baseline: Any | None) -> Table:
    """``tune baseline``'s and ``tune eval``'s table: each named result, and its ratios to ``baseline`` if given."""
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


def queued_caption(summary: StudySummary) -> str:
    """What ``tune show`` says of queued trials: when the next ``tune run`` evaluates them."""
    text = ""
    if summary.queued_anyway:
        text += (
            f", {summary.queued_anyway} queued that the next `tune run` evaluates whatever its --budget (a failed "
            "reference's retry)"
        )
    if summary.queued:
        text += (
            f", {summary.queued} queued that the next `tune run` evaluates before new plans if its --budget is over "
            f"the {summary.evaluated} candidates evaluated"
        )
    return text


def sensitivity_table(st: Any) -> Table | None:
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
FAILURES_SHOWN = 5


def where_options(root: Path, storage: str | None) -> str:
    """The options that find a study again from any folder, for the commands a caption suggests."""
    if storage is not None:
        for scheme in ("journal:", "sqlite:///"):  # a file named relative to here: absolute, for anywhere
            rest = storage.removeprefix(scheme)
            if storage.startswith(scheme) and rest and not rest.startswith(("/", ":memory:")):
                storage = scheme + str(Path(rest).resolve())
        return f" --storage {shlex.quote(storage)}"
    return "" if root == Path("studies") else f" --root {shlex.quote(str(root.resolve()))}"


def front_caption(st: optuna.Study, summary: StudySummary, *, where: str) -> str:
    """The caption under ``tune show``'s front: what the study holds, how its speed-ups were timed, what to run."""
    from yolotune.studies import speed_notes

    limits = summary.limits
    caption = f"{summary.complete} complete, {summary.failed} failed"
    if summary.rung0:
        caption += f", {summary.rung0} stopped at rung 0 (the front holds full-fidelity trials only)"
    if summary.running:
        caption += f", {summary.running} running (if their run was killed, the next run queues them again)"
    caption += queued_caption(summary)
    if limits:
        caption += f", {summary.infeasible} infeasible under " + ", ".join(f"{k} {v}" for k, v in limits.items())
    if summary.timed_on:
        caption += " · latency: " + "; ".join(summary.timed_on)
    retime = f"tune retime --study {shlex.quote(st.study_name)}{where}"
    front, retiming = summary.front, summary.retiming
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
    elif notes := speed_notes(front):
        caption += " · " + ", ".join(notes).replace("`tune retime`", f"`{retime}`")
    if summary.retiming_blocked is not None:
        caption += (
            f" · the front's re-timing has no round yet (its FP32 reference failed: {summary.retiming_blocked}): "
            f"`{retime}`"
        )
    elif summary.retiming_outdated:
        caption += f" · the front's re-timing is out of date (trials completed since): `{retime}` re-times it"
    if front:
        caption += f" · export with `tune export --study {shlex.quote(st.study_name)}{where} --trial N`"
    return caption


def show_study(st: optuna.Study, *, where: str = "") -> None:
    """Print ``st``'s sensitivity scan (if any), its front with a caption, and its latest failures not run again."""
    from yolotune.studies import summarize

    sensitivity = sensitivity_table(st)
    if sensitivity is not None:
        consoles.out.print(sensitivity)
    summary = summarize(st)
    front, retimed = summary.front, summary.retiming is not None
    out = consoles.out
    # under ~140 columns the plans go below the table, and cells wrap at spaces rather than be cut off
    wide = out.width >= 140
    table = Table(
        title=f"Pareto front of {st.study_name}",
        caption=front_caption(st, summary, where=where),
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
                + ("‡" if r.disturbed else "†" if r.unpaired else ""),
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
    limits = summary.limits
    if not front and summary.complete and limits and summary.infeasible == summary.complete:
        out.print(
            f"no trial meets {', '.join(f'{k} {v}' for k, v in limits.items())}: every one of the "
            f"{summary.complete} measured breaks it (`tune report` plots them all)",
            highlight=False,
        )
    for number, reason in summary.failures[-FAILURES_SHOWN:]:  # `tune report` lists them all
        out.print(f"trial {number} failed: {reason[:300]}", highlight=False, soft_wrap=True)


def export_table(res: Any, *, title: str, rounds: int) -> Table:
    """``tune export``'s table: each metric as the study recorded it and as re-measured now, and the difference."""
    retimed = res.recorded.get("retimed_rounds")
    caption = (
        f"recorded latency and speed: medians of the front's {retimed:g} re-timing rounds"
        if retimed
        else "recorded latency: the search's timing"
    )
    if "speedup" in res.measured:
        caption += (
            f" · re-measured: {'the median' if rounds == 1 else 'medians'} of {rounds} round{'s' * (rounds != 1)}, "
            "each timing the FP32 reference trial's file beside this one"
            f" (speed quartiles {res.measured['speedup_q1']:.2f}–{res.measured['speedup_q3']:.2f})"
        )
    elif res.measured:
        caption += f" · re-measured latency: {'one timing' if rounds == 1 else f'median of {rounds} timings'}"
    table = Table(title=title, caption=caption, header_style="bold")
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
    return table
