"""A study as one self-contained HTML page (plotly, its library embedded once).

The page works offline: plotly.js is inlined in a single ``<script>`` and every figure is a bare ``<div>``
with its own small script, so nothing is fetched when the page is opened.
"""

from __future__ import annotations

import html
import math
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
import plotly.offline
from optuna.trial import FrozenTrial, TrialState

from yolotune._files import whole_file
from yolotune.errors import PlanError, YolotuneError
from yolotune.spaces import CompressionPlan
from yolotune.studies._export import FORMAT_KEYS
from yolotune.studies._front import FrontRow, fp32_reference, pareto_front, speed_notes, speedup_of
from yolotune.studies._retimed import current_retiming

__all__ = ["write_report"]

#: Reference trials (``user_attrs["reference"]``) and their marker symbols (valid in 2-D and 3-D plots).
_REFERENCE_SYMBOLS = {"fp32": "diamond", "int8": "square", "seeds": "cross", "fp16": "triangle-up"}
_REFERENCE_COLORS = {"fp32": "#d62728", "int8": "#2ca02c", "seeds": "#9467bd", "fp16": "#ff7f0e"}
_PRECISION_CODES = {"int8": 0, "fp16": 1, "fp32": 2}
_FRONT_COLOR = "#1f77b4"
_OBJECTIVES = (("mAP50-95", ".4f"), ("size MB", ".2f"), ("latency ms", ".2f"))
#: Plot axis beyond the objectives: the speed-up over the FP32 reference that ``tune show`` lists.
_SPEED = 3
_AXES = (*_OBJECTIVES, ("speed vs FP32 ×", ".2f"))

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: .2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
td.text, th.text { text-align: left; } tr:nth-child(even) { background: #f7f7f7; }
.note { color: #777; font-style: italic; } dl { display: grid; grid-template-columns: max-content auto; gap: .2em 1em; }
dt { font-weight: 600; } dd { margin: 0; }
"""


def write_report(study: optuna.Study, path: Path | str) -> Path:
    """Write the study's report to ``path`` and return it.

    The page holds a header (name, trials by state, job, constraints), the Pareto front as a table, mAP
    against latency and size, a 3-D view of the three objectives, the hypervolume history, the per-group
    pruning ratios and precisions of the front, the sensitivity scan (when the search ran one), the
    candidates stopped at rung 0, and the failed trials with their reasons.

    Args:
        study: A study with the objectives (maximize mAP50-95, minimize size MB, minimize latency ms).
        path: HTML file to write; missing parent folders are created.

    Returns:
        ``path``.
    """
    path = Path(path)
    if path.is_dir():
        raise YolotuneError(
            f"the report path {path} is a folder; name an .html file in it, e.g. {path / 'report.html'}"
        )
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None and len(t.values) == 3]
    front = pareto_front(study) if complete else []
    by_number = {t.number: t for t in complete}
    front_trials = [by_number[r.number] for r in front if r.number in by_number]
    base, retiming = fp32_reference(study), current_retiming(study)
    speeds = {t.number: v for t in complete if (v := speedup_of(t, base, retiming)) is not None}
    # once re-timed, the front is found on speed-ups: plotted on them; else on the latencies it was found on
    speed_plot = (
        _scatter_2d(complete, front, _SPEED, speeds)
        + _note(
            "Speed vs FP32 as the front table gives it: for trials re-timed after the search, the median of the "
            "per-round ratios (these decide the front); for the others, the FP32 reference timed right after the "
            "trial, else the reference trial's own timing. One timing on a shared machine can be off by 2×."
        )
        if retiming is not None and speeds
        else _scatter_2d(complete, front, 2)
    )
    sections = [
        _header(study, trials),
        _section("Pareto front", "front", _front_table(front)),
        _section("mAP against speed or latency, and size", "scatter", speed_plot + _scatter_2d(complete, front, 1)),
        _section("Objectives in 3-D", "objectives-3d", _scatter_3d(complete, front)),
        _section("Hypervolume", "hypervolume", _hypervolume(study, complete)),
        _section("Per-group settings of the front", "groups", _group_heatmaps(front_trials)),
        _section("Pruning sensitivity", "sensitivity", _sensitivity_table(study)),
        _section("Stopped at rung 0", "rung0", _rung0_table(trials)),
        _section("Failed trials", "failed", _failed_table(trials)),
    ]
    title = html.escape(f"yolotune report: {study.study_name}")
    page = (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{title}</title>\n'
        f'<style>{_CSS}</style>\n<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>\n'
        f"</head>\n<body>\n{''.join(sections)}\n</body>\n</html>\n"
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with whole_file(path) as partial:  # a full disk leaves no half page, and an older report stays whole
            partial.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise YolotuneError(f"cannot write the report to {path}: {exc.strerror or exc}; pass another -o") from exc
    return path


# ---------------------------------------------------------------------------------------------- helpers
def _section(title: str, anchor: str, body: str) -> str:
    return f'<section id="{anchor}">\n<h2>{html.escape(title)}</h2>\n{body}\n</section>\n'


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _figure(fig: Any) -> str:
    fig.update_layout(template="plotly_white", margin={"l": 60, "r": 20, "t": 50, "b": 50})
    return str(fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False}))


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None or math.isnan(value) else format(value, spec)


def _infeasible(trial: FrozenTrial) -> bool:
    return any(v > 0 for v in trial.constraints.values())


def _reference(trial: FrozenTrial) -> str:
    ref = trial.user_attrs.get("reference")
    return ref if isinstance(ref, str) and ref in _REFERENCE_SYMBOLS else ""


def _brief(trial: FrozenTrial) -> str:
    return str(trial.user_attrs.get("brief", ""))


def _group_key(name: str) -> tuple[int, str, int, str]:
    """Sort groups backbone → neck → head, then by name with its trailing number read as a number."""
    part, _, rest = name.partition(".")
    digits = "".join(c for c in rest if c.isdigit())
    return ({"backbone": 0, "neck": 1, "head": 2}.get(part, 3), rest.rstrip("0123456789"), int(digits or -1), name)


def _plan(trial: FrozenTrial) -> CompressionPlan | None:
    raw = trial.user_attrs.get("plan")
    if not isinstance(raw, Mapping):
        return None
    try:
        return CompressionPlan.from_dict(raw)
    except (PlanError, TypeError, ValueError):
        return None


def _table(head: Sequence[str], rows: Iterable[tuple[str, Sequence[str]]], text_cols: set[int], css: str) -> str:
    """An HTML table; ``rows`` pairs a row's attributes with its cells, both already escaped."""

    def cls(i: int) -> str:
        return ' class="text"' if i in text_cols else ""

    th = "".join(f"<th{cls(i)}>{h}</th>" for i, h in enumerate(head))
    body = "".join(
        f"<tr{attrs}>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(cells)) + "</tr>\n"
        for attrs, cells in rows
    )
    return f'<table class="{css}">\n<thead><tr>{th}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>'


# ---------------------------------------------------------------------------------------------- sections
def _header(study: optuna.Study, trials: Sequence[FrozenTrial]) -> str:
    counts = Counter(t.state for t in trials)
    states = ", ".join(f"{s.name} {counts[s]}" for s in TrialState if counts[s]) or "none"
    items: list[tuple[str, str]] = [("Trials", f"{len(trials)} ({states})")]
    job = study.user_attrs.get("job")
    if isinstance(job, Mapping):
        # the versions of how yolotune exports, calibrates and prunes: not the trials' settings (those are the plans')
        items += [(f"{k} format" if k in FORMAT_KEYS else str(k), str(v)) for k, v in job.items()]
    constraints = study.user_attrs.get("constraints")
    active = {k: v for k, v in constraints.items() if v is not None} if isinstance(constraints, Mapping) else {}
    limits = ", ".join(f"{k} ≤ {v}" if str(k).startswith("max_") else f"{k}: {v}" for k, v in active.items())
    items.append(("Constraints", limits or "none"))
    dl = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in items)
    return f"<header>\n<h1>{html.escape(study.study_name)}</h1>\n<dl>{dl}</dl>\n</header>\n"


def _front_table(front: Sequence[FrontRow]) -> str:
    if not front:
        return _note("No feasible COMPLETE trial yet: the front is empty.")
    retimed = any(r.retimed for r in front)
    head = ["Trial", "Reference", "mAP50-95", "ΔmAP vs fp32", "Latency ms", *(["Re-timed ms"] if retimed else [])]
    head += ["Speed-up ×", "Size MB", "Size ×", "Plan"]
    rows = [
        (
            f' data-trial="{r.number}"',
            [
                str(r.number),
                html.escape(r.reference),
                _fmt(r.map50_95, ".4f"),
                _fmt(None if r.map_drop is None else 0.0 - r.map_drop, "+.4f"),
                _fmt(r.latency_ms, ".2f"),
                *([_fmt(r.retimed_ms, ".2f")] if retimed else []),
                _fmt(r.speedup, ".2f")
                + (f" ({r.retimed.q1:.2f}–{r.retimed.q3:.2f})" if r.retimed else "")
                + ("‡" if r.disturbed else "†" if r.unpaired else ""),
                _fmt(r.size_mb, ".2f"),
                _fmt(r.size_ratio, ".2f"),
                html.escape(r.brief),
            ],
        )
        for r in front  # fastest first
    ]
    table = _table(head, rows, {1, len(head) - 1}, "front")
    if retimed:
        rounds = "/".join(str(n) for n in sorted({r.retimed.rounds for r in front if r.retimed}))
        table += _note(
            "Re-timed after the search (tune run, tune retime): the feasible trials near the front were timed "
            f"again in {rounds} rounds, once per round each, with the FP32 reference file (median). The front "
            "and the speed-ups are found on the median of each round's ratio to the reference (in brackets: the "
            "quartiles of those ratios); latency: the trial's own timing in the search."
        )
    elif notes := speed_notes(front):
        text = "; ".join(notes)
        table += _note(text[:1].upper() + text[1:] + ".")
    return table


def _points(trials: Sequence[FrozenTrial], axes: Sequence[int], speeds: Mapping[int, float]) -> dict[str, Any]:
    """Coordinates (``x``, ``y``[, ``z``]) and hover data of ``trials`` on ``axes`` (objectives, or ``_SPEED``)."""

    def value(t: FrozenTrial, i: int) -> float:
        return speeds[t.number] if i == _SPEED else float(t.values[i])

    out: dict[str, Any] = {k: [value(t, i) for t in trials] for k, i in zip("xyz", axes, strict=False)}
    out["customdata"] = [[t.number, html.escape(_brief(t)) or "—"] for t in trials]
    lines = [f"{_AXES[i][0]} %{{{k}:{_AXES[i][1]}}}" for k, i in zip("xyz", axes, strict=False)]
    out["hovertemplate"] = "<br>".join(["trial %{customdata[0]}", "%{customdata[1]}", *lines])
    return out


def _traces(
    complete: Sequence[FrozenTrial],
    front: Sequence[FrontRow],
    axes: Sequence[int],
    trace: Any,
    speeds: Mapping[int, float],
) -> tuple[list[Any], list[FrozenTrial]]:
    """The traces common to 2-D and 3-D plots: trials, infeasible trials and references; plus the front."""
    numbers = {r.number for r in front}
    on_front = [t for t in complete if t.number in numbers]
    plain = [t for t in complete if t.number not in numbers and not _reference(t) and not _infeasible(t)]
    infeasible = [t for t in complete if t.number not in numbers and not _reference(t) and _infeasible(t)]
    out = [
        trace(name="trials", mode="markers", marker={"color": "#aaaaaa", "size": 6}, **_points(plain, axes, speeds)),
        trace(
            name="infeasible",
            mode="markers",
            marker={"color": "#ff7f0e", "symbol": "x", "size": 7},
            **_points(infeasible, axes, speeds),
        ),
    ]
    for ref, symbol in _REFERENCE_SYMBOLS.items():
        refs = [t for t in complete if _reference(t) == ref]
        if refs:
            label = f"reference: {ref}"
            out.append(
                trace(
                    name=label,
                    mode="markers+text",
                    text=[label] * len(refs),
                    textposition="top center",
                    marker={"color": _REFERENCE_COLORS[ref], "symbol": symbol, "size": 11},
                    **_points(refs, axes, speeds),
                )
            )
    return out, on_front


def _scatter_2d(
    complete: Sequence[FrozenTrial], front: Sequence[FrontRow], x: int, speeds: Mapping[int, float] | None = None
) -> str:
    if not complete:
        return _note("No COMPLETE trial yet.")
    speeds = speeds or {}
    if x == _SPEED:
        complete = [t for t in complete if t.number in speeds]
    traces, on_front = _traces(complete, front, (x, 0), go.Scatter, speeds)
    on_front = sorted(on_front, key=lambda t: speeds[t.number] if x == _SPEED else t.values[x])
    traces.insert(
        2,
        go.Scatter(
            name="Pareto front",
            mode="lines+markers",
            # the staircase of what the front dominates: x minimized (latency, size), or maximized (speed)
            line={"shape": "vh" if x == _SPEED else "hv", "color": _FRONT_COLOR},
            marker={"color": _FRONT_COLOR, "size": 9},
            **_points(on_front, (x, 0), speeds),
        ),
    )
    fig = go.Figure(traces)
    fig.update_layout(title=f"mAP50-95 against {_AXES[x][0]}", height=480)
    fig.update_xaxes(title=_AXES[x][0])
    fig.update_yaxes(title="mAP50-95")
    return _figure(fig)


def _scatter_3d(complete: Sequence[FrozenTrial], front: Sequence[FrontRow]) -> str:
    if not complete:
        return _note("No COMPLETE trial yet.")
    axes = (2, 1, 0)
    traces, on_front = _traces(complete, front, axes, go.Scatter3d, {})
    traces.insert(
        2,
        go.Scatter3d(
            name="Pareto front",
            mode="markers",
            marker={"color": _FRONT_COLOR, "size": 6},
            **_points(on_front, axes, {}),
        ),
    )
    fig = go.Figure(traces)
    titles = {f"{k}axis": {"title": _OBJECTIVES[i][0]} for k, i in zip("xyz", axes, strict=True)}
    fig.update_layout(title="latency, size and mAP50-95", height=620, scene=titles)
    return _figure(fig)


def _hypervolume(study: optuna.Study, complete: Sequence[FrozenTrial]) -> str:
    if len(complete) < 2:
        return _note("Needs at least 2 COMPLETE trials.")
    if all(any(v > 0 for v in t.constraints.values()) for t in complete):  # Optuna would only log a warning
        return _note("No trial meets the study's constraints: nothing to take the hypervolume of.")
    reference_point = (0.0, 1.1 * max(t.values[1] for t in complete), 1.1 * max(t.values[2] for t in complete))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        fig = optuna.visualization.plot_hypervolume_history(study, reference_point)
    ref = ", ".join(f"{name} {v:.4g}" for (name, _), v in zip(_OBJECTIVES, reference_point, strict=True))
    return _note(f"Reference point: {ref}.") + _figure(fig)


def _group_heatmaps(front_trials: Sequence[FrozenTrial]) -> str:
    if not front_trials:
        return _note("The front is empty.")
    plans = [_plan(t) for t in front_trials]
    groups = sorted({g for p in plans if p for g, _ in (*p.pruning.ratios, *p.quantization.precision)}, key=_group_key)
    rows = [f"#{t.number} {_reference(t)}".strip() for t in front_trials]
    height = 160 + 28 * len(rows)
    out = ""
    if groups:
        ratios = [[p.pruning.ratio(g) if p else None for g in groups] for p in plans]
        fig = go.Figure(
            go.Heatmap(
                z=ratios,
                x=groups,
                y=rows,
                zmin=0.0,
                zmax=max(0.5, *(r or 0.0 for row in ratios for r in row)),
                colorscale="Blues",
                texttemplate="%{z:.2f}",
                colorbar={"title": "ratio"},
                hovertemplate="%{y}<br>%{x}: pruned %{z:.2f}<extra></extra>",
            )
        )
        fig.update_layout(title="Pruning ratio per group", height=height)
        fig.update_yaxes(autorange="reversed", type="category")
        out += _figure(fig)
    else:
        out += _note("No front plan names a group: no per-group pruning.")
    columns = [*groups, "other groups"]
    precisions = [[(p.quantization.precision_of(g) if p else None) for g in groups] for p in plans]
    precisions = [[*row, p.quantization.default if p else None] for row, p in zip(precisions, plans, strict=True)]
    codes = [[_PRECISION_CODES.get(v) if v else None for v in row] for row in precisions]
    palette = ["#2ca02c", "#ffbf00", "#d62728"]
    colorscale = [[b, palette[i]] for i in range(3) for b in (i / 3, (i + 1) / 3)]
    fig = go.Figure(
        go.Heatmap(
            z=codes,
            x=columns,
            y=rows,
            zmin=-0.5,
            zmax=2.5,
            text=[[v or "" for v in row] for row in precisions],
            texttemplate="%{text}",
            colorscale=colorscale,
            colorbar={
                "title": "precision",
                "tickvals": list(_PRECISION_CODES.values()),
                "ticktext": list(_PRECISION_CODES),
            },
            hovertemplate="%{y}<br>%{x}: %{text}<extra></extra>",
        )
    )
    fig.update_layout(title="Precision per group", height=height)
    fig.update_yaxes(autorange="reversed", type="category")
    return out + _figure(fig)


def _sensitivity_table(study: optuna.Study) -> str:
    """The study's sensitivity scan (``--sensitivity-drop``): each group pruned alone, and which were searched."""
    scan = study.user_attrs.get("sensitivity")
    wanted = (study.user_attrs.get("job") or {}).get("sensitivity") or {}
    if not scan or "max_drop" not in wanted:
        return _note("No sensitivity scan: the search could prune every group (run with --sensitivity-drop).")
    max_drop = float(wanted["max_drop"])
    rows = []
    for g in scan["groups"]:
        searched = g["map_drop"] <= max_drop
        cells = [
            html.escape(str(g["group"])),
            _fmt(g["map50_95"], ".4f"),
            _fmt(-g["map_drop"], "+.4f"),
            _fmt(g["latency_ms"], ".2f"),
            _fmt(g["macs_ratio"], ".3f"),
            "prune" if searched else "–",
        ]
        rows.append((f' data-group="{html.escape(str(g["group"]))}" data-searched="{int(searched)}"', cells))
    note = _note(
        f"Each group pruned alone by {float(scan['ratio']):.0%} (weight L2, "
        f"{html.escape(str(scan.get('recovery', 'bn')))} recovery, FP32) and "
        f"measured like a candidate; unpruned mAP50-95 {float(scan['baseline_map']):.4f}. The search pruned only "
        f"the groups losing at most {max_drop:g}. MACs after/before are torch-pruning's estimate."
    )
    head = ["Group", "mAP50-95", "ΔmAP", "Latency ms", "MACs after/before (est.)", "Searched"]
    return note + _table(head, rows, {0, 5}, "sensitivity")


def _rung0_table(trials: Sequence[FrozenTrial]) -> str:
    """Multi-fidelity: candidates evaluated cheaply and not promoted (their numbers are rung-0 ones)."""
    stopped = [t for t in trials if t.state == TrialState.PRUNED and "rung0" in t.user_attrs]
    if not stopped:
        return _note("Every candidate ran at full fidelity (no multi-fidelity search, or all promoted).")
    rows = []
    for t in stopped:
        m = t.user_attrs["rung0"]
        cells = [
            str(t.number),
            _fmt(m.get("map50_95"), ".4f"),
            _fmt(m.get("latency_ms"), ".2f"),
            _fmt(m.get("size_bytes", 0) / 1e6, ".2f"),
            html.escape(_stand_ins(m)),
            html.escape(_brief(t)),
        ]
        rows.append((f' data-trial="{t.number}"', cells))
    note = _note(
        "Rung 0: post-training recovery only, no fine-tuning, maybe a validation subset; bias/ls recovery "
        "on 8 images at most (ls×8) and MinMax in place of histogram calibration. A latency of — means not "
        "timed: too far under --max-map-drop to be promoted. A stand-in of fp32 precision means its FP32 export "
        "was already that far under, so it was not quantized either (its mAP and size are the FP32 export's). "
        "These trials are not on the front, which holds full-fidelity results only."
    )
    headers = ["Trial", "mAP50-95 (rung 0)", "Latency ms", "Size MB", "Stand-ins", "Plan"]
    return note + _table(headers, rows, {4, 5}, "rung0")


def _stand_ins(rung0: dict[str, Any]) -> str:
    """What rung 0 ran in place of the plan's slow steps (``recovery_proxy``: studies from before ``stand_ins``)."""
    stand_ins = rung0.get("stand_ins") or {"recovery": rung0.get("recovery_proxy")}
    return ", ".join(f"{ran} {step}" for step, ran in stand_ins.items() if ran) or "none"


def _failed_table(trials: Sequence[FrozenTrial]) -> str:
    failed = [t for t in trials if t.state == TrialState.FAIL]
    if not failed:
        return _note("No failed trial.")
    rows = [
        (
            f' data-trial="{t.number}"',
            [str(t.number), html.escape(_brief(t)), html.escape(str(t.user_attrs.get("fail_reason") or "—"))],
        )
        for t in failed
    ]
    return _table(["Trial", "Plan", "Reason"], rows, {1, 2}, "failed")
