"""Write a sweep's reports into its folder: ``trials.csv``, ``summary.csv``, ``plots/*.png`` and
``report.md`` (a short summary that embeds the plots, readable on GitHub).

Works on a finished, running (another process still writing), interrupted, progressive or grid sweep;
a running or interrupted sweep gets a provisional recommendation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

import pandas as pd

from analysis.load import FINISHED_STATES, StudyInfo, decisions_frame, study_info, trials_frame
from analysis.markdown import code as _code
from analysis.markdown import escape as _md
from analysis.plots import baseline_name, baseline_words, figures, metric_name, save_figure, task_name
from analysis.reliability import Reliability, reliability
from analysis.summary import budget_frame, recommendation, results, summary_frame
from sweep.cli import make_command
from sweep.config import HEAD_ONLY
from sweep.decide import Outcome, at_rate, noise_floor
from sweep.decision import HEAD_ONLY_LABEL, Action, ConfigKey, StopReason, config_label, stop_text
from sweep.errors import UserError
from sweep.faults import atomic_write
from sweep.inits import INIT_WORDS
from sweep.stats import welch
from sweep.study import load_study

if TYPE_CHECKING:  # imported where used: `python -m analysis.subspace_report` must not find it loaded by the package
    from analysis.methods import Reference
    from analysis.subspace_report import SubspaceAnalysis

#: what each plot shows, as its alt text in report.md
CAPTIONS = {
    "metric_vs_params": "objective vs trainable parameters",
    "metric_vs_compute": "objective vs training FLOPs and training time",
    "progression": "search progression: trials in order, decisions, cumulative compute",
}


def shown(value: float, info: StudyInfo) -> str:
    """A value in metric units as the report writes it: in the objective's unit (points: 100 × metric),
    with its real sign (an MSE as itself); ``—`` for NaN. ``info``: anything with the objective's ``metric``
    (a ``StudyInfo``, or a comparison's ``analysis.methods.ComparisonInfo``), as below."""
    m = info.metric
    return "—" if pd.isna(value) else m.fmt(m.scale * value)


def mean_sd(row, info: StudyInfo) -> str:
    """``82.35 ± 1.20``: a row's ``objective_mean`` ± ``objective_sd`` (metric units) as ``shown``; no ± without an s.d."""
    sd = "" if pd.isna(row["objective_sd"]) else f" ± {shown(row['objective_sd'], info)}"
    return f"{shown(row['objective_mean'], info)}{sd}"


def objective_words(info: StudyInfo) -> str:
    """What the objective is and how its values are written: ``validation accuracy, maximised (higher is
    better); values below and in the plots are points (100 × accuracy, …)``, or for a metric of its own
    unit ``validation MSE, minimised (lower is better); values below and in the plots are squared label
    units (the MSE itself)``."""
    m = info.metric
    unit = (
        f"points (100 × {info.objective}, i.e. percent for accuracy and F1)"
        if m.unit == "points"
        else f"{m.unit} (the {m.label} itself)"
    )
    verb = "maximised" if m.sign > 0 else "minimised"
    return f"validation {metric_name(info)}, {verb} ({m.better}); values below and in the plots are {unit}"


def _status_line(trials: pd.DataFrame, info: StudyInfo) -> str:
    if info.finished:
        why = stop_text(info.stop_reason, info.decisions)
        head = info.stop_reason == StopReason.COLLAPSED and (info.recommendation or (None,))[0] == 0
        return f"finished ({'every adapter trial collapsed; head only (r=0) did not' if head else why})"
    if info.running:
        return (
            f"not finished: {info.running} trial(s) marked running (training now, or left by an "
            "interrupted run; re-running the sweep resumes them); results so far"
        )
    return "not finished (interrupted, or between two trials); results so far"


def _counts(trials: pd.DataFrame) -> str:
    counts = trials["state"].value_counts()
    known = (*FINISHED_STATES, "running")
    order = [*known, *sorted(set(counts.index) - set(known))]
    return ", ".join(f"{int(counts.get(s, 0))} {s}" for s in order if s == "complete" or s in counts.index)


def _n_nested(trials: pd.DataFrame) -> int:
    return int(trials["nested"].astype("boolean").fillna(False).sum())


def _screen_lines(info: StudyInfo) -> List[str]:
    """The screen's section (``sweep.screen``): each nested trial's value by rank and their mean, in the
    objective's unit, and what they cost; empty without nested trials."""
    nested = [(n, o) for n, o in info.history if o.nested and o.rank_values]
    if not nested:
        return []
    m = info.metric
    ranks = sorted({r for _, o in nested for r in o.rank_values})
    head = " | ".join(f"trial {n} (seed {o.seed})" for n, o in nested)
    lines = [
        "",
        "## Screen: nested-rank trials",
        "",
        f"{len(nested)} nested trial(s) on {_md(nested[0][1].targets)} (one adapter at r={nested[0][1].r}, every rank "
        "evaluated by truncation, `sweep/nested.py`), "
        f"{sum(o.train_flops for _, o in nested):.3g} training FLOPs in all. Their values inform the screen's "
        "decision only, never the statistics or the recommendation: on MRPC they ran 1.8–4.8 points below "
        "independent trials, most at high ranks (docs/validation.md §6).",
        "",
        f"| r | {head} | mean |",
        "|---:|" + "---:|" * (len(nested) + 1),
    ]
    for r in ranks:
        values = [o.rank_values.get(r) for _, o in nested]
        cells = [shown(v, info) if v is not None else "—" for v in values]
        known = [m.score(v) for v in values if v is not None]
        mean = shown(m.value(sum(known) / len(known)), info) if known else "—"
        lines.append(f"| {r} | {' | '.join(cells)} | {mean} |")
    return lines


def _collapsed(info: StudyInfo) -> List[Tuple[int, Outcome]]:
    """(trial number, outcome) of every independent trial that collapsed to a constant prediction."""
    return [(n, o) for n, o in info.history if o.collapsed and not o.nested]


def collapse_text(o: Outcome, info: StudyInfo) -> str:
    """What one collapsed trial scored, against the constant baseline: ``collapsed to the majority class
    (68.38)``, or ``collapsed to a constant prediction (31.62; the majority class scores 68.38)``."""
    value = shown(o.value, info)
    if info.baseline is None:
        return f"collapsed to a constant prediction ({value})"
    if abs(o.value - info.baseline) > 1e-9:
        return f"collapsed to a constant prediction ({value}; the {baseline_name(info)} scores {shown(info.baseline, info)})"
    if info.metric.problem_type == "regression":  # a constant scores what the training mean scores, whichever
        return f"collapsed to a constant prediction ({value}, what the training mean scores)"
    return f"collapsed to the {baseline_name(info)} ({value})"


def _collapsed_lines(info: StudyInfo) -> List[str]:
    """The collapsed trials, each named (trial, configuration, seed) with what it scored; empty without one."""
    collapsed = _collapsed(info)
    if not collapsed:
        return []
    return [
        "",
        "## Collapsed trials",
        "",
        "Each predicted the same answer for every validation example (`sweep/collapse.py`); the decisions leave "
        "it out of means, σ, comparisons and the recommendation, and a progressive sweep runs the next seed in its "
        "place, or stops when every trial so far collapsed (docs/validation.md §7).",
        "",
        *[
            f"- trial {n} ({_md(f'r={o.r} {o.targets} seed {o.seed}')}): {_md(collapse_text(o, info))}"
            for n, o in collapsed
        ],
    ]


def _tried(summary: pd.DataFrame, info: StudyInfo) -> str:
    sets = [
        f"r ∈ {{{', '.join(str(r) for r in g['r'])}}} on {_md(t)}" for t, g in summary.groupby("targets", sort=False)
    ]
    most = int(summary["n_seeds"].max()) if len(summary) else 0
    raced = (
        f", up to {most} where a comparison was raced (sweep.max_seeds={info.settings.max_seeds})"
        if info.settings.mode != "grid" and most > len(info.settings.seeds)
        else ""
    )
    return (
        f"{len(summary)} configuration(s): {'; '.join(sets) or 'none yet'}; "
        f"seeds {{{', '.join(map(str, info.settings.seeds))}}} per configuration{raced}"
    )


def _recommendation_text(trials: pd.DataFrame, summary: pd.DataFrame, info: StudyInfo) -> str:
    pick, decision = recommendation(trials, info)
    collapsed = next((d for d in info.decisions if d.action == Action.COLLAPSED), None)
    if pick is None and info.stop_reason == StopReason.COLLAPSED and collapsed is not None:
        return f"No recommendation: {_md(collapsed.reason)}."
    if pick is None:
        return "No recommendation: no trial has completed" + ("." if info.finished else " yet.")
    row = summary[(summary["r"] == pick[0]) & (summary["targets"] == pick[1])].iloc[0]
    ci = (
        ""
        if pd.isna(row["objective_ci95_low"])
        else f"; 95% CI {shown(row['objective_ci95_low'], info)}–{shown(row['objective_ci95_high'], info)}"
    )
    pct = "" if pd.isna(row["trainable_pct"]) else f" ({row['trainable_pct']:.2f}% of the model)"
    params = "unknown" if pd.isna(row["trainable_params"]) else f"{int(row['trainable_params']):,}"
    head = "Provisional (the sweep has not finished): " if not info.finished else ""
    why = f" Why: {_md(decision.reason)}." if decision is not None else ""
    split = ""
    if not pd.isna(row["lora_params"]) and not pd.isna(row["trainable_params"]):
        split = f": {info.method_name} {int(row['lora_params']):,} + head {int(row['trainable_params'] - row['lora_params']):,}"
    against = baseline_check(summary, pick, info)
    unstable = (
        f"\n\n{_md(config_label(*pick))} collapsed to a constant prediction in {row['n_collapsed']} trial(s), "
        f"{row['collapse_rate']:.0%} of its measured trials: its statistics are of the others; a configuration that "
        "collapses is unstable at this recipe (see Collapsed trials)."
        if row["n_collapsed"]
        else ""
    )
    return (
        (
            f"{head}**{_md(config_label(*pick))}**: {metric_name(info)} {mean_sd(row, info)} {info.metric.unit} "
            f"(n={row['n_seeds']}{ci}), {params} trainable parameters{split}{pct}.{why}"
        )
        + (f"\n\n{against}" if against else "")
        + unstable
    )


def baseline_check(summary: pd.DataFrame, pick: Optional[ConfigKey], info: StudyInfo) -> Optional[str]:
    """One sentence: is the recommended configuration ``pick`` shown to beat the constant baseline (the
    majority class; for regression the training mean, whose correlations are 0 and whose MSE is about the
    labels' variance; for a causal-LM objective the base model without the adapter)? It is when its 95% t-interval over its seeds (``summary``'s ``objective_ci95_low``
    and ``_high``) lies wholly on the better side of the baseline: above it for a maximised objective,
    below it for a minimised one. The gap is the improvement on the baseline in the objective's unit
    (points: 100 × metric), positive when better. None without a recommendation or a stored baseline."""
    if pick is None or info.baseline is None:
        return None
    row = summary[(summary["r"] == pick[0]) & (summary["targets"] == pick[1])].iloc[0]
    if pd.isna(row["objective_mean"]):
        return None
    m = info.metric

    def gain(value: float) -> float:  # improvement on the baseline, the objective's unit
        return m.sign * m.scale * (value - info.baseline)

    side = "above it" if m.sign > 0 else f"below it ({m.better})"
    better = "" if m.sign > 0 else " better"
    head = (
        f"Against the baseline ({baseline_words(info)}, {shown(info.baseline, info)}): "
        f"{m.fmt(gain(row['objective_mean']), True)} {m.unit}{better}"
    )
    if pd.isna(row["objective_ci95_low"]):
        return f"{head} on {row['n_seeds']} seed(s), too few for an interval: not shown to beat it."
    low, high = sorted(gain(row[c]) for c in ("objective_ci95_low", "objective_ci95_high"))
    interval = f"95% CI {m.fmt(low, True)} to {m.fmt(high, True)} over its {row['n_seeds']} seeds"
    if low > 0:
        return f"{head} ({interval}): {side}."
    return (
        f"{head} ({interval}): not shown to beat it; the configurations tried may have learnt little "
        "beyond the constant answer on this task."
    )


def baseline_line(report: "SweepReport") -> Optional[str]:
    """``baseline_check`` of the recommendation of a loaded sweep (printed at the end of a sweep). None
    when there is nothing to check."""
    return baseline_check(report.summary, recommendation(report.trials, report.info)[0], report.info)


def _command(info: StudyInfo, **changes) -> str:
    """The make command that continues this sweep, with the overrides of its latest run and ``changes``
    (``sweep.seeds=[0,1,2]``) replacing theirs."""
    keep = [o for o in info.overrides if o.split("=", 1)[0] not in ("task", "sweep", *changes)]
    return make_command(
        "sweep",
        [f"task={info.task_group}", f"sweep={info.settings.mode}", *keep, *(f"{k}={v}" for k, v in changes.items())],
    )


def _next_steps(info: StudyInfo) -> List[str]:
    """What a user can run to make the answer firmer, as commands that would train something (re-running
    resumes the study): more seeds; on a progressive sweep more patience only after a plateau with ranks
    left above it, more ranks when they ran out; nothing of the same settings when no trial succeeded."""
    s = info.settings
    scale = (
        "- Rank and scale are linked: with `lora.scaling=standard` the update is scaled by alpha/r; "
        "`lora.scaling=rslora` (alpha/√r) is the other common choice (it changes what a trial means, so it "
        "needs a new `sweep.name`)."
    )
    if info.stop_reason in (StopReason.NO_SUCCESS, StopReason.COLLAPSED):
        what = "No trial succeeded" if info.stop_reason == StopReason.NO_SUCCESS else "Every trial collapsed"
        what = "Every adapter trial collapsed" if (info.recommendation or (None,))[0] == 0 else what  # head only's not
        return [
            f"{what}, so more seeds or ranks with the same settings would fail the same way: change "
            "what a trial is (a lower `train.lr`, other `lora.*` settings) under a new `sweep.name`.",
            "",
            scale,
        ]
    if s.mode == "grid":
        seeds = [*s.seeds, *range(max(s.seeds) + 1, max(s.seeds) + 1 + len(s.seeds))]
        more = {"sweep.seeds": "[" + ",".join(map(str, seeds)) + "]"}
    else:  # undecided comparisons stopped at max_seeds
        more = {"sweep.max_seeds": 2 * s.max_seeds}
    lines = [
        "Each command continues this study: finished trials are kept and only what is new is trained.",
        "",
        f"- More seeds shrink the noise a gain must beat (SE ∝ 1/√n): {_code(_command(info, **more))}",
    ]
    actions = {d.action for d in info.decisions}
    start = ",".join(s.start_targets)
    tried = [o.r for _, o in info.history if o.targets == start and not o.nested]
    if s.mode == "progressive" and Action.RANKS_EXHAUSTED in actions:
        ranks = "[" + ",".join(map(str, [*s.ranks, 2 * max(s.ranks)])) + "]"
        lines.append(
            f"- The ranks ran out before a plateau (sweep.ranks ends at r={max(s.ranks)}): "
            f"{_code(_command(info, **{'sweep.ranks': ranks}))}"
        )
    elif s.mode == "progressive" and Action.PLATEAU in actions and tried and max(tried) < max(s.ranks):
        lines.append(
            f"- Look further before calling a plateau: {_code(_command(info, **{'sweep.patience': s.patience + 1}))}"
        )
    more_of = "budgets: add `sweep.budgets=[…]`" if s.mode == "budget" else "ranks: add `sweep.ranks=[…]`"
    lines += [
        f"- More {more_of}, or a higher cap: `sweep.max_hours=…` or `sweep.max_trials=…`, the same way.",
        scale,
    ]
    return lines


def _table(summary: pd.DataFrame, info: StudyInfo) -> List[str]:
    lines = [
        f"| r | targets | seeds ok / collapsed / failed | {metric_name(info)} mean ± s.d. | 95% CI of the mean (t, n−1 d.f.) | trainable params "
        "| train FLOPs | train s | Pareto | |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for _, row in summary.iterrows():
        ci = (
            "—"
            if pd.isna(row["objective_ci95_low"])
            else f"{shown(row['objective_ci95_low'], info)}–{shown(row['objective_ci95_high'], info)}"
        )
        params = "—" if pd.isna(row["trainable_params"]) else f"{int(row['trainable_params']):,}"
        flops = "—" if pd.isna(row["mean_train_flops"]) else f"{row['mean_train_flops']:.2e}"
        seconds = "—" if pd.isna(row["mean_train_seconds"]) else f"{row['mean_train_seconds']:.1f}"
        front = (
            ", ".join(name for name, on in (("params", row["pareto_params"]), ("FLOPs", row["pareto_flops"])) if on)
            or "—"
        )
        mark = "**recommended**" if row["recommended"] else ""
        head_only = row["r"] == HEAD_ONLY  # no adapter, no target matrices
        rank, targets = (HEAD_ONLY_LABEL, "—") if head_only else (row["r"], _md(row["targets"]))
        lines.append(
            f"| {rank} | {targets} | {row['n_seeds']} / {row['n_collapsed']} / {row['n_failed']} "
            f"| {mean_sd(row, info)} "
            f"| {ci} | {params} | {flops} | {seconds} | {front} | {mark} |"
        )
    return lines


def _gain_text(row, info: StudyInfo) -> str:
    """``+1.23 [+0.10, +2.36]``: a ``budget_frame`` row's gain over the start targets with its bounds."""
    m = info.metric
    if pd.isna(row["gain"]):
        return "—"
    bounds = "" if pd.isna(row["gain_low"]) else f" [{m.fmt(row['gain_low'], True)}, {m.fmt(row['gain_high'], True)}]"
    return f"{m.fmt(row['gain'], True)}{bounds}"


def _winner_text(rows: pd.DataFrame, info: StudyInfo) -> str:
    """Which set of one budget (``budget_frame`` rows, the start targets first) has the best mean, and whether
    it is significantly ahead of the start targets (its lower bound above 0; the start targets: ahead of the
    sets whose upper bound is below 0)."""
    m, confidence = info.metric, info.settings.confidence
    scored = rows[rows["objective_mean"].notna()]
    head = rows.iloc[0]
    given = f" ({head['given']})" if head["given"] else ""
    where = f"At {head['budget']:,} LoRA parameters{given}"
    if scored.empty:
        return f"{where}: no set has a result yet."
    best = scored.loc[(m.sign * scored["objective_mean"]).idxmax()]
    mean = f"{shown(best['objective_mean'], info)} {m.unit}"
    start = f"{_md(head['targets'])} (r={head['r']})"
    if best["targets"] == head["targets"]:
        others = rows.iloc[1:]
        behind = [f"{_md(t)}" for t, h in zip(others["targets"], others["gain_high"]) if h < 0]
        rest = [f"{_md(t)}" for t, h in zip(others["targets"], others["gain_high"]) if not h < 0]
        said = [f"significantly ahead of {', '.join(behind)}"] if behind else []
        said += [f"not shown to be ahead of {', '.join(rest)}"] if rest else []
        return f"{where}: the start targets {start} have the best mean, {mean}; {'; '.join(said) or 'no other set'}."
    gain = f"{m.fmt(best['gain'], True)} {m.unit} over {start}" if not pd.isna(best["gain"]) else f"vs {start}"
    if not pd.isna(best["gain_low"]) and best["gain_low"] > 0:
        verdict = f"significantly better than {start} (lower bound {m.fmt(best['gain_low'], True)} > 0)"
    elif pd.isna(best["gain_low"]):
        verdict = f"not shown to be better than {start} (no seed-noise estimate: no configuration has two ok seeds)"
    else:
        verdict = f"not significantly better than {start} (lower bound {m.fmt(best['gain_low'], True)} ≤ 0)"
    bounds = f" at sweep.confidence={confidence:g}"
    return f"{where}: {_md(best['targets'])} (r={best['r']}) has the best mean, {mean}, {gain}: {verdict}{bounds}."


def _budget_lines(summary: pd.DataFrame, info: StudyInfo) -> List[str]:
    """A budget sweep's section (LoRA Table 5): the table of ``budget_frame`` and, per budget, which set wins."""
    table = budget_frame(summary, info)
    if table.empty:
        return []
    m, s = info.metric, info.settings
    start = _md(",".join(s.start_targets))
    lines = [
        "",
        "## Target sets at an equal budget (LoRA Table 5)",
        "",
        "Each target set at the rank whose LoRA (adapter) parameters are nearest the budget (`sweep.budgets`; an "
        "exact half rounds down); the head is trained alike in every set, so trainable = LoRA + head. Gain: the "
        f"set's mean minus that of the start targets ({start}) at the same budget, {m.unit} ({m.better}), with "
        f"its one-sided {100 * s.confidence:g}% Student-t bounds (sweep.confidence; the seed s.d. pooled over every "
        "configuration, as the decisions pool it); race: what the sweep's race against the start targets decided.",
        "",
        f"| budget (LoRA params) | target set | r | LoRA params | trainable params | {metric_name(info)} mean ± s.d. (n) "
        f"| 95% CI | gain over {start} [bounds] | race | |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for _, row in table.iterrows():
        given = f" ({row['given']})" if row["given"] else ""
        ci = (
            "—"
            if pd.isna(row["objective_ci95_low"])
            else f"{shown(row['objective_ci95_low'], info)}–{shown(row['objective_ci95_high'], info)}"
        )
        trainable = "—" if pd.isna(row["trainable_params"]) else f"{int(row['trainable_params']):,}"
        mean = "—" if pd.isna(row["objective_mean"]) else f"{mean_sd(row, info)} (n={row['n_seeds']})"
        ratio = row["lora_params"] / row["budget"]
        lines.append(
            f"| {row['budget']:,}{given} | {_md(row['targets'])} | {row['r']} | {row['lora_params']:,} ({ratio:.2f}×) "
            f"| {trainable} | {mean} | {ci} | {_gain_text(row, info)} | {row['race'] or '—'} "
            f"| {'**budget pick**' if row['budget_pick'] else ''} |"
        )
    lines += ["", *(_winner_text(rows, info) for _, rows in table.groupby("budget", sort=False))]
    lines += [
        "",
        "Budget pick: the recommendation rule (below) among the sets of one budget.",
    ]
    return lines


def _reliability_lines(info: StudyInfo, rel: Optional[Reliability]) -> List[str]:
    """σ measured in this sweep, the smallest detectable gain, the calibrated P(regret ≤ tolerance),
    and, for a sweep the compute cap stopped, what the cap cut off."""
    if rel is None:
        lines = [
            "No seed-noise estimate: no configuration has two ok seeds (collapsed ones left out), so no gain could be shown "
            "significant and the recommendation rests on single runs."
        ]
    else:
        lines = [
            f"{rel.text()[0].upper()}{rel.text()[1:]}. `make calibrate` gives the procedure's reliability on "
            "every scenario family; `python -m analysis.calibrate task=… sweep.name=…` against this sweep."
        ]
    if info.stop_reason == StopReason.BUDGET:
        cap = next((d for d in reversed(info.decisions) if d.action == Action.BUDGET), None)
        cut = f" ({cap.reason})" if cap is not None else ""
        lines += [
            "",
            f"**Provisional**: the compute cap stopped this sweep before its procedure ended{cut}. "
            "Raise the cap (see Next steps) and re-run the same command to finish it.",
        ]
    return lines


def _rate_line(trials: pd.DataFrame, info: StudyInfo) -> str:
    """The learning rate(s) the trials trained at, for the report's head."""
    head = trials["r"] == 0 if "r" in trials else pd.Series(False, index=trials.index)
    rates = sorted(trials.loc[~head, "lr"].dropna().unique()) if "lr" in trials else []
    own = sorted(trials.loc[head, "lr"].dropna().unique()) if "lr" in trials else []
    beside = f"; head only (r=0) at its own {', '.join(f'{x:g}' for x in own)} (conf/method/head.yaml)" if own else ""
    if info.lr is None:
        used = ", ".join(f"{x:g}" for x in rates) or "not recorded"
        return f"- **Learning rate**: {used} (train.lr; no bracket of rates, sweep.lrs){beside}."
    bracket = ", ".join(f"{x:g}" for x in info.settings.lrs)
    return (
        f"- **Learning rate**: {info.lr:g}, chosen by the learning-rate stage from sweep.lrs = [{bracket}]; the "
        "configurations, the recommendation and the reliability below are those at this rate (the other rates: "
        "Learning rate, below)."
    )


def _rate_lines(trials: pd.DataFrame, info: StudyInfo) -> List[str]:
    """The learning-rate stage's section (``sweep.lrs``): every rate's result where the stage raced them, the
    rate chosen and whether it was re-checked at the pick; none without a bracket."""
    if info.lr is None:
        return []
    m = info.metric
    lines = ["", "## Learning rate", ""]
    chosen = [d for d in info.decisions if d.action == Action.RATE_CHOSEN]
    first = next((d for d in chosen if not d.detail.recheck), None)
    recheck = next((d for d in chosen if d.detail.recheck), None)
    if first is not None:
        lines.append(f"- Start: {_md(first.reason)}.")
    if recheck is None:
        lines.append(
            "- **Not re-checked at the pick**: the sweep stopped (or is still running) before the re-check; "
            "re-run the same command to finish it."
        )
    else:
        lines.append(f"- Re-check: {_md(recheck.reason)}.")
    raced = dict.fromkeys((d.r, d.targets) for d in info.decisions if d.stage == "lr" and d.r is not None)
    done = trials[(trials["state"] == "complete") & trials["lr"].notna()]
    lines += [
        "",
        f"| configuration | lr | seeds | {m.label} mean ± s.d. (collapsed seeds left out) |",
        "|---|---:|---:|---:|",
    ]
    for r, targets in raced:
        at = done[(done["r"] == r) & (done["targets"] == targets)]
        for lr, group in at.groupby("lr"):
            gone = group["collapsed"].astype("boolean").fillna(False).astype(bool) if "collapsed" in group else None
            kept = group[~gone] if gone is not None else group
            values = [m.scale * v for v in kept["objective"]]
            seeds = f"{len(values)}" + (f" (+{int(gone.sum())} collapsed)" if gone is not None and gone.any() else "")
            sd = f" ± {pd.Series(values).std():.2f}" if len(values) > 1 else ""
            mean = f"{sum(values) / len(values):.2f}{sd}" if values else "— (collapsed)"
            lines.append(f"| r={r} on {_md(targets)} | {lr:g} | {seeds} | {mean} |")
    return lines


def gap_text(pick: ConfigKey, summary: pd.DataFrame, info: StudyInfo, ref: Reference) -> Optional[str]:
    """One sentence: where the recommended configuration ``pick`` stands against a reference method of a
    comparison (``analysis.methods.Reference``: full fine-tuning or head only at its best rate), e.g. ``r=8 on
    Wq,Wv is 1.20 points below full fine-tuning, 95% interval [-0.40, 2.80], with 0.976% of its trainable
    parameters (…)``. The difference of the two means in the objective's unit with its real sign, its interval
    Welch's t interval (``sweep.stats.welch``: each side its own seed s.d., floored at the sweep's noise floor as
    its intervals are), both as the words say (``below``: the reference minus the pick); the share is the pick's
    trainable parameters over the reference's (a percentage below 1, a multiple above). None without the pick's statistics."""
    from analysis.methods import matrices

    mine = results(info).get(pick)
    if mine is None or mine.stats is None:
        return None
    m = info.metric
    method = "" if info.method == "lora" else f"{info.method_name} "  # LoRA's sweep: as before
    config = HEAD_ONLY_LABEL if pick[0] == HEAD_ONLY else f"{method}r={pick[0]} on {_md(matrices(pick[1].split(',')))}"
    where = f"`compare/{ref.folder.name}/`"
    if ref.stats is None:
        return f"{ref.label} ({where}): every seed collapsed ({ref.n_collapsed}); nothing to compare {config} with."
    d = welch(ref.stats, mine.stats, 0.95, noise_floor([o for _, o in info.history], info.settings))
    gap = m.real(d.gain)  # pick − reference, the objective's real sign
    flip = -1 if gap < 0 else 1
    words = f"{m.fmt(flip * gap)} {m.unit} {'below' if gap < 0 else 'above'} {ref.label}"
    if m.sign < 0:
        words += f" ({m.better})"
    if d.low is None:
        interval = "no interval (a side has fewer than two counted seeds)"
    else:
        low, high = sorted(flip * m.real(e) for e in (d.low, d.high))
        interval = f"95% interval [{m.fmt(low)}, {m.fmt(high)}]"
    row = summary[(summary["r"] == pick[0]) & (summary["targets"] == pick[1])].iloc[0]
    ratio = row["trainable_params"] / ref.trainable_params
    share = f"{100 * ratio:.3g}% of" if ratio < 1 else f"{ratio:.3g}×"  # above the reference's: as a multiple
    theirs = m.fmt(m.real(ref.stats.mean)) + (f" ± {m.fmt(ref.stats.sd)}" if ref.stats.sd is not None else "")
    collapsed = f", {ref.n_collapsed} collapsed left out" if ref.n_collapsed else ""
    return (
        f"{config} is {words}, {interval}, with {share} its trainable parameters ({ref.label}: {theirs} over "
        f"{ref.stats.n} seed(s){collapsed} at lr {ref.lr:g}, {where})."
    )


def _gap_lines(trials: pd.DataFrame, summary: pd.DataFrame, info: StudyInfo, refs: Sequence[Reference]) -> List[str]:
    """The recommendation against the comparisons' full fine-tuning and head only (``gap_text``; a pick of head
    only, r=0, against full fine-tuning alone); none without."""
    pick = recommendation(trials, info)[0]
    refs = [ref for ref in refs if not (pick is not None and pick[0] == 0 and ref.method == "head")]
    texts = [t for t in (gap_text(pick, summary, info, ref) for ref in refs) if t] if pick is not None else []
    if not texts:
        return []
    return [
        "Against the references trained by `make compare` on the same model and rows (the difference of the means "
        "with Welch's t interval, each side its own seed s.d.):",
        "",
        *(f"- {t}" for t in texts),
        "",
    ]


def report_markdown(
    trials: pd.DataFrame,
    summary: pd.DataFrame,
    info: StudyInfo,
    rel: Optional[Reliability] = None,
    subspace: Optional[SubspaceAnalysis] = None,
    references: Sequence[Reference] = (),
) -> str:
    """The text of ``report.md``: task, model, objective, mode, trial counts by state, what was tried,
    the recommendation and why, where it stands against the ``references`` of comparisons (``make compare``'s
    full fine-tuning and head only, ``gap_text``), its reliability (``rel``: σ, detectable gain, calibrated P(regret ≤
    tolerance); None without a noise estimate), every decision, failed and running trials, the summary
    table and the three plots linked as ``plots/<name>.png``; with a ``subspace`` analysis, its sentence next
    to the recommendation and its section at the end. Metric values are in the objective's unit (points,
    100 × metric, for the GLUE metrics), as measured: a minimised objective is not negated."""
    from analysis.subspace_report import recommendation_note, report_lines

    note = recommendation_note(subspace, recommendation(trials, info)[0]) if subspace else ""
    lines = [
        f"# {info.method_name} rank sweep: {task_name(info)} on {_md(info.model)}",
        "",
        f"- **Objective**: {objective_words(info)}; the CSVs hold metric units.",
        f"- **Sweep**: {info.settings.mode}, study {_code(info.name)}; {_status_line(trials, info)}.",
        f"- **Trials**: {len(trials)} ({_counts(trials)}); diverged and failed trials are left out of means "
        "and of the recommendation.",
        f"- **Tried**: {_tried(summary, info)}"
        + (f"; and {n_nested} nested trial(s) of the screen (below)." if (n_nested := _n_nested(trials)) else "."),
    ]
    lines.append(_rate_line(trials, info))
    if info.lora_init != "kaiming":
        lines.append(f"- **LoRA init**: {info.lora_init} ({INIT_WORDS[info.lora_init]}).")
    if info.baseline is not None:
        lines.append(f"- **Baseline** ({baseline_words(info)}): {shown(info.baseline, info)}.")
    collapsed = _collapsed(info)
    if collapsed:
        configs = dict.fromkeys((o.r, o.targets) for _, o in collapsed)
        lines.append(
            f"- **Collapsed**: {len(collapsed)} trial(s) predicted the same answer for every validation example, in "
            f"{len(configs)} configuration(s) ({_md(', '.join(f'r={r} {t}' for r, t in configs))}; collapse rates in "
            "summary.csv): measurements that a configuration is unstable at this recipe, not seed noise, so they "
            "are left out of means, σ and comparisons (listed under Collapsed trials)."
        )
    if info.dropped:
        lines.append(
            f"- **Left out**: {info.dropped[0]} training and {info.dropped[1]} validation examples whose completion "
            "cannot fit data.max_length (counted, not trained on nor scored)."
        )
    s = info.settings
    lines += _budget_lines(summary, info) if s.mode == "budget" else []
    lines += [
        "",
        "## Recommendation",
        "",
        "Rule: the configuration with the fewest trainable parameters shown to be within "
        f"sweep.tolerance = {s.tolerance:g} {info.metric.unit} of the best one tried (the upper {100 * s.confidence:g}% "
        "Student-t bound of its gap to the best is below the tolerance, with the seed-to-seed s.d. pooled "
        "over the configurations evaluated), else the best.",
        "",
        _recommendation_text(trials, summary, info),
        "",
        *([note, ""] if note else []),
        *_gap_lines(trials, summary, info, references),
        "## Reliability",
        "",
        *_reliability_lines(info, rel),
        "",
        "## Next steps",
        "",
        *_next_steps(info),
        "",
        "## Decisions",
        "",
    ]
    timeline = decisions_frame(trials, info)
    lines += [
        f"- after trial {at}: {_code(d.line())}" if at >= 0 else f"- {_code(d.line())}"
        for at, d in zip(timeline["after_trial"], info.decisions)
    ] or ["- none yet"]
    lines += _screen_lines(info)
    lines += _collapsed_lines(info)
    lines += _rate_lines(trials, info)
    unfinished = trials[trials["state"] != "complete"]
    if not unfinished.empty:
        lines += ["", "## Trials without a result", ""]
        for row in unfinished.itertuples():
            config = f"r={row.r} {row.targets} seed {row.seed}" if pd.notna(row.targets) else "no configuration stored"
            reason = f": {row.reason}" if isinstance(row.reason, str) and row.reason else ""
            lines.append(f"- trial {row.number} ({_md(config)}): {row.state}{_md(reason)}")
    lines += [
        "",
        "## Configurations",
        "",
        *_table(summary, info),
        "",
        "Per trial: [trials.csv](trials.csv); per configuration: [summary.csv](summary.csv).",
        "",
        "## Plots",
        "",
    ]
    lines += [f"![{CAPTIONS[name]}](plots/{name}.png)\n" for name in CAPTIONS]
    if subspace:
        lines += report_lines(subspace)
    return "\n".join(lines)


@dataclass(frozen=True)
class SweepReport:
    """A sweep read once for its reports: ``trials`` (``trials_frame``), ``info`` (``study_info``),
    ``summary`` (``summary_frame``) and the calibrated ``reliability`` (None without a noise estimate)."""

    trials: pd.DataFrame
    info: StudyInfo
    summary: pd.DataFrame
    reliability: Optional[Reliability]


def load_report(
    storage_url: str, study_name: str | None, *, missing_hint: str = "run `make sweep TASK=<task>` first"
) -> SweepReport:
    """Read the study ``study_name`` (the only one when None) at ``storage_url`` once, with everything
    its reports show.

    Raises:
        UserError: no such storage or study (one line naming it and how to make it), a study with no
            finished trial yet, or a study not written by the sweep.
    """
    study = load_study(storage_url, study_name, missing_hint)
    snapshot = study.get_trials(deepcopy=False)  # one read: the tables below describe the same trials
    trials = trials_frame(study, snapshot)
    if not trials["state"].isin(FINISHED_STATES).any():
        running = int((trials["state"] == "running").sum())
        raise UserError(
            f"study '{study.study_name}' has no finished trials yet ({running} running); "
            "wait for the first trial to finish, then run the report again"
        )
    info = study_info(study, snapshot)
    rel = reliability(at_rate([o for _, o in info.history], info.lr), info.settings, info.params_per_rank)
    return SweepReport(trials, info, summary_frame(trials, info), rel)


def write_reports(
    storage_url: str,
    study_name: str | None,
    out_dir: Path,
    *,
    missing_hint: str = "run `make sweep TASK=<task>` first",
    report: Optional[SweepReport] = None,
) -> List[Path]:
    """Write ``trials.csv``, ``summary.csv``, ``plots/metric_vs_params.png``, ``plots/metric_vs_compute.png``,
    ``plots/progression.png``, the subspace analysis of the adapters saved under ``out_dir/trials/`` when
    two of them can be compared (``analysis.subspace_report.write_subspace``) and ``report.md`` (with the
    recommendation against the full fine-tuning and head-only trials of the comparisons beside it,
    ``out_dir/../compare/*/``: ``analysis.methods.references``) into
    ``out_dir`` (created if needed), for the study ``study_name`` at ``storage_url`` (``load_report``;
    ``report``: one already loaded). Each file is written whole or not at all (``sweep.faults.atomic_write``):
    a full disk leaves the previous report as it was.

    Returns:
        The paths written, in that order.

    Raises:
        UserError: as ``load_report``.
    """
    from analysis.methods import recipe_of, references
    from analysis.subspace_report import write_subspace

    rep = report or load_report(storage_url, study_name, missing_hint=missing_hint)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "trials.csv", out_dir / "summary.csv"]
    atomic_write(paths[0], lambda tmp: rep.trials.to_csv(tmp, index=False))
    atomic_write(paths[1], lambda tmp: rep.summary.to_csv(tmp, index=False))
    for name, fig in figures(rep.trials, rep.summary, rep.info).items():
        paths.append(save_figure(fig, out_dir / "plots" / f"{name}.png"))
    subspace = write_subspace(out_dir, rep.info)
    paths += subspace.files if subspace else []
    refs = references(
        out_dir.parent, rep.info.model, rep.info.objective, rep.info.data_digest, recipe_of(out_dir / "config.yaml")
    )
    text = report_markdown(rep.trials, rep.summary, rep.info, rep.reliability, subspace, refs)
    paths.append(atomic_write(out_dir / "report.md", lambda tmp: tmp.write_text(text)))
    return paths
