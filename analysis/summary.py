"""One row per configuration (r, targets): the objective over its seeds with a t-interval, its cost,
whether it is on a Pareto front, and whether it is the recommended one, with the sweep's decisions.

Only ``complete`` trials count towards means, costs and the recommendation; diverged and failed ones
are counted per configuration and otherwise left out. The recommendation rule is
``sweep.decide.recommend``, never a copy of it.
"""

from __future__ import annotations

import math
from typing import Iterator, List, Optional, Sequence, Tuple

import pandas as pd
from scipy import stats as scipy_stats

from analysis.load import StudyInfo
from sweep.decide import Config, Decision, recommend, stats_of

#: columns of summary.csv, in order
COLUMNS = ("r", "targets", "n_seeds", "n_failed", "n_running", "objective_mean", "objective_sd",
           "objective_ci95_low", "objective_ci95_high", "trainable_params", "trainable_pct", "lora_params",
           "mean_train_flops", "mean_train_seconds", "pareto_params", "pareto_flops", "recommended",
           "decision", "reason")


def _by_config(trials: pd.DataFrame) -> Iterator[Tuple[Config, pd.DataFrame, pd.DataFrame]]:
    """(config, all its trials, its complete trials), configurations in order of their first trial."""
    known = trials.dropna(subset=["r", "targets"]).sort_values("number")
    for (r, targets), group in known.groupby(["r", "targets"], sort=False):
        yield (int(r), str(targets)), group, group[group["state"] == "complete"]


def pareto_mask(metric: Sequence[float], cost: Sequence[float]) -> List[bool]:
    """Which points are on the Pareto front of maximising ``metric`` while minimising ``cost``.

    A point is on the front when no other point has a metric ≥ and a cost ≤ its own with at least
    one of the two strict. Points with a missing metric or cost are never on it and dominate nothing.
    """
    points = [(m, c) for m, c in zip(metric, cost)]
    valid = [not (pd.isna(m) or pd.isna(c)) for m, c in points]
    front = []
    for i, (m, c) in enumerate(points):
        dominated = any(valid[j] and j != i and mj >= m and cj <= c and (mj > m or cj < c)
                        for j, (mj, cj) in enumerate(points))
        front.append(valid[i] and not dominated)
    return front


def recommendation(trials: pd.DataFrame, info: StudyInfo) -> Tuple[Optional[Config], Optional[Decision]]:
    """The recommended configuration and the ``recommend`` decision that explains it.

    A finished sweep's stored recommendation is returned as it is. Otherwise the sweep's own rule
    (``sweep.decide.recommend``: the fewest trainable parameters among configurations
    shown within ``tolerance`` of the best, at the ``confidence`` of the study's settings) is
    applied to every configuration with a complete trial; that answer is provisional
    (``info.finished`` is False). Returns (None, None) when no trial is complete.
    """
    if info.finished:
        decision = next((d for d in reversed(info.decisions) if d.action == "recommend"), None)
        return info.recommendation, decision
    evaluated, stats, params, flops = [], {}, {}, {}
    for cfg, group, ok in _by_config(trials):
        if ok.empty:
            continue
        evaluated.append(cfg)
        stats[cfg] = stats_of([float(v) for v in ok["objective"]])
        params[cfg] = int(group["trainable_params"].max()) if group["trainable_params"].notna().any() else 0
        flops[cfg] = float(ok["train_flops"].mean()) if ok["train_flops"].notna().any() else 0.0
    return recommend(evaluated, stats, params, flops, info.settings)


def _interval(values: pd.Series) -> Tuple[float, float, float, float]:
    """Mean, sample sd and the 95% t-interval of the mean (NaN where n is too small)."""
    n = len(values)
    mean = float(values.mean()) if n else math.nan
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    sd = float(values.std(ddof=1))
    half = float(scipy_stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half


def summary_frame(trials: pd.DataFrame, info: StudyInfo) -> pd.DataFrame:
    """One row per configuration (r, targets) of ``trials`` (from ``trials_frame``), in the order the
    sweep first tried them.

    Columns: ``r``, ``targets``; ``n_seeds`` (complete trials), ``n_failed`` (diverged or failed),
    ``n_running``; ``objective_mean``, ``objective_sd`` (sample sd, ddof=1; NaN for one seed),
    ``objective_ci95_low``/``objective_ci95_high`` (mean ± t₀.₉₇₅,ₙ₋₁·sd/√n; NaN below two seeds), all
    in metric units (accuracy 0.8235, not 82.35 points); ``trainable_params``, ``trainable_pct`` (percent
    of the model's parameters), ``lora_params``; ``mean_train_flops`` (training FLOPs) and
    ``mean_train_seconds`` (training seconds) over complete trials; ``pareto_params`` and
    ``pareto_flops`` (on the front of objective mean vs trainable parameters / vs mean training FLOPs,
    see ``pareto_mask``; only configurations with a complete trial); ``recommended`` (see
    ``recommendation``); ``decision`` (the actions of the stored decisions about this configuration,
    ``; ``-separated) and ``reason`` (their reasons, `` | ``-separated, same order).
    """
    pick, _ = recommendation(trials, info)
    rows = []
    for (r, targets), group, ok in _by_config(trials):
        mean, sd, low, high = _interval(ok["objective"].astype(float))
        about = [d for d in info.decisions if (d.r, d.targets) == (r, targets)]
        rows.append({
            "r": r, "targets": targets, "n_seeds": len(ok),
            "n_failed": int(group["state"].isin(("diverged", "failed")).sum()),
            "n_running": int((group["state"] == "running").sum()),
            "objective_mean": mean, "objective_sd": sd, "objective_ci95_low": low, "objective_ci95_high": high,
            "trainable_params": group["trainable_params"].max(), "trainable_pct": group["trainable_pct"].max(),
            "lora_params": group["lora_params"].max(),
            "mean_train_flops": ok["train_flops"].mean(), "mean_train_seconds": ok["train_seconds"].mean(),
            "recommended": (r, targets) == pick,
            "decision": "; ".join(d.action for d in about), "reason": " | ".join(d.reason for d in about)})
    df = pd.DataFrame(rows, columns=[c for c in COLUMNS if not c.startswith("pareto_")])
    df = df.astype({"r": "int64", "n_seeds": "int64", "trainable_params": "Int64", "lora_params": "Int64",
                    "recommended": "bool"})
    for column, cost in (("pareto_params", "trainable_params"), ("pareto_flops", "mean_train_flops")):
        df[column] = pareto_mask(df["objective_mean"].tolist(), df[cost].astype("float64").tolist())
    return df[list(COLUMNS)]
