"""The statistics of the decisions: a configuration's objective over seeds, and one configuration against
another. Pure functions of scores: values in the objective's unit, signed so that higher is better
(``sweep.metrics.Metric.score``: points, 100 × metric, for the GLUE metrics; −MSE for ``mse``), converted
once, in ``stats_of``; so a gain is an improvement in the objective's direction, whichever it is.

Comparisons (MRPC accuracy has 408 examples, so one example is 0.25 points). Candidate B against the
best so far A: gain d = mean_B − mean_A, standard error ``SE = s_pooled · sqrt(1/n_A + 1/n_B)`` with
s_pooled the seed standard deviation pooled over every configuration evaluated so far (Σ(n_i − 1)
degrees of freedom), and the one-sided bounds ``d ∓ t·SE`` with t the Student-t quantile at
``confidence`` for those degrees of freedom (``compare``). How the decisions use them is
``sweep/decide.py``'s docstring.

A noise estimate must not claim more than its data: when every seed scored the same (a model that predicts
one class, a tiny validation set) the pooled s.d. is 0, and every difference would be significant. So the
s.d. a comparison uses is floored (``seed_noise``): raised to ``floor`` points when the measured one is
below it, the floor being ``sweep.noise_floor`` validation examples' worth of points (100/n_eval each: the
resolution of an accuracy; ``sweep.decide.noise_floor``). The comparison records the floor it applied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import (
    Optional,
    Sequence,
    Tuple,
)

from scipy.stats import t as student_t

from sweep.metrics import metric_of


@dataclass(frozen=True)
class Stats:
    """Objective over the ok seeds of one configuration, in points: n, mean, sample sd (None if n < 2)."""

    n: int
    mean: float
    sd: Optional[float]

    def interval(self, level: float = 0.95, floor: Optional[float] = None) -> Tuple[Optional[float], Optional[float]]:
        """Two-sided ``level`` Student-t interval of the mean, in points: mean ± t((1+level)/2, n−1)·s/√n
        (``scipy.stats.t.interval``) with s = max(sd, ``floor``): a noise estimate no finer than the
        validation set resolves (``sweep.decide.noise_floor``; seeds that all scored the same claim no
        certainty); (mean, mean) when s is 0 (no floor given; scipy answers NaN for a zero scale); (None,
        None) below two seeds."""
        if self.sd is None:
            return None, None
        s = max(self.sd, floor or 0.0)
        if s == 0:
            return self.mean, self.mean
        low, high = student_t.interval(level, self.n - 1, loc=self.mean, scale=s / math.sqrt(self.n))
        return float(low), float(high)


@dataclass(frozen=True)
class Noise:
    """The seed s.d. comparisons use, points: ``sd`` = max(``measured``, ``floor``), ``measured`` the s.d.
    pooled over configurations (``pooled_sd``) with ``dof`` degrees of freedom; ``floor`` None when there
    is none. ``sd`` and ``measured`` are None without a noise estimate (no configuration with two seeds)."""

    sd: Optional[float]
    dof: int
    measured: Optional[float] = None
    floor: Optional[float] = None

    @property
    def floored(self) -> bool:
        """Whether the floor replaced the measured s.d. (the measured one is below it)."""
        return self.floor is not None and self.measured is not None and self.measured < self.floor


@dataclass(frozen=True)
class Comparison:
    """B against A, in points: ``gain`` = mean_B − mean_A; ``se`` of that difference, ``dof`` of the
    pooled seed s.d. ``sd`` and the one-sided bounds ``low``/``high`` = gain ∓ t·SE (None without a
    noise estimate, i.e. when no configuration has two ok seeds). ``floor``: the floor ``sd`` was raised
    to when the measured s.d. ``measured_sd`` was below it (both None when no floor applied)."""

    gain: float
    se: Optional[float] = None
    dof: int = 0
    sd: Optional[float] = None
    low: Optional[float] = None
    high: Optional[float] = None
    floor: Optional[float] = None
    measured_sd: Optional[float] = None


def stats_of(values: Sequence[float], objective: Optional[str] = None) -> Optional[Stats]:
    """Stats of values of the metric ``objective`` given in metric units, as scores (``Metric.score``: its
    unit, higher is better; points for a GLUE metric and for None); None if empty."""
    if not values:
        return None
    metric = metric_of(objective)
    pts = [metric.score(v) for v in values]
    mean = sum(pts) / len(pts)
    sd = math.sqrt(sum((x - mean) ** 2 for x in pts) / (len(pts) - 1)) if len(pts) > 1 else None
    return Stats(len(pts), mean, sd)


def pooled_sd(stats: Sequence[Stats]) -> Tuple[Optional[float], int]:
    """Seed standard deviation pooled over configurations, sqrt(Σ(n_i−1)s_i² / Σ(n_i−1)), and its degrees
    of freedom Σ(n_i−1); (None, 0) when no configuration has two seeds."""
    dof = sum(s.n - 1 for s in stats if s.sd is not None)
    if dof == 0:
        return None, 0
    return math.sqrt(sum((s.n - 1) * s.sd**2 for s in stats if s.sd is not None) / dof), dof


def seed_noise(stats: Sequence[Stats], floor: Optional[float] = None) -> Noise:
    """The seed s.d. comparisons use: ``pooled_sd`` of ``stats``, raised to ``floor`` points when below it
    (see the module docstring); no floor when ``floor`` is None."""
    measured, dof = pooled_sd(stats)
    if measured is None:
        return Noise(None, 0, None, floor)
    return Noise(max(measured, floor or 0.0), dof, measured, floor)


def residual_sd(rows: Sequence[Sequence[float]]) -> Tuple[Optional[float], int]:
    """The s.d. of one cell of ``rows`` (n trials × R ranks, scores) about an additive fit (a mean per rank
    plus an offset per trial: a nested trial's ranks share one training run), and its degrees of freedom
    (n − 1)(R − 1): sqrt(Σ e² / dof) with e = x − row mean − column mean + grand mean; (None, 0) when
    dof is 0 (one trial, or one rank)."""
    n, k = len(rows), len(rows[0]) if rows else 0
    dof = (n - 1) * (k - 1) if n and k else 0
    if dof == 0:
        return None, 0
    row = [sum(x) / k for x in rows]
    col = [sum(x[j] for x in rows) / n for j in range(k)]
    grand = sum(row) / n
    ss = sum((rows[i][j] - row[i] - col[j] + grand) ** 2 for i in range(n) for j in range(k))
    return math.sqrt(ss / dof), dof


@dataclass(frozen=True)
class Difference:
    """B against A, two-sided, in the scores' unit: ``gain`` = mean_B − mean_A and its ``level`` Welch t
    interval ``low``–``high`` with ``dof`` Welch–Satterthwaite degrees of freedom (all three None when a side
    has fewer than two seeds)."""

    gain: float
    low: Optional[float] = None
    high: Optional[float] = None
    dof: Optional[float] = None


def welch(a: Stats, b: Stats, level: float = 0.95, floor: Optional[float] = None) -> Difference:
    """mean_B − mean_A with Welch's t interval (Welch 1947, Biometrika 34: 28–35; what
    ``scipy.stats.ttest_ind(…, equal_var=False).confidence_interval(level)`` gives): each side keeps its own
    s.d., raised to ``floor`` points (as ``Stats.interval``: seeds that all scored the same claim no
    certainty), v_i = s_i²/n_i, SE = √(v_A + v_B), dof = SE⁴ / (v_A²/(n_A − 1) + v_B²/(n_B − 1)), bounds
    gain ∓ t((1 + level)/2, dof)·SE. For two configurations trained apart, with seed noise that need not be
    equal (full fine-tuning against an adapter), unlike ``compare``'s pooled s.d. A zero SE (no floor, every
    seed equal on both sides) gives (gain, gain); fewer than two seeds on a side gives no interval."""
    gain = b.mean - a.mean
    if a.sd is None or b.sd is None:
        return Difference(gain)
    va, vb = (max(st.sd, floor or 0.0) ** 2 / st.n for st in (a, b))
    if va + vb == 0:
        return Difference(gain, gain, gain, None)
    dof = (va + vb) ** 2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))
    half = t_quantile((1 + level) / 2, dof) * math.sqrt(va + vb)
    return Difference(gain, gain - half, gain + half, dof)


@lru_cache(maxsize=None)
def t_quantile(confidence: float, dof: int) -> float:
    """Student-t quantile at ``confidence`` with ``dof`` degrees of freedom (one-sided)."""
    return float(student_t.ppf(confidence, dof))


def compare(a: Stats, b: Stats, noise: Noise, confidence: float) -> Comparison:
    """B against A with the seed s.d. ``noise`` (``seed_noise``; see the module docstring)."""
    gain = b.mean - a.mean
    sd, dof = noise.sd, noise.dof
    if sd is None:
        return Comparison(gain)
    se = sd * math.sqrt(1 / a.n + 1 / b.n)
    half = t_quantile(confidence, dof) * se
    floored = (noise.floor, noise.measured) if noise.floored else (None, None)
    return Comparison(gain, se, dof, sd, gain - half, gain + half, *floored)


def detectable_gain(sd: float, dof: int, n: int, confidence: float) -> float:
    """Smallest gain in points whose lower bound clears 0 with ``n`` seeds on each side:
    t(confidence, dof) · sd · sqrt(2/n)."""
    return t_quantile(confidence, dof) * sd * math.sqrt(2 / n)
