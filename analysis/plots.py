"""The sweep's figures as matplotlib ``Figure`` objects (Agg canvas, no pyplot state), so that tests
can inspect their axes and a report can save them.

Metric values are drawn in the objective's unit as the decisions state them, with their real signs
(``sweep.metrics.Metric``: points, 100 × metric, for the GLUE metrics: accuracy 82.35, MCC 41.2, STS-B
Pearson r 85.1; an MSE as itself, 0.512); the y label names the unit and the direction; configurations show their mean over complete seeds with ±1 sample s.d. bars. Figures are
6.4 in wide with text of 9 pt or more, saved at 200 dpi: legible at column width and on GitHub.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, Optional

import matplotlib
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, FixedLocator, FuncFormatter, MaxNLocator, NullLocator
from matplotlib.transforms import blended_transform_factory

from analysis.load import StudyInfo, decisions_frame
from sweep.config import HEAD_ONLY
from sweep.decision import Action
from sweep.metrics import METRICS

DPI = 200
WIDTH = 6.4  # inches
STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "legend.title_fontsize": 9,
    "figure.titlesize": 11,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}
#: decisions that change the course of a sweep, marked on the progression plot
MARKED_ACTIONS = (
    Action.SCREEN,
    Action.PLATEAU,
    Action.RANKS_EXHAUSTED,
    Action.ESCALATE,
    Action.NO_ESCALATION,
    Action.WIDEN,
    Action.BUDGET,
    Action.GRID,
)
#: how trials without an objective are marked on the progression plot: marker, colour
FAILURE_MARKERS = {
    "diverged": ("x", "tab:red"),
    "failed": ("X", "black"),
    "pruned": ("v", "tab:gray"),
    "running": ("o", "tab:gray"),
}
_GLUE_NAMES = {
    "cola": "CoLA",
    "sst2": "SST-2",
    "mrpc": "MRPC",
    "qqp": "QQP",
    "stsb": "STS-B",
    "mnli": "MNLI",
    "qnli": "QNLI",
    "rte": "RTE",
    "wnli": "WNLI",
}


@contextmanager
def _style() -> Iterator[None]:
    # text sizes are fixed when artists are created, so the whole figure is built inside the context
    with matplotlib.rc_context(STYLE):
        yield


def _figure(height: float) -> Figure:
    fig = Figure(figsize=(WIDTH, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def metric_name(info: StudyInfo) -> str:
    """The objective as written in labels: ``accuracy``, ``F1``, ``MCC``, ``Pearson r``, ``MSE``
    (``Metric.label``; a name this version does not know, as it is)."""
    return METRICS[info.objective].label if info.objective in METRICS else info.objective


def baseline_name(info: StudyInfo) -> str:
    """What the baseline is: the constant ``majority class``, for regression the ``training mean``; for a
    causal-LM objective the ``base model`` without the adapter."""
    kind = info.metric.problem_type
    return {"regression": "training mean", "causal_lm": "base model"}.get(kind, "majority class")


def baseline_words(info: StudyInfo) -> str:
    """The baseline in a sentence: ``always predicting the majority class`` (or the training mean), or
    ``the base model without the adapter`` ("does the adapter beat no adapter?")."""
    if info.metric.problem_type == "causal_lm":
        return "the base model without the adapter"
    return f"always predicting the {baseline_name(info)}"


def task_name(info: StudyInfo) -> str:
    """The task as GLUE writes it: ``MRPC``, ``CoLA``."""
    return _GLUE_NAMES.get(info.task, info.task)


def _title(info: StudyInfo, what: str) -> str:
    return f"{task_name(info)} · {plain(info.model)} · {metric_name(info)}: {what}"


def _ylabel(info: StudyInfo) -> str:
    # accuracy and F1 read naturally as percentages; MCC and correlations in [-1, 1] are shown ×100; a
    # metric of its own unit (MSE, a loss) as itself
    m = info.metric
    unit = m.unit if m.unit != "points" else "%" if info.objective in ("accuracy", "f1") else "×100"
    return f"validation {metric_name(info)} ({unit}, {m.better})"


def _colors(targets: pd.Series) -> Dict[str, tuple]:
    """One colour per target set, in the order the sweep first used them, the same in every figure."""
    palette = matplotlib.colormaps["tab10"].colors
    return {t: palette[i % len(palette)] for i, t in enumerate(dict.fromkeys(targets.dropna()))}


def _legend(ax, **kw) -> None:
    """The legend with the target-set series first (matplotlib lists error-bar series last); none
    when nothing is labelled yet (no complete trial)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        order = sorted(range(len(handles)), key=lambda i: not isinstance(handles[i], ErrorbarContainer))
        ax.legend([handles[i] for i in order], [labels[i] for i in order], **kw)


