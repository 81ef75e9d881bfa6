"""One row per configuration (r, targets): the objective over its seeds with a t-interval, its cost,
whether it is on a Pareto front, and whether it is the recommended one, with the sweep's decisions.

The statistics are the decisions' own: ``sweep.decide.aggregate`` over the study's finished trials,
counting the seeds the sweep's settings can ask for (``seed_sequence``), so a row's mean and n are the
ones its decisions quote. Every configuration with a trial is listed; complete trials of other seeds
(a study run before with other ``sweep.seeds``) are counted in ``n_not_counted`` and left out of the
statistics, as the decisions leave them out; diverged and failed trials are counted per configuration.
(The replay counts only the seeds it asked for, a prefix of ``seed_sequence``; every seed it ran was
asked for, so the two differ only for racing seeds left by a run with other settings that the latest
settings never ask for.) The recommendation rule is ``sweep.decide.recommend``, never a copy of it.
"""

from __future__ import annotations

import math
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import pandas as pd

from analysis.load import StudyInfo
from sweep.decide import ConfigResults, aggregate, at_rate, noise_floor, recommend, seed_sequence
from sweep.decision import Action, ConfigKey, Decision
from sweep.metrics import Metric
from sweep.stats import Stats

#: columns of summary.csv, in order
COLUMNS = (
    "r",
    "targets",
    "n_seeds",
    "n_failed",
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


def _metric_units(st: Optional[Stats], floor: Optional[float], m: Metric) -> Tuple[float, float, float, float]:
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
    ``n_failed`` (diverged or failed), ``n_running``, ``n_not_counted`` (complete trials of seeds the
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
        mean, sd, low, high = _metric_units(st, floor, m)
        about = [d for d in info.decisions if (d.r, d.targets) == (r, targets) and d.lr == info.lr]
        rows.append(
            {
                "r": r,
                "targets": targets,
                "n_seeds": st.n if st is not None else 0,
                "n_failed": int(group["state"].isin(("diverged", "failed")).sum()),
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
