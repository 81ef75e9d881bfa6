"""The sweep's decisions as pure functions: finished trials in, next trial (or stop) and every decision
with its reason out. No I/O, no clock, no randomness: a resumed sweep replays the history and takes
exactly the decisions the interrupted one took.

The procedure (LoRA, Hu et al. 2021, §7.2 and Table 6; our design notes):
1. start at the lowest rank of ``sweep.ranks`` on ``sweep.start_targets``;
2. raise r while each rank is *significantly* better than the best so far; after ``patience`` ranks
   without a significant gain, the rank has plateaued (or the ranks run out);
3. if the plateau rank is low (≤ ``escalate_max_r``), try the target sets of ``sweep.target_sets`` that
   adapt more than the start set, cheapest first, at that rank, with the same rule and patience;
4. recommend the configuration with the fewest trainable parameters that is not significantly worse
   than the best one tried.
Before any trial the compute cap is checked: ``max_trials``, ``max_train_flops``, ``max_hours``.

"Significant": with metric values in points (100 × metric; MRPC accuracy has 408 examples, so one
example is 0.25 points), config B is better than config A when
``mean_B − mean_A > max(min_delta, noise_z · SE)``, ``SE = s_pooled · sqrt(1/n_A + 1/n_B)``, where
s_pooled is the seed-to-seed standard deviation pooled over every configuration evaluated so far
(n − 1 degrees of freedom each). With a single seed there is no noise estimate and only ``min_delta``
applies; the reasons say so. Only configurations evaluated *before* a decision inform it, so replaying
a longer history never changes an earlier decision.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from sweep.config import SweepSettings, targets_key

Config = Tuple[int, str]  # (r, targets key such as "q,v")


@dataclass(frozen=True)
class Outcome:
    """One finished trial as the decisions see it.

    Attributes:
        r, targets, seed: the configuration (targets as ``targets_key``).
        status: ``ok``, ``diverged`` (a measurement: the configuration does not train) or ``failed``
            (the trial crashed: no measurement; its seed counts as not yet run, so the trial is asked
            for again, and only the compute cap counts it); only ``ok`` trials have an objective.
        objective: the validation metric in metric units (accuracy in [0, 1], MCC in [-1, 1]).
        trainable_params: adapter + head parameters.
        train_flops: executed training FLOPs. seconds: measured train + eval seconds.
    """

    r: int
    targets: str
    seed: int
    status: str = "ok"
    objective: Optional[float] = None
    trainable_params: int = 0
    train_flops: float = 0.0
    seconds: float = 0.0


@dataclass(frozen=True)
class TrialSpec:
    """A trial to run next: the configuration, the seed, and the stage that asked for it."""

    r: int
    targets: str
    seed: int
    stage: str


@dataclass(frozen=True)
class Stats:
    """Objective over the ok seeds of one configuration, in points: n, mean, sample sd (None if n < 2)."""

    n: int
    mean: float
    sd: Optional[float]


@dataclass(frozen=True)
class Comparison:
    """B against A: gain = mean_B − mean_A (points), the standard error of that difference (None
    without a noise estimate), the threshold max(min_delta, noise_z·SE), whether gain > threshold,
    and the pooled seed standard deviation the SE came from."""

    gain: float
    se: Optional[float]
    threshold: float
    significant: bool
    sd: Optional[float] = None


@dataclass(frozen=True)
class Decision:
    """One decision: ``action`` (start, continue, no-gain, failed, plateau, ranks-exhausted, escalate,
    no-escalation, widen, budget, recommend, grid), the ``stage`` (rank, targets, grid, final), the
    configuration it is about, a one-sentence ``reason`` and the ``numbers`` behind it."""

    action: str
    stage: str
    r: Optional[int]
    targets: Optional[str]
    reason: str
    numbers: Dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        """The decision as one log line."""
        where = f" r={self.r} {self.targets}" if self.r is not None else ""
        return f"[{self.stage}] {self.action}{where}: {self.reason}"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Plan:
    """What to do now: ``next`` trial (None when the sweep is over), every decision so far, the
    recommended configuration (when the sweep is over or stopped) and why it stopped.

    ``runnable`` holds every trial that may run now, in the order one worker would run them (all
    missing seeds of the configuration under evaluation; every missing grid point), cut to what the
    ``max_trials`` cap leaves; ``next == runnable[0]`` when it is not empty. Workers run them in
    parallel; since the decisions only read finished trials, the order they finish in changes nothing."""

    next: Optional[TrialSpec]
    decisions: List[Decision]
    recommendation: Optional[Config] = None
    stop_reason: Optional[str] = None
    evaluated: List[Config] = field(default_factory=list)
    runnable: List[TrialSpec] = field(default_factory=list)


def stats_of(values: Sequence[float]) -> Optional[Stats]:
    """Stats of objective values given in metric units (converted to points); None if empty."""
    if not values:
        return None
    pts = [100.0 * v for v in values]
    mean = sum(pts) / len(pts)
    sd = math.sqrt(sum((x - mean) ** 2 for x in pts) / (len(pts) - 1)) if len(pts) > 1 else None
    return Stats(len(pts), mean, sd)


def pooled_sd(stats: Sequence[Stats]) -> Optional[float]:
    """Seed standard deviation pooled over configurations: sqrt(Σ(n_i−1)s_i² / Σ(n_i−1)); None
    when no configuration has two seeds."""
    dof = sum(s.n - 1 for s in stats if s.sd is not None)
    if dof == 0:
        return None
    return math.sqrt(sum((s.n - 1) * s.sd ** 2 for s in stats if s.sd is not None) / dof)


def compare(a: Stats, b: Stats, sd: Optional[float], min_delta: float, noise_z: float) -> Comparison:
    """Is B significantly better than A? (see the module docstring for the rule)."""
    gain = b.mean - a.mean
    se = sd * math.sqrt(1 / a.n + 1 / b.n) if sd is not None else None
    threshold = max(min_delta, noise_z * se) if se is not None else min_delta
    return Comparison(gain, se, threshold, gain > threshold, sd)


def _cmp_text(c: Comparison, min_delta: float, noise_z: float, pooled_over: int) -> str:
    if c.se is None:
        return f"threshold {c.threshold:.2f} = min_delta (no seed-noise estimate with one seed)"
    return (f"threshold {c.threshold:.2f} = max(min_delta {min_delta:g}, {noise_z:g}·SE {noise_z * c.se:.2f}); "
            f"SE of the difference from the seed s.d. {c.sd:.2f} pooled over {pooled_over} configuration(s)")


def _cmp_numbers(c: Comparison) -> Dict[str, float]:
    return {"gain": c.gain, "threshold": c.threshold, **({"se": c.se} if c.se is not None else {})}


def _fmt(cfg: Config) -> str:
    return f"r={cfg[0]} on {cfg[1]}"


def _stats_text(s: Stats) -> str:
    return f"{s.mean:.2f}" + (f" ± {s.sd:.2f}" if s.sd is not None else "") + f" points (n={s.n})"


def recommend(evaluated: Sequence[Config], stats: Mapping[Config, Optional[Stats]],
              params: Mapping[Config, int], flops: Mapping[Config, float],
              min_delta: float, noise_z: float) -> Tuple[Optional[Config], Optional[Decision]]:
    """The cheapest configuration not significantly worse than the best.

    Among ``evaluated`` configurations with stats, the best has the highest mean; a configuration C
    qualifies when the best is not significantly better than C (same rule as every other decision);
    of those, the fewest trainable parameters wins, then fewer FLOPs, then the higher mean.
    Returns (config, decision), or (None, None) when nothing has an ok trial.
    """
    scored = [c for c in evaluated if stats.get(c) is not None]
    if not scored:
        return None, None
    sd = pooled_sd([stats[c] for c in scored])
    best = max(scored, key=lambda c: (stats[c].mean, -params.get(c, 0)))
    ok = [c for c in scored if not compare(stats[c], stats[best], sd, min_delta, noise_z).significant]
    pick = min(ok, key=lambda c: (params.get(c, 0), flops.get(c, 0.0), -stats[c].mean))
    cmp = compare(stats[pick], stats[best], sd, min_delta, noise_z)
    if pick == best:
        why = (f"the best configuration ({_stats_text(stats[pick])}) is also the cheapest of those not "
               "significantly worse than it")
    else:
        why = (f"the cheapest configuration not significantly worse than the best: {_fmt(best)} is ahead by "
               f"{cmp.gain:.2f} points ({stats[best].mean:.2f} vs {stats[pick].mean:.2f}) with "
               f"{params.get(best, 0) - params.get(pick, 0):,} more trainable parameters, and that gain is not "
               f"significant ({_cmp_text(cmp, min_delta, noise_z, len(scored))})")
    numbers = {"mean": stats[pick].mean, "best_mean": stats[best].mean, "trainable_params": params.get(pick, 0),
               "best_trainable_params": params.get(best, 0), **_cmp_numbers(cmp)}
    return pick, Decision("recommend", "final", pick[0], pick[1], why, numbers)


class _Replay:
    """State of one replay of the procedure over a fixed history."""

    def __init__(self, settings: SweepSettings, outcomes: Sequence[Outcome]):
        self.s = settings
        self.outcomes = list(outcomes)
        self.decisions: List[Decision] = []
        self.evaluated: List[Config] = []
        seeds = set(settings.seeds)
        self.by_cfg: Dict[Config, List[Outcome]] = {}
        for o in self.outcomes:
            if o.status != "failed":  # a crash measured nothing: it never stands in for a result
                self.by_cfg.setdefault((o.r, o.targets), []).append(o)
        self.stats = {c: stats_of([o.objective for o in os_ if o.status == "ok" and o.seed in seeds
                                   and o.objective is not None]) for c, os_ in self.by_cfg.items()}
        self.params = {c: max((o.trainable_params for o in os_), default=0) for c, os_ in self.by_cfg.items()}
        self.flops = {c: sum(o.train_flops for o in os_ if o.status == "ok") / max(1, sum(o.status == "ok" for o in os_))
                      for c, os_ in self.by_cfg.items()}

    def missing(self, cfg: Config, stage: str) -> List[TrialSpec]:
        """The seeds of ``cfg`` that have no finished trial, in the order of ``sweep.seeds``."""
        done = {o.seed for o in self.by_cfg.get(cfg, [])}
        return [TrialSpec(cfg[0], cfg[1], seed, stage) for seed in self.s.seeds if seed not in done]

    def budget_exceeded(self) -> Optional[Decision]:
        n = len(self.outcomes)
        flops = sum(o.train_flops for o in self.outcomes)
        seconds = sum(o.seconds for o in self.outcomes)
        s = self.s
        why = None
        if s.max_trials is not None and n >= s.max_trials:
            why = f"trials: {n} ≥ sweep.max_trials={s.max_trials}"
        elif s.max_train_flops is not None and flops >= s.max_train_flops:
            why = f"training FLOPs: {flops:.3e} ≥ sweep.max_train_flops={s.max_train_flops:.3e}"
        elif s.max_hours is not None and seconds >= 3600 * s.max_hours:
            why = f"trial hours: {seconds / 3600:.2f} ≥ sweep.max_hours={s.max_hours:g}"
        if why is None:
            return None
        return Decision("budget", "final", None, None, f"compute cap reached ({why}); stopping cleanly",
                        {"trials": n, "train_flops": flops, "seconds": seconds})

    def pending(self, specs: List[TrialSpec]) -> Plan:
        """The trials that may run now (at most what ``max_trials`` leaves), unless the compute cap forbids any."""
        stop = self.budget_exceeded()
        if stop is None:
            if self.s.max_trials is not None:
                specs = specs[:self.s.max_trials - len(self.outcomes)]
            return Plan(specs[0], self.decisions, evaluated=list(self.evaluated), runnable=specs)
        self.decisions.append(stop)
        return self.finish("budget")

    def finish(self, stop_reason: str) -> Plan:
        pick, decision = recommend(self.evaluated, self.stats, self.params, self.flops,
                                   self.s.min_delta, self.s.noise_z)
        if decision is not None:
            self.decisions.append(decision)
        return Plan(None, self.decisions, pick, stop_reason, list(self.evaluated))

    def step(self, cfg: Config, ref: Optional[Config], stage: str) -> Tuple[Optional[Config], bool]:
        """Evaluate ``cfg`` against ``ref``; returns (new ref, whether cfg improved significantly)."""
        self.evaluated.append(cfg)
        s = self.stats.get(cfg)
        if s is None:
            self.decisions.append(Decision("failed", stage, cfg[0], cfg[1],
                                           "every seed diverged: not comparable, counts as no gain"))
            return ref, False
        if ref is None:
            self.decisions.append(Decision("start", stage, cfg[0], cfg[1], f"first result: {_stats_text(s)}",
                                           {"mean": s.mean, **({"sd": s.sd} if s.sd is not None else {})}))
            return cfg, True
        pool = [self.stats[c] for c in self.evaluated if self.stats.get(c) is not None]
        c = compare(self.stats[ref], s, pooled_sd(pool), self.s.min_delta, self.s.noise_z)
        nums = {"mean": s.mean, "ref_mean": self.stats[ref].mean, **_cmp_numbers(c)}
        text = f"{_stats_text(s)} vs {_fmt(ref)} {self.stats[ref].mean:.2f}: gain {c.gain:+.2f}"
        if c.significant:
            action = "continue" if stage == "rank" else "widen"
            self.decisions.append(Decision(action, stage, cfg[0], cfg[1],
                                           f"{text} > {_cmp_text(c, self.s.min_delta, self.s.noise_z, len(pool))}", nums))
            return cfg, True
        self.decisions.append(Decision("no-gain", stage, cfg[0], cfg[1],
                                       f"{text} ≤ {_cmp_text(c, self.s.min_delta, self.s.noise_z, len(pool))}", nums))
        return ref, False

    def climb(self, configs: Sequence[Config], ref: Optional[Config], stage: str,
              what: str) -> Tuple[Optional[Config], Optional[Plan], bool]:
        """Evaluate ``configs`` in order, each against the best so far, until ``patience`` of them in a
        row bring no significant gain. Returns (best so far, the plan when a trial is still missing,
        whether a plateau was declared)."""
        misses = 0
        for cfg in configs:
            specs = self.missing(cfg, stage)
            if specs:
                return ref, self.pending(specs), False
            ref, improved = self.step(cfg, ref, stage)
            misses = 0 if improved else misses + 1
            if misses >= self.s.patience:
                best = ref or cfg
                self.decisions.append(Decision(
                    "plateau", stage, best[0], best[1],
                    f"{misses} {what} in a row without a significant gain (patience {self.s.patience}); "
                    f"best so far: {_fmt(best)}"))
                return ref, None, True
        return ref, None, False


def plan_progressive(settings: SweepSettings, outcomes: Sequence[Outcome], costs: Mapping[str, int]) -> Plan:
    """Replay the progressive procedure over ``outcomes`` and say what comes next.

    Args:
        settings: the sweep settings (ranks, target sets, seeds, rules, caps).
        outcomes: every finished trial of the study, in any order.
        costs: Σ(d+k) over the matrices each target set adapts (``targets_key`` -> int), so that
            r·costs[t] is the LoRA parameter count of target set t at rank r; orders the target sets.

    Returns:
        A ``Plan``; ``plan.next`` is None once the procedure is over or the compute cap is reached,
        and then ``plan.recommendation`` is set (None only if no trial succeeded).
    """
    rp = _Replay(settings, outcomes)
    start = targets_key(settings.start_targets)
    ref, pending, plateaued = rp.climb([(r, start) for r in settings.ranks], None, "rank", "rank(s)")
    if pending:
        return pending
    if not plateaued:
        rp.decisions.append(Decision("ranks-exhausted", "rank", ref[0] if ref else None, start,
                                     f"gains stayed significant up to the last rank of sweep.ranks ({settings.ranks[-1]})"))
    if ref is None:
        return rp.finish("no successful trial")
    if ref[0] > settings.escalate_max_r:
        rp.decisions.append(Decision("no-escalation", "targets", ref[0], ref[1],
                                     f"the plateau rank {ref[0]} is above sweep.escalate_max_r={settings.escalate_max_r}: "
                                     "not a low rank, so no wider target sets are tried"))
        return rp.finish("plateau")
    wider = sorted(dict.fromkeys(targets_key(t) for t in settings.target_sets
                                 if costs[targets_key(t)] > costs[start]), key=lambda t: costs[t])
    if not wider:
        rp.decisions.append(Decision("no-escalation", "targets", ref[0], ref[1],
                                     "sweep.target_sets holds no set that adapts more than the start targets"))
        return rp.finish("plateau")
    rank = ref[0]
    rp.decisions.append(Decision("escalate", "targets", rank, start,
                                 f"r={rank} is a low rank (≤ {settings.escalate_max_r}): trying more target matrices at "
                                 f"r={rank}, cheapest first: {' | '.join(wider)}",
                                 {f"lora_params[{t}]": rank * costs[t] for t in wider}))
    _, pending, _ = rp.climb([(rank, t) for t in wider], ref, "targets", "wider target set(s)")
    return pending or rp.finish("plateau")


def plan_grid(settings: SweepSettings, outcomes: Sequence[Outcome], costs: Mapping[str, int]) -> Plan:
    """Every rank × target set × seed of the settings, target sets cheapest first, then by rank;
    the recommendation uses the same rule as the progressive procedure."""
    rp = _Replay(settings, outcomes)
    sets = list(dict.fromkeys(targets_key(t) for t in settings.target_sets))
    sets.sort(key=lambda t: costs[t])
    grid = [(r, t) for t in sets for r in settings.ranks]
    specs = [spec for cfg in grid for spec in rp.missing(cfg, "grid")]
    if specs:
        return rp.pending(specs)
    rp.evaluated.extend(grid)
    rp.decisions.append(Decision("grid", "grid", None, None, f"all {len(grid)} configurations × "
                                 f"{len(settings.seeds)} seed(s) are done", {"configurations": len(grid)}))
    return rp.finish("grid complete")


def plan(settings: SweepSettings, outcomes: Sequence[Outcome], costs: Mapping[str, int]) -> Plan:
    """``plan_progressive`` or ``plan_grid`` according to ``settings.mode``."""
    return (plan_grid if settings.mode == "grid" else plan_progressive)(settings, outcomes, costs)