def plain(text) -> str:
    """User text (target regexes, model names) drawn as written: a ``$`` would start matplotlib's
    mathtext, which garbles the text or stops the figure from being drawn."""
    return str(text).replace("$", r"\$")


def _value_ticks(ax, values: pd.Series) -> None:
    """Log x axis whose ticks are the plotted values themselves, written in full (9,216), with limits a third of a tick beyond the extremes: every point's x can be read off, even a single
    one. A value within 15% of the tick before it shares that tick (the labels would overlap)."""
    ticks = []
    for v in sorted(set(values.dropna().astype(float))):
        if v > 0 and (not ticks or v > 1.15 * ticks[-1]):
            ticks.append(v)
    if not ticks:  # nothing to place (head only, rank 0, has no LoRA parameters): a log axis would have no range
        return
    ax.set_xscale("log")
    ax.set_xlim(ticks[0] / 1.4, ticks[-1] * 1.4)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))


def _from_zero(ax, values: pd.Series, unit: str, places: int) -> str:
    """Linear x axis from 0, so that equal costs look equal and run-to-run noise stays small; returns
    the values' span as words (``26.37T–26.40T, 0.1% apart``) for the axis label."""
    ax.set_xlim(left=0, right=1.08 * float(values.max()) if values.notna().any() else None)
    if unit.strip() == "s":  # seconds as plain numbers: engineering prefixes read "200m s" for sub-second trials
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g} s"))
        fmt = lambda v: f"{v:.{max(places, 3)}g} s"  # noqa: E731 - the span's format, beside the ticks'
    else:
        ax.xaxis.set_major_formatter(EngFormatter(unit=unit, sep=""))
        fmt = EngFormatter(unit=unit, sep="", places=places)
    values = values.dropna().astype(float)
    if values.empty or values.min() <= 0:
        return ""
    return f"{fmt(values.min())}–{fmt(values.max())}, {100 * (values.max() / values.min() - 1):.1f}% apart"


def _baseline(ax, info: StudyInfo) -> None:
    if info.baseline is not None:
        m = info.metric
        ax.axhline(
            m.scale * info.baseline,
            color="tab:gray",
            linestyle="--",
            linewidth=1,
            label=f"{baseline_name(info)} ({m.scale * info.baseline:.{max(1, m.decimals - 1)}f})",
        )


def _tradeoff(
    ax,
    summary: pd.DataFrame,
    info: StudyInfo,
    cost: str,
    front: Optional[str],
    colors: Dict[str, tuple],
    label_r: bool = True,
) -> None:
    """Mean ± s.d. of each configuration against ``cost``, one series per target set, r labelled
    (``label_r``),
    the Pareto front of column ``front`` (better in the objective's direction) as a staircase, the
    recommendation starred."""
    scale = info.metric.scale
    done = summary[(summary["n_seeds"] > 0) & summary[cost].notna()]
    if done.empty:
        ax.text(0.5, 0.5, "no complete trial yet", transform=ax.transAxes, ha="center", va="center")
        return
    _head_only(ax, done[done["r"] == HEAD_ONLY], info)
    done = done[done["r"] != HEAD_ONLY]
    for i, (targets, g) in enumerate(done.groupby("targets", sort=False)):
        g = g.sort_values(cost)
        x, y = g[cost].astype(float), scale * g["objective_mean"]
        ax.errorbar(
            x,
            y,
            yerr=scale * g["objective_sd"].fillna(0),
            marker="o",
            markersize=5,
            capsize=3,
            linewidth=1.2,
            color=colors[targets],
            label=plain(targets),
        )
        # configurations of different target sets often share a cost (r=4 on q,v and r=2 on q,k,v,o):
        # labels in the series' colour, alternately right and left of their points
        right = i % 2 == 0
        for r, xi, yi in zip(g["r"], x, y) if label_r else ():
            ax.annotate(
                f"r={r}",
                (xi, yi),
                xytext=(4 if right else -4, 4),
                textcoords="offset points",
                ha="left" if right else "right",
                fontsize=9,
                color=colors[targets],
            )
    if front is not None:
        f = done[done[front]].sort_values(cost)
        # the best metric reachable at each cost: flat until the next front point
        ax.step(
            f[cost].astype(float),
            scale * f["objective_mean"],
            where="post",
            color="black",
            linewidth=1,
            alpha=0.7,
            label="Pareto front",
            zorder=1,
        )
    rec = done[done["recommended"]]
    if not rec.empty:
        row = rec.iloc[0]
        note = "" if info.finished else ", provisional"
        ax.plot(
            [float(row[cost])],
            [scale * row["objective_mean"]],
            linestyle="none",
            marker="*",
            markersize=16,
            markerfacecolor="gold",
            markeredgecolor="black",
            zorder=5,
            label=f"recommended: r={row['r']} {plain(row['targets'])}{note}",
        )
    _baseline(ax, info)


