"""The text of a comparison's ``report.md`` (``make compare``, ``analysis/methods.py``): the methods laid out like
LoRA's Table 2 (Hu et al. 2021), each at its chosen rate, the rank sweep's recommendation as a last row when
there is a comparable sweep, and with a bracket of rate factors the method × rate table it was chosen from."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import pandas as pd

from analysis.markdown import code as _code
from analysis.markdown import escape as _md
from analysis.plots import baseline_words, metric_name, task_name
from analysis.report import mean_sd, objective_words, shown

if TYPE_CHECKING:
    from analysis.methods import ComparisonInfo, SweepBeside

#: the figures of the report, by file stem, with their alt text
CAPTIONS = {
    "methods_vs_params": "methods vs trainable parameters",
    "methods_vs_flops": "methods vs training FLOPs",
}


def _factor(x: float) -> str:
    return f"×{x:g}"


def _table_row(row, info: ComparisonInfo, mark: str = "") -> str:
    """One row of the methods table from a methods.csv row (``analysis.methods.COLUMNS``)."""
    ci = (
        "—"
        if pd.isna(row["objective_ci95_low"])
        else f"{shown(row['objective_ci95_low'], info)}–{shown(row['objective_ci95_high'], info)}"
    )
    mean = "— (no counted seed)" if pd.isna(row["objective_mean"]) else f"{mean_sd(row, info)} (n={row['n_seeds']})"
    params = "—" if pd.isna(row["trainable_params"]) else f"{int(row['trainable_params']):,}"
    pct = "—" if pd.isna(row["trainable_pct"]) else f"{row['trainable_pct']:.3g}%"
    flops = "—" if pd.isna(row["mean_train_flops"]) else f"{row['mean_train_flops']:.2e}"
    seconds = "—" if pd.isna(row["mean_train_seconds"]) else f"{row['mean_train_seconds']:.1f}"
    memory = "—" if pd.isna(row["peak_mem_mb"]) else f"{row['peak_mem_mb']:,.0f}"
    rate = "—" if pd.isna(row["lr"]) else f"{row['lr']:g}"  # a sweep whose trials did not record it
    label = _md(row["label"])
    return (
        f"| {f'{mark}{label}{mark}'} | {params} | {pct} | {mean} | {ci} "
        f"| {row['n_seeds']} / {row['n_collapsed']} / {row['n_failed']} | {rate} | {flops} | {seconds} | {memory} |"
    )


def _rate_lines(methods: pd.DataFrame, trials: pd.DataFrame, info: ComparisonInfo) -> List[str]:
    """The method × rate-factor table (each cell: the rate, the mean over the counted seeds, every seed's value,
    collapsed ones marked †) and each method's best rate; none with one factor."""
    factors = sorted(methods["lr_scale"].dropna().unique())
    if len(factors) < 2:
        return []
    m = info.metric
    lines = [
        "",
        "## Learning rates",
        "",
        "Each method at its own rate (`conf/method/`) times each factor of `compare.lr_scale`. A cell: the rate, the "
        "mean over the seeds that did not collapse, then every seed's value (†: collapsed, left out of the mean); "
        "in bold each method's best rate by mean, the one the table above shows.",
        "",
        "| method | " + " | ".join(_factor(f) for f in factors) + " |",
        "|---|" + "---:|" * len(factors),
    ]
    best = []
    for (_, label), rows in methods.groupby(["method", "label"], sort=False):
        cells = []
        for f in factors:
            at = rows[rows["lr_scale"] == f]
            if at.empty:
                cells.append("—")
                continue
            row = at.iloc[0]
            group = trials[(trials["label"] == label) & (trials["lr"] == row["lr"])].sort_values("seed")
            seeds = [
                ("—" if pd.isna(v) else m.fmt(m.scale * v)) + ("†" if c else "")
                for v, c in zip(group["value"], group["collapsed"])
            ]
            mean = "—" if pd.isna(row["objective_mean"]) else shown(row["objective_mean"], info)
            cell = f"{row['lr']:g}: {mean} ({', '.join(seeds)})"
            cells.append(f"**{cell}**" if row["chosen"] else cell)
        lines.append(f"| {_md(label)} | " + " | ".join(cells) + " |")
        chosen = rows[rows["chosen"]].iloc[0]
        best.append(f"{_md(label)} {chosen['lr']:g} ({_factor(chosen['lr_scale'])})")
    lines += ["", f"Best rate per method, by mean: {'; '.join(best)}."]
    return lines


