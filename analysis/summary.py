"""One row per configuration (r, targets): the objective over its seeds with a t-interval, its cost,
whether it is on a Pareto front, and whether it is the recommended one, with the sweep's decisions.

The statistics are the decisions' own: ``sweep.decide.aggregate`` over the study's finished trials,
counting the seeds the sweep's settings can ask for (``seed_sequence``), so a row's mean and n are the
ones its decisions quote. Every configuration with a trial is listed; complete trials of other seeds
(a study run before with other ``sweep.seeds``) are counted in ``n_not_counted`` and left out of the
statistics, as the decisions leave them out; diverged, failed and collapsed trials are counted per configuration.
(The replay counts only the seeds it asked for, a prefix of ``seed_sequence``; every seed it ran was
asked for, so the two differ only for racing seeds left by a run with other settings that the latest
settings never ask for.) The recommendation rule is ``sweep.decide.recommend``, never a copy of it.
"""

from __future__ import annotations

import math
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import pandas as pd

from analysis.load import StudyInfo
from sweep.budget import budget_ranks
from sweep.decide import ConfigResults, aggregate, at_rate, noise_floor, recommend, seed_sequence
from sweep.decision import Action, ConfigKey, Decision, Stage
from sweep.metrics import Metric
from sweep.stats import Stats, compare, seed_noise

#: columns of summary.csv, in order
COLUMNS = (
    "r",
    "targets",
    "n_seeds",
    "n_failed",
    "n_collapsed",
    "collapse_rate",
    "n_running",
    "n_not_counted",
    "objective_mean",
    "objective_sd",
    "objective_ci95_low",
    "objective_ci95_high",
    "trainable_params",
    "trainable_pct",
    "lora_params",
    "mean_train_flops",
    "mean_train_seconds",
    "pareto_params",
    "pareto_flops",
    "recommended",
    "decision",
    "reason",
)


def _by_config(trials: pd.DataFrame) -> Iterator[Tuple[ConfigKey, pd.DataFrame, pd.DataFrame]]:
    """(config, all its trials, its complete trials), configurations in order of their first trial; nested
    trials (the screen's, ``nested``) are no configuration's: their values are screened, not measured."""
    known = trials.dropna(subset=["r", "targets"]).sort_values("number")
    known = known[~known["nested"].astype("boolean").fillna(False).astype(bool)]
    for (r, targets), group in known.groupby(["r", "targets"], sort=False):
        yield (int(r), str(targets)), group, group[group["state"] == "complete"]


def results(info: StudyInfo) -> Dict[ConfigKey, ConfigResults]:
    """``sweep.decide.aggregate`` of the study's finished trials (``info.history``) over the seeds its
    settings can ask for: per configuration with a finished trial, the statistics its decisions use; with a
    bracket of learning rates, of the trials at the sweep's rate (``StudyInfo.lr``) only."""
    return aggregate(at_rate([o for _, o in info.history], info.lr), seed_sequence(info.settings))


def pareto_mask(metric: Sequence[float], cost: Sequence[float]) -> List[bool]:
    """Which points are on the Pareto front of maximising ``metric`` while minimising ``cost``.

    A point is on the front when no other point has a metric ≥ and a cost ≤ its own with at least
    one of the two strict. Points with a missing metric or cost are never on it and dominate nothing.
    """
    points = [(m, c) for m, c in zip(metric, cost)]
    valid = [not (pd.isna(m) or pd.isna(c)) for m, c in points]
    front = []
    for i, (m, c) in enumerate(points):
        dominated = any(
            valid[j] and j != i and mj >= m and cj <= c and (mj > m or cj < c) for j, (mj, cj) in enumerate(points)
        )
        front.append(valid[i] and not dominated)
    return front


def recommendation(trials: pd.DataFrame, info: StudyInfo) -> Tuple[Optional[ConfigKey], Optional[Decision]]:
    """The recommended configuration and the ``recommend`` decision that explains it.

    A finished sweep's stored recommendation is returned as it is. Otherwise the sweep's own rule
    (``sweep.decide.recommend``: the fewest trainable parameters among configurations
    shown within ``tolerance`` of the best, at the ``confidence`` of the study's settings) is
    applied to every configuration with a counted complete trial (``results``); that answer is
    provisional (``info.finished`` is False). Returns (None, None) when no trial is complete.
    """
    if info.finished:
        decision = next((d for d in reversed(info.decisions) if d.action == Action.RECOMMEND), None)
        return info.recommendation, decision
    every = results(info)
    scored = {cfg: res for cfg, res in every.items() if res.stats is not None}
    return recommend(
        list(scored),
        {c: res.stats for c, res in scored.items()},
        {c: res.trainable_params for c, res in scored.items()},
        {c: res.train_flops for c, res in scored.items()},
        info.settings,
        noise_floor([o for res in every.values() for o in res.measured], info.settings),
        info.objective,
    )