def _head_only(ax, head: pd.DataFrame, info: StudyInfo) -> None:
    """Head only (rank 0: no adapter, no LoRA parameters, which a log axis cannot place) as a dashed horizontal
    reference line at its mean, the recommendation's words in its label when it is the one recommended."""
    if head.empty:
        return
    row = head.iloc[0]
    m = info.metric
    value = m.scale * row["objective_mean"]
    pick = ", recommended" + ("" if info.finished else ", provisional") if row["recommended"] else ""
    ax.axhline(
        value,
        color="tab:purple",
        linestyle="--",
        linewidth=1.2,
        label=f"head only{pick} ({value:.{max(1, m.decimals - 1)}f})",
    )


def _head_words(summary: pd.DataFrame) -> str:
    """The head's trainable parameters, the same in every configuration, as words for a label."""
    head = (summary["trainable_params"] - summary["lora_params"]).dropna().astype(int)
    if head.empty:
        return ""
    span = f"{head.min():,}" if head.min() == head.max() else f"{head.min():,}–{head.max():,}"
    return f"; every configuration also trains the head's {span}"


def metric_vs_params(summary: pd.DataFrame, info: StudyInfo) -> Figure:
    """The objective (points) of each configuration against its LoRA parameters (log scale, a tick at
    every value); the classification head, trained in every configuration, is stated once in the
    axis label rather than added to every x (it would squeeze the ranks together).

    ``summary`` comes from ``summary_frame``. One series per target set with ±1 s.d. bars over seeds,
    r labelled at each point, the Pareto front (``pareto_params``: with the same head, fewest
    trainable parameters is fewest LoRA parameters), the recommended configuration starred, the
    majority-class baseline dashed. Returns the figure (not saved).
    """
    with _style():
        fig = _figure(4.2)
        ax = fig.add_subplot()
        _tradeoff(ax, summary, info, "lora_params", "pareto_params", _colors(summary["targets"]))
        _value_ticks(ax, summary.loc[summary["n_seeds"] > 0, "lora_params"])
        ax.set_xlabel(f"{info.method_name} parameters (log scale){_head_words(summary)}")
        ax.set_ylabel(_ylabel(info))
        ax.set_title(_title(info, "metric vs parameters"))
        _legend(ax, title="target matrices (bars: ±1 s.d.)", loc="best")
    return fig


def metric_vs_compute(summary: pd.DataFrame, info: StudyInfo) -> Figure:
    """The objective (points) against mean training FLOPs per trial (left, with the ``pareto_flops``
    front) and mean training seconds per trial (right, measured wall time); otherwise as
    ``metric_vs_params`` but without r labels (the points of a sweep nearly coincide here; r is read
    off ``metric_vs_params``). Both axes are linear from 0: LoRA's rank barely changes the compute of a
    frozen model's forward and backward pass, and a log axis zoomed on a 0.1% spread (or on seconds
    of run-to-run noise) would draw that as a difference. Each axis label gives the spread in numbers.
    Returns the figure (not saved)."""
    with _style():
        fig = _figure(4.0)
        flops_ax, time_ax = fig.subplots(1, 2, sharey=True)
        colors = _colors(summary["targets"])
        _tradeoff(flops_ax, summary, info, "mean_train_flops", "pareto_flops", colors, label_r=False)
        _tradeoff(time_ax, summary, info, "mean_train_seconds", None, colors, label_r=False)
        done = summary[summary["n_seeds"] > 0]
        flops_span = _from_zero(flops_ax, done["mean_train_flops"], "", 2)
        time_span = _from_zero(time_ax, done["mean_train_seconds"], " s", 0)
        flops_ax.set_xlabel("training FLOPs per trial" + (f"\n({flops_span})" if flops_span else ""))
        time_ax.set_xlabel("training time per trial" + (f"\n({time_span})" if time_span else ""))
        flops_ax.set_ylabel(_ylabel(info))
        fig.suptitle(_title(info, "metric vs compute"))
        _legend(flops_ax, title="target matrices (bars: ±1 s.d.)", loc="best")
    return fig


