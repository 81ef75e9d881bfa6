"""How far one sweep's answer can be trusted: the seed noise it measured, the smallest gain it could
detect, and the calibrated P(regret ≤ tolerance) of its procedure on its own observed curve (the
simulation of ``analysis/simulate.py``). Used by ``report.md``, the sweep's console summary and
``python -m analysis.calibrate task=… sweep.name=…``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence

from analysis.simulate import NARROW_OFFSET, SEED, Scenario, calibrate_cell
from sweep.config import SweepSettings, targets_key
from sweep.decide import Outcome, aggregate, noise_floor, objective_of, seed_sequence
from sweep.decision import ConfigKey
from sweep.metrics import metric_of
from sweep.stats import Stats, detectable_gain, seed_noise

#: simulated sweeps behind a report's P(regret ≤ tolerance)
REPS = 200


def _stats(outcomes: Sequence[Outcome], settings: SweepSettings) -> Dict[ConfigKey, Stats]:
    """The decisions' statistics (``sweep.decide.aggregate``) of every configuration with a counted ok seed."""
    every = aggregate(outcomes, seed_sequence(settings))
    return {cfg: res.stats for cfg, res in every.items() if res.stats is not None}


def observed_scenario(
    outcomes: Sequence[Outcome], settings: SweepSettings, params_per_rank: Mapping[str, int]
) -> Optional[Scenario]:
    """A study's observed means as the true curve (points): each rank of ``sweep.ranks`` on the start
    targets takes the mean of the nearest observed rank (the lower one on a tie); each other observed
    target set takes its mean offset from that curve at the ranks it was tried; target sets never tried
    get no offset (wider) or ``NARROW_OFFSET`` (narrower; in units of the objective's default tolerance),
    as in ``scenarios``; head only (a rank of 0) its own mean, or the lowest rank's before it has one. Scores,
    as the decisions compare them (a minimised objective negated). None when the start targets have no ok
    adapter trial."""
    means = {c: st.mean for c, st in _stats(outcomes, settings).items()}
    start = targets_key(settings.start_targets)
    seen = sorted(r for r, t in means if t == start and r > 0)
    if not seen:
        return None
    ranks = [r for r in settings.ranks if r > 0]
    curve = {r: means[(min(seen, key=lambda x: (abs(math.log2(x / r)), x)), start)] for r in ranks}
    if settings.ranks[0] == 0:  # head only (r=0): its own mean, else (not yet observed) the lowest rank's
        curve = {0: means.get((0, start), curve[ranks[0]]), **curve}
    offsets: Dict[str, float] = {}
    for t in dict.fromkeys(targets_key(x) for x in settings.target_sets):
        tried = [means[(r, t)] - curve[r] for r, tt in means if tt == t and r in curve]
        narrow = NARROW_OFFSET * metric_of(objective_of(outcomes)).tolerance
        offsets[t] = (
            sum(tried) / len(tried) if tried else narrow if params_per_rank[t] < params_per_rank[start] else 0.0
        )
    offsets[start] = 0.0
    return Scenario("study", "study", curve, offsets)


