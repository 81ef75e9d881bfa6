"""The comparison's figures (``make compare``, ``analysis/methods.py``) as matplotlib ``Figure`` objects in the
style of ``analysis/plots.py``: each method at its chosen rate as a labelled point with its 95% interval over
seeds, against its trainable parameters (log scale) and against its mean training FLOPs (linear from 0), with
the rank sweep's curve (its summary, one line per target set) beside them when there is one.

Metric values are drawn in the objective's unit with their real signs, as the sweep's plots draw them
(``sweep.metrics.Metric``: points for the GLUE metrics).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Optional

import matplotlib
import pandas as pd
from matplotlib.figure import Figure

from analysis.plots import _baseline, _figure, _from_zero, _legend, _style, _title, _ylabel, plain
from sweep.config import HEAD_ONLY

if TYPE_CHECKING:
    from analysis.methods import ComparisonInfo, SweepBeside

#: the sweep's curve, drawn under the methods' points
SWEEP_COLOR = "0.45"


def _interval(frame: pd.DataFrame, scale: float):
    """(y, yerr) of rows with ``objective_mean`` and the 95% interval ``objective_ci95_low``/``_high`` (metric
    units), in the display unit; a row without an interval gets a zero bar."""
    y = scale * frame["objective_mean"]
    low = (y - scale * frame["objective_ci95_low"]).abs().fillna(0)
    high = (scale * frame["objective_ci95_high"] - y).abs().fillna(0)
    return y, [list(low), list(high)]


def _sweep_curve(ax, beside: Optional[SweepBeside], cost: str, scale: float) -> None:
    """The rank sweep's configurations against ``cost`` (a summary.csv column), one line per target set with r
    labelled and 95% bars, its recommendation starred; nothing without a comparable sweep."""
    if beside is None or beside.summary is None:
        return
    from analysis.methods import matrices

    done = beside.summary[
        (beside.summary["n_seeds"] > 0) & beside.summary[cost].notna() & (beside.summary["r"] > 0)
    ]  # head only (r=0): no rank
    for i, (targets, g) in enumerate(done.groupby("targets", sort=False)):
        g = g.sort_values(cost)
        y, yerr = _interval(g, scale)
        ax.errorbar(
            g[cost].astype(float),
            y,
            yerr=yerr,
            marker="s",
            markersize=3.5,
            capsize=2,
            linewidth=1,
            color=SWEEP_COLOR,
            alpha=0.8,
            linestyle=("-", "--", ":", "-.")[i % 4],
            label=f"rank sweep on {plain(matrices(targets.split(',')))}",
            zorder=1,
        )
        for r, xi, yi in zip(g["r"], g[cost], y):
            ax.annotate(
                f"r={r}",
                (xi, yi),
                xytext=(0, -11),
                textcoords="offset points",
                ha="center",
                fontsize=8,
                color=SWEEP_COLOR,
            )
    if beside.row is not None and not pd.isna(beside.row[cost]):
        ax.plot(
            [float(beside.row[cost])],
            [scale * beside.row["objective_mean"]],
            linestyle="none",
            marker="*",
            markersize=14,
            markerfacecolor="gold",
            markeredgecolor="black",
            zorder=4,
            label="the sweep's recommendation: "
            + (
                "head only"
                if beside.row["r"] == HEAD_ONLY
                else f"r={beside.row['r']} on {plain(matrices(beside.row['targets'].split(',')))}"
            ),
        )


def _methods(ax, methods: pd.DataFrame, info: ComparisonInfo, cost: str) -> None:
    """Each method at its chosen rate: a point at (``cost``, mean) with its 95% interval, named beside it; the
    methods without a mean (every seed collapsed) named in a corner instead."""
    scale = info.metric.scale
    chosen = methods[methods["chosen"] & methods[cost].notna()]
    drawn = chosen[chosen["objective_mean"].notna()]
    palette = matplotlib.colormaps["tab10"].colors
    colors = {label: palette[i % len(palette)] for i, label in enumerate(drawn["label"])}
    drawn = drawn.sort_values(cost, kind="stable")
    y, yerr = _interval(drawn, scale)
    for i, (x, yi, low, high, label) in enumerate(zip(drawn[cost], y, *yerr, drawn["label"])):
        ax.errorbar(
            [float(x)], [yi], yerr=[[low], [high]], marker="o", markersize=6, capsize=3, color=colors[label], zorder=3
        )
        # neighbours often share a cost (head, IA³ and VeRA train about the head's parameters): labels alternately
        # above and below, on the right of their point (the rightmost on its left, inside the axes)
        right = float(x) < float(drawn[cost].max())
        ax.annotate(
            plain(label),
            (float(x), yi),
            xytext=(6 if right else -6, 5 if i % 2 == 0 else -12),
            textcoords="offset points",
            ha="left" if right else "right",
            fontsize=8,
            color=colors[label],
        )
    missing = chosen[chosen["objective_mean"].isna()]
    if not missing.empty:
        ax.text(
            0.01,
            0.01,
            "not drawn, every seed collapsed: " + ", ".join(plain(lb) for lb in missing["label"]),
            transform=ax.transAxes,
            fontsize=8,
            color="0.3",
        )
    if drawn.empty:
        ax.text(0.5, 0.5, "no method has a counted seed", transform=ax.transAxes, ha="center", va="center")


def _log_ticks(ax, values: pd.Series) -> None:
    """Log x axis with a labelled tick per decade (100,000 · 1,000,000 · …), unlabelled minor ticks and limits a
    little beyond the plotted values: methods lie a few percent apart in parameters and decades apart from full
    fine-tuning, so ticks at every value (the sweep's ``_value_ticks``) would write over each other."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    values = values.dropna().astype(float)
    values = values[values > 0]
    ax.set_xscale("log")
    if len(values):
        ax.set_xlim(values.min() / 1.6, values.max() * 1.6)
    ax.xaxis.set_major_locator(LogLocator(base=10))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _points_range(ax, info: ComparisonInfo) -> None:
    """Keep the y axis of a metric in points (scale 100) within what it can take: [−100, 100] for a correlation
    (MCC, Pearson, Spearman), [0, 100] for accuracy, F1 and token accuracy, so that a wide interval of two seeds runs off
    the axis instead of stretching it past what the metric can reach."""
    if info.metric.scale != 100:
        return
    low, high = ax.get_ylim()
    floor = -100.0 if info.objective in ("mcc", "pearson", "spearman") else 0.0  # correlations can be negative
    ax.set_ylim(max(low, floor), min(high, 100.0))


def methods_vs_params(methods: pd.DataFrame, info: ComparisonInfo, beside: Optional[SweepBeside] = None) -> Figure:
    """The objective of each method (``methods_frame`` rows marked ``chosen``) against its trainable parameters
    (log scale, a tick at every value as the sweep's plot has: full fine-tuning trains ~100× more than the
    adapters), 95% bars over seeds, with the rank
    sweep's curve by trainable parameters and its recommendation (``beside``) and the constant baseline dashed.
    Returns the figure (not saved)."""
    with _style():
        fig = _figure(4.6)
        ax = fig.add_subplot()
        _sweep_curve(ax, beside, "trainable_params", info.metric.scale)
        _methods(ax, methods, info, "trainable_params")
        _baseline(ax, info)
        drawn = methods.loc[methods["chosen"] & methods["objective_mean"].notna(), "trainable_params"]
        if beside is not None and beside.summary is not None:
            drawn = pd.concat([drawn, beside.summary.loc[beside.summary["n_seeds"] > 0, "trainable_params"]])
        _log_ticks(ax, drawn)
        _points_range(ax, info)
        ax.set_xlabel("trainable parameters (log scale; the classification head included)")
        ax.set_ylabel(_ylabel(info))
        ax.set_title(_title(info, "methods vs trainable parameters"))
        _legend(ax, title="bars: 95% interval over seeds", loc="best")
    return fig


def methods_vs_flops(methods: pd.DataFrame, info: ComparisonInfo, beside: Optional[SweepBeside] = None) -> Figure:
    """As ``methods_vs_params`` against the mean training FLOPs per trial (executed, ``sweep/flops.py``), on a
    linear axis from 0 (a frozen model's adapters differ in compute by small factors; a log axis would draw them
    as far apart as their parameters), the span named in the axis label. Returns the figure (not saved)."""
    with _style():
        fig = _figure(4.6)
        ax = fig.add_subplot()
        _sweep_curve(ax, beside, "mean_train_flops", info.metric.scale)
        _methods(ax, methods, info, "mean_train_flops")
        _baseline(ax, info)
        costs = methods.loc[methods["chosen"], "mean_train_flops"]
        if beside is not None and beside.summary is not None:
            costs = pd.concat([costs, beside.summary["mean_train_flops"]])
        span = _from_zero(ax, costs, "", 2)
        _points_range(ax, info)
        ax.set_xlabel("training FLOPs per trial" + (f"\n({span})" if span else ""))
        ax.set_ylabel(_ylabel(info))
        ax.set_title(_title(info, "methods vs training FLOPs"))
        _legend(ax, title="bars: 95% interval over seeds", loc="best")
    return fig


def method_figures(methods: pd.DataFrame, info: ComparisonInfo, beside: Optional[SweepBeside]) -> Dict[str, Figure]:
    """Every figure of a comparison's report by file stem: ``methods_vs_params``, ``methods_vs_flops``."""
    return {
        "methods_vs_params": methods_vs_params(methods, info, beside),
        "methods_vs_flops": methods_vs_flops(methods, info, beside),
    }