def progression(trials: pd.DataFrame, info: StudyInfo) -> Figure:
    """The search in the order it ran, from ``trials`` of ``trials_frame``.

    Top: each trial's objective (points) by trial number, coloured by target set, the first trial of
    each configuration labelled with its r; collapsed trials (a constant prediction) marked apart and left out
    of the means, as the decisions leave them out; diverged, failed, pruned and running trials marked along
    the bottom edge; each configuration's mean as a bar across its trials; a dotted vertical line after the trial at
    which a course-changing decision was taken (``MARKED_ACTIONS``), named on a top axis. Bottom: the
    cumulative training FLOPs of every trial (failed ones included: they were spent). Returns the
    figure (not saved)."""
    with _style():
        fig = _figure(5.0)
        ax, flops_ax = fig.subplots(2, 1, sharex=True, height_ratios=[2, 1])
        colors = _colors(trials["targets"])
        scale = info.metric.scale
        ok = trials[trials["state"] == "complete"]
        nested = ok["nested"].astype("boolean").fillna(False).astype(bool)
        if nested.any():  # the screen's trials: their value at their largest rank, no configuration's
            g = ok[nested]
            ax.plot(
                g["number"],
                scale * g["objective"],
                linestyle="none",
                marker="x",
                markersize=6,
                color="0.4",
                label="nested (screen), at its largest rank",
            )
        ok = ok[~nested]
        collapsed = ok["collapsed"].astype("boolean").fillna(False).astype(bool)
        if collapsed.any():  # a constant prediction: no value of its configuration (sweep/collapse.py)
            g = ok[collapsed]
            ax.plot(
                g["number"],
                scale * g["objective"],
                linestyle="none",
                marker="v",
                markersize=6,
                color="0.4",
                label="collapsed (constant prediction, left out)",
            )
        ok = ok[~collapsed]
        for targets, g in ok.groupby("targets", sort=False):
            ax.plot(
                g["number"],
                scale * g["objective"],
                linestyle="none",
                marker="o",
                markersize=5,
                color=colors[targets],
                label=plain(targets),
            )
        first = ok.drop_duplicates(["r", "targets"])
        for n, r, y in zip(first["number"], first["r"], scale * first["objective"]):
            label = "head only" if r == HEAD_ONLY else f"r={r}"
            ax.annotate(label, (n, y), xytext=(0, 6), textcoords="offset points", ha="center", fontsize=9)
        # decisions compare configuration means, not single seeds: draw the mean across each one's trials
        groups = [g for _, g in ok.groupby(["r", "targets"], sort=False)]
        if groups:
            ax.hlines(
                [scale * g["objective"].mean() for g in groups],
                [g["number"].min() - 0.35 for g in groups],
                [g["number"].max() + 0.35 for g in groups],
                colors=[colors[g["targets"].iloc[0]] for g in groups],
                linewidth=2,
                alpha=0.5,
                label="configuration mean",
            )
        # trials without an objective sit on the bottom edge, below every point and the baseline
        ax.margins(y=0.15)
        bottom = blended_transform_factory(ax.transData, ax.transAxes)
        for state, (marker, color) in FAILURE_MARKERS.items():
            g = trials[trials["state"] == state]
            if not g.empty:
                ax.plot(
                    g["number"],
                    [0.04] * len(g),
                    transform=bottom,
                    linestyle="none",
                    marker=marker,
                    markersize=7,
                    color=color,
                    markerfacecolor="none" if state == "running" else color,
                    clip_on=False,
                    label=f"{state} ({len(g)})",
                )
        _baseline(ax, info)
        marked = decisions_frame(trials, info)
        marked = marked[marked["action"].isin(MARKED_ACTIONS)]
        positions, names = [], []
        for at, group in marked.groupby("after_trial"):
            positions.append(at + 0.5)
            names.append("\n".join(d.action + (f" r={d.r}" if pd.notna(d.r) else "") for d in group.itertuples()))
            for a in (ax, flops_ax):
                a.axvline(
                    at + 0.5,
                    color="tab:purple",
                    linestyle=":",
                    linewidth=1.2,
                    label="decision" if len(positions) == 1 and a is ax else None,
                )
        if positions:
            # named on a top axis rather than inside the plot, where they would cover trials
            top = ax.secondary_xaxis("top")
            top.set_xticks(positions, names, rotation=90, fontsize=9, color="tab:purple")
            top.tick_params(length=0)
        ax.set_ylabel(_ylabel(info))
        ax.set_title(_title(info, "search progression"))
        _legend(ax, loc="best", ncols=2)
        flops_ax.plot(
            trials["number"],
            trials["train_flops"].fillna(0).cumsum(),
            marker=".",
            drawstyle="steps-post",
            color="tab:blue",
        )
        flops_ax.set_ylabel("cumulative\ntraining FLOPs")
        flops_ax.set_xlabel("trial number (order run)")
        flops_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def figures(trials: pd.DataFrame, summary: pd.DataFrame, info: StudyInfo) -> Dict[str, Figure]:
    """Every figure of a report by file stem: ``metric_vs_params``, ``metric_vs_compute``,
    ``progression``."""
    return {
        "metric_vs_params": metric_vs_params(summary, info),
        "metric_vs_compute": metric_vs_compute(summary, info),
        "progression": progression(trials, info),
    }


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG at ``DPI`` (parent folders created; whole or not at all:
    ``sweep.faults.atomic_write``); returns ``path``."""
    from sweep.faults import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png"))
