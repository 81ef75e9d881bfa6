"""The sweep's decisions as pure functions: finished trials in, next trials (or stop) and every decision
with its reason out. No I/O, no clock, no randomness: a resumed sweep replays the history and takes
exactly the decisions the interrupted one took.

The procedure (LoRA, Hu et al. 2021, §7.2 and Table 6; calibrated with ``python -m analysis.calibrate``):
1. start at the lowest rank of ``sweep.ranks`` on ``sweep.start_targets``;
   With 0 first in ``sweep.ranks`` head only (no adapter: the rank-0 reference, "is any adapter needed?")
   is trained first with ``seeds``, beside the climb: it neither starts the climb (by calibration: counted as
   its first rank, its patience step stops a rising curve early) nor enters the seed s.d. its comparisons
   pool, so the climb is what it would be without it; it is a candidate of step 4;
2. raise r while it gains: each rank is compared with the best configuration so far; after ``patience``
   rank doublings above the best rank without a significant gain, the rank has plateaued (or the
   ranks run out);
3. if the plateau rank is low (≤ ``escalate_max_r``), try the target sets of ``sweep.target_sets`` that
   adapt more than the start set, cheapest first, at that rank, each against the best so far, until
   ``patience`` sets in a row bring no significant gain;
4. recommend the cheapest configuration shown to be within ``tolerance`` of the best one tried
   (an equivalence check), else the best.
With ``sweep.mode=budget`` (LoRA Table 5, ``sweep/budget.py``) the stages are instead: each target set at the
rank that spends each budget of ``sweep.budgets``, every one with ``sweep.seeds``; at each budget every set
raced against the start targets (``_race``); then the rule of step 4 among the sets of each budget, and over
every configuration for the sweep's recommendation.
Before any trial the compute cap is checked: ``max_trials``, ``max_train_flops``, ``max_hours``.
With ``sweep.screen`` (issue #23, off by default) a screen comes first: nested-rank trials on the start
targets (``TrialSpec.nested``) give a screened curve whose knee and best name the ranks of step 2
(``sweep.screen_rule``; ``_Replay.screen``); nested outcomes inform the screen alone, never the statistics
of independent trials or the recommendation (docs/validation.md §6).

Comparisons (``sweep/stats.py``: metric values as scores, in the objective's unit and signed so that
higher is better, so a *gain* is an improvement in the objective's direction: points, 100 × metric, for
the GLUE metrics, −MSE for ``mse``, see ``sweep.metrics.Metric.score``; ``tolerance`` is in that unit too;
the candidate B against the best so far A with one-sided Student-t bounds on the gain, the seed s.d. pooled over every configuration
evaluated so far, floored at ``sweep.noise_floor`` validation examples' worth of points: ``noise_floor``,
so seeds that all scored the same do not make every difference significant; an objective without a
per-example step, such as ``mse``, has no floor). B *gains*
when the lower bound is above 0; B *does not gain* when the upper bound is below ``tolerance``. While
neither holds the comparison is undecided and one more seed is run (racing, Maron & Moore 1994) for
whichever side has fewer, up to ``max_seeds`` each; still undecided at the seed limit, B does not gain
(the cheaper configuration stays the best: by calibration, letting the means decide there lets noise
carry a flat curve past ``escalate_max_r``). Without a noise estimate (one seed each and
``max_seeds`` 1) nothing is significant. Seeds are run
in order (``sweep.seeds``, then the next integers), and a decision only uses the seeds the procedure had
asked for when it took it, so replaying a longer history never changes an earlier decision. Per-configuration
statistics come from ``aggregate``, the one aggregation the reports (``analysis/summary.py``) use too.

Collapsed trials (``Outcome.collapsed``, ``sweep/collapse.py``: one constant prediction for every validation
example) are measurements that a configuration is unstable, not values (chosen by calibration,
docs/validation.md §7): they are left out of the statistics, the comparisons and the noise floor, counted per
configuration (``ConfigResults.collapsed``), and each is replaced by the next seed of the sequence (the
compute cap counts it); a configuration with no value left up to ``max_seeds`` is ``failed`` like an
all-diverged one. When every trial asked for so far collapsed, ``sweep.seeds`` of the first configuration
among them, the sweep stops with a ``collapsed`` decision and no recommendation (``StopReason.COLLAPSED``).
A grid has no seeds to spare: its collapsed seeds are left out and counted, not replaced.

Each decision is data (``sweep/decision.py``: its action, stage, configuration and typed detail; its
sentence is rendered there, in one place).

A replay reads in three parts: ``_Memo`` (the seeds asked for per configuration, and their statistics),
``_race`` (one comparison settled by racing) and ``_Replay`` (the stages: rank climb, targets
escalation, grid; then the plan: the compute cap, the recommendation). The parts are generators that
yield the trials they need (``Steps``); the plan takes the first such yield, or the end of the procedure.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import (
    Dict,
    Generator,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
)

from sweep.budget import budget_ranks
from sweep.config import HEAD_ONLY, Choice, SweepSettings, targets_key
from sweep.decision import (
    Action,
    AllDiverged,
    AtBudget,
    BudgetPick,
    Cap,
    CapReached,
    ConfigKey,
    Decision,
    Detail,
    Escalation,
    EveryTrialCollapsed,
    FirstResult,
    GridDone,
    NoEscalation,
    Plateau,
    RaceEnd,
    RanksExhausted,
    RateChosen,
    RateVerdict,
    Recommendation,
    Screened,
    Stage,
    StopReason,
    TrialSpec,
    Undecided,
    Verdict,
)
from sweep.metrics import metric_of
from sweep.stats import Stats, compare, residual_sd, seed_noise, stats_of, t_quantile


class Status(Choice):
    """How a trial ended: ``ok`` (a value), ``diverged`` (the training loss became NaN/inf: a measurement,
    the configuration does not train) or ``failed`` (it crashed: no measurement)."""

    OK = "ok"
    DIVERGED = "diverged"
    FAILED = "failed"


@dataclass(frozen=True)
class Outcome:
    """One finished trial as the decisions see it.

    Attributes:
        r, targets, seed: the configuration (targets as ``targets_key``).
        status: ``ok``, ``diverged`` (a measurement: the configuration does not train) or ``failed``
            (the trial crashed: no measurement; its seed counts as not yet run, so the trial is asked
            for again, and only the compute cap counts it); only ``ok`` trials have a value.
        value: the value of the task's objective (``task.objective``) on the validation split, in metric
            units (accuracy in [0, 1], MCC in [-1, 1], MSE ≥ 0), whichever way it improves.
        trainable_params: adapter + head parameters.
        train_flops: executed training FLOPs. seconds: measured train + eval seconds.
        resolution: points one validation example is worth, 100/n_eval (the step of an accuracy);
            None when the record does not say how many examples were evaluated, or the objective has no
            per-example step (``Metric.per_example``: ``mse``, a loss): no floor then.
        objective: the name of the objective (``sweep.metrics.METRICS``: its direction and unit); None: a
            maximised metric in points, as every objective was before minimised ones existed. The
            statistics convert ``value`` to a score by it (``sweep.stats.stats_of``).
        nested: a nested-rank trial of the screen (``TrialSpec.nested``; ``r`` is its adapter's rank, the
            largest of ``sweep.ranks``). Its outcome informs the screen alone: it never enters
            ``aggregate``, the statistics of a comparison, the noise floor or the recommendation; the
            compute cap counts it as one trial and its FLOPs.
        rank_values: a nested trial's objective value at each rank it was evaluated at (rank -> value, in
            metric units like ``value``); None for an independent trial. Keys are read as ``int``.
        collapsed: an ok trial whose validation predictions are one constant answer (``sweep.collapse``): a
            measurement that the configuration is unstable, not a value. It never enters ``aggregate``'s
            statistics, the comparisons, the noise floor or the recommendation; it is counted
            (``ConfigResults.collapsed``) and the procedure asks for the next seed in its place
            (``_Memo.counted``; the compute cap counts it). False in records made before it was recorded.
        baseline: the objective of the task's constant baseline (the majority class; regression: the training
            mean), metric units like ``value``; None when not recorded. Decisions only quote it.
        lr: the AdamW peak learning rate the trial trained at (``train.lr``); None: not recorded (a trial
            stored before the field existed). The decisions read it only when ``sweep.lrs`` holds a bracket
            of rates (the learning-rate stage): then a configuration is (r, targets) at one rate.
    """

    r: int
    targets: str
    seed: int
    status: Status = Status.OK
    value: Optional[float] = None
    trainable_params: int = 0
    train_flops: float = 0.0
    seconds: float = 0.0
    resolution: Optional[float] = None
    objective: Optional[str] = None
    rank_values: Optional[Mapping[int, float]] = None
    nested: bool = False
    collapsed: bool = False
    baseline: Optional[float] = None
    lr: Optional[float] = None

    def __post_init__(self):
        if self.rank_values is not None:  # JSON gives the ranks back as text
            object.__setattr__(self, "rank_values", {int(r): float(v) for r, v in self.rank_values.items()})


def objective_of(outcomes: Iterable[Outcome]) -> Optional[str]:
    """The objective ``outcomes`` measured (one study measures one; a crashed trial's outcome names none);
    None when none names one."""
    return next((o.objective for o in outcomes if o.objective is not None), None)


@dataclass(frozen=True)
class ConfigResults:
    """What the decisions know about one configuration (r, targets): see ``aggregate``.

    Attributes:
        stats: the objective over the ok outcomes of the counted seeds (scores: the objective's unit,
            higher is better, ``sweep.stats.stats_of``); None without one.
        seeds: those counted ok seeds, in the order of the counted seeds.
        measured: its measured outcomes, one per seed (every seed, counted or not).
    """

    stats: Optional[Stats]
    seeds: Tuple[int, ...]
    measured: Tuple[Outcome, ...]

    @property
    def not_counted(self) -> int:
        """Ok outcomes with a value (not collapsed) of seeds outside the counted ones (left out of ``stats``)."""
        return sum(map(_valued, self.measured)) - len(self.seeds)

    @property
    def collapsed(self) -> int:
        """Its measured outcomes (every seed) that collapsed to a constant prediction (left out of ``stats``)."""
        return sum(o.collapsed for o in self.measured)

    @property
    def collapse_rate(self) -> float:
        """``collapsed`` as a share of its measured outcomes (every seed: ok, collapsed or diverged)."""
        return self.collapsed / len(self.measured)

    @property
    def trainable_params(self) -> int:
        """The most trainable parameters over its measured outcomes (every seed)."""
        return max(o.trainable_params for o in self.measured)

    @property
    def train_flops(self) -> float:
        """Mean training FLOPs over its ok outcomes (every seed); 0 without one."""
        ok = [o.train_flops for o in self.measured if o.status == "ok"]
        return sum(ok) / max(1, len(ok))


@dataclass
class Plan:
    """What to do now: ``runnable``, every trial the procedure needs before its next decision (they
    may run in any order or at once), and ``next`` = ``runnable[0]`` (None when the sweep is over);
    every decision so far; the recommended configuration (when the sweep is over or stopped) and why
    it stopped; ``lr``, the learning rate of the configurations in ``evaluated`` and of the recommendation
    when ``sweep.lrs`` holds a bracket (the learning-rate stage's choice), else None (``train.lr``)."""

    next: Optional[TrialSpec]
    decisions: List[Decision]
    recommendation: Optional[ConfigKey] = None
    stop_reason: Optional[StopReason] = None
    evaluated: List[ConfigKey] = field(default_factory=list)
    runnable: List[TrialSpec] = field(default_factory=list)
    lr: Optional[float] = None


def seed_sequence(settings: SweepSettings) -> List[int]:
    """The seeds a configuration may get, in order: ``sweep.seeds``, then the next integers after the
    largest of them up to ``sweep.max_seeds`` seeds in all (progressive, budget: racing); ``sweep.seeds`` (grid)."""
    seeds = list(settings.seeds)
    if settings.mode != "grid":
        seeds += range(max(seeds) + 1, max(seeds) + 1 + settings.max_seeds - len(seeds))
    return seeds


def screen_seed_sequence(settings: SweepSettings) -> List[int]:
    """The seeds of the screen's nested trials, a sequence of their own: ``sweep.seeds``, then the next
    integers after the largest of them, ``sweep.screen_seeds`` in all."""
    seeds = list(settings.seeds)
    seeds += range(max(seeds) + 1, max(seeds) + 1 + max(0, settings.screen_seeds - len(seeds)))
    return seeds[: settings.screen_seeds]


def _measured(outcomes: Iterable[Outcome], rated: bool = False) -> Dict[tuple, Dict[int, Outcome]]:
    """The outcomes of independent trials that are measurements, by configuration (in the order of its
    first one) and seed; the configuration is (r, targets), or (r, targets, lr) when ``rated`` (a sweep with
    a bracket of learning rates, ``sweep.lrs``: the same (r, targets) at two rates is two configurations).

    A ``failed`` trial (a crash) measured nothing and is left out: it never stands in for a result.
    A nested trial (the screen's) is left out: its values are not those of an independent trial.
    Of two outcomes of one seed the later one counts (``outcomes`` in trial order).
    """
    by_cfg: Dict[ConfigKey, Dict[int, Outcome]] = {}
    for o in outcomes:
        if o.status != "failed" and not o.nested:
            by_cfg.setdefault((o.r, o.targets, o.lr) if rated else (o.r, o.targets), {})[o.seed] = o
    return by_cfg


def _valued(o: Outcome) -> bool:
    """Whether ``o`` is a value of the objective: an ok trial with a value that did not collapse."""
    return o.status == "ok" and o.value is not None and not o.collapsed


def at_rate(outcomes: Iterable[Outcome], lr: Optional[float]) -> List[Outcome]:
    """The outcomes of trials trained at ``lr`` (``Outcome.lr``); all of them when ``lr`` is None (a sweep
    without a bracket of rates). What the reports aggregate for a sweep whose recommendation is at
    ``Plan.lr``: ``aggregate`` keys configurations by (r, targets), one rate at a time."""
    return [o for o in outcomes if lr is None or o.lr == lr]


def aggregate(outcomes: Iterable[Outcome], seeds: Sequence[int]) -> Dict[ConfigKey, ConfigResults]:
    """Per configuration (r, targets), what the decisions use: the one aggregation of outcomes.

    Only measurements of independent trials count (nested trials are the screen's, crashes are left out, the later outcome of a seed wins), and the
    objective only of ``seeds`` that did not collapse (``Outcome.collapsed``: counted in ``ConfigResults.collapsed``), in that order: the replay passes the seeds it has asked for so far
    (``seed_sequence(settings)[:n]``), a report ``seed_sequence(settings)``; seeds outside them (a study
    run before with other ``sweep.seeds``) are ``not_counted``. The costs (the most trainable parameters, the
    mean training FLOPs) take every seed: a trial's cost does not depend on whether its metric counts.
    The values become scores here (``sweep.stats.stats_of`` by the outcomes' ``objective``: its unit,
    higher is better), the one place the decisions learn which way the objective improves.

    Args:
        outcomes: finished trials, in trial order.
        seeds: the seeds whose objective counts, distinct, in the order their values are summed.

    Returns:
        ``ConfigResults`` by configuration, in the order of each configuration's first measured
        outcome; a configuration with no ok counted seed has ``stats`` None.
    """
    out = {}
    for cfg, by_seed in _measured(outcomes).items():
        ok = [s for s in seeds if s in by_seed and _valued(by_seed[s])]
        values = [by_seed[s].value for s in ok]
        stats = stats_of(values, objective_of(by_seed[s] for s in ok))
        out[cfg] = ConfigResults(stats, tuple(ok), tuple(by_seed.values()))
    return out


def noise_floor(outcomes: Iterable[Outcome], settings: SweepSettings) -> Optional[float]:
    """The floor on the seed s.d. of every comparison, points: ``sweep.noise_floor`` validation examples'
    worth, at the coarsest ``resolution`` of ``outcomes`` (one study evaluates one validation set, so they
    agree); None when ``sweep.noise_floor`` is 0 or no outcome has a resolution. Nested and collapsed trials
    are left out."""
    return _floor([o for o in outcomes if not o.nested and not o.collapsed], settings)


def _floor(outcomes: Iterable[Outcome], settings: SweepSettings) -> Optional[float]:
    return floor_at([o.resolution for o in outcomes], settings)


def floor_at(resolutions: Iterable[Optional[float]], settings: SweepSettings) -> Optional[float]:
    """``sweep.noise_floor`` validation examples' worth of the objective's unit at the coarsest of
    ``resolutions`` (``TrialResult.resolution``; None: none known), points; None when the floor is 0 or no
    resolution is known. The floor of trials that are not a study's (``analysis/methods.py``)."""
    steps = [r for r in resolutions if r is not None]
    return settings.noise_floor * max(steps) if steps and settings.noise_floor > 0 else None


def recommend(
    evaluated: Sequence[ConfigKey],
    stats: Mapping[ConfigKey, Optional[Stats]],
    params: Mapping[ConfigKey, int],
    flops: Mapping[ConfigKey, float],
    settings: SweepSettings,
    floor: Optional[float] = None,
    objective: Optional[str] = None,
) -> Tuple[Optional[ConfigKey], Optional[Decision]]:
    """The cheapest configuration shown to be within ``settings.tolerance`` (the objective's unit) of the best.

    Among ``evaluated`` configurations with stats (scores: higher is better, whichever way ``objective``
    improves), the best has the highest mean score (fewer trainable parameters on a tie). Going from the fewest trainable parameters up (then fewer FLOPs, then the
    higher mean), the first configuration whose upper bound on (best − it) is below the tolerance is
    picked (equivalence: it is at most ``tolerance`` worse, at ``settings.confidence``); the
    best is picked when no cheaper one is shown equivalent; the seed s.d. is floored at ``floor`` points
    (``noise_floor``). The decision names ``objective`` (its sentence's unit and direction). Returns
    (config, decision), or (None, None) when nothing has an ok trial.
    """
    scored = [c for c in evaluated if stats.get(c) is not None]
    if not scored:
        return None, None
    pooled = seed_noise([stats[c] for c in scored], floor)
    best = max(scored, key=lambda c: (stats[c].mean, -params.get(c, 0)))
    pick, cmp = best, None
    for c in sorted(scored, key=lambda c: (params.get(c, 0), flops.get(c, 0.0), -stats[c].mean)):
        if c == best:
            break
        cmp = compare(stats[c], stats[best], pooled, settings.confidence)
        if cmp.high is not None and cmp.high < settings.tolerance:
            pick = c
            break
    detail = Recommendation(
        settings.tolerance,
        settings.confidence,
        best,
        stats[best],
        params.get(best, 0),
        stats[pick],
        params.get(pick, 0),
        None if pick == best else cmp,
        objective=objective,
    )
    return pick, Decision(Action.RECOMMEND, Stage.FINAL, pick[0], pick[1], detail)


T = TypeVar("T")


#: a part of the replay: yields the trials it needs before it can go on (the replay stops at the first
#: such yield), returns its result once it has them
Steps = Generator[List[TrialSpec], None, T]

#: a configuration at one learning rate, (r, targets, lr): the memo's key (lr None without a bracket of rates)
RatedKey = Tuple[int, str, Optional[float]]


def _taken(by_seed: Mapping[int, Outcome], seeds: Sequence[int], n: int) -> int:
    """How many seeds of ``seeds`` the first ``n`` take when each collapsed one (``Outcome.collapsed`` in
    ``by_seed``) is replaced by the next seed: the shortest prefix with ``n`` seeds that did not collapse (a
    seed not run yet counts as one), or all of ``seeds``."""
    taken = kept = 0
    for s in seeds:
        if kept == n:
            break
        taken += 1
        kept += not (s in by_seed and by_seed[s].collapsed)
    return taken


class _Memo:
    """The seeds of each configuration the procedure has asked for so far (``asked``: how many, each
    collapsed seed replaced by the next one, ``counted``) and the statistics of exactly those (``aggregate``,
    memoised: a replay reads them often). Only asked-for seeds inform a decision, so replaying a longer
    history never changes an earlier one. Keys are (r, targets, lr) (``RatedKey``): with ``rated`` (a bracket
    of learning rates) a configuration at each rate is its own, else every lr is None."""

    def __init__(self, seeds: Sequence[int], outcomes: Sequence[Outcome], rated: bool = False):
        self.seeds = list(seeds)
        by_cfg = _measured(outcomes, rated)
        self.by_cfg: Dict[RatedKey, Dict[int, Outcome]] = {(k if rated else (*k, None)): v for k, v in by_cfg.items()}
        self.asked: Dict[RatedKey, int] = {}
        self._stats: Dict[Tuple[RatedKey, int], Optional[Stats]] = {}

    def counted(self, cfg: RatedKey) -> int:
        """Seeds of the sequence that the ``asked`` seeds of ``cfg`` take, each collapsed seed replaced by the
        next one (``_taken``)."""
        return _taken(self.by_cfg.get(cfg, {}), self.seeds, self.asked.get(cfg, 0))

    def stats(self, cfg: RatedKey) -> Optional[Stats]:
        """``aggregate`` stats of ``cfg`` over the seeds asked for so far (``counted``)."""
        key = (cfg, self.counted(cfg))
        if key not in self._stats:
            counted = aggregate(self.by_cfg.get(cfg, {}).values(), self.seeds[: key[1]]).get(cfg[:2])
            self._stats[key] = counted.stats if counted is not None else None
        return self._stats[key]

    def n_asked(self, cfg: RatedKey) -> int:
        return self.asked.get(cfg, 0)

    def rate(self, cfg: RatedKey) -> Optional[float]:
        return cfg[2]

    def missing(self, cfg: RatedKey, n: int, stage: Stage) -> List[TrialSpec]:
        """The first ``n`` seeds of the sequence of ``cfg`` not run yet (asks for nothing)."""
        done = self.by_cfg.get(cfg, {})
        return [TrialSpec(cfg[0], cfg[1], s, stage, lr=cfg[2]) for s in self.seeds[:n] if s not in done]

    def ask(self, cfg: RatedKey, n: int, stage: Stage) -> List[TrialSpec]:
        """Ask for the first ``n`` seeds of ``cfg`` (never fewer than before), each collapsed one replaced by the
        next seed; returns those not run yet."""
        self.asked[cfg] = max(self.asked.get(cfg, 0), n)
        return self.missing(cfg, self.counted(cfg), stage)

    def need(self, cfg: RatedKey, n: int, stage: Stage) -> Steps[None]:
        """``ask``, yielding the seeds not run yet."""
        missing = self.ask(cfg, n, stage)
        if missing:
            yield missing


class _AtRate:
    """The memo seen at one learning rate ``lr``: its configurations are (r, targets), as the rank and targets
    stages name them (``lr`` None: the sweep has no bracket of rates)."""

    def __init__(self, memo: _Memo, lr: Optional[float]):
        self.memo, self.lr, self.seeds = memo, lr, memo.seeds
        self.by_cfg = {k[:2]: v for k, v in memo.by_cfg.items() if k[2] == lr}

    def counted(self, cfg: ConfigKey) -> int:
        return self.memo.counted((*cfg, self.lr))

    def stats(self, cfg: ConfigKey) -> Optional[Stats]:
        return self.memo.stats((*cfg, self.lr))

    def n_asked(self, cfg: ConfigKey) -> int:
        return self.memo.n_asked((*cfg, self.lr))

    def rate(self, cfg: ConfigKey) -> Optional[float]:
        return self.lr

    def missing(self, cfg: ConfigKey, n: int, stage: Stage) -> List[TrialSpec]:
        return self.memo.missing((*cfg, self.lr), n, stage)

    def ask(self, cfg: ConfigKey, n: int, stage: Stage) -> List[TrialSpec]:
        return self.memo.ask((*cfg, self.lr), n, stage)

    def need(self, cfg: ConfigKey, n: int, stage: Stage) -> Steps[None]:
        return self.memo.need((*cfg, self.lr), n, stage)


def _race(
    memo: Union[_Memo, _AtRate],
    settings: SweepSettings,
    floor: Optional[float],
    pool: Sequence[ConfigKey],
    ref: ConfigKey,
    cfg: ConfigKey,
    stage: Stage,
    decisions: List[Decision],
    objective: Optional[str] = None,
) -> Steps[Verdict]:
    """Compare ``cfg`` (B) with the best so far ``ref`` (A), asking for one more seed of the side with fewer
    (``cfg`` on a tie; the other side once one has ``max_seeds``) while undecided; each such seed is a
    ``more-seeds`` decision appended to ``decisions``. The seed s.d. is pooled over ``pool`` (every
    configuration evaluated so far) and floored at ``floor`` points. Returns the verdict, with the
    statistics it was reached on; the decisions name ``objective``."""
    s = settings
    while True:
        a, b = memo.stats(ref), memo.stats(cfg)
        c = compare(a, b, seed_noise([st for st in map(memo.stats, pool) if st], floor), s.confidence)
        # the sides that may get another seed, fewer asked first (cfg on a tie: the sort is stable)
        sides = [x for x in sorted((cfg, ref), key=memo.n_asked) if memo.counted(x) < len(memo.seeds)]
        if c.low is not None and c.low > 0:
            end = RaceEnd.GAIN
        elif c.high is not None and c.high < s.tolerance:
            end = RaceEnd.NO_GAIN
        else:
            end = None if sides else RaceEnd.SEED_LIMIT
        if end is not None:
            return Verdict(ref[:2], a, b, c, s.confidence, s.tolerance, end, s.max_seeds, objective)
        side = sides[0]
        seed = memo.n_asked(side) + 1
        decisions.append(
            Decision(
                Action.MORE_SEEDS,
                stage,
                side[0],
                side[1],
                Undecided(cfg[:2], ref[:2], c, s.confidence, s.tolerance, seed, objective),
                lr=memo.rate(side),
            )
        )
        yield from memo.need(side, seed, stage)


def _cap_reached(
    s: SweepSettings, outcomes: Sequence[Outcome], needed: Sequence[TrialSpec], settling: Optional[Decision]
) -> Optional[CapReached]:
    """The compute cap ``outcomes`` reached (trials, then training FLOPs, then hours), with the trials it
    cuts off; None while under every cap."""
    n = len(outcomes)
    flops = sum(o.train_flops for o in outcomes)
    seconds = sum(o.seconds for o in outcomes)
    if s.max_trials is not None and n >= s.max_trials:
        cap, limit = Cap.MAX_TRIALS, s.max_trials
    elif s.max_train_flops is not None and flops >= s.max_train_flops:
        cap, limit = Cap.MAX_TRAIN_FLOPS, s.max_train_flops
    elif s.max_hours is not None and seconds >= 3600 * s.max_hours:
        cap, limit = Cap.MAX_HOURS, s.max_hours
    else:
        return None
    return CapReached(cap, limit, n, flops, seconds, tuple(needed), settling)


class _Stopped(Exception):
    """The procedure stops at once, from within any stage, for ``reason`` (its decision is taken)."""

    def __init__(self, reason: StopReason):
        super().__init__(reason)
        self.reason = reason


def _no_value(memo: Union[_Memo, _AtRate], cfg: tuple, max_seeds: int) -> AllDiverged:
    """The detail of a configuration with no value among the seeds asked for: how many collapsed and how many
    diverged (every seed diverged when none collapsed)."""
    done = memo.by_cfg.get(cfg, {})
    seen = [done[seed] for seed in memo.seeds[: memo.counted(cfg)] if seed in done]
    collapsed = sum(o.collapsed for o in seen)
    return AllDiverged(collapsed, len(seen) - collapsed, max_seeds) if collapsed else AllDiverged()


def _to_end(steps: Steps[StopReason]) -> Iterator[Union[List[TrialSpec], StopReason]]:
    """The trials ``steps`` needs, then why it stopped as its last item."""
    stop = yield from steps
    yield stop


class _Replay:
    """The stages of the procedure over one history (rank climb, targets escalation; or the grid), and the
    plan they lead to: the next trials unless the compute cap forbids them, else the recommendation."""

    def __init__(self, settings: SweepSettings, outcomes: Sequence[Outcome]):
        self.s = settings
        self.outcomes = list(outcomes)
        #: the bracket of learning rates (``sweep.lrs`` with two or more), None without one
        self.rates = list(settings.lrs) if settings.lrs is not None and len(settings.lrs) > 1 else None
        self.rated = _Memo(seed_sequence(settings), self.outcomes, rated=self.rates is not None)
        self.lr: Optional[float] = None  # the rate the rank and targets stages run at (None: no bracket)
        self.memo = _AtRate(self.rated, None)
        self.decisions: List[Decision] = []
        self.evaluated: List[ConfigKey] = []
        every = aggregate(self.outcomes, self.memo.seeds)
        self.params = {c: a.trainable_params for c, a in every.items()}
        self.flops = {c: a.train_flops for c, a in every.items()}
        self.floor = noise_floor(self.outcomes, settings)
        self.objective = objective_of(self.outcomes)

    def decide(
        self, action: Action, stage: Stage, cfg: Tuple[Optional[int], Optional[str]], detail: Detail, lr=None
    ) -> None:
        """Append a decision about ``cfg`` at the stages' rate (or at ``lr``, the learning-rate stage's)."""
        self.decisions.append(Decision(action, stage, cfg[0], cfg[1], detail, lr=lr if lr is not None else self.lr))

    def at(self, lr: Optional[float]) -> None:
        """Run the rank and targets stages at ``lr`` from now on (a new pass: nothing evaluated yet)."""
        self.lr, self.memo, self.evaluated = lr, _AtRate(self.rated, lr), []

    def plan(self, steps: Steps[StopReason]) -> Plan:
        """Run ``steps`` (a stage generator) up to the first trials it needs, or to its end (or its stop,
        ``_Stopped``)."""
        try:
            first = next(_to_end(steps))
        except _Stopped as stop:
            return self.finish(stop.reason)
        return self.finish(first) if isinstance(first, StopReason) else self.pending(first)

    def pending(self, specs: List[TrialSpec]) -> Plan:
        """The trials to run next, unless the compute cap forbids them; at most as many as
        ``max_trials`` still allows."""
        last = self.decisions[-1] if self.decisions else None
        settling = last if last is not None and last.action == Action.MORE_SEEDS else None
        cap = _cap_reached(self.s, self.outcomes, specs, settling)
        if cap is None:
            if self.s.max_trials is not None:
                specs = specs[: self.s.max_trials - len(self.outcomes)]
            return Plan(specs[0], self.decisions, evaluated=list(self.evaluated), runnable=specs, lr=self.lr)
        self.decide(Action.BUDGET, Stage.FINAL, (None, None), cap)
        return self.finish(StopReason.BUDGET)

    def finish(self, stop_reason: StopReason) -> Plan:
        stats = {c: self.memo.stats(c) for c in self.evaluated}
        pick, decision = recommend(self.evaluated, stats, self.params, self.flops, self.s, self.floor, self.objective)
        if decision is not None:
            if stop_reason == StopReason.BUDGET:
                decision = dataclasses.replace(decision, detail=dataclasses.replace(decision.detail, provisional=True))
            self.decisions.append(decision if self.lr is None else dataclasses.replace(decision, lr=self.lr))
        return Plan(None, self.decisions, pick, stop_reason, list(self.evaluated), lr=self.lr)

    def evaluate(self, cfg: ConfigKey, stage: Stage) -> Steps[Optional[Stats]]:
        """Ask for the starting seeds of ``cfg`` and add it to the evaluated configurations; once the
        ``sweep.seeds`` are run, stop the sweep (``_Stopped``) if every trial asked for so far collapsed
        (``collapsed``), else replace each collapsed seed by the next one."""
        n = len(self.s.seeds)
        first = self.memo.missing(cfg, n, stage)
        if first:
            yield first
        self.stop_if_every_trial_collapsed(cfg, n, stage)
        yield from self.memo.need(cfg, n, stage)
        if cfg not in self.evaluated:
            self.evaluated.append(cfg)
        return self.memo.stats(cfg)

    def stop_if_every_trial_collapsed(self, cfg: ConfigKey, n: int, stage: Stage) -> None:
        """Stop the sweep (a ``collapsed`` decision about ``cfg``, then ``_Stopped``) when every trial asked for
        so far, the first ``n`` seeds of ``cfg`` among them, collapsed to a constant prediction: nothing trains
        at this recipe, and more seeds or configurations would collapse as well (issue #22: MRPC at
        ``train.lr=8e-3``). Head only (r=0) is neither stopped on nor counted: the climb stops as it would
        without it, and the recommendation is then head only when it has a value."""
        if cfg[0] == HEAD_ONLY:  # head only, beside the climb: its collapse stops nothing
            return
        asked = [(c, self.memo.counted(c)) for c in self.adapters()] + [(cfg, n)]
        seen = [self.memo.by_cfg.get(c, {}).get(seed) for c, k in asked for seed in self.memo.seeds[:k]]
        if not all(o is not None and o.collapsed for o in seen):
            return
        self.stop_collapsed(cfg, seen, stage)

    def stop_collapsed(self, cfg: ConfigKey, seen: Sequence[Outcome], stage: Stage, lr=None) -> None:
        """The ``collapsed`` decision about ``cfg`` (every trial of ``seen`` collapsed), then ``_Stopped``."""
        metric = metric_of(self.objective)
        baseline = next((o.baseline for o in seen if o.baseline is not None), None)
        detail = EveryTrialCollapsed(
            len(seen),
            tuple(sorted({metric.score(o.value) for o in seen if o.value is not None})),
            None if baseline is None else metric.score(baseline),
            self.objective,
            head_only=cfg[0] != HEAD_ONLY
            and self.memo.stats((HEAD_ONLY, targets_key(self.s.start_targets))) is not None,
        )
        self.decide(Action.COLLAPSED, stage, cfg, detail, lr=lr)
        raise _Stopped(StopReason.COLLAPSED)

    def adapters(self) -> List[ConfigKey]:
        """The configurations evaluated so far but head only (r=0): the climb's comparisons pool their seed s.d.
        over these, so that head only beside the climb leaves it as it would be without it."""
        return [c for c in self.evaluated if c[0] != HEAD_ONLY]

    def step(self, cfg: ConfigKey, ref: Optional[ConfigKey], stage: Stage) -> Steps[Tuple[Optional[ConfigKey], bool]]:
        """Evaluate ``cfg`` against ``ref``; returns (new ref, whether cfg gained)."""
        st = yield from self.evaluate(cfg, stage)
        if st is None:
            self.decide(Action.FAILED, stage, cfg, _no_value(self.memo, cfg, self.s.max_seeds))
            return ref, False
        if ref is None:
            self.decide(Action.START, stage, cfg, FirstResult(st, self.objective))
            return cfg, True
        verdict = yield from _race(
            self.memo, self.s, self.floor, self.adapters(), ref, cfg, stage, self.decisions, self.objective
        )
        gained = verdict.end == RaceEnd.GAIN
        action = (Action.CONTINUE if stage == Stage.RANK else Action.WIDEN) if gained else Action.NO_GAIN
        self.decide(action, stage, cfg, verdict)
        return (cfg, True) if gained else (ref, False)

    def climb(
        self, configs: Sequence[ConfigKey], ref: Optional[ConfigKey], stage: Stage
    ) -> Steps[Tuple[Optional[ConfigKey], bool]]:
        """Evaluate ``configs`` in order, each against the best so far, until ``patience`` steps past the
        best bring no gain (rank doublings on the rank stage, target sets on the targets stage).
        Returns (best so far, whether a plateau was declared)."""
        misses = 0
        for cfg in configs:
            ref, gained = yield from self.step(cfg, ref, stage)
            misses = 0 if gained else misses + 1
            if ref is None:
                continue
            past = math.log2(cfg[0] / ref[0]) if stage == Stage.RANK else misses
            if not gained and past >= self.s.patience:
                self.decide(Action.PLATEAU, stage, ref, Plateau(past, self.s.patience))
                return ref, True
        return ref, False

    def screen(self, start: str) -> Steps[List[int]]:
        """The screen stage: the nested trials of ``screen_seed_sequence`` on ``start`` at the largest rank,
        their screened curve (the mean score by rank, ``stats_of`` as for independent trials), its best
        rank and knee, and the ranks independent trials run at by ``screen_rule``; returns those ranks,
        empty when no nested trial succeeded (a ``screen`` decision either way).

        The knee is the smallest rank not shown to be more than ``screen_margin`` × ``tolerance`` below
        the best: best − mean(r) − t·sd·√(2/n) < margin, sd the screen's own noise at one rank
        (``residual_sd`` of the n nested trials' scores, a trial's offset removed; floored as a
        comparison's is), t one-sided at ``confidence``; with one nested trial (no estimate), best −
        mean(r) ≤ margin."""
        s = self.s
        top = s.ranks[-1]
        done = {
            o.seed: o for o in self.outcomes if o.nested and o.status != "failed" and (o.r, o.targets) == (top, start)
        }
        seeds = screen_seed_sequence(s)
        missing = [TrialSpec(top, start, seed, Stage.SCREEN, nested=True) for seed in seeds if seed not in done]
        if missing:
            yield missing
        ok = [done[seed] for seed in seeds if done[seed].status == "ok" and done[seed].rank_values]
        ranks = [r for r in s.ranks if ok and all(r in o.rank_values for o in ok)]
        curve = {r: stats_of([o.rank_values[r] for o in ok], self.objective).mean for r in ranks}
        sd, dof = residual_sd([[stats_of([o.rank_values[r]], self.objective).mean for r in ranks] for o in ok])
        floor = _floor(ok, s)
        slack = (
            t_quantile(s.confidence, dof) * max(sd, floor or 0.0) * math.sqrt(2 / len(ok)) if sd is not None else 0.0
        )
        margin = s.screen_margin * s.tolerance
        best = max(curve, key=curve.__getitem__) if curve else None  # the lower rank on a tie
        knee = min(r for r in curve if curve[best] - curve[r] - slack <= margin) if curve else None
        if not curve:
            chosen: List[int] = []
        elif s.screen_rule == "knee":
            chosen = [knee]
        elif s.screen_rule == "pair":
            chosen = sorted({knee, best})
        else:
            chosen = [r for r in s.ranks if r >= knee]
        detail = Screened(
            tuple(curve.items()),
            len(ok),
            best,
            knee,
            margin,
            s.screen_rule,
            tuple(chosen),
            sd,
            dof,
            slack,
            self.objective,
        )
        self.decide(Action.SCREEN, Stage.SCREEN, (top, start), detail)
        return chosen

    def rate_race(self, cfg: ConfigKey, rates: Sequence[float], recheck: bool) -> Steps[Optional[float]]:
        """The learning-rate stage at ``cfg``: each rate of ``rates`` in order against the best rate so far
        (the first with a result is the incumbent), raced as any comparison is (``_race``, the seed s.d.
        pooled over every configuration evaluated so far at any rate), a ``rate`` decision each; a rate
        replaces the incumbent only on a significant gain. ``recheck``: at the pick, after the stages
        (``rates`` then start with the stages' rate). Returns the winning rate (a ``rate-chosen``
        decision), None when no rate has an ok trial."""
        ref: Optional[RatedKey] = None
        pool = [(*c, self.lr) for c in self.evaluated]
        n = len(self.s.seeds)
        for lr in rates:
            key = (*cfg, lr)
            first = self.rated.missing(key, n, Stage.LR)
            if first:
                yield first
            done = self.rated.by_cfg.get(key, {})
            if all(s in done and done[s].collapsed for s in self.rated.seeds[:n]):
                # a rate whose first seeds all collapsed does not train: no replacement seeds for it
                self.rated.asked[key] = max(self.rated.asked.get(key, 0), n)
                self.decide(Action.FAILED, Stage.LR, cfg, _no_value(self.rated, key, self.s.max_seeds), lr=lr)
                continue
            yield from self.rated.need(key, n, Stage.LR)
            pool.append(key)
            if self.rated.stats(key) is None:
                self.decide(Action.FAILED, Stage.LR, cfg, _no_value(self.rated, key, self.s.max_seeds), lr=lr)
                continue
            if ref is None:
                ref = key
                continue
            verdict = yield from _race(
                self.rated, self.s, self.floor, pool, ref, key, Stage.LR, self.decisions, self.objective
            )
            self.decide(Action.RATE, Stage.LR, cfg, RateVerdict(ref[2], verdict, recheck), lr=lr)
            if verdict.end == RaceEnd.GAIN:
                ref = key
        if ref is None:
            return None
        self.decide(Action.RATE_CHOSEN, Stage.LR, cfg, RateChosen(tuple(self.rates), recheck, self.lr), lr=ref[2])
        return ref[2]

    def progressive(self, params_per_rank: Mapping[str, int]) -> Steps[StopReason]:
        """The learning-rate stage (``sweep.lrs``), the rank and targets stages at its rate (``stages``), and
        the rate re-checked at their pick: when another rate of the bracket is significantly better there,
        the stages are redone at that rate (once); returns why it stopped."""
        if self.rates is None:
            return (yield from self.stages(params_per_rank))
        first = (self.s.ranks[0], targets_key(self.s.start_targets))
        lr = yield from self.rate_race(first, self.rates, recheck=False)
        if lr is None:  # no rate has a value: if every trial collapsed, the collapsed stop names it
            seen = [o for x in self.rates for o in self.rated.by_cfg.get((*first, x), {}).values()]
            if seen and all(o.collapsed for o in seen):
                self.stop_collapsed(first, seen, Stage.LR)
            return StopReason.NO_SUCCESS
        self.at(lr)
        stop = yield from self.stages(params_per_rank)
        pick = self.pick()
        if pick is None:
            return stop
        better = yield from self.rate_race(pick, [lr] + [x for x in self.rates if x != lr], recheck=True)
        if better is None or better == lr:
            return stop
        self.at(better)
        return (yield from self.stages(params_per_rank))

    def pick(self) -> Optional[ConfigKey]:
        """The configuration ``recommend`` would pick now (no decision taken)."""
        stats = {c: self.memo.stats(c) for c in self.evaluated}
        return recommend(self.evaluated, stats, self.params, self.flops, self.s, self.floor, self.objective)[0]

    def stages(self, params_per_rank: Mapping[str, int]) -> Steps[StopReason]:
        """The screen (``sweep.screen``), the rank stage, then (at a low plateau rank) the targets stage;
        returns why it stopped."""
        s = self.s
        start = targets_key(s.start_targets)
        if (
            s.ranks[0] == HEAD_ONLY
        ):  # head only first, beside the climb (which it does not start): a candidate of the rule
            yield from self.step((HEAD_ONLY, start), None, Stage.RANK)
        ranks = (yield from self.screen(start)) if s.screen else []
        if ranks and s.screen_rule != "climb":  # the screen's ranks, each against the best so far
            ref, plateaued = None, True
            for r in ranks:
                ref, _ = yield from self.step((r, start), ref, Stage.RANK)
        else:
            adapters = [r for r in ranks or s.ranks if r != HEAD_ONLY]
            ref, plateaued = yield from self.climb([(r, start) for r in adapters], None, Stage.RANK)
        if not plateaued:
            self.decide(
                Action.RANKS_EXHAUSTED,
                Stage.RANK,
                (ref[0] if ref else None, start),
                RanksExhausted(s.ranks[-1], s.patience),
            )
        if ref is None:  # no adapter has a value; head only's, if it has one, is the recommendation
            return StopReason.PLATEAU if self.memo.stats((HEAD_ONLY, start)) else StopReason.NO_SUCCESS
        # screened, with the best so far above escalate_max_r: the wider sets are tried at the knee (the
        # lowest screened rank with a result) against it, so that a false gain of the screened best does not
        # skip them (by calibration: the wider-targets family)
        rank = ref[0]
        if rank > s.escalate_max_r and ranks and s.screen_rule != "climb":
            rank = min(r for r in ranks if self.memo.stats((r, start)))
        if rank > s.escalate_max_r:
            self.decide(Action.NO_ESCALATION, Stage.TARGETS, (rank, start), NoEscalation(True, s.escalate_max_r))
            return StopReason.PLATEAU
        wider = sorted(
            dict.fromkeys(
                targets_key(t) for t in s.target_sets if params_per_rank[targets_key(t)] > params_per_rank[start]
            ),
            key=lambda t: params_per_rank[t],
        )
        if not wider:
            self.decide(Action.NO_ESCALATION, Stage.TARGETS, ref, NoEscalation(False, s.escalate_max_r))
            return StopReason.PLATEAU
        lora = {t: rank * params_per_rank[t] for t in wider}
        self.decide(Action.ESCALATE, Stage.TARGETS, (rank, start), Escalation(s.escalate_max_r, lora))
        yield from self.climb([(rank, t) for t in wider], ref, Stage.TARGETS)
        return StopReason.PLATEAU

    def grid(self, params_per_rank: Mapping[str, int]) -> Steps[StopReason]:
        """Every rank × target set × seed at once; returns once all are done."""
        sets = list(dict.fromkeys(targets_key(t) for t in self.s.target_sets))
        sets.sort(key=lambda t: params_per_rank[t])
        grid = [(r, t) for t in sets for r in self.s.ranks]
        missing = [spec for cfg in grid for spec in self.memo.ask(cfg, len(self.memo.seeds), Stage.GRID)]
        self.evaluated.extend(grid)
        if missing:
            yield missing
        self.decide(Action.GRID, Stage.GRID, (None, None), GridDone(len(grid), len(self.s.seeds)))
        return StopReason.GRID_COMPLETE

    def budget(self, params_per_rank: Mapping[str, int]) -> Steps[StopReason]:
        """Target sets at an equal budget: every set at each budget's rank with ``sweep.seeds`` at once; at each
        budget every other set raced against the start targets (``gain`` or ``no-gain``); once every race is
        done, the recommendation rule among each budget's sets (``budget-pick``). Returns once all are done."""
        budgets = budget_ranks(self.s, params_per_rank)
        for b in budgets:
            self.decide(
                Action.AT_BUDGET, Stage.EQUAL_BUDGET, (None, None), AtBudget(b.params, b.ranks, b.lora_params, b.given)
            )
        configs = list(dict.fromkeys(c for b in budgets for c in b.configs()))
        missing = [spec for cfg in configs for spec in self.memo.ask(cfg, len(self.s.seeds), Stage.EQUAL_BUDGET)]
        self.evaluated.extend(configs)
        if missing:
            yield missing
        for b in budgets:
            start, *others = b.configs()
            if self.memo.stats(start) is None:
                self.decide(Action.FAILED, Stage.EQUAL_BUDGET, start, _no_value(self.memo, start, self.s.max_seeds))
                continue
            for cfg in others:
                if self.memo.stats(cfg) is None:
                    self.decide(Action.FAILED, Stage.EQUAL_BUDGET, cfg, _no_value(self.memo, cfg, self.s.max_seeds))
                    continue
                verdict = yield from _race(
                    self.memo,
                    self.s,
                    self.floor,
                    self.evaluated,
                    start,
                    cfg,
                    Stage.EQUAL_BUDGET,
                    self.decisions,
                    self.objective,
                )
                self.decide(
                    Action.GAIN if verdict.end == RaceEnd.GAIN else Action.NO_GAIN, Stage.EQUAL_BUDGET, cfg, verdict
                )
        for b in budgets:  # after every race, so that each budget's rule sees the final statistics
            stats = {c: self.memo.stats(c) for c in b.configs()}
            pick, decision = recommend(b.configs(), stats, self.params, self.flops, self.s, self.floor, self.objective)
            if decision is not None:
                self.decide(Action.BUDGET_PICK, Stage.EQUAL_BUDGET, pick, BudgetPick(b.params, decision.detail))
        return StopReason.BUDGETS_COMPARED


def plan_progressive(settings: SweepSettings, outcomes: Sequence[Outcome], params_per_rank: Mapping[str, int]) -> Plan:
    """Replay the progressive procedure over ``outcomes`` and say what comes next.

    Args:
        settings: the sweep settings (ranks, target sets, seeds, rules, caps).
        outcomes: every finished trial of the study, in any order.
        params_per_rank: LoRA parameters per unit of rank of each target set (``targets_key`` -> Σ(d+k)
            over the matrices it adapts), so that r·params_per_rank[t] is the LoRA parameter count of
            target set t at rank r; orders the target sets. The study stores it as ``target_costs``.

    Returns:
        A ``Plan``; ``plan.next`` is None once the procedure is over or the compute cap is reached,
        and then ``plan.recommendation`` is set (None only if no trial succeeded).
    """
    replay = _Replay(settings, outcomes)
    return replay.plan(replay.progressive(params_per_rank))


def plan_grid(settings: SweepSettings, outcomes: Sequence[Outcome], params_per_rank: Mapping[str, int]) -> Plan:
    """Every rank × target set × seed of the settings, target sets cheapest first, then by rank
    (``runnable`` holds every missing trial); the recommendation uses the same rule as the
    progressive procedure."""
    replay = _Replay(settings, outcomes)
    return replay.plan(replay.grid(params_per_rank))


def plan_budget(settings: SweepSettings, outcomes: Sequence[Outcome], params_per_rank: Mapping[str, int]) -> Plan:
    """Target sets at an equal budget (``sweep.mode=budget``, ``_Replay.budget``): ``params_per_rank`` must hold
    every set the budgets are given on too (``sweep.budget.budget_ranks``); the recommendation uses the same
    rule as the progressive procedure, over every configuration of every budget."""
    replay = _Replay(settings, outcomes)
    return replay.plan(replay.budget(params_per_rank))


def plan(settings: SweepSettings, outcomes: Sequence[Outcome], params_per_rank: Mapping[str, int]) -> Plan:
    """``plan_progressive``, ``plan_grid`` or ``plan_budget`` according to ``settings.mode``."""
    by_mode = {"grid": plan_grid, "budget": plan_budget}
    return by_mode.get(settings.mode, plan_progressive)(settings, outcomes, params_per_rank)