def _sweep_lines(beside: Optional[SweepBeside], folder: Path) -> List[str]:
    """What the last row is (the rank sweep's recommendation, from its own trials), or why the sweep is not shown."""
    if beside is None:
        return []
    where = _code(os.path.relpath(beside.folder, folder) + "/")
    if beside.row is None:
        return ["", f"The rank sweep {where} is not shown: {_md(beside.note)}."]
    return [
        "",
        f"The last row is the rank sweep's recommendation, from that sweep's trials ({where}: its seeds, its "
        "statistics, summary.csv's), trained apart from this comparison; the plots draw its rank curve.",
    ]


def report_markdown(
    methods: pd.DataFrame,
    trials: pd.DataFrame,
    info: ComparisonInfo,
    folder: Path,
    beside: Optional[SweepBeside] = None,
) -> str:
    """The text of a comparison's ``report.md``: what was compared and how it is measured, the methods table
    (``methods`` rows marked ``chosen``, from ``analysis.methods.methods_frame``; the rank sweep's recommendation
    ``beside`` as a last row), the learning-rate table when the trials hold more than one rate factor, and the two
    plots linked as ``plots/<name>.png``. ``trials``: ``analysis.methods.trial_frame`` of ``folder``. Values in the
    objective's unit (points for the GLUE metrics)."""
    m = info.metric
    factors = sorted(methods["lr_scale"].dropna().unique())
    states = trials.assign(state=trials["status"].where(~trials["collapsed"].astype(bool), "collapsed"))["state"]
    counts = ", ".join(f"{n} {state}" for state, n in states.value_counts().items())
    seeds = ", ".join(str(s) for s in sorted(trials["seed"].dropna().unique()))
    rates = (
        f"each method at its own rate (`conf/method/`) times the factors {', '.join(f'{f:g}' for f in factors)} "
        "(`compare.lr_scale`); the table shows each method at its best rate by mean (Learning rates, below)"
        if len(factors) > 1
        else f"each method at its own rate (`conf/method/`){f' × {factors[0]:g}' if factors and factors[0] != 1 else ''}"
    )
    lines = [
        f"# Methods side by side: {task_name(info)} on {_md(info.model)}",
        "",
        f"- **Objective**: {objective_words(info)}; methods.csv holds metric units.",
        f"- **Comparison**: {_code(f'compare/{folder.name}/')}, {len(trials)} trials ({counts}), seeds {{{seeds}}}.",
        f"- **Learning rates**: {rates}.",
    ]
    if info.baseline is not None:
        lines.append(f"- **Baseline** ({baseline_words(info)}): {shown(info.baseline, info)}.")
    lines += [
        "",
        "## Methods (LoRA Table 2)",
        "",
        f"Per method: {metric_name(info)} ({m.unit}, {m.better}) mean ± s.d. over its seeds that did not collapse (n; "
        "collapsed seeds predicted one answer for every example and are counted apart, as the sweep counts them), the "
        "95% Student-t interval of the mean (the s.d. floored at sweep.noise_floor validation examples, as in the "
        "sweep's summary.csv), the trainable parameters (the classification head included) and their share of the "
        "model, the mean training FLOPs and seconds per trial, and the largest peak memory.",
        "",
        f"| method | trainable params | % of the model | {metric_name(info)} mean ± s.d. (n) | 95% interval "
        "| seeds ok / collapsed / diverged | lr | train FLOPs | train s | peak memory (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(_table_row(row, info) for _, row in methods[methods["chosen"]].iterrows()),
    ]
    if beside is not None and beside.row is not None:
        lines.append(_table_row(beside.row, info, "**"))
    lines += _sweep_lines(beside, folder)
    lines += _rate_lines(methods, trials, info)
    lines += [
        "",
        "## Plots",
        "",
        *(f"![{caption}](plots/{name}.png)\n" for name, caption in CAPTIONS.items()),
        "Per trial: `trials/*/metrics.json`; per method and rate: [methods.csv](methods.csv).",
    ]
    return "\n".join(lines) + "\n"