@dataclass(frozen=True)
class Reliability:
    """How far a sweep's answer can be trusted.

    Attributes:
        sigma: seed s.d. the comparisons use (the objective's unit, ``objective``; points for GLUE metrics): pooled over the study's configurations, raised to
            ``floor`` when the measured one is below it (``sweep.stats.seed_noise``); dof: its degrees of
            freedom.
        seeds: the most seeds a configuration can get (``max_seeds``, or the seeds of a grid).
        detectable_gain: smallest gain (points) whose lower bound clears 0 with ``seeds`` seeds on each
            side at ``sweep.confidence`` (``sweep.stats.detectable_gain``).
        tolerance: ``sweep.tolerance`` (points).
        p_within_tolerance: calibrated P(regret ≤ tolerance) of the procedure on the study's observed
            curve at ``sigma`` (``reps`` simulated sweeps); None without ``params_per_rank``, and for a budget
            sweep (its sets at equal budgets are not a rank curve). ``make calibrate`` gives it on every
            scenario family.
        seeds_key: where ``seeds`` comes from: ``sweep.max_seeds`` (progressive, budget: the seed limit a race
            may reach, not what any configuration ran) or ``sweep.seeds`` (grid).
        reps: the simulated sweeps behind ``p_within_tolerance``; its Monte-Carlo standard error is
            √(p(1 − p)/reps).
        measured: the pooled seed s.d. as measured (points); floor: the floor applied to it (points;
            None when ``sweep.noise_floor`` is 0 or the trials do not say how many examples they evaluated).
        n_eval: validation examples of the trials (100/resolution), None when unknown; the simulation
            rounds its values to that resolution.
        objective: the objective's name (``sweep.metrics.METRICS``: the unit the sentence names; None:
            points).
    """

    sigma: float
    dof: int
    seeds: int
    detectable_gain: float
    tolerance: float
    p_within_tolerance: Optional[float]
    seeds_key: str = "sweep.max_seeds"
    reps: int = REPS
    measured: Optional[float] = None
    floor: Optional[float] = None
    n_eval: Optional[int] = None
    objective: Optional[str] = None

    @property
    def floored(self) -> bool:
        """Whether σ is the floor, the measured s.d. being below it."""
        return self.floor is not None and self.measured is not None and self.measured < self.floor

    def text(self) -> str:
        """One sentence for the console and the report."""
        where = (
            f"at the seed limit ({self.seeds_key}={self.seeds} per configuration)"
            if self.seeds_key == "sweep.max_seeds"
            else f"with {self.seeds} seeds per configuration ({self.seeds_key})"
        )
        m = metric_of(self.objective)
        if self.floored:
            examples = (
                f" = {self.floor * self.n_eval / 100:.3g} validation examples of {self.n_eval}" if self.n_eval else ""
            )
            noise = (
                f"seed noise σ = {m.fmt(self.sigma)} {m.unit}, floored (sweep.noise_floor{examples}): the measured "
                f"{m.fmt(self.measured)} (pooled, {self.dof} d.f.) claims more than the validation set can resolve"
            )
        else:
            noise = f"seed noise σ = {m.fmt(self.sigma)} {m.unit} (pooled, {self.dof} d.f.)"
        out = f"{noise}; {where} the smallest gain a comparison can detect is {m.fmt(self.detectable_gain)} {m.unit}"
        if self.p_within_tolerance is not None:
            p = self.p_within_tolerance
            if 0 < p < 1:
                spread = f"± {math.sqrt(p * (1 - p) / self.reps):.2f} Monte-Carlo s.e., {self.reps} simulated sweeps"
            else:  # no spread to quote: the rule of three bounds what the sweeps did not show
                bound = f"≥ {1 - 3 / self.reps:.3f}" if p == 1 else f"≤ {3 / self.reps:.3f}"
                spread = f"all {self.reps} simulated sweeps; 95% bound {bound}"
            out += (
                f"; calibrated P(regret ≤ {self.tolerance:g} {'point(s)' if m.unit == 'points' else m.unit}) "
                "at this σ on this sweep's observed curve: "
                f"{p:.2f} ({spread})"
            )
        return out


def reliability(
    outcomes: Sequence[Outcome], settings: SweepSettings, params_per_rank: Optional[Mapping[str, int]], reps: int = REPS
) -> Optional[Reliability]:
    """The ``Reliability`` of a study's procedure; None when no configuration has two counted ok seeds (no σ).
    σ pools the decisions' statistics (``sweep.decide.aggregate`` over the seeds ``settings`` can ask for),
    floored as the decisions floor it (``sweep.decide.noise_floor``); the simulation rounds its values to
    the trials' validation resolution.
    Without ``params_per_rank`` (LoRA parameters per unit of rank of each target set, stored by the sweep
    as ``target_costs``) no simulation is run."""
    noise = seed_noise(list(_stats(outcomes, settings).values()), noise_floor(outcomes, settings))
    objective = objective_of(outcomes)
    if noise.sd is None:
        return None
    steps = [o.resolution for o in outcomes if o.resolution is not None]
    n_eval = round(100 / max(steps)) if steps else None
    seeds = settings.max_seeds if settings.mode != "grid" else len(settings.seeds)
    gain = detectable_gain(noise.sd, noise.dof, seeds, settings.confidence)
    curve = params_per_rank and settings.mode != "budget"  # a budget sweep's sets are no rank curve
    scenario = observed_scenario(outcomes, settings, params_per_rank) if curve else None
    p = None
    if scenario is not None:
        cell = calibrate_cell(
            settings, scenario, noise.sd, params_per_rank, reps, SEED, settings.tolerance, n_eval, objective
        )
        p = cell.p_within_tolerance
    key = "sweep.max_seeds" if settings.mode != "grid" else "sweep.seeds"
    floor = noise.floor if noise.floored else None
    return Reliability(
        noise.sd, noise.dof, seeds, gain, settings.tolerance, p, key, reps, noise.measured, floor, n_eval, objective
    )