def metric_units(st: Optional[Stats], floor: Optional[float], m: Metric) -> Tuple[float, float, float, float]:
    """(mean, sd, 95% interval low, high) of the scores ``st`` (the decisions' statistics, the objective's
    unit, higher is better) in metric units with their real signs (an MSE, not its negation; the interval's
    ends in increasing order); NaN for what is missing."""
    if st is None:
        return (math.nan,) * 4
    ends = st.interval(0.95, floor)
    low, high = sorted(m.value(e) for e in ends) if ends[0] is not None else (math.nan, math.nan)
    return m.value(st.mean), math.nan if st.sd is None else st.sd / m.scale, low, high


def summary_frame(trials: pd.DataFrame, info: StudyInfo) -> pd.DataFrame:
    """One row per configuration (r, targets) of ``trials`` (from ``trials_frame``), in the order the
    sweep first tried them.

    Columns: ``r``, ``targets``; ``n_seeds`` (complete trials the decisions count, see ``results``),
    ``n_failed`` (diverged or failed), ``n_collapsed`` (ok trials of every seed that collapsed to a constant
    prediction, ``sweep.collapse``: left out of the statistics, each replaced by the next seed) and
    ``collapse_rate`` (``n_collapsed`` over the configuration's measured trials: ok, collapsed or diverged;
    NaN without one, ``ConfigResults.collapse_rate``), ``n_running``, ``n_not_counted`` (complete trials of seeds the
    settings cannot ask for); over the counted seeds, in metric units as measured (accuracy 0.8235, not
    82.35 points; an MSE as itself, whichever way the objective improves): ``objective_mean``, ``objective_sd`` (sample sd, ddof=1; NaN for one seed),
    ``objective_ci95_low``/``objective_ci95_high`` (mean ± t₀.₉₇₅,ₙ₋₁·s/√n, s the sd raised to the sweep's
    noise floor, ``Stats.interval``: seeds that all scored the same get the interval the validation set
    can resolve, not a zero-width one; NaN below two seeds); ``trainable_params``, ``trainable_pct`` (percent of the model's parameters), ``lora_params``;
    ``mean_train_flops`` (training FLOPs) and ``mean_train_seconds`` (training seconds) over complete
    trials of every seed (a cost, as in the decisions); ``pareto_params`` and ``pareto_flops`` (on the
    front of objective mean, better in its direction, vs trainable parameters / vs mean training FLOPs,
    see ``pareto_mask``; only configurations with a counted complete trial); ``recommended`` (see
    ``recommendation``); ``decision`` (the actions of the stored decisions about this configuration,
    ``; ``-separated) and ``reason`` (their reasons, `` | ``-separated, same order).
    """
    pick, _ = recommendation(trials, info)
    per_cfg = results(info)
    if info.lr is not None:  # a bracket of rates: the configurations at the sweep's rate (the report shows the rest)
        trials = trials[trials["lr"] == info.lr]
    floor = noise_floor([o for _, o in info.history], info.settings)  # intervals claim no finer noise
    m = info.metric
    rows = []
    for (r, targets), group, ok in _by_config(trials):
        res = per_cfg.get((r, targets))  # None: no finished trial yet
        st = res.stats if res is not None else None
        mean, sd, low, high = metric_units(st, floor, m)
        about = [d for d in info.decisions if (d.r, d.targets) == (r, targets) and d.lr == info.lr]
        rows.append(
            {
                "r": r,
                "targets": targets,
                "n_seeds": st.n if st is not None else 0,
                "n_failed": int(group["state"].isin(("diverged", "failed")).sum()),
                "n_collapsed": res.collapsed if res is not None else 0,
                "collapse_rate": res.collapse_rate if res is not None else math.nan,
                "n_running": int((group["state"] == "running").sum()),
                "n_not_counted": res.not_counted if res is not None else 0,
                "objective_mean": mean,
                "objective_sd": sd,
                "objective_ci95_low": low,
                "objective_ci95_high": high,
                "trainable_params": group["trainable_params"].max(),
                "trainable_pct": group["trainable_pct"].max(),
                "lora_params": group["lora_params"].max(),
                "mean_train_flops": ok["train_flops"].mean(),
                "mean_train_seconds": ok["train_seconds"].mean(),
                "recommended": (r, targets) == pick,
                "decision": "; ".join(d.action for d in about),
                "reason": " | ".join(d.reason for d in about),
            }
        )
    df = pd.DataFrame(rows, columns=[c for c in COLUMNS if not c.startswith("pareto_")])
    df = df.astype(
        {
            "r": "int64",
            "n_seeds": "int64",
            "n_collapsed": "int64",
            "n_not_counted": "int64",
            "trainable_params": "Int64",
            "lora_params": "Int64",
            "recommended": "bool",
        }
    )
    better = [m.sign * v for v in df["objective_mean"]]  # the front is better in the objective's direction
    for column, cost in (("pareto_params", "trainable_params"), ("pareto_flops", "mean_train_flops")):
        df[column] = pareto_mask(better, df[cost].astype("float64").tolist())
    return df[list(COLUMNS)]


#: columns of ``budget_frame``, in order
BUDGET_COLUMNS = (
    "budget",
    "given",
    "targets",
    "r",
    "lora_params",
    "trainable_params",
    "n_seeds",
    "objective_mean",
    "objective_sd",
    "objective_ci95_low",
    "objective_ci95_high",
    "gain",
    "gain_low",
    "gain_high",
    "race",
    "budget_pick",
)


def budget_frame(summary: pd.DataFrame, info: StudyInfo) -> pd.DataFrame:
    """A budget sweep's table (LoRA, Hu et al. 2021, Table 5): one row per budget × target set, the budgets in
    the order of ``sweep.budgets``, the start targets first in each (``sweep.budget.budget_ranks``).

    Columns: ``budget`` (LoRA parameters), ``given`` (the configuration it was given as, ``r=8 on q,v``; empty
    for a count), ``targets``, ``r``, ``lora_params`` (r·Σ(d+k)); from ``summary`` (``summary_frame``: metric
    units, the decisions' statistics) ``trainable_params`` (LoRA + head), ``n_seeds``, ``objective_mean``,
    ``objective_sd``, ``objective_ci95_low``/``_high``; ``gain`` (the set's mean score minus the start
    targets' at that budget: the objective's unit, positive when better) and ``gain_low``/``gain_high`` (its
    one-sided ``sweep.confidence`` Student-t bounds, ``sweep.stats.compare``, the seed s.d. pooled over every
    configuration of the sweep and floored as the decisions' is; NaN for the start targets and without a
    noise estimate); ``race`` (what the sweep's race at that budget decided about the set: ``gain``,
    ``no-gain``, ``failed``; empty for the start targets or before the race); ``budget_pick`` (the
    recommendation rule, ``sweep.decide.recommend``, among the sets of that budget). Empty without the
    study's ``target_costs``.
    """
    if info.params_per_rank is None:
        return pd.DataFrame(columns=list(BUDGET_COLUMNS))
    s = info.settings
    per_cfg = {c: res for c, res in results(info).items() if res.stats is not None}
    floor = noise_floor([o for _, o in info.history], s)
    noise = seed_noise([res.stats for res in per_cfg.values()], floor)
    rows = []
    for b in budget_ranks(s, info.params_per_rank):
        start, configs = b.configs()[0], b.configs()
        stats = {c: per_cfg[c].stats if c in per_cfg else None for c in configs}
        pick, _ = recommend(
            configs,
            stats,
            {c: per_cfg[c].trainable_params for c in per_cfg},
            {c: per_cfg[c].train_flops for c in per_cfg},
            s,
            floor,
            info.objective,
        )
        for r, t in configs:
            row = summary[(summary["r"] == r) & (summary["targets"] == t)]
            known = row.iloc[0] if len(row) else None
            a, st = stats[start], stats[(r, t)]
            cmp = compare(a, st, noise, s.confidence) if (r, t) != start and a is not None and st is not None else None
            race = [
                d.action
                for d in info.decisions
                if d.stage == Stage.EQUAL_BUDGET
                and (d.r, d.targets) == (r, t)
                and d.action in (Action.GAIN, Action.NO_GAIN, Action.FAILED)
            ]
            rows.append(
                {
                    "budget": b.params,
                    "given": f"r={b.given[0]} on {b.given[1]}" if b.given else "",
                    "targets": t,
                    "r": r,
                    "lora_params": b.lora_params[t],
                    **{
                        k: known[k] if known is not None else math.nan
                        for k in (
                            "trainable_params",
                            "n_seeds",
                            "objective_mean",
                            "objective_sd",
                            "objective_ci95_low",
                            "objective_ci95_high",
                        )
                    },
                    "gain": cmp.gain if cmp else math.nan,
                    "gain_low": cmp.low if cmp and cmp.low is not None else math.nan,
                    "gain_high": cmp.high if cmp and cmp.high is not None else math.nan,
                    "race": str(race[-1]) if race and (r, t) != start else "",
                    "budget_pick": (r, t) == pick,
                }
            )
    return pd.DataFrame(rows, columns=list(BUDGET_COLUMNS)).astype({"trainable_params": "Int64", "n_seeds": "Int64"})
